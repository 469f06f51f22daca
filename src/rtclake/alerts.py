"""Alerts: rules over the lake's tables and views, evaluated on a schedule inside
``rtclake run``.

What it accepts: the rules of ``alerts.rules`` (:class:`rtclake.config.AlertRuleConfig`,
whose docstring states what fires and what resolves). When the service is built, each
rule is checked against the registry: its source is a table or view, the columns it names
are the source's (a metric of a table numeric), ``where`` is one SQL expression, and each
name in ``notify`` is a sink or ``log``; a mistake is a :class:`ConfigError` naming the key.

How: every ``alerts.interval`` seconds each rule is one query through the
:class:`~rtclake.lake.query.QueryEngine`, so it runs in the engine's sandbox (one
read-only SELECT over the lake's files) and within its limits, on its threads. The query
is built from quoted identifiers checked against the source, the condition's operator and
number, and ``where`` as DuckDB parsed it; it answers the scope values in breach, and
those firing (to see them resolve).

What it guarantees: each alert fires once and resolves once. Which scope values of which
rule are firing is written to ``DATA_DIR/alerts-state.json`` (atomically) before the
notification leaves, so a restart neither fires an alert again nor forgets it. A
notification is a record of the ``alerts`` table, handed to the intake as a source hands
its records: spooled, stored in the lake, and delivered at least once to every sink, of
which those its rule's ``notify`` names (``slack``, ``webhook``) send it on. Until the
intake has it, it waits in the state file's outbox under its id, so a crash in between
sends it again with the same record id, never loses it. Every fire and resolve is one log
line (``alert firing``, ``alert resolved``), whatever ``notify`` says.

What it reports: ``rtclake_alerts_firing{rule}``, ``rtclake_alert_evaluations_total``
(one per rule evaluated), ``rtclake_alert_errors_total{rule}`` (a query that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import orjson
import structlog

from rtclake.config import AlertRuleConfig, AlertsConfig
from rtclake.durable import write_atomic
from rtclake.errors import ConfigError, InputError, QueryError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.lake.query import QueryEngine
from rtclake.metrics import Metrics
from rtclake.tables import ALERTS, TableRegistry

log = structlog.get_logger(__name__)

SOURCE = "alerts"  # the source and stream of alert records
STATE_FILE = "alerts-state.json"
LOG = "log"  # in notify: the log line only
# The ids of the dashboard's pages, each with the ids that are constant under it (so a
# connection's session is known from any of its rows).
CONTEXT = {
    "connection_id": ("session_id", "channel_id"),
    "session_id": ("channel_id",),
    "channel_id": (),
}
_SQL_OP = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "==": "=", "!=": "<>"}
_NUMERIC = ("float", "int")

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Rule:
    """A checked rule: what its query needs besides the configuration."""

    name: str
    config: AlertRuleConfig
    where: str | None  # as DuckDB parsed it
    ids: tuple[str, ...]  # the page ids the source has, among those the scope fixes
    by_date: bool  # a lake table filtered on ``time``: its date folders can be skipped

    @property
    def is_count(self) -> bool:
        return self.config.metric == "count"

    @property
    def scope_name(self) -> str:
        """The scope as one text: ``connection_id``, ``node_name=sora-1``, ``all``."""
        scope = self.config.scope
        if isinstance(scope, str):
            return scope
        if scope:
            return ",".join(f"{column}={value}" for column, value in scope.items())
        return "all"

    def describe(self) -> str:
        """The condition in words: ``loss_pct > 5 for 2m``, ``count < 1 in 5m``."""
        c = self.config
        if self.is_count:
            return f"count of {c.source} rows {c.condition} in {duration(c.for_)}"
        held = f" for {duration(c.for_)}" if c.for_ else ""
        return f"{c.metric} {c.condition}{held}"

    def sql(self, now: dt.datetime, firing: Collection[str]) -> str:
        """The query answering ``scope_value, value, since_us, latest_us, breaching`` and
        the page ids, for each scope value in breach at ``now`` or in ``firing``."""
        c = self.config
        t = _ident(c.time_column)
        if self.is_count:  # the window (now - for, now]
            start = now - dt.timedelta(seconds=c.for_)
            filters = [f"{t} > {_time(start)}"]
        else:
            # a streak of `for` that ends at a sample up to `stale_after` old, and room for
            # the spacing of its first sample (up to `for` apart)
            start = now - dt.timedelta(seconds=2 * c.for_ + c.stale_after)
            filters = [f"{t} >= {_time(start)}"]
        filters.append(f"{t} <= {_time(now)}")
        if self.by_date:
            day = start.astimezone(dt.UTC).date()  # the lake's folders are UTC dates of time
            filters.append(f'"date" >= DATE {_lit(day.isoformat())}')
        if isinstance(c.scope, str):
            scope_value = f"CAST({_ident(c.scope)} AS VARCHAR)"
            filters.append(f"{_ident(c.scope)} IS NOT NULL")
        else:
            scope_value = _lit(self.scope_name)
            filters += [f"{_ident(k)} = {_lit(v)}" for k, v in (c.scope or {}).items()]
        if not self.is_count:
            filters.append(f"{self.metric_sql()} IS NOT NULL")
        if self.where is not None:
            filters.append(f"({self.where})")
        where = " AND ".join(filters)
        ids = "".join(f", any_value({_ident(i)}) AS {_ident(i)}" for i in self.ids)
        outer_ids = "".join(f", {_ident(i)}" for i in self.ids)
        source = _ident(c.source)
        op, threshold = _SQL_OP[c.operator], _number(c.threshold)
        if self.is_count:
            group = " GROUP BY 1" if isinstance(c.scope, str) else ""
            evaluated = (
                f"SELECT scope_value, value, NULL::BIGINT AS since_us, latest_us{outer_ids},"
                f" value {op} {threshold} AS breaching FROM ("
                f"SELECT {scope_value} AS scope_value, count(*)::DOUBLE AS value,"
                f" epoch_us(max({t})) AS latest_us{ids} FROM {source} WHERE {where}{group})"
            )
        else:
            samples = (
                f"SELECT {scope_value} AS scope_value, {t} AS t,"
                f" {self.reduce()}({self.metric_sql()}) AS v{ids}"
                f" FROM {source} WHERE {where} GROUP BY 1, 2"
            )
            # the newest time that did not breach: the streak is what came after it
            marked = (
                f"SELECT *, max(CASE WHEN NOT (v {op} {threshold}) THEN t END)"
                f" OVER (PARTITION BY scope_value) AS last_ok FROM ({samples})"
            )
            per_scope = (
                "SELECT scope_value, max(t) AS latest, arg_max(v, t) AS value,"
                f" min(t) FILTER (WHERE last_ok IS NULL OR t > last_ok) AS since{ids}"
                f" FROM ({marked}) GROUP BY scope_value"
            )
            for_us = round(c.for_ * 1_000_000)
            fresh = _time(now - dt.timedelta(seconds=c.stale_after))
            evaluated = (
                f"SELECT scope_value, value, epoch_us(since) AS since_us,"
                f" epoch_us(latest) AS latest_us{outer_ids},"
                f" since IS NOT NULL AND epoch_us(latest) - epoch_us(since) >= {for_us}"
                f" AND latest >= {fresh} AS breaching FROM ({per_scope})"
            )
        known = f" OR scope_value IN ({', '.join(map(_lit, sorted(firing)))})" if firing else ""
        return f"SELECT * FROM ({evaluated}) WHERE breaching{known}"

    def stale(self, row: dict[str, Any], now: dt.datetime) -> bool:
        """Whether a threshold rule's scope value has no sample newer than
        ``stale_after`` (its value is then no data)."""
        if self.is_count:
            return False
        fresh = now - dt.timedelta(seconds=self.config.stale_after)
        latest = _from_us(row["latest_us"])
        return latest is None or latest < fresh

    def metric_sql(self) -> str:
        metric = self.config.metric
        if metric.startswith("extra."):
            path = "$." + ".".join(f'"{key}"' for key in metric.split(".")[1:])
            return f'TRY_CAST(json_extract_string("extra", {_lit(path)}) AS DOUBLE)'
        return f"CAST({_ident(metric)} AS DOUBLE)"

    def reduce(self) -> str:
        if self.config.reduce is not None:
            return self.config.reduce
        return "min" if self.config.operator in ("<", "<=") else "max"


def check_rules(config: AlertsConfig, tables: TableRegistry, sinks: Collection[str]) -> list[Rule]:
    """The enabled rules, checked against the tables and views and the sinks' names;
    raises :class:`ConfigError` naming every key at fault."""
    problems: list[str] = []
    rules = []
    for name, rule in config.rules.items():
        if not rule.enabled:
            continue
        key = f"alerts.rules.{name}"
        before = len(problems)
        try:
            columns = _columns(tables, rule.source)
        except KeyError:
            known = ", ".join([*tables.names(), *tables.views])
            problems.append(f"{key}.source: no table or view {rule.source!r} (known: {known})")
            columns = None
        named = {"time_column": [rule.time_column], "scope": _scope_columns(rule)}
        if rule.metric.startswith("extra."):
            named["metric"] = ["extra"]
        elif rule.metric != "count":
            named["metric"] = [rule.metric]
        for setting, wanted in named.items():
            missing = [c for c in wanted if columns is not None and c not in columns]
            if missing:
                problems.append(
                    f"{key}.{setting}: {rule.source} has no column {missing[0]!r}"
                    f" (columns: {', '.join(sorted(columns or ()))})"
                )
        if rule.source in tables and named.get("metric") == [rule.metric]:  # a column
            kinds = {c.name: c.kind for c in tables[rule.source].columns}
            if rule.metric in (columns or ()) and kinds.get(rule.metric) not in _NUMERIC:
                problems.append(f"{key}.metric: {rule.source}.{rule.metric} is not a number")
        unknown = [n for n in rule.notify if n != LOG and n not in sinks]
        if unknown:
            problems.append(
                f"{key}.notify: no sink named {unknown[0]!r} (sinks: {', '.join(sinks) or 'none'};"
                f" or {LOG}, the log line only)"
            )
        where = None
        if rule.where is not None:
            try:
                where = str(duckdb.SQLExpression(rule.where))
            except duckdb.Error as exc:
                problems.append(f"{key}.where: not one SQL expression ({str(exc).splitlines()[0]})")
        if len(problems) > before:
            continue
        rules.append(
            Rule(
                name=name,
                config=rule,
                where=where,
                ids=_page_ids(rule, columns),
                by_date=rule.source in tables and rule.time_column == "time",
            )
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return rules


def _columns(tables: TableRegistry, source: str) -> set[str] | None:
    """The columns of a table or view (None: a view that does not declare them); raises
    KeyError for neither."""
    if source in tables:
        return {*tables[source].schema.names, "date"}
    return {name for name, _ in tables.views[source].columns} or None


def _scope_columns(rule: AlertRuleConfig) -> list[str]:
    if isinstance(rule.scope, str):
        return [rule.scope]
    return list(rule.scope or ())


def _page_ids(rule: AlertRuleConfig, columns: set[str] | None) -> tuple[str, ...]:
    """The page ids an alert of ``rule`` can name: the scope's and those constant under
    it (a connection's session and channel), where the source has them."""
    fixed = [c for c in _scope_columns(rule) if c in CONTEXT]
    ids = [*fixed, *(c for f in fixed for c in CONTEXT[f] if c not in fixed)]
    return tuple(dict.fromkeys(c for c in ids if columns is None or c in columns))


class AlertEngine:
    """Evaluates the rules every ``interval`` seconds and hands alerts to the intake."""

    def __init__(
        self,
        config: AlertsConfig,
        *,
        tables: TableRegistry,
        query: QueryEngine,
        intake: Intake,
        metrics: Metrics,
        sinks: Collection[str],
        data_dir: Path,
        public_url: str,
        clock: Clock = _utcnow,
    ) -> None:
        self.rules = check_rules(config, tables, sinks)
        self.interval = config.interval
        self.query = query
        self.intake = intake
        self.metrics = metrics
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.table = tables[ALERTS.name]
        self.path = data_dir / STATE_FILE
        self.firing, self.outbox = self._load()
        self._task: asyncio.Task[None] | None = None
        self._errors: dict[str, str] = {}
        self._evaluating = asyncio.Lock()
        for rule in self.rules:
            metrics.alerts_firing.labels(rule.name).set(len(self.firing.get(rule.name, {})))

    # -- the state ---------------------------------------------------------------------

    def _load(self) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, Any]]]:
        try:
            state = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}, []
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(
                f"{self.path} cannot be read ({exc}); remove it to start afresh (alerts"
                " firing now would then fire again)"
            ) from exc
        firing: dict[str, dict[str, dict[str, Any]]] = state.get("firing", {})
        names = {rule.name for rule in self.rules}
        for gone in sorted(set(firing) - names):
            log.info("alert rule no longer configured; its firing alerts are forgotten",
                     rule=gone, alerts=len(firing.pop(gone)))  # fmt: skip
        return firing, list(state.get("outbox", []))

    def _save(self, firing: dict[str, dict[str, dict[str, Any]]], outbox: list[Any]) -> None:
        state = {"version": 1, "firing": firing, "outbox": outbox}
        write_atomic(self.path, orjson.dumps(state, option=orjson.OPT_INDENT_2))

    # -- the schedule ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            # first a pause: what the sources took at start reaches the lake meanwhile
            await asyncio.sleep(self.interval)
            try:
                await self.evaluate()
            except OSError as exc:  # the state file's disk: nothing was sent, tried again
                log.error("alerts: state not saved; evaluated again next round",
                          path=str(self.path), error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            except Exception:  # a bug in one round must not end alerting for good
                log.exception("alerts: evaluation round failed")

    # -- one evaluation ----------------------------------------------------------------

    async def evaluate(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Evaluate every rule once at ``now`` (default: the clock) and hand the alerts
        that fired or resolved to the intake; returns their records."""
        async with self._evaluating:  # one at a time: each starts from the last one's state
            return await self._evaluate(now or self.clock())

    async def _evaluate(self, now: dt.datetime) -> list[dict[str, Any]]:
        firing = {name: dict(scopes) for name, scopes in self.firing.items()}
        events: list[dict[str, Any]] = []
        for rule in self.rules:
            answer = await self._query(rule, now, firing.get(rule.name, {}))
            if answer is not None:
                rows, complete = answer
                state = firing.setdefault(rule.name, {})
                events += self._transitions(rule, rows, now, state, resolve=complete)
        if events:
            outbox = [*self.outbox, *events]
            self._save(firing, outbox)  # before anything leaves: a restart cannot repeat it
            self.firing, self.outbox = firing, outbox
            for event in events:
                say = log.warning if event["state"] == "firing" else log.info
                say(f"alert {event['state']}", rule=event["rule"], alert=event["alert_id"],
                    scope=event["scope_value"], value=event["value"], url=event["url"],
                    message=event["message"])  # fmt: skip
        for rule in self.rules:
            self.metrics.alerts_firing.labels(rule.name).set(len(self.firing.get(rule.name, {})))
        await self._hand_over()
        return events

    async def _query(
        self, rule: Rule, now: dt.datetime, firing: Collection[str]
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """The rule's rows at ``now`` and whether they are all, or None when its query
        failed (counted, logged when the error is new)."""
        self.metrics.alert_evaluations.inc()
        try:
            result = await self.query.run_async(rule.sql(now, firing))
        except QueryError as exc:
            self.metrics.alert_errors.labels(rule.name).inc()
            if self._errors.get(rule.name) != exc.message:
                self._errors[rule.name] = exc.message
                log.error("alerts: rule not evaluated; tried again next round",
                          rule=rule.name, reason=exc.reason, error=exc.message)  # fmt: skip
            return None
        if self._errors.pop(rule.name, None) is not None:
            log.info("alerts: rule evaluated again", rule=rule.name)
        if result.truncated:
            log.warning("alerts: more scope values in breach than query.max_rows; the rest"
                        " wait, and none resolves, until fewer are", rule=rule.name)  # fmt: skip
        rows: list[dict[str, Any]] = result.table.to_pylist()
        return rows, not result.truncated

    def _transitions(
        self,
        rule: Rule,
        rows: list[dict[str, Any]],
        now: dt.datetime,
        firing: dict[str, dict[str, Any]],
        *,
        resolve: bool = True,
    ) -> list[dict[str, Any]]:
        """The records of the alerts of ``rule`` that fire or resolve at ``now``;
        ``firing`` (the rule's state) is updated. Without ``resolve`` (``rows`` were cut
        at the row limit) a firing alert missing from them is not resolved."""
        events = []
        seen: dict[str, dict[str, Any]] = {}
        for row in rows:
            seen[row["scope_value"]] = row
            if row["breaching"] and row["scope_value"] not in firing:
                ids = {i: row.get(i) for i in rule.ids}
                ids.update({k: str(v) for k, v in _fixed(rule).items()})
                since = _from_us(row["since_us"]) or now - dt.timedelta(seconds=rule.config.for_)
                alert_id = hashlib.md5(
                    f"{rule.name}\x1f{row['scope_value']}\x1f{now.isoformat()}".encode(),
                    usedforsecurity=False,
                ).hexdigest()
                state = {"alert_id": alert_id, "since": since.isoformat(),
                         "fired_at": now.isoformat(), "ids": ids}  # fmt: skip
                firing[row["scope_value"]] = state
                events.append(self._record(rule, "firing", row["scope_value"], state,
                                           row["value"], now))  # fmt: skip
        for scope_value in sorted(firing):
            current = seen.get(scope_value)
            if (current is not None and current["breaching"]) or (current is None and not resolve):
                continue
            value = None if current is None or rule.stale(current, now) else current["value"]
            if current is None and rule.is_count:
                value = 0.0  # a scope value without rows counts none
            events.append(
                self._record(rule, "resolved", scope_value, firing.pop(scope_value), value, now)
            )
        return events

    def _record(
        self,
        rule: Rule,
        state: str,
        scope_value: str,
        alert: dict[str, Any],
        value: float | None,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """The ``alerts`` record of one notification."""
        ids: dict[str, str | None] = alert["ids"]
        subject, url = self._subject(rule, scope_value, ids)
        since = dt.datetime.fromisoformat(alert["since"])
        shown = "no data" if value is None else f"{value:g}"
        if state == "firing":
            text = f"FIRING {rule.name}: {rule.describe()} on {subject}: {shown}"
            text += f" (since {_clock(since)})"
        else:
            fired = dt.datetime.fromisoformat(alert["fired_at"])
            text = f"RESOLVED {rule.name}: {rule.describe()} no longer holds on {subject}:"
            text += f" {shown} (firing since {_clock(fired)})"
        text += "." + (f" {rule.config.summary}" if rule.config.summary else "")
        if url:
            text += f" {url}"
        return {
            "time": now.isoformat(),
            "id": f"{alert['alert_id']}-{state}",
            "alert_id": alert["alert_id"],
            "rule": rule.name,
            "state": state,
            "source_table": rule.config.source,
            "metric": rule.config.metric,
            "condition": rule.config.condition,
            "scope": rule.scope_name,
            "scope_value": scope_value,
            **{key: ids.get(key) for key in CONTEXT},
            "value": value,
            "threshold": rule.config.threshold,
            "since": since.isoformat(),
            "message": text,
            "url": url,
            "notify": [n for n in rule.config.notify if n != LOG],
        }

    def _subject(
        self, rule: Rule, scope_value: str, ids: dict[str, str | None]
    ) -> tuple[str, str | None]:
        """What an alert is about, in words, and the page that shows it."""
        scope = rule.config.scope
        for kind, page in (("connection_id", "connections"), ("session_id", "sessions")):
            own = ids.get(kind)
            if own:
                context = [f"{c.split('_')[0]} {ids[c]}" for c in CONTEXT[kind] if ids.get(c)]
                words = f"{kind.split('_')[0]} {own}"
                if context:
                    words += f" ({', '.join(context)})"
                return words, f"{self.public_url}/{page}/{quote(own, safe='')}"
        if isinstance(scope, str):
            return f"{scope.removesuffix('_id')} {scope_value}", None
        if scope:
            return scope_value, None
        return f"all of {rule.config.source}", None

    async def _hand_over(self) -> None:
        """Hand the outbox's records to the intake, oldest first; what the spool cannot
        take now waits for the next round."""
        taken = 0
        try:
            for record in self.outbox:
                try:
                    records = self.intake.validate(orjson.dumps(record), self.table)
                except InputError as exc:  # a bug of this module's: say so, do not block
                    log.error("alerts: record refused by its table; dropped",
                              alert=record.get("id"), error=exc.message)  # fmt: skip
                else:
                    await self.intake.take(SOURCE, SOURCE, self.table, records, idem=record["id"])
                taken += 1
        except SpoolUnavailable as exc:
            log.warning("alerts: the spool cannot take alerts now; tried again next round",
                        waiting=len(self.outbox) - taken, error=exc.message)  # fmt: skip
        if taken:
            outbox = self.outbox[taken:]
            self._save(self.firing, outbox)
            self.outbox = outbox


def _fixed(rule: Rule) -> dict[str, Any]:
    """The page ids a named scope fixes (``{connection_id: X}``)."""
    scope = rule.config.scope
    return {k: v for k, v in scope.items() if k in CONTEXT} if isinstance(scope, dict) else {}


def duration(seconds: float) -> str:
    """``120`` -> ``2m``, ``90`` -> ``90s``, ``3600`` -> ``1h``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _clock(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _from_us(us: int | None) -> dt.datetime | None:
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: object) -> str:
    """A SQL literal of a scope's value (text, a number, true/false)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return _number(value)
    return "'" + str(value).replace("'", "''") + "'"


def _number(value: float) -> str:
    return repr(value) if isinstance(value, int) else repr(float(value))


def _time(moment: dt.datetime) -> str:
    return f"TIMESTAMPTZ {_lit(moment.astimezone(dt.UTC).isoformat())}"
