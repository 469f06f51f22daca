// The overview: what is live now, how connections come and go, the worst connections,
// the busiest channels, the sessions of the range, Sora's own counters (when the API
// poller runs) and what rtclake itself is storing.

import { h, fill, panel, table, emptyState, errorBox } from "../dom.js";
import * as f from "../format.js";
import { COLORS, timeChart } from "../charts.js";
import { api, apiQuery, entityLink, link, params, timeRange } from "../state.js";

const LIVE_ROWS = 50;  // the overview's "Live now" shows this many; the API has them all

const NO_STATS =
  "No stats in this range: run `rtclake demo` for a realistic sample, or point Sora's log at rtclake " +
  "(a `sora_logs` source on Sora's log directory, or Sora's stats webhook to `/sora/webhooks/stats`). " +
  "Data shows a flush interval after it arrives.";

export function create(main, args, context) {
  const el = {};
  const skeleton = () => {
    el.title = h("div", { class: "title" });
    el.error = h("div");
    el.cards = h("div", { class: "cards" });
    el.flow = h("div", { class: "chart", id: "chart-flow" });
    el.throughput = h("div", { class: "chart", id: "chart-throughput" });
    el.worst = h("div");
    el.channels = h("div");
    el.sessions = h("div");
    el.live = h("div");
    el.sora = h("div");
    fill(main,
      el.title, el.error, el.cards,
      h("div", { class: "grid" },
        panel("Connections per minute", { unit: "created, destroyed, destroyed abnormally", hint: "from Sora's connection log and webhooks; else the first stats report" }, el.flow),
        panel("Records/s rtclake stores", { unit: "this process, last hour", hint: "sampled every 5 s from its own counters" }, el.throughput)),
      h("div", { class: "grid", style: "margin-top:1rem" },
        panel("Worst connections", { unit: "by average score in the range", hint: "1–5; green ≥ 4, amber ≥ 3, red below" }, el.worst),
        panel("Top channels", { unit: "by connections with stats in the range" }, el.channels)),
      h("div", { style: "margin-top:1rem" }, panel("Sessions", { unit: "that lived during the range, newest first" }, el.sessions)),
      h("div", { style: "margin-top:1rem" }, panel("Live now", { unit: "rooms, sessions, participants, connections, tracks, egresses, ingresses", hint: "started and not ended, from LiveKit's and Sora's events (the entity_tracker processor)" }, el.live)),
      h("div", { class: "section" }, h("h2", {}, "Sora nodes"),
        h("span", { class: "sub" }, "Sora's own counters, as its API poller (a sora_api source) stores them")),
      el.sora);
  };
  skeleton();

  async function load() {
    const range = timeRange(false);
    const channel = params().get("channel");
    let data;
    try {
      data = await api("/api/dashboard/overview" + apiQuery(range, { channel }));
      fill(el.error);
    } catch (error) {
      fill(el.error, errorBox(error));
      throw error;
    }
    const r = data.range;
    fill(el.title,
      h("h1", {}, "Overview"),
      h("span", { class: "sub" }, `${r.range ? "last " + r.range + " · " : ""}${f.timeText(r.from)} – ${f.timeText(r.to)}`),
      channel ? h("span", { title: "the counts, the top channels and the nodes stay overall" },
        "channel ", h("code", {}, channel), " (worst connections and sessions) ",
        h("a", { href: link("/", { channel: null }), title: "all channels" }, "✕")) : null);
    cards(data);
    flowChart(data);
    liveTable();
    throughputChart(data.throughput);
    worstTable(data.worst);
    channelsTable(data.channels);
    sessionsTable(data.sessions, data.now);
    sora(data.sora, r);
  }

  function cards(data) {
    const flow = data.flow;
    const total = (key) => flow[key].reduce((n, v) => n + (v || 0), 0) * flow.bucket_s / 60;
    const t = data.throughput;
    const stored = Object.values(t.stored);
    // the lake's figure (the first sink), else nothing stored yet: 0 once sampled
    const latest = stored.length ? stored[0][stored[0].length - 1] : t.time.length ? 0 : null;
    const card = (label, value, note, title) => h("div", { class: "card", title },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value), note ? h("div", { class: "note" }, note) : null);
    const fromStats = data.active.connections_from_stats;
    fill(el.cards,
      card("Active sessions", f.num(data.active.sessions), "now",
        "created and not destroyed (session webhooks, last 24 h), or with an active connection"),
      card("Active connections", f.num(data.active.connections),
        fromStats ? `now; ${f.num(fromStats)} known from stats in the last 2 min` : "now",
        "connection.created without connection.destroyed (event webhook), or stats in the last 2 minutes without an end in the connection log"),
      card("Connections created", f.num(total("created_per_min")), "in the range"),
      card("Ended abnormally", f.num(total("failed_per_min")), "in the range", "the connection log's reason is not normal"),
      card("Records/s stored", latest === null ? "–" : f.num(latest, 1), "now, by this process"));
  }

  function flowChart(data) {
    const flow = data.flow;
    const series = [
      ["created", "created_per_min", COLORS.created],
      ["destroyed", "destroyed_per_min", COLORS.destroyed],
      ["destroyed abnormally", "failed_per_min", COLORS.failed],
    ];
    timeChart(el.flow, series.map(([name, key, color]) => ({ name, t: flow.time, y: flow[key], color, type: "bar" })), {
      unit: "per min", digits: 1, range: data.range, barmode: "group", empty: NO_STATS, onZoom: zoomTo,
    });
  }

  function throughputChart(t) {
    const traces = [{ name: "received (durable in the spool)", t: t.time, y: t.received, color: COLORS.series[0] }];
    Object.entries(t.stored).forEach(([sink, values], i) =>
      traces.push({ name: `stored by ${sink}`, t: t.time, y: values, color: COLORS.series[(i + 1) % COLORS.series.length] }));
    timeChart(el.throughput, traces, {
      unit: "records/s", digits: 1, legend: true,
      empty: "Collecting: the first figure shows 5 s after rtclake starts.",
    });
  }

  function worstTable(rows) {
    fill(el.worst, table([
      { label: "Connection", value: (r) => h("a", { href: entityLink("connections", r.connection_id) }, f.shortId(r.connection_id, 12)) },
      { label: "Channel", value: (r) => r.channel_id },
      { label: "Session", value: (r) => r.session_id && h("a", { href: entityLink("sessions", r.session_id) }, f.shortId(r.session_id)) },
      { label: "Score", value: (r) => f.score(r.score), num: true, title: "average over the range" },
      { label: "Worst", value: (r) => f.score(r.worst_score, "lowest report"), num: true, title: "lowest report" },
      { label: "Audio MOS", value: (r) => f.num(r.mos_audio, 2), num: true },
      { label: "Video", value: (r) => f.num(r.video_score, 2), num: true },
      { label: "Last report", value: (r) => f.time(r.last_seen) },
    ], rows, NO_STATS, { "data-table": "worst" }));
  }

  function channelsTable(rows) {
    fill(el.channels, table([
      { label: "Channel", value: (r) => h("a", { href: link("/", { channel: r.channel_id }), title: "show this channel's sessions and worst connections" }, r.channel_id) },
      { label: "Connections", value: (r) => f.num(r.connections), num: true },
      { label: "Sessions", value: (r) => f.num(r.sessions), num: true },
      { label: "Score", value: (r) => f.score(r.score, "average of its connections"), num: true },
      { label: "Worst", value: (r) => f.score(r.worst_score, "its worst connection's average"), num: true },
      { label: "Last report", value: (r) => f.time(r.last_seen) },
    ], rows, NO_STATS, { "data-table": "channels" }));
  }

  async function liveTable() {
    let answer;
    try {
      answer = await api("/api/entities?limit=" + LIVE_ROWS);
    } catch (error) {
      fill(el.live, emptyState(error.message));
      return;
    }
    if (!answer.tracking) {
      fill(el.live, emptyState("Nothing tracks what is live: add `processors: {entities: {type: entity_tracker}}` to the configuration."));
      return;
    }
    const page = (r) => r.kind === "participant" || r.kind === "connection" ? "connections"
      : r.kind === "room" || r.kind === "session" ? "sessions" : null;
    fill(el.live, table([
      { label: "Source", value: (r) => r.source },
      { label: "Kind", value: (r) => r.kind },
      { label: "Id", value: (r) => page(r) ? h("a", { href: entityLink(page(r), r.id) }, f.shortId(r.id, 14)) : f.shortId(r.id, 14) },
      { label: "Name", value: (r) => r.name },
      { label: "In", value: (r) => r.parent && f.shortId(r.parent, 14), title: "a participant's room, a connection's session" },
      { label: "Started", value: (r) => f.time(r.started) },
      { label: "Last seen", value: (r) => f.time(r.last_seen) },
    ], answer.entities, "Nothing is live: no start event without its end.", { "data-table": "live" }),
    answer.count > answer.entities.length
      ? h("p", { class: "sub" }, `… and ${f.num(answer.count - answer.entities.length)} more (GET /api/entities lists them all)`)
      : null);
  }

  function sessionsTable(rows, now) {
    const live = (r) => !r.ended && r.last_seen && (new Date(now) - new Date(r.last_seen)) < 180_000;
    fill(el.sessions, table([
      { label: "Started", value: (r) => f.time(r.started) },
      { label: "State", value: (r) => r.ended ? h("span", { class: "pill ended" }, "ended") : live(r) ? h("span", { class: "pill live" }, "live") : h("span", { class: "pill ended", title: "no end was logged, and nothing came for 3 minutes" }, "silent") },
      { label: "Duration", value: (r) => f.duration(f.between(r.started, r.ended || r.last_seen)), num: true },
      { label: "Channel", value: (r) => r.channel_id },
      { label: "Session", value: (r) => h("a", { href: entityLink("sessions", r.session_id) }, f.shortId(r.session_id, 14)) },
      { label: "Connections", value: (r) => f.num(r.connections), num: true, title: "with stats in the range" },
      { label: "Worst", value: (r) => f.score(r.worst_score, "its worst connection"), num: true },
      { label: "Median", value: (r) => f.score(r.median_score, "the median of its connections"), num: true },
      { label: "Worst connection", value: (r) => r.worst_connection_id && h("a", { href: entityLink("connections", r.worst_connection_id) }, f.shortId(r.worst_connection_id, 12)) },
    ], rows, "No session lived during this range. Pick a longer range, or run `rtclake demo`.", { "data-table": "sessions" }));
  }

  function sora(s, range) {
    if (!s.nodes.length && !s.traffic.length) {
      fill(el.sora, emptyState(
        "Sora's API poller stored nothing in this range. Add a source of type `sora_api` with your Sora " +
        "nodes (`RTCLAKE_SOURCES__SORA_API__TYPE=sora_api`, `RTCLAKE_SOURCES__SORA_API__NODES='[\"http://sora:3000/\"]'`; " +
        "docs/CONFIG.md) to chart Sora's own counters and Erlang VM figures here."));
      return;
    }
    const charts = {
      ongoing: h("div", { class: "chart", id: "chart-sora-ongoing" }),
      flow: h("div", { class: "chart", id: "chart-sora-flow" }),
      traffic: h("div", { class: "chart", id: "chart-sora-traffic" }),
      memory: h("div", { class: "chart", id: "chart-sora-memory" }),
    };
    fill(el.sora, h("div", { class: "grid" },
      panel("Ongoing connections", { unit: "per node" }, charts.ongoing),
      panel("Connections per minute", { unit: "Sora's counters: created solid, failed dotted" }, charts.flow),
      panel("Media through Sora", { unit: "Mbit/s, received blue, sent orange" }, charts.traffic),
      panel("Erlang VM memory", { unit: "MiB" }, charts.memory)));
    const color = (i) => COLORS.series[i % COLORS.series.length];
    const opts = { range, onZoom: zoomTo };
    timeChart(charts.ongoing, s.nodes.map((n, i) => ({ name: n.node, t: n.time, y: n.ongoing_connections, color: color(i) })),
      { ...opts, unit: "connections", digits: 0, empty: "No GetStatsReport in this range." });
    timeChart(charts.flow, s.nodes.flatMap((n, i) => [
      { name: `${n.node} created`, t: n.time, y: n.created_per_min, color: color(i) },
      { name: `${n.node} failed`, t: n.time, y: n.failed_per_min, color: color(i), dash: "dot" },
    ]), { ...opts, unit: "per min", digits: 1, empty: "No GetStatsReport in this range." });
    const mbit = (values) => values.map((v) => (v === null ? null : v / 1e6));
    timeChart(charts.traffic, s.traffic.flatMap((n, i) => [
      { name: `${n.node} received`, t: n.time, y: mbit(n.received_bps), color: COLORS.inbound[i % COLORS.inbound.length] },
      { name: `${n.node} sent`, t: n.time, y: mbit(n.sent_bps), color: COLORS.outbound[i % COLORS.outbound.length] },
    ]), { ...opts, unit: "Mbit/s", digits: 2, empty: "No GetStatsAllConnections in this range (two polls make a rate)." });
    timeChart(charts.memory, s.nodes.map((n, i) => ({ name: n.node, t: n.time, y: n.memory_mib, color: color(i) })),
      { ...opts, unit: "MiB", digits: 0, empty: "No GetStatsReport in this range." });
  }

  function zoomTo(from, to) {
    context.zoom(from, to);
  }

  return { load };
}
