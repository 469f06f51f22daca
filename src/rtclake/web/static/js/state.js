// The state of a page lives in its URL, so that a URL can be shared: the time range
// (range=15m|1h|6h|24h|7d|all, or from= and to= as ISO times) and auto-refresh
// (refresh=off|10s|30s). This module reads it, changes it, and fetches the JSON API.

export const RANGES = ["15m", "1h", "6h", "24h", "7d"];
export const REFRESH = { off: 0, "10s": 10_000, "30s": 30_000 };

export function params() {
  return new URLSearchParams(location.search);
}

/** The page's time range: {range} or {from, to}; ``whole`` pages (a session, a
 * connection) default to their whole life (range=all). */
export function timeRange(whole = false) {
  const p = params();
  if (p.get("from")) return { from: p.get("from"), to: p.get("to") || null, range: null };
  const range = p.get("range") || (whole ? "all" : "1h");
  return { range, from: null, to: null };
}

export function refreshSetting() {
  const value = params().get("refresh") || "off";
  return value in REFRESH ? value : "off";
}

/** ``path`` with the current query, changed: a key set to null is removed. */
export function link(path, changes = {}, keep = ["range", "from", "to", "refresh"]) {
  const current = params();
  const next = new URLSearchParams();
  for (const key of keep) if (current.get(key)) next.set(key, current.get(key));
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined) next.delete(key);
    else next.set(key, value);
  }
  if (next.get("range") === "all" && !path.startsWith("/sessions/") && !path.startsWith("/connections/")) {
    next.delete("range"); // "the whole session" means nothing elsewhere
  }
  const query = next.toString();
  return query ? `${path}?${query}` : path;
}

/** A link to a session's or connection's page: its whole life, the same refresh. */
export function entityLink(kind, id) {
  return link(`/${kind}/${encodeURIComponent(id)}`, {}, ["refresh"]);
}

/** Change the URL without loading a page; the page then reloads its data. */
export function navigate(url) {
  history.pushState(null, "", url);
  window.dispatchEvent(new Event("rtclake:navigate"));
}

/** The query string of an API call for the page's range (and ``extra``). */
export function apiQuery(range, extra = {}) {
  const q = new URLSearchParams();
  if (range.from) {
    q.set("from", range.from);
    if (range.to) q.set("to", range.to);
  } else if (range.range) {
    q.set("range", range.range);
  }
  for (const [key, value] of Object.entries(extra)) if (value !== null && value !== undefined) q.set(key, value);
  const text = q.toString();
  return text ? `?${text}` : "";
}

export class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

/** GET (or POST with ``body``) a JSON endpoint; a 401 sends the browser to the login
 * form, any other refusal is an ApiError with the server's message. */
export async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" },
  };
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (error) {
    throw new ApiError(0, "unreachable", `rtclake did not answer (${error.message}); is it running?`);
  }
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, "unauthorized", "Log in to see this page.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(response.status, "bad_answer", `rtclake answered ${response.status}: ${text.slice(0, 200)}`);
  }
  if (!response.ok) {
    const retry = response.headers.get("retry-after");
    const message = (data && data.message) || `rtclake answered ${response.status}`;
    throw new ApiError(response.status, data && data.error, retry ? `${message} (retry in ${retry} s)` : message);
  }
  return data;
}
