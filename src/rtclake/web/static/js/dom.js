// Building the page: elements from plain values (text is always text, never HTML),
// tables, and the messages a page shows when it has nothing to show.

/** An element: h("a", {href: "/x", class: "c"}, "text", child, ...). Attributes starting
 * with "on" are event handlers; null, undefined and false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the content of ``el``. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A panel: a header (title, unit, hint) and a body. */
export function panel(title, { unit, hint, id, cls } = {}, ...body) {
  return h("section", { class: "panel " + (cls || ""), id },
    h("header", {}, h("h3", {}, title), unit ? h("span", { class: "unit" }, unit) : null,
      hint ? h("span", { class: "hint" }, hint) : null),
    ...body);
}

/** A table of ``rows``; each column: {label, value: row => text or node, num, title, cls}.
 * With no rows, ``empty`` (a message node or text) instead. */
export function table(columns, rows, empty, attrs = {}) {
  if (!rows || rows.length === 0) return emptyState(empty || "Nothing to show.");
  const head = h("tr", {}, columns.map((c) =>
    h("th", { class: c.num ? "num" : null, title: c.title }, c.label)));
  const body = rows.map((row) => h("tr", {}, columns.map((c) => {
    const value = c.value(row);
    const cell = value === null || value === undefined || value === "" ? h("span", { class: "null" }, "–") : value;
    return h("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null }, cell);
  })));
  return h("div", { class: "table-wrap" }, h("table", attrs, h("thead", {}, head), h("tbody", {}, body)));
}

/** A message for an empty place: text, with `code` spans for text between backticks. */
export function emptyState(message, cls = "empty") {
  if (message instanceof Node) return h("div", { class: cls }, message);
  const parts = String(message).split("`");
  return h("div", { class: cls }, h("p", {}, parts.map((part, i) => (i % 2 ? h("code", {}, part) : part))));
}

export function errorBox(error) {
  return h("div", { class: "error", role: "alert" }, error.message || String(error));
}
