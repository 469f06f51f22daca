"""Realistic telemetry records and pre-built HTTP requests that carry them.

A request is built once, as bytes, with two fixed-width placeholders: the request number
and the wall-clock second. Filling them in per request is two ``bytes.replace`` calls in C,
so the load generator spends almost nothing per request, yet every record it sends is
unique (its ``seq`` holds the connection tag, the request number and the line) and carries
a current RFC 3339 time with microseconds. Fixed widths keep ``Content-Length`` constant.
"""

from __future__ import annotations

import random
import time

import orjson

REQ = b"#REQUEST#0"  # 10 characters: the request number, zero-padded
TS = b"~YYYY-MM-DDTHH:MM:S"  # 19 characters: the UTC second, as 2026-11-23T12:34:56

_CODECS = ("VP8", "VP9", "H264", "AV1")
_RESOLUTIONS = ((640, 360), (1280, 720), (1920, 1080))
_KINDS = ("webrtc.stats", "webrtc.stats", "device.health")


def utc_second(now: float | None = None) -> bytes:
    """The UTC second as the 19 bytes that replace :data:`TS`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()


def request_number(n: int) -> bytes:
    """``n`` as the 10 bytes that replace :data:`REQ`."""
    return b"%010d" % n


def telemetry_record(rng: random.Random, tag: str, line: int, micros: int) -> bytes:
    """One compact JSON record (about 230 bytes) with the two placeholders in it."""
    width, height = rng.choice(_RESOLUTIONS)
    record = {
        "device_id": f"cam-{rng.randrange(100_000):05d}",
        "time": f"{TS.decode()}.{micros:06d}Z",
        "seq": f"{tag}-{REQ.decode()}-{line:04d}",
        "type": rng.choice(_KINDS),
        "rtt_ms": round(rng.uniform(5, 250), 1),
        "jitter_ms": round(rng.uniform(0, 30), 2),
        "packets_lost": rng.randrange(50),
        "bitrate_kbps": round(rng.uniform(150, 4500), 1),
        "fps": round(rng.uniform(10, 30), 2),
        "video": {"width": width, "height": height, "codec": rng.choice(_CODECS)},
    }
    return orjson.dumps(record)


def jsonl_body(rng: random.Random, tag: str, records: int) -> bytes:
    """A JSON Lines body of ``records`` records, with increasing microseconds."""
    micros = sorted(rng.sample(range(1_000_000), records))
    lines = [telemetry_record(rng, tag, i, micros[i]) for i in range(records)]
    return b"\n".join(lines) + b"\n"


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive POST with ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "User-Agent: rtclake-bench\r\n"
        "Content-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def fill(template: bytes, number: int, second: bytes) -> bytes:
    """A request ready to send: ``template`` with its placeholders filled in."""
    return template.replace(REQ, request_number(number)).replace(TS, second)
