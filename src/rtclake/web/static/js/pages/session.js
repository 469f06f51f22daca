// One session: its participants on a timeline (joined to left, coloured by score), their
// scores over time, and the table of who, when and how well.

import { h, fill, panel, table, errorBox } from "../dom.js";
import * as f from "../format.js";
import { COLORS, CONFIG, baseLayout, scoreBands, timeChart } from "../charts.js";
import { api, apiQuery, entityLink, link, timeRange } from "../state.js";

export function create(main, [sessionId], context) {
  const el = {
    crumbs: h("div", { class: "crumbs" }),
    title: h("div", { class: "title" }),
    error: h("div"),
    facts: h("dl", { class: "facts" }),
    timeline: h("div", { class: "chart", id: "chart-timeline" }),
    scores: h("div", { class: "chart", id: "chart-scores" }),
    participants: h("div"),
  };
  fill(main, el.crumbs, el.title, el.error,
    h("section", { class: "panel" }, el.facts),
    panel("Participants", { unit: "joined to left, coloured by average score", hint: "click a bar to open the connection" }, el.timeline),
    panel("Score over time", { unit: "1–5, per connection", hint: "green ≥ 4, amber ≥ 3, red below" }, el.scores),
    panel("Connections", { unit: "in the order they joined" }, el.participants));

  async function load() {
    let data;
    try {
      data = await api(`/api/dashboard/sessions/${encodeURIComponent(sessionId)}` + apiQuery(timeRange(true)));
      fill(el.error);
    } catch (error) {
      fill(el.error, errorBox(error));
      if (error.status === 404) fill(el.facts, `No data of session ${sessionId} is stored. Check the id, or the time: a session shows once its first batch is written.`);
      throw error;
    }
    const s = data.session;
    const people = data.participants;
    const end = s.destroyed_at || null;
    const lastSeen = [s.last_seen, s.last_event].filter(Boolean).sort().pop();
    const live = !end && lastSeen && new Date(data.now) - new Date(lastSeen) < 180_000;
    fill(el.crumbs, h("a", { href: link("/", {}, ["refresh"]) }, "Overview"), " / channel ",
      h("a", { href: link("/", { channel: s.channel_id }, ["refresh"]) }, s.channel_id || "?"));
    fill(el.title, h("h1", {}, "Session ", h("span", { class: "mono" }, sessionId)),
      h("span", { class: `pill ${live ? "live" : "ended"}` }, end ? "ended" : live ? "live" : "no end logged"));
    const started = s.created_at || s.first_seen;
    const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value ?? "–"));
    // no participant with a score: no worst one (Math.min of nothing is Infinity)
    const scores = people.map((p) => p.score).filter(Number.isFinite);
    fill(el.facts,
      fact("Channel", s.channel_id),
      fact("Started", f.time(started)),
      fact("Ended", end ? f.time(end) : live ? "still live" : "–"),
      fact("Duration", f.duration(f.between(started, end || lastSeen))),
      fact("Connections", f.num(people.length)),
      fact("Most at once", f.num(s.max_connections)),
      fact("Worst score", f.score(scores.length ? Math.min(...scores) : null)));
    timeline(people, data);
    scoreChart(data);
    participantsTable(people);
  }

  function label(p) {
    return `${p.client_id || "?"} · ${p.connection_id.slice(0, 6)}`;
  }

  function timeline(people, data) {
    const Plotly = window.Plotly;
    const rows = people.filter((p) => p.joined);
    if (!rows.length || !Plotly) {
      fill(el.timeline, h("div", { class: "chart-empty" }, "No connection of this session has a join time."));
      return;
    }
    if (!el.timeline.classList.contains("js-plotly-plot")) el.timeline.replaceChildren();
    const ends = rows.map((p) => p.left_at || p.last_seen || data.now);
    const trace = {
      type: "bar",
      orientation: "h",
      y: rows.map(label),
      base: rows.map((p) => f.plotlyLocal(new Date(p.joined))),
      x: rows.map((p, i) => Math.max(1000, new Date(ends[i]) - new Date(p.joined))),
      marker: { color: rows.map((p) => f.band(p.score).color), line: { width: 0 } },
      customdata: rows.map((p, i) => [
        p.connection_id, `${new Date(p.joined).toLocaleTimeString()} local · ${f.utcText(new Date(p.joined))}`,
        p.left_at ? f.utcText(new Date(p.left_at)) : "still connected (last report " + f.utcText(new Date(ends[i])) + ")",
        p.score === null ? "–" : p.score.toFixed(2), p.role || "", p.reason || "",
      ]),
      hovertemplate: "<b>%{y}</b> (%{customdata[4]})<br>joined %{customdata[1]}" +
        "<br>left %{customdata[2]} %{customdata[5]}<br>score %{customdata[3]}<extra></extra>",
      width: 0.6,
    };
    const layout = baseLayout({ range: data.range, height: 50 + 30 * rows.length, revision: sessionId });
    layout.showlegend = false;
    layout.yaxis = { autorange: "reversed", automargin: true, type: "category", gridcolor: "#eef1f4" };
    layout.hovermode = "closest";
    Plotly.react(el.timeline, [trace], layout, CONFIG);
    if (!el.timeline.dataset.bound) {
      el.timeline.dataset.bound = "1";
      el.timeline.on("plotly_click", (event) => {
        const id = event.points && event.points[0] && event.points[0].customdata[0];
        if (id) location.assign(entityLink("connections", id));
      });
    }
  }

  function scoreChart(data) {
    const clients = new Map(data.participants.map((p) => [p.connection_id, p.client_id]));
    timeChart(el.scores, data.scores.map((s, i) => ({
      name: `${clients.get(s.connection_id) || "?"} · ${s.connection_id.slice(0, 6)}`,
      t: s.time, y: s.score, color: COLORS.series[i % COLORS.series.length],
      text: s.min_score.map((m) => (m === null ? "" : ` (lowest report ${m.toFixed(2)})`)),
    })), {
      unit: "score", digits: 2, range: data.range, yRange: [1, 5.05], shapes: scoreBands(),
      empty: "No connection of this session has a score in this range (scores need two stats reports).",
      onZoom: context.zoom,
      onClick: (point) => {
        const s = data.scores[point.curveNumber];
        if (s) location.assign(entityLink("connections", s.connection_id));
      },
    });
  }

  function participantsTable(people) {
    fill(el.participants, table([
      { label: "Client", value: (p) => p.client_id },
      { label: "Connection", value: (p) => h("a", { href: entityLink("connections", p.connection_id) }, h("span", { class: "mono" }, p.connection_id)) },
      { label: "Role", value: (p) => p.role },
      { label: "Joined", value: (p) => f.time(p.joined) },
      { label: "Left", value: (p) => p.left_at ? f.time(p.left_at) : h("span", { class: "pill live" }, "connected") },
      { label: "Duration", value: (p) => f.duration(f.between(p.joined, p.left_at || p.last_seen)), num: true },
      { label: "Reason", value: (p) => p.reason },
      { label: "Score", value: (p) => f.score(p.score), num: true, title: "average over the session" },
      { label: "Worst", value: (p) => f.score(p.worst_score, "lowest report"), num: true },
      { label: "Audio MOS", value: (p) => f.num(p.mos_audio, 2), num: true },
      { label: "Video", value: (p) => f.num(p.video_score, 2), num: true },
    ], people, "No connection of this session is stored yet.", { "data-table": "participants" }));
  }

  return { load, whole: "session" };
}
