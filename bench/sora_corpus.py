"""A generated Sora ``rtc_stats.jsonl``: many connections, every common RTCStats type.

Lines look like Sora's own: the envelope of ``connection.rtc``, ``rtc_data`` a W3C RTCStats
dictionary, floats and ``rtc_timestamp`` printed in Erlang's exponent form, all lines of
one getStats report sharing ``id`` and ``timestamp``, a report every 60 s per connection,
counters that grow.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import random
from collections.abc import Iterator
from pathlib import Path

from rtclake.integrations.sora.log_format import erlang, rtc_stats_lines, sora_id

START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
"""When the first report is made."""


def _stats(rng: random.Random, n: int, ts_ms: float, peers: list[str]) -> list[dict[str, object]]:
    """One connection's getStats report number ``n``."""
    ts = erlang(ts_ms)
    secs = 60 * (n + 1)
    out: list[dict[str, object]] = [
        {
            "id": "CP1",
            "type": "candidate-pair",
            "timestamp": ts,
            "transportId": "T01",
            "localCandidateId": "IL1",
            "remoteCandidateId": "IR1",
            "state": "succeeded",
            "priority": 9115038255631187967,
            "nominated": True,
            "writable": True,
            "packetsSent": 900 * secs,
            "packetsReceived": 850 * secs,
            "bytesSent": 110_000 * secs,
            "bytesReceived": 100_000 * secs,
            "totalRoundTripTime": erlang(0.021 * n + 0.02),
            "currentRoundTripTime": erlang(rng.uniform(0.005, 0.2)),
            "availableOutgoingBitrate": rng.randint(300_000, 2_500_000),
            "requestsReceived": n + 3,
            "requestsSent": n + 2,
            "responsesReceived": n + 2,
            "responsesSent": n + 3,
            "consentRequestsSent": n + 1,
            "packetsDiscardedOnSend": 0,
            "bytesDiscardedOnSend": 0,
            "lastPacketReceivedTimestamp": int(ts_ms) - 3,
            "lastPacketSentTimestamp": int(ts_ms),
        },
        {
            "id": "IL1",
            "type": "local-candidate",
            "timestamp": ts,
            "transportId": "T01",
            "address": "192.0.2.10",
            "port": 50000 + n % 100,
            "protocol": "udp",
            "candidateType": "host",
            "priority": 2122260223,
            "networkType": "ethernet",
            "foundation": "1",
            "usernameFragment": "abcd",
        },
        {
            "id": "IR1",
            "type": "remote-candidate",
            "timestamp": ts,
            "transportId": "T01",
            "address": "198.51.100.7",
            "port": 3478,
            "protocol": "udp",
            "candidateType": rng.choice(["host", "srflx", "relay"]),
            "priority": 1686052607,
        },
        {
            "id": "T01",
            "type": "transport",
            "timestamp": ts,
            "bytesSent": 110_000 * secs,
            "bytesReceived": 100_000 * secs,
            "packetsSent": 900 * secs,
            "packetsReceived": 850 * secs,
            "dtlsState": "connected",
            "iceState": "connected",
            "selectedCandidatePairId": "CP1",
            "selectedCandidatePairChanges": 1,
            "dtlsRole": "client",
            "iceRole": "controlling",
            "tlsVersion": "FEFD",
            "srtpCipher": "AES_CM_128_HMAC_SHA1_80",
            "localCertificateId": "CFL",
            "remoteCertificateId": "CFR",
        },
        {
            "id": "COT01_111",
            "type": "codec",
            "timestamp": ts,
            "transportId": "T01",
            "payloadType": 111,
            "mimeType": "audio/opus",
            "clockRate": 48000,
            "channels": 2,
            "sdpFmtpLine": "minptime=10;useinbandfec=1",
        },
        {
            "id": "COT01_45",
            "type": "codec",
            "timestamp": ts,
            "transportId": "T01",
            "payloadType": 45,
            "mimeType": "video/AV1",
            "clockRate": 90000,
        },
        {
            "id": "SA1",
            "type": "media-source",
            "timestamp": ts,
            "kind": "audio",
            "trackIdentifier": "mic",
            "audioLevel": erlang(rng.random()),
            "totalAudioEnergy": erlang(0.3 * n),
            "totalSamplesDuration": secs,
        },
        {
            "id": "SV2",
            "type": "media-source",
            "timestamp": ts,
            "kind": "video",
            "trackIdentifier": "cam",
            "width": 1280,
            "height": 720,
            "frames": 30 * secs,
            "framesPerSecond": 30,
        },
        {
            "id": "OTA1",
            "type": "outbound-rtp",
            "timestamp": ts,
            "kind": "audio",
            "mediaType": "audio",
            "ssrc": 1000 + n % 7,
            "transportId": "T01",
            "codecId": "COT01_111",
            "mediaSourceId": "SA1",
            "mid": "0",
            "packetsSent": 50 * secs,
            "bytesSent": 4000 * secs,
            "headerBytesSent": 600 * secs,
            "retransmittedPacketsSent": 0,
            "retransmittedBytesSent": 0,
            "nackCount": 0,
            "targetBitrate": 32000,
            "totalPacketSendDelay": erlang(0.01 * secs),
            "active": True,
        },
        {
            "id": "OTV2",
            "type": "outbound-rtp",
            "timestamp": ts,
            "kind": "video",
            "mediaType": "video",
            "ssrc": 2000 + n % 7,
            "rtxSsrc": 3000,
            "transportId": "T01",
            "codecId": "COT01_45",
            "mediaSourceId": "SV2",
            "mid": "1",
            "rid": "r0",
            "packetsSent": 800 * secs,
            "bytesSent": 100_000 * secs,
            "headerBytesSent": 20_000 * secs,
            "retransmittedPacketsSent": 3 * n,
            "retransmittedBytesSent": 3000 * n,
            "framesEncoded": 30 * secs,
            "keyFramesEncoded": n + 1,
            "framesSent": 30 * secs,
            "hugeFramesSent": 0,
            "frameWidth": 1280,
            "frameHeight": 720,
            "framesPerSecond": rng.choice([24, 29, 30]),
            "totalEncodeTime": erlang(0.004 * 30 * secs),
            "totalEncodedBytesTarget": 0,
            "targetBitrate": rng.randint(500_000, 1_500_000),
            "qualityLimitationReason": rng.choice(["none", "none", "bandwidth", "cpu"]),
            "qualityLimitationDurations": {
                "none": erlang(secs * 0.9),
                "cpu": erlang(secs * 0.05),
                "bandwidth": 3,
                "other": 0,
            },
            "qualityLimitationResolutionChanges": n // 10,
            "nackCount": n * 2,
            "pliCount": n // 5,
            "firCount": 0,
            "encoderImplementation": "libaom",
            "scalabilityMode": "L1T3",
            "powerEfficientEncoder": False,
            "active": True,
        },
        {
            "id": "RIA1",
            "type": "remote-inbound-rtp",
            "timestamp": ts,
            "kind": "audio",
            "ssrc": 1000 + n % 7,
            "transportId": "T01",
            "codecId": "COT01_111",
            "localId": "OTA1",
            "packetsLost": rng.randint(0, 5) * n,
            "fractionLost": erlang(rng.random() * 0.05),
            "jitter": erlang(rng.random() * 0.03),
            "roundTripTime": erlang(rng.uniform(0.005, 0.2)),
            "totalRoundTripTime": erlang(0.05 * n),
            "roundTripTimeMeasurements": 12 * n,
        },
        {
            "id": "RIV2",
            "type": "remote-inbound-rtp",
            "timestamp": ts,
            "kind": "video",
            "ssrc": 2000 + n % 7,
            "transportId": "T01",
            "codecId": "COT01_45",
            "localId": "OTV2",
            "packetsLost": rng.randint(0, 20) * n,
            "fractionLost": erlang(rng.random() * 0.1),
            "jitter": erlang(rng.random() * 0.05),
            "roundTripTime": erlang(rng.uniform(0.005, 0.2)),
            "totalRoundTripTime": erlang(0.05 * n),
            "roundTripTimeMeasurements": 12 * n,
        },
        {
            "id": "P",
            "type": "peer-connection",
            "timestamp": ts,
            "dataChannelsOpened": 1,
            "dataChannelsClosed": 0,
        },
        {
            "id": "CFL",
            "type": "certificate",
            "timestamp": ts,
            "fingerprint": "AB:CD:EF",
            "fingerprintAlgorithm": "sha-256",
            "base64Certificate": "MIIBFjCBvaADAgECAgkA",
        },
        {
            "id": "D1",
            "type": "data-channel",
            "timestamp": ts,
            "label": "signaling",
            "protocol": "",
            "dataChannelIdentifier": 0,
            "state": "open",
            "messagesSent": 3 * n,
            "bytesSent": 300 * n,
            "messagesReceived": 2 * n,
            "bytesReceived": 250 * n,
        },
    ]
    for i, peer in enumerate(peers):
        for kind, ssrc in (("audio", 5000 + i), ("video", 6000 + i)):
            video = kind == "video"
            stat: dict[str, object] = {
                "id": f"IT{kind[0].upper()}{ssrc}",
                "type": "inbound-rtp",
                "timestamp": ts,
                "kind": kind,
                "mediaType": kind,
                "ssrc": ssrc,
                "transportId": "T01",
                "codecId": "COT01_45" if video else "COT01_111",
                "mid": str(2 + 2 * i),
                "trackIdentifier": f"{peer}-{kind}",
                "packetsReceived": (800 if video else 50) * secs,
                "bytesReceived": (100_000 if video else 4000) * secs,
                "headerBytesReceived": 600 * secs,
                "packetsLost": rng.randint(0, 10) * n,
                "packetsDiscarded": 0,
                "jitter": erlang(rng.random() * 0.03),
                "nackCount": n,
                "lastPacketReceivedTimestamp": erlang(ts_ms - 2),
                "jitterBufferDelay": erlang(0.05 * secs),
                "jitterBufferTargetDelay": erlang(0.06 * secs),
                "jitterBufferMinimumDelay": erlang(0.04 * secs),
                "jitterBufferEmittedCount": 30 * secs,
                "totalProcessingDelay": erlang(0.01 * secs),
            }
            if video:
                stat.update(
                    framesReceived=30 * secs,
                    framesDecoded=30 * secs - n,
                    keyFramesDecoded=n + 1,
                    framesDropped=n,
                    frameWidth=1280,
                    frameHeight=720,
                    framesPerSecond=rng.choice([24, 29, 30]),
                    freezeCount=n // 20,
                    pauseCount=0,
                    totalFreezesDuration=erlang(0.5 * (n // 20)),
                    totalPausesDuration=0,
                    pliCount=n // 5,
                    firCount=0,
                    totalDecodeTime=erlang(0.003 * 30 * secs),
                    decoderImplementation="libdav1d",
                )
            else:
                stat.update(
                    totalSamplesReceived=48000 * secs,
                    concealedSamples=100 * n,
                    silentConcealedSamples=10 * n,
                    concealmentEvents=n,
                    insertedSamplesForDeceleration=5 * n,
                    removedSamplesForAcceleration=4 * n,
                    audioLevel=erlang(rng.random()),
                    totalAudioEnergy=erlang(0.2 * n),
                    totalSamplesDuration=secs,
                    fecPacketsReceived=0,
                    fecPacketsDiscarded=0,
                    playoutId="AP",
                )
            out.append(stat)
    return out


def objects_per_report(room: int = 4) -> int:
    """How many RTCStats objects (lines) one report of a connection in a room of ``room``
    holds: 15 of its own, and an audio and a video inbound-rtp per other participant."""
    return 15 + 2 * (room - 1)


def lines(total: int, *, connections: int = 400, room: int = 4, seed: int = 7) -> Iterator[bytes]:
    """``total`` rtc_stats lines: ``connections`` connections in rooms of ``room``,
    reporting in turn every 60 s (each sees the others of its room as inbound tracks)."""
    rng = random.Random(seed)
    conns = [sora_id(rng) for _ in range(connections)]
    sessions = {c: conns[i - i % room] for i, c in enumerate(conns)}
    made = 0
    n = 0
    while made < total:
        for i, conn in enumerate(conns):
            members = conns[i - i % room : i - i % room + room]
            when = START + dt.timedelta(seconds=60 * n + i * 60 / connections)
            ts_ms = when.timestamp() * 1000
            envelope = {
                "connection_id": conn, "id": sora_id(rng), "label": "WebRTC SFU Sora",
                "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "type": "connection.rtc", "version": "2025.2.1", "node_name": "sora@192.0.2.1",
                "session_id": sessions[conn], "role": "sendrecv", "channel_id": f"room-{i // room}",
                "spotlight": False, "bundle_id": conn, "client_id": conn,
                "group_id": sessions[conn], "simulcast": False, "log_written": False,
            }  # fmt: skip
            peers = [p for p in members if p != conn]
            for line in rtc_stats_lines(envelope, _stats(rng, n, ts_ms, peers)):
                yield line
                made += 1
                if made >= total:
                    return
        n += 1


def write(path: Path, total: int, *, connections: int = 400, room: int = 4) -> Path:
    """Write ``total`` lines to ``path`` (kept if it already has them); gzipped (fast, level
    1) when its name ends in ``.gz``."""
    gz = path.suffix == ".gz"
    opener = functools.partial(gzip.open, compresslevel=1) if gz else open
    if path.exists():
        with opener(path, "rb") as fh:
            if sum(1 for _ in fh) == total:
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with opener(tmp, "wb") as fh:
        for line in lines(total, connections=connections, room=room):
            fh.write(line + b"\n")
    tmp.replace(path)
    return path
