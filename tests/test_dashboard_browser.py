"""The dashboard in a browser: Debian's headless ``chromium`` driven by Playwright, against
a server whose lake ``rtclake demo`` filled and whose Sora API poller polls a fake Sora.

Each page: its charts hold data points, its tables list the expected connections, the
lossy connection's diagnosis shows ``high_loss``, no request leaves the server and the
console stays free of errors. Screenshots go to the test's output folder (printed).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Server
from tests.test_dashboard import demo_lake, showing
from tests.test_sora_api import FakeSora, good_answers

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium; make test does)",
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')"
)

WAIT_MS = 30_000


@dataclass
class Site:
    server: Server
    manifest: dict[str, Any]

    @property
    def url(self) -> str:
        return self.server.url


LIVE_SESSION = "LIVE-SESSION-1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server on the demo's lake (the last ten minutes), polling a fake Sora node."""
    sora = FakeSora().start()
    good_answers(sora)
    data = tmp_path_factory.mktemp("browser") / "data"
    manifest = demo_lake(data)
    server = Server(
        data,
        env={
            "RTCLAKE_SOURCES__SORA_API__TYPE": "sora_api",
            "RTCLAKE_SOURCES__SORA_API__NODES": json.dumps([sora.url]),
            "RTCLAKE_SOURCES__SORA_API__INTERVAL": "0.5",
            "RTCLAKE_PROCESSORS__ENTITIES__TYPE": "entity_tracker",
        },
    )
    server.start()
    # a session that starts now (its webhook): the overview's "Live now" lists it
    webhook = {"type": "session.created", "id": "W-live", "session_id": LIVE_SESSION,
               "channel_id": "live-channel",
               "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip
    posted = httpx.post(server.url + "/sora/webhooks/session", json=webhook, timeout=10)
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/api/entities", timeout=10).json()["count"] < 1:
        assert time.monotonic() < deadline, "the session never became live"
        time.sleep(0.1)
    yield Site(server, manifest)
    server.stop()
    sora.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: tests may run as root, where Chromium's sandbox refuses to start
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """One page in the browser, with what it asked for and what it complained about."""

    page: Any
    base: str
    shots: Path
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str, loads: int = 1) -> Tab:
        self.page.goto(self.base + path)
        self.wait(loads)
        return self

    def wait(self, loads: int = 1) -> None:
        self.page.wait_for_function(
            f"() => Number(document.body.dataset.loads || 0) >= {loads}", timeout=WAIT_MS
        )

    @property
    def loads(self) -> int:
        return int(self.page.evaluate("() => Number(document.body.dataset.loads || 0)"))

    @property
    def state(self) -> str:
        return str(self.page.evaluate("() => document.body.dataset.state"))

    def points(self) -> dict[str, int]:
        """Data points per chart (Plotly's ``gd.data``), by the chart's id."""
        found = self.page.evaluate(
            """() => Object.fromEntries(
                [...document.querySelectorAll('.js-plotly-plot')].map(gd => [
                    gd.id, (gd.data || []).reduce((n, t) => n + ((t.x && t.x.length) || 0), 0)
                ]))"""
        )
        return {str(k): int(v) for k, v in found.items()}

    def links(self, table: str, prefix: str) -> set[str]:
        """The ids a table links to (``/connections/ID``, ``/sessions/ID``)."""
        hrefs = self.page.eval_on_selector_all(
            f'table[data-table="{table}"] a[href^="{prefix}"]',
            "els => els.map(a => a.getAttribute('href'))",
        )
        return {h.split("?")[0].removeprefix(prefix) for h in hrefs}

    def fact(self, label: str) -> str:
        """The value of a page's fact (its ``dt``/``dd`` pair) as shown."""
        facts = self.page.locator("dl.facts > div").filter(
            has=self.page.locator("dt", has_text=label)
        )
        return str(facts.locator("dd").inner_text())

    def rows(self, table: str) -> int:
        return int(self.page.locator(f'table[data-table="{table}"] tbody tr').count())

    def shoot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def tab(browser: Any, site: Site, tmp_path: Path) -> Iterator[Callable[..., Tab]]:
    """Open pages of ``site`` (or another server) in a fresh browser context; after the
    test, no page may have asked anything outside its server or logged an error."""
    opened: list[Tab] = []
    context = browser.new_context(viewport={"width": 1440, "height": 900})

    def make(base: str = site.url) -> Tab:
        page = context.new_page()
        t = Tab(page, base, tmp_path)

        def request(r: Any) -> None:
            if not r.url.startswith((base + "/", "data:", "blob:", "about:")):
                t.outside.append(r.url)

        page.on("request", request)
        page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: t.errors.append(str(e)))
        opened.append(t)
        return t

    yield make
    context.close()
    for t in opened:
        assert t.outside == [], f"requests outside the server: {t.outside}"
        # a login page follows a 401 by design: the browser logs the refused fetch
        assert [e for e in t.errors if "401" not in e] == []


def test_the_overview_charts_the_demo_and_lists_connections(
    tab: Callable[..., Tab], site: Site
) -> None:
    t = tab().open("/?range=1h&refresh=10s")
    assert t.state == "ready"
    manifest = site.manifest
    assert t.points()["chart-flow"] > 0
    # the demo's sessions, and the one started by a webhook while the server runs
    assert t.links("sessions", "/sessions/") == {*manifest["channels"].values(), LIVE_SESSION}
    assert t.rows("channels") == len(manifest["channels"])
    worst = t.links("worst", "/connections/")
    assert len(worst) == 10 and showing(manifest, "high_loss") in worst
    assert worst <= set(manifest["connections"])
    # the refresh brings what the Sora poller and the sampler stored since the first load
    t.wait(loads=2)
    t.page.wait_for_selector("#chart-sora-ongoing.js-plotly-plot", timeout=WAIT_MS)
    points = t.points()
    assert points["chart-sora-ongoing"] > 0 and points["chart-sora-memory"] > 0
    assert points["chart-throughput"] > 0
    assert t.links("live", "/sessions/") == {LIVE_SESSION}  # what the entity tracker has
    t.shoot("overview")


def test_a_session_shows_its_participants_on_a_timeline(
    tab: Callable[..., Tab], site: Site
) -> None:
    manifest = site.manifest
    session_id = manifest["connections"][showing(manifest, "high_loss")]["session_id"]
    t = tab().open(f"/sessions/{session_id}")
    expected = {c for c, v in manifest["connections"].items() if v["session_id"] == session_id}
    points = t.points()
    assert points["chart-timeline"] == len(expected)  # one bar per participant
    assert points["chart-scores"] > 0
    assert t.links("participants", "/connections/") == expected
    assert float(t.fact("Worst score")) > 0
    t.shoot("session")
    # a session of no scored participant (only its webhook) has no worst score: a dash
    # (it had shown "Infinity", Math.min of nothing)
    t = tab().open(f"/sessions/{LIVE_SESSION}")
    assert t.state == "ready"
    assert t.fact("Connections") == "0" and t.fact("Worst score") == "–"


def test_the_lossy_connection_charts_every_metric_and_shows_high_loss(
    tab: Callable[..., Tab], site: Site
) -> None:
    lossy = showing(site.manifest, "high_loss")
    t = tab().open(f"/connections/{lossy}")
    charts = (
        "score", "bitrate", "packets", "loss", "jitter", "rtt", "jitter-buffer", "fps",
        "resolution", "freezes", "concealment", "nack", "keyframes", "limitation",
    )  # fmt: skip
    points = t.points()
    assert {c: points.get(f"chart-{c}", 0) > 0 for c in charts} == dict.fromkeys(charts, True)
    finding = t.page.locator('#diagnosis li[data-code="high_loss"]')
    assert finding.count() > 0 and "lost packets" in finding.first.inner_text()
    assert "high_loss" in t.page.locator("#diagnosis").inner_text()
    streams = t.links("streams", "/connections/")
    session_id = site.manifest["connections"][lossy]["session_id"]
    assert streams == {
        c for c, v in site.manifest["connections"].items()
        if v["session_id"] == session_id and c != lossy
    }  # fmt: skip
    t.shoot("connection-high-loss")


def test_a_livekit_participant_charts_the_round_trip_of_its_streams(
    tab: Callable[..., Tab], make_server: Any
) -> None:
    # (LiveKit's rtt is on its streams, inbound-rtp and outbound-rtp in livekit_rates: the
    # chart had read only remote-inbound-rtp and candidate-pair rows, and said no stream
    # reports a round-trip time)
    server = make_server(RTCLAKE_SOURCES__LKA__TYPE="livekit_analytics")
    stats = [{
        "id": f"AS_rtt_{n}", "kind": kind, "timeStamp": f"2024-06-16T10:0{n}:30Z",
        "roomId": "RM_rtt", "participantId": "PA_rtt", "trackId": "TR_rtt", "mime": "audio/opus",
        "streams": [{"primaryPackets": 1500, "primaryBytes": "120000", "rtt": 450,
                     "startTime": f"2024-06-16T10:0{n}:00Z", "endTime": f"2024-06-16T10:0{n}:30Z"}],
    } for n in range(4) for kind in ("UPSTREAM", "DOWNSTREAM")]  # fmt: skip
    posted = httpx.post(server.url + "/livekit/analytics/stats", json={"stats": stats}, timeout=30)
    assert posted.json() == {"stored": 8}, posted.text
    deadline = time.monotonic() + 30
    sql = "SELECT count(*) AS n FROM livekit_rates WHERE connection_id = 'PA_rtt'"
    while server.query(sql)["rows"][0][0] < 8:
        assert time.monotonic() < deadline, "the stats were never stored"
        time.sleep(0.1)
    t = tab(server.url).open(
        "/connections/PA_rtt?from=2024-06-16T10:00:00Z&to=2024-06-16T10:05:00Z"
    )
    assert t.points().get("chart-rtt", 0) == 8  # both streams, four stats each
    finding = t.page.locator('#diagnosis li[data-code="high_rtt"]')
    assert finding.count() == 2 and "long round trip" in finding.first.inner_text()


def test_a_clean_connection_has_charts_and_no_finding(tab: Callable[..., Tab], site: Site) -> None:
    clean = next(c for c, v in site.manifest["connections"].items() if not v["expect"])
    t = tab().open(f"/connections/{clean}")
    assert t.points()["chart-bitrate"] > 0
    assert "No problem found" in t.page.locator("#diagnosis").inner_text()
    assert t.page.locator("#diagnosis li").count() == 0


def test_the_table_explorer_lists_tables_and_their_rows(tab: Callable[..., Tab]) -> None:
    t = tab().open("/tables?range=1h")
    tables = t.page.locator('table[data-table="tables"]').inner_text()
    assert "rtc_stats" in tables and "sora_stats_report" in tables
    t.shoot("tables")
    before = t.loads
    t.page.click('table[data-table="tables"] a[href^="/tables/rtc_stats"]')
    t.wait(loads=1)
    assert t.loads >= 1 and before >= 1
    assert t.page.url.split("?")[0].endswith("/tables/rtc_stats")
    assert t.rows("result") == 100  # the latest hundred rows
    t.shoot("table-rtc_stats")


def test_the_sql_console_runs_a_query_charts_it_and_refuses_writes(
    tab: Callable[..., Tab], site: Site
) -> None:
    sql = (
        "SELECT time_bucket(INTERVAL 1 MINUTE, time) AS minute, stats_type,"
        " avg(bitrate_bps) / 1000 AS kbps FROM rtc_rates GROUP BY ALL ORDER BY minute"
    )
    t = tab().open("/sql?q=" + quote(sql))
    t.page.wait_for_selector('table[data-table="result"]', timeout=WAIT_MS)
    assert t.rows("result") > 0 and t.points()["chart-sql"] > 0
    t.shoot("sql")
    t.page.fill("textarea.sql", "SELECT DISTINCT channel_id FROM sessions")
    t.page.press("textarea.sql", "Control+Enter")
    t.page.wait_for_function(
        f"() => document.querySelectorAll('table[data-table=result] tbody tr').length"
        f" === {len(site.manifest['channels']) + 1}",  # and the live session's
        timeout=WAIT_MS,
    )
    assert "q=SELECT+DISTINCT+channel_id" in t.page.url  # the query is in the URL
    t.page.fill("textarea.sql", "DELETE FROM rtc_stats")
    t.page.click('button:text-is("Run")')
    t.page.wait_for_selector(".error", timeout=WAIT_MS)
    assert "only SELECT" in t.page.locator(".error").inner_text()
    t.errors.clear()  # the refused query's 400 is the point


def test_the_range_picker_and_a_zoom_change_the_url_and_reload(tab: Callable[..., Tab]) -> None:
    t = tab().open("/")
    loads = t.loads
    t.page.click('.controls a:text-is("15m")')
    t.wait(loads=loads + 1)
    assert "range=15m" in t.page.url and t.state == "ready"
    assert "last 15m" in t.page.locator(".title").inner_text()
    # dragging across a chart zooms: the stretch becomes the range
    loads = t.loads
    t.page.evaluate(
        """() => Plotly.relayout(document.getElementById('chart-flow'), {
            'xaxis.range[0]': '2026-01-02 03:30:00', 'xaxis.range[1]': '2026-01-02 04:00:00'})"""
    )
    t.wait(loads=loads + 1)
    start = t.page.evaluate("() => new Date(2026, 0, 2, 3, 30).toISOString()")
    assert f"from={quote(start, safe='')}" in t.page.url
    loads = t.loads
    # a range of one's own, in local time
    t.page.click(".custom summary")
    t.page.fill('input[aria-label="from"]', "2026-01-02T03:04")
    t.page.fill('input[aria-label="to"]', "2026-01-02T05:06")
    t.page.click('.custom button:text-is("Apply")')
    t.wait(loads=loads + 1)
    start = t.page.evaluate("() => new Date(2026, 0, 2, 3, 4).toISOString()")
    assert f"from={quote(start, safe='')}" in t.page.url and t.state == "ready"


def test_a_token_asks_for_a_login_and_an_empty_lake_says_what_to_do(
    tab: Callable[..., Tab], make_server: Any
) -> None:
    server = make_server(RTCLAKE_SERVER__QUERY_TOKEN="open-sesame")
    t = tab(server.url)
    t.page.goto(server.url + "/?range=15m")
    t.page.wait_for_url("**/login?next=*", timeout=WAIT_MS)
    t.page.fill('input[name="token"]', "wrong")
    t.page.click('button:text-is("Log in")')
    t.page.wait_for_selector(".error", timeout=WAIT_MS)
    t.page.fill('input[name="token"]', "open-sesame")
    t.page.click('button:text-is("Log in")')
    t.page.wait_for_url("**/?range=15m", timeout=WAIT_MS)
    t.wait()
    assert t.state == "ready"
    text = t.page.locator("main").inner_text()
    assert "run rtclake demo" in text  # the empty states say what to do next
    assert "Sora's API poller stored nothing" in text
    t.shoot("overview-empty")
