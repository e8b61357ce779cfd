// The consumer portal: a SaaS links to or frames /portal#token=<consumer token> and its
// customer manages their own webhook endpoints. The page only ever holds that token (from the
// URL fragment, which browsers never send to a server; it is removed from the address at
// once and kept in this tab's sessionStorage). It refuses anything that is not a token: an
// API key must never reach it. Every call is the public API, whose answers the token's
// owner and channel scope already bound.
"use strict";

const $ = (id) => document.getElementById(id);
const isToken = (t) => /^[\w-]+\.[\w-]+\.[\w-]*$/.test(t);

const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash !== null) {
  // Out of the address bar at once; kept only when it is a token (an API key is dropped).
  history.replaceState(null, "", location.pathname + location.search);
  if (isToken(fromHash)) sessionStorage.setItem("herald_portal_token", fromHash);
  else sessionStorage.removeItem("herald_portal_token");
}
const stored = sessionStorage.getItem("herald_portal_token") || "";
const token = isToken(stored) ? stored : "";

function claims() {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch {
    return {};
  }
}

async function api(path, init = {}) {
  // The one way out of this page: nothing leaves it without a token.
  if (!isToken(token)) throw new Error("no consumer token");
  const headers = { Authorization: "Bearer " + token, ...(init.headers || {}) };
  if (init.body) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { ...init, headers });
  const v = r.status === 204 ? {} : await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error ? `${v.error.message} (${v.error.code})` : `HTTP ${r.status}`);
  return v;
}

const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

let endpoints = [];
let current = null;

async function loadEndpoints() {
  const [all, health] = await Promise.all([api("/v1/webhooks"), api("/v1/webhooks/health")]);
  const byId = Object.fromEntries(health.data.map((h) => [h.id, h]));
  endpoints = all.webhooks;
  $("endpoint-rows").replaceChildren(...endpoints.map((e) => {
    const h = byId[e.id] || {};
    const tr = document.createElement("tr");
    tr.dataset.id = e.id;
    const last = h.last_status ? `${h.last_status}${h.last_status_code ? " " + h.last_status_code : ""}` : "none yet";
    tr.append(
      cell(e.url),
      cell(e.channels.join(", ")),
      cell(e.types ? e.types.join(", ") : "all"),
      e.enabled ? cell("enabled", "ok-text") : cell("disabled", "bad-text"),
      cell(last, h.last_status === "delivered" ? "ok-text" : h.last_status ? "bad-text" : ""),
      Object.assign(document.createElement("td"), {}),
    );
    tr.lastChild.append(button("Open", () => open(e.id)));
    return tr;
  }));
  if (current) {
    const e = endpoints.find((x) => x.id === current);
    if (e) showReason(e);
  }
}

function showReason(e) {
  const p = $("disabled-reason");
  p.hidden = e.enabled;
  p.textContent = e.enabled ? "" : "Disabled: " + (e.disabled_reason || "turned off by hand");
}

function showSecret(e) {
  $("secret-box").hidden = false;
  $("secret-for").textContent = e.url;
  $("secret").textContent = e.secret;
}

function open(id) {
  current = id;
  const e = endpoints.find((x) => x.id === id);
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  $("edit-url").value = e.url;
  $("edit-channels").value = e.channels.join(", ");
  $("edit-types").value = e.types ? e.types.join(", ") : "";
  $("edit-rate").value = e.rate_limit || "";
  $("edit-enabled").checked = e.enabled;
  $("action-result").textContent = "";
  showReason(e);
  loadAttempts();
}

async function loadAttempts() {
  if (!current) return;
  const id = current;
  const v = await api(`/v1/webhooks/deliveries?endpoint=${encodeURIComponent(id)}&limit=50`);
  if (id !== current) return;
  const delivered = new Set(v.deliveries.filter((a) => a.status === "delivered").map((a) => a.seq));
  $("attempt-rows").replaceChildren(...v.deliveries.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.status = a.status;
    const status = a.status + (a.next_attempt ? ` (next ${a.next_attempt.slice(11, 19)})` : "");
    tr.append(
      cell(a.time.replace("T", " ").slice(0, 19)),
      cell(a.seq === 0 ? "test" : String(a.seq), "num"),
      cell(String(a.attempt), "num"),
      cell(status, a.status === "delivered" ? "ok-text" : "bad-text"),
      cell(a.status_code ? String(a.status_code) : a.error || "–"),
      cell(`${a.duration_ms} ms`, "num"),
      cell(a.response_body || ""),
      document.createElement("td"),
    );
    // An event whose delivery failed for good can be sent again (with fresh retries).
    if (a.status === "failed" && a.seq !== 0 && !delivered.has(a.seq)) {
      tr.lastChild.append(button("Retry", () => act(`/v1/webhooks/${id}/recover`, { since: a.time }, (r) => `retrying ${r.recovering}`)));
    }
    return tr;
  }));
}

async function act(path, body, done) {
  const out = $("action-result");
  try {
    const v = await api(path, { method: "POST", body: JSON.stringify(body || {}) });
    out.textContent = done(v);
    out.className = "ok-text";
  } catch (e) {
    out.textContent = e.message;
    out.className = "bad-text";
  }
  refresh();
}

$("add").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("add-result");
  const body = { url: $("add-url").value.trim(), channels: list($("add-channels").value) };
  const types = list($("add-types").value);
  if (types.length) body.types = types;
  const description = $("add-description").value.trim();
  if (description) body.description = description;
  try {
    const e = await api("/v1/webhooks", { method: "POST", body: JSON.stringify(body) });
    $("add").reset(); // (this empties the form's output too, so it goes first)
    out.textContent = "added " + e.id;
    out.className = "ok-text";
    showSecret(e);
    await loadEndpoints();
    open(e.id);
  } catch (e) {
    out.textContent = e.message;
    out.className = "bad-text";
  }
});

$("edit").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const types = list($("edit-types").value);
  const rate = Number($("edit-rate").value);
  const body = {
    url: $("edit-url").value.trim(),
    channels: list($("edit-channels").value),
    types: types.length ? types : null,
    rate_limit: rate > 0 ? rate : null,
    enabled: $("edit-enabled").checked,
  };
  const out = $("action-result");
  try {
    await api(`/v1/webhooks/${current}`, { method: "PATCH", body: JSON.stringify(body) });
    out.textContent = "saved";
    out.className = "ok-text";
  } catch (e) {
    out.textContent = e.message;
    out.className = "bad-text";
  }
  refresh();
});

$("test").addEventListener("click", () => act(`/v1/webhooks/${current}/test`, {}, (a) => `test event: ${a.status}${a.status_code ? " " + a.status_code : ""} in ${a.duration_ms} ms`));
$("rotate").addEventListener("click", () => act(`/v1/webhooks/${current}/rotate-secret`, {}, (e) => {
  showSecret(e);
  return "secret rotated; the old one signs beside it for a while";
}));
$("delete").addEventListener("click", async () => {
  if (!confirm("Delete this endpoint? Deliveries stop at once.")) return;
  await api(`/v1/webhooks/${current}`, { method: "DELETE" }).catch((e) => alert(e.message));
  current = null;
  $("detail").hidden = true;
  refresh();
});

function refresh() {
  loadEndpoints().catch((e) => ($("who").textContent = e.message));
  loadAttempts().catch(() => {});
}

if (!isToken(token)) {
  // An API key (or nothing): refuse to work with it rather than send it anywhere.
  $("who").textContent = "This page needs a consumer token (#token=...), never an API key.";
  $("who").className = "pill bad";
  document.querySelector("main").remove();
} else {
  const c = claims();
  $("who").textContent = c.webhooks ? `${c.webhooks.owner}` : "token";
  $("who").className = "pill ok";
  refresh();
  setInterval(refresh, 2000);
}
