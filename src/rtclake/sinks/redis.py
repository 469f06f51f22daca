"""The redis sink: records into Redis, as a stream per table or as keys that expire.

What it accepts: the rows of the tables listed in ``tables`` (default: every table but
``dead_letters``; of ``outbox``, the rows a broker addressed to this sink). Each record is
the row as JSON (times in RFC 3339, JSON columns and ``extra`` as objects) with its
``record_id``.

Two layouts (``mode``):

- ``stream`` (default): ``XADD`` to the stream ``{prefix}{table}`` (``MAXLEN ~ maxlen``),
  fields ``record_id``, ``table`` and ``record`` (the JSON). A replayed batch (the writer
  delivers at least once) adds nothing twice: a Lua script, atomic in Redis, adds a record
  only if it sets the marker ``{prefix}seen:{record_id}`` (``SET NX``, expiring after
  ``seen_ttl`` seconds, which must outlast a replay: the spool keeps a batch until every
  sink confirmed it).
- ``json``: ``SET {prefix}{table}:{record_id} <JSON> EX ttl``: a replay writes the same
  key with the same value.

What it guarantees: at least once into Redis, at most once per record id in a stream
(within ``seen_ttl``). An unreachable or failing Redis (connection refused, a timeout, an
error reply) is an outage: :class:`~rtclake.errors.SinkError`, the batch stays in the
spool and is retried with backoff; the records of it already added are not added again.

What it reports: the delivery's metrics under the sink's name
(``rtclake_sink_errors_total{sink}``, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from rtclake.errors import SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Sink, check_tables, json_bytes, rows_taken
from rtclake.sinks.webhook import records
from rtclake.tables import DEAD_LETTERS, TableRegistry

# KEYS: stream, then one marker per record; ARGV: maxlen, seen_ttl, then per record its
# id, table and JSON. Adds the records whose marker it sets; returns how many.
_ADD_ONCE = """
local added = 0
for i = 2, #KEYS do
    local at = 3 + (i - 2) * 3
    if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
            'record_id', ARGV[at], 'table', ARGV[at + 1], 'record', ARGV[at + 2])
        added = added + 1
    end
end
return added
"""


class RedisSinkConfig(SinkConfig):
    """Records into Redis: a stream per table, or a key per record with a TTL."""

    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="redis://[:password@]host:port/db (rediss:// for TLS; masked)",
    )
    mode: Literal["stream", "json"] = Field(
        default="stream", description="stream: XADD per table; json: SET key EX ttl per record"
    )
    tables: list[str] | None = Field(
        default=None, description="the tables to write; default every table but dead_letters"
    )
    prefix: str = Field(default="rtclake:", description="of every key and stream")
    maxlen: int = Field(default=100_000, gt=0, description="stream mode: MAXLEN ~ per stream")
    ttl: int = Field(default=86_400, gt=0, description="json mode: seconds a record's key lives")
    seen_ttl: int = Field(
        default=7 * 86_400, gt=0,
        description="stream mode: seconds a record id is remembered against replays",
    )  # fmt: skip
    chunk: int = Field(default=500, gt=0, le=10_000, description="records per Redis call")
    timeout: float = Field(default=10.0, gt=0, description="seconds for one Redis call")


class RedisSink(Sink):
    """Writes rows of some tables to Redis (see the module doc)."""

    def __init__(self, config: RedisSinkConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.table_names = config.tables or [t for t in tables.names() if t != DEAD_LETTERS.name]
        self.needs_record_id = True  # the replay guard and the keys are the record ids
        self._client: Any = None
        self._script: Any = None

    def start(self) -> None:
        import redis

        self._client = redis.Redis.from_url(
            self.config.url.get_secret_value(), socket_timeout=self.config.timeout,
            socket_connect_timeout=self.config.timeout,
        )  # fmt: skip
        self._script = self._client.register_script(_ADD_ONCE)
        self._call(self._client.ping)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise SinkError(f"redis: {type(exc).__name__}: {exc}") from exc

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.table_names, self.name)

    def write(self, batch: Batch) -> None:
        if self._client is None:
            self.start()
        prefix, size = self.config.prefix, self.config.chunk
        for name in self.table_names:
            if name not in batch.tables or batch.tables[name].num_rows == 0:
                continue
            rows = [row for _, row in records(batch, self.tables, name, self.name, as_written=True)]
            if not rows:
                continue
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                if self.config.mode == "json":
                    pipe = self._client.pipeline(transaction=False)
                    for row in part:
                        key = f"{prefix}{name}:{row['record_id']}"
                        pipe.set(key, json_bytes(row), ex=self.config.ttl)
                    self._call(pipe.execute)
                    continue
                keys = [f"{prefix}{name}"] + [f"{prefix}seen:{r['record_id']}" for r in part]
                argv: list[Any] = [self.config.maxlen, self.config.seen_ttl]
                for row in part:
                    argv += [row["record_id"], name, json_bytes(row)]
                self._call(self._script, keys=keys, args=argv)


def build(config: RedisSinkConfig, ctx: BuildContext) -> RedisSink:
    check_tables(config.tables, ctx)
    return RedisSink(config, ctx.tables, ctx.name)


REDIS = ComponentType(
    "sink", "redis", RedisSinkConfig, build,
    "Records into Redis: a stream per table (replays added once) or keys with a TTL.",
)  # fmt: skip
