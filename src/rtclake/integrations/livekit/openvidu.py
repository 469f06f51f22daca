"""The mongodb sink's ``openvidu`` layout: what the openvidu-livekit fork writes into
MongoDB (``openvidu/analytics/mongo.go`` of OpenVidu/openvidu-livekit), so OpenVidu's own
tooling reads what rtclake writes.

- ``events``: each ``livekit_analytics_events`` row, rebuilt as its ``AnalyticsEvent``
  and written as Go's ``encoding/json`` writes the generated struct: snake_case proto
  field names, zero values left out, numbers as numbers, ``google.protobuf.Timestamp`` as
  ``{seconds, nanos}`` (``nanos`` left out when 0), enums as their numbers except those
  openvidu-livekit turns into names, which are then present even at their zero value
  (``type``, ``participant.state``, ``client_info.sdk``, ``egress.status``,
  ``ingress.state.status``, ``track.source``).
- ``stats``: each ``AnalyticsStat``, rebuilt from its ``livekit_stats`` rows (one per
  stream) with its ``streams``; ``kind`` as its name.
- ``_id``: the MD5 (hex) of ``[room.sid:][participant_id:][track_id:]TYPE:tsKey`` for an
  event (``room.sid:`` when the event carries a room; the other parts when not empty) and
  of ``room_id:participant_id:track_id:KIND:node:tsKey`` for a stat (every part, empty or
  not), ``tsKey`` the timestamp's seconds followed by its nanos when there are any (no
  separator): a replayed batch is a duplicate key, which counts as written.
- ``openvidu_expire_at``: the write time plus ``expire_after`` (default 768 h, 32 days)
  with a TTL index, and the indexes openvidu-livekit creates (events: ``type``,
  ``room.sid``, ``participant.sid``, ``timestamp.seconds``; stats: ``room_id``,
  ``participant_id``, ``track_id``, ``kind``, ``time_stamp.seconds``, ``score``;
  ``active_entities``: ``entity``).
- ``active_entities``: ``{_id, entity}`` added on ``ROOM_CREATED`` (the room's sid),
  ``PARTICIPANT_ACTIVE`` (``participant_id``), ``EGRESS_STARTED`` (``egress_id``),
  ``INGRESS_STARTED`` (the ingress state's ``resource_id``), removed on ``ROOM_ENDED``,
  ``PARTICIPANT_LEFT``, ``EGRESS_ENDED``, ``INGRESS_ENDED``.
- ``last_alive``: ``{_id: "server", last_alive: {seconds, nanos}}``, set at each batch.

Differences: numbers keep their type (openvidu-livekit's JSON round trip makes every one
a double), a oneof's members are named by their proto names (Go names them by its struct
fields), and a stream's ``start_time``/``end_time`` carry microseconds (the lake's
precision; the stat's ``time_stamp``, which its ``_id`` is made of, keeps nanoseconds).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import analytics

from rtclake.integrations.livekit.defaults import zero_enum
from rtclake.sinks.base import Batch
from rtclake.sinks.mongodb import Document, Indexes, Layout, MongoSinkConfig
from rtclake.sinks.webhook import records
from rtclake.tables import TableRegistry

EXPIRATION = 768 * 3600.0  # openvidu-livekit's default: 32 days
EVENTS, STATS = "livekit_analytics_events", "livekit_stats"
# enums openvidu-livekit stores by name (the rest by number), as paths of proto names
_NAMED_ENUMS: dict[str, set[tuple[str, ...]]] = {
    "events": {("type",), ("participant", "state"), ("client_info", "sdk"),
               ("egress", "status"), ("ingress", "state", "status"), ("track", "source")},
    "stats": {("kind",)},
}  # fmt: skip
_STARTS = {"ROOM_CREATED": "ROOM", "PARTICIPANT_ACTIVE": "PARTICIPANT",
           "EGRESS_STARTED": "EGRESS", "INGRESS_STARTED": "INGRESS"}  # fmt: skip
_ENDS = {"ROOM_ENDED", "PARTICIPANT_LEFT", "EGRESS_ENDED", "INGRESS_ENDED"}


def go_json(
    message: Message, named: set[tuple[str, ...]], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``message`` as Go's encoding/json writes its generated struct (see the module doc)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():  # set fields only: proto3's omitempty
        here = (*path, field.name)
        items = list(value) if _repeated(field) else [value]
        kind, enum = field.message_type, field.enum_type
        converted: list[Any]
        if kind is not None and kind.GetOptions().map_entry:
            out[field.name] = dict(value)
            continue
        if kind is not None:
            if kind.full_name == "google.protobuf.Timestamp":
                converted = [_timestamp(v) for v in items]
            else:
                converted = [go_json(v, named, here) for v in items]
        elif enum is not None and here in named:
            converted = [enum.values_by_number[v].name for v in items]
        elif field.type == FieldDescriptor.TYPE_BYTES:
            converted = [json_format.MessageToDict(message)[field.json_name]]
        else:
            converted = items
        out[field.name] = converted if _repeated(field) else converted[0]
    # openvidu-livekit sets the enums it names after the JSON round trip: present even
    # at their zero value (ROOM_CREATED, UPSTREAM, JOINING), which omitempty had dropped
    for name in {p[len(path)] for p in named if len(p) == len(path) + 1 and p[:-1] == path}:
        declared = message.DESCRIPTOR.fields_by_name.get(name)
        zero = zero_enum(declared) if declared is not None else None
        if name not in out and zero is not None:
            out[name] = zero
    return out


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _timestamp(ts: Timestamp) -> dict[str, int]:
    out = {}
    if ts.seconds:
        out["seconds"] = ts.seconds
    if ts.nanos:
        out["nanos"] = ts.nanos
    return out


def ts_key(ts: Timestamp) -> str:
    """openvidu-livekit's tsKey: the seconds, then the nanos when there are any."""
    return f"{ts.seconds}{ts.nanos}" if ts.nanos > 0 else f"{ts.seconds}"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def event_id(event: analytics.AnalyticsEvent) -> str:
    parts = ""
    if event.HasField("room"):
        parts += event.room.sid + ":"
    if event.participant_id:
        parts += event.participant_id + ":"
    if event.track_id:
        parts += event.track_id + ":"
    kind = analytics.AnalyticsEventType.Name(event.type)
    return _md5(f"{parts}{kind}:{ts_key(event.timestamp)}")


def stat_id(stat: analytics.AnalyticsStat) -> str:
    kind = analytics.StreamType.Name(stat.kind)
    return _md5(f"{stat.room_id}:{stat.participant_id}:{stat.track_id}:{kind}:{stat.node}:"
                f"{ts_key(stat.time_stamp)}")  # fmt: skip


def event_of(row: dict[str, Any]) -> analytics.AnalyticsEvent:
    """The AnalyticsEvent a livekit_analytics_events row holds (its ``message``)."""
    event = analytics.AnalyticsEvent()
    json_format.ParseDict(row.get("message") or {}, event, ignore_unknown_fields=True)
    return event


_STREAM_FIELDS = ("ssrc", "primary_packets", "primary_bytes", "retransmit_packets",
                  "retransmit_bytes", "padding_packets", "padding_bytes", "packets_lost",
                  "packets_out_of_order", "frames", "rtt", "jitter", "nacks", "plis",
                  "firs")  # fmt: skip
_STAT_KEY = ("stat_id", "analytics_key", "stream_kind", "node", "room_id", "room_name",
             "participant_id", "track_id", "mime", "score", "min_score", "median_score",
             "time")  # fmt: skip


def _set_time(ts: Timestamp, when: Any) -> None:
    if isinstance(when, dt.datetime):
        ts.FromDatetime(when.astimezone(dt.UTC))


def stats_of(
    rows: list[tuple[int, dict[str, Any]]],
) -> Iterator[tuple[list[int], analytics.AnalyticsStat]]:
    """The AnalyticsStat messages livekit_stats rows (one per stream) hold, with the rows
    of each."""
    grouped: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    for index, row in rows:
        grouped.setdefault(tuple(row.get(k) for k in _STAT_KEY), []).append((index, row))
    for members in grouped.values():
        first = members[0][1]
        stat = analytics.AnalyticsStat(
            id=first.get("stat_id") or "", analytics_key=first.get("analytics_key") or "",
            kind=first.get("stream_kind") or "UPSTREAM",
            node=first.get("node") or "", room_id=first.get("room_id") or "",
            room_name=first.get("room_name") or "",
            participant_id=first.get("participant_id") or "",
            track_id=first.get("track_id") or "", mime=first.get("mime") or "",
            score=first.get("score") or 0.0, min_score=first.get("min_score") or 0.0,
            median_score=first.get("median_score") or 0.0,
        )  # fmt: skip
        if first.get("time_stamp"):  # the exact time: the _id is made of its nanoseconds
            stat.time_stamp.FromJsonString(first["time_stamp"])
        else:
            _set_time(stat.time_stamp, first.get("time"))
        for _, row in sorted(members, key=lambda m: m[1].get("stream_index") or 0):
            stream = stat.streams.add(**{f: row.get(f) or 0 for f in _STREAM_FIELDS})
            for layer in row.get("video_layers") or ():
                json_format.ParseDict(layer, stream.video_layers.add(), ignore_unknown_fields=True)
            _set_time(stream.start_time, row.get("start_time"))
            _set_time(stream.end_time, row.get("end_time"))
        yield [index for index, _ in members], stat


def documents(batch: Batch, tables: TableRegistry, config: MongoSinkConfig,
              now: dt.datetime) -> Iterator[Document]:  # fmt: skip
    expire = now + dt.timedelta(seconds=config.expire_after or EXPIRATION)
    if EVENTS in batch.tables:
        for index, row in records(batch, tables, EVENTS):
            event = event_of(row)
            body = {"_id": event_id(event), **go_json(event, _NAMED_ENUMS["events"]),
                    "openvidu_expire_at": expire}  # fmt: skip
            yield Document("events", EVENTS, index, body)
    if STATS in batch.tables:
        for indices, stat in stats_of(list(records(batch, tables, STATS))):
            body = {"_id": stat_id(stat), **go_json(stat, _NAMED_ENUMS["stats"]),
                    "openvidu_expire_at": expire}  # fmt: skip
            yield Document("stats", STATS, indices[0], body)


def indexes(config: MongoSinkConfig, _tables: list[str]) -> Indexes:
    ttl: dict[str, Any] = {"expireAfterSeconds": 0}
    return [
        *(("events", [(key, 1)], {})
          for key in ("type", "room.sid", "participant.sid", "timestamp.seconds")),
        ("events", [("openvidu_expire_at", 1)], ttl),
        *(("stats", [(key, 1)], {}) for key in ("room_id", "participant_id", "track_id", "kind",
                                                  "time_stamp.seconds", "score")),
        ("stats", [("openvidu_expire_at", 1)], ttl),
        ("active_entities", [("entity", 1)], {}),
    ]  # fmt: skip


def entity_changes(batch: Batch, tables: TableRegistry) -> tuple[list[dict[str, str]], list[str]]:
    """The active_entities documents a batch's events add, and the ids it removes."""
    added: list[dict[str, str]] = []
    removed: list[str] = []
    if EVENTS not in batch.tables:
        return added, removed
    for _, row in records(batch, tables, EVENTS):
        event = event_of(row)
        kind = analytics.AnalyticsEventType.Name(event.type)
        ids = {"ROOM": event.room.sid or event.room_id, "PARTICIPANT": event.participant_id,
               "EGRESS": event.egress_id, "INGRESS": event.ingress.state.resource_id}  # fmt: skip
        if kind in _STARTS and ids[_STARTS[kind]]:
            added.append({"_id": ids[_STARTS[kind]], "entity": _STARTS[kind]})
        elif kind in _ENDS:
            entity = {"ROOM_ENDED": "ROOM", "PARTICIPANT_LEFT": "PARTICIPANT",
                      "EGRESS_ENDED": "EGRESS", "INGRESS_ENDED": "INGRESS"}[kind]  # fmt: skip
            target = event.room_id if entity == "ROOM" else ids[entity]
            if target:
                removed.append(target)
    return added, removed


def after(database: Any, batch: Batch, tables: TableRegistry, now: dt.datetime) -> None:
    """Once the batch's documents are in: active_entities and last_alive."""
    from rtclake.sinks.mongodb import insert_once

    added, removed = entity_changes(batch, tables)
    if added:
        insert_once(database["active_entities"],
                    [Document("active_entities", EVENTS, 0, body) for body in added])  # fmt: skip
    if removed:
        database["active_entities"].delete_many({"_id": {"$in": removed}})
    alive = Timestamp()
    alive.FromDatetime(now)
    database["last_alive"].update_one(
        {"_id": "server"},
        {"$set": {"last_alive": {"seconds": alive.seconds, "nanos": alive.nanos}}},
        upsert=True,
    )  # fmt: skip


def layout() -> Layout:
    """The ``openvidu`` layout (registered by the LiveKit integration)."""
    return Layout(tables=lambda _tables: [EVENTS, STATS], documents=documents,
                  indexes=indexes, after=after)  # fmt: skip
