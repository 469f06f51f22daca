"""Messages: what the message sources (MQTT, WebSocket, Kraken's gRPC) receive, as records,
and the replies they send back.

A message is a payload of bytes and what its transport says of it: the MQTT topic, a
content type, Kraken's collector name and metadata. :func:`message_line` makes it one
record (one JSON line for the intake):

- a payload that is a JSON object (and whose content type, if given, is JSON) is the
  record: its keys as sent, so its ``time``, ``device_id`` and the rest are typed as any
  HTTP record's;
- any other payload (binary, text, a JSON array or scalar) is kept as sent, as bytes:
  ``_payload_base64`` in the spool, the ``payload`` column (``BLOB``) in the lake;
- what the transport said goes under reserved keys, which the ``telemetry`` table (and
  any table that declares them) stores in columns: ``_topic`` -> ``topic``,
  ``_content_type`` -> ``content_type``, ``_collector`` -> ``collector``, ``_metadata`` ->
  ``metadata`` (JSON). A payload's own key of the same name is replaced.

:class:`Reply` is what a broker answered (see :mod:`rtclake.brokers`), in the form every
transport can send: bytes and their content type.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

TOPIC = "_topic"
CONTENT_TYPE = "_content_type"
COLLECTOR = "_collector"
METADATA = "_metadata"
PAYLOAD = "_payload_base64"
RESERVED = (TOPIC, CONTENT_TYPE, COLLECTOR, METADATA, PAYLOAD)

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
# A text reply's: Kraken's WebSocket collector sends a reply of exactly "text/plain" (or
# "application/json", "text/html") to its client as a text frame, anything else as binary.
PLAIN_TYPE = "text/plain"
BYTES_TYPE = "application/octet-stream"

_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


def is_json(content_type: str | None) -> bool:
    """Whether ``content_type`` names JSON (``application/json``, ``…+json``,
    ``text/json``), parameters ignored; None or empty: unknown, so the payload decides."""
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime in ("application/json", "text/json") or mime.endswith("+json")


def json_object(payload: bytes) -> dict[str, msgspec.Raw] | None:
    """The top-level keys of ``payload`` if it is one JSON object in UTF-8, else None
    (then the payload is kept as bytes)."""
    if payload.lstrip()[:1] != b"{":
        return None
    try:
        payload.decode("utf-8")  # msgspec passes invalid UTF-8 inside strings through
        return _decode_object(payload)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None


def message_record(
    payload: bytes,
    *,
    content_type: str | None = None,
    topic: str | None = None,
    metadata: dict[str, Any] | None = None,
    collector: str | None = None,
) -> dict[str, Any]:
    """The record of one message (see the module's description); values of its own keys
    stay raw JSON text."""
    keys = json_object(payload) if is_json(content_type) else None
    record: dict[str, Any]
    if keys is None:
        record = {PAYLOAD: base64.b64encode(payload).decode("ascii")}
    else:
        record = {k: v for k, v in keys.items() if k not in RESERVED}
    for key, value in (
        (TOPIC, topic),
        (CONTENT_TYPE, content_type or None),
        (COLLECTOR, collector or None),
        (METADATA, metadata or None),
    ):
        if value is not None:
            record[key] = value
    return record


def message_line(
    payload: bytes,
    *,
    content_type: str | None = None,
    topic: str | None = None,
    metadata: dict[str, Any] | None = None,
    collector: str | None = None,
) -> bytes:
    """One message as one JSON line for :meth:`rtclake.intake.Intake.validate`."""
    record = message_record(
        payload, content_type=content_type, topic=topic, metadata=metadata, collector=collector
    )
    line = _encode(record)
    # A pretty-printed payload's values keep their line breaks as raw JSON: a spooled
    # record is one line, so the line is compacted (strings are left as they are).
    return msgspec.json.format(line, indent=-1) if b"\n" in line or b"\r" in line else line


def payload_of(record: dict[str, Any]) -> bytes:
    """The payload a record was made of: the bytes kept as sent, or the record's own keys
    (reserved ones left out) as JSON."""
    kept = record.get(PAYLOAD)
    if isinstance(kept, str):
        return base64.b64decode(kept)
    return _encode({k: v for k, v in record.items() if k not in RESERVED})


@dataclass(frozen=True)
class Reply:
    """A broker's answer, as bytes with their content type (and, for Kraken's gRPC reply,
    metadata). Built from whatever a broker returns by :meth:`of`."""

    payload: bytes
    content_type: str = JSON_TYPE
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> Reply:
        """A :class:`Reply` as is; bytes as ``application/octet-stream``; text as
        ``text/plain``; anything else JSON-serialisable as JSON (raises TypeError)."""
        if isinstance(value, Reply):
            if not (
                isinstance(value.payload, bytes)
                and isinstance(value.content_type, str)
                and isinstance(value.metadata, dict)
            ):
                raise TypeError("a Reply holds payload bytes, a content_type str, a metadata dict")
            orjson.dumps(value.metadata, default=str)  # sendable (raises TypeError)
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(bytes(value), BYTES_TYPE)
        if isinstance(value, str):
            return cls(value.encode(), PLAIN_TYPE)
        return cls(orjson.dumps(value))

    def json_value(self) -> Any:
        """The reply as a JSON value, for answers that are JSON (HTTP ingest's
        ``"reply"``, a WebSocket text frame): JSON as its value, text as a string, other
        bytes as ``{"base64": ..., "content_type": ...}``."""
        if is_json(self.content_type):
            try:
                return orjson.loads(self.payload)
            except orjson.JSONDecodeError:
                pass
        if self.content_type.startswith("text/"):
            try:
                return self.payload.decode()
            except UnicodeDecodeError:
                pass
        return {
            "base64": base64.b64encode(self.payload).decode("ascii"),
            "content_type": self.content_type,
        }
