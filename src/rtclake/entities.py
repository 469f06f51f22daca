"""Which rooms, sessions, participants, connections, tracks, egresses and ingresses are
live now: the ``entity_tracker`` processor.

It watches the start and end events that the SFUs send, whichever way they arrive, and
keeps a table of what has started and not ended. The events it reads:

- LiveKit's webhooks (``livekit_events``): ``room_started``/``room_finished``,
  ``participant_joined``/``participant_left``/``participant_connection_aborted``,
  ``track_published``/``track_unpublished``, ``egress_started``/``egress_updated``/
  ``egress_ended``, ``ingress_started``/``ingress_ended``.
- LiveKit's analytics events (``livekit_analytics_events``): ``ROOM_CREATED``/
  ``ROOM_ENDED``, ``PARTICIPANT_JOINED``/``PARTICIPANT_ACTIVE``/``PARTICIPANT_LEFT``/
  ``PARTICIPANT_CONNECTION_ABORTED``, ``TRACK_PUBLISHED``/``TRACK_UNPUBLISHED``,
  ``EGRESS_STARTED``/``EGRESS_ENDED``, ``INGRESS_STARTED``/``INGRESS_ENDED``.
- Sora's session webhooks and log (``sessions``): ``session.created``,
  ``session.updated`` (a heartbeat: the session is alive), ``session.destroyed``.
- Sora's event webhooks and logs (``sora_events``): ``connection.created``,
  ``connection.updated``, ``connection.destroyed``; and the connection log
  (``connections``), whose line tells both ends of a connection.

An entity ends with its parent, at the parent's end, if it was not seen alive after it:
what a room had (its participants, their tracks, the egresses and ingresses of that room)
ends when the room ends, a participant's tracks when the participant leaves, and a Sora
session's connections when the session is destroyed (Sora destroys a session once its
last connection is gone: a connection still open then lost its end event).

It runs at the store stage, on the writer's thread, so it sees every record that is
stored, from every source, and leaves the records as they are. A replayed batch is
applied again without effect: an event older than what the tracker knows of its entity
changes nothing, and neither does a start or a sign of life no later than its parent's
end. An ended entity is forgotten once it ended more than a day before the newest live
entity's last sign of life (or before now, if that is ahead); the newest end forgotten is
kept, and a start or a sign of life of an entity not known that is no later than it
changes nothing: it may be a late event of one forgotten, and anything that old is
history, not live. So a late event never brings back what ended, within bounded memory.
The state is written to ``DATA_DIR/entities.json`` after each batch that changed it,
atomically, and read at start: it survives a restart.

``GET /api/entities`` (``web/entities.py``) lists what is live.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import structlog

from rtclake.durable import write_atomic
from rtclake.processors.base import Context, Processor, Record
from rtclake.tables import TableRegistry

log = structlog.get_logger(__name__)

STATE_FILE = "entities.json"
FORGET_ENDED_S = 86_400.0  # how long an ended entity is remembered by itself


@dataclass
class Entity:
    """One thing that starts and ends."""

    kind: str  # room, participant, track, egress, ingress, session, connection
    id: str
    source: str  # livekit or sora
    parent: str | None = None  # the room (participant, track, egress) or session
    name: str | None = None  # a room's or channel's name, a participant's identity
    started: float | None = None  # epoch seconds of its start event
    last_seen: float | None = None  # the latest event that says it is alive
    ended: float | None = None  # when its end event says it ended
    info: dict[str, Any] = field(default_factory=dict)  # what an end event would need
    gone_since: float | None = None  # the reconciler found it gone then (round one)

    @property
    def key(self) -> str:
        return f"{self.source}:{self.kind}:{self.id}"

    @property
    def live(self) -> bool:
        return self.ended is None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("started", "last_seen", "ended"):
            if out[name] is not None:
                out[name] = _iso(out[name])
        return out


@dataclass(frozen=True)
class Change:
    """What one event says of one entity."""

    what: str  # start, alive or end
    entity: Entity
    at: float


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def _seconds(value: Any) -> float | None:
    """A record's time: RFC 3339 text, or a number of seconds/milliseconds/microseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        while number > 1e11:  # ms, µs or ns
            number /= 1000
        return number
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _seconds(int(text))
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _dig(record: Record, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(record: Record, *paths: str) -> str | None:
    for path in paths:
        value = _dig(record, path)
        if isinstance(value, str) and value:
            return value
    return None


# -- LiveKit --------------------------------------------------------------------------------

_LK_WEBHOOK = {
    "room_started": ("start", "room"), "room_finished": ("end", "room"),
    "participant_joined": ("start", "participant"), "participant_left": ("end", "participant"),
    "participant_connection_aborted": ("end", "participant"),
    "track_published": ("start", "track"), "track_unpublished": ("end", "track"),
    "egress_started": ("start", "egress"), "egress_updated": ("alive", "egress"),
    "egress_ended": ("end", "egress"),
    "ingress_started": ("start", "ingress"), "ingress_ended": ("end", "ingress"),
}  # fmt: skip
_LK_ANALYTICS = {
    "ROOM_CREATED": ("start", "room"), "ROOM_ENDED": ("end", "room"),
    "PARTICIPANT_JOINED": ("start", "participant"), "PARTICIPANT_ACTIVE": ("start", "participant"),
    "PARTICIPANT_LEFT": ("end", "participant"),
    "PARTICIPANT_CONNECTION_ABORTED": ("end", "participant"),
    "TRACK_PUBLISHED": ("start", "track"), "TRACK_UNPUBLISHED": ("end", "track"),
    "EGRESS_STARTED": ("start", "egress"), "EGRESS_ENDED": ("end", "egress"),
    "INGRESS_STARTED": ("start", "ingress"), "INGRESS_ENDED": ("end", "ingress"),
}  # fmt: skip


def _livekit(record: Record, what: str, kind: str, at: float) -> Iterator[Change]:
    # an ingress's room is in its state (IngressInfo.state.room_id)
    room = _text(record, "room.sid", "roomId", "egressInfo.roomId", "ingressInfo.roomId",
                 "ingressInfo.state.roomId")  # fmt: skip
    room_name = _text(record, "room.name", "egressInfo.roomName", "ingressInfo.roomName")
    participant = _text(record, "participant.sid", "participantId")
    if kind == "room" and room:
        entity = Entity("room", room, "livekit", name=room_name, info={"room_name": room_name})
    elif kind == "participant" and participant:
        identity = _text(record, "participant.identity")
        info = {"room_sid": room, "room_name": room_name, "identity": identity}
        entity = Entity("participant", participant, "livekit", parent=room, name=identity,
                        info=info)  # fmt: skip
    elif kind == "track":
        track = _text(record, "track.sid", "trackId")
        if not track:
            return
        entity = Entity("track", track, "livekit", parent=participant,
                        info={"room_sid": room, "participant_sid": participant})  # fmt: skip
    elif kind == "egress":
        egress = _text(record, "egressInfo.egressId", "egressId", "egress.egressId")
        if not egress:
            return
        entity = Entity("egress", egress, "livekit", parent=room, info={"room_sid": room})
    elif kind == "ingress":
        ingress = _text(record, "ingressInfo.ingressId", "ingressId", "ingress.ingressId")
        if not ingress:
            return
        entity = Entity("ingress", ingress, "livekit", parent=room, info={"room_sid": room})
    else:
        return
    yield Change(what, entity, at)
    # what it belongs to was alive then (a participant's room, whatever it says; the
    # participant and the room of a track, an egress or an ingress, but for an end, which
    # may come after the room's): the reconciler closes a room or a participant at its
    # last sign of life, and what was seen alive after that would not end with it
    if kind == "track" and what != "end" and participant:
        identity = _text(record, "participant.identity")
        info = {"room_sid": room, "room_name": room_name, "identity": identity}
        yield Change("alive", Entity("participant", participant, "livekit", parent=room,
                                     name=identity, info=info), at)  # fmt: skip
    if room and (kind == "participant" or (kind != "room" and what != "end")):
        yield Change("alive", Entity("room", room, "livekit", name=room_name,
                                     info={"room_name": room_name}), at)  # fmt: skip


def livekit_webhook(record: Record) -> Iterator[Change]:
    rule = _LK_WEBHOOK.get(str(record.get("event")))
    at = _seconds(record.get("time"))
    if rule is not None and at is not None:
        yield from _livekit(record, *rule, at)


def livekit_analytics(record: Record) -> Iterator[Change]:
    message = record.get("message") if isinstance(record.get("message"), dict) else record
    assert isinstance(message, dict)
    rule = _LK_ANALYTICS.get(str(message.get("type")))
    at = _seconds(record.get("time") or message.get("timestamp"))
    if rule is not None and at is not None:
        yield from _livekit(message, *rule, at)


# -- Sora -----------------------------------------------------------------------------------

_SORA_SESSION = {"session.created": "start", "session.updated": "alive",
                 "session.destroyed": "end"}  # fmt: skip
_SORA_CONNECTION = {"connection.created": "start", "connection.updated": "alive",
                    "connection.destroyed": "end"}  # fmt: skip


def _req(record: Record) -> Record:
    req = record.get("req")
    return req if isinstance(req, dict) else record


def sora_session(record: Record) -> Iterator[Change]:
    req = _req(record)
    what = _SORA_SESSION.get(str(req.get("type")))
    session = _text(req, "session_id")
    at = _seconds(record.get("timestamp") or req.get("timestamp"))
    if what and session and at is not None:
        channel = _text(req, "channel_id")
        yield Change(what, Entity("session", session, "sora", name=channel,
                                  info={"channel_id": channel}), at)  # fmt: skip


def sora_event(record: Record) -> Iterator[Change]:
    req = _req(record)
    what = _SORA_CONNECTION.get(str(req.get("type") or record.get("operation")))
    connection = _text(req, "connection_id")
    at = _seconds(record.get("timestamp") or req.get("timestamp"))
    if what and connection and at is not None:
        session, channel = _text(req, "session_id"), _text(req, "channel_id")
        entity = Entity("connection", connection, "sora", parent=session,
                        name=_text(req, "client_id"),
                        info={"session_id": session, "channel_id": channel})  # fmt: skip
        yield Change(what, entity, at)
        if what != "end" and session:
            yield Change("alive", Entity("session", session, "sora", name=channel,
                                         info={"channel_id": channel}), at)  # fmt: skip


def sora_connection_log(record: Record) -> Iterator[Change]:
    """A line of connection.jsonl: written when a connection ends, with both ends."""
    connection = _text(record, "connection_id")
    if not connection:
        return
    session, channel = _text(record, "session_id"), _text(record, "channel_id")
    entity = Entity("connection", connection, "sora", parent=session,
                    name=_text(record, "client_id"),
                    info={"session_id": session, "channel_id": channel})  # fmt: skip
    created = _seconds(record.get("created_timestamp") or record.get("created_time"))
    destroyed = _seconds(record.get("destroyed_timestamp") or record.get("destroyed_time"))
    if created is not None:
        yield Change("start", entity, created)
    if destroyed is not None:
        yield Change("end", entity, destroyed)


def _parent_keys(entity: Entity) -> list[str]:
    """The keys of the entities whose end ends ``entity``: the room of a participant, of
    an egress or of an ingress; the participant and the room of a track (a track ends
    with its room even when its participant's events were lost); a connection's session."""
    keys = []
    if entity.source == "livekit":
        if entity.kind in ("participant", "egress", "ingress") and entity.parent:
            keys.append(f"livekit:room:{entity.parent}")
        elif entity.kind == "track":
            if entity.parent:
                keys.append(f"livekit:participant:{entity.parent}")
            if entity.info.get("room_sid"):
                keys.append(f"livekit:room:{entity.info['room_sid']}")
    elif entity.kind == "connection" and entity.parent:
        keys.append(f"sora:session:{entity.parent}")
    return keys


RULES: dict[str, Callable[[Record], Iterable[Change]]] = {
    "livekit_events": livekit_webhook,
    "livekit_analytics_events": livekit_analytics,
    "sessions": sora_session,
    "sora_events": sora_event,
    "connections": sora_connection_log,
}
"""The tables the tracker reads, and what a record of each says."""


class Entities:
    """The tracker's state: every entity known, live or recently ended, and the newest
    end forgotten."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._all: dict[str, Entity] = {}
        self._children: dict[str, set[str]] = {}  # a parent's key: its children's keys
        self._forgotten_until: float | None = None  # the newest end of what was forgotten
        if path is not None and path.exists():
            try:
                state = orjson.loads(path.read_bytes())
                for raw in state.get("entities", []):
                    self._add(Entity(**raw))
                forgotten = state.get("forgotten_until")
                if isinstance(forgotten, int | float) and not isinstance(forgotten, bool):
                    self._forgotten_until = float(forgotten)
            except (OSError, orjson.JSONDecodeError, TypeError) as exc:
                log.error("entities: state unreadable; starting empty", path=str(path),
                          error=str(exc))  # fmt: skip
        # a state saved before children ended with their parents may hold live children
        # of what has ended: they end now as they would have then
        for entity in sorted((e for e in self._all.values() if e.ended is not None),
                             key=lambda e: e.ended or 0):  # fmt: skip
            self._end_children(entity)

    def _add(self, entity: Entity) -> None:
        self._all[entity.key] = entity
        for parent in _parent_keys(entity):
            self._children.setdefault(parent, set()).add(entity.key)

    def _remove(self, entity: Entity) -> None:
        del self._all[entity.key]
        self._unlink(entity.key, _parent_keys(entity))

    def _unlink(self, key: str, parents: Iterable[str]) -> None:
        for parent in parents:
            children = self._children.get(parent)
            if children is not None:
                children.discard(key)
                if not children:
                    del self._children[parent]

    def _end_children(self, parent: Entity) -> None:
        """End, at ``parent``'s end, its live children (and theirs) last seen no later than
        it: a child seen alive after its parent's end had a life of its own."""
        ended = parent.ended
        assert ended is not None
        for key in list(self._children.get(parent.key, ())):
            child = self._all.get(key)
            if child is not None and child.live and (child.last_seen or 0) <= ended:
                child.ended = ended
                self._end_children(child)

    def _outlived(self, change: Change, known: Entity | None) -> bool:
        """Whether ``change`` (a start or a sign of life) comes no later than the end of
        its entity's parent, or, for an entity not known, than the newest end forgotten: a
        late event of what ended (with its parent, or itself and then forgotten), to be
        left out."""
        forgotten = self._forgotten_until
        if known is None and forgotten is not None and change.at <= forgotten:
            return True
        parents = set(_parent_keys(change.entity))
        if known is not None:
            parents.update(_parent_keys(known))
        for key in parents:
            parent = self._all.get(key)
            if parent is not None and parent.ended is not None and change.at <= parent.ended:
                return True
        return False

    def apply(self, change: Change) -> bool:
        """Apply one change; True if the state changed."""
        with self._lock:
            known = self._all.get(change.entity.key)
            if change.what != "end" and self._outlived(change, known):
                return False
            if known is None:
                if change.what == "end":
                    entity = change.entity
                    entity.started, entity.ended, entity.last_seen = None, change.at, change.at
                    self._add(entity)  # remembered against a late start
                    self._end_children(entity)  # children known before it
                    return True
                entity = change.entity
                entity.started = change.at if change.what == "start" else None
                entity.last_seen = change.at
                self._add(entity)
                return True
            changed = False
            if known.ended is not None:
                if change.what != "start" or change.at <= known.ended:
                    return False  # a late event of what ended (only a new start reopens)
                known.ended, known.started, changed = None, change.at, True  # started again
            if change.what == "end":
                known.ended, known.last_seen = change.at, max(known.last_seen or 0, change.at)
                self._end_children(known)
                return True
            if known.last_seen is None or change.at > known.last_seen:
                known.last_seen, known.gone_since, changed = change.at, None, True
            if change.what == "start" and (known.started is None or change.at < known.started):
                known.started, changed = change.at, True
            parents = _parent_keys(known)
            for name, value in change.entity.info.items():
                if value is not None and known.info.get(name) != value:
                    known.info[name], changed = value, True
            if _parent_keys(known) != parents:  # a track's room may be told late
                self._unlink(known.key, parents)
                self._add(known)
            if change.entity.name and known.name != change.entity.name:
                known.name, changed = change.entity.name, True
            return changed

    def forget_ended(self, now: float) -> bool:
        """Forget what ended more than a day before ``now``, keeping the newest end
        forgotten: a late event of a forgotten entity is no later than it."""
        with self._lock:
            old = [
                e
                for e in self._all.values()
                if e.ended is not None and e.ended < now - FORGET_ENDED_S
            ]
            for entity in old:
                self._remove(entity)
                forgotten = self._forgotten_until
                if entity.ended is not None and (forgotten is None or entity.ended > forgotten):
                    self._forgotten_until = entity.ended
            return bool(old)

    def mark_gone(self, keys: set[str], now: float) -> tuple[list[Entity], bool]:
        """The reconciler's two rounds: the live entities of ``keys`` found gone in an
        earlier round too (to close now), and whether the state changed. An entity not
        in ``keys`` is no longer suspected; one seen for the first time is suspected."""
        with self._lock:
            confirmed: list[Entity] = []
            changed = False
            for entity in self._all.values():
                if not entity.live:
                    continue
                if entity.key not in keys:
                    if entity.gone_since is not None:
                        entity.gone_since, changed = None, True
                    continue
                if entity.gone_since is None:
                    entity.gone_since, changed = now, True
                else:
                    confirmed.append(entity)
            return confirmed, changed

    def live(self) -> list[Entity]:
        with self._lock:
            return sorted((e for e in self._all.values() if e.live),
                          key=lambda e: (e.source, e.kind, e.started or 0, e.id))  # fmt: skip

    def get(self, key: str) -> Entity | None:
        with self._lock:
            return self._all.get(key)

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = orjson.dumps({"entities": [asdict(e) for e in self._all.values()],
                                 "forgotten_until": self._forgotten_until})  # fmt: skip
        try:
            write_atomic(self.path, data)
        except OSError as exc:  # the next batch writes it again
            log.error("entities: cannot save state", path=str(self.path), error=str(exc))


@dataclass(frozen=True)
class Reconcile:
    """Where the truth is: LiveKit's RoomService (``livekit_url`` and a key), and how long
    a Sora session may go without a ``session.updated`` heartbeat."""

    interval: float = 60.0
    livekit_url: str | None = None
    livekit_key: str | None = None
    livekit_secret: str | None = None
    sora_session_timeout: float | None = None
    timeout: float = 10.0


class EntityTracker(Processor):
    """The ``entity_tracker`` processor (see the module doc)."""

    stage = "store"
    tables = frozenset(RULES)

    def __init__(
        self, state_path: Path | None, reconcile: Reconcile | None = None,
        tables: TableRegistry | None = None,
    ) -> None:  # fmt: skip
        self.entities = Entities(state_path)
        self.table_registry = tables
        self.reconcile_settings = reconcile or Reconcile()
        self.loop: asyncio.AbstractEventLoop | None = None

    def process(self, records: list[Record], ctx: Context) -> None:
        rule = RULES.get(ctx.table)
        if rule is None:
            return None
        changed = False
        for record in records:
            for change in rule(record):
                changed |= self.entities.apply(change)
        if changed:
            # never later than now: an event stamped in the future (an SFU's clock ahead)
            # would make it forget ends a late event must still meet
            latest = max((e.last_seen or 0 for e in self.entities.live()), default=0.0)
            self.entities.forget_ended(min(latest, time.time()))
            self.entities.save()
        return None

    # -- the reconciler ------------------------------------------------------------------

    def background(self, intake: Any) -> Coroutine[Any, Any, None] | None:
        self.loop = asyncio.get_running_loop()
        self.intake = intake
        settings = self.reconcile_settings
        if settings.livekit_url is None and settings.sora_session_timeout is None:
            return None
        return self._forever()

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_settings.interval)
            try:
                await self.reconcile()
            except Exception as exc:  # the next round tries again
                log.error("entities: reconcile failed", error=f"{type(exc).__name__}: {exc}")

    async def reconcile(self, now: float | None = None) -> list[Entity]:
        """One round: ask what really exists, suspect what is gone, and close with a
        synthetic end event what was already suspected in the previous round and got no
        real end event since. Returns the entities closed."""
        now = time.time() if now is None else now
        gone = await self._gone(now)
        confirmed, changed = self.entities.mark_gone(gone, now)
        closed = []
        for entity in confirmed:
            await self._close(entity)
            self.entities.apply(Change("end", Entity(entity.kind, entity.id, entity.source),
                                       entity.last_seen or now))  # fmt: skip
            closed.append(entity)
        if changed or closed:
            self.entities.save()
        return closed

    async def _gone(self, now: float) -> set[str]:
        settings = self.reconcile_settings
        live = self.entities.live()
        gone: set[str] = set()
        if settings.sora_session_timeout is not None:
            cutoff = now - settings.sora_session_timeout
            stale = {e.id for e in live if e.source == "sora" and e.kind == "session"
                     and (e.last_seen or 0) < cutoff}  # fmt: skip
            gone |= {e.key for e in live if e.source == "sora" and (
                (e.kind == "session" and e.id in stale)
                or (e.kind == "connection" and e.parent in stale))}  # fmt: skip
        if settings.livekit_url is not None:
            gone |= await self._livekit_gone(live)
        return gone

    async def _livekit_gone(self, live: list[Entity]) -> set[str]:
        settings = self.reconcile_settings
        rooms = {e.id: e for e in live if e.source == "livekit" and e.kind == "room"}
        participants = [e for e in live if e.source == "livekit" and e.kind == "participant"]
        if not rooms and not participants:
            return set()
        async with httpx.AsyncClient(base_url=str(settings.livekit_url),
                                     timeout=settings.timeout) as client:  # fmt: skip
            listed = await self._twirp(client, "ListRooms", {}, room_list=True)
            existing = {r.get("sid"): r.get("name") for r in listed.get("rooms") or ()}
            gone = {rooms[sid].key for sid in rooms if sid not in existing}
            by_room: dict[str, set[str]] = {}
            for sid, name in existing.items():
                if any(p.parent == sid for p in participants):
                    answer = await self._twirp(client, "ListParticipants", {"room": name},
                                               room=name)  # fmt: skip
                    by_room[sid] = {p.get("sid") for p in answer.get("participants") or ()}
        for participant in participants:
            if participant.parent not in existing or participant.id not in by_room.get(
                    participant.parent or "", set()):  # fmt: skip
                gone.add(participant.key)
        return gone

    async def _twirp(
        self, client: httpx.AsyncClient, method: str, body: dict[str, Any], *,
        room_list: bool = False, room: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One RoomService call, with a token of the configured key (LiveKit's video grant)."""
        settings = self.reconcile_settings
        now = int(time.time())
        grant: dict[str, Any] = (
            {"roomList": True} if room_list else {"roomAdmin": True, "room": room}
        )
        claims = {"iss": settings.livekit_key, "nbf": now - 5, "exp": now + 600, "video": grant}
        token = jwt.encode(claims, settings.livekit_secret or "", algorithm="HS256")
        answer = await client.post(f"/twirp/livekit.RoomService/{method}", json=body,
                                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        answer.raise_for_status()
        return dict(answer.json())

    async def _close(self, entity: Entity) -> None:
        """Write the synthetic end event of ``entity`` through the intake: stamped with
        the last time it was known alive, marked synthetic, its id made of the entity and
        that time (so a crash before the state is saved writes the same event again,
        which is stored once)."""
        from rtclake.sources.base import Records

        at = entity.last_seen or time.time()
        event_id = "SYN_" + hashlib.md5(f"{entity.key}:{at}".encode(),
                                        usedforsecurity=False).hexdigest()[:20]  # fmt: skip
        if entity.source == "livekit":
            room = {"sid": entity.parent if entity.kind != "room" else entity.id,
                    "name": entity.info.get("room_name")}  # fmt: skip
            line: dict[str, Any] = {"time": _iso(at), "event": {"room": "room_finished",
                                    "participant": "participant_left"}.get(entity.kind, ""),
                                    "id": event_id, "synthetic": True, "room": room}  # fmt: skip
            if entity.kind == "participant":
                line["participant"] = {"sid": entity.id, "identity": entity.info.get("identity")}
            table = "livekit_events"
        elif entity.kind == "session":
            line = {"timestamp": _iso(at), "req": {"type": "session.destroyed",
                    "id": event_id, "session_id": entity.id, "synthetic": True,
                    "channel_id": entity.info.get("channel_id")}}  # fmt: skip
            table = "sessions"
        else:
            line = {"timestamp": _iso(at), "req": {
                "type": "connection.destroyed", "id": event_id, "connection_id": entity.id,
                "synthetic": True, "session_id": entity.parent,
                "channel_id": entity.info.get("channel_id")}}  # fmt: skip
            table = "sora_events"
        if not line.get("event", True):
            return  # tracks, egresses, ingresses: closed in the state only
        tables = self.table_registry or self.intake.tables
        assert tables is not None
        body = orjson.dumps(line)
        extra = [0] if tables[table].sparse_extra else None
        await self.intake.take(self.name, "reconciler", tables[table], Records(body, 1, extra),
                               idem=event_id)  # fmt: skip
        log.info("entities: closed a stale entity with a synthetic end event",
                 entity=entity.key, last_seen=_iso(at), event_id=event_id)  # fmt: skip
