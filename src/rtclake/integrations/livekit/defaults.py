"""The zero values protojson leaves out, put back where the lake reads them.

protojson (LiveKit's webhooks, ``MessageToDict``) omits a proto3 field without presence
at its default value. For an enum that default is a real value with a name:
``ROOM_CREATED``, track type ``AUDIO``, ``UPSTREAM``, participant state ``JOINING``,
``EGRESS_STARTING``. Left out, each is a NULL typed column and an event the entity
tracker cannot read. So every such enum that is absent gets its zero value's name,
in the message and in each message set in it, as the classes of ``livekit-protocol``
declare them. A number is put back only where a typed number column reads it
(``room.numParticipants``: a room of no one is 0, not unknown), so that ``extra`` does
not fill with zeros nobody asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from rtclake.tables import Table

if TYPE_CHECKING:  # a message's DESCRIPTOR is the C (upb) one or the Python one
    from google._upb import _message as upb

MessageType: TypeAlias = "Descriptor | upb.Descriptor"
Field: TypeAlias = "FieldDescriptor | upb.FieldDescriptor"
Path = tuple[str, ...]
_INTEGERS = {FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32}
_LONGS = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}  # strings in protojson
_FLOATS = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE}


def zero_enum(field: Field) -> str | None:
    """The name of the zero value of an enum field that protojson omits at it (singular,
    without presence: neither ``optional`` nor in a oneof); None for any other field."""
    if field.enum_type is None or field.is_repeated or field.has_presence:
        return None
    return str(field.enum_type.values_by_number[0].name)


def _zero_number(field: Field) -> int | float | str | None:
    """A number field's default as protojson writes it (int64 as a string), when protojson
    omits it at that default; None for any other field."""
    if field.is_repeated or field.has_presence:
        return None
    if field.cpp_type in _INTEGERS:
        return 0
    if field.cpp_type in _LONGS:
        return "0"
    if field.cpp_type in _FLOATS:
        return 0.0
    return None


def _nested(field: Field) -> MessageType | None:
    """The message type to look into, or None for a scalar, a map or a well-known type
    (whose protojson is not an object of its fields)."""
    kind = field.message_type
    if kind is None or kind.GetOptions().map_entry:
        return None
    if kind.full_name.startswith("google.protobuf."):
        return None
    return kind


def number_paths(descriptor: MessageType, table: Table) -> frozenset[Path]:
    """The paths (protojson names) that ``table``'s int and float columns read from a
    ``descriptor`` message and that name a number protojson omits at 0."""
    found: set[Path] = set()
    for column in table.columns:
        if column.kind not in ("int", "float"):
            continue
        for key in column.keys:
            parts, here = key.split("."), descriptor
            names: Path = ()
            for depth, part in enumerate(parts):
                field = _field(here, part)
                if field is None:
                    break
                names = (*names, field.json_name)
                if depth == len(parts) - 1:
                    if _zero_number(field) is not None:
                        found.add(names)
                    break
                nested = _nested(field)
                if nested is None or field.is_repeated:
                    break
                here = nested
    return frozenset(found)


def _field(descriptor: MessageType, name: str) -> Field | None:
    """A field by its protojson name, or its proto name (protojson parsers take both)."""
    for field in descriptor.fields:
        if name in (field.json_name, field.name):
            return field
    return None


def fill_defaults(
    message: dict[str, Any],
    descriptor: MessageType,
    numbers: Iterable[Path] = (),
    *,
    lists: bool = True,
    path: Path = (),
) -> set[str]:
    """Add to ``message`` (protojson of ``descriptor``, changed in place) the zero enums
    it omits, and the zero numbers at ``numbers``, in it and in every message set in it
    (in the items of repeated ones too when ``lists``); a value that is not an object
    (a raw value, ``null``) is left as it is.

    Returns the keys of ``message`` that were added or have something added beneath.
    """
    numbers = frozenset(numbers)
    changed = set()
    for field in descriptor.fields:
        key = field.json_name if field.json_name in message else field.name
        if key not in message:
            zero: str | int | float | None = zero_enum(field)
            if zero is None and (*path, field.json_name) in numbers:
                zero = _zero_number(field)
            if zero is not None:
                message[field.json_name] = zero
                changed.add(field.json_name)
            continue
        nested = _nested(field)
        if nested is None:
            continue
        value, here = message[key], (*path, field.json_name)
        if field.is_repeated:
            items = value if lists and isinstance(value, list) else []
        else:
            items = [value]
        for item in items:
            if isinstance(item, dict) and fill_defaults(item, nested, numbers, lists=lists,
                                                        path=here):  # fmt: skip
                changed.add(key)
    return changed
