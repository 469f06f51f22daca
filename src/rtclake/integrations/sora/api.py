"""Sora's HTTP API answers as lake records: the pure part of the Sora API poller.

The poller (:mod:`rtclake.integrations.sora.api_poller`) calls three operations on each
Sora node and hands the answers to the functions here, which turn them into the JSON
records it spools. Sorabeat's derived fields and the 18.10 counter names are added after
the spool by two processors (:mod:`rtclake.integrations.sora.processors`), on by default:

- ``Sora_20171010.GetStatsReport`` (one object of node-wide counters and Erlang VM
  figures) -> one ``sora_stats_report`` record per poll, with the derived fields Sorabeat
  added: for each of the lists ``erlang_vm.statistics.active_tasks``,
  ``active_tasks_all``, ``run_queue_lengths`` and ``run_queue_lengths_all``, the keys
  ``<list>_min``, ``_max``, ``_mean``, ``_stddev`` (population, divided by n) and
  ``_imbalance`` (``max / max(min, 1)``) beside the list. An empty list adds nothing.
- ``Sora_20171101.GetStatsAllConnections`` (one object per connection) -> one
  ``sora_connection_counters`` record per connection, with ``channel_client_id``
  (``channel_id + "/" + client_id``, as Sorabeat made it) and the counters Sora renamed
  in 18.10 under their current names (:data:`COUNTER_RENAMES`), so old and new nodes
  fill the same columns.
- ``Sora_20211215.ListRtcStats`` (Sora 2024.1+: each connection's latest client
  getStats) -> ``rtc_stats`` records shaped like the lines of Sora's ``rtc_stats.jsonl``
  (the connection's keys, then ``rtc_data``, ``rtc_id``, ``rtc_timestamp``,
  ``rtc_type``), so the rows are the same whichever way the stats arrived.

The ``sora_stats_report`` and ``sora_connection_counters`` records carry ``node`` (the
polled URL) and ``time`` (the poll's time, RFC 3339 UTC) unless the answer already has
those keys; ``rtc_stats`` records keep their own ``timestamp``, as in the log. The
answer's own keys are never overwritten or dropped; keys no column takes stay in ``extra``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rtclake.errors import InputError
from rtclake.tables import Column, Table, columns

# x-sora-target values and the short operation names used in logs, metrics and streams.
GET_STATS_REPORT = "GetStatsReport"
GET_STATS_ALL_CONNECTIONS = "GetStatsAllConnections"
LIST_RTC_STATS = "ListRtcStats"
TARGETS = {
    GET_STATS_REPORT: "Sora_20171010.GetStatsReport",
    GET_STATS_ALL_CONNECTIONS: "Sora_20171101.GetStatsAllConnections",
    LIST_RTC_STATS: "Sora_20211215.ListRtcStats",
}

# The Erlang VM lists (one value per scheduler) that get derived fields.
DERIVED_LISTS = ("active_tasks", "active_tasks_all", "run_queue_lengths", "run_queue_lengths_all")
DERIVED_SUFFIXES = ("min", "max", "mean", "stddev", "imbalance")
_STATISTICS = "erlang_vm.statistics."

# Per-connection counters whose names changed in Sora 18.10: old name -> current name.
COUNTER_RENAMES = {
    "total_received_bytes": "total_received_byte_size",
    "total_sent_bytes": "total_sent_byte_size",
    "total_received_packets": "total_received",
    "total_sent_packets": "total_sent",
}


def derived_fields(values: Sequence[float]) -> dict[str, float]:
    """Min, max, mean, population standard deviation and imbalance of ``values``.

    ``imbalance`` is ``max / max(min, 1)``: how much busier the busiest scheduler is than
    the idlest (an idle one counts as 1, so the ratio stays finite). An empty sequence
    gives ``{}``: there is nothing to describe, and a made-up 0 would chart as a reading.

    >>> {k: round(v, 2) for k, v in derived_fields([4, 10, 2, 5]).items()}
    {'min': 2, 'max': 10, 'mean': 5.25, 'stddev': 2.95, 'imbalance': 5.0}
    """
    if not values:
        return {}
    low, high = min(values), max(values)
    return {
        "min": low,
        "max": high,
        "mean": statistics.fmean(values),
        "stddev": statistics.pstdev(values),
        "imbalance": high / max(low, 1),
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def add_derived_fields(stats: dict[str, Any]) -> None:
    """Add ``<list>_min`` ... ``<list>_imbalance`` beside each of :data:`DERIVED_LISTS` in
    an ``erlang_vm.statistics`` object (in place). Lists that are missing, empty or hold
    anything but numbers add nothing; keys already present are left as they are."""
    for name in DERIVED_LISTS:
        values = stats.get(name)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            continue
        for suffix, value in derived_fields(values).items():
            stats.setdefault(f"{name}_{suffix}", value)


def _expect(answer: Any, kind: type, operation: str) -> Any:
    if not isinstance(answer, kind):
        shape = "a JSON object" if kind is dict else "a JSON array"
        raise InputError(
            "unexpected_answer", f"{operation} answered {type(answer).__name__}, not {shape}"
        )
    return answer


def stats_report_record(answer: Any, *, node: str, time: str) -> dict[str, Any]:
    """The ``sora_stats_report`` record of one GetStatsReport answer (a new dict).

    Raises :class:`InputError` if the answer is not a JSON object.
    """
    report = _expect(answer, dict, GET_STATS_REPORT)
    return {"node": node, "time": time, **report}


def with_derived_fields(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (a ``sora_stats_report``) with Sorabeat's derived fields beside the
    Erlang VM lists (the ``sorabeat_fields`` processor)."""
    vm = record.get("erlang_vm")
    if isinstance(vm, dict) and isinstance(vm.get("statistics"), dict):
        stats = dict(vm["statistics"])
        add_derived_fields(stats)
        return {**record, "erlang_vm": {**vm, "statistics": stats}}
    return record


def _unify_counter_names(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the pre-18.10 counter names renamed, in it and in nested objects.
    An old name whose current name is also present is kept as it is (nothing is lost)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        new = COUNTER_RENAMES.get(key)
        if new is not None and new not in obj:
            key = new
        out[key] = _unify_counter_names(value) if isinstance(value, dict) else value
    return out


def connection_records(answer: Any, *, node: str, time: str) -> list[dict[str, Any]]:
    """The ``sora_connection_counters`` records of one GetStatsAllConnections answer.

    Raises :class:`InputError` if the answer is not an array of objects.
    """
    connections = _expect(answer, list, GET_STATS_ALL_CONNECTIONS)
    records = []
    for number, connection in enumerate(connections):
        if not isinstance(connection, dict):
            raise InputError(
                "unexpected_answer",
                f"{GET_STATS_ALL_CONNECTIONS}: item {number} is not a JSON object",
            )
        records.append({"node": node, "time": time, **connection})
    return records


def with_current_counter_names(record: dict[str, Any]) -> dict[str, Any]:
    """A ``sora_connection_counters`` record with the counters renamed in Sora 18.10
    under their current names (the ``sora_counter_names`` processor)."""
    return _unify_counter_names(record)


def with_channel_client_id(record: dict[str, Any]) -> dict[str, Any]:
    """A ``sora_connection_counters`` record with Sorabeat's ``channel_client_id`` (the
    ``sorabeat_fields`` processor)."""
    channel, client = record.get("channel_id"), record.get("client_id")
    if isinstance(channel, str) and isinstance(client, str) and "channel_client_id" not in record:
        return {**record, "channel_client_id": f"{channel}/{client}"}
    return record


_RTC_KEYS = (("rtc_id", "id"), ("rtc_timestamp", "timestamp"), ("rtc_type", "type"))


def rtc_stats_records(answer: Any) -> list[dict[str, Any]]:
    """The ``rtc_stats`` records of one ListRtcStats answer, one per RTCStats object.

    Each is the connection's keys (``channel_id``, ``connection_id``, ``timestamp``, ...)
    plus ``rtc_data`` (the RTCStats object) and ``rtc_id``, ``rtc_timestamp``,
    ``rtc_type`` copied from its ``id``, ``timestamp`` and ``type``, as in
    ``rtc_stats.jsonl``. Raises :class:`InputError` if the answer is not an array of
    objects each with a list of objects in ``rtc_stats``.
    """
    connections = _expect(answer, list, LIST_RTC_STATS)
    records = []
    for number, connection in enumerate(connections):
        stats = connection.get("rtc_stats") if isinstance(connection, dict) else None
        if not isinstance(stats, list) or not all(isinstance(s, dict) for s in stats):
            raise InputError(
                "unexpected_answer",
                f"{LIST_RTC_STATS}: item {number} is not an object with a list of RTCStats"
                " objects in rtc_stats",
            )
        envelope = {k: v for k, v in connection.items() if k != "rtc_stats"}
        for data in stats:
            record = {**envelope, "rtc_data": data}
            for key, source in _RTC_KEYS:
                if source in data:
                    record.setdefault(key, data[source])
            records.append(record)
    return records


def _derived_columns() -> tuple[Column, ...]:
    columns: list[Column] = []
    for name in DERIVED_LISTS:
        columns.append(Column(name, "json", (_STATISTICS + name,)))
        columns += [
            Column(f"{name}_{s}", "float", (f"{_STATISTICS}{name}_{s}",)) for s in DERIVED_SUFFIXES
        ]
    return tuple(columns)


SORA_STATS_REPORT = Table(
    name="sora_stats_report",
    kind="sora_stats_report",
    description="Sora's GetStatsReport, one row per node and poll, with Sorabeat's derived"
    " fields of the Erlang VM scheduler lists.",
    columns=(
        Column("node", "string", ("node",)),
        Column("version", "string", ("version",)),
        Column("average_duration_sec", "float", ("average_duration_sec",)),
        Column("average_setup_time_msec", "float", ("average_setup_time_msec",)),
        *columns(
            "int",
            "",
            "total_connection_created total_connection_updated total_connection_destroyed"
            " total_successful_connections total_failed_connections total_ongoing_connections"
            " total_duration_sec total_session_created total_session_destroyed"
            " total_turn_udp_connections total_turn_tcp_connections"
            " total_received_invalid_turn_tcp_packet"
            " total_successful_auth_webhook total_failed_auth_webhook"
            " total_auth_webhook_allowed total_auth_webhook_denied"
            " total_successful_session_webhook total_failed_session_webhook"
            " total_ignored_session_webhook total_successful_event_webhook"
            " total_failed_event_webhook total_ignored_event_webhook"
            " total_successful_stats_webhook total_failed_stats_webhook"
            " total_ignored_stats_webhook"
            " total_received_srtp total_received_srtp_byte_size total_sent_srtp"
            " total_sent_srtp_byte_size total_decrypted_srtp total_decrypted_srtp_byte_size"
            " total_sent_srtp_sfu_delay_us total_received_sctp total_received_sctp_byte_size"
            " total_sent_sctp total_sent_sctp_byte_size",
        ),
        *columns("int", "error.", "sdp_generation_error signaling_error"),
        Column("raft_state", "string", ("cluster.raft_state",)),
        *columns("int", "cluster.", "raft_term raft_commit_index"),
        *columns(
            "int",
            "erlang_vm.memory.",
            "total processes processes_used system atom atom_used binary code ets",
            named="memory_",
        ),
        *columns(
            "int",
            _STATISTICS,
            "context_switches run_queue total_active_tasks total_active_tasks_all"
            " total_run_queue_lengths total_run_queue_lengths_all",
        ),
        Column("total_reductions", "int", (_STATISTICS + "reductions.total_reductions",)),
        Column(
            "total_exact_reductions",
            "int",
            (_STATISTICS + "exact_reductions.total_exact_reductions",),
        ),
        Column("io_input", "int", (_STATISTICS + "io.input",)),
        Column("io_output", "int", (_STATISTICS + "io.output",)),
        Column("number_of_gcs", "int", (_STATISTICS + "garbage_collection.number_of_gcs",)),
        Column("words_reclaimed", "int", (_STATISTICS + "garbage_collection.words_reclaimed",)),
        Column("total_run_time", "int", (_STATISTICS + "runtime.total_run_time",)),
        Column("total_wallclock_time", "int", (_STATISTICS + "wall_clock.total_wallclock_time",)),
        *_derived_columns(),
    ),
)


_OLD_NAMES = {new: old for old, new in COUNTER_RENAMES.items()}


def _counter(name: str, key: str) -> Column:
    """A per-connection RTP counter read from its current name, else its pre-18.10 name
    (records spooled without the normaliser, e.g. through HTTP ingest, map too)."""
    old = _OLD_NAMES.get(key)
    return Column(name, "int", (f"rtp.{key}",) + ((f"rtp.{old}",) if old else ()))


SORA_CONNECTION_COUNTERS = Table(
    name="sora_connection_counters",
    kind="sora_connection_counters",
    description="Sora's GetStatsAllConnections: one row per connection and poll.",
    columns=(
        Column("node", "string", ("node",)),
        Column("stats_at", "time", ("timestamp",)),
        *columns(
            "id",
            "",
            "channel_id client_id connection_id session_id bundle_id channel_client_id",
        ),
        _counter("received_bytes", "total_received_byte_size"),
        _counter("sent_bytes", "total_sent_byte_size"),
        _counter("received_packets", "total_received"),
        _counter("sent_packets", "total_sent"),
        _counter("received_rtp", "total_received_rtp"),
        _counter("sent_rtp", "total_sent_rtp"),
        _counter("received_rtcp", "total_received_rtcp"),
        _counter("sent_rtcp", "total_sent_rtcp"),
        _counter("received_nack", "total_received_rtcp_rtpfb_generic_nack"),
        _counter("sent_nack", "total_sent_rtcp_rtpfb_generic_nack"),
        _counter("received_pli", "total_received_rtcp_psfb_pli"),
        _counter("sent_pli", "total_sent_rtcp_psfb_pli"),
        _counter("received_fir", "total_received_rtcp_psfb_fir"),
        _counter("sent_fir", "total_sent_rtcp_psfb_fir"),
        Column("turn_received_channel_data", "int", ("turn.total_received_channel_data",)),
        Column("turn_sent_channel_data", "int", ("turn.total_sent_channel_data",)),
    ),
)

SORA_API_TABLES = (SORA_STATS_REPORT, SORA_CONNECTION_COUNTERS)
