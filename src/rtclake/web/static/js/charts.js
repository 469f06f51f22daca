// Charts, drawn with Plotly (window.Plotly: the plotly package's plotly.min.js, served by
// rtclake). One look everywhere: the unit on the y axis, times in local time with UTC in
// the tooltip, the page's range on the x axis, and the same colour for the same meaning:
// received (inbound) in blues, sent (outbound) in oranges, the network path in grey;
// audio solid, video dashed.

import { emptyState, fill } from "./dom.js";
import { fromPlotlyLocal, plotlyLocal, utcText, SCORE_BANDS } from "./format.js";

export const COLORS = {
  inbound: ["#1f6feb", "#0a3069", "#54aeff", "#0550ae", "#218bff", "#80ccff", "#033d8b"],
  outbound: ["#e8590c", "#bc4c00", "#fb8f44", "#953800"],
  remote: ["#f59f00", "#d9480f", "#ffc078", "#a8500c"],
  path: ["#57606a", "#8c959f", "#24292f"],
  series: ["#8250df", "#0969da", "#1a7f37", "#bf3989", "#9a6700", "#0a3069", "#cf222e", "#57606a"],
  created: "#2da44e",
  destroyed: "#8c959f",
  failed: "#cf222e",
};

export const SEVERITY_COLORS = { critical: "#cf222e", warning: "#bf8700", info: "#0969da" };

const DASH = { audio: "solid", video: "dash" };

/** The family of a stream's colour by its stats type. */
export function family(statsType) {
  return { "inbound-rtp": "inbound", "outbound-rtp": "outbound", "remote-inbound-rtp": "remote" }[statsType] || "path";
}

/** Colour and dash of a stream: the family's ``index``-th shade, dashed for video. */
export function streamLine(statsType, mediaKind, index = 0) {
  const shades = COLORS[family(statsType)];
  return { color: shades[index % shades.length], dash: DASH[mediaKind] || "dot" };
}

const escape = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function toLocal(iso) {
  return plotlyLocal(new Date(iso));
}

export const CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toggleSpikelines"],
};

/** The layout every chart starts from. */
export function baseLayout(opts = {}) {
  const layout = {
    height: opts.height || 230,
    margin: { l: 60, r: 14, t: 6, b: 30 },
    font: { family: getComputedStyle(document.body).fontFamily, size: 11, color: "#1f2328" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    xaxis: {
      type: "date", gridcolor: "#eef1f4", linecolor: "#d1d9e0", hoverformat: "%Y-%m-%d %H:%M:%S",
    },
    yaxis: {
      title: { text: opts.unit || "", standoff: 6, font: { size: 11, color: "#59636e" } },
      gridcolor: "#eef1f4", zerolinecolor: "#d1d9e0", rangemode: "tozero", automargin: true,
    },
    showlegend: true,
    legend: { orientation: "h", x: 0, y: 1.02, xanchor: "left", yanchor: "bottom", font: { size: 11 } },
    hovermode: "closest",
    hoverlabel: { font: { size: 11 }, namelength: -1 },
    uirevision: opts.revision || "keep",
  };
  if (opts.range && opts.range.from && opts.range.to) {
    layout.xaxis.range = [toLocal(opts.range.from), toLocal(opts.range.to)];
  }
  if (opts.yRange) layout.yaxis.range = opts.yRange;
  if (opts.tickformat) layout.yaxis.tickformat = opts.tickformat;
  if (opts.barmode) layout.barmode = opts.barmode;
  if (opts.shapes) layout.shapes = opts.shapes;
  return layout;
}

function finite(value) {
  return value !== null && value !== undefined && value !== "NaN" && Number.isFinite(Number(value));
}

/** Draw a time chart into ``el``, or an empty state when no trace has a value.
 *
 * traces: [{name, t: [ISO times], y: [values], color, dash, type: "bar", stack, fill,
 *   text: [hover notes]}]; opts: {unit, digits, range: {from, to}, yRange, empty,
 *   shapes, height, legend (default: with more than one trace), onZoom(fromDate, toDate),
 *   onClick(point)}. */
export function timeChart(el, traces, opts = {}) {
  const Plotly = window.Plotly;
  const shown = traces.filter((t) => t.y && t.y.some(finite));
  if (!Plotly) {
    fill(el, emptyState("The chart library (/static/vendor/plotly.min.js) did not load.", "chart-empty"));
    return;
  }
  if (shown.length === 0) {
    if (el.classList.contains("js-plotly-plot")) Plotly.purge(el);
    fill(el, emptyState(opts.empty || "No data in this range.", "chart-empty"));
    el.dataset.points = "0";
    return;
  }
  if (!el.classList.contains("js-plotly-plot")) el.replaceChildren();
  const digits = opts.digits ?? 1;
  const unit = opts.unit || "";
  const data = shown.map((t) => {
    const dates = t.t.map((iso) => new Date(iso));
    const x = dates.map(plotlyLocal);
    const utc = dates.map(utcText);
    const customdata = t.text ? utc.map((u, i) => [u, t.text[i] ?? ""]) : utc.map((u) => [u, ""]);
    const points = t.y.filter(finite).length;
    const trace = {
      type: t.type === "bar" ? "bar" : "scatter",
      name: escape(t.name),
      x,
      y: t.y.map((v) => (finite(v) ? Number(v) : null)),
      customdata,
      hovertemplate:
        `<b>${escape(t.name)}</b><br>%{y:,.${digits}f} ${escape(unit)}%{customdata[1]}` +
        "<br>%{x|%H:%M:%S} local · %{customdata[0]}<extra></extra>",
    };
    if (trace.type === "bar") {
      trace.marker = { color: t.color };
    } else {
      trace.mode = points < 50 ? "lines+markers" : "lines";
      trace.line = { color: t.color, dash: t.dash || "solid", width: t.width || 1.8, shape: t.shape || "linear" };
      trace.marker = { color: t.color, size: 4 };
      trace.connectgaps = false;
      if (t.stack) {
        trace.stackgroup = t.stack;
        trace.fillcolor = t.fill || t.color;
      }
    }
    return trace;
  });
  const layout = baseLayout({ ...opts, revision: JSON.stringify(opts.range || "") });
  layout.showlegend = opts.legend ?? data.length > 1;
  if (layout.showlegend) layout.height += 20 * Math.ceil(data.length / 4);
  Plotly.react(el, data, layout, CONFIG);
  el.dataset.points = String(data.reduce((n, t) => n + t.y.filter((v) => v !== null).length, 0));
  bind(el, opts);
}

/** Zoom (drag on the x axis) sets the page's range; a click opens what a point names. */
function bind(el, opts) {
  el.rtclakeOptions = opts;
  if (el.dataset.bound) return;
  el.dataset.bound = "1";
  el.on("plotly_relayout", (event) => {
    const handler = el.rtclakeOptions.onZoom;
    if (handler && event["xaxis.range[0]"] && event["xaxis.range[1]"]) {
      handler(fromPlotlyLocal(event["xaxis.range[0]"]), fromPlotlyLocal(event["xaxis.range[1]"]));
    }
  });
  el.on("plotly_click", (event) => {
    const handler = el.rtclakeOptions.onClick;
    if (handler && event.points && event.points[0]) handler(event.points[0]);
  });
}

/** Faint bands behind a score chart: red below 3, amber to 4, green above. */
export function scoreBands() {
  const edges = [[1, 3, SCORE_BANDS[2].color], [3, 4, SCORE_BANDS[1].color], [4, 5, SCORE_BANDS[0].color]];
  return edges.map(([y0, y1, color]) => ({
    type: "rect", xref: "paper", yref: "y", x0: 0, x1: 1, y0, y1, fillcolor: color,
    opacity: 0.07, line: { width: 0 }, layer: "below",
  }));
}

/** A shaded stretch of time (a finding), in its severity's colour. */
export function spanShape(startIso, endIso, severity) {
  return {
    type: "rect", xref: "x", yref: "paper", x0: toLocal(startIso), x1: toLocal(endIso), y0: 0, y1: 1,
    fillcolor: SEVERITY_COLORS[severity] || "#8c959f", opacity: 0.1, line: { width: 0 }, layer: "below",
  };
}

/** Number of data points drawn in every chart of the page (for the browser tests and
 * the page's status). */
export function pointsOnPage() {
  return [...document.querySelectorAll(".js-plotly-plot")].reduce(
    (n, gd) => n + (gd.data || []).reduce((m, t) => m + ((t.x && t.x.length) || 0), 0), 0);
}

/** A line sample (SVG) in a trace's colour and dash, for a legend of our own. */
export function swatch(color, dash) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "28");
  svg.setAttribute("height", "10");
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS(ns, "line");
  for (const [key, value] of Object.entries({ x1: 1, y1: 5, x2: 27, y2: 5, stroke: color, "stroke-width": 2.5 })) {
    line.setAttribute(key, String(value));
  }
  const dashes = { dash: "6 4", dot: "2 3" }[dash];
  if (dashes) line.setAttribute("stroke-dasharray", dashes);
  svg.append(line);
  return svg;
}
