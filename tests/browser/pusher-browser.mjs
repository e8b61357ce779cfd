// pusher-js (its browser build) and Laravel Echo in headless Chromium against Herald, for
// tests/e2e/pusher.rs. Pages are Herald's own (the libraries are added to them); the
// WebSocket goes to the real server. The app's auth endpoint is this script, answering a
// route on Herald's origin, signing with the `pusher` server SDK. Arguments: base URL, chromium
// path, JSON {id,key,secret}. Prints `OK <step>` lines, `ERROR <what>` on failure, `DONE`.
import { chromium } from "playwright-core";
import PusherServer from "pusher";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const [base, executablePath, appJson] = process.argv.slice(2);
const app = JSON.parse(appJson);
const here = path.dirname(fileURLToPath(import.meta.url));
const pusherJs = fs.readFileSync(path.join(here, "node_modules/pusher-js/dist/web/pusher.js"), "utf8");
const echoJs = fs.readFileSync(path.join(here, "node_modules/laravel-echo/dist/echo.iife.js"), "utf8");
const url = new URL(base);
const server = new PusherServer({ appId: app.id, key: app.key, secret: app.secret, host: url.hostname, port: url.port, useTLS: false });
const forger = new PusherServer({ appId: app.id, key: app.key, secret: "forged", host: url.hostname, port: url.port, useTLS: false });
const WAIT = 15000;
const logs = [];

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
});

// A page on Herald's origin whose auth endpoint signs as `user` (with `signer`).
async function open(user, signer = server) {
  // A real page of Herald's first (Chromium lets only a page loaded from 127.0.0.1 reach
  // 127.0.0.1), then the two libraries added to it; the dashboard's CSP does not apply to
  // what this test injects.
  const context = await browser.newContext({ bypassCSP: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => logs.push(user + ": " + m.type() + " " + m.text()));
  await page.route("**/__test/**", async (route) => {
    const u = new URL(route.request().url());
    if (u.pathname === "/__test/auth") {
      const form = new URLSearchParams(route.request().postData() || "");
      const channel = form.get("channel_name");
      const presence = channel.startsWith("presence-") ? { user_id: user, user_info: { name: "Browser " + user } } : undefined;
      const auth = signer.authorizeChannel(form.get("socket_id"), channel, presence);
      return route.fulfill({ contentType: "application/json", body: JSON.stringify(auth) });
    }
    return route.fulfill({ status: 404, body: "" });
  });
  await page.goto(base);
  await page.addScriptTag({ content: pusherJs });
  await page.addScriptTag({ content: echoJs });
  return { page, context, problems };
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const settings = `{
  key: ${JSON.stringify(app.key)}, cluster: "local", wsHost: location.hostname, wsPort: Number(location.port),
  forceTLS: false, enabledTransports: ["ws"], disableStats: true,
}`;

try {
  // Laravel Echo (broadcaster pusher): join a presence channel and listen on a private one.
  const a = await open("ann");
  await a.page.evaluate(`(() => {
    window.seen = { here: null, joining: [], leaving: [], shipped: [] };
    window.echo = new Echo.default({ broadcaster: "pusher", Pusher, authEndpoint: "/__test/auth", ...${settings} });
    echo.join("lobby")
      // Echo hands each member's user_info (Laravel puts the user's fields there).
      .here((users) => { seen.here = users.map((u) => u.name); })
      .joining((u) => seen.joining.push(u.name))
      .leaving((u) => seen.leaving.push(u.name));
    echo.private("orders").listen(".order.shipped", (e) => seen.shipped.push(e));
  })()`);
  await a.page.waitForFunction(() => window.seen.here && window.seen.here.length === 1, null, { timeout: WAIT });
  console.log("OK echo here");

  // A second browser with plain pusher-js joins: Echo sees it join, then leave.
  const b = await open("bob");
  await b.page.evaluate(`(() => {
    window.t = { members: null };
    const p = new Pusher(${JSON.stringify(app.key)}, { ...${settings}, channelAuthorization: { endpoint: "/__test/auth", transport: "ajax" } });
    const ch = p.subscribe("presence-lobby");
    ch.bind("pusher:subscription_succeeded", (m) => { window.t.members = m.count; });
  })()`);
  await b.page.waitForFunction(() => window.t.members === 2, null, { timeout: WAIT });
  await a.page.waitForFunction(() => window.seen.joining.includes("Browser bob"), null, { timeout: WAIT });
  console.log("OK member_added across browsers");

  // The server SDK triggers on the private channel; Echo's listener gets it.
  await server.trigger("private-orders", "order.shipped", { order: 7 });
  await a.page.waitForFunction(() => window.seen.shipped.length === 1, null, { timeout: WAIT });
  const shipped = await a.page.evaluate(() => window.seen.shipped[0]);
  check(shipped.order === 7, "shipped " + JSON.stringify(shipped));
  console.log("OK echo private event");

  // A forged auth (another secret) is refused and gets nothing of the channel.
  const f = await open("mallory", forger);
  await f.page.evaluate(`(() => {
    window.t = { refused: null, leaked: 0 };
    const p = new Pusher(${JSON.stringify(app.key)}, { ...${settings}, channelAuthorization: { endpoint: "/__test/auth", transport: "ajax" } });
    const ch = p.subscribe("private-orders");
    ch.bind("pusher:subscription_error", (e) => { window.t.refused = e; });
    ch.bind("order.shipped", () => { window.t.leaked++; });
  })()`);
  await f.page.waitForFunction(() => window.t.refused !== null, null, { timeout: WAIT });
  await server.trigger("private-orders", "order.shipped", { order: 8 });
  await a.page.waitForFunction(() => window.seen.shipped.length === 2, null, { timeout: WAIT });
  check((await f.page.evaluate(() => window.t.leaked)) === 0, "a forged subscription got an event");
  console.log("OK forged auth refused");

  await b.context.close();
  await a.page.waitForFunction(() => window.seen.leaving.includes("Browser bob"), null, { timeout: WAIT });
  console.log("OK member_removed when a browser goes");

  for (const p of [a, f]) check(p.problems.length === 0, "page errors: " + p.problems.join("; "));
  console.log("DONE");
} catch (e) {
  console.log("ERROR " + (e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : e) + " | logs: " + logs.join(" / "));
  process.exitCode = 1;
} finally {
  await browser.close();
}
