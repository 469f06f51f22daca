"""What every source shares: turning a body of JSON into validated spool entries.

A source accepts bytes from the outside (a request body, a file's lines, a message),
checks them against the target table's declaration, and hands the result to the spool.
It acknowledges only after :meth:`rtclake.spool.Spool.append` returned. Validation is done
per record in C (msgspec) without building Python objects for unknown keys, so a batch of
thousands of records costs little more than reading it.
"""

from __future__ import annotations

import re
from abc import ABC
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from rtclake.errors import InputError
from rtclake.tables import Table

if TYPE_CHECKING:  # the web framework loads with the server, not with `rtclake import`
    from starlette.routing import BaseRoute

_BYTE_AT = re.compile(r"\(byte (\d+)\)")
_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _compact(item: bytes) -> bytes:
    # A spooled record is one line; pretty-printed input is compacted.
    return msgspec.json.format(item, indent=-1) if b"\n" in item or b"\r" in item else item


def check_utf8(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if body[:2] == b"\x1f\x8b":  # gzip's magic number
            raise InputError(
                "invalid_utf8",
                "body is gzip data, not JSON text: where an endpoint takes it compressed,"
                " say so with Content-Encoding: gzip",
            ) from exc
        raise InputError(
            "invalid_utf8",
            f"body is not valid UTF-8 at byte {exc.start}",
            line=_line_of(body, exc.start),
        ) from exc


# A ``\uD800``-``\uDBFF`` escape (not itself escaped) that no low-surrogate escape follows.
_LONE_HIGH_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def _lone_surrogate(exc: Exception, what: str, line: int | None, data: bytes) -> InputError | None:
    """Name the lone surrogate escape in ``data``, which msgspec reports as truncation."""
    match = _LONE_HIGH_SURROGATE.search(data) if "truncated" in str(exc) else None
    if match is None:
        return None
    at = match.start(1)
    return InputError(
        "bad_json",
        f"{what}: the string escape {match.group(1).decode()} at byte {at} is a lone UTF-16"
        " surrogate (a high surrogate must be followed by a low one, \\udc00-\\udfff)",
        line=_line_of(data, at) if line is None else line,
    )


def parse_object(body: bytes) -> dict[str, msgspec.Raw]:
    """The top-level keys of a body that must be one JSON object, their values raw."""
    check_utf8(body)
    if not body.strip():
        raise InputError("empty", "body is empty: send one JSON object")
    try:
        return _decode_object(body)
    except RecursionError as exc:
        raise InputError("too_deep", "JSON nested too deeply") from exc
    except msgspec.ValidationError as exc:
        raise InputError("invalid_record", "body must be one JSON object") from exc
    except msgspec.DecodeError as exc:
        # a lone surrogate is named as /ingest names it, not as msgspec's "truncated"
        raise _lone_surrogate(exc, "invalid JSON", None, body) or InputError(
            "bad_json", f"invalid JSON: {exc}"
        ) from exc


def reason_of(exc: BaseException) -> str:
    """The one reason label of a decoding error (``rtclake_records_rejected{reason}``)."""
    if isinstance(exc, UnicodeDecodeError):
        return "invalid_utf8"
    if isinstance(exc, RecursionError):
        return "too_deep"
    if isinstance(exc, msgspec.ValidationError):  # a subclass of DecodeError: test it first
        return "invalid_record"
    return "bad_json"


def _error(exc: Exception, what: str, line: int | None, data: bytes = b"") -> InputError:
    reason = reason_of(exc)
    if reason == "too_deep":
        return InputError(reason, f"{what}: JSON nested too deeply", line=line)
    if reason == "invalid_record":
        text = str(exc).replace("`object`", "a JSON object").replace(" - at `$`", "")
        return InputError(reason, f"{what}: {text}", line=line)
    return _lone_surrogate(exc, what, line, data) or InputError(
        "bad_json", f"{what}: {exc}", line=line
    )


class Source(ABC):  # noqa: B024 - every method has a default
    """A source: something that receives records and hands them to the intake.

    ``start`` is called once, on the service's event loop, after the spool is open;
    ``stop`` ends the source's tasks (input not yet handed over is read again after a
    restart). A source treats the return of :meth:`rtclake.intake.Intake.take` as the
    moment its input is safe (advance a checkpoint, acknowledge a message, answer 200).
    A source that receives requests (webhooks, HTTP ingest, WebSocket) declares them in
    :meth:`routes`, which the web layer mounts.
    """

    name: str = "source"

    async def start(self) -> None:  # noqa: B027 - an endpoint-only source has nothing to run
        """Begin reading; return once running."""

    async def stop(self) -> None:  # noqa: B027 - an endpoint-only source has nothing to end
        """Stop reading and release files and connections."""

    def routes(self) -> list[BaseRoute]:
        """The HTTP routes of this source (Starlette routes, WebSocket routes included)."""
        return []


class Records(NamedTuple):
    """Validated records: JSON Lines, their number, and which lines carry unmapped keys
    (``None`` when the table does not track it: every line may)."""

    body: bytes
    n: int
    extra: list[int] | None


UTF8_BOM = b"\xef\xbb\xbf"


def split_records(body: bytes, table: Table) -> Records:
    """Validate a body holding one JSON object, an array of objects, or JSON Lines.

    Returns the records as JSON Lines, one object per line. Raises :class:`InputError`
    naming the line (JSON Lines) or record (array) at fault.
    """
    check_utf8(body)
    # a byte order mark (Windows tools, PowerShell's Out-File) is not JSON, and RFC 8259
    # lets a parser pass over it: it is no reason to refuse the body
    body = body.removeprefix(UTF8_BOM)
    stripped = body.lstrip()
    if not stripped:
        raise InputError("empty", "body is empty: send a JSON object, an array or JSON Lines")
    first = stripped[:1]
    if first == b"[":
        return _split_array(body, table)
    if first != b"{":
        raise InputError(
            "invalid_record",
            "body must be a JSON object, an array of objects, or JSON Lines",
            line=_line_of(body, len(body) - len(stripped)),
        )
    check = table.checker()
    try:
        has_extra = check(body)
    except (msgspec.ValidationError, RecursionError) as exc:
        if _holds_several_documents(body):
            return split_lines(body, table)  # raises, naming the line
        raise _error(exc, "record", None) from exc
    except msgspec.DecodeError as exc:
        if "trailing characters" not in str(exc):
            raise _json_error(exc, body) from exc
    else:
        return Records(_compact(body.strip()), 1, _tracked([has_extra], table))
    return split_lines(body, table)


def _tracked(flags: list[bool], table: Table) -> list[int] | None:
    return [i for i, flag in enumerate(flags) if flag] if table.sparse_extra else None


def _holds_several_documents(body: bytes) -> bool:
    """True if ``body`` is more than one JSON document (JSON Lines), checked without types."""
    try:
        msgspec.json.decode(body, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        return "trailing characters" in str(exc)
    except RecursionError:
        return False
    return False


def _json_error(exc: Exception, body: bytes) -> InputError:
    match = _BYTE_AT.search(str(exc))
    line = _line_of(body, int(match.group(1))) if match else None
    return _error(exc, "invalid JSON", line, body)


def _split_array(body: bytes, table: Table) -> Records:
    try:
        items = msgspec.json.decode(body, type=list[msgspec.Raw])
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise _json_error(exc, body) from exc
    if not items:
        raise InputError("empty", "the array holds no records")
    check = table.checker()
    out = []
    flags = []
    for number, item in enumerate(items):
        raw = bytes(item)
        try:
            flags.append(check(raw))
        except (msgspec.MsgspecError, RecursionError) as exc:
            raise _error(exc, f"record {number} of the array", None, raw) from exc
        out.append(_compact(raw))
    return Records(b"\n".join(out), len(out), _tracked(flags, table))


def split_lines(body: bytes, table: Table) -> Records:
    """Validate JSON Lines (blank lines allowed); the first bad line raises InputError."""
    lines = body.split(b"\n")
    check = table.checker()
    kept: list[bytes] = []
    flags: list[bool] = []
    append, flag = kept.append, flags.append
    for number, line in enumerate(lines, 1):
        try:
            flag(check(line))
        except (msgspec.MsgspecError, RecursionError) as exc:
            if not line.strip():
                continue  # blank lines (and the final newline) are allowed
            raise _error(exc, f"line {number}", number, line) from exc
        append(line)
    out = body if len(kept) == len(lines) else b"\n".join(kept)
    return Records(out, len(kept), _tracked(flags, table))
