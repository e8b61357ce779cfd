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

function button(text, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

/** One row saying a table has nothing to show. */
function emptyRow(tbody, text) {
  const td = cell(text, "empty");
  td.colSpan = tbody.closest("table").querySelectorAll("th").length;
  const tr = document.createElement("tr");
  tr.append(td);
  tbody.replaceChildren(tr);
}

/** A message that goes away by itself after a while (unless another replaced it). */
function say(out, text, ok) {
  out.textContent = text;
  out.className = ok ? "ok-text" : "bad-text";
  clearTimeout(out.timer);
  out.timer = setTimeout(() => {
    if (out.textContent === text) out.textContent = "";
  }, ok ? 6000 : 15000);
}

/** A time as a person reads it, in their zone, saying which. */
const when = (iso) =>
  new Date(iso).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });

// Events retried from this page, so their Retry button stays gone while the new attempt runs.
const retried = new Set();

let endpoints = [];
let current = null;

async function loadEndpoints() {
  const [all, health] = await Promise.all([api("/v1/webhooks"), api("/v1/webhooks/health")]);
  const byId = Object.fromEntries(health.data.map((h) => [h.id, h]));
  endpoints = all.webhooks;
  if (!endpoints.length) emptyRow($("endpoint-rows"), "No endpoints yet: add one below.");
  else $("endpoint-rows").replaceChildren(...endpoints.map((e) => {
    const h = byId[e.id] || {};
    const tr = document.createElement("tr");
    tr.dataset.id = e.id;
    const last = h.last_status ? `${h.last_status}${h.last_status_code ? " " + h.last_status_code : ""}` : "none yet";
    const where = cell(e.url, "id");
    if (e.description) where.append(Object.assign(document.createElement("div"), { className: "hint", textContent: e.description }));
    tr.append(
      where,
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
  $("edit-description").value = e.description || "";
  $("payload-box").hidden = true;
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
  if (!v.deliveries.length) return emptyRow($("attempt-rows"), "No delivery attempts yet: send a test event, or wait for the next event.");
  $("attempt-rows").replaceChildren(...v.deliveries.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.status = a.status;
    const status = a.status + (a.next_attempt ? ` (next ${new Date(a.next_attempt).toLocaleTimeString()})` : "");
    tr.append(
      cell(when(a.time)),
      cell(a.seq === 0 ? "test" : String(a.seq), "num"),
      cell(String(a.attempt), "num"),
      cell(status, a.status === "delivered" ? "ok-text" : "bad-text"),
      cell(a.status_code ? String(a.status_code) : a.error || "–"),
      cell(`${a.duration_ms} ms`, "num"),
      cell(a.response_body || ""),
      document.createElement("td"),
    );
    // An event whose delivery failed for good can be sent again (with fresh retries); once
    // asked, the button goes.
    if (a.status === "failed" && a.seq !== 0 && !delivered.has(a.seq) && !retried.has(a.seq)) {
      tr.lastChild.append(button("Retry", (ev) => {
        retried.add(a.seq);
        ev.target.remove();
        act(`/v1/webhooks/${id}/recover`, { since: a.time }, (r) => `retrying ${r.recovering}`);
      }, "retry"));
    }
    if (a.seq !== 0) tr.lastChild.append(button("View", () => showPayload(id, a.seq), "view"));
    return tr;
  }));
}

/** The event an attempt carried, as the endpoint was sent it. */
async function showPayload(id, seq) {
  const box = $("payload-box");
  $("payload-seq").textContent = String(seq);
  try {
    const event = await api(`/v1/webhooks/${id}/events/${seq}`);
    $("payload-seq").textContent = `${seq}${event.type ? " (" + event.type + ")" : ""} on ${event.channel}`;
    $("payload").textContent = JSON.stringify(event, null, 2);
  } catch (e) {
    $("payload").textContent = e.message;
  }
  box.hidden = false;
}

async function act(path, body, done) {
  const out = $("action-result");
  try {
    const v = await api(path, { method: "POST", body: JSON.stringify(body || {}) });
    say(out, done(v), true);
  } catch (e) {
    say(out, e.message, false);
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
    say(out, "added " + e.id, true);
    showSecret(e);
    await loadEndpoints();
    open(e.id);
  } catch (e) {
    say(out, e.message, false);
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
    description: $("edit-description").value.trim(),
  };
  const out = $("action-result");
  try {
    await api(`/v1/webhooks/${current}`, { method: "PATCH", body: JSON.stringify(body) });
    say(out, "saved", true);
  } catch (e) {
    say(out, e.message, false);
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
  // A failure here is this page's own bug: let the console (and the tests) see it.
  loadAttempts().catch((e) => console.error("attempts:", e));
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
  // What this token may follow, said and offered in the channel fields.
  const scope = (c.webhooks && c.webhooks.channels) || [];
  $("scope").textContent = scope.length ? scope.join(", ") : "any channel";
  $("allowed-channels").replaceChildren(...scope.map((p) => Object.assign(document.createElement("option"), { value: p })));
  $("copy-secret").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("secret").textContent);
      say($("copied"), "copied", true);
    } catch {
      say($("copied"), "select it and copy by hand", false);
    }
  });
  refresh();
  setInterval(refresh, 2000);
}
