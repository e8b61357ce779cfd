// A second fan-out load generator that shares no code with Herald: Node.js and the `ws`
// package, to cross-check `herald bench fanout`. Open-loop like it: events are POSTed on a
// fixed schedule whatever the acks do, each carries its scheduled send time, and latency is
// measured from that time to receipt (so a slow ack cannot hide a late event).
//
//   URL=http://127.0.0.1:18090 SUBSCRIBERS=500 RATE=200 DURATION=10 PAYLOAD=256 \
//     TRANSPORT=ws node bench/crosscheck/fanout.js        # or TRANSPORT=sse
//
// One JSON line on stdout: deliveries/s, latency percentiles, lost, out of order, the
// publisher's most requests in flight. Loopback only. Run `npm ci` in bench/peers/node-ws
// first (this uses its `ws`).
"use strict";
const http = require("http");
const path = require("path");
const WebSocket = require(path.join(__dirname, "../peers/node-ws/node_modules/ws"));

const url = new URL(process.env.URL || "http://127.0.0.1:18090");
if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
  throw new Error("loopback targets only");
}
const SUBSCRIBERS = Number(process.env.SUBSCRIBERS || 500);
const RATE = Number(process.env.RATE || 200);
const DURATION = Number(process.env.DURATION || 10);
const PAYLOAD = Number(process.env.PAYLOAD || 256);
const TRANSPORT = process.env.TRANSPORT || "ws";
const CHANNEL = `crosscheck.${process.pid}`;
const now = () => performance.timeOrigin + performance.now(); // ms, sub-ms precision

const total = RATE * DURATION;
const latencies = new Float64Array(total * SUBSCRIBERS);
let samples = 0;
let outOfOrder = 0;
const received = new Array(SUBSCRIBERS).fill(0);
const last = new Array(SUBSCRIBERS).fill(-1);

// Pulls seq and t out of an event without a full parse (the generator must keep up).
// Order is checked by seq: POSTs overlap, so events are stored in no fixed order of k.
const SEQ = /"seq":(\d+)/;
const T = /"t":([0-9.]+)/;
function onEvent(i, text) {
  const at = now();
  const seq = SEQ.exec(text);
  const t = T.exec(text);
  if (!seq || !t) return;
  const n = Number(seq[1]);
  if (n <= last[i]) outOfOrder += 1;
  last[i] = n;
  received[i] += 1;
  latencies[samples++] = at - Number(t[1]);
}

function subscribeWs(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${url.host}/v1/ws?channel=${CHANNEL}`);
    ws.on("error", reject);
    ws.on("message", (data) => {
      const text = data.toString();
      if (text.startsWith('{"op":"event"')) onEvent(i, text);
      else if (text.includes('"op":"subscribed"')) resolve(ws);
    });
  });
}

function subscribeSse(i) {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: url.hostname, port: url.port, path: `/v1/sse?channel=${CHANNEL}`, agent: false },
      (res) => {
        if (res.statusCode !== 200) return reject(new Error(`SSE ${res.statusCode}`));
        res.setEncoding("utf8");
        let buf = "";
        res.on("data", (chunk) => {
          buf += chunk;
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const data = block.split("\n").find((l) => l.startsWith("data:"));
            if (data) onEvent(i, data);
          }
        });
        resolve(res);
      },
    );
    req.on("error", reject);
  });
}

async function main() {
  const subscribe = TRANSPORT === "sse" ? subscribeSse : subscribeWs;
  const subs = [];
  for (let i = 0; i < SUBSCRIBERS; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(i + 50, SUBSCRIBERS); j++) batch.push(subscribe(j));
    subs.push(...(await Promise.all(batch)));
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const pad = "x".repeat(PAYLOAD);
  let inFlight = 0;
  let mostInFlight = 0;
  let failed = 0;
  const start = now() + 100;
  let next = 0;
  await new Promise((done) => {
    const tick = () => {
      // Every event whose time has come goes now, whatever earlier POSTs are doing.
      while (next < total && start + (next * 1000) / RATE <= now()) {
        const t = start + (next * 1000) / RATE;
        const body = JSON.stringify({ channel: CHANNEL, data: { k: next, t, pad } });
        inFlight += 1;
        mostInFlight = Math.max(mostInFlight, inFlight);
        const req = http.request(
          { host: url.hostname, port: url.port, path: "/v1/events", method: "POST", agent,
            headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
          (res) => {
            if (res.statusCode !== 201) failed += 1;
            res.resume();
            res.on("end", () => { inFlight -= 1; });
          },
        );
        req.on("error", () => { failed += 1; inFlight -= 1; });
        req.end(body);
        next += 1;
      }
      if (next < total) setImmediate(tick);
      else done();
    };
    tick();
  });
  const sent = now();
  // Drain: until every subscriber has everything, or 5 s.
  while (received.some((r) => r < total) && now() - sent < 5000) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const elapsed = (now() - start) / 1000;
  const got = latencies.subarray(0, samples).sort();
  const q = (p) => (got.length ? Number(got[Math.min(got.length - 1, Math.floor(p * got.length))].toFixed(3)) : null);
  const delivered = received.reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({
    generator: "node", transport: TRANSPORT, subscribers: SUBSCRIBERS, rate: RATE,
    duration_s: DURATION, payload: PAYLOAD, published: total, failed_publishes: failed,
    expected: total * SUBSCRIBERS, delivered, lost: total * SUBSCRIBERS - delivered,
    out_of_order: outOfOrder, deliveries_per_sec: Math.round(delivered / elapsed),
    most_publishes_in_flight: mostInFlight,
    latency: { p50_ms: q(0.5), p99_ms: q(0.99), p999_ms: q(0.999), max_ms: q(1) },
  }));
  for (const s of subs) (s.terminate ? s.terminate() : s.destroy());
  agent.destroy();
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
