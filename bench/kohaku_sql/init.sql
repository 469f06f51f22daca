-- Kohaku's side of bench/dashboard_queries.py: run once per connection to Kohaku's DuckDB
-- file, before the questions, as a Grafana DuckDB data source's init SQL would be. Only
-- scalar macros: DuckDB pastes them into the query's text, so they cost nothing at run
-- time and save repeating the formulas in every question.
--
-- How the questions read rtc_data (a JSON column): json_transform with a structure naming
-- only the keys the question needs parses each object once and gives typed values. On
-- this corpus it read 15 keys ~7x faster than 15 `->>` (each parses the object again)
-- and ~2x faster than json_extract with a list of paths; for one key it costs what one
-- json_extract does. Each question filters on Kohaku's own columns (rtc_type,
-- connection_id, session_id, timestamp) before it parses anything, and a time range
-- reaches back 5 minutes before its start for the sample a rate needs (reports come every
-- minute), instead of running the window over the whole table.

-- A counter's increase since the previous sample; a counter that went down was reset (a
-- reconnect, a new SSRC), and the interval takes its new value (as Prometheus's rate()).
CREATE OR REPLACE TEMP MACRO counter_delta(cur, prev) AS
    CASE WHEN prev IS NULL THEN NULL WHEN cur >= prev THEN cur - prev ELSE cur END;

-- The time-weighted mean of a rate over the intervals ending in a bucket.
CREATE OR REPLACE TEMP MACRO weighted(rate, seconds) AS
    sum(rate * seconds) / sum(CASE WHEN rate IS NOT NULL THEN seconds END);

-- ITU-T G.107's E-model with Opus figures, as rtclake's docs/QUALITY.md gives it: the
-- one-way delay (half the round trip, the jitter buffer or else twice the jitter, one
-- 20 ms frame), its impairment Idd, Opus's equipment impairment Ie, R and the MOS.
CREATE OR REPLACE TEMP MACRO emodel_delay_ms(rtt_ms, jitter_buffer_ms, jitter_ms) AS
    coalesce(rtt_ms, 0) / 2 + coalesce(jitter_buffer_ms, 2 * jitter_ms, 0) + 20.0;
CREATE OR REPLACE TEMP MACRO emodel_idd(delay_ms) AS
    CASE WHEN delay_ms <= 100 THEN 0
        ELSE 25 * (pow(1 + pow(log2(delay_ms / 100), 6), 1 / 6)
            - 3 * pow(1 + pow(log2(delay_ms / 100) / 3, 6), 1 / 6) + 2) END;
CREATE OR REPLACE TEMP MACRO emodel_ie(bitrate_bps) AS
    CASE WHEN bitrate_bps IS NULL OR bitrate_bps < 6000 THEN 8.0
        ELSE greatest(0, least(30, 55 - 4.6 * ln(bitrate_bps))) END;
CREATE OR REPLACE TEMP MACRO emodel_r(delay_ms, loss_pct, bitrate_bps) AS
    93.2 - emodel_idd(delay_ms) - (emodel_ie(bitrate_bps) + (95 - emodel_ie(bitrate_bps))
        * coalesce(loss_pct, 0) / (coalesce(loss_pct, 0) + 20.0));
CREATE OR REPLACE TEMP MACRO emodel_mos(r) AS
    CASE WHEN r < 0 THEN 1.0 WHEN r > 100 THEN 4.5
        ELSE 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6 END;

-- The 1-5 video score of docs/QUALITY.md: resolution (720p full marks, 180p the floor),
-- frame rate (24 full marks, 5 the floor), freezes per minute, loss.
CREATE OR REPLACE TEMP MACRO video_score(pixels, fps, freezes_per_min, loss_pct) AS
    greatest(1.0, 5.0
        - 1.5 * greatest(0, least(1, (log2(1280 * 720) - log2(pixels))
            / (log2(1280 * 720) - log2(320 * 180))))
        - 1.5 * greatest(0, least(1, (24 - fps) / (24 - 5)))
        - least(1.5, 0.5 * coalesce(freezes_per_min, 0))
        - least(1.5, 0.2 * coalesce(loss_pct, 0)));
