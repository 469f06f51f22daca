// The SQL console: one read-only SELECT through POST /api/query (its rules: one
// statement, the lake's files only, row and time limits). The query is kept in the URL
// (?q=), so a result can be shared; a result whose first column is a time is charted.

import { h, fill, panel, errorBox } from "../dom.js";
import * as f from "../format.js";
import { COLORS, timeChart } from "../charts.js";
import { api, params } from "../state.js";
import { resultTable } from "./tables.js";

const EXAMPLES = [
  ["Connections per channel",
    "SELECT channel_id, count(DISTINCT connection_id) AS connections\nFROM rtc_stats\nGROUP BY channel_id\nORDER BY connections DESC"],
  ["Video bitrate per minute, sent and received",
    "SELECT time_bucket(INTERVAL 1 MINUTE, time) AS minute, stats_type,\n       avg(bitrate_bps) / 1000 AS kbps\nFROM rtc_rates\nWHERE media_kind = 'video' AND stats_type IN ('inbound-rtp', 'outbound-rtp')\n  AND time > now() - INTERVAL 1 HOUR\nGROUP BY ALL\nORDER BY minute"],
  ["Connections that lost more than 5 % of their audio",
    "SELECT connection_id, max(loss_pct) AS worst_loss\nFROM rtc_rates\nWHERE time > now() - INTERVAL 1 HOUR\n  AND stats_type = 'inbound-rtp' AND media_kind = 'audio'\nGROUP BY connection_id\nHAVING worst_loss > 5\nORDER BY worst_loss DESC"],
  ["Worst connections by score",
    "SELECT connection_id, channel_id, avg(score) AS score, min(score) AS worst\nFROM connection_quality\nGROUP BY ALL\nORDER BY score\nLIMIT 20"],
  ["Sessions, worst first", "SELECT *\nFROM session_quality\nORDER BY worst_score\nLIMIT 20"],
  ["Connections relayed by TURN",
    "SELECT connection_id, any_value(relay_protocol) AS relay_protocol, count(*) AS reports\nFROM connection_transport\nWHERE local_candidate_type = 'relay'\nGROUP BY connection_id"],
];

export function create(main) {
  const initial = params().get("q") || EXAMPLES[0][1];
  const editor = h("textarea", { class: "sql", spellcheck: "false", "aria-label": "SQL" });
  editor.value = initial;
  const meta = h("span", { class: "meta" });
  const out = { error: h("div"), chart: h("div"), table: h("div") };
  const examples = h("select", { "aria-label": "examples", onchange: (event) => {
    const found = EXAMPLES.find(([label]) => label === event.target.value);
    if (found) editor.value = found[1];
    event.target.value = "";
  } }, h("option", { value: "" }, "Examples…"), EXAMPLES.map(([label]) => h("option", { value: label }, label)));
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    }
  });
  fill(main,
    h("div", { class: "title" }, h("h1", {}, "SQL console"),
      h("span", { class: "sub" }, "one read-only SELECT over the lake's tables and views, as POST /api/query runs it")),
    h("section", { class: "panel" }, editor,
      h("div", { class: "toolbar" },
        h("button", { class: "primary", onclick: run, title: "Ctrl+Enter" }, "Run"), examples,
        h("a", { href: "/tables" }, "tables and columns"), meta)),
    out.error, out.chart, out.table);

  async function run() {
    const sql = editor.value.trim();
    if (!sql) return;
    const url = new URL(location.href);
    url.searchParams.set("q", sql);
    history.replaceState(null, "", url);
    fill(meta, "Running…");
    let result;
    try {
      result = await api("/api/query", { sql });
    } catch (error) {
      fill(meta);
      fill(out.error, errorBox(error));
      fill(out.chart);
      fill(out.table);
      if (error.status === 400 || error.status === 422 || error.status === 413) return;
      throw error;
    }
    fill(out.error);
    fill(meta, `${f.num(result.row_count)} rows in ${f.num(result.elapsed_ms, 0)} ms` +
      (result.truncated ? " (truncated at the row limit: add LIMIT or aggregate)" : ""));
    chart(result);
    fill(out.table, panel("Result", {}, resultTable(result, false, "The query returned no row.")));
  }

  /** A chart when the first column is a time: each numeric column a line, one per value
   * of the first text column when there is one. */
  function chart(result) {
    fill(out.chart);
    if (!result.rows.length || !String(result.types[0]).startsWith("TIMESTAMP")) return;
    const numeric = result.types.map((t, i) => i).filter((i) => i > 0 && /INT|DOUBLE|FLOAT|DECIMAL|REAL/.test(result.types[i]));
    if (!numeric.length) return;
    const key = result.types.findIndex((t, i) => i > 0 && t === "VARCHAR");
    const groups = new Map();
    for (const row of result.rows) {
      const group = key >= 0 ? String(row[key]) : "";
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(row);
    }
    const traces = [];
    [...groups.entries()].slice(0, 12).forEach(([group, rows]) => numeric.forEach((i) => traces.push({
      name: [group, result.columns[i]].filter(Boolean).join(" "),
      t: rows.map((row) => row[0]), y: rows.map((row) => row[i]),
      color: COLORS.series[traces.length % COLORS.series.length],
    })));
    const el = h("div", { class: "chart", id: "chart-sql" });
    fill(out.chart, panel("Chart", { unit: `of ${result.columns[0]}`, hint: "drawn when the first column is a time" }, el));
    timeChart(el, traces, { unit: "", digits: 2, legend: true });
  }

  return {
    load: async () => { if (params().get("q")) await run(); },
    ranged: false,
    refreshable: false,
  };
}
