// Herald's console, first part: the key, health, tail (EventSource) and publish. Plain
// browser APIs only; everything goes through the public HTTP API. console.js draws the rest.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("herald_token") || "";
tokenInput.addEventListener("change", () => localStorage.setItem("herald_token", tokenInput.value));

function authHeaders() {
  const t = tokenInput.value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function health() {
  const pill = $("health");
  try {
    const r = await fetch("/readyz");
    const v = await r.json();
    pill.textContent = r.ok ? "ready, head " + v.head : "not ready: " + v.error.message;
    pill.className = "pill " + (r.ok ? "ok" : "bad");
  } catch (e) {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}
health();
setInterval(health, 5000);

let source = null;

function setState(text, ok) {
  const s = $("state");
  s.textContent = text;
  s.className = "pill " + (ok === undefined ? "" : ok ? "ok" : "bad");
}

function show(text, seq, cls) {
  const li = document.createElement("li");
  if (seq !== undefined) li.value = seq;
  if (cls) li.className = cls;
  li.textContent = text;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 500) list.lastChild.remove();
}

const isToken = (t) => /^[\w-]+\.[\w-]+\.[\w-]*$/.test(t);

// What goes into the EventSource URL: a token as it is; an API key never (URLs end up in
// logs and histories, and Herald refuses keys there), but a short-lived session token
// minted with it.
async function urlToken() {
  const t = tokenInput.value.trim();
  if (!t || isToken(t)) return t;
  const r = await fetch("/v1/tokens", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ sub_channels: ["*"], ttl_secs: 600 }),
  });
  const v = await r.json();
  if (!r.ok) throw new Error(v.error.message);
  return v.token;
}

let lastSeq = null;

async function open(channels, fromStart) {
  if (source) source.close();
  const params = new URLSearchParams();
  for (const c of channels) params.append("channel", c);
  params.set("typed", "false"); // every event reaches onmessage, whatever its type
  if (lastSeq !== null) params.set("last_event_id", String(lastSeq));
  else if (fromStart) params.set("last_event_id", "0");
  let t;
  try {
    t = await urlToken();
  } catch (e) {
    setState("refused: " + e.message, false);
    return;
  }
  if (t) params.set("token", t); // EventSource cannot send headers
  const es = new EventSource("/v1/sse?" + params);
  source = es;
  setState("connecting");
  es.onopen = () => setState("live", true);
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED) return setState("reconnecting", false);
    // EventSource gives up only on a refusal (an expired token, say) or an answer that is
    // not an event stream: say so, and try again with a fresh token.
    setState("closed by the server (refused?); trying again in 2 s", false);
    // Refused (say, the session token expired): mint a new one and resume where we were.
    if (source === es) setTimeout(() => source === es && open(channels, fromStart), 2000);
  };
  es.onmessage = (m) => {
    const e = JSON.parse(m.data);
    lastSeq = e.seq;
    const type = e.type ? " " + e.type : "";
    show(e.channel + type + " " + JSON.stringify(e.data), e.seq, "event");
  };
  es.addEventListener("reset", (m) => {
    show("events before " + JSON.parse(m.data).oldest + " were trimmed by retention", undefined, "reset");
  });
}

function subscribe(event) {
  event.preventDefault();
  lastSeq = null;
  const channels = $("channels").value.split(",").map((s) => s.trim()).filter(Boolean);
  open(channels, $("from-start").checked);
}
$("subscribe").addEventListener("submit", subscribe);
$("unsubscribe").addEventListener("click", () => {
  if (source) source.close();
  source = null;
  setState("idle");
});

$("publish").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("pub-result");
  let data = $("pub-data").value;
  if (!$("pub-string").checked) {
    try {
      data = JSON.parse(data);
    } catch (e) {
      // Never guess: text that is not JSON is sent only when asked for ("send as text").
      out.textContent = "the data is not JSON (" + e.message + "); tick \"send as text\" to send it as a string";
      return;
    }
  }
  const body = { channel: $("pub-channel").value.trim(), data };
  const type = $("pub-type").value.trim();
  if (type) body.type = type;
  const r = await fetch("/v1/events", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
  });
  const v = await r.json();
  out.textContent = r.ok ? "seq " + v.seq : r.status + " " + v.error.code + ": " + v.error.message;
});
