// One connection: who and when, the diagnosis (GET /api/connections/{id}/diagnosis), its
// quality score over time, and a chart for every rate of rtc_rates (docs/METRICS.md) per
// stream: received (inbound) blue, sent (outbound) orange, what the receiver reports of
// what was sent in amber, the network path grey; audio solid, video dashed.

import { h, fill, panel, table, errorBox, emptyState } from "../dom.js";
import * as f from "../format.js";
import { COLORS, family, scoreBands, spanShape, streamLine, swatch, timeChart } from "../charts.js";
import { api, apiQuery, entityLink, link, timeRange } from "../state.js";

const MEDIA = ["inbound-rtp", "outbound-rtp"];
const CHARTS = [
  { id: "bitrate", title: "Bitrate", unit: "kbit/s", metric: "bitrate_bps", scale: 1e-3, types: MEDIA, digits: 0 },
  { id: "packets", title: "Packets", unit: "packets/s", metric: "packets_per_s", types: MEDIA, digits: 0 },
  { id: "loss", title: "Packet loss", unit: "%", metric: "loss_pct", types: ["inbound-rtp", "remote-inbound-rtp"], digits: 2,
    hint: "received: lost on the way here; sent: as the receiver reports" },
  { id: "jitter", title: "Jitter", unit: "ms", metric: "jitter_ms", types: ["inbound-rtp", "remote-inbound-rtp"], digits: 1 },
  // otherwise: the streams read when none of the types has the metric (LiveKit's stats
  // carry their rtt on the streams themselves), as the diagnosis does
  { id: "rtt", title: "Round-trip time", unit: "ms", metric: "rtt_ms", types: ["remote-inbound-rtp", "candidate-pair"], otherwise: MEDIA, digits: 0 },
  { id: "jitter-buffer", title: "Jitter buffer delay", unit: "ms", metric: "jitter_buffer_ms", types: ["inbound-rtp"], digits: 0 },
  { id: "fps", title: "Frame rate", unit: "fps", metric: "fps", types: MEDIA, kind: "video", digits: 1 },
  { id: "resolution", title: "Resolution", unit: "px (frame height)", metric: "frame_height", types: MEDIA, kind: "video", digits: 0 },
  { id: "freezes", title: "Freezes", unit: "per min", metric: "freezes_per_min", types: ["inbound-rtp"], kind: "video", digits: 2 },
  { id: "concealment", title: "Concealment", unit: "% of samples", metric: "concealment_pct", types: ["inbound-rtp"], kind: "audio", digits: 2,
    hint: "audio the receiver had to make up" },
  { id: "nack", title: "NACKs", unit: "per min", metric: "nack_per_min", types: MEDIA, digits: 1, hint: "retransmission requests" },
  { id: "keyframes", title: "Keyframe requests", unit: "per min", metrics: ["pli_per_min", "fir_per_min"], types: MEDIA, kind: "video", digits: 1,
    hint: "PLI solid, FIR dotted" },
];
const REASONS = [
  ["none", "not limited", "#2da44e"],
  ["bandwidth", "bandwidth", "#cf222e"],
  ["cpu", "CPU", "#8250df"],
  ["other", "other", "#8c959f"],
];
// Which chart shows the metric a finding is about.
const FINDING_CHART = {
  loss_pct: "loss", rtt_ms: "rtt", jitter_ms: "jitter", fps: "fps", freezes_per_min: "freezes",
  bitrate_bps: "bitrate", quality_limitation_bandwidth_share: "limitation",
  quality_limitation_cpu_share: "limitation",
};

/** A client id as a legend shows it: whole when short, else its start. */
function short(id) {
  return id && id.length > 14 ? id.slice(0, 8) + "…" : id;
}

export function create(main, [connectionId], context) {
  const charts = {};
  const chart = (id, tall = false) => (charts[id] = h("div", { class: tall ? "chart tall" : "chart", id: `chart-${id}` }));
  const el = {
    crumbs: h("div", { class: "crumbs" }),
    title: h("div", { class: "title" }),
    error: h("div"),
    facts: h("dl", { class: "facts" }),
    diagnosis: h("div", { id: "diagnosis" }),
    legend: h("div", { class: "legend", id: "streams-legend" }),
    streams: h("div"),
  };
  fill(main, el.crumbs, el.title, el.error,
    h("section", { class: "panel" }, el.facts),
    panel("Diagnosis", { hint: "thresholds: diagnosis: in the configuration" }, el.diagnosis),
    h("div", { class: "key" },
      h("span", { class: "in" }, "received (inbound)"), h("span", { class: "out" }, "sent (outbound)"),
      h("span", { class: "audio" }, "audio"), h("span", { class: "video" }, "video"),
      h("span", {}, "shaded: a finding of the diagnosis"), h("span", {}, "drag on a chart to zoom the range")),
    el.legend,
    h("div", { class: "grid" },
      panel("Quality score", { unit: "1–5", hint: "score = the lower of audio MOS and video score" }, chart("score")),
      CHARTS.map((c) => panel(c.title, { unit: c.unit, hint: c.hint }, chart(c.id))),
      panel("Quality limitation", { unit: "% of the time, sent video", hint: "why the encoder lowered quality" }, chart("limitation"))),
    h("div", { style: "margin-top:1rem" }, panel("Streams", { unit: "the RTCStats objects charted" }, el.streams)));

  async function load() {
    const range = timeRange(true);
    const id = encodeURIComponent(connectionId);
    const [data, diagnosis] = await Promise.all([
      api(`/api/dashboard/connections/${id}` + apiQuery(range)).catch((error) => ({ error })),
      api(`/api/connections/${id}/diagnosis`).catch((error) => ({ error })),
    ]);
    if (data.error) {
      fill(el.error, errorBox(data.error));
      if (data.error.status === 404) {
        fill(el.facts, emptyState(`No data of connection ${connectionId} is stored. Check the id, or the time: a connection shows once its first batch is written.`));
      }
      throw data.error;
    }
    fill(el.error);
    header(data);
    showDiagnosis(diagnosis);
    draw(data, diagnosis.error ? [] : diagnosis.findings);
    streamsTable(data.streams);
  }

  function header(data) {
    const c = data.connection;
    const live = !c.left_at && c.last_seen && new Date(data.now) - new Date(c.last_seen) < 120_000;
    fill(el.crumbs,
      h("a", { href: link("/", {}, ["refresh"]) }, "Overview"), " / channel ",
      h("a", { href: link("/", { channel: c.channel_id }, ["refresh"]) }, c.channel_id || "?"), " / session ",
      c.session_id ? h("a", { href: entityLink("sessions", c.session_id) }, h("span", { class: "mono" }, c.session_id)) : "?");
    fill(el.title,
      h("h1", {}, "Connection ", h("span", { class: "mono" }, connectionId)),
      f.score(c.score, "average score of the connection"),
      h("span", { class: `pill ${live ? "live" : "ended"}` }, c.left_at ? "ended" : live ? "live" : "no end logged"));
    const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value ?? "–"));
    fill(el.facts,
      fact("Client", c.client_id), fact("Role", c.role), fact("Channel", c.channel_id),
      fact("Joined", f.time(c.joined)), fact("Left", c.left_at ? f.time(c.left_at) : live ? "still connected" : "–"),
      fact("Duration", f.duration(f.between(c.joined, c.left_at || c.last_seen))),
      fact("Reason", c.reason), fact("Sora node", c.node_name), fact("Reports", f.num(c.reports)),
      fact("Audio MOS", f.num(c.mos_audio, 2)), fact("Video score", f.num(c.video_score, 2)),
      fact("Worst report", f.score(c.worst_score, "lowest report")));
  }

  function showDiagnosis(d) {
    if (d.error) {
      fill(el.diagnosis, d.error.status === 404 ? emptyState("No diagnosis: no stats of this connection are stored.") : errorBox(d.error));
      return;
    }
    const items = d.findings.map((x) => h("li", { dataset: { code: x.code } },
      h("span", {}, h("span", { class: `pill ${x.severity}` }, x.severity)),
      h("code", {}, x.code),
      h("span", { class: "when" }, f.time(x.start), " – ", f.time(x.end)),
      h("span", { class: "msg" }, x.message)));
    fill(el.diagnosis,
      h("p", { class: "summary" }, d.summary),
      items.length ? h("ul", { class: "findings" }, items) : null);
  }

  /** Name, colour and dash of each stream, by direction and peer. */
  function styles(data) {
    const byId = new Map(data.streams.map((s) => [s.stats_id, s]));
    const peers = [...new Set(data.streams.map((s) => s.peer_connection_id).filter(Boolean))];
    const counts = {};
    const out = new Map();
    for (const r of data.rates) {
      const s = byId.get(r.stats_id) || {};
      const kind = r.media_kind || "";
      let index;
      let name;
      if (r.stats_type === "inbound-rtp") {
        const peer = s.peer_connection_id;
        index = peer ? peers.indexOf(peer) : 0;
        name = `received ${kind}` + (peer ? ` from ${short(s.peer_client_id) || peer.slice(0, 8)}` : "");
      } else {
        const key = `${r.stats_type}/${kind}`;
        index = counts[key] = (counts[key] ?? -1) + 1;
        name = {
          "outbound-rtp": `sent ${kind}`,
          "remote-inbound-rtp": `sent ${kind}, as received`,
          "candidate-pair": "network path",
        }[r.stats_type] || r.stats_type;
        if (index > 0) name += ` #${index + 1}`;
      }
      out.set(r.stats_id, { name, ...streamLine(r.stats_type, r.media_kind, index) });
    }
    return out;
  }

  function draw(data, findings) {
    const style = styles(data);
    // one legend for every chart: a stream has the same colour and dash everywhere
    fill(el.legend, [...style.values()].map((st) => h("span", {}, swatch(st.color, st.dash), st.name)));
    const shapes = {};
    const seen = new Set();
    for (const x of findings) {
      const target = FINDING_CHART[x.evidence && x.evidence.metric] || "score";
      const key = `${target} ${x.start} ${x.end}`;
      if (seen.has(key)) continue; // several streams, one stretch: shade it once (the worst first)
      seen.add(key);
      (shapes[target] ||= []).push(spanShape(x.start, x.end, x.severity));
    }
    const base = { range: data.range, onZoom: context.zoom };
    const s = data.scores;
    timeChart(charts.score, [
      { name: "score", t: s.time, y: s.score, color: "#24292f", width: 2.4 },
      { name: "audio MOS", t: s.time, y: s.mos_audio, color: COLORS.series[1], dash: "solid", width: 1.2 },
      { name: "video score", t: s.time, y: s.video_score, color: COLORS.series[1], dash: "dash", width: 1.2 },
    ], { ...base, unit: "score", digits: 2, yRange: [1, 5.05], shapes: [...scoreBands(), ...(shapes.score || [])],
      empty: "No score in this range: a score needs two stats reports of the connection." });
    const having = (metric) => (r) => r[metric].some((v) => v !== null);
    for (const c of CHARTS) {
      const of = (types) => data.rates.filter((r) => types.includes(r.stats_type) && (!c.kind || r.media_kind === c.kind));
      let rows = of(c.types);
      if (c.otherwise && !rows.some(having(c.metric))) rows = of(c.otherwise).filter(having(c.metric));
      const metrics = c.metrics || [c.metric];
      const traces = [];
      for (const r of rows) {
        metrics.forEach((metric, i) => {
          const st = style.get(r.stats_id);
          const values = r[metric].map((v) => (v === null || c.scale === undefined ? v : v * c.scale));
          const text = c.id === "resolution"
            ? r.frame_width.map((w, j) => (w && r.frame_height[j] ? ` (${Math.round(w)}×${Math.round(r.frame_height[j])})` : ""))
            : undefined;
          traces.push({
            name: metrics.length > 1 ? `${st.name} ${metric.split("_")[0].toUpperCase()}` : st.name,
            t: r.time, y: values, color: st.color, dash: metrics.length > 1 ? (i ? "dot" : "solid") : st.dash, text,
            shape: c.id === "resolution" ? "hv" : "linear",
          });
        });
      }
      const what = c.kind ? `${c.kind} stream` : "stream";
      timeChart(charts[c.id], traces, {
        ...base, unit: c.unit, digits: c.digits, shapes: shapes[c.id], legend: false,
        empty: `No ${what} of this connection reports ${c.title.toLowerCase()} in this range.`,
      });
    }
    limitation(data, style, shapes.limitation);
  }

  function limitation(data, style, shapes) {
    const sent = data.rates.find((r) => r.stats_type === "outbound-rtp" && r.media_kind === "video" &&
      REASONS.some(([reason]) => r[`quality_limitation_${reason}_share`].some((v) => v !== null)));
    const traces = sent ? REASONS.map(([reason, label, color]) => ({
      name: label, t: sent.time, y: sent[`quality_limitation_${reason}_share`].map((v) => (v === null ? null : 100 * v)),
      color, stack: "limitation", fill: color + "99",
    })) : [];
    timeChart(charts.limitation, traces, {
      range: data.range, onZoom: context.zoom, unit: "% of the time", digits: 0, yRange: [0, 100], shapes,
      empty: "This connection sends no video whose quality-limitation durations are reported.",
    });
  }

  function streamsTable(streams) {
    const direction = (s) => ({ inbound: "received", outbound: "sent", remote: "sent (receiver's report)", path: "network path" })[family(s.stats_type)];
    fill(el.streams, table([
      { label: "Stats id", value: (s) => h("span", { class: "mono" }, s.stats_id) },
      { label: "Type", value: (s) => s.stats_type },
      { label: "Direction", value: direction },
      { label: "Kind", value: (s) => s.media_kind },
      { label: "From", value: (s) => s.peer_connection_id && h("a", { href: entityLink("connections", s.peer_connection_id) },
        s.peer_client_id || "", " ", f.shortId(s.peer_connection_id, 8)) },
      { label: "First", value: (s) => f.time(s.first_seen) },
      { label: "Last", value: (s) => f.time(s.last_seen) },
    ], streams, "No stream of this connection is stored.", { "data-table": "streams" }));
  }

  return { load, whole: "connection" };
}
