"""The diagnosis of one connection: what went wrong, when, on which stream, with the
evidence, in sentences a support engineer can paste into a ticket.

It reads three query-time views an integration provides (Sora's, in
``integrations/sora/views.py``): ``rtc_rates`` (rates per stream and interval),
``connection_quality`` (scores) and ``connection_transport`` (the selected candidate pair
and the ICE state). A finding is a stretch of consecutive samples of one stream beyond a
threshold of the ``diagnosis:`` settings lasting at least ``min_duration`` seconds.
The round trip is read where the connection reports it: its ``remote-inbound-rtp`` and
``candidate-pair`` rows (Sora's), else its streams' (LiveKit's stats carry an rtt each).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rtclake.config import DiagnosisConfig
from rtclake.lake.dashboard import STREAM_RATES
from rtclake.lake.query import QueryEngine, QueryResult

CODES = (
    "high_loss", "high_rtt", "high_jitter", "bandwidth_limited", "cpu_limited", "freezes",
    "low_fps", "no_media", "relay", "ice_restart", "disconnected",
)  # fmt: skip
# a stream's rates: Sora's and LiveKit's (lake.dashboard.STREAM_RATES), so a LiveKit
# participant is diagnosed from its stats too
_RATES = STREAM_RATES
_RATE_COLUMNS = (
    "time", "channel_id", "session_id", "stats_type", "stats_id", "media_kind", "interval_s",
    "bitrate_bps", "packets_per_s", "loss_pct", "jitter_ms", "rtt_ms", "fps",
    "freezes_per_min", "quality_limitation_reason", "quality_limitation_cpu_share",
    "quality_limitation_bandwidth_share",
)  # fmt: skip
_TRANSPORT_COLUMNS = (
    "time", "pair_id", "pair_state", "ice_state", "selected_candidate_pair_changes",
    "local_candidate_type", "relay_protocol", "local_protocol",
)  # fmt: skip
_MEDIA_TYPES = ("inbound-rtp", "outbound-rtp")


@dataclass
class Finding:
    """One problem: ``code`` (see CODES), ``severity`` (info, warning, critical), the time
    it started and ended, the stream (``stats_id``, None for the whole connection), the
    ``evidence`` (figures) and a ``message``."""

    code: str
    severity: str
    start: dt.datetime
    end: dt.datetime
    stats_id: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "stats_id": self.stats_id,
            "evidence": self.evidence,
            "message": self.message,
        }


def _rows(result: QueryResult) -> list[dict[str, Any]]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows()]


def _page_sql(columns: Sequence[str], view: str, where: str, order: tuple[str, str],
              after: dict[str, Any] | None = None) -> str:  # fmt: skip
    """One page of ``view``'s rows matching ``where`` in ``order``: the first, or the one
    after the row ``after`` (keyset pagination)."""
    first, second = order
    bound = ""
    if after is not None:
        a, b = after[first], after[second]
        later = f"'{b.isoformat()}'::TIMESTAMPTZ" if isinstance(b, dt.datetime) else _quote(b)
        bound = (
            f" AND ({first} > {_quote(a)} OR ({first} = {_quote(a)} AND {second} > {later}))"
            if isinstance(a, str)
            else f" AND {first} > '{a.isoformat()}'::TIMESTAMPTZ"
        )
    return (
        f"SELECT {', '.join(columns)} FROM {view} WHERE {where}{bound} ORDER BY {first}, {second}"
    )


def _rest(
    engine: QueryEngine, first: QueryResult, columns: Sequence[str], view: str, where: str,
    order: tuple[str, str],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every row of a paged question, given its first page: the next pages are fetched
    while a page is cut at the engine's row limit (a long connection has more samples than
    one query may return)."""
    page = _rows(first)
    rows = list(page)
    result = first
    while result.truncated and page:
        result = engine.run(_page_sql(columns, view, where, order, page[-1]))
        page = _rows(result)
        rows += page
    return rows


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _describe(row: dict[str, Any]) -> str:
    direction = {
        "inbound-rtp": "received",
        "outbound-rtp": "sent",
        "remote-inbound-rtp": "sent (as the remote end reports it)",
        "candidate-pair": "on the network path",
    }.get(row["stats_type"], row["stats_type"])
    kind = row.get("media_kind")
    return f"{kind} {direction}" if kind else direction


def _clock(t: dt.datetime) -> str:
    return t.strftime("%H:%M:%S")


def _runs(
    samples: Sequence[dict[str, Any]], beyond: Callable[[dict[str, Any]], bool]
) -> Iterable[list[dict[str, Any]]]:
    """Runs of consecutive samples (of one stream, in time order) where ``beyond`` holds."""
    run: list[dict[str, Any]] = []
    for row in samples:
        if beyond(row):
            run.append(row)
        elif run:
            yield run
            run = []
    if run:
        yield run


def _span(run: Sequence[dict[str, Any]]) -> tuple[dt.datetime, dt.datetime, float]:
    """A run covers its first sample's interval to its last sample."""
    start = run[0]["time"] - dt.timedelta(seconds=run[0]["interval_s"] or 0)
    end = run[-1]["time"]
    return start, end, (end - start).total_seconds()


@dataclass(frozen=True)
class _Rule:
    code: str
    metric: str
    applies: Callable[[dict[str, Any]], bool]
    threshold: Callable[[DiagnosisConfig], float]
    above: bool  # beyond means above the threshold (else below)
    unit: str
    what: str  # "lost {worst} % of packets" style, the words of the message
    flowing: bool = False  # only while media flows (a stalled stream is no_media's)
    # the stats types read instead when no row of the connection that ``applies`` to
    # carries the metric (LiveKit's stats have their rtt on the streams themselves)
    otherwise: tuple[str, ...] = ()


def _is(*types: str, kind: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["stats_type"] in types and (kind is None or r["media_kind"] == kind)


_RULES = (
    _Rule("high_loss", "loss_pct", _is("inbound-rtp", "remote-inbound-rtp"),
          lambda c: c.loss_pct, True, "%", "lost packets"),
    _Rule("high_rtt", "rtt_ms", _is("remote-inbound-rtp", "candidate-pair"),
          lambda c: c.rtt_ms, True, "ms", "had a long round trip", otherwise=_MEDIA_TYPES),
    _Rule("high_jitter", "jitter_ms", _is("inbound-rtp", "remote-inbound-rtp"),
          lambda c: c.jitter_ms, True, "ms", "had high jitter"),
    _Rule("bandwidth_limited", "quality_limitation_bandwidth_share",
          _is("outbound-rtp", kind="video"), lambda c: c.limited_share, True, "of the time",
          "was limited by the available bandwidth"),
    _Rule("cpu_limited", "quality_limitation_cpu_share", _is("outbound-rtp", kind="video"),
          lambda c: c.limited_share, True, "of the time", "was limited by the sender's CPU"),
    _Rule("freezes", "freezes_per_min", _is("inbound-rtp", kind="video"),
          lambda c: c.freezes_per_min, True, "per minute", "froze"),
    _Rule("low_fps", "fps", _is(*_MEDIA_TYPES, kind="video"), lambda c: c.low_fps, False,
          "fps", "ran at a low frame rate", flowing=True),
)  # fmt: skip


def _shower(unit: str) -> Callable[[float], str]:
    """How a value of this unit reads in a message."""
    if unit == "of the time":
        return lambda v: f"{100 * v:.0f} % of the time"
    return lambda v: f"{v:.1f} {unit}"


def _severity(rule: _Rule, worst: float, threshold: float) -> str:
    if rule.code in ("bandwidth_limited", "cpu_limited"):
        return "critical" if worst >= 0.9 else "warning"
    if rule.above:
        return "critical" if worst > 2 * threshold else "warning"
    return "critical" if worst < threshold / 2 else "warning"


def _applies(rule: _Rule, rates: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    """Which streams of the connection ``rule`` reads: its own types, or its ``otherwise``
    types when none of its own carries the metric."""
    if rule.otherwise and not any(rule.applies(r) and r[rule.metric] is not None for r in rates):
        return _is(*rule.otherwise)
    return rule.applies


def _rate_findings(rates: Sequence[dict[str, Any]], config: DiagnosisConfig) -> list[Finding]:
    streams: dict[str, list[dict[str, Any]]] = {}
    for row in rates:
        streams.setdefault(row["stats_id"], []).append(row)
    applies = {rule.code: _applies(rule, rates) for rule in _RULES}
    findings: list[Finding] = []
    for stats_id, samples in streams.items():
        first = samples[0]
        for rule in _RULES:
            if not applies[rule.code](first):
                continue
            limit = rule.threshold(config)

            def beyond(r: dict[str, Any], rule: _Rule = rule, limit: float = limit) -> bool:
                value = r[rule.metric]
                if rule.flowing and not (r["bitrate_bps"] or 0) > 0:
                    return False
                if value is None and rule.code in ("bandwidth_limited", "cpu_limited"):
                    # no durations reported: the reason alone marks the whole interval
                    reason = rule.code.removesuffix("_limited")
                    return bool(r["quality_limitation_reason"] == reason)
                return value is not None and (value > limit if rule.above else value < limit)

            for run in _runs(samples, beyond):
                start, end, seconds = _span(run)
                if seconds < config.min_duration:
                    continue
                values = [r[rule.metric] for r in run if r[rule.metric] is not None] or [1.0]
                worst = max(values) if rule.above else min(values)
                mean = sum(values) / len(values)
                shown = _shower(rule.unit)
                findings.append(Finding(
                    rule.code, _severity(rule, worst, limit), start, end, stats_id,
                    {"metric": rule.metric, "threshold": limit, "worst": round(worst, 3),
                     "average": round(mean, 3), "samples": len(run),
                     "stats_type": first["stats_type"], "media_kind": first["media_kind"]},
                    f"{_describe(first)} ({stats_id}) {rule.what}: {shown(mean)} on average,"
                    f" {shown(worst)} at worst, from {_clock(start)} to {_clock(end)} UTC"
                    f" ({seconds:.0f} s; threshold {shown(limit)}).",
                ))  # fmt: skip
        if first["stats_type"] in _MEDIA_TYPES:
            findings += _no_media(stats_id, samples, config)
    return findings


def _no_media(
    stats_id: str, samples: Sequence[dict[str, Any]], config: DiagnosisConfig
) -> list[Finding]:
    """Stretches where a stream's byte counter stopped while later reports came."""
    out = []
    for run in _runs(samples, lambda r: r["bitrate_bps"] is not None and r["bitrate_bps"] == 0):
        start, end, seconds = _span(run)
        if seconds < config.no_media:
            continue
        row = run[0]
        resumed = run[-1] is not samples[-1]
        out.append(Finding(
            "no_media", "warning" if resumed else "critical", start, end, stats_id,
            {"metric": "bitrate_bps", "threshold_s": config.no_media, "seconds": seconds,
             "samples": len(run), "resumed": resumed, "stats_type": row["stats_type"],
             "media_kind": row["media_kind"]},
            f"{_describe(row)} ({stats_id}) carried no media from {_clock(start)} to"
            f" {_clock(end)} UTC ({seconds:.0f} s) while the connection kept reporting"
            + ("; it resumed afterwards." if resumed else "."),
        ))  # fmt: skip
    return out


_DOWN = ("disconnected", "failed")


def _transport_findings(transport: Sequence[dict[str, Any]]) -> list[Finding]:
    findings: list[Finding] = []
    relayed = [t for t in transport if t["local_candidate_type"] == "relay"]
    if relayed:
        over = relayed[0].get("relay_protocol") or relayed[0].get("local_protocol") or "?"
        findings.append(Finding(
            "relay", "info", relayed[0]["time"], relayed[-1]["time"], relayed[0]["pair_id"],
            {"local_candidate_type": "relay", "relay_protocol": over, "samples": len(relayed)},
            f"The media went through a TURN relay (over {over}) from"
            f" {_clock(relayed[0]['time'])} to {_clock(relayed[-1]['time'])} UTC: a direct path"
            " was blocked (a firewall, a symmetric NAT); relaying adds delay and costs"
            " server bandwidth.",
        ))  # fmt: skip
    downs = list(_runs(transport, lambda t: t["ice_state"] in _DOWN or t["pair_state"] in _DOWN))
    for run in downs:
        after = transport[transport.index(run[-1]) + 1 :]
        states = sorted({t["ice_state"] or t["pair_state"] for t in run})
        if after:
            findings.append(Finding(
                "ice_restart", "warning", run[0]["time"], after[0]["time"], run[0]["pair_id"],
                {"states": states, "recovered_at": after[0]["time"].isoformat(),
                 "pair_changes": after[0]["selected_candidate_pair_changes"]},
                f"The connection lost its path ({', '.join(states)}) at"
                f" {_clock(run[0]['time'])} UTC and recovered at {_clock(after[0]['time'])}"
                " UTC (ICE restart).",
            ))  # fmt: skip
        else:
            findings.append(Finding(
                "disconnected", "critical", run[0]["time"], run[-1]["time"], run[0]["pair_id"],
                {"states": states, "samples": len(run)},
                f"The connection was {' then '.join(states)} from {_clock(run[0]['time'])} UTC"
                " and did not recover before its last report.",
            ))  # fmt: skip
    # a path change without a reported outage (a network switch, a restart between reports)
    changes = [t["selected_candidate_pair_changes"] for t in transport]
    if not downs and len({c for c in changes if c is not None}) > 1:
        moved = next(
            t for t, c in zip(transport, changes, strict=True) if c is not None and c != changes[0]
        )
        findings.append(Finding(
            "ice_restart", "warning", moved["time"], moved["time"], moved["pair_id"],
            {"pair_changes": [changes[0], moved["selected_candidate_pair_changes"]]},
            f"The connection changed its candidate pair at {_clock(moved['time'])} UTC"
            " (an ICE restart or a network change).",
        ))  # fmt: skip
    return findings


def _views(engine: QueryEngine) -> set[str]:
    """The names queries can read: tables (derived ones too) and views."""
    return set(engine.tables.views) | set(engine.tables.names())


def diagnose(engine: QueryEngine, connection_id: str, config: DiagnosisConfig) -> dict[str, Any]:
    """The diagnosis of ``connection_id``: {connection_id, channel_id, session_id,
    first_seen, last_seen, score, findings, summary}; ``found`` False when no sample of it
    is stored."""
    missing = {"rtc_rates", "livekit_rates", "connection_quality",
               "connection_transport"} - _views(engine)  # fmt: skip
    if missing:
        raise LookupError(f"no integration provides the views {sorted(missing)}")
    key = _quote(connection_id)
    where = f"connection_id = {key}"
    rate_order, transport_order = ("stats_id", "time"), ("time", "pair_id")
    # one connection (one set-up of the views) for the first pages and the scores
    first_rates, first_transport, scores = engine.run_many([
        _page_sql(_RATE_COLUMNS, _RATES, where, rate_order),
        _page_sql(_TRANSPORT_COLUMNS, "connection_transport", where, transport_order),
        "SELECT avg(score) AS score, avg(mos_audio) AS mos_audio,"
        " avg(video_score) AS video_score, min(score) AS worst_score"
        f" FROM connection_quality WHERE connection_id = {key}",
    ])  # fmt: skip
    rates = _rest(engine, first_rates, _RATE_COLUMNS, _RATES, where, rate_order)
    transport = _rest(
        engine, first_transport, _TRANSPORT_COLUMNS, "connection_transport", where,
        transport_order,
    )  # fmt: skip
    quality = _rows(scores)[0]
    if not rates and not transport:
        return {"connection_id": connection_id, "found": False, "findings": []}
    findings = _rate_findings(rates, config) + _transport_findings(transport)
    order = {"critical": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order[f.severity], f.start, f.code))
    times = [r["time"] for r in rates] + [t["time"] for t in transport]
    some = rates[0] if rates else {}
    if findings:
        codes = ", ".join(dict.fromkeys(f.code for f in findings))
        summary = f"{len(findings)} finding(s): {codes}."
    else:
        summary = "No problem found: every metric stayed within the diagnosis thresholds."
    return {
        "connection_id": connection_id,
        "found": True,
        "channel_id": some.get("channel_id"),
        "session_id": some.get("session_id"),
        "first_seen": min(times).isoformat(),
        "last_seen": max(times).isoformat(),
        "score": {k: (round(v, 3) if v is not None else None) for k, v in quality.items()},
        "findings": [f.as_json() for f in findings],
        "summary": summary,
    }
