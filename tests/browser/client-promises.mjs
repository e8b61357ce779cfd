// The JavaScript client keeping its word in the outages it exists for, in headless Chromium,
// for tests/e2e/client.rs. Playwright stands in for a hostile network: it refuses WebSocket
// upgrades, cuts live sockets and fails requests, at chosen moments.
// Arguments: open Herald's base URL, a Herald with an API key (so unauthenticated clients are
// refused), Chromium's path. Prints `OK <scenario>` or `FAIL <scenario>: <why>` for each, then
// `DONE`.
import { launch } from "./driver.mjs";

const [base, keyed, executablePath] = process.argv.slice(2);
const WAIT = 20000;

async function post(channel, data) {
  const r = await fetch(base + "/v1/events", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  if (r.status !== 201) throw new Error("publish: " + r.status);
  return (await r.json()).seq;
}

async function history(channel) {
  const page = await (await fetch(`${base}/v1/events?channel=${channel}&after=0`)).json();
  return page.events;
}

/** Polls `check` (async) until it returns a truthy value, or throws after `ms`. */
async function until(what, check, ms = WAIT) {
  const started = Date.now();
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() - started > ms) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A page of `origin` with the client loaded as `window.client` (not yet connected). */
async function page(browser, origin, setup) {
  const p = await browser.newPage();
  p.problems = [];
  p.on("pageerror", (e) => p.problems.push(e.message));
  if (setup) await setup(p);
  await p.goto(origin);
  await p.evaluate(async () => {
    window.herald = await import("/v1/client.js");
    window.states = [];
    window.errors = [];
    window.got = [];
  });
  return p;
}

/** A page whose WebSockets reach the server until `cut()`, which closes them all and refuses
 * new ones until `restore()`. */
async function cuttable(browser) {
  const state = { outage: false, sockets: [] };
  const p = await page(browser, base, (p) =>
    p.routeWebSocket(/\/v1\/ws/, (ws) => {
      if (state.outage) return ws.close();
      state.sockets.push(ws);
      ws.connectToServer();
    }),
  );
  p.cut = async () => {
    state.outage = true;
    for (const ws of state.sockets) ws.close();
    await until("the drop", () => p.evaluate(() => client.state !== "connected"));
  };
  p.restore = () => (state.outage = false);
  return p;
}

const scenarios = {
  // A publish made before the client has found out that WebSockets cannot open goes over
  // HTTP once it falls back, rather than waiting for a WebSocket forever.
  async "publish before the fallback completes"(browser) {
    const channel = `cp.early.${Date.now()}`;
    const p = await page(browser, base, (p) => p.routeWebSocket(/\/v1\/ws/, (ws) => ws.close()));
    const seq = await p.evaluate(async (channel) => {
      window.client = herald.connect(location.origin);
      return client.publish(channel, { early: true });
    }, channel);
    if (typeof seq !== "number") throw new Error("publish gave " + seq);
    const stored = await history(channel);
    if (stored.length !== 1 || stored[0].seq !== seq) throw new Error("stored " + JSON.stringify(stored));
    await p.close();
  },

  // After the fallback, a publish during a 2 s outage of HTTP is queued and retried with
  // the same id until it is taken: stored once, and the promise resolves.
  async "publish during an outage after the fallback"(browser) {
    const channel = `cp.outage.${Date.now()}`;
    let outage = false;
    let refused = 0;
    const p = await page(browser, base, async (p) => {
      await p.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
      await p.route("**/v1/events", (route) => (outage && route.request().method() === "POST" ? (refused++, route.abort()) : route.continue()));
    });
    await p.evaluate((channel) => {
      window.client = herald.connect(location.origin);
      client.subscribe(channel, (e) => got.push(e.seq));
    }, channel);
    await until("the SSE fallback", () => p.evaluate(() => client.mode === "sse" && client.state === "connected"));
    outage = true;
    const pending = p.evaluate((channel) => client.publish(channel, { during: "outage" }).then((seq) => ({ seq }), (e) => ({ error: e.message })), channel);
    await until("two refused attempts", () => refused >= 2);
    await new Promise((r) => setTimeout(r, 2000));
    outage = false;
    const result = await pending;
    if (!result.seq) throw new Error("publish failed: " + result.error);
    const stored = await history(channel);
    if (stored.length !== 1) throw new Error("stored " + stored.length + " times");
    await until("the event on the stream", () => p.evaluate((seq) => got.includes(seq), result.seq));
    await p.close();
  },

  // The same over WebSocket: the socket is cut and cannot come back for 2 s.
  async "publish during a WebSocket outage"(browser) {
    const channel = `cp.wsoutage.${Date.now()}`;
    const p = await cuttable(browser);
    await p.evaluate(() => {
      window.client = herald.connect(location.origin, { transport: "ws" });
    });
    await until("connected", () => p.evaluate(() => client.state === "connected"));
    await p.cut();
    const pending = p.evaluate((channel) => client.publish(channel, 1).then((seq) => ({ seq }), (e) => ({ error: e.message })), channel);
    await new Promise((r) => setTimeout(r, 2000));
    p.restore();
    const result = await pending;
    if (!result.seq) throw new Error("publish failed: " + result.error);
    const stored = await history(channel);
    if (stored.length !== 1 || stored[0].seq !== result.seq) throw new Error("stored " + JSON.stringify(stored));
    await p.close();
  },

  // A live subscription (no `since`) that has seen nothing yet resumes from the head the
  // welcome gave: events published while it was cut off still arrive.
  async "a live subscription misses nothing across a drop"(browser) {
    const channel = `cp.live.${Date.now()}`;
    const p = await cuttable(browser);
    await p.evaluate((channel) => {
      window.client = herald.connect(location.origin, { transport: "ws" });
      client.subscribe(channel, (e) => got.push(e.seq));
    }, channel);
    await until("connected", () => p.evaluate(() => client.state === "connected"));
    await p.cut();
    const sent = [await post(channel, 1), await post(channel, 2), await post(channel, 3)];
    p.restore();
    await until("the events published during the drop", () => p.evaluate((n) => got.length >= n, sent.length));
    const got = await p.evaluate(() => got);
    if (JSON.stringify(got) !== JSON.stringify(sent)) throw new Error(`got ${got}, sent ${sent}`);
    await p.close();
  },

  // `connected` means a stream is open: while every WebSocket and every event stream is
  // refused, the client never says connected.
  async "state is not connected while every connection is refused"(browser) {
    let attempts = 0;
    const p = await page(browser, base, async (p) => {
      await p.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
      await p.route("**/v1/sse**", (route) => (attempts++, route.abort()));
    });
    await p.evaluate(() => {
      window.client = herald.connect(location.origin);
      client.on("state", (s) => states.push(s));
      client.subscribe("cp.refused", () => {});
    });
    await until("two refused event streams", () => attempts >= 2);
    const states = await p.evaluate(() => states);
    if (states.includes("connected")) throw new Error("said connected: " + states);
    await p.close();
  },

  // Two Subscriptions on one channel: unsubscribing one leaves the other hearing events.
  async "unsubscribe of one leaves another on the same channel"(browser) {
    const channel = `cp.two.${Date.now()}`;
    const p = await page(browser, base);
    await p.evaluate((channel) => {
      window.client = herald.connect(location.origin, { transport: "ws" });
      window.a = [];
      window.first = client.subscribe(channel, (e) => a.push(e.seq));
      client.subscribe(channel, (e) => got.push(e.seq));
    }, channel);
    await until("connected", () => p.evaluate(() => client.state === "connected"));
    const before = await post(channel, 0);
    await until("both hear it", () => p.evaluate((s) => a.includes(s) && got.includes(s), before));
    await p.evaluate(() => first.unsubscribe());
    const after = await post(channel, 1);
    await until("the other still hears", () => p.evaluate((s) => got.includes(s), after));
    await p.close();
  },

  // A token the server refuses is renewed through getToken, and the stream goes on with the
  // new one (the backend here: this script, holding the API key).
  ...Object.fromEntries(
    ["ws", "sse"].map((transport) => [
      `a refused token is renewed through getToken (${transport})`,
      async (browser) => {
        const minted = await fetch(keyed + "/v1/tokens", {
          method: "POST",
          headers: { authorization: "Bearer only-the-backend", "content-type": "application/json" },
          body: JSON.stringify({ sub_channels: ["cp.*"] }),
        });
        if (minted.status !== 201 && minted.status !== 200) throw new Error("mint: " + minted.status);
        const { token } = await minted.json();
        const channel = `cp.renew.${transport}.${Date.now()}`;
        const p = await page(browser, keyed);
        await p.evaluate(
          ({ transport, token, channel }) => {
            window.asked = 0;
            window.got = [];
            const getToken = async () => (++window.asked === 1 ? "refused-token" : token);
            window.client = herald.connect(location.origin, { transport, getToken });
            client.subscribe(channel, (e) => got.push(e.data));
          },
          { transport, token, channel },
        );
        await until("connected", () => p.evaluate(() => client.state === "connected"));
        const r = await fetch(keyed + "/v1/events", {
          method: "POST",
          headers: { authorization: "Bearer only-the-backend", "content-type": "application/json" },
          body: JSON.stringify({ channel, data: "after renewal" }),
        });
        if (r.status !== 201) throw new Error("publish: " + r.status);
        await until("the event", () => p.evaluate(() => got.includes("after renewal")));
        const asked = await p.evaluate(() => asked);
        if (asked < 2) throw new Error("getToken was asked " + asked + " times");
        await p.close();
      },
    ]),
  ),

  // A refusal (no credential on a server that needs one) is an `error` event with Herald's
  // code and message, and a publish waiting for a stream is refused, not left hanging; over
  // SSE too, where EventSource hides the status.
  ...Object.fromEntries(
    ["ws", "sse"].map((transport) => [
      `a refusal is told with the server's code and pending publishes reject (${transport})`,
      async (browser) => {
        const p = await page(browser, keyed);
        const result = await p.evaluate(async (transport) => {
          window.client = herald.connect(location.origin, { transport });
          client.on("error", (e) => errors.push({ code: e.code, message: e.message }));
          client.subscribe("cp.keyed", () => {});
          return client.publish("cp.keyed", 1).then((seq) => ({ seq }), (e) => ({ code: e.code, message: e.message }));
        }, transport);
        if (result.seq !== undefined) throw new Error("a publish without a credential was taken");
        if (!result.code || result.code === "publish_timeout") throw new Error("publish: " + JSON.stringify(result));
        const errors = await until("an error event with a code", () =>
          p.evaluate(() => errors.filter((e) => e.code && e.code !== "unreachable")).then((e) => e.length && e),
        );
        if (!/key|token|credential|auth/i.test(errors[0].message)) throw new Error("message: " + JSON.stringify(errors));
        await p.close();
      },
    ]),
  ),
};

const browser = await launch(executablePath);
try {
  for (const [name, run] of Object.entries(scenarios)) {
    try {
      // Bounded, so a promise the client never settles fails its scenario instead of
      // stalling the rest.
      let timer;
      const limit = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("still running after 30 s")), 30000)));
      await Promise.race([run(browser), limit]).finally(() => clearTimeout(timer));
      console.log("OK " + name);
    } catch (e) {
      console.log(`FAIL ${name}: ${e && e.message ? e.message.split("\n")[0] : e}`);
    }
  }
} finally {
  await browser.close();
  console.log("DONE");
}
