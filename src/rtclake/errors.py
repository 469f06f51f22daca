"""The exception tree of rtclake. Every error a user can meet is one of these classes."""

from __future__ import annotations


class RtclakeError(Exception):
    """Base class of every error rtclake raises on purpose."""


class ConfigError(RtclakeError):
    """The configuration file or an ``RTCLAKE_*`` variable is invalid."""


class InputError(RtclakeError):
    """Input that rtclake refuses, with the reason a sender can act on.

    ``reason`` is a short machine-readable label (it is the ``reason`` label of the
    rejected-records metric); ``line`` is the 1-based line of the offending record when
    the input is JSON Lines or a file.
    """

    status = 400

    def __init__(self, reason: str, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.line = line

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.reason, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


class RequestTimeout(InputError):
    """The request's body did not arrive in time."""

    status = 408


class PayloadTooLarge(InputError):
    """The body (or its decompressed form) is larger than the configured maximum."""

    status = 413


class UnsupportedEncoding(InputError):
    """A ``Content-Encoding`` rtclake cannot decode."""

    status = 415


class SpoolUnavailable(RtclakeError):
    """The spool cannot take an entry now; nothing of it was acknowledged. The sender
    should retry after ``retry_after`` seconds. ``status`` is the HTTP answer and
    ``reason`` its machine-readable label."""

    status = 503
    reason = "spool_unavailable"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class SpoolFull(SpoolUnavailable):
    """The durable spool has reached its size limit (``spool.max_bytes``)."""

    reason = "spool_full"

    def __init__(self, used: int, limit: int, retry_after: int) -> None:
        super().__init__(f"spool is full ({used} of {limit} bytes used); retry later", retry_after)


class DiskFull(SpoolUnavailable):
    """The disk under the spool has no room for the entry (ENOSPC or EDQUOT)."""

    status = 507
    reason = "disk_full"


class SpoolIOError(SpoolUnavailable):
    """The spool's disk failed a write or an fsync (EIO and the like)."""

    reason = "spool_io_error"


class SpoolCorrupt(RtclakeError):
    """A spool segment holds bytes that are not a valid entry (outside a torn tail)."""


class SinkError(RtclakeError):
    """A sink could not write a batch; the batch stays in the spool and is retried."""


class QueryError(RtclakeError):
    """A query was refused (not read-only, too slow) or failed in DuckDB.

    ``reason`` is a short machine-readable label, ``status`` the HTTP answer.
    """

    status = 400

    def __init__(self, reason: str, message: str) -> None:
        from rtclake.redact import redact

        message = redact(message)  # DuckDB's errors may quote a catalog URL whole
        super().__init__(message)
        self.reason = reason
        self.message = message


class QueryOverLimit(QueryError):
    """A query needed more memory (``query.memory_limit``, reason ``memory_limit``) or
    temporary disk space (``query.max_temp_bytes``, reason ``temp_limit``) than a query
    may use."""

    status = 422


class ResultTooLarge(QueryError):
    """A query's result is larger than ``query.max_result_bytes``."""

    status = 413

    def __init__(self, message: str) -> None:
        super().__init__("result_too_large", message)


class QueryBusy(QueryError):
    """Every query slot (``query.max_concurrent``) stayed taken while the query waited
    (``query.queue_timeout``); retry after ``retry_after`` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__("busy", message)
        self.retry_after = retry_after


class LakeUnreadable(QueryError):
    """A file of the lake cannot be read (damaged, or not Parquet), so the tables cannot be
    built; the operator must move it out of the lake. Not the query's fault: 503."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__("lake_unreadable", message)
