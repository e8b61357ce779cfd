// Baseline for `herald bench`: a minimal in-memory broadcast server on Node's `ws` package.
// It speaks what the bench uses: `GET /v1/ws?channel=C` (welcome + subscribed, then events),
// `{"op":"subscribe","channel":C}`, and `POST /v1/events` (one event or an array).
// No durability, no resume, no auth: what a team would write instead of a real hub.
//   PORT=18100 node server.js
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 18100);
const channels = new Map(); // channel -> Set<WebSocket>
let seq = 0;

function subscribe(ws, channel) {
  if (!channels.has(channel)) channels.set(channel, new Set());
  channels.get(channel).add(ws);
  ws.channels.add(channel);
}

function publish(event) {
  seq += 1;
  // Serialized once per event, sent as the same string to every subscriber.
  const message = JSON.stringify({ op: "event", seq, channel: event.channel, type: event.type, data: event.data, time: new Date().toISOString() });
  const subs = channels.get(event.channel);
  if (subs) for (const ws of subs) ws.send(message);
  return seq;
}

const server = http.createServer((req, res) => {
  if (req.method === "POST" && req.url.startsWith("/v1/events")) {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        const reply = Array.isArray(body) ? { seqs: body.map(publish) } : { seq: publish(body) };
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify(reply));
      } catch (e) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "invalid_json", message: String(e) } }));
      }
    });
    return;
  }
  res.writeHead(404);
  res.end();
});

const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
});
wss.on("connection", (ws, req) => {
  ws.channels = new Set();
  ws.send(JSON.stringify({ op: "welcome", head: seq }));
  const url = new URL(req.url, "http://x");
  for (const channel of url.searchParams.getAll("channel")) {
    subscribe(ws, channel);
    ws.send(JSON.stringify({ op: "subscribed", channel }));
  }
  ws.on("message", (data) => {
    try {
      const m = JSON.parse(data);
      if (m.op === "subscribe") {
        subscribe(ws, m.channel);
        ws.send(JSON.stringify({ op: "subscribed", channel: m.channel, ref: m.ref }));
      }
    } catch (_) {}
  });
  ws.on("close", () => {
    for (const c of ws.channels) channels.get(c)?.delete(ws);
  });
});

server.listen(port, "127.0.0.1", () => console.log(`node-ws baseline listening on http://127.0.0.1:${port}`));
