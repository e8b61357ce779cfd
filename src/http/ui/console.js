// Herald's console, second part: charts of the server's own stats (GET /v1/stats), channels,
// webhook endpoint health, the cluster, and an inspector of incoming webhooks that watches
// hook channels through Herald's JavaScript client. Canvas charts drawn by hand: a charting
// library would outweigh the whole page, and a line per series is all we need.
import { connect } from "/v1/client.js";

const $ = (id) => document.getElementById(id);
const key = () => $("token").value.trim();
const auth = () => (key() ? { Authorization: "Bearer " + key() } : {});

async function api(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { ...auth(), ...(init.headers || {}) } });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error ? `${v.error.code}: ${v.error.message}` : `HTTP ${r.status}`);
  return v;
}

const COLORS = { sse: "#2a6fdb", ws: "#d9822b", pusher: "#7b4fc9", webhook: "#1f9d6b", ok: "#1f9d6b", failed: "#d0453b", value: "#2a6fdb" };
const TRANSPORTS = ["sse", "ws", "pusher"];

// Charts of a per-second rate also say their total over the window (a burst shows there
// long after "now" is back to 0).
const RATES = new Set(["published", "delivered", "webhooks"]);

// Each chart: which series, read from a sample.
const CHARTS = {
  connections: TRANSPORTS.map((t) => [t, (s) => s.connections[t]]),
  published: [["value", (s) => s.published]],
  delivered: [...TRANSPORTS, "webhook"].map((t) => [t, (s) => s.delivered[t]]),
  webhooks: [["ok", (s) => s.webhook_ok], ["failed", (s) => s.webhook_failed]],
  commit: [["value", (s) => s.commit_p99_ms]],
  subscriptions: [...TRANSPORTS, "webhook"].map((t) => [t, (s) => s.subscriptions[t]]),
};

const fmt = (v) => (v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e4 ? (v / 1e3).toFixed(0) + "k" : String(Math.round(v * 100) / 100));

function draw(name, samples, span) {
  const canvas = $("chart-" + name);
  const series = CHARTS[name].map(([label, get]) => ({ label, values: samples.map(get) }));
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter((v) => v != null))) * 1.1;
  const left = 40, top = 6, bottom = h - 18, right = w - 6;
  const x = (i) => right - (samples.length - 1 - i) * ((right - left) / Math.max(1, span - 1));
  const y = (v) => bottom - (v / max) * (bottom - top);
  g.font = "10px system-ui";
  g.fillStyle = "#667";
  g.strokeStyle = "#e4e7ec";
  for (const f of [0, 0.5, 1]) {
    const v = (max / 1.1) * f;
    g.beginPath();
    g.moveTo(left, y(v));
    g.lineTo(right, y(v));
    g.stroke();
    g.fillText(fmt(v), 2, y(v) + 3);
  }
  // The time axis: the window's start, its middle and now.
  g.textAlign = "center";
  for (const [at, label] of [[0, `-${Math.round(span / 60)}m`], [0.5, `-${+(span / 120).toFixed(1)}m`], [1, "now"]]) {
    const px = left + at * (right - left);
    g.textAlign = at === 0 ? "left" : at === 1 ? "right" : "center";
    g.fillText(label, px, h - 4);
  }
  g.textAlign = "left";
  for (const s of series) {
    g.strokeStyle = COLORS[s.label];
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v == null) return (pen = false);
      pen ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v));
      pen = true;
    });
    g.stroke();
  }
  // What the chart shows, for people (the legend) and for tests (data attributes).
  const latest = Object.fromEntries(series.map((s) => [s.label, s.values.at(-1) ?? null]));
  const total = series.reduce((sum, s) => sum + s.values.reduce((a, v) => a + (v || 0), 0), 0);
  canvas.dataset.latest = JSON.stringify(latest);
  canvas.dataset.total = String(total);
  canvas.dataset.points = String(samples.length);
  const legend = canvas.nextElementSibling;
  const shown = (v) => (v == null ? "–" : fmt(v));
  legend.replaceChildren(...series.map((s) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[s.label];
    const values = s.values.filter((v) => v != null);
    const peak = values.length ? Math.max(...values) : null;
    const sum = values.reduce((a, v) => a + v, 0);
    const label = s.label === "value" ? "" : s.label + ": ";
    const extra = RATES.has(name) ? `, total ${fmt(sum)}` : "";
    span.append(swatch, `${label}now ${shown(latest[s.label])}, peak ${shown(peak)}${extra}`);
    return span;
  }));
}

/** Fills a table body; an empty list gets one row saying so (`empty`). */
function rows(tbody, list, cells, empty = "none") {
  if (!list.length) {
    const td = document.createElement("td");
    td.colSpan = tbody.closest("table").querySelectorAll("th").length || 1;
    td.className = "empty";
    td.textContent = empty;
    const tr = document.createElement("tr");
    tr.append(td);
    return tbody.replaceChildren(tr);
  }
  tbody.replaceChildren(...list.map((item) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

const SECONDS = 300;

async function refreshStats() {
  try {
    const stats = await api(`/v1/stats?seconds=${SECONDS}`);
    $("stats-state").textContent = "";
    $("charts-empty").hidden = true;
    for (const name of Object.keys(CHARTS)) draw(name, stats.samples, SECONDS);
    const c = stats.cluster;
    $("cluster").hidden = !c;
    $("cluster-pill").hidden = !c;
    if (c) {
      $("cluster-pill").textContent = c.redis === "up" ? `cluster: ${c.nodes.length} nodes, Redis up` : "Redis down";
      $("cluster-pill").className = "pill " + (c.redis === "up" ? "ok" : "bad");
      rows($("nodes"), c.nodes || [], (n) => [
        [n.id + (n.id === c.this_node ? " (this one)" : "")],
        [`${(n.last_heartbeat_ms_ago / 1000).toFixed(1)} s ago`, "num"],
      ]);
    }
  } catch (e) {
    $("charts-empty").textContent = `The charts are empty: ${e.message}. An API key sees the stats.`;
    $("charts-empty").hidden = false;
  }
}

async function refreshChannels() {
  try {
    const v = await api("/v1/channels?limit=100");
    rows($("channel-rows"), v.channels, (c) => [[c.channel, "id"], [String(c.subscribers), "num"], [String(c.members), "num"]], "no channel has a subscriber now");
  } catch (e) {
    rows($("channel-rows"), [e.message], (m) => [[m, "bad-text"]]);
  }
}

async function refreshWebhooks() {
  try {
    const v = await api("/v1/webhooks/health");
    rows($("webhook-rows"), v.data, (e) => [
      [`${e.id}\n${e.url}${e.description ? "\n" + e.description : ""}`, "id"],
      e.enabled ? ["enabled", "ok-text"] : [`disabled: ${e.disabled_reason || "by hand"}`, "bad-text"],
      e.last_status ? [`${e.last_status}${e.last_status_code ? " " + e.last_status_code : ""}`, e.last_status === "delivered" ? "ok-text" : "bad-text"] : ["–"],
      [String(e.failure_streak ?? 0), "num"],
      [String(e.queue_depth), "num"],
      [e.oldest_pending_seconds ? `${e.oldest_pending_seconds.toFixed(1)} s` : "–", "num"],
    ], "no webhook endpoints yet (herald webhook add, or POST /v1/webhooks)");
  } catch (e) {
    rows($("webhook-rows"), [e.message], (m) => [[m, "bad-text"]]);
  }
}

let open = null;

async function refresh() {
  if (open === null) {
    try {
      open = (await (await fetch("/healthz")).json()).open;
    } catch {
      return; // the server is away; the next round asks again
    }
  }
  $("token").placeholder = open ? "none needed (open server)" : "required: an API key";
  // With auth on and no key typed yet, nothing to ask (it would only be refused).
  if (!open && !key()) {
    $("charts-empty").textContent = "The charts are empty until you type an API key above: this server needs one.";
    $("charts-empty").hidden = false;
    for (const id of ["channel-rows", "webhook-rows"]) rows($(id), [], () => [], "an API key (above) shows these");
    return;
  }
  refreshStats();
  refreshChannels();
  refreshWebhooks();
}
refresh();
setInterval(refresh, 2000);
$("token").addEventListener("change", refresh);

// The inspector. An API key never goes into a URL: the client gets a short-lived session
// token minted with it, renewed by the client when it nears expiry.
let client = null;
let selected = null;

async function sessionToken(channels) {
  if (!key() || /^[\w-]+\.[\w-]+\.[\w-]*$/.test(key())) return key();
  const v = await api("/v1/tokens", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub_channels: channels, ttl_secs: 600 }),
  });
  return v.token;
}

function bodyText(captured) {
  if (captured.encoding === "json") return JSON.stringify(captured.body, null, 2);
  if (captured.encoding === "base64") return `(${atob(captured.body).length} bytes, base64)\n${captured.body}`;
  try {
    return JSON.stringify(JSON.parse(captured.body), null, 2);
  } catch {
    return captured.body;
  }
}

function showRequest(event, li) {
  for (const other of document.querySelectorAll("#captured li.selected")) other.classList.remove("selected");
  li.classList.add("selected");
  selected = event;
  const c = event.data;
  $("request").hidden = false;
  $("req-line").textContent = `${c.method} ${c.path}${c.query ? "?" + c.query : ""}`;
  $("req-meta").textContent = `seq ${event.seq} on ${event.channel}, ${event.time}`;
  rows($("req-headers"), Object.entries(c.headers), ([name, value]) => [[name], [value]]);
  $("req-body").textContent = bodyText(c);
  $("replay-result").textContent = "";
}

function captured(event) {
  if (event.type !== "webhook") return;
  const li = document.createElement("li");
  li.textContent = `${event.time.slice(11, 19)} ${event.channel} ${event.data.method} ${event.data.path}`;
  li.dataset.seq = event.seq;
  li.addEventListener("click", () => showRequest(event, li));
  const list = $("captured");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

$("inspect").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (client) client.close();
  $("captured").replaceChildren();
  $("request").hidden = true;
  const channels = $("inspect-channels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const state = $("inspect-state");
  try {
    const head = (await (await fetch("/readyz")).json()).head || 0;
    const token = await sessionToken(channels);
    client = connect(location.origin, token ? { getToken: () => sessionToken(channels) } : {});
    client.on("state", (s) => {
      state.textContent = s;
      state.className = "pill " + (s === "connected" ? "ok" : s === "disconnected" ? "bad" : "");
    });
    for (const channel of channels) client.subscribe(channel, { since: Math.max(0, head - 100) }, captured);
  } catch (err) {
    state.textContent = err.message;
    state.className = "pill bad";
  }
});

// Replay: the server stores the captured request again as a new event on its channel, which
// `herald forward` and every subscriber receive like the first.
$("replay").addEventListener("click", async () => {
  if (!selected) return;
  const out = $("replay-result");
  try {
    const v = await api(`/v1/events/${selected.seq}/replay`, { method: "POST" });
    out.textContent = "replayed as seq " + v.seq;
  } catch (err) {
    out.textContent = "refused: " + err.message;
  }
});
