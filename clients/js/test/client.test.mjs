// Node tests of the client (node --test), against a real Herald at HERALD_URL (open mode;
// tests/e2e/client.rs starts one and runs these). Node 20 has no global WebSocket or
// EventSource, so the `ws` and `eventsource` packages are injected, as the client allows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { connect, matches } from "../herald.js";
import { proxy } from "./proxy.mjs";
import { measure, minify, committed, BUDGET } from "./size.mjs";

const BASE = process.env.HERALD_URL;
assert.ok(BASE, "HERALD_URL must name a running Herald (tests/e2e/client.rs sets it)");
const impls = { WebSocket, EventSource };
let n = 0;
const fresh = (name) => `js.${name}.${process.pid}.${n++}`;

function until(what, check, ms = 15000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const v = check();
      if (v) return resolve(v);
      if (Date.now() - started > ms) return reject(new Error("timed out waiting for " + what));
      setTimeout(tick, 10);
    };
    tick();
  });
}

async function post(channel, data, extra = {}) {
  const r = await fetch(BASE + "/v1/events", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data, ...extra }),
  });
  const text = await r.text();
  assert.equal(r.status, 201, text);
  return JSON.parse(text).seq;
}

for (const transport of ["ws", "sse"]) {
  test(`${transport}: history then live, in order, each once; publish resolves to the seq`, async () => {
    const channel = fresh("order");
    const before = [await post(channel, 1), await post(channel, 2)];
    const c = connect(BASE, { ...impls, transport });
    const got = [];
    c.subscribe(channel, { since: 0 }, (e) => got.push(e.seq));
    await until("history", () => got.length === 2);
    const seq = await c.publish(channel, { n: 3 }, { type: "t" });
    assert.ok(seq > before[1]);
    await until("the publish", () => got.length === 3);
    assert.deepEqual(got, [...before, seq]);
    c.close();
  });
}

test("a dropped connection resumes from the cursor: nothing lost, nothing twice", async () => {
  const p = await proxy(new URL(BASE));
  const channel = fresh("resume");
  const c = connect(p.url, { ...impls, transport: "ws" });
  const got = [];
  const states = [];
  c.on("state", (s) => states.push(s));
  c.subscribe(channel, { since: 0 }, (e) => got.push(e.seq));
  await until("connected", () => c.state === "connected");
  const sent = [];
  for (let i = 0; i < 30; i++) {
    sent.push(await post(channel, i));
    if (i === 10 || i === 20) p.cut();
  }
  await until("every event", () => got.length >= sent.length);
  assert.deepEqual(got, sent);
  assert.ok(states.filter((s) => s === "disconnected").length >= 1, states.join());
  c.close();
  p.close();
});

test("a publish repeated after a drop is stored once", async () => {
  const p = await proxy(new URL(BASE));
  const channel = fresh("once");
  const c = connect(p.url, { ...impls, transport: "ws" });
  await until("connected", () => c.state === "connected");
  p.dropNextPublish();
  const seq = await c.publish(channel, "only once");
  assert.equal(p.dropped, 1, "the connection was cut between the publish and its ack");
  const page = await (await fetch(`${BASE}/v1/events?channel=${channel}`)).json();
  assert.deepEqual(page.events.map((e) => e.seq), [seq], JSON.stringify(page));
  c.close();
  p.close();
});

test("retention gaps are told, not skipped", async () => {
  // A second Herald that keeps 5 events (log.max_events): from 0, the first ones are gone.
  const SMALL = process.env.HERALD_SMALL_URL;
  assert.ok(SMALL, "HERALD_SMALL_URL must name a Herald with log.max_events = 5");
  const channel = fresh("gap");
  for (let i = 0; i < 8; i++) {
    const r = await fetch(SMALL + "/v1/events", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ channel, data: i }) });
    assert.equal(r.status, 201);
  }
  for (;;) {
    const page = await (await fetch(`${SMALL}/v1/events?channel=${channel}&after=0`)).json();
    if (page.reset) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const c = connect(SMALL, { ...impls, transport: "ws" });
  let oldest = null;
  const got = [];
  c.subscribe(channel, { since: 0, onReset: (o) => (oldest = o) }, (e) => got.push(e.seq));
  await until("the reset and the rest", () => oldest !== null && got.length > 0);
  assert.ok(got.every((s) => s >= oldest), `${got} vs ${oldest}`);
  c.close();
});

test("presence: members, joins and leaves, over both transports", async () => {
  const channel = fresh("room");
  const a = connect(BASE, { ...impls, transport: "ws" });
  const joined = [];
  const left = [];
  const sa = a.subscribe(channel, { presence: true, user: "ann", onJoin: (m) => joined.push(m.user), onLeave: (m) => left.push(m.user) }, () => {});
  await until("ann's own list", () => sa.members.has("ann"));
  const b = connect(BASE, { ...impls, transport: "sse" });
  const sb = b.subscribe(channel, { presence: true, user: "bo", info: { x: 1 } }, () => {});
  await until("bo joins for ann", () => joined.includes("bo"));
  await until("bo sees both", () => sb.members.size === 2 && sb.count === 2);
  assert.deepEqual(sa.members.get("bo").info, { x: 1 });
  b.close();
  await until("bo leaves for ann", () => left.includes("bo"));
  a.close();
});

test("history pages", async () => {
  const channel = fresh("hist");
  const seqs = [];
  for (let i = 0; i < 5; i++) seqs.push(await post(channel, i));
  const c = connect(BASE, { ...impls, transport: "ws" });
  const pages = [];
  for await (const page of c.history(channel, { limit: 2 })) pages.push(page.map((e) => e.seq));
  assert.deepEqual(pages.flat(), seqs);
  assert.ok(pages.length >= 3);
  c.close();
});

test("close leaves no socket, stream or timer behind (the process exits by itself)", async () => {
  const code = `
    import WebSocket from "ws"; import { EventSource } from "eventsource";
    import { connect } from "${new URL("../herald.js", import.meta.url).pathname}";
    for (const transport of ["ws", "sse"]) {
      const c = connect(${JSON.stringify(BASE)}, { WebSocket, EventSource, transport });
      c.subscribe("js.close", () => {});
      await new Promise((r) => setTimeout(r, 300));
      c.close();
    }`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code], { cwd: new URL(".", import.meta.url).pathname });
  const exited = await Promise.race([
    new Promise((r) => child.on("exit", (c) => r(c))),
    new Promise((r) => setTimeout(() => r("still running"), 10000)),
  ]);
  child.kill();
  assert.equal(exited, 0);
});

test("patterns match as Herald's do", () => {
  assert.ok(matches("user:*", "user:1"));
  assert.ok(matches("a*b*c", "aXbYc"));
  assert.ok(!matches("user:*", "users:1"));
  assert.ok(!matches("*", "$notice"));
  assert.ok(matches("a.b", "a.b") && !matches("a.b", "aXb"));
});

test("reconnects back off with jitter: each wait at least half its step, growing, unlike another client's", async () => {
  // A loopback port nobody listens on: every WebSocket is refused.
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
  const logs = [[], []];
  const clients = logs.map((log) => {
    class Logged extends WebSocket {
      constructor(url) {
        log.push(performance.now());
        super(url);
      }
    }
    return connect(`http://127.0.0.1:${port}`, { ...impls, WebSocket: Logged, transport: "ws" });
  });
  await until("five attempts each", () => logs.every((l) => l.length >= 5));
  clients.forEach((c) => c.close());
  const steps = [250, 500, 1000, 2000];
  const waits = logs.map((l) => steps.map((_, i) => l[i + 1] - l[i]));
  for (const w of waits) {
    // Timers never fire early; a wait may be longer on a busy machine, so only the floor.
    w.forEach((d, i) => assert.ok(d >= steps[i] / 2 - 2, `wait ${i}: ${d} ms, under half of ${steps[i]}: ${w}`));
  }
  // Jitter spreads each wait over half its step; without it two clients differ by noise.
  const apart = waits[0].reduce((sum, d, i) => sum + Math.abs(d - waits[1][i]), 0);
  assert.ok(apart > 20, `two clients waited alike (${apart} ms apart): no jitter`);
});

test(`size: minified + gzip within ${BUDGET} bytes`, async () => {
  const s = await measure();
  assert.ok(s.gzipped <= BUDGET, JSON.stringify(s));
});

test("the committed herald.min.js (what Herald serves) is this build of herald.js", async () => {
  const built = await minify();
  const kept = committed();
  assert.ok(kept, "clients/js/herald.min.js is missing: run `npm run build` in clients/js");
  assert.ok(built.equals(kept), "clients/js/herald.min.js is stale: run `npm run build` in clients/js");
});

for (const transport of ["ws", "sse"]) {
  test(`${transport}: a refused publish rejects with Herald's error code; the client goes on`, async () => {
    const c = connect(BASE, { ...impls, transport });
    await until("connected", () => c.state === "connected");
    await assert.rejects(c.publish("bad channel!", 1), (e) => e.code === "invalid_channel");
    const channel = fresh("after-error");
    const got = [];
    c.subscribe(channel, { since: 0 }, (e) => got.push(e.data));
    await c.publish(channel, "still fine");
    await until("the next event", () => got.length === 1);
    c.close();
  });
}
