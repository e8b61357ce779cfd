// Herald's JavaScript client in headless Chromium, for tests/e2e/client.rs. The page is
// Herald's own (so it may reach 127.0.0.1); the client comes from /v1/client.js.
// Arguments: base URL, chromium path, mode ("plain" | "no-websocket" | "token"), channel,
// and for "token" the JWT secret. Over stdio: prints READY once subscribed; then each stdin
// line "N" waits until the page holds N events and prints `SEEN <seqs>` (and, in token
// mode, `TOKENS <calls>`); "publish" publishes through the client and prints `SEQ <seq>`;
// "done" ends. `ERROR ...` on failure.
import { chromium } from "playwright-core";
import crypto from "node:crypto";
import readline from "node:readline";

const [base, executablePath, mode, channel, secret] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once("line", resolve));

/** An HS256 JWT, made here so the page's getToken has somewhere to go. */
function mint(ttl) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "page", exp: Math.floor(Date.now() / 1000) + ttl, sub_channels: ["*"], pub_channels: ["*"] })}`;
  return body + "." + crypto.createHmac("sha256", secret).update(body).digest("base64url");
}

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  if (mode === "no-websocket") {
    // A proxy that breaks upgrades: every WebSocket is closed before it opens.
    await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
  }
  if (mode === "websocket-later") {
    // Upgrades break for the first attempt only; later ones reach the server.
    let attempts = 0;
    await page.routeWebSocket(/\/v1\/ws/, (ws) => (attempts++ === 0 ? ws.close() : ws.connectToServer()));
  }
  let tokens = 0;
  await page.route("**/__test/token", (route) => {
    tokens++;
    route.fulfill({ contentType: "text/plain", body: mint(4) });
  });
  await page.goto(base);
  await page.evaluate(
    async ([channel, mode]) => {
      const { connect } = await import("/v1/client.js");
      window.got = [];
      window.states = [];
      const opts = {};
      if (mode === "token") opts.getToken = async () => (await fetch("/__test/token")).text();
      if (mode === "websocket-later") opts.retryWebSocketMs = 1000;
      window.transports = [];
      window.client = connect(location.origin, opts);
      client.on("state", (s) => states.push(s));
      client.on("fallback", () => states.push("fallback"));
      client.on("connected", () => states.push("via-" + client.mode));
      client.subscribe(channel, { since: 0 }, (e) => got.push(e.seq));
    },
    [channel, mode],
  );
  await page.waitForFunction(() => window.states.includes("connected"), null, { timeout: 20000 });
  console.log("READY");
  for (;;) {
    const command = await next();
    if (command === "done" || command === undefined) break;
    if (command === "publish") {
      const seq = await page.evaluate((c) => client.publish(c, { from: "page" }), channel);
      console.log("SEQ " + seq);
      continue;
    }
    const want = Number(command);
    await page.waitForFunction((n) => window.got.length >= n, want, { timeout: 40000 });
    console.log("SEEN " + (await page.evaluate(() => window.got.join(","))));
    console.log("STATES " + (await page.evaluate(() => window.states.join(","))));
    if (mode === "token") console.log("TOKENS " + tokens);
  }
  await page.evaluate(() => client.close());
  if (problems.length) console.log("ERROR page: " + problems.join("; "));
} catch (e) {
  console.log("ERROR " + (e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
