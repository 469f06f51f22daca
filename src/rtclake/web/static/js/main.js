// The dashboard's shell: the navigation, the time-range picker and the refresh toggle in
// the header, and the page the URL names. Every page module exports
// create(main, args, context) -> {load(), whole?, ranged?}; load() fetches and draws.
//
// body[data-state] is "loading", "ready" or "error" and body[data-loads] counts finished
// loads: the browser tests wait on them.

import { h, fill, errorBox } from "./dom.js";
import { timeText } from "./format.js";
import { RANGES, REFRESH, link, navigate, refreshSetting, timeRange } from "./state.js";
import * as overview from "./pages/overview.js";
import * as session from "./pages/session.js";
import * as connection from "./pages/connection.js";
import * as tables from "./pages/tables.js";
import * as sql from "./pages/sql.js";
import * as login from "./pages/login.js";

const ROUTES = [
  [/^\/$/, overview.create, "overview"],
  [/^\/sessions\/([^/]+)$/, session.create, "overview"],
  [/^\/connections\/([^/]+)$/, connection.create, "overview"],
  [/^\/tables$/, tables.createList, "tables"],
  [/^\/tables\/([^/]+)$/, tables.createTable, "tables"],
  [/^\/sql$/, sql.create, "sql"],
  [/^\/login$/, login.create, null],
];

const main = document.getElementById("page");
const nav = document.getElementById("nav");
const controls = document.getElementById("controls");
let page = null;
let section = null;
let timer = null;
let busy = false;
let loads = 0;

function route() {
  for (const [pattern, create, where] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (match) {
      section = where;
      return create(main, match.slice(1).map(decodeURIComponent), { zoom });
    }
  }
  section = null;
  return { load: async () => fill(main, errorBox(new Error(`No page at ${location.pathname}.`))) };
}

/** A chart was zoomed: that stretch becomes the page's range. */
function zoom(from, to) {
  navigate(link(location.pathname, { from: from.toISOString(), to: to.toISOString(), range: null }));
}

function setStatus(text, error = false) {
  const status = document.getElementById("status");
  if (status) {
    status.textContent = text;
    status.classList.toggle("error", error);
  }
}

async function load() {
  if (busy) return;
  busy = true;
  document.body.dataset.state = "loading";
  setStatus("Loading…");
  try {
    await page.load();
    const now = new Date();
    setStatus(`Updated ${now.toLocaleTimeString()}`);
    document.body.dataset.state = "ready";
  } catch (error) {
    setStatus("Not updated", true);
    document.body.dataset.state = "error";
    if (error.status !== 401) console.error(error); // a 401 goes to the login form
  } finally {
    busy = false;
    loads += 1;
    document.body.dataset.loads = String(loads);
  }
}

function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function navLink(path, label, name) {
  return h("a", { href: link(path, {}, ["range", "from", "to", "refresh"]), class: section === name ? "active" : null }, label);
}

/** A link in the header changes the URL and reloads the data, not the page. */
function inPlace(href, label, active, title) {
  return h("a", {
    href, class: active ? "active" : null, title,
    onclick: (event) => { event.preventDefault(); navigate(href); },
  }, label);
}

function renderHeader() {
  fill(nav, navLink("/", "Overview", "overview"), navLink("/tables", "Tables", "tables"), navLink("/sql", "SQL", "sql"));
  const parts = [];
  if (page.ranged !== false) {
    const current = timeRange(page.whole);
    const presets = page.whole ? ["all", ...RANGES] : RANGES;
    const label = (r) => (r === "all" ? `Whole ${page.whole}` : r);
    const from = h("input", { type: "datetime-local", value: localInput(current.from), "aria-label": "from" });
    const to = h("input", { type: "datetime-local", value: localInput(current.to), "aria-label": "to" });
    const apply = (event) => {
      event.preventDefault();
      if (!from.value) return;
      const start = new Date(from.value);
      const end = to.value ? new Date(to.value) : new Date();
      navigate(link(location.pathname, { from: start.toISOString(), to: end.toISOString(), range: null }));
    };
    const customTitle = current.from ? `${timeText(current.from)} – ${current.to ? timeText(current.to) : "now"}` : "Custom…";
    parts.push(h("div", { class: "group", role: "group", "aria-label": "time range" },
      presets.map((r) => inPlace(link(location.pathname, { range: r, from: null, to: null }), label(r),
        !current.from && current.range === r, r === "all" ? "from its start to its end" : `the last ${r}`)),
      h("details", { class: "custom" },
        h("summary", { class: current.from ? "active" : null, title: "a range of your own (local time)" }, customTitle),
        h("form", { class: "popup", onsubmit: apply },
          h("label", {}, "From (local time)", from),
          h("label", {}, "To (empty: now)", to),
          h("button", { class: "primary", type: "submit" }, "Apply")))));
  }
  if (page.refreshable !== false) {
    const current = refreshSetting();
    parts.push(h("div", { class: "group", role: "group", "aria-label": "auto-refresh" },
      h("span", { class: "label" }, "Refresh"),
      Object.keys(REFRESH).map((r) => inPlace(link(location.pathname, { refresh: r === "off" ? null : r }), r,
        current === r, r === "off" ? "no auto-refresh" : `reload the data every ${r}`))));
  }
  parts.push(h("span", { class: "status", id: "status", "aria-live": "polite" }));
  if (document.body.dataset.auth === "token" && location.pathname !== "/login") {
    parts.push(h("form", { method: "post", action: "/api/dashboard/logout", class: "group" },
      h("button", { type: "submit", title: "forget the login cookie of this browser" }, "Log out")));
  }
  fill(controls, parts);
}

function schedule() {
  clearInterval(timer);
  const every = page.refreshable === false ? 0 : REFRESH[refreshSetting()];
  if (every) timer = setInterval(() => { if (!document.hidden) load(); }, every);
}

function start() {
  main.dataset.path = location.pathname;
  page = route();
  renderHeader();
  schedule();
  load();
}

/** Same page, other state (range, refresh): reload the data only. */
function restate() {
  const path = main.dataset.path;
  if (path !== location.pathname) {
    start();
    return;
  }
  renderHeader();
  schedule();
  load();
}

window.addEventListener("rtclake:navigate", restate);
window.addEventListener("popstate", restate);
start();
