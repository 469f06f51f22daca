"""The diagnosis of a connection: each code on data made to show it, nothing on a clean
connection, and the HTTP endpoint of a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from rtclake.config import DiagnosisConfig
from rtclake.diagnosis import CODES, diagnose
from rtclake.lake.query import QueryEngine
from tests.test_rtc_rates import import_lines, sample

STEP = 5  # seconds between reports
REPORTS = 24  # two minutes
TROUBLE = range(30, 90)  # the seconds in which a troubled connection shows its trouble


def calls(conn: str, trait: str) -> list[dict[str, Any]]:
    """``REPORTS`` getStats reports of one sendrecv connection (audio and video both ways,
    the remote's view of what it sends, the candidate pair, its candidates, the
    transport); during TROUBLE (or, for ``disconnected``, until the end) it shows
    ``trait``."""
    lines: list[dict[str, Any]] = []
    c: dict[str, int] = dict.fromkeys(
        ("a_in_bytes", "a_in_packets", "a_in_lost", "a_out_bytes", "v_in_bytes", "v_in_packets",
         "v_in_frames", "v_in_freezes", "v_out_bytes", "v_out_packets", "ql_none", "ql_cpu",
         "ql_bandwidth", "cp_bytes"), 0,
    )  # fmt: skip
    pair_changes = 1
    for n in range(REPORTS):
        t = n * STEP
        bad = t >= 100 if trait == "disconnected" else t in TROUBLE
        if n:  # the counters grow by one interval
            silent = trait == "no_media" and bad
            c["a_in_bytes"] += 0 if silent else 20_000
            got = 0 if silent else 250
            lost = round(got * 0.08) if trait == "high_loss" and bad else 0
            c["a_in_packets"] += got - lost
            c["a_in_lost"] += lost
            c["a_out_bytes"] += 20_000
            c["v_in_bytes"] += 500_000
            c["v_in_packets"] += 500
            c["v_in_frames"] += STEP * (6 if trait == "low_fps" and bad else 30)
            c["v_in_freezes"] += 1 if trait == "freezes" and bad else 0
            c["v_out_bytes"] += 500_000
            c["v_out_packets"] += 500
            reason = {"bandwidth_limited": "bandwidth", "cpu_limited": "cpu"}.get(trait)
            c[f"ql_{reason}" if reason and bad else "ql_none"] += STEP
            c["cp_bytes"] += 1_040_000
        reason_now = (
            {"bandwidth_limited": "bandwidth", "cpu_limited": "cpu"}.get(trait, "none")
            if bad else "none"
        )  # fmt: skip
        jitter = 0.06 if trait == "high_jitter" and bad else 0.005
        rtt = 0.45 if trait == "high_rtt" and bad else 0.04
        ice = "connected"
        if trait == "ice_restart" and t in (60, 65):
            ice = "disconnected"
        if trait == "ice_restart" and t >= 70:
            pair_changes = 2
        if trait == "disconnected" and bad:
            ice = "disconnected" if t < 110 else "failed"
        fps = 6 if trait == "low_fps" and bad else 30
        lines += [
            sample(conn, "inbound-rtp", "IA", t, "audio", bytesReceived=c["a_in_bytes"],
                   packetsReceived=c["a_in_packets"], packetsLost=c["a_in_lost"],
                   jitter=jitter),
            sample(conn, "outbound-rtp", "OA", t, "audio", bytesSent=c["a_out_bytes"],
                   packetsSent=250 * n),
            sample(conn, "inbound-rtp", "IV", t, "video", bytesReceived=c["v_in_bytes"],
                   packetsReceived=c["v_in_packets"], packetsLost=0, jitter=0.005,
                   framesDecoded=c["v_in_frames"], framesPerSecond=fps, frameWidth=1280,
                   frameHeight=720, freezeCount=c["v_in_freezes"]),
            sample(conn, "outbound-rtp", "OV", t, "video", bytesSent=c["v_out_bytes"],
                   packetsSent=c["v_out_packets"], framesPerSecond=30, frameWidth=1280,
                   frameHeight=720, qualityLimitationReason=reason_now,
                   qualityLimitationDurations={r: c[f"ql_{r}"] for r in
                                               ("none", "cpu", "bandwidth")} | {"other": 0}),
            sample(conn, "remote-inbound-rtp", "RIA", t, "audio", fractionLost=0.0,
                   roundTripTime=rtt, jitter=0.004),
            sample(conn, "candidate-pair", "CP1", t, bytesSent=c["cp_bytes"],
                   bytesReceived=c["cp_bytes"], currentRoundTripTime=rtt, nominated=True,
                   state="failed" if ice == "failed" else "succeeded",
                   localCandidateId="LC1", remoteCandidateId="RC1"),
            sample(conn, "local-candidate", "LC1", t,
                   candidateType="relay" if trait == "relay" else "host",
                   protocol="udp", **({"relayProtocol": "udp"} if trait == "relay" else {})),
            sample(conn, "remote-candidate", "RC1", t, candidateType="host", protocol="udp"),
            sample(conn, "transport", "T1", t, iceState=ice, dtlsState="connected",
                   selectedCandidatePairId="CP1", selectedCandidatePairChanges=pair_changes),
        ]  # fmt: skip
    return lines


TRAITS = [code for code in CODES] + ["clean"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> QueryEngine:
    lines = [line for trait in TRAITS for line in calls(trait, trait)]
    return import_lines(tmp_path_factory.mktemp("diagnosis"), lines)


@pytest.mark.parametrize("code", CODES)
def test_each_code_is_found_on_data_made_to_show_it(engine: QueryEngine, code: str) -> None:
    answer = diagnose(engine, code, DiagnosisConfig())
    found = {f["code"] for f in answer["findings"]}
    assert found == {code}, answer["findings"]
    finding = next(f for f in answer["findings"] if f["code"] == code)
    assert finding["severity"] in ("info", "warning", "critical")
    assert finding["message"] and finding["evidence"]
    assert finding["start"] <= finding["end"]
    if code not in ("relay", "ice_restart", "disconnected"):
        # the samples from 30 s to 85 s show it: from the interval before 30 s to 85 s
        assert finding["start"] == "2026-11-20T00:00:25+00:00"
        assert finding["end"] == "2026-11-20T00:01:25+00:00"


def test_a_connection_longer_than_a_query_may_return_is_read_in_pages(
    engine: QueryEngine,
) -> None:
    """With a row limit of 7, each connection's ~100 rates and 24 reports come in pages:
    the same diagnosis as in one page."""
    paged = QueryEngine(engine.root, engine.tables, max_rows=7)
    for code in ("high_loss", "relay", "ice_restart", "clean"):
        assert diagnose(paged, code, DiagnosisConfig()) == diagnose(engine, code, DiagnosisConfig())


def test_a_clean_connection_has_no_finding(engine: QueryEngine) -> None:
    answer = diagnose(engine, "clean", DiagnosisConfig())
    assert answer["found"] and answer["findings"] == []
    assert answer["summary"].startswith("No problem found")
    assert answer["score"]["score"] > 4


def test_the_message_and_evidence_of_a_lossy_connection(engine: QueryEngine) -> None:
    (finding,) = diagnose(engine, "high_loss", DiagnosisConfig())["findings"]
    assert finding["stats_id"] == "IA"
    assert finding["evidence"]["worst"] == pytest.approx(8.0, abs=0.1)
    assert finding["evidence"]["threshold"] == 5
    assert finding["severity"] == "warning"  # not above twice the threshold
    assert "audio received (IA) lost packets: 8.0 % on average" in finding["message"]


def test_thresholds_come_from_the_configuration(engine: QueryEngine) -> None:
    assert diagnose(engine, "high_loss", DiagnosisConfig(loss_pct=10))["findings"] == []
    strict = diagnose(engine, "clean", DiagnosisConfig(rtt_ms=30))["findings"]
    assert {f["code"] for f in strict} == {"high_rtt"}  # 40 ms is above 30


def test_the_endpoint_answers_for_a_connection_and_404_for_an_unknown_one(
    make_server: Any, tmp_path: Path
) -> None:
    server = make_server()
    # into the lake of the server's data directory, beside the running server's writer
    import_lines(server.data_dir, calls("lossy", "high_loss"))
    answer = httpx.get(f"{server.url}/api/connections/lossy/diagnosis", timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["connection_id"] == "lossy" and body["session_id"] == "se"
    assert [f["code"] for f in body["findings"]] == ["high_loss"]
    missing = httpx.get(f"{server.url}/api/connections/nobody/diagnosis", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_connection"


def test_the_demo_connections_get_exactly_the_findings_they_were_made_to_show(
    tmp_path: Path,
) -> None:
    """The diagnosis agrees with ``rtclake demo``'s manifest on every connection: the
    troubled ones show their code, the clean ones nothing."""
    from tests.test_demo import Demo, demo_lake

    lake: Demo = demo_lake(root=tmp_path)
    for connection_id, about in lake.manifest["connections"].items():
        answer = diagnose(lake.engine, connection_id, DiagnosisConfig())
        found = {f["code"] for f in answer["findings"]}
        expected = {code for code in about["expect"] if code in CODES}
        assert found == expected, (about["label"], answer["findings"])
