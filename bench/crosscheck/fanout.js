// A second fan-out load generator that shares no code with Herald: Node.js and the `ws`
// package, to cross-check `herald bench fanout`. Open-loop like it: events are POSTed on a
// fixed schedule whatever the acks do, each carries its scheduled send time, and latency is
// measured from that time to receipt (so a slow ack cannot hide a late event).
//
//   URL=http://127.0.0.1:18090 SUBSCRIBERS=500 RATE=200 DURATION=10 PAYLOAD=256 \
//     TRANSPORT=ws node bench/crosscheck/fanout.js        # or TRANSPORT=sse
//
// WORKERS=N spreads the subscribers over N worker threads (each its own event loop), the
// publisher staying on the main thread: one Node thread cannot read 400,000 events/s.
// Times come from the process's monotonic clock, which every thread shares.
//
// One JSON line on stdout: deliveries/s, latency percentiles, lost, out of order, the
// publisher's most requests in flight. Loopback only. Run `npm ci` in bench/peers/node-ws
// first (this uses its `ws`).
"use strict";
const http = require("http");
const path = require("path");
const { Worker, isMainThread, workerData, parentPort } = require("worker_threads");
const WebSocket = require(path.join(__dirname, "../peers/node-ws/node_modules/ws"));

const config = isMainThread ? fromEnv() : workerData.config;
const url = new URL(config.url);
if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
  throw new Error("loopback targets only");
}
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms, one clock for all threads

function fromEnv() {
  return {
    url: process.env.URL || "http://127.0.0.1:18090",
    subscribers: Number(process.env.SUBSCRIBERS || 500),
    rate: Number(process.env.RATE || 200),
    duration: Number(process.env.DURATION || 10),
    payload: Number(process.env.PAYLOAD || 256),
    transport: process.env.TRANSPORT || "ws",
    workers: Number(process.env.WORKERS || 0),
    channel: `crosscheck.${process.pid}`,
  };
}

// What every thread writes, in memory all threads share: per subscriber its count, last
// seq and latency samples; per thread its out-of-order count.
function sharedState(c) {
  const total = c.rate * c.duration;
  const threads = Math.max(c.workers, 1);
  return {
    received: new SharedArrayBuffer(4 * c.subscribers),
    lastSeq: new SharedArrayBuffer(8 * c.subscribers),
    latencies: new SharedArrayBuffer(8 * total * c.subscribers),
    outOfOrder: new SharedArrayBuffer(4 * threads),
  };
}

// Subscribes `from..to` (subscriber numbers) and records what they get; resolves once all
// are subscribed, with their sockets.
async function subscribeRange(c, shared, thread, from, to) {
  const total = c.rate * c.duration;
  const received = new Int32Array(shared.received);
  const last = new Float64Array(shared.lastSeq).fill(-1, from, to);
  const latencies = new Float64Array(shared.latencies);
  const outOfOrder = new Int32Array(shared.outOfOrder);
  // Pulls seq and t out of an event without a full parse (the generator must keep up).
  // Order is checked by seq: POSTs overlap, so events are stored in no fixed order of k.
  const SEQ = /"seq":(\d+)/;
  const T = /"t":([0-9.]+)/;
  const onEvent = (i, text) => {
    const at = now();
    const seq = SEQ.exec(text);
    const t = T.exec(text);
    if (!seq || !t) return;
    const n = Number(seq[1]);
    if (n <= last[i]) outOfOrder[thread] += 1;
    last[i] = n;
    const k = received[i];
    if (k < total) latencies[i * total + k] = at - Number(t[1]);
    Atomics.store(received, i, k + 1);
  };
  const subscribe = c.transport === "sse" ? subscribeSse : subscribeWs;
  const subs = [];
  for (let i = from; i < to; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(i + 50, to); j++) batch.push(subscribe(c, j, onEvent));
    subs.push(...(await Promise.all(batch)));
  }
  return subs;
}

function subscribeWs(c, i, onEvent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${url.host}/v1/ws?channel=${c.channel}`);
    ws.on("error", reject);
    ws.on("message", (data) => {
      const text = data.toString();
      if (text.startsWith('{"op":"event"')) onEvent(i, text);
      else if (text.includes('"op":"subscribed"')) resolve(ws);
    });
  });
}

function subscribeSse(c, i, onEvent) {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: url.hostname, port: url.port, path: `/v1/sse?channel=${c.channel}`, agent: false },
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

// A worker thread: subscribes its range, says so, and holds the sockets until told to stop.
async function worker() {
  const { config: c, shared, thread, from, to } = workerData;
  const subs = await subscribeRange(c, shared, thread, from, to);
  parentPort.postMessage("ready");
  parentPort.on("message", () => {
    for (const s of subs) (s.terminate ? s.terminate() : s.destroy());
    process.exit(0);
  });
}

async function main() {
  const c = config;
  const total = c.rate * c.duration;
  const shared = sharedState(c);
  let subs = [];
  const workers = [];
  if (c.workers > 0) {
    const per = Math.ceil(c.subscribers / c.workers);
    await Promise.all(Array.from({ length: c.workers }, (_, thread) => {
      const from = thread * per;
      const to = Math.min(c.subscribers, from + per);
      const w = new Worker(__filename, { workerData: { config: c, shared, thread, from, to } });
      workers.push(w);
      return new Promise((resolve, reject) => {
        w.once("message", resolve);
        w.once("error", reject);
      });
    }));
  } else {
    subs = await subscribeRange(c, shared, 0, 0, c.subscribers);
  }
  const received = new Int32Array(shared.received);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const pad = "x".repeat(c.payload);
  let inFlight = 0;
  let mostInFlight = 0;
  let failed = 0;
  const start = now() + 100;
  let next = 0;
  await new Promise((done) => {
    const tick = () => {
      // Every event whose time has come goes now, whatever earlier POSTs are doing.
      while (next < total && start + (next * 1000) / c.rate <= now()) {
        const t = start + (next * 1000) / c.rate;
        const body = JSON.stringify({ channel: c.channel, data: { k: next, t, pad } });
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
  const short = () => received.some((_, i) => Atomics.load(received, i) < total);
  while (short() && now() - sent < 5000) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const elapsed = (now() - start) / 1000;
  const all = new Float64Array(shared.latencies);
  const got = [];
  for (let i = 0; i < c.subscribers; i++) {
    const n = Math.min(Atomics.load(received, i), total);
    for (let k = 0; k < n; k++) got.push(all[i * total + k]);
  }
  got.sort((a, b) => a - b);
  const q = (p) => (got.length ? Number(got[Math.min(got.length - 1, Math.floor(p * got.length))].toFixed(3)) : null);
  const delivered = received.reduce((a, b) => a + b, 0);
  const outOfOrder = new Int32Array(shared.outOfOrder).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({
    generator: "node", transport: c.transport, subscribers: c.subscribers, rate: c.rate,
    duration_s: c.duration, payload: c.payload, workers: c.workers, published: total,
    failed_publishes: failed, expected: total * c.subscribers, delivered,
    lost: total * c.subscribers - delivered, out_of_order: outOfOrder,
    deliveries_per_sec: Math.round(delivered / elapsed), most_publishes_in_flight: mostInFlight,
    latency: { p50_ms: q(0.5), p99_ms: q(0.99), p999_ms: q(0.999), max_ms: q(1) },
  }));
  for (const s of subs) (s.terminate ? s.terminate() : s.destroy());
  for (const w of workers) w.postMessage("stop");
  agent.destroy();
  process.exit(0);
}

(isMainThread ? main() : worker()).catch((e) => { console.error(e); process.exit(1); });
