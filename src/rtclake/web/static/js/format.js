// How values read: numbers with their unit, times in the browser's local time (UTC on
// hover), durations, scores coloured by band.

import { h } from "./dom.js";

const numberFormats = new Map();

/** ``value`` with at most ``digits`` decimals and thousands separators; "–" for none. */
export function num(value, digits = 0) {
  if (value === null || value === undefined || value === "" || Number.isNaN(Number(value))) return "–";
  if (!numberFormats.has(digits)) {
    numberFormats.set(digits, new Intl.NumberFormat(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 }));
  }
  return numberFormats.get(digits).format(Number(value));
}

export function bitrate(bps) {
  if (bps === null || bps === undefined) return "–";
  if (bps >= 1e6) return `${num(bps / 1e6, 2)} Mbit/s`;
  return `${num(bps / 1e3, 0)} kbit/s`;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** A Date as Plotly's local "YYYY-MM-DD HH:MM:SS.mmm" (Plotly does not convert zones). */
export function plotlyLocal(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** Plotly's local text back to a Date. */
export function fromPlotlyLocal(text) {
  const [day, clock = "00:00:00"] = String(text).split(" ");
  const [y, mo, d] = day.split("-").map(Number);
  const [hh, mi, rest = "0"] = clock.split(":");
  const seconds = Number(rest);
  return new Date(y, mo - 1, d, Number(hh), Number(mi), Math.floor(seconds), Math.round((seconds % 1) * 1000));
}

export function utcText(date) {
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", "") + " UTC";
}

/** A time for a table: local clock (with the date when not today), UTC in the tooltip. */
export function time(iso, { withSeconds = true } = {}) {
  if (!iso) return null;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}` + (withSeconds ? `:${pad(date.getSeconds())}` : "");
  const text = sameDay ? clock : `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock}`;
  return h("time", { datetime: date.toISOString(), title: utcText(date) }, text);
}

/** Local text of a time (for headings). */
export function timeText(iso) {
  const date = new Date(iso);
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function between(startIso, endIso) {
  if (!startIso || !endIso) return null;
  return (new Date(endIso) - new Date(startIso)) / 1000;
}

export const SCORE_BANDS = [
  { min: 4, cls: "good", color: "#1a7f37", label: "good (4 or more)" },
  { min: 3, cls: "fair", color: "#bf8700", label: "fair (3 to 4)" },
  { min: -Infinity, cls: "poor", color: "#cf222e", label: "poor (below 3)" },
];

export function band(score) {
  if (score === null || score === undefined) return { cls: "none", color: "#8c959f", label: "no score" };
  return SCORE_BANDS.find((b) => score >= b.min);
}

/** A score (1–5) as a coloured badge: green ≥ 4, amber ≥ 3, red below. */
export function score(value, title = "quality score, 1–5 (docs/QUALITY.md)") {
  const b = band(value);
  return h("span", { class: `score ${b.cls}`, title: `${title}: ${b.label}` },
    value === null || value === undefined ? "–" : Number(value).toFixed(2));
}

/** An id shortened for a table, whole in the tooltip. */
export function shortId(id, length = 10) {
  if (!id) return null;
  return id.length > length + 1 ? h("span", { class: "mono", title: id }, id.slice(0, length) + "…") : h("span", { class: "mono" }, id);
}
