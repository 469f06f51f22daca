"""Sora's part of ``rtclake demo``: a realistic generated Sora log folder.

:func:`write` writes what a Sora node's log directory would hold after the last
``minutes`` before ``now``: four channels of calls (:data:`SCRIPT`), in Sora's own formats
(the samples in ``tests/fixtures/sora/``):

- ``rtc_stats.jsonl``: a getStats report every 5 s per connection (Sora's default is
  60 s; 5 s gives charts something to show), each RTCStats object a line with Sora's
  envelope, camelCase ``rtc_data`` and floats in Erlang's form. Per report: the selected
  candidate pair and its candidates, the transport, certificates, codecs, media sources,
  outbound-rtp and remote-inbound-rtp for audio and video, and per other connection in the
  channel inbound-rtp for audio and video and remote-outbound-rtp for audio. Counters
  only grow, except where a connection's streams are renewed (``ice_restart``);
  audio is Opus at ~32 kbps, video VP9 720p at 0.9-1.4 Mbps unless a finding says else.
- ``session_webhook.jsonl``: ``session.created``, ``session.updated`` every 60 s and
  ``session.destroyed`` for the channel whose call ended.
- ``connection.jsonl``: one line per connection that ended (Sora writes it at
  teardown), with its created and destroyed times and the reason.

Most connections are clean; the others are each made to show one finding, a code of
:data:`FINDINGS`. The manifest :func:`write` returns names every connection and the
findings it is made to show, for tests and for what diagnoses them.

Deterministic: the same ``seed`` and ``now`` give byte-identical files, ids included. The
ids follow from both, so a later run (another ``now``) is another set of calls rather
than a second series of the same connections.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from rtclake.durable import write_atomic
from rtclake.integrations.sora.log_format import erlang, number, rtc_stats_lines, sora_id

FINDINGS = {
    "high_loss": "~8 % of inbound packets lost, remote-inbound fractionLost ~0.08",
    "high_rtt": "~400 ms round trip (candidate pair and remote-inbound)",
    "high_jitter": "~80 ms inbound jitter",
    "bandwidth_limited": "outbound video limited by bandwidth, its resolution dropping",
    "cpu_limited": "outbound video limited by the CPU",
    "freezes": "inbound video freezing (freezeCount rising)",
    "low_fps": "inbound video at ~7 frames per second",
    "relay": "media relayed by TURN (the selected local candidate is a relay, UDP)",
    "no_media": "one inbound stream's bytes stop growing for minutes; reports go on",
    "ice_restart": "ICE restart: disconnected, a new candidate pair, new SSRCs, counters"
    " back near zero",
    "disconnected": "ICE disconnected (media trickling) then failed near the end; destroyed"
    " as abnormal",
    "reconnect": "a client that left came back: a second connection, same client_id",
}
"""The findings a demo connection can be made to show (code -> what its data shows)."""

REPORT_SECONDS = 5
LABEL = "WebRTC SFU Sora"
VERSION = "2025.2.1"
NODE = "sora@198.51.100.10"
SORA_ADDRESS = "198.51.100.10"  # documentation addresses (RFC 5737) throughout

_US = 1_000_000
_STEP = REPORT_SECONDS * _US
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# ICE outages are placed on the connection's own reports so that the connection shows
# its state while no other connection sees two reports in a row without media from it
# (what a 10 s no_media rule would count against the receivers):
_RESTART_OUTAGE = 4 * _US  # ice_restart: one report disconnected, nothing flowing
_DISCONNECTED = 19_500_000  # disconnected: three reports disconnected, media trickling...
_FAILED = 4_500_000  # ...then its last report failed, nothing flowing
_TRICKLE = 0.3  # the share of the media that still gets through while disconnected
_LOG_DELAY = 40_000  # µs from a report's getStats to Sora's log line, at most
_AUDIO_BYTES = 4000.0  # Opus at 32 kbps
_AUDIO_PACKETS = 50.0  # 20 ms frames
_VIDEO_PACKET = 1100.0  # bytes of video payload per packet


@dataclass(frozen=True)
class Part:
    """One scripted connection: who, when (fractions of the window; ``end`` None: still
    connected at ``now``), the finding it shows (None: a clean connection) and its role.
    Two parts of one client in one channel are a leave and a reconnect."""

    client: str
    begin: float
    end: float | None = None
    finding: str | None = None
    role: str = "sendrecv"

    @property
    def sends(self) -> bool:
        return self.role != "recvonly"

    @property
    def receives(self) -> bool:
        return self.role != "sendonly"


SCRIPT: dict[str, tuple[Part, ...]] = {
    "sora-demo-lobby": (
        Part("alice", 0.0),
        Part("bob", 0.01),
        Part("carol", 0.02, 0.38),
        Part("carol", 0.42, finding="reconnect"),
    ),
    "sora-demo-standup": (  # a call that ends: its session is destroyed
        Part("dave", 0.0, 0.74, "high_loss"),
        Part("erin", 0.01, 0.745, "high_rtt"),
        Part("frank", 0.015, 0.75, "high_jitter"),
        Part("grace", 0.02, 0.73),
    ),
    "sora-demo-webinar": (  # two presenters, two viewers
        Part("heidi", 0.0, finding="bandwidth_limited", role="sendonly"),
        Part("ivan", 0.01, finding="cpu_limited", role="sendonly"),
        Part("judy", 0.02, finding="low_fps", role="recvonly"),
        Part("mallory", 0.03, finding="freezes", role="recvonly"),
    ),
    "sora-demo-support": (
        Part("niaj", 0.0, finding="relay"),
        Part("olivia", 0.01, finding="no_media"),
        Part("peggy", 0.02, finding="ice_restart"),
        Part("rupert", 0.03, 0.93, "disconnected"),
    ),
}
"""The demo's channels and their connections, in the order ids are drawn."""

# When each finding shows, as fractions of the window. Relay and reconnect: the whole
# connection; ice_restart: one report, the first from the window's start; disconnected:
# the connection's last 20 s.
TROUBLE: dict[str, tuple[float, float]] = {
    "high_loss": (0.30, 0.60),
    "high_rtt": (0.25, 0.65),
    "high_jitter": (0.30, 0.65),
    "bandwidth_limited": (0.30, 0.85),
    "cpu_limited": (0.35, 0.80),
    "freezes": (0.30, 0.70),
    "low_fps": (0.25, 0.80),
    "no_media": (0.40, 0.55),
    "ice_restart": (0.50, 0.50),
}


def write(folder: Path, *, now: datetime, seed: int, minutes: int = 30) -> dict[str, Any]:
    """Write the demo's log files into ``folder``; return the manifest.

    The data covers ``minutes`` (at least 5) ending at ``now`` (a time with its zone). A
    file whose bytes would not change is left as it is, so importing it again reads
    nothing. The manifest: ``demo``, ``seed``, ``now``, ``minutes``, ``files`` (name ->
    lines), ``channels`` (channel_id -> session_id) and ``connections``
    (connection_id -> ``label``, ``channel_id``, ``session_id``, ``client_id``,
    ``created``, ``destroyed``, ``expect``: the codes of :data:`FINDINGS` it shows).
    """
    if now.tzinfo is None:
        raise ValueError("now: give a time with its zone (e.g. datetime.now(UTC))")
    if minutes < 5:
        raise ValueError("minutes: at least 5, for the findings to show")
    demo = _Demo(now, seed, minutes)
    files = {
        "rtc_stats.jsonl": demo.rtc_stats(),
        "session_webhook.jsonl": demo.session_webhooks(),
        "connection.jsonl": demo.connection_log(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        data = b"".join(line + b"\n" for line in lines)
        path = folder / name
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            write_atomic(path, data)
    return demo.manifest({name: len(lines) for name, lines in files.items()})


# -- the model ---------------------------------------------------------------------------


@dataclass
class _Video:
    """What a sender's camera track is sending at one moment."""

    bitrate: float  # bits per second
    width: int
    height: int
    fps: int
    reason: str  # qualityLimitationReason


@dataclass
class _Stream:
    """One RTP stream's counters (floats, printed as integers: they never go back)."""

    ssrc: int
    mid: str
    first: int  # µs: when it began
    last: int  # µs: counters are complete up to here
    rtx: int = 0  # the retransmission SSRC of a video stream sent
    c: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)  # qualityLimitationDurations
    size: tuple[int, int] = (0, 0)  # frame width and height
    fps: int = 0  # frames per second received in the last interval
    last_packet: int = 0  # µs

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.c[key] = self.c.get(key, 0.0) + value

    def n(self, key: str) -> int:
        return int(self.c.get(key, 0.0))


@dataclass
class _Pair:
    """The selected candidate pair of one ICE session (before or after the restart)."""

    id: str
    local: dict[str, Any]
    remote: dict[str, Any]
    priority: int
    c: dict[str, float] = field(default_factory=dict)


@dataclass
class _Conn:
    """One connection: its ids, times (µs since the epoch), static traits and state."""

    index: int
    channel: str
    part: Part
    session_id: str
    connection_id: str
    client_id: str
    begin: int
    end: int | None
    trouble: tuple[int, int] | None
    rng: random.Random
    noise: dict[str, list[float]]
    start: int  # the window's start: noise is drawn per 5 s slot of the window
    video_base: float
    rtt_base: float
    epochs: list[_Pair] = field(default_factory=list)
    out: dict[tuple[str, int], _Stream] = field(default_factory=dict)
    inbound: dict[tuple[str, str, int], _Stream] = field(default_factory=dict)
    transport: dict[str, float] = field(default_factory=dict)
    captured: dict[str, float] = field(default_factory=dict)  # the microphone's energy
    reports: list[int] = field(default_factory=list)

    @property
    def finding(self) -> str | None:
        return self.part.finding

    def alive(self, t: int) -> bool:
        return self.begin <= t and (self.end is None or t < self.end)

    def troubled(self, t: int) -> bool:
        return self.trouble is not None and self.trouble[0] <= t < self.trouble[1]

    def progress(self, t: int) -> float:
        """How far ``t`` is through the trouble window (0 to 1)."""
        assert self.trouble is not None
        a, b = self.trouble
        return min(max((t - a) / max(b - a, 1), 0.0), 0.999)

    def wobble(self, name: str, t: int) -> float:
        """A standard normal draw for ``name`` in ``t``'s 5 s slot (a function of time, so
        a receiver reads the same sender values as the sender does)."""
        series = self.noise[name]
        return series[min(max((t - self.start) // _STEP, 0), len(series) - 1)]

    def restarted(self) -> int | None:
        """When the ICE restart is over (new pair, new streams), for ``ice_restart``."""
        if self.finding == "ice_restart" and self.trouble:
            return self.trouble[0] + _RESTART_OUTAGE
        return None

    def epoch(self, t: int) -> int:
        """0, or 1 once the ICE restart is over."""
        restarted = self.restarted()
        return 1 if restarted is not None and t >= restarted else 0

    def ice_state(self, t: int) -> str:
        restarted = self.restarted()
        if restarted is not None and restarted - _RESTART_OUTAGE <= t < restarted:
            return "disconnected"
        if self.finding == "disconnected" and self.end is not None:
            if t >= self.end - _FAILED:
                return "failed"
            if t >= self.end - _DISCONNECTED:
                return "disconnected"
        return "connected"

    def share(self, t: int) -> float:
        """How much of its media gets through at ``t``: all while ICE is connected, some
        while a failing path is disconnected, none once failed or while restarting."""
        state = self.ice_state(t) if self.alive(t) else "closed"
        if state == "connected":
            return 1.0
        return _TRICKLE if state == "disconnected" and self.finding == "disconnected" else 0.0

    def video(self, t: int) -> _Video:
        """The camera track this connection sends at ``t``."""
        wobble = self.wobble("video", t)
        if self.finding == "bandwidth_limited" and self.troubled(t):
            steps = ((960, 540, 700e3), (640, 360, 420e3), (480, 270, 300e3))
            width, height, bitrate = steps[int(self.progress(t) * 3)]
            return _Video(bitrate * (1 + 0.04 * wobble), width, height, 30, "bandwidth")
        if self.finding == "cpu_limited" and self.troubled(t):
            return _Video(520e3 * (1 + 0.04 * wobble), 640, 360, 30, "cpu")
        fps = 30 if wobble > -1.2 else 29
        return _Video(self.video_base * (1 + 0.05 * wobble), 1280, 720, fps, "none")

    def down_loss(self, t: int) -> float:
        """The fraction of packets lost on the way to this connection."""
        if self.finding == "high_loss" and self.troubled(t):
            return 0.08 + 0.006 * self.wobble("loss", t)
        return max(0.0, 0.0008 + 0.0005 * self.wobble("loss", t))

    def up_fraction(self, t: int) -> float:
        """RTCP's fractionLost of what this connection sends (in 1/256 steps)."""
        if self.finding == "high_loss" and self.troubled(t):
            return round((0.08 + 0.005 * self.wobble("uploss", t)) * 256) / 256
        return 1 / 256 if self.wobble("uploss", t) > 1.5 else 0.0

    def jitter(self, t: int, kind: str) -> float:
        """Interarrival jitter (seconds) of what this connection receives."""
        wobble = self.wobble("jitter", t)
        if self.finding == "high_jitter" and self.troubled(t):
            return 0.08 + 0.006 * wobble
        return (0.004 if kind == "audio" else 0.009) + 0.001 * abs(wobble)

    def rtt(self, t: int) -> float:
        if self.finding == "high_rtt" and self.troubled(t):
            return 0.40 + 0.015 * self.wobble("rtt", t)
        return self.rtt_base * (1 + 0.08 * self.wobble("rtt", t))


# -- the generator -----------------------------------------------------------------------


def _time(us: int) -> str:
    """RFC 3339 with microseconds, as Sora prints times."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _token(rng: random.Random, n: int, alphabet: str) -> str:
    return "".join(rng.choices(alphabet, k=n))


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ICE = _ALNUM + "+/"
_AUDIO_CODEC = ("_109_minptime=10;useinbandfec=1", 109, "audio/opus", "minptime=10;useinbandfec=1")
_VIDEO_CODEC_OUT = ("_120_profile-id=0;x-google-start-bitrate=500", 120, "video/VP9",
                    "profile-id=0;x-google-start-bitrate=500")  # fmt: skip
_VIDEO_CODEC_IN = ("_120_profile-id=0", 120, "video/VP9", "profile-id=0")
_TRANSPORT = "Tdata1"


class _Demo:
    def __init__(self, now: datetime, seed: int, minutes: int) -> None:
        self.now = (now.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
        self.seed = seed
        self.minutes = minutes
        self.window = minutes * 60 * _US
        self.start = self.now - self.window
        ids = random.Random(f"rtclake-demo/sora/{seed}/{self.now}")
        self.ids = ids
        self.sessions = {channel: sora_id(ids) for channel in SCRIPT}
        self.conns: list[_Conn] = []
        slots = self.window // _STEP + 2
        clients: dict[tuple[str, str], str] = {}
        for channel, parts in SCRIPT.items():
            for part in parts:
                rng = random.Random(ids.getrandbits(64))
                client = clients.setdefault((channel, part.client), sora_id(ids))
                begin = self.at(part.begin) + rng.randrange(200_000, 4_000_000)
                end = None if part.end is None else self.at(part.end) + rng.randrange(_US)
                trouble = None
                if part.finding in TROUBLE:
                    a, b = TROUBLE[part.finding]
                    trouble = (self.at(a), self.at(b))
                relay = part.finding == "relay"
                conn = _Conn(
                    index=len(self.conns), channel=channel, part=part,
                    session_id=self.sessions[channel], connection_id=sora_id(ids),
                    client_id=client, begin=begin, end=end, trouble=trouble, rng=rng,
                    noise={
                        name: [rng.gauss(0, 1) for _ in range(slots)]
                        for name in ("video", "audio", "loss", "uploss", "jitter", "rtt", "level")
                    },
                    start=self.start, video_base=rng.uniform(0.9e6, 1.4e6),
                    rtt_base=rng.uniform(0.06, 0.08) if relay else rng.uniform(0.018, 0.05),
                )  # fmt: skip
                conn.epochs.append(self._pair(conn, restarted=False))
                if part.finding == "ice_restart":
                    conn.epochs.append(self._pair(conn, restarted=True))
                first = begin + rng.randrange(_US, _STEP)
                last = self.now - _LOG_DELAY if end is None else end  # logged by now
                conn.reports = list(range(first, last + 1, _STEP))
                if part.finding == "ice_restart" and trouble:  # a second before a report
                    at = next(t for t in conn.reports if t >= trouble[0]) - _US
                    conn.trouble = (at, at)
                if part.finding == "disconnected":  # the last report is the failed one
                    conn.end = conn.reports[-1] + 500_000
                self.conns.append(conn)

    def at(self, fraction: float) -> int:
        return self.start + int(self.window * fraction)

    def peers(self, conn: _Conn) -> list[_Conn]:
        return [c for c in self.conns if c.channel == conn.channel and c is not conn]

    # -- ICE -------------------------------------------------------------------------------

    def _pair(self, conn: _Conn, *, restarted: bool) -> _Pair:
        """The selected candidate pair: a host candidate on an office LAN, a server-
        reflexive one behind a home NAT, TURN's relay, or after an ICE restart the
        mobile network's address."""
        rng = conn.rng
        local_id = "I" + _token(rng, 8, _ICE)
        remote_id = "I" + _token(rng, 8, _ICE)
        private = f"192.168.{rng.randrange(0, 10)}.{rng.randrange(2, 250)}"
        public = f"203.0.113.{rng.randrange(2, 250)}"
        port = rng.randrange(49152, 65535)
        local: dict[str, Any] = {
            "transportId": _TRANSPORT,
            "address": private,
            "port": port,
            "protocol": "udp",
            "candidateType": "host",
            "priority": 2122260223,
            "networkType": "ethernet",
            "foundation": str(rng.randrange(1, 4_000_000_000)),
            "usernameFragment": _token(rng, 4, _ALNUM),
        }
        kind = "relay" if conn.finding == "relay" else rng.choice(("host", "srflx", "srflx"))
        if conn.finding == "ice_restart":
            kind = "srflx" if restarted else "host"
        if kind == "srflx":
            local.update(
                address=public, candidateType="srflx", priority=1686052607,
                relatedAddress=private, relatedPort=port, url="stun:sora.example.com:3478",
                networkType="cellular" if restarted else "wifi",
            )  # fmt: skip
        elif kind == "relay":
            local.update(
                address=SORA_ADDRESS, port=rng.randrange(50000, 60000), candidateType="relay",
                priority=41885439, relayProtocol="udp", relatedAddress=public,
                relatedPort=port, url="turn:sora.example.com:3478?transport=udp",
                networkType="wifi",
            )  # fmt: skip
        remote: dict[str, Any] = {
            "transportId": _TRANSPORT,
            "address": SORA_ADDRESS,
            "port": 5000 + conn.index,
            "protocol": "udp",
            "candidateType": "host",
            "priority": 2130706431,
            "foundation": "1",
            "usernameFragment": _token(rng, 16, _ALNUM),
        }
        priority = (1 << 32) * min(local["priority"], 2130706431) + 2 * 2130706431
        return _Pair(f"CP{local_id[1:]}_{remote_id[1:]}", {"id": local_id, **local},
                     {"id": remote_id, **remote}, priority % (1 << 63))  # fmt: skip

    # -- rtc_stats.jsonl -------------------------------------------------------------------

    def rtc_stats(self) -> list[bytes]:
        reports: list[tuple[int, int, list[bytes]]] = []
        for conn in self.conns:
            certificates = [self._certificate(conn) for _ in range(2)]
            previous = conn.begin
            for t in conn.reports:
                stats = self._report(conn, previous, t, certificates)
                previous = t
                logged = t + conn.rng.randrange(5_000, _LOG_DELAY)  # Sora logs it a bit later
                envelope = {
                    "connection_id": conn.connection_id, "id": sora_id(self.ids),
                    "label": LABEL, "timestamp": _time(logged), "type": "connection.rtc",
                    "version": VERSION, "node_name": NODE, "session_id": conn.session_id,
                    "role": conn.part.role, "channel_id": conn.channel, "spotlight": False,
                    "bundle_id": conn.connection_id, "client_id": conn.client_id,
                    "group_id": conn.session_id, "simulcast": False, "log_written": False,
                }  # fmt: skip
                reports.append((logged, len(reports), rtc_stats_lines(envelope, stats)))
        reports.sort()
        return [line for _, _, lines in reports for line in lines]

    def _certificate(self, conn: _Conn) -> dict[str, Any]:
        fingerprint = ":".join(f"{conn.rng.randrange(256):02X}" for _ in range(32))
        return {
            "id": f"CF{fingerprint}",
            "type": "certificate",
            "fingerprint": fingerprint,
            "fingerprintAlgorithm": "sha-256",
            "base64Certificate": "MIIBFjCBvaADAgECAgkA" + _token(conn.rng, 40, _ALNUM),
        }

    def _stream(self, conn: _Conn, kind: str, since: int) -> _Stream:
        return _Stream(
            ssrc=conn.rng.randrange(1, 1 << 32),
            mid=f"{kind}_{_token(conn.rng, 6, _ALNUM)}",
            first=since,
            last=since,
        )

    def _report(
        self, conn: _Conn, previous: int, t: int, certificates: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One getStats report of ``conn`` at ``t`` (the last one was at ``previous``)."""
        ts = erlang(t / 1000)
        epoch = conn.epoch(t)
        since = conn.begin if epoch == 0 else max(conn.begin, conn.restarted() or 0)
        share = conn.share(t)
        rtt = conn.rtt(t)
        video = conn.video(t)
        uplink = conn.up_fraction(t)
        stats = [{"id": cert["id"], "timestamp": ts, **cert} for cert in certificates]

        # What this connection sends.
        sent = packets_sent = 0.0
        if conn.part.sends:
            if ("audio", epoch) not in conn.out:  # the first report, or new SSRCs (restart)
                conn.out["audio", epoch] = self._stream(conn, "audio", since)
                conn.out["video", epoch] = self._stream(conn, "video", since)
                conn.out["video", epoch].rtx = conn.rng.randrange(1, 1 << 32)
            out_a, out_v = conn.out["audio", epoch], conn.out["video", epoch]
            sent, packets_sent = self._send(conn, out_a, out_v, t, share, video, uplink)
            stats.append(self._codec(ts, "CO", _AUDIO_CODEC, channels=2))
            stats.append(self._codec(ts, "CO", _VIDEO_CODEC_OUT))
            stats.extend(self._sources(conn, ts, previous, t))
            stats.append(self._outbound_audio(ts, out_a))
            stats.append(self._outbound_video(ts, out_v, video))
            for stream, kind in ((out_a, "audio"), (out_v, "video")):
                stats.append(self._remote_inbound(conn, ts, t, stream, kind, uplink, rtt))

        # What it receives from the others in the channel.
        received = packets_received = 0.0
        peers = [p for p in self.peers(conn) if p.alive(t) and p.part.sends]
        if not conn.part.receives:
            peers = []
        if peers:
            stats.append(self._codec(ts, "CI", _AUDIO_CODEC, channels=2))
            stats.append(self._codec(ts, "CI", _VIDEO_CODEC_IN))
        for nth, peer in enumerate(peers):
            for kind in ("audio", "video"):
                key = (peer.connection_id, kind, epoch)
                if key not in conn.inbound:
                    conn.inbound[key] = self._stream(conn, kind, max(since, peer.begin))
                stream = conn.inbound[key]
                nbytes, packets = self._receive(conn, peer, stream, kind, t, share, nth)
                received += nbytes
                packets_received += packets
                stats.append(self._inbound(conn, peer, ts, t, stream, kind))
                if kind == "audio":
                    stats.append(self._remote_outbound(ts, t, stream))

        # The pair and the transport carry it all, and RTCP, STUN and DTLS besides.
        pair = conn.epochs[epoch]
        carried = {
            "bytesSent": sent * 1.04 + 300, "bytesReceived": received * 1.04 + 300,
            "packetsSent": packets_sent + 10, "packetsReceived": packets_received + 10,
        }  # fmt: skip
        for counters in (pair.c, conn.transport):
            for name, value in carried.items():
                counters[name] = counters.get(name, 0.0) + (value if share else 0.0)
        stats.extend(self._ice(conn, pair, ts, t, epoch, rtt, video))
        return stats

    def _send(
        self, conn: _Conn, audio: _Stream, video_stream: _Stream, t: int, share: float,
        video: _Video, uplink: float,
    ) -> tuple[float, float]:  # fmt: skip
        """Add what ``conn`` sent since the last report; return its bytes and packets."""
        sent = packets_sent = 0.0
        for stream in (audio, video_stream):
            dt = (t - stream.last) / _US * share
            stream.last = t
            if stream is audio:
                nbytes = _AUDIO_BYTES * (1 + 0.03 * conn.wobble("audio", t)) * dt
                packets = _AUDIO_PACKETS * dt
                stream.add(bytes=nbytes, packets=packets, header=packets * 28,
                           delay=packets * 0.0004, lost=packets * uplink)  # fmt: skip
            else:
                nbytes = video.bitrate / 8 * dt
                packets = nbytes / _VIDEO_PACKET
                frames = video.fps * dt
                lost = packets * uplink
                encode = 0.028 if video.reason == "cpu" else 0.004
                stream.add(bytes=nbytes, packets=packets, header=packets * 32, frames=frames,
                           encode=frames * encode, delay=packets * 0.0012, lost=lost,
                           nack=lost * 0.9, rtxp=lost * 0.9, rtxb=lost * 0.9 * 1000,
                           pli=dt / 60, key=dt / 60, target=nbytes)  # fmt: skip
                stream.durations[video.reason] = stream.durations.get(video.reason, 0.0) + dt
                if stream.size != (video.width, video.height):
                    if stream.size != (0, 0):
                        stream.add(changes=1)
                    stream.size = (video.width, video.height)
            sent += nbytes
            packets_sent += packets
        return sent, packets_sent

    def _codec(
        self, ts: Any, prefix: str, codec: tuple[str, int, str, str], channels: int = 0
    ) -> dict[str, Any]:
        suffix, payload, mime, fmtp = codec
        stat = {
            "id": f"{prefix}{_TRANSPORT}{suffix}", "type": "codec", "timestamp": ts,
            "transportId": _TRANSPORT, "payloadType": payload, "mimeType": mime,
            "clockRate": 48000 if channels else 90000,
        }  # fmt: skip
        if channels:
            stat["channels"] = channels
        stat["sdpFmtpLine"] = fmtp
        return stat

    def _sources(self, conn: _Conn, ts: Any, previous: int, t: int) -> list[dict[str, Any]]:
        """The microphone and the camera (they capture whatever the network does)."""
        level = 0.05 + 0.03 * abs(conn.wobble("level", t))
        seconds = (t - conn.begin) / _US
        energy = conn.captured["energy"] = (
            conn.captured.get("energy", 0.0) + level * level * (t - previous) / _US
        )
        return [
            {
                "id": "SA1", "type": "media-source", "timestamp": ts, "kind": "audio",
                "trackIdentifier": f"{conn.connection_id.lower()}-mic",
                "audioLevel": erlang(level), "totalAudioEnergy": erlang(energy),
                "totalSamplesDuration": number(round(seconds, 3)),
            },
            {
                "id": "SV2", "type": "media-source", "timestamp": ts, "kind": "video",
                "trackIdentifier": f"{conn.connection_id.lower()}-camera",
                "width": 1280, "height": 720, "frames": int(30 * seconds), "framesPerSecond": 30,
            },
        ]  # fmt: skip

    def _outbound_audio(self, ts: Any, s: _Stream) -> dict[str, Any]:
        return {
            "id": f"O{_TRANSPORT}A{s.ssrc}", "type": "outbound-rtp", "timestamp": ts,
            "kind": "audio", "mediaType": "audio", "ssrc": s.ssrc, "mid": s.mid,
            "transportId": _TRANSPORT, "codecId": f"CO{_TRANSPORT}{_AUDIO_CODEC[0]}",
            "mediaSourceId": "SA1", "remoteId": f"RI{_TRANSPORT}A{s.ssrc}", "active": True,
            "packetsSent": s.n("packets"), "bytesSent": s.n("bytes"),
            "headerBytesSent": s.n("header"), "retransmittedPacketsSent": 0,
            "retransmittedBytesSent": 0, "nackCount": 0, "targetBitrate": 32000,
            "totalPacketSendDelay": number(round(s.c.get("delay", 0.0), 6)),
        }  # fmt: skip

    def _outbound_video(self, ts: Any, s: _Stream, video: _Video) -> dict[str, Any]:
        durations = {k: s.durations.get(k, 0.0) for k in ("none", "cpu", "other", "bandwidth")}
        return {
            "id": f"O{_TRANSPORT}V{s.ssrc}", "type": "outbound-rtp", "timestamp": ts,
            "kind": "video", "mediaType": "video", "ssrc": s.ssrc, "rtxSsrc": s.rtx,
            "mid": s.mid, "transportId": _TRANSPORT,
            "codecId": f"CO{_TRANSPORT}{_VIDEO_CODEC_OUT[0]}", "mediaSourceId": "SV2",
            "remoteId": f"RI{_TRANSPORT}V{s.ssrc}", "active": True, "encodingIndex": 0,
            "packetsSent": s.n("packets"), "bytesSent": s.n("bytes"),
            "headerBytesSent": s.n("header"),
            "retransmittedPacketsSent": s.n("rtxp"), "retransmittedBytesSent": s.n("rtxb"),
            "framesEncoded": s.n("frames"), "keyFramesEncoded": s.n("key") + 1,
            "framesSent": s.n("frames"), "hugeFramesSent": 0,
            "frameWidth": video.width, "frameHeight": video.height,
            "framesPerSecond": video.fps,
            "totalEncodeTime": number(round(s.c.get("encode", 0.0), 6)),
            "totalEncodedBytesTarget": s.n("target"), "targetBitrate": int(video.bitrate),
            "totalPacketSendDelay": number(round(s.c.get("delay", 0.0), 6)),
            "qualityLimitationReason": video.reason,
            "qualityLimitationDurations": {k: number(round(v, 3)) for k, v in durations.items()},
            "qualityLimitationResolutionChanges": s.n("changes"),
            "nackCount": s.n("nack"), "pliCount": s.n("pli"), "firCount": 0,
            "encoderImplementation": "libvpx", "powerEfficientEncoder": False,
            "scalabilityMode": "L1T3",
        }  # fmt: skip

    def _remote_inbound(
        self, conn: _Conn, ts: Any, t: int, s: _Stream, kind: str, fraction: float, rtt: float
    ) -> dict[str, Any]:
        """What Sora's receiver reports say about a stream this connection sends."""
        letter = kind[0].upper()
        measurements = max(int((t - s.first) / _US), 1)  # a receiver report a second
        s.add(rtts=rtt * 1.02 * (measurements - s.n("measured")))
        s.c["measured"] = measurements
        codec = _AUDIO_CODEC if kind == "audio" else _VIDEO_CODEC_OUT
        return {
            "id": f"RI{_TRANSPORT}{letter}{s.ssrc}", "type": "remote-inbound-rtp",
            "timestamp": ts, "kind": kind, "ssrc": s.ssrc, "transportId": _TRANSPORT,
            "codecId": f"CO{_TRANSPORT}{codec[0]}", "localId": f"O{_TRANSPORT}{letter}{s.ssrc}",
            "packetsLost": s.n("lost"), "fractionLost": number(fraction),
            "jitter": number(round(0.002 + 0.0005 * abs(conn.wobble("jitter", t)), 6)),
            "roundTripTime": number(round(rtt * 1.02, 6)),
            "totalRoundTripTime": number(round(s.c["rtts"], 6)),
            "roundTripTimeMeasurements": measurements,
        }  # fmt: skip

    def _receive(
        self, conn: _Conn, peer: _Conn, s: _Stream, kind: str, t: int, share: float, nth: int
    ) -> tuple[float, float]:
        """Add what ``conn`` received of ``peer``'s ``kind`` since the last report."""
        dt = (t - s.last) / _US
        s.last = t
        stalled = conn.finding == "no_media" and kind == "video" and nth == 0
        share = min(share, peer.share(t))
        if not share or (stalled and conn.troubled(t)):
            s.fps = 0
            return 0.0, 0.0
        loss = conn.down_loss(t)
        jitter = conn.jitter(t, kind)
        s.last_packet = t - conn.rng.randrange(2_000, 20_000)
        if kind == "audio":
            expected = _AUDIO_PACKETS * dt * share
            lost = expected * loss
            nbytes = _AUDIO_BYTES * (1 + 0.03 * peer.wobble("audio", t)) * dt * share * (1 - loss)
            samples = 48000 * dt
            delay = 0.04 + 2 * jitter
            s.add(packets=expected - lost, bytes=nbytes, header=(expected - lost) * 28,
                  lost=lost, samples=samples, concealed=lost * 960 + samples * 0.0004,
                  silent=samples * 0.0001, events=lost * 0.6 + dt * 0.02,
                  inserted=samples * 0.0005, removed=samples * 0.0004,
                  jbdelay=samples * delay, jbtarget=samples * delay * 1.05,
                  jbmin=samples * delay * 0.9, emitted=samples, seconds=dt,
                  energy=0.002 * dt, processing=samples * 0.0001)  # fmt: skip
            return nbytes, expected - lost
        video = peer.video(t)
        fps: float = video.fps
        bitrate = video.bitrate
        frozen = conn.finding == "freezes" and conn.troubled(t)
        if conn.finding == "low_fps" and conn.troubled(t):
            # the SFU forwards only the base temporal layer (L1T3): a quarter of the frames
            fps, bitrate = 7.2 + 0.3 * conn.wobble("video", t), bitrate * 0.42
        elif frozen:
            fps = 22 + conn.wobble("video", t)
        nbytes = bitrate / 8 * dt * share * (1 - loss)
        expected = bitrate / 8 * dt * share / _VIDEO_PACKET
        lost = expected * loss
        frames = fps * dt
        freezes = 0.0
        if frozen:  # a freeze in every report: a picture that keeps stopping
            freezes = 1.0
            s.add(freezes=1, frozen=0.6 + 0.2 * abs(conn.wobble("video", t)), pli=1)
        delay = 0.03 + 2 * jitter
        s.add(packets=expected - lost, bytes=nbytes, header=(expected - lost) * 32, lost=lost,
              frames=frames, decoded=frames * 0.998, dropped=frames * 0.002 + freezes * 8,
              key=dt / 60, decode=frames * 0.003, interframe=dt,
              sqinterframe=frames / (fps * fps) + freezes * 0.6, jbdelay=frames * delay,
              jbtarget=frames * delay * 1.05, jbmin=frames * delay * 0.9, emitted=frames,
              nack=lost * 0.9, pli=dt / 60, processing=frames * 0.02)  # fmt: skip
        s.size = (video.width, video.height)
        s.fps = round(fps)
        return nbytes, expected - lost

    def _inbound(
        self, conn: _Conn, peer: _Conn, ts: Any, t: int, s: _Stream, kind: str
    ) -> dict[str, Any]:
        letter = kind[0].upper()
        stat: dict[str, Any] = {
            "id": f"I{_TRANSPORT}{letter}{s.ssrc}", "type": "inbound-rtp", "timestamp": ts,
            "kind": kind, "mediaType": kind, "ssrc": s.ssrc, "mid": s.mid,
            "transportId": _TRANSPORT,
            "codecId": f"CI{_TRANSPORT}{(_AUDIO_CODEC if kind == 'audio' else _VIDEO_CODEC_IN)[0]}",
            "trackIdentifier": f"{peer.connection_id}-{kind}",
            "packetsReceived": s.n("packets"), "bytesReceived": s.n("bytes"),
            "headerBytesReceived": s.n("header"), "packetsLost": s.n("lost"),
            "packetsDiscarded": 0, "jitter": number(round(conn.jitter(t, kind), 6)),
            "jitterBufferDelay": number(round(s.c.get("jbdelay", 0.0), 3)),
            "jitterBufferTargetDelay": number(round(s.c.get("jbtarget", 0.0), 3)),
            "jitterBufferMinimumDelay": number(round(s.c.get("jbmin", 0.0), 3)),
            "jitterBufferEmittedCount": s.n("emitted"),
            "totalProcessingDelay": number(round(s.c.get("processing", 0.0), 6)),
        }  # fmt: skip
        if s.last_packet:
            stat["lastPacketReceivedTimestamp"] = erlang(s.last_packet / 1000)
        if kind == "audio":
            stat.update(
                remoteId=f"RO{_TRANSPORT}A{s.ssrc}",
                totalSamplesReceived=s.n("samples"), concealedSamples=s.n("concealed"),
                silentConcealedSamples=s.n("silent"), concealmentEvents=s.n("events"),
                insertedSamplesForDeceleration=s.n("inserted"),
                removedSamplesForAcceleration=s.n("removed"),
                audioLevel=erlang(0.02 + 0.01 * abs(peer.wobble("level", t))),
                totalAudioEnergy=number(round(s.c.get("energy", 0.0), 6)),
                totalSamplesDuration=number(round(s.c.get("seconds", 0.0), 3)),
                fecPacketsReceived=0, fecPacketsDiscarded=0,
            )  # fmt: skip
            return stat
        width, height = s.size if s.size != (0, 0) else (1280, 720)
        stat.update(
            framesReceived=s.n("frames"), framesDecoded=s.n("decoded"),
            keyFramesDecoded=s.n("key") + 1, framesDropped=s.n("dropped"),
            frameWidth=width, frameHeight=height,
            framesPerSecond=s.fps,
            freezeCount=s.n("freezes"), pauseCount=0,
            totalFreezesDuration=number(round(s.c.get("frozen", 0.0), 3)),
            totalPausesDuration=0,
            totalDecodeTime=number(round(s.c.get("decode", 0.0), 6)),
            totalInterFrameDelay=number(round(s.c.get("interframe", 0.0), 6)),
            totalSquaredInterFrameDelay=number(round(s.c.get("sqinterframe", 0.0), 6)),
            nackCount=s.n("nack"), pliCount=s.n("pli"), firCount=0,
            decoderImplementation="libvpx", powerEfficientDecoder=False,
        )  # fmt: skip
        return stat

    def _remote_outbound(self, ts: Any, t: int, s: _Stream) -> dict[str, Any]:
        """The SFU's sender reports about an audio stream this connection receives."""
        sent = s.n("packets") + s.n("lost")
        return {
            "id": f"RO{_TRANSPORT}A{s.ssrc}", "type": "remote-outbound-rtp", "timestamp": ts,
            "kind": "audio", "ssrc": s.ssrc, "transportId": _TRANSPORT,
            "codecId": f"CI{_TRANSPORT}{_AUDIO_CODEC[0]}",
            "localId": f"I{_TRANSPORT}A{s.ssrc}", "packetsSent": sent,
            "bytesSent": int(s.c.get("bytes", 0.0) + s.c.get("lost", 0.0) * 80),
            "remoteTimestamp": erlang((t - 1_700_000) / 1000),
            "reportsSent": max(int(s.c.get("seconds", 0.0) / 5), 0),
            "roundTripTimeMeasurements": 0, "totalRoundTripTime": 0,
        }  # fmt: skip

    def _ice(
        self, conn: _Conn, pair: _Pair, ts: Any, t: int, epoch: int, rtt: float, video: _Video
    ) -> list[dict[str, Any]]:
        """The selected candidate pair, its two candidates and the transport."""
        state = conn.ice_state(t)
        c = pair.c
        checks = c["checks"] = c.get("checks", 0.0) + 2
        c["rtt"] = c.get("rtt", 0.0) + (2 * rtt if state == "connected" else 0.0)
        if conn.share(t):
            c["lastPacket"] = t
        if video.reason == "bandwidth":
            available = video.bitrate * 1.15 + 40_000
        else:
            available = 2.4e6 * (1 + 0.05 * conn.wobble("video", t))
        last_ms = int(c.get("lastPacket", t) / 1000)
        pair_stat = {
            "id": pair.id, "type": "candidate-pair", "timestamp": ts,
            "transportId": _TRANSPORT, "localCandidateId": pair.local["id"],
            "remoteCandidateId": pair.remote["id"],
            "state": "failed" if state == "failed" else "succeeded",
            "priority": pair.priority, "nominated": True, "writable": state != "failed",
            "packetsSent": int(c.get("packetsSent", 0)),
            "packetsReceived": int(c.get("packetsReceived", 0)),
            "bytesSent": int(c["bytesSent"]), "bytesReceived": int(c["bytesReceived"]),
            "totalRoundTripTime": number(round(c["rtt"], 6)),
            "currentRoundTripTime": number(round(rtt, 3)),
            "requestsReceived": int(checks), "requestsSent": int(checks),
            "responsesReceived": int(checks if state != "failed" else checks - 2),
            "responsesSent": int(checks), "consentRequestsSent": int(checks / 2),
            "packetsDiscardedOnSend": 0, "bytesDiscardedOnSend": 0,
            "lastPacketReceivedTimestamp": last_ms, "lastPacketSentTimestamp": last_ms,
        }  # fmt: skip
        if conn.part.sends:  # a receiver that sends nothing has no estimate
            pair_stat["availableOutgoingBitrate"] = int(available)
        local = {**pair.local, "type": "local-candidate", "timestamp": ts}
        remote = {**pair.remote, "type": "remote-candidate", "timestamp": ts}
        tr = conn.transport
        transport = {
            "id": _TRANSPORT, "type": "transport", "timestamp": ts,
            "bytesSent": int(tr["bytesSent"]), "bytesReceived": int(tr["bytesReceived"]),
            "packetsSent": int(tr.get("packetsSent", 0)),
            "packetsReceived": int(tr.get("packetsReceived", 0)),
            "dtlsState": "connected", "iceState": state, "selectedCandidatePairId": pair.id,
            "selectedCandidatePairChanges": 1 + epoch, "dtlsRole": "client",
            "iceRole": "controlling", "iceLocalUsernameFragment": pair.local["usernameFragment"],
            "tlsVersion": "FEFD", "dtlsCipher": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "srtpCipher": "AEAD_AES_128_GCM",
        }  # fmt: skip
        return [pair_stat, local, remote, transport]

    # -- session_webhook.jsonl and connection.jsonl ------------------------------------------

    def session_webhooks(self) -> list[bytes]:
        lines: list[tuple[int, bytes]] = []
        for channel, session_id in self.sessions.items():
            conns = [c for c in self.conns if c.channel == channel]
            created = min(c.begin for c in conns) - 30_000
            ends = [c.end for c in conns]
            destroyed = None if None in ends else max(e for e in ends if e is not None) + 800_000
            base = {
                "version": VERSION, "node_name": NODE, "session_id": session_id,
                "channel_id": channel, "spotlight": False,
                "created_time": created // _US, "created_timestamp": _time(created),
            }  # fmt: skip

            lines.append((created, self._session_line("session.created", created, base, {})))
            at = created + 60 * _US
            while at <= self.now and (destroyed is None or at < destroyed):
                updated = {
                    "group_id": session_id, **self._counts(conns, at),
                    "connections": [self._entry(c) for c in conns if c.alive(at)],
                }  # fmt: skip
                lines.append((at, self._session_line("session.updated", at, base, updated)))
                at += 60 * _US
            if destroyed is not None:
                ended = {
                    "group_id": session_id, "destroyed_time": destroyed // _US,
                    "destroyed_timestamp": _time(destroyed), **self._counts(conns, destroyed),
                    "connections": [self._entry(c) for c in conns],
                }  # fmt: skip
                lines.append(
                    (destroyed, self._session_line("session.destroyed", destroyed, base, ended))
                )
        lines.sort()
        return [text for _, text in lines]

    def _session_line(
        self, kind: str, at: int, base: dict[str, Any], more: dict[str, Any]
    ) -> bytes:
        req = {"id": sora_id(self.ids), "label": LABEL, "timestamp": _time(at), "type": kind,
               **base, **more}  # fmt: skip
        return orjson.dumps({"id": sora_id(self.ids), "timestamp": _time(at + 40), "req": req})

    def _counts(self, conns: list[_Conn], at: int) -> dict[str, int]:
        joined = [c for c in conns if c.begin <= at]
        most = max((sum(1 for o in joined if o.alive(c.begin)) for c in joined), default=0)
        return {"max_connections": most, "total_connections": len(joined)}

    def _entry(self, conn: _Conn) -> dict[str, Any]:
        return {
            "connection_id": conn.connection_id, "role": conn.part.role,
            "bundle_id": conn.connection_id, "client_id": conn.client_id,
            "audio_codec_type": "OPUS", "video_codec_type": "VP9", "audio": True,
            "video": True, "simulcast": False, "video_bit_rate": 1500,
            "video_vp9_params": {"profile_id": 0},
            "connection_created_timestamp": _time(conn.begin),
            "connection_destroyed_timestamp": None if conn.end is None else _time(conn.end),
        }  # fmt: skip

    def connection_log(self) -> list[bytes]:
        lines: list[tuple[int, bytes]] = []
        for conn in self.conns:
            if conn.end is None:
                continue
            failed = conn.finding == "disconnected"
            line = {
                "id": sora_id(self.ids), "timestamp": _time(conn.end + 2_000), "label": LABEL,
                "version": VERSION, "node_name": NODE, "channel_id": conn.channel,
                "session_id": conn.session_id, "client_id": conn.client_id,
                "bundle_id": conn.connection_id, "connection_id": conn.connection_id,
                "role": conn.part.role, "turn_transport_type": "udp", "simulcast": False,
                "spotlight": False, "multistream": True, "data_channel_signaling": True,
                "ignore_disconnect_websocket": False, "e2ee": False,
                "created_time": conn.begin // _US, "created_timestamp": _time(conn.begin),
                "destroyed_time": conn.end // _US, "destroyed_timestamp": _time(conn.end),
                "destroyed_reason": "abnormal" if failed else "normal",
                "disconnect_api_reason": None, "data_channel_exit_reason": None,
                "signaling_terminate_reason": "abnormal" if failed else "normal",
                "audio": {"codec_type": "OPUS"},
                "video": {"codec_type": "VP9", "bit_rate": 1500, "vp9_params": {"profile_id": 0}},
                "local_stats": {
                    "total_received_bytes": int(conn.transport.get("bytesSent", 0)),
                    "total_sent_bytes": int(conn.transport.get("bytesReceived", 0)),
                },
            }  # fmt: skip
            lines.append((conn.end, orjson.dumps(line)))
        lines.sort()
        return [text for _, text in lines]

    # -- the manifest ----------------------------------------------------------------------

    def manifest(self, files: dict[str, int]) -> dict[str, Any]:
        connections: dict[str, Any] = {}
        for conn in self.conns:
            label = f"{conn.part.client} in {conn.channel.removeprefix('sora-demo-')}"
            if conn.finding:
                label += f": {FINDINGS[conn.finding]}"
            connections[conn.connection_id] = {
                "label": label,
                "channel_id": conn.channel,
                "session_id": conn.session_id,
                "client_id": conn.client_id,
                "created": _time(conn.begin),
                "destroyed": None if conn.end is None else _time(conn.end),
                "expect": [conn.finding] if conn.finding else [],
            }
        return {
            "demo": "sora",
            "seed": self.seed,
            "now": _time(self.now),
            "minutes": self.minutes,
            "report_seconds": REPORT_SECONDS,
            "files": files,
            "channels": dict(self.sessions),
            "connections": connections,
        }
