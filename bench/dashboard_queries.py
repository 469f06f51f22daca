"""Dashboard queries: rtclake's built-in dashboard and its Grafana panels against Kohaku's
equivalents, on one generated Sora lake, in one run (issue 11, item 9).

The corpus (``bench/sora_corpus.py``): ``connections`` connections in rooms of ``room``
reporting once a minute for ``hours`` hours, gzipped as Fluent Bit uploads it, imported
into a lake by rtclake's importer and loaded into a DuckDB file by Kohaku's loader
(``bench/sora_import.py``), both cached under ``OUT/dashboard/`` by their parameters.

rtclake: each built-in page's queries as the page runs them (``rtclake.lake.dashboard``'s
functions with the arguments ``rtclake.web.dashboard`` passes, a batch per
``QueryEngine.run_many`` as the page sends it) through an engine with the default
``query:`` settings, and the connection's diagnosis; each Grafana panel's and variable's
SQL, its macros and variables replaced as Grafana and the plugin do, on an in-memory
DuckDB with the data source's init SQL over the lake. Kohaku: the same question over its
table, ``json_transform``/``json_extract`` of ``rtc_data``, as written in
``bench/kohaku_sql/`` (``init.sql`` first, once per connection). The two sides take
turns, query by query (which goes first alternates by round); the medians count.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from rich.console import Console

from bench import sora_corpus, sora_import
from bench.report import busy_before, machine, md_table, print_tables, rich_table, update_section
from rtclake.config import DiagnosisConfig, QueryConfig
from rtclake.diagnosis import diagnose
from rtclake.errors import QueryError
from rtclake.grafana import init_sql, interpolate, plugin_duckdb, queries, write_empty_lake
from rtclake.lake import dashboard as q
from rtclake.lake.catalog import Catalog, default_url, parse_url
from rtclake.lake.maintenance import Maintenance, MaintenanceConfig
from rtclake.lake.query import Query, QueryEngine, QueryResult
from rtclake.lake.storage import storage_for
from rtclake.registry import Registry, load_registry
from rtclake.web.dashboard import (
    NODE_COLUMNS,
    RATE_COLUMNS,
    SCORE_COLUMNS,
    TRAFFIC_COLUMNS,
    _entity_range,
)

T = TypeVar("T")

CONNECTIONS = 2_000
HOURS = 6
ROOM = 2  # 17 objects a report: 15 of its own, audio and video received from the other one
#: Five: the smallest queries (a few ms) swing with the host by as much as the 5x margin
#: from round to round; the median of five rides out two bad rounds, of three one
ROUNDS = 5
WARMUP = 0  # the first round warms the caches; the median leaves it out
KOHAKU_SQL = Path(__file__).resolve().parent / "kohaku_sql"
MAX_SECONDS = 1.0  # the targets: every query under this on the rtclake side ...
MIN_RATIO = 5.0  # ... and at least this many times faster than Kohaku's equivalent
GRAFANA_INTERVAL_MS = 60_000  # Grafana's $__interval_ms for 6 hours on a wide panel, at least
PROFILE_TIMEOUT = 120.0  # seconds a profiled query may run
PROFILE_MEMORY = "4GiB"  # DuckDB's memory for the profile of a query the limit stopped
_SRC = Path(__file__).resolve().parent.parent / "src" / "rtclake"
# Source files that only read the lake: a change to them keeps a cached lake.
_READ_SIDE = ("web/", "grafana.py", "lake/dashboard.py", "lake/query.py", "diagnosis.py",
              "integrations/sora/dashboards.py", "alerts", "cli.py", "demo.py")  # fmt: skip


@dataclass(frozen=True)
class Options:
    """What ``python -m bench --only dashboard`` runs."""

    out_dir: Path
    connections: int = CONNECTIONS
    hours: int = HOURS
    room: int = ROOM
    rounds: int = ROUNDS
    warmup: int = WARMUP
    rebuild: bool = False
    write_docs: bool = True
    #: Time the lake after one maintenance run (merged files, closed days sorted), as
    #: ``rtclake run``'s schedule leaves it, rather than as the import leaves it.
    maintained: bool = False


# -- the corpus, the lake and Kohaku's table --------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The generated data, stored both ways, and what the pages are asked about."""

    root: Path  # rtclake/lake, rtclake-empty/lake (for Grafana's init SQL), kohaku.duckdb
    lines: int
    start: datetime
    end: datetime  # "now" for the pages
    channel_id: str
    session_id: str
    connection_id: str
    built: dict[str, Any]  # the manifest: import and load times, when, what
    #: What Grafana's container would have as /var/lib: the lake in rtclake/lake (the
    #: imported one, or its maintained copy), and rtclake-empty/lake
    var_lib: Path

    @property
    def lake(self) -> Path:
        return self.var_lib / "rtclake" / "lake"

    @property
    def kohaku_db(self) -> Path:
        return self.root / "kohaku.duckdb"


def _lake_fingerprint(registry: Registry) -> str:
    """What decides the lake's contents: every table's stored columns and the code that
    writes them (rtclake's sources but those that only read)."""
    digest = hashlib.sha256()
    for table in registry.tables:
        digest.update(f"{table.name}:{table.stored_schema}\n".encode())
    for path in sorted(_SRC.rglob("*.py")):
        relative = path.relative_to(_SRC).as_posix()
        if not relative.startswith(_READ_SIDE):
            digest.update(relative.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build(opts: Options, registry: Registry, console: Console) -> Corpus:
    """The corpus, the lake and Kohaku's file for ``opts``, from the cache when its
    manifest matches (the lake is rebuilt when rtclake's tables or writing code changed)."""
    root = opts.out_dir / "dashboard" / f"c{opts.connections}-h{opts.hours}-r{opts.room}"
    reports = 60 * opts.hours
    lines = opts.connections * reports * sora_corpus.objects_per_report(opts.room)
    manifest_path = root / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.exists() and not opts.rebuild:
        manifest = json.loads(manifest_path.read_text())
    gz = root / "upload" / "rtc_stats.jsonl.gz"
    if manifest.get("lines") != lines or not gz.exists():
        console.print(f"Dashboard: generating {lines:,} rtc_stats lines into {gz} ...")
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        sora_corpus.write(gz, lines, connections=opts.connections, room=opts.room)
        manifest = {"lines": lines, "generated_s": round(time.perf_counter() - started, 1)}
    fingerprint = _lake_fingerprint(registry)
    lake_ok = (root / "rtclake" / "lake").is_dir() and manifest.get("lake") == fingerprint
    if not lake_ok:
        console.print("Dashboard: importing the corpus with rtclake's importer ...")
        result = sora_import.rtclake_import(gz, root)
        assert result.rows == lines, (result.rows, lines)
        manifest.update(lake=fingerprint, rtclake_import_s=round(result.seconds, 1),
                        lake_bytes=result.stored_bytes)  # fmt: skip
    if not (root / "kohaku.duckdb").exists() or "kohaku_load_s" not in manifest:
        console.print("Dashboard: loading the corpus as Kohaku loads it ...")
        result = sora_import.kohaku(gz, root)
        assert result.rows == lines, (result.rows, lines)
        manifest.update(kohaku_load_s=round(result.seconds, 1), kohaku_bytes=result.stored_bytes)
    write_empty_lake(root / "rtclake-empty" / "lake", registry.tables)
    if not lake_ok or "built" not in manifest:
        manifest["built"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    var_lib = root
    if opts.maintained:
        var_lib = root / "maintained"
        if manifest.get("maintained") != fingerprint or not (var_lib / "rtclake").is_dir():
            manifest.update(maintain(root, var_lib, registry, console), maintained=fingerprint)
        write_empty_lake(var_lib / "rtclake-empty" / "lake", registry.tables)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if lake_ok:
        console.print(f"Dashboard: reusing the lake and Kohaku's file in {root}")
    # the pages look at the first room: its session and its first connection
    with duckdb.connect(str(root / "kohaku.duckdb"), read_only=True) as con:
        found = con.sql(
            "SELECT channel_id, session_id, connection_id FROM rtc_stats"
            " WHERE channel_id = 'room-0' ORDER BY timestamp LIMIT 1"
        ).fetchone()
    assert found is not None
    channel_id, session_id, connection_id = found
    start = sora_corpus.START
    return Corpus(root, lines, start, start + timedelta(hours=opts.hours), channel_id,
                  session_id, connection_id, manifest, var_lib)  # fmt: skip


def maintain(root: Path, var_lib: Path, registry: Registry, console: Console) -> dict[str, Any]:
    """A copy of the imported lake under ``var_lib`` after one run of rtclake's
    maintenance with the default settings, as run two days after the corpus was imported
    (its day is over; the files it replaced are deleted, as cleanup deletes them an hour
    later, so Grafana's glob finds the live files only)."""
    console.print("Dashboard: a copy of the lake, maintained as rtclake run maintains it ...")
    shutil.rmtree(var_lib, ignore_errors=True)
    shutil.copytree(root / "rtclake" / "lake", var_lib / "rtclake" / "lake")
    lake = var_lib / "rtclake" / "lake"
    storage = storage_for(lake)
    catalog = Catalog(parse_url(default_url(storage.root)), storage, registry.tables)
    later = datetime.now(UTC) + timedelta(days=2)
    started = time.perf_counter()
    report = Maintenance(catalog, MaintenanceConfig(), node="bench").run(now=later)
    seconds = time.perf_counter() - started
    assert report is not None and report.ok, report
    files = {
        table: sum(1 for _ in (lake / "main" / table).rglob("*.parquet"))
        for table in ("rtc_stats", "rtc_rates", "connection_reports")
    }
    return {"maintain_s": round(seconds, 1), "maintain": report.as_dict(),
            "maintain_details": [line for step in report.steps for line in step.details],
            "maintained_files": files}  # fmt: skip


# -- what is timed --------------------------------------------------------------------------


@dataclass
class Timing:
    """One side of one query: seconds per measured round, or why it failed."""

    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and not self.error else None


@dataclass
class Row:
    """One line of the table: a query of a page or of a Grafana dashboard, both sides."""

    group: str
    name: str
    kohaku: tuple[str, ...]  # files under bench/kohaku_sql, summed; (): none in this corpus
    ours: Timing = field(default_factory=Timing)
    theirs: Timing = field(default_factory=Timing)
    counted: bool = True  # False: a page's total, shown but not held to the targets
    sql: str = ""  # rtclake's SQL, to profile the slowest
    grafana: bool = False  # rtclake's side runs on the Grafana data source's DuckDB


class Recorder:
    """The rows of the run, in order, and whether the round is measured (not warm-up)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.measuring = False

    def row(self, group: str, name: str, kohaku: tuple[str, ...] = (), **kw: Any) -> Row:
        if (group, name) not in self.rows:
            self.rows[group, name] = Row(group, name, kohaku, **kw)
        return self.rows[group, name]

    def record(self, timing: Timing, seconds: float | None, error: str | None = None) -> None:
        if error:
            timing.error = error
        elif self.measuring and seconds is not None:
            timing.seconds.append(seconds)


def _error(exc: BaseException) -> str:
    if isinstance(exc, QueryError):
        return f"{exc.reason}: {exc}"[:300]
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]


def _rfc3339(t: datetime) -> str:
    """A time as Grafana's plugin formats the range (milliseconds when it has them)."""
    text = t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.replace(".000Z", "Z")


@dataclass(frozen=True)
class Question:
    """What Kohaku is asked for one row: its files, with the variables, range and bucket."""

    row: Row
    variables: dict[str, str]
    r: q.TimeRange
    interval_ms: int


def run_as_the_plugin(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Run ``sql`` as Grafana's DuckDB plugin does (Kohaku's and rtclake's Grafana): its
    driver, go-duckdb, prepares the statement (parsed, bound and planned once) and
    executes it, and every row is fetched. ``con.sql(...)`` would bind the query twice
    (once to make a relation, once to run it): ~1.9 ms more on Grafana's started and
    ended over rtclake's views, ~0.3 ms on Kohaku's table (2026-12-04, one-off)."""
    con.execute(sql).fetch_arrow_table()


class Kohaku:
    """Kohaku's side: its DuckDB file (read-only, DuckDB's default threads) with the
    macros of ``init.sql``, asked the questions of ``bench/kohaku_sql``."""

    def __init__(self, corpus: Corpus) -> None:
        self.con = duckdb.connect(str(corpus.kohaku_db), read_only=True)
        self.con.execute((KOHAKU_SQL / "init.sql").read_text())
        (self.threads,) = self.con.sql("SELECT current_setting('threads')").fetchone() or (0,)

    def ask(self, question: Question) -> float:
        """Seconds to answer (every row fetched, as Grafana's plugin fetches them)."""
        total = 0.0
        for name in question.row.kohaku:
            sql = interpolate(
                (KOHAKU_SQL / name).read_text(), question.variables,
                time_from=_rfc3339(question.r.start), time_to=_rfc3339(question.r.end),
                interval_ms=question.interval_ms,
            )  # fmt: skip
            started = time.perf_counter()
            run_as_the_plugin(self.con, sql)
            total += time.perf_counter() - started
        return total

    def close(self) -> None:
        self.con.close()


# -- rtclake's built-in dashboard ------------------------------------------------------------

Batch = list[tuple[str, Query]]  # (query name, SQL), run together as a page sends them
_PAGE_TOTAL = "page total (wall: the batches, views set up)"


class Pages:
    """The built-in pages, each run as ``rtclake.web.dashboard`` runs it: the same
    functions of ``rtclake.lake.dashboard`` with the same arguments, each batch in one
    ``QueryEngine.run_many``. Each returns the questions Kohaku is asked for it."""

    def __init__(self, engine: QueryEngine, corpus: Corpus, rec: Recorder) -> None:
        self.engine = engine
        self.corpus = corpus
        self.rec = rec
        # the server runs a page's queries on the engine's own threads (offload), never
        # on the thread that runs Grafana's and Kohaku's DuckDB (another process there)
        self._loop = asyncio.new_event_loop()
        self._wall = 0.0
        self._refused: str | None = None  # why the page's batch was refused, if it was

    def _batch(self, group: str, batch: Batch, kohaku: Mapping[str, tuple[str, ...]]) -> list[Any]:
        """The rows of each query's result (None where it failed). On a refusal, each query
        runs alone, so that every one has its time or its error."""
        rows = [self.rec.row(group, name, kohaku[name]) for name, _ in batch]
        started = time.perf_counter()
        results: list[QueryResult | None]
        try:
            results = self._offload(self.engine.run_many, [sql for _, sql in batch])
        except QueryError as exc:
            self._refused = _error(exc)
            results = []
            for _, sql in batch:
                try:
                    results.append(self._offload(self.engine.run_many, [sql])[0])
                except QueryError as exc:
                    results.append(None)
                    self.rec.record(rows[len(results) - 1].ours, None, _error(exc))
        self._wall += time.perf_counter() - started
        for row, result in zip(rows, results, strict=True):
            if result is not None:
                row.sql = result.sql  # as run (a query made for its snapshot)
                self.rec.record(row.ours, result.elapsed)
        return [None if result is None else _records(result) for result in results]

    def _offload(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the engine's query threads, as the server runs it."""
        return self._loop.run_until_complete(self.engine.offload(functools.partial(call, *args)))

    def close(self) -> None:
        self._loop.close()

    @contextmanager
    def _page(self, group: str) -> Iterator[None]:
        """The page's total: the wall time of its batches, or the refusal it answers with
        (its queries are then timed one by one, which the total does not count)."""
        self._wall, self._refused = 0.0, None
        yield
        total = self.rec.row(group, _PAGE_TOTAL, counted=False)
        if self._refused:
            self.rec.record(total.ours, None, f"the page is refused: {self._refused}")
        else:
            self.rec.record(total.ours, self._wall)

    def overview(self, name: str) -> list[Question]:
        now = self.corpus.end
        r = q.time_range(name, now=now)
        bucket, flow_bucket = r.bucket(), r.bucket(at_least=60)
        group = f"Built-in overview, range={name}"
        kohaku = {
            "active now": ("dashboard/overview_active_now.sql",),
            "connection flow": ("dashboard/overview_connection_flow.sql",),
            "worst connections": ("dashboard/overview_worst_connections.sql",),
            "top channels": ("dashboard/overview_top_channels.sql",),
            "sessions": ("dashboard/overview_sessions.sql",),
            "Sora nodes": (),  # the Sora API poller's table: not in the corpus
            "Sora traffic": (),  # likewise
        }
        with self._page(group):
            self._batch(group, [
                ("active now", functools.partial(q.active_now_sql, now)),
                ("connection flow",
                    functools.partial(q.connection_flow_series_sql, r, flow_bucket)),
                ("worst connections", q.worst_connections_sql(r, 10, None)),
                ("top channels", q.top_channels_sql(r, 10)),
                ("sessions", q.sessions_sql(r, limit=50, channel=None, now=now)),
                ("Sora nodes", q.series_lists(
                    q.sora_nodes_sql(r, bucket), ["node"], NODE_COLUMNS)),
                ("Sora traffic", q.series_lists(
                    q.sora_traffic_sql(r, bucket), ["node"], TRAFFIC_COLUMNS)),
            ], kohaku)  # fmt: skip
        return [
            Question(self.rec.rows[group, name], {}, r,
                     1000 * (flow_bucket if name == "connection flow" else bucket))
            for name in kohaku
        ]  # fmt: skip

    def session(self) -> list[Question]:
        """The session page without a range: the whole session."""
        group, sid = "Built-in session page", self.corpus.session_id
        kohaku = {
            "session": ("dashboard/session_info.sql",),
            "participants": ("dashboard/session_participants.sql",),
            "scores": ("dashboard/session_scores.sql",),
        }
        with self._page(group):
            info, _ = self._batch(group, [
                ("session", q.session_sql(sid)),
                ("participants", q.session_participants_sql(sid)),
            ], kohaku)  # fmt: skip
            first = info[0] if info else {}
            r = _entity_range(
                [first.get("created_at"), first.get("first_seen")],
                [first.get("destroyed_at"), first.get("last_seen"), first.get("last_event")],
                self.corpus.end,
            )
            bucket = r.bucket()
            self._batch(group, [("scores", q.series_lists(
                q.scores_sql(r, bucket, session_id=sid), ["connection_id"], SCORE_COLUMNS
            ))], kohaku)  # fmt: skip
        variables = {"session": sid}
        return [Question(self.rec.rows[group, n], variables, r, 1000 * bucket) for n in kohaku]

    def connection(self) -> list[Question]:
        """The connection page without a range: the whole connection."""
        group, cid = "Built-in connection page", self.corpus.connection_id
        kohaku = {
            "connection": ("dashboard/connection_info.sql",),
            "streams": ("dashboard/connection_streams.sql",),
            "rates": ("dashboard/connection_rates.sql",),
            "scores": ("dashboard/connection_scores.sql",),
        }
        with self._page(group):
            info, _ = self._batch(group, [
                ("connection", q.connection_sql(cid)),
                ("streams", q.connection_streams_sql(cid)),
            ], kohaku)  # fmt: skip
            first = info[0] if info else {}
            r = _entity_range(
                [first.get("joined"), first.get("first_seen")],
                [first.get("left_at"), first.get("last_seen")],
                self.corpus.end,
            )
            bucket = r.bucket()
            self._batch(group, [
                ("rates", q.series_lists(
                    q.connection_rates_sql(cid, r, bucket),
                    ["stats_type", "stats_id", "media_kind"], RATE_COLUMNS)),
                ("scores", q.series_lists(
                    q.scores_sql(r, bucket, connection_id=cid), [], SCORE_COLUMNS)),
            ], kohaku)  # fmt: skip
        variables = {"connection": cid}
        return [Question(self.rec.rows[group, n], variables, r, 1000 * bucket) for n in kohaku]

    def diagnosis(self) -> list[Question]:
        """The connection's diagnosis (what its page's diagnosis endpoint answers)."""
        group, cid = "Built-in diagnosis", self.corpus.connection_id
        row = self.rec.row(group, "GET /api/connections/{id}/diagnosis", (
            "dashboard/diagnosis_rates.sql", "dashboard/diagnosis_transport.sql",
            "dashboard/diagnosis_score.sql",
        ))  # fmt: skip
        started = time.perf_counter()
        try:
            answer = self._offload(diagnose, self.engine, cid, DiagnosisConfig())
            assert answer["found"], answer
            self.rec.record(row.ours, time.perf_counter() - started)
        except QueryError as exc:
            self.rec.record(row.ours, None, _error(exc))
        whole = q.TimeRange(self.corpus.start, self.corpus.end)  # the files read it all
        return [Question(row, {"connection": cid}, whole, GRAFANA_INTERVAL_MS)]


def _records(result: QueryResult) -> list[dict[str, Any]]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows()]


# -- Grafana's dashboards --------------------------------------------------------------------

_OVERVIEW, _SESSION, _CONNECTION = "rtclake-overview", "rtclake-session", "rtclake-connection"
_VARIABLES = {
    "variable channel": ("grafana/variable_channel.sql",),
    "variable session": ("grafana/variable_session.sql",),
    "variable connection": ("grafana/variable_connection.sql",),
}
_SESSION_QUALITY = ("grafana/session_summary.sql",)
_TRANSPORT = ("grafana/connection_transport.sql",)
GRAFANA_KOHAKU: dict[str, dict[str, tuple[str, ...]]] = {
    _OVERVIEW: {
        "Active sessions": ("grafana/overview_active_sessions.sql",),
        "Active connections": ("grafana/overview_active_connections.sql",),
        "Channels": ("grafana/overview_channels.sql",),
        "Median score": ("grafana/overview_median_score.sql",),
        "Connections below 3": ("grafana/overview_connections_below_3.sql",),
        "Relayed connections": ("grafana/overview_relayed_connections.sql",),
        "Active sessions and connections": (
            "grafana/overview_active_sessions_and_connections.sql",),
        "Connections started and ended per minute": (
            "grafana/overview_connections_started.sql",),
        "Connections by path": ("grafana/overview_connections_by_path.sql",),
        "Quality across connections": ("grafana/overview_quality.sql",),
        "Round-trip time across connections": ("grafana/overview_rtt.sql",),
        "Worst connections": ("grafana/overview_worst_connections.sql",),
        "Top channels": ("grafana/overview_top_channels.sql",),
        # the Sora API poller's table (sora_stats_report): not in the corpus
        "Ongoing connections per node": (),
        "Connections created and failed per minute": (),
        "Erlang VM memory": (),
        "Erlang VM run queues": (),
    },
    _SESSION: {
        **_VARIABLES,
        "Connections": _SESSION_QUALITY,
        "Worst score": _SESSION_QUALITY,
        "Median score": _SESSION_QUALITY,
        "Worst audio MOS": _SESSION_QUALITY,
        "Worst video score": _SESSION_QUALITY,
        "Duration": (),  # Sora's session webhooks: not in the corpus
        "Session": (),  # likewise
        "Participants": ("dashboard/session_participants.sql",),
        "Score per participant": ("grafana/session_report_scores.sql",),
        "Audio MOS per participant": ("grafana/session_report_scores.sql",),
        "Video score per participant": ("grafana/session_report_scores.sql",),
        "Round-trip time per participant": ("grafana/session_rtt.sql",),
        "Audio loss per participant": ("grafana/session_audio_loss.sql",),
        "Video loss per participant": ("grafana/session_video_loss.sql",),
        "Bitrate sent per participant": ("grafana/session_bitrate_sent.sql",),
        "Bitrate received per participant": ("grafana/session_bitrate_received.sql",),
    },
    _CONNECTION: {
        **_VARIABLES,
        "Score": ("grafana/connection_report_scores.sql",),
        "Audio MOS": ("grafana/connection_report_scores.sql",),
        "Video score": ("grafana/connection_report_scores.sql",),
        "Path": ("grafana/connection_path.sql",),
        "Connection": ("grafana/connection_table.sql",),
        "Quality scores": ("grafana/connection_report_scores.sql",),
        "Audio delay": ("grafana/connection_audio_delay.sql",),
        "Bitrate": ("grafana/connection_bitrate.sql",),
        "Packets per second": ("grafana/connection_packets.sql",),
        "Packet loss": ("grafana/connection_loss.sql",),
        "Jitter": ("grafana/connection_jitter.sql",),
        "Round-trip time": ("grafana/connection_rtt.sql",),
        "Jitter buffer delay": ("grafana/connection_jitter_buffer.sql",),
        "Frame rate": ("grafana/connection_fps.sql",),
        "Resolution": ("grafana/connection_resolution.sql",),
        "Freezes per minute": ("grafana/connection_freezes.sql",),
        "Audio concealment": ("grafana/connection_concealment.sql",),
        "NACK, PLI and FIR per minute": ("grafana/connection_nack_pli_fir.sql",),
        "Quality limitation": ("grafana/connection_quality_limitation.sql",),
        "Candidate pair round-trip time": _TRANSPORT,
        "Available outgoing bitrate": _TRANSPORT,
        "Selected pair changes": _TRANSPORT,
        "ICE, DTLS and pair state": _TRANSPORT,
        "Candidate pair history": ("grafana/connection_pair_history.sql",),
    },
}  # fmt: skip
"""Per Grafana dashboard, the Kohaku files that answer each panel's (and variable's)
question; a panel missing here stops the benchmark."""


def _interval_ms(interval: str | None) -> int:
    """Grafana's $__interval_ms for the 6-hour range: a minute, or the panel's minimum."""
    if interval is None:
        return GRAFANA_INTERVAL_MS
    match = re.fullmatch(r"(\d+)([smh])", interval)
    if match is None:
        raise ValueError(f"a panel's interval {interval!r}: give NUMBER and s, m or h")
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    return max(GRAFANA_INTERVAL_MS, 1000 * seconds)


@dataclass(frozen=True)
class Panel:
    """One Grafana query, as DuckDB gets it on rtclake's side, and Kohaku's question."""

    row: Row
    sql: str
    question: Question


def grafana_panels(registry: Registry, corpus: Corpus, rec: Recorder) -> list[Panel]:
    """Every query of the three dashboards over the whole corpus (the dashboards' default
    range, the last 6 hours), the first room's session and connection chosen."""
    r = q.TimeRange(corpus.start, corpus.end)
    chosen = {"channel": corpus.channel_id, "session": corpus.session_id,
              "connection": corpus.connection_id}  # fmt: skip
    found = []
    for uid, build_board in registry.dashboards.items():
        board = build_board()
        answers = GRAFANA_KOHAKU.get(uid, {})
        for query in queries(board):
            if query.what not in answers:
                raise KeyError(
                    f"Grafana dashboard {uid}: no Kohaku question for {query.what!r}; add"
                    " one to GRAFANA_KOHAKU in bench/dashboard_queries.py (() if none can be)"
                )
            interval = _interval_ms(query.interval)
            sql = interpolate(query.sql, chosen, time_from=_rfc3339(r.start),
                              time_to=_rfc3339(r.end), interval_ms=interval)  # fmt: skip
            row = rec.row(f"Grafana: {board['title']}", query.what, answers[query.what],
                          sql=sql, grafana=True)  # fmt: skip
            found.append(Panel(row, sql, Question(row, chosen, r, interval)))
    return found


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Step:
    """One thing timed on both sides, which take turns."""

    ours: Callable[[], None]
    theirs: Callable[[], None]


def _ask(rec: Recorder, kohaku: Kohaku, questions: Sequence[Question], group: str) -> None:
    """Kohaku's answers to a page's questions, and their total as the page's (when rtclake's
    side has one)."""
    total = 0.0
    for question in questions:
        if not question.row.kohaku:
            continue
        try:
            seconds = kohaku.ask(question)
            total += seconds
            rec.record(question.row.theirs, seconds)
        except duckdb.Error as exc:
            rec.record(question.row.theirs, None, _error(exc))
    if (group, _PAGE_TOTAL) in rec.rows:
        rec.record(rec.rows[group, _PAGE_TOTAL].theirs, total)


def _steps(pages: Pages, panels: Sequence[Panel], grafana: duckdb.DuckDBPyConnection,
           kohaku: Kohaku, rec: Recorder) -> list[Step]:  # fmt: skip
    asked: dict[str, list[Question]] = {}

    def page(key: str, group: str, run: Callable[[], list[Question]]) -> Step:
        def ours() -> None:
            asked[key] = run()

        # the page's range comes from its own first answers: rtclake goes first in round 1
        return Step(ours, lambda: _ask(rec, kohaku, asked[key], group))

    def panel(p: Panel) -> Step:
        def ours() -> None:
            started = time.perf_counter()
            try:
                run_as_the_plugin(grafana, p.sql)
                rec.record(p.row.ours, time.perf_counter() - started)
            except duckdb.Error as exc:
                rec.record(p.row.ours, None, _error(exc))

        def theirs() -> None:
            if p.row.kohaku:
                try:
                    rec.record(p.row.theirs, kohaku.ask(p.question))
                except duckdb.Error as exc:
                    rec.record(p.row.theirs, None, _error(exc))

        return Step(ours, theirs)

    return [
        page("1h", "Built-in overview, range=1h", lambda: pages.overview("1h")),
        page("6h", "Built-in overview, range=6h", lambda: pages.overview("6h")),
        page("session", "Built-in session page", pages.session),
        page("connection", "Built-in connection page", pages.connection),
        page("diagnosis", "Built-in diagnosis", pages.diagnosis),
        *(panel(p) for p in panels),
    ]


# -- where the time goes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """DuckDB's profile of one of rtclake's queries: its latency and costliest operators."""

    row: Row
    latency: float | None
    operators: list[tuple[str, float, int, str]]  # name, seconds, rows out, detail
    error: str | None = None
    note: str = ""  # how the profiled run differed from the measured ones


def _operators(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from _operators(child)


def _detail(info: dict[str, Any]) -> str:
    """The operator's extra information that says what it does, shortened."""
    parts = []
    for key in ("Function", "Table", "Projections", "Aggregates", "Groups", "Join Type",
                "Conditions", "Expression", "Filters"):  # fmt: skip
        value = info.get(key)
        if value:
            text = " ".join((", ".join(value) if isinstance(value, list) else str(value)).split())
            parts.append(f"{key}: {text}")
    return "; ".join(parts)[:150]


def profile(row: Row, con: duckdb.DuckDBPyConnection, path: Path, note: str = "") -> Profile:
    """Run ``row``'s SQL with DuckDB's JSON profiling on ``con`` (the settings the query
    runs with); the profile is kept at ``path``."""
    path.unlink(missing_ok=True)
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"SET profiling_output = '{path}'")
    timer = threading.Timer(PROFILE_TIMEOUT, con.interrupt)
    timer.start()
    try:
        con.sql(row.sql).fetch_arrow_table()
    except duckdb.Error as exc:
        return Profile(row, None, [], _error(exc))
    finally:
        timer.cancel()
        con.execute("PRAGMA disable_profiling")
    tree = json.loads(path.read_text())
    nodes = [n for n in _operators(tree) if "operator_name" in n]
    nodes.sort(key=lambda n: -float(n.get("operator_timing", 0)))
    return Profile(row, float(tree.get("latency", 0)), [
        (n["operator_name"].strip(), float(n["operator_timing"]),
         int(n.get("operator_cardinality", 0)), _detail(n.get("extra_info", {})))
        for n in nodes[:4]
    ], note=note)  # fmt: skip


def profile_slowest(rows: Sequence[Row], engine: QueryEngine, grafana: duckdb.DuckDBPyConnection,
                    out: Path, count: int = 3) -> list[Profile]:  # fmt: skip
    """Profiles of rtclake's ``count`` slowest queries (distinct SQL; a refused one counts as
    slowest, and is profiled without the memory limit that stopped it, but only one)."""
    ranked = sorted(
        (r for r in rows if r.counted and r.sql),
        key=lambda r: -(r.ours.median if r.ours.median is not None else float("inf")),
    )
    distinct: list[Row] = []
    for row in ranked:  # one refused query is enough: the others are refused alike
        refused = row.ours.error is not None and any(d.ours.error for d in distinct)
        if row.sql not in {d.sql for d in distinct} and not refused:
            distinct.append(row)
    found = []
    for n, row in enumerate(distinct[:count], 1):
        path = out / f"profile-{n}.json"
        if row.grafana:
            found.append(profile(row, grafana, path))
            continue
        temp = out / "profile-tmp"
        temp.mkdir(parents=True, exist_ok=True)
        con = engine.connect(read_only=False, temp_directory=temp)  # the engine's limits
        note = ""
        if row.ours.error and row.ours.error.startswith("memory_limit"):
            con.execute(f"SET memory_limit = '{PROFILE_MEMORY}'")
            note = f"memory_limit raised to {PROFILE_MEMORY} for this run"
        try:
            found.append(profile(row, con, path, note))
        finally:
            con.close()
            shutil.rmtree(temp, ignore_errors=True)
    return found


# -- the report -------------------------------------------------------------------------------


def _seconds(timing: Timing) -> str:
    if timing.error:  # the whole message is listed below the table
        return "error: " + timing.error.removeprefix("the page is refused: ").split(":")[0]
    median = timing.median
    if median is None:
        return ""
    return f"{median:.3f} s" if median < 10 else f"{median:.1f} s"


def _table(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        ours, theirs = row.ours.median, row.theirs.median
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else ""
        if not row.counted:
            fast = faster = ""
        else:
            fast = "PASS" if ours is not None and ours < MAX_SECONDS else "FAIL"
            faster = (
                "n/a" if not row.kohaku
                else "PASS" if ours and theirs and theirs / ours >= MIN_RATIO else "FAIL"
            )  # fmt: skip
        theirs_text = _seconds(row.theirs) if row.kohaku or not row.counted else "no equivalent"
        out.append([row.group, row.name, _seconds(row.ours), theirs_text, ratio, fast, faster])
    return out


def _each_round(rows: Sequence[Row], table: Sequence[Sequence[str]]) -> list[str]:
    """Each measured round's figures of the queries that miss a target, in ms, rtclake's
    and Kohaku's (odd rounds: rtclake asks first; even: Kohaku)."""

    def ms(timing: Timing) -> str:
        return ", ".join(f"{1000 * s:.1f}" for s in timing.seconds) or "none"

    return [
        f"- {row.group}: {row.name}: rtclake {ms(row.ours)} ms; Kohaku {ms(row.theirs)} ms"
        for row, line in zip(rows, table, strict=True)
        if row.counted and "FAIL" in line[5:]
    ]


def _files(row: Row) -> str:
    return ", ".join(f"`{name}`" for name in row.kohaku) or "none in this corpus"


def run(opts: Options, argv: Sequence[str] = ()) -> int:
    """Build (or reuse) the corpus, time every query on both sides, print the tables and
    write docs/BENCHMARKS.md's ``dashboard`` section. Returns 1 when a target is missed."""
    console = Console()
    if not console.is_terminal:  # a log file: room for the table
        console.width = 180
    registry = load_registry()
    corpus = build(opts, registry, console)
    busy = busy_before(console)
    config = QueryConfig()
    engine = QueryEngine.from_config(corpus.lake, registry.tables, config,
                                     temp_root=corpus.root / "query-tmp")  # fmt: skip
    grafana = plugin_duckdb(init_sql(registry.tables), corpus.var_lib)
    kohaku = Kohaku(corpus)
    (grafana_threads,) = grafana.sql("SELECT current_setting('threads')").fetchone() or (0,)
    rec = Recorder()
    pages = Pages(engine, corpus, rec)
    panels = grafana_panels(registry, corpus, rec)
    steps = _steps(pages, panels, grafana, kohaku, rec)
    started = time.perf_counter()
    # Python's garbage collector stays off while the sides take turns, and runs between
    # rounds: a full collection of the harness's objects otherwise lands in whichever
    # query runs when the allocation count crosses the threshold, the same step each
    # round (seen: Grafana's channel variable at 37-57 ms instead of 4). Run before
    # each turn instead, it walked the heap and left both sides' next query cold.
    gc.disable()
    try:
        for n in range(opts.warmup + opts.rounds):
            gc.collect()
            rec.measuring = n >= opts.warmup
            what = f"round {n - opts.warmup + 1}/{opts.rounds}" if rec.measuring else "warm-up"
            console.print(f"Dashboard: {what} ({len(steps)} steps, both sides) ...")
            for step in steps:
                sides = (step.ours, step.theirs) if n % 2 == 0 else (step.theirs, step.ours)
                for side in sides:
                    side()
        elapsed = time.perf_counter() - started
        console.print("Dashboard: profiling rtclake's three slowest queries ...")
        profiles = profile_slowest(list(rec.rows.values()), engine, grafana, corpus.root)
    finally:
        gc.enable()
        kohaku.close()
        grafana.close()
        engine.close()
        pages.close()
    rows = sorted(rec.rows.values(), key=lambda r: r.grafana)  # the built-in pages first
    header = ["group", "query", "rtclake", "Kohaku", "Kohaku/rtclake", "< 1 s", ">= 5x"]
    table = _table(rows)
    judged = [line for r, line in zip(rows, table, strict=True) if r.counted]
    fast = sum(line[5] == "PASS" for line in judged)
    faster = sum(line[6] == "PASS" for line in judged)
    comparable = sum(line[6] != "n/a" for line in judged)
    verdicts = [
        ["every query under 1 s (rtclake, medians)", f"{fast} of {len(judged)} pass"],
        ["every query >= 5x faster than Kohaku's equivalent (medians)",
         f"{faster} of {comparable} pass ({len(judged) - comparable} without an equivalent)"],
    ]  # fmt: skip
    errors = [
        f"- {row.group}: {row.name} ({side}): {timing.error}"
        for row in rows
        for side, timing in (("rtclake", row.ours), ("Kohaku", row.theirs))
        if timing.error
    ]
    profile_lines = []
    for p in profiles:
        head = f"{p.row.group}: {p.row.name}"
        if p.error:
            profile_lines.append(f"- **{head}**: the profiled run failed ({p.error})")
            continue
        ops = "; ".join(
            f"{name} {sec:.2f} s ({rows_out:,} rows{', ' + detail if detail else ''})"
            for name, sec, rows_out, detail in p.operators
        )
        note = f"; {p.note}" if p.note else ""
        profile_lines.append(f"- **{head}** ({p.latency or 0:.2f} s profiled{note}): {ops}")
    print_tables(console, rich_table("Dashboard queries: rtclake and Kohaku (medians)", header,
                                     table, verdict_col=5))  # fmt: skip
    for name, result in verdicts:
        console.print(f"{name}: {result}")
    rounds = _each_round(rows, table)
    if rounds:
        console.print("Each round of the queries that miss a target:")
        for text in rounds:
            console.print(text, markup=False)
    if errors:
        console.print("Errors:")
        for text in errors:
            console.print(text, markup=False)
    console.print("Where rtclake's slowest queries spend their time (DuckDB's profile):")
    for text in profile_lines:
        console.print(text, markup=False)
    console.print(f"Dashboard: measured in {elapsed:.0f} s; profiles in {corpus.root}")
    threads = (
        "DuckDB threads",
        f"rtclake's dashboard {config.threads} (query.threads); Grafana's data source"
        f" {grafana_threads}; Kohaku {kohaku.threads} (DuckDB's default: the cores)",
    )
    if opts.write_docs:
        write_docs(opts, corpus, argv, rows, table, verdicts, errors, rounds, profile_lines,
                   [busy, threads])  # fmt: skip
    return 0 if all(line[5] == "PASS" and line[6] != "FAIL" for line in judged) else 1


def write_docs(opts: Options, corpus: Corpus, argv: Sequence[str], rows: Sequence[Row],
               table: Sequence[Sequence[str]], verdicts: Sequence[Sequence[str]],
               errors: Sequence[str], rounds: Sequence[str], profile_lines: Sequence[str],
               facts: Sequence[tuple[str, str]]) -> None:  # fmt: skip
    built = corpus.built
    config = QueryConfig()  # the engine's settings (run)
    per_report = sora_corpus.objects_per_report(opts.room)
    command = " ".join(["python -m bench", *argv]) if argv else "make bench"
    if opts.maintained:
        files = ", ".join(f"{t} {n}" for t, n in built.get("maintained_files", {}).items())
        state = (
            "rtclake's side reads a copy of that lake after one run of its maintenance with the"
            " default settings (`python -m bench --only dashboard --dashboard-maintained`: files"
            " merged, the corpus's day, being over, sorted by connection in `rtc_rates` and"
            " `connection_reports`, replaced files deleted), as `rtclake run`'s schedule leaves"
            f" it: {built.get('maintain_s', '?')} s; files per table: {files}."
        )
    else:
        state = (
            "rtclake's side reads the lake as the import leaves it (no maintenance run; see"
            " `--dashboard-maintained`)."
        )
    machine_facts = "\n".join(f"- {k}: {v}" for k, v in [*machine(corpus.root), *facts])
    mapping = "\n".join(f"- {r.group}: {r.name}: {_files(r)}" for r in rows if r.counted)
    body = f"""## Dashboard queries against Kohaku

Command: `{command}`

Machine:

{machine_facts}

Corpus (`bench/sora_corpus.py`): {opts.connections:,} connections in rooms of {opts.room}, \
each reporting once a minute for {opts.hours} hours ({60 * opts.hours} reports), \
{per_report} RTCStats objects a report (15 of its own, an audio and a video inbound-rtp \
per other participant): {corpus.lines:,} `rtc_stats` rows. rtclake's importer wrote the \
lake in {built.get("rtclake_import_s", "?")} s ({built.get("lake_bytes", 0) / 1e6:,.0f} MB of \
Parquet); Kohaku's loader (`read_json`, `INSERT ... ON CONFLICT` into a DuckDB file, \
`bench/sora_import.py`) took {built.get("kohaku_load_s", "?")} s \
({built.get("kohaku_bytes", 0) / 1e6:,.0f} MB). Built {built.get("built", "?")}. {state}

rtclake: each built-in page's queries as `rtclake/web/dashboard.py` runs them (the \
functions of `rtclake/lake/dashboard.py` with its arguments, each batch in one \
`QueryEngine.run_many` on the engine's query threads (`QueryEngine.offload`, as the \
server runs it), the engine built by `QueryEngine.from_config` with the default \
`query:` settings: one DuckDB thread, 512 MiB, dedup on, a DuckDB instance kept for \
{config.idle_timeout:g} s while the lake is unchanged), the overview at range=1h and \
range=6h ending at the corpus's end, the first room's session and connection pages for \
their whole life, the connection's diagnosis (`rtclake.diagnosis.diagnose`); a query's \
time is its execution and fetch (`QueryResult.elapsed`), the page total the wall time of \
its batches with the views' set-up. Grafana: every panel's and variable's SQL of the three \
dashboards over the last 6 hours (their default range), `$__interval_ms` a minute or the \
panel's minimum, run on an in-memory DuckDB given the data source's init SQL over the \
lake (`rtclake.grafana.plugin_duckdb`), every row fetched. Kohaku: the same question over \
its table, in `bench/kohaku_sql/` (`init.sql`'s macros once per connection; \
`json_transform` of `rtc_data`), every row fetched. Both Grafana and Kohaku run a \
query as the plugin's driver (go-duckdb) does: prepared once, executed, fetched \
(`run_as_the_plugin`); a page's Kohaku total is the sum of \
its questions. {opts.warmup} warm-up round(s), then {opts.rounds} measured; the two sides \
take turns query by query, the first side alternating by round (Python's garbage \
collector off during a round, run between rounds); each figure is a median. \
Targets: every query under {MAX_SECONDS:g} s, and Kohaku/rtclake >= {MIN_RATIO:g}x; "no \
equivalent" marks a query over data this corpus lacks (Sora's API poller, webhooks, \
connection log: empty tables on rtclake's side), not judged against Kohaku.

{md_table(["group", "query", "rtclake", "Kohaku", "Kohaku/rtclake", "< 1 s", ">= 5x"], table)}

{md_table(["target", "result"], verdicts)}

Each measured round of the queries that miss a target, in ms (odd rounds: rtclake asks \
first; even rounds: Kohaku):

{chr(10).join(rounds) or "none: every query meets both targets"}

Errors (a refused query fails the 1 s target and has no ratio; a refused batch refuses its page):

{chr(10).join(errors) or "none"}

Where rtclake's three slowest queries spend their time (DuckDB's JSON profile of one more \
run with the same settings, the four costliest operators; the profiles are kept in \
`bench/out/dashboard/`):

{chr(10).join(profile_lines)}

Kohaku's question for each query:

{mapping}
"""
    update_section("dashboard", body)
