// The table explorer: every table of the lake (rows in the range, the latest row, the
// columns) and every view; one table's latest rows, with empty columns hidden.

import { h, fill, panel, table, errorBox } from "../dom.js";
import * as f from "../format.js";
import { api, apiQuery, link, timeRange } from "../state.js";

export function createList(main) {
  const el = { title: h("div", { class: "title" }), error: h("div"), tables: h("div"), views: h("div") };
  fill(main, el.title, el.error,
    panel("Tables", { unit: "stored in the lake as Parquet", hint: "rows whose time is in the range" }, el.tables),
    panel("Views", { unit: "computed at query time from the tables (docs/METRICS.md, docs/QUALITY.md)" }, el.views));

  async function load() {
    let data;
    try {
      data = await api("/api/dashboard/tables" + apiQuery(timeRange(false)));
      fill(el.error);
    } catch (error) {
      fill(el.error, errorBox(error));
      throw error;
    }
    const r = data.range;
    fill(el.title, h("h1", {}, "Tables"),
      h("span", { class: "sub" }, `${r.range ? "last " + r.range + " · " : ""}${f.timeText(r.from)} – ${f.timeText(r.to)}`));
    const open = (name) => h("a", { href: link(`/tables/${encodeURIComponent(name)}`) }, h("span", { class: "mono" }, name));
    fill(el.tables, table([
      { label: "Table", value: (t) => open(t.name) },
      { label: "Rows", value: (t) => f.num(t.rows), num: true, title: "rows whose time is in the range" },
      { label: "Latest row", value: (t) => f.time(t.latest) },
      { label: "Columns", value: (t) => f.num(t.columns.length), num: true },
      { label: "Description", value: (t) => t.description, cls: "wrap" },
    ], data.tables, "This installation knows no table.", { "data-table": "tables" }));
    fill(el.views, table([
      { label: "View", value: (v) => open(v.name) },
      { label: "Columns", value: (v) => f.num(v.columns.length), num: true },
      { label: "Description", value: (v) => v.description, cls: "wrap" },
    ], data.views, "No integration registers a view.", { "data-table": "views" }));
  }

  return { load };
}

/** A cell of a result: NULL as a dash, times in local time, JSON shortened. */
export function cell(value, type) {
  if (value === null || value === undefined) return null;
  if (typeof type === "string" && type.startsWith("TIMESTAMP") && typeof value === "string") return f.time(value);
  if (typeof value === "object") {
    const text = JSON.stringify(value);
    return h("span", { title: text.length > 80 ? text.slice(0, 2000) : null }, text.length > 80 ? text.slice(0, 80) + "…" : text);
  }
  const text = String(value);
  return text.length > 80 ? h("span", { title: text.slice(0, 2000) }, text.slice(0, 80) + "…") : text;
}

/** A result ({columns, types, rows}) as a table; ``hideEmpty`` leaves out columns that
 * are NULL in every row. */
export function resultTable(result, hideEmpty, empty) {
  const shown = result.columns.map((name, i) => i).filter((i) => !hideEmpty || result.rows.some((row) => row[i] !== null));
  return table(shown.map((i) => ({
    label: result.columns[i],
    title: result.types[i],
    num: /INT|DOUBLE|FLOAT|DECIMAL|REAL/.test(result.types[i]),
    value: (row) => cell(row[i], result.types[i]),
  })), result.rows, empty, { class: "data", "data-table": "result" });
}

export function createTable(main, [name]) {
  const el = {
    crumbs: h("div", { class: "crumbs" }, h("a", { href: link("/tables") }, "Tables"), " / ", name),
    title: h("div", { class: "title" }),
    error: h("div"),
    toolbar: h("div", { class: "toolbar" }),
    rows: h("div"),
    columnsTitle: h("summary", {}, "Columns"),
    columns: h("div"),
  };
  let hideEmpty = true;
  let last = null;
  fill(main, el.crumbs, el.title, el.error, el.toolbar,
    panel("Latest rows", { unit: "newest first, in the range" }, h("div", { class: "scroll" }, el.rows)),
    h("section", { class: "panel" }, h("details", { class: "columns" }, el.columnsTitle, el.columns)));

  function drawRows() {
    if (!last) return;
    const note = last.timed ? "No row of this table is in the range. Pick a longer range, or run `rtclake demo`." : "This view has no row.";
    fill(el.rows, resultTable(last.result, hideEmpty, note));
  }

  async function load() {
    try {
      last = await api(`/api/dashboard/tables/${encodeURIComponent(name)}` + apiQuery(timeRange(false)));
      fill(el.error);
    } catch (error) {
      fill(el.error, errorBox(error));
      throw error;
    }
    const r = last.range;
    fill(el.title, h("h1", { class: "mono" }, name), h("span", { class: "pill info" }, last.kind),
      h("span", { class: "sub" }, last.description));
    const where = last.timed ? `\nWHERE time >= TIMESTAMPTZ '${r.from}' AND time < TIMESTAMPTZ '${r.to}'\nORDER BY time DESC` : "";
    const sql = `SELECT *\nFROM ${name}${where}\nLIMIT 100`;
    fill(el.toolbar,
      h("a", { class: "button", href: link("/sql", { q: sql }, []) }, "Query in the SQL console"),
      h("label", {}, h("input", {
        type: "checkbox", checked: hideEmpty ? true : null,
        onchange: (event) => { hideEmpty = event.target.checked; drawRows(); },
      }), " hide columns that are empty in these rows"),
      h("span", { class: "meta" }, `${f.num(last.result.rows.length)} rows` + (last.result.truncated ? " (the latest; more in the range)" : "")));
    drawRows();
    fill(el.columnsTitle, `Columns (${last.columns.length}): names, types and where each comes from`);
    fill(el.columns, table([
      { label: "Column", value: (c) => h("span", { class: "mono" }, c.name) },
      { label: "Type", value: (c) => c.type && h("span", { class: "mono" }, c.type) },
      { label: "Meaning", value: (c) => c.description, cls: "wrap" },
    ], last.columns, "No column is documented.", { "data-table": "columns" }));
  }

  return { load };
}
