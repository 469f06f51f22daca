// The login form: server.query_token once, then a cookie (HttpOnly, SameSite=Strict)
// lets this browser read the dashboard for 30 days or until the token changes.

import { h, fill } from "../dom.js";
import { params } from "../state.js";

export function create(main) {
  async function load() {
    const next = params().get("next") || "/";
    if (document.body.dataset.auth !== "token") {
      fill(main, h("section", { class: "panel login" }, h("h1", {}, "No login needed"),
        h("p", {}, "This server has no server.query_token: the dashboard is open to whoever reaches it. ",
          "Set one (RTCLAKE_SERVER__QUERY_TOKEN) unless the network is trusted."),
        h("a", { href: next }, "Go on")));
      return;
    }
    fill(main, h("section", { class: "panel login" },
      h("h1", {}, "Log in"),
      h("p", {}, "Enter the server's query token (server.query_token, RTCLAKE_SERVER__QUERY_TOKEN)."),
      params().get("error") ? h("div", { class: "error", role: "alert" }, "That token is not the server's. Try again.") : null,
      h("form", { method: "post", action: "/api/dashboard/login" },
        h("input", { type: "password", name: "token", autocomplete: "current-password", required: true, autofocus: true, "aria-label": "token" }),
        h("input", { type: "hidden", name: "next", value: next }),
        h("button", { class: "primary", type: "submit" }, "Log in"))));
  }
  return { load, ranged: false, refreshable: false };
}
