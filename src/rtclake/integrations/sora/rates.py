"""``rtc_rates`` computed from ``rtc_stats`` samples in Arrow and NumPy, batch by batch.

The formulas are those of docs/METRICS.md. A difference (Δ) is the counter's increase
since the stream's previous sample; a counter that went down was reset, and the interval
takes its new value; a missing value on either side gives NULL. The rates of a batch of
30,000 stats take a few milliseconds this way; DuckDB's window over the same rows, one
``lag`` per counter, took about 0.15 s, which tripled the time of an import.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

COUNTERS = (
    "bytes_sent", "bytes_received", "packets_sent", "packets_received", "packets_lost",
    "freeze_count", "concealed_samples", "total_samples_received", "nack_count", "pli_count",
    "fir_count", "frames_decoded", "frames_encoded", "jitter_buffer_delay",
    "jitter_buffer_emitted_count",
)  # fmt: skip
REASONS = ("none", "cpu", "bandwidth", "other")  # qualityLimitationDurations' keys
TYPES = ("inbound-rtp", "outbound-rtp", "remote-inbound-rtp", "candidate-pair")
IDS = ("channel_id", "session_id", "connection_id", "stats_type", "stats_id", "media_kind",
       "track_identifier")  # fmt: skip
GAUGES = (
    "fraction_lost", "jitter", "round_trip_time", "current_round_trip_time",
    "frames_per_second",
)  # fmt: skip
# a sample as the state keeps it (the last one of each stream)
SAMPLE_COLUMNS = (
    *IDS, "rtc_timestamp", *COUNTERS, *GAUGES, "frame_width", "frame_height",
    "quality_limitation_reason", *(f"ql_{r}" for r in REASONS),
)  # fmt: skip
CARRIED = ("received_at", "source", "stream")
# a stream silent this long before the newest sample is dropped from the state
HORIZON_US = 6 * 3600 * 1_000_000


def samples(rows: pa.Table) -> pa.Table:
    """The samples of a batch of ``rtc_stats`` rows: the stats types that have rates, the
    state's columns (the quality-limitation durations as numbers) and the envelope."""
    wanted = pc.is_in(rows["stats_type"], pa.array(TYPES))
    have = set(rows.schema.names)  # (a list made anew at each call: ~170 names)
    taken = rows_where(rows.select([n for n in (*SAMPLE_COLUMNS, *CARRIED) if n in have]), wanted)
    # qualityLimitationDurations (JSON text, on outbound video only): parsed where present
    text = pc.filter(rows["quality_limitation_durations"], wanted)
    present = np.flatnonzero(np.asarray(pc.is_valid(text)))
    values = pc.take(text, pa.array(present)).to_pylist()
    found = _durations(values, present, taken.num_rows)
    columns = {name: taken[name] for name in SAMPLE_COLUMNS if not name.startswith("ql_")}
    columns |= {f"ql_{reason}": _arrow(found[reason]) for reason in REASONS}
    table = pa.table({name: columns[name] for name in SAMPLE_COLUMNS})
    for name in CARRIED:
        table = table.append_column(name, taken[name])
    return table


_DURATIONS = pa.schema([(reason, pa.float64()) for reason in REASONS])


def _durations(values: list[str], present: npt.NDArray[np.int64], rows: int) -> dict[str, Floats]:
    """The seconds of each reason of the ``qualityLimitationDurations`` objects
    ``values`` (JSON text) of the rows ``present``, NaN where a row has none. Read by
    Arrow's JSON reader at once (a Python loop over the objects held the interpreter
    ~5 ms a 30,000-line block, beside the threads that parse); objects it cannot take
    (a value not a number) one by one, numbers only."""
    found = {reason: np.full(rows, np.nan) for reason in REASONS}
    if not values:
        return found
    try:
        read = pa_json.read_json(
            io.BytesIO("\n".join(values).encode()),
            read_options=pa_json.ReadOptions(use_threads=False),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_DURATIONS, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid:
        read = None
    if read is not None and read.num_rows == len(values):
        for reason in REASONS:
            found[reason][present] = _floats(read[reason])
        return found
    for at, value in zip(present, values, strict=True):
        parsed = orjson.loads(value) if value else None
        if isinstance(parsed, dict):
            for reason in REASONS:
                number = _number(parsed.get(reason))
                if number is not None:
                    found[reason][at] = number
    return found


def aligned(state: pa.Table, schema: pa.Schema, names: Sequence[str]) -> pa.Table:
    """The state's columns ``names`` in ``schema``'s types; a column a state saved by an
    earlier version lacks is NULL (its streams start again without it)."""
    have = set(state.column_names)
    columns = [
        state[name] if name in have else pa.nulls(state.num_rows, schema.field(name).type)
        for name in names
    ]
    return pa.table(columns, names=list(names)).cast(pa.schema([schema.field(n) for n in names]))


def rows_where(table: pa.Table, mask: pa.Array | pa.ChunkedArray | Mask) -> pa.Table:
    """``table``'s rows where ``mask`` holds, column by column: ``Table.filter`` goes
    through an Acero plan, about twice the cost on a batch of 30,000 stats."""
    if isinstance(mask, np.ndarray):
        mask = pa.array(mask)
    return pa.table([pc.filter(column, mask) for column in table.columns], schema=table.schema)


def rows_at(table: pa.Table, rows: npt.NDArray[np.int64]) -> pa.Table:
    """``table``'s rows at the indices ``rows``, column by column."""
    index = pa.array(rows, pa.int64())
    return pa.table([pc.take(column, index) for column in table.columns], schema=table.schema)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _floats(column: pa.ChunkedArray | pa.Array) -> Floats:
    """A numeric column as float64 with NaN for NULL."""
    values = pc.cast(column, pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _is(column: pa.ChunkedArray | pa.Array, value: str) -> Mask:
    return np.asarray(pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False))


def _arrow(values: Floats) -> pa.Array:
    return pa.array(values, pa.float64(), from_pandas=True)  # NaN -> NULL


def derive(fresh: pa.Table, state: pa.Table | None) -> tuple[pa.Table, pa.Table]:
    """The rates of ``fresh`` samples (:func:`samples`) whose previous sample is in
    ``fresh`` or in ``state``, and the new state (the last sample of every stream, and
    its last in ``fresh``'s order when older).

    A sample older than its stream's last one may be new (a rotated copy or an upload read
    after newer lines) or read again; neither state tells, so it is rated from the sample
    before it, as any other. A rate's record id is its stream and time, and the lake's
    repeat check stores a rate made again once."""
    flag = np.ones(fresh.num_rows, dtype=bool)
    table = fresh
    if state is not None and state.num_rows:
        missing = {name: pa.nulls(state.num_rows, fresh.schema.field(name).type)
                   for name in CARRIED}  # fmt: skip
        old = aligned(state, fresh.schema, SAMPLE_COLUMNS)
        for name, column in missing.items():
            old = old.append_column(name, column)
        table = pa.concat_tables([fresh, old.cast(fresh.schema)])
        flag = np.concatenate([flag, np.zeros(state.num_rows, dtype=bool)])
    if table.num_rows == 0:
        return pa.table({}), table.select(list(SAMPLE_COLUMNS))
    # streams as integers, then samples in (stream, time) order
    conn = pc.dictionary_encode(table["connection_id"].combine_chunks())
    stat = pc.dictionary_encode(table["stats_id"].combine_chunks())
    c_codes = np.asarray(conn.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    s_codes = np.asarray(stat.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    key = c_codes * (int(s_codes.max(initial=0)) + 1) + s_codes
    ts = np.asarray(
        pc.cast(table["rtc_timestamp"], pa.int64()).to_numpy(zero_copy_only=False), np.int64
    )
    # the samples stay where they are; NumPy works on their values in (stream, time)
    # order, and only the rows kept (rates, the state) are taken from the table
    order = np.lexsort((ts, key))
    key, ts, flag = key[order], ts[order], flag[order]

    same = np.zeros(len(key), dtype=bool)
    same[1:] = key[1:] == key[:-1]
    prev_ts = np.zeros(len(ts), dtype=np.int64)
    prev_ts[1:] = ts[:-1]
    has_prev = same & (ts > prev_ts)
    interval = np.where(has_prev, (ts - prev_ts) / 1e6, np.nan)

    def values(name: str) -> Floats:
        return _floats(table[name])[order]

    def delta(name: str) -> Floats:
        cur = values(name)
        prev = np.full(len(cur), np.nan)
        prev[1:] = cur[:-1]
        prev[~same] = np.nan
        with np.errstate(invalid="ignore"):
            out = np.where(cur >= prev, cur - prev, cur)
        out[np.isnan(prev) | np.isnan(cur)] = np.nan
        return out

    def coalesce(*arrays: Floats) -> Floats:
        out = arrays[0].copy()
        for more in arrays[1:]:
            out = np.where(np.isnan(out), more, out)
        return out

    kind = table["stats_type"]
    inbound, remote = _is(kind, "inbound-rtp")[order], _is(kind, "remote-inbound-rtp")[order]
    pair = _is(kind, "candidate-pair")[order]
    media = table["media_kind"]
    audio, video = _is(media, "audio")[order], _is(media, "video")[order]
    nan = np.full(len(ts), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        bitrate = 8.0 * coalesce(delta("bytes_sent"), delta("bytes_received")) / interval
        packets = coalesce(delta("packets_sent"), delta("packets_received")) / interval
        got, lost = delta("packets_received"), delta("packets_lost")
        expected = got + lost
        inbound_loss = np.where(expected > 0, 100.0 * lost / expected, 0.0)
        loss = np.where(inbound, inbound_loss, np.where(remote, 100.0 * values(
            "fraction_lost"), nan))  # fmt: skip
        rtt = np.where(remote, values("round_trip_time"),
                       np.where(pair, values("current_round_trip_time"), nan))  # fmt: skip
        emitted, waited = delta("jitter_buffer_emitted_count"), delta("jitter_buffer_delay")
        jitter_buffer = np.where(emitted > 0, 1000.0 * waited / emitted, nan)
        frames = coalesce(delta("frames_decoded"), delta("frames_encoded")) / interval
        fps = np.where(video, coalesce(values("frames_per_second"), frames), nan)
        samples_got, concealed = delta("total_samples_received"), delta("concealed_samples")
        concealment = np.where(audio & (samples_got > 0), 100.0 * concealed / samples_got, nan)
        events = ("freeze_count", "nack_count", "pli_count", "fir_count")
        per_min = {name: 60.0 * delta(name) / interval for name in events}
        spent = {r: delta(f"ql_{r}") for r in REASONS}
        total = sum(spent.values(), np.zeros(len(ts)))
        shares = {r: np.where(total > 0, spent[r] / total, nan) for r in REASONS}

    keep = has_prev & flag
    rows = order[keep]  # the rates' samples, where they are in the table

    def out(values_: Floats) -> pa.Array:
        return _arrow(values_[keep])

    taken = rows_at(
        table.select(["rtc_timestamp", *IDS, "frame_width", "frame_height",
                      "quality_limitation_reason", *CARRIED]), rows,
    )  # fmt: skip
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "time": taken["rtc_timestamp"],
        **{name: taken[name] for name in IDS},
        "interval_s": out(interval),
        "bitrate_bps": out(bitrate),
        "packets_per_s": out(packets),
        "loss_pct": out(loss),
        "jitter_ms": out(1000.0 * values("jitter")),
        "rtt_ms": out(1000.0 * rtt),
        "jitter_buffer_ms": out(jitter_buffer),
        "fps": out(fps),
        "frame_width": taken["frame_width"],
        "frame_height": taken["frame_height"],
        "freezes_per_min": out(per_min["freeze_count"]),
        "concealment_pct": out(concealment),
        "nack_per_min": out(per_min["nack_count"]),
        "pli_per_min": out(per_min["pli_count"]),
        "fir_per_min": out(per_min["fir_count"]),
        "quality_limitation_reason": taken["quality_limitation_reason"],
        **{f"quality_limitation_{r}_share": out(shares[r]) for r in REASONS},
        **{name: taken[name] for name in CARRIED},
    }
    rates = pa.table(columns)

    # the new state: each stream's last sample, and its last one in ``fresh``'s order when
    # that is older (lines out of order, or read again): the next batch's samples of the
    # same stretch follow it, so they are rated as they would be in one batch (and a
    # sample read again makes the same row again)
    last = np.ones(len(key), dtype=bool)
    last[:-1] = key[1:] != key[:-1]
    group = np.cumsum(~same) - 1
    place = np.where(flag, order, -1)  # (fresh's rows come first: ``order`` is their place)
    latest_place = np.full(group[-1] + 1, -1)
    np.maximum.at(latest_place, group, place)
    ended = flag & (place == latest_place[group]) & (ts < ts[last][group])
    recent = ts >= ts.max() - HORIZON_US
    state_out = rows_at(table.select(list(SAMPLE_COLUMNS)), order[(last | ended) & recent])
    return rates, state_out


#: Decimals a derived gauge keeps, in its column's unit (1 us of a ``_ms`` column, 0.001
#: percentage points, 1 ms of ``interval_s``): far finer than what the counters measure,
#: and the doubles then compress: a million Sora lines' rtc_rates took 3.8 MB instead of
#: 6.1 (the full doubles of a product such as jitter x 1000 are noise to zstd).
DECIMALS = 3


def stored(rates: pa.Table, schema: pa.Schema, kind: str, names: Sequence[str]) -> pa.Table:
    """``rates`` in a lake table's stored schema: its envelope (``kind``, no ``type`` and
    no ``extra``) and the columns ``names``, floats rounded to :data:`DECIMALS`."""
    n = rates.num_rows
    columns = []
    for field in schema:
        if field.name == "kind":
            columns.append(pa.array([kind] * n, pa.string()))
        elif field.name in ("type", "extra"):
            columns.append(pa.nulls(n, field.type))
        elif pa.types.is_floating(field.type):
            columns.append(pc.round(pc.cast(rates[field.name], field.type), DECIMALS))
        else:
            columns.append(pc.cast(rates[field.name], field.type))
    assert set(names) <= set(schema.names)
    return pa.table(columns, schema=schema)
