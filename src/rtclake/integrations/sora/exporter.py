"""The latest GetStatsReport of each polled Sora node, as Shiguredo's sora_exporter names it.

Prometheus users of Sora chart ``sora_connections_total{state="created"}`` and friends,
which sora_exporter (https://github.com/shiguredo/sora_exporter) produces from
GetStatsReport. :class:`SoraExporterCollector` exposes the same names, label names and
label values from the answers the rtclake poller already fetches, so existing dashboards
and alerts keep working with ``rtclake`` as the scrape target.

Differences from sora_exporter, on purpose:

- every series has a ``node`` label (the polled URL), because one rtclake polls several
  nodes where one sora_exporter serves one;
- a value is exposed only if the last answer holds it (sora_exporter writes 0 for a missing
  field); after a failed poll a node shows ``sora_up 0`` and none of its old values;
- ``sora_average_setup_time_seconds`` is ``average_setup_time_msec / 1000`` without
  sora_exporter's integer division (372 ms is 0.372, not 0);
- sora_exporter's counters whose names lack ``_total`` (``sora_erlang_vm_context_switches``,
  ``sora_erlang_vm_io_input``, ``sora_cluster_raft_term``, ...) are typed gauge here:
  prometheus_client would append ``_total`` to a counter and break the name, and
  PromQL's ``rate()`` does not look at the type.

Not exposed, because they need operations the poller does not call or are not Sora's
values: ``sora_license_*`` (GetLicense), ``sora_cluster_node`` (ListClusterNodes),
``sora_time_seconds`` (the exporter's own clock), the webhook response-time histograms.

The mapping, GetStatsReport key -> series (label values in braces):

- ``version`` -> ``sora_version_info{version}`` = 1
- ``total_connection_{created,updated,destroyed}``, ``total_{successful,failed}_connections``
  -> ``sora_connections_total{state}``
- ``total_ongoing_connections`` -> ``sora_ongoing_connections_total`` (a gauge)
- ``total_duration_sec`` -> ``sora_duration_seconds_total``;
  ``average_duration_sec`` -> ``sora_average_duration_seconds``;
  ``average_setup_time_msec`` -> ``sora_average_setup_time_seconds``
- ``total_session_{created,destroyed}`` -> ``sora_session_total{state}``
- ``total_turn_{udp,tcp}_connections`` -> ``sora_turn_connections_total{proto}``;
  ``total_received_invalid_turn_tcp_packet`` -> ``sora_received_invalid_turn_tcp_packet_total``
- ``total_auth_webhook_{allowed,denied}`` -> ``sora_successful_auth_webhook_total{state}``;
  ``total_{successful,failed}_auth_webhook`` -> ``sora_auth_webhook_total{state}``;
  ``total_{successful,failed,ignored}_{session,event,stats}_webhook``
  -> ``sora_{session,event,stats}_webhook_total{state}``
- ``total_{received,sent}_srtp[_byte_size]`` -> ``sora_srtp_{received,sent}_{packets,bytes}_total``;
  ``total_decrypted_srtp`` -> ``sora_srtp_decrypted_packets_total``;
  ``total_decrypted_srtp_byte_size`` -> ``sora_srtp_decrpyted_bytes_total`` (sic);
  ``total_sent_srtp_sfu_delay_us`` -> ``sora_srtp_sent_sfu_delay_us_total``
- ``total_{received,sent}_sctp[_byte_size]`` -> ``sora_sctp_{received,sent}_{packets,bytes}_total``
- ``error.{sdp_generation,signaling}_error``
  -> ``sora_connection_error_total{reason=sdp|signaling}``
- ``sora_client.total_{successful,failed}_sora_client_type.KEY``
  -> ``sora_client_type_total{client,state}`` (``sora_js_sdk`` is ``js_sdk``: see ``_CLIENTS``)
- ``erlang_vm.memory.X`` -> ``sora_erlang_vm_memory_X``; the numbers of
  ``erlang_vm.statistics`` -> ``sora_erlang_vm_*`` (see ``_VM_STATISTICS``)
- ``cluster.raft_{term,commit_index}`` -> ``sora_cluster_raft_{term,commit_index}``;
  ``cluster.raft_state`` -> ``sora_cluster_raft_state{state}`` = 1
- ``cluster_relay[]`` -> ``sora_cluster_relay_*_total{node_name}`` (see ``_RELAY``)
- the poll itself -> ``sora_up`` (1: the last poll of the node succeeded)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True)
class _Family:
    """One sora_exporter metric: where each of its series reads its value."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    series: tuple[tuple[str, tuple[str, ...]], ...]  # (key path, label values)
    labels: tuple[str, ...] = ()
    scale: float = 1.0


def _one(name: str, kind: Literal["counter", "gauge"], help: str, key: str) -> _Family:
    return _Family(name, kind, help, ((key, ()),))


def _states(name: str, help: str, label: str, keys: dict[str, str]) -> _Family:
    return _Family(name, "counter", help, tuple((k, (v,)) for v, k in keys.items()), (label,))


def _webhook(kind: str) -> _Family:
    return _states(
        f"sora_{kind}_webhook_total",
        f"{kind.capitalize()} webhook requests by outcome.",
        "state",
        {s: f"total_{s}_{kind}_webhook" for s in ("successful", "failed", "ignored")},
    )


# sora_exporter's Erlang VM figures, all gauges, named sora_erlang_vm_memory_X and
# sora_erlang_vm_<path in erlang_vm.statistics, "_" for ".">.
_VM_MEMORY = (
    "total",
    "processes",
    "processes_used",
    "system",
    "atom",
    "atom_used",
    "binary",
    "code",
    "ets",
)
_VM_STATISTICS = (
    "context_switches",
    "exact_reductions.exact_reductions_since_last_call",
    "exact_reductions.total_exact_reductions",
    "garbage_collection.number_of_gcs",
    "garbage_collection.words_reclaimed",
    "io.input",
    "io.output",
    "reductions.reductions_since_last_call",
    "reductions.total_reductions",
    "run_queue",
    "runtime.time_since_last_call",
    "runtime.total_run_time",
    "total_active_tasks",
    "total_active_tasks_all",
    "total_run_queue_lengths",
    "total_run_queue_lengths_all",
    "wall_clock.total_wallclock_time",
    "wall_clock.wallclock_time_since_last_call",
)

_FAMILIES: tuple[_Family, ...] = (
    _states(
        "sora_connections_total",
        "Connections by outcome since Sora started.",
        "state",
        {
            "created": "total_connection_created",
            "destroyed": "total_connection_destroyed",
            "failed": "total_failed_connections",
            "successful": "total_successful_connections",
            "updated": "total_connection_updated",
        },
    ),
    _one(
        "sora_ongoing_connections_total",
        "gauge",
        "Connections open now.",
        "total_ongoing_connections",
    ),
    _one(
        "sora_duration_seconds_total",
        "counter",
        "Summed duration of ended connections.",
        "total_duration_sec",
    ),
    _one(
        "sora_average_duration_seconds",
        "gauge",
        "Average connection duration.",
        "average_duration_sec",
    ),
    _Family(
        "sora_average_setup_time_seconds",
        "gauge",
        "Average connection setup time.",
        (("average_setup_time_msec", ()),),
        scale=0.001,
    ),
    _states(
        "sora_session_total",
        "Sessions by event since Sora started.",
        "state",
        {"created": "total_session_created", "destroyed": "total_session_destroyed"},
    ),
    _states(
        "sora_turn_connections_total",
        "Connections that used TURN, by transport.",
        "proto",
        {"tcp": "total_turn_tcp_connections", "udp": "total_turn_udp_connections"},
    ),
    _one(
        "sora_received_invalid_turn_tcp_packet_total",
        "counter",
        "Invalid TURN-TCP packets received.",
        "total_received_invalid_turn_tcp_packet",
    ),
    _states(
        "sora_successful_auth_webhook_total",
        "Answered auth webhooks by decision.",
        "state",
        {"allowed": "total_auth_webhook_allowed", "denied": "total_auth_webhook_denied"},
    ),
    _states(
        "sora_auth_webhook_total",
        "Auth webhook requests by outcome.",
        "state",
        {"successful": "total_successful_auth_webhook", "failed": "total_failed_auth_webhook"},
    ),
    _webhook("session"),
    _webhook("event"),
    _webhook("stats"),
    _one(
        "sora_srtp_received_packets_total",
        "counter",
        "SRTP packets received.",
        "total_received_srtp",
    ),
    _one(
        "sora_srtp_received_bytes_total",
        "counter",
        "SRTP bytes received.",
        "total_received_srtp_byte_size",
    ),
    _one("sora_srtp_sent_packets_total", "counter", "SRTP packets sent.", "total_sent_srtp"),
    _one("sora_srtp_sent_bytes_total", "counter", "SRTP bytes sent.", "total_sent_srtp_byte_size"),
    _one(
        "sora_srtp_decrypted_packets_total",
        "counter",
        "SRTP packets decrypted.",
        "total_decrypted_srtp",
    ),
    # sora_exporter's spelling, kept so that its dashboards find the series
    _one(
        "sora_srtp_decrpyted_bytes_total",
        "counter",
        "SRTP bytes decrypted.",
        "total_decrypted_srtp_byte_size",
    ),
    _one(
        "sora_srtp_sent_sfu_delay_us_total",
        "counter",
        "Summed delay the SFU added to sent SRTP packets, in microseconds.",
        "total_sent_srtp_sfu_delay_us",
    ),
    _one(
        "sora_sctp_received_packets_total",
        "counter",
        "SCTP packets received.",
        "total_received_sctp",
    ),
    _one(
        "sora_sctp_received_bytes_total",
        "counter",
        "SCTP bytes received.",
        "total_received_sctp_byte_size",
    ),
    _one("sora_sctp_sent_packets_total", "counter", "SCTP packets sent.", "total_sent_sctp"),
    _one("sora_sctp_sent_bytes_total", "counter", "SCTP bytes sent.", "total_sent_sctp_byte_size"),
    _states(
        "sora_connection_error_total",
        "Connection errors by cause.",
        "reason",
        {"sdp": "error.sdp_generation_error", "signaling": "error.signaling_error"},
    ),
    *(
        _one(
            f"sora_erlang_vm_memory_{m}",
            "gauge",
            f"Erlang VM memory: {m}.",
            f"erlang_vm.memory.{m}",
        )
        for m in _VM_MEMORY
    ),
    *(
        _one(
            "sora_erlang_vm_" + path.replace(".", "_"),
            "gauge",
            f"Erlang VM statistics: {path}.",
            "erlang_vm.statistics." + path,
        )
        for path in _VM_STATISTICS
    ),
    _one("sora_cluster_raft_term", "gauge", "Current Raft term.", "cluster.raft_term"),
    _one(
        "sora_cluster_raft_commit_index",
        "gauge",
        "Latest committed Raft log index.",
        "cluster.raft_commit_index",
    ),
)

# sora_client keys -> sora_exporter's client label; other keys keep their own name.
_CLIENTS = {
    "sora_android_sdk": "android_sdk",
    "sora_c_sdk": "c_sdk",
    "sora_cpp_sdk": "cpp_sdk",
    "sora_flutter_sdk": "flutter_sdk",
    "sora_ios_sdk": "ios_sdk",
    "sora_js_sdk": "js_sdk",
    "sora_python_sdk": "python_sdk",
    "sora_unity_sdk": "unity_sdk",
    "webrtc_native_client_momo": "momo",
    "webrtc_load_testing_tool_zakuro": "zakuro",
}

# cluster_relay[] keys -> sora_exporter's sora_cluster_relay_* names (per peer node_name).
_RELAY = {
    "total_received_byte_size": "received_bytes",
    "total_sent_byte_size": "sent_bytes",
    "total_received": "received_packets",
    "total_sent": "sent_packets",
    **{
        f"plumtree.total_{k}": f"plumtree_{k}"
        for k in (
            "graft_miss",
            "ignored",
            "received_gossip",
            "received_graft",
            "received_ihave",
            "received_prune",
            "sent_gossip",
            "sent_graft",
            "sent_ihave",
            "sent_prune",
            "skipped_send",
        )
    },
}


def _value(obj: Any, path: str) -> float | None:
    """The number at ``path`` (dot-separated keys) in ``obj``; None if absent or not one."""
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    if isinstance(obj, bool) or not isinstance(obj, int | float):
        return None
    return float(obj)


_MetricFamily = CounterMetricFamily | GaugeMetricFamily


def _new(name: str, kind: str, help: str, labels: Iterable[str]) -> _MetricFamily:
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help, labels=["node", *labels])


class SoraExporterCollector:
    """A Prometheus collector of the latest GetStatsReport of each node.

    The poller calls :meth:`update` with each good answer and :meth:`failed` when a poll
    fails; a scrape (:meth:`collect`) reads what is there. Both run on the event loop's
    thread, and each node's report is replaced whole, never changed in place.
    """

    def __init__(self) -> None:
        self._reports: dict[str, dict[str, Any] | None] = {}

    def update(self, node: str, report: dict[str, Any]) -> None:
        """Remember ``report`` as the latest GetStatsReport answer of ``node``."""
        self._reports[node] = report

    def failed(self, node: str) -> None:
        """Forget the values of ``node``: its last poll failed (``sora_up`` becomes 0)."""
        self._reports[node] = None

    def collect(self) -> Iterator[Metric]:
        """The metric families, each with a series per node whose answer has the value."""
        reports = list(self._reports.items())
        up = GaugeMetricFamily(
            "sora_up", "1 if the last poll of this Sora node succeeded, else 0.", labels=["node"]
        )
        for node, report in reports:
            up.add_metric([node], 0.0 if report is None else 1.0)
        yield up
        answered = [(node, report) for node, report in reports if report is not None]
        if not answered:
            return
        yield from self._families(answered)
        yield from self._labelled(answered)

    @staticmethod
    def _families(answered: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
        for spec in _FAMILIES:
            family = _new(spec.name, spec.kind, spec.help, spec.labels)
            for node, report in answered:
                for key, labels in spec.series:
                    value = _value(report, key)
                    if value is not None:
                        family.add_metric([node, *labels], value * spec.scale)
            if family.samples:
                yield family

    @staticmethod
    def _labelled(answered: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
        """The families whose label values come from the answer itself."""
        version = _new("sora_version_info", "gauge", "Sora's version.", ["version"])
        raft = _new("sora_cluster_raft_state", "gauge", "Raft state (always 1).", ["state"])
        clients = _new(
            "sora_client_type_total",
            "counter",
            "Connections by client type and outcome.",
            ["client", "state"],
        )
        relay = {
            name: _new(
                f"sora_cluster_relay_{name}_total",
                "counter",
                f"Cluster relay to a peer node: {name.replace('_', ' ')}.",
                ["node_name"],
            )
            for name in _RELAY.values()
        }
        for node, report in answered:
            if isinstance(report.get("version"), str):
                version.add_metric([node, report["version"]], 1.0)
            cluster = report.get("cluster")
            if isinstance(cluster, dict) and isinstance(cluster.get("raft_state"), str):
                raft.add_metric([node, cluster["raft_state"]], 1.0)
            by_client = report.get("sora_client")
            for state in ("failed", "successful"):
                counts = (
                    by_client.get(f"total_{state}_sora_client_type")
                    if isinstance(by_client, dict)
                    else None
                )
                for key in sorted(counts) if isinstance(counts, dict) else ():
                    value = _value(counts, key)
                    if value is not None:
                        clients.add_metric([node, _CLIENTS.get(key, key), state], value)
            peers = report.get("cluster_relay")
            for peer in peers if isinstance(peers, list) else ():
                if not isinstance(peer, dict) or not isinstance(peer.get("node_name"), str):
                    continue
                for key, name in _RELAY.items():
                    value = _value(peer, key)
                    if value is not None:
                        relay[name].add_metric([node, peer["node_name"]], value)
        for family in (version, raft, clients, *relay.values()):
            if family.samples:
                yield family
