// Drives the operator console (GET /) in headless Chromium for tests/e2e/browser.rs.
// Arguments: page URL, Chromium path, API key. Prints `READY` once the charts have drawn,
// then answers commands read from stdin, one per line:
//   chart NAME        -> CHART {"total":N,"points":N,"latest":{...}}
//   screenshot PATH   -> SHOT PATH (the full page)
//   webhooks          -> WEBHOOKS [[cell, ...], ...]
//   channels          -> CHANNELS [[cell, ...], ...]
//   inspect PATTERN   -> WATCHING (the inspector's client is connected)
//   captured N        -> REQUEST {"line","headers":{..},"body"} of the newest of >= N
//   replay            -> REPLAYED <seq>
//   texts             -> TEXTS {"charts","channels","webhooks","placeholder"} (empty states)
//   cluster up|down   -> CLUSTER <pill text> [[node, heartbeat], ...] once the pill says so
// and `ERROR <message>` on failure (any page error or console error included).
import { commands, launch, layout } from "./driver.mjs";

const [url, executablePath, key] = process.argv.slice(2);
const stdin = commands();
const next = stdin.next;

const browser = await launch(executablePath);
const table = (id) => page.$$eval(`#${id} tr`, (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
let page;
let outage = false;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // Once a test takes Redis down, the API's 503s are what it expects to see.
  page.on("console", (m) => m.type() === "error" && !(outage && /status of 503/.test(m.text())) && problems.push(m.text()));
  page.on("request", (r) => key && r.url().includes(key) && problems.push("API key in a URL: " + r.url()));
  await page.goto(url);
  if (key) {
    await page.fill("#token", key);
    await page.dispatchEvent("#token", "change");
  }
  // Ready when the charts have drawn, or say why they cannot.
  await page.waitForFunction(
    () => Number(document.querySelector("#chart-published").dataset.points) > 0 || !document.querySelector("#charts-empty").hidden,
    null,
    { timeout: 20000 },
  );
  console.log("READY");
  for (;;) {
    const [command, arg] = ((await next()) || "done").split(" ");
    if (problems.length) throw new Error(problems.join("; "));
    if (command === "done") break;
    if (command === "chart") {
      const d = await page.$eval(`#chart-${arg}`, (c) => ({ ...c.dataset }));
      console.log("CHART " + JSON.stringify({ total: Number(d.total), points: Number(d.points), latest: JSON.parse(d.latest) }));
    } else if (command === "screenshot") {
      await page.screenshot({ path: arg, fullPage: true });
      console.log("SHOT " + arg);
    } else if (command === "webhooks" || command === "channels") {
      console.log(command.toUpperCase() + " " + JSON.stringify(await table(command === "webhooks" ? "webhook-rows" : "channel-rows")));
    } else if (command === "texts") {
      // What the page says where it has nothing to show, once the tables have loaded.
      await page.waitForSelector("#channel-rows tr", { timeout: 20000 }).catch(() => {});
      await page.waitForSelector("#webhook-rows tr", { timeout: 20000 }).catch(() => {});
      const text = (sel) => page.$eval(sel, (e) => (e.hidden ? null : e.textContent));
      console.log("TEXTS " + JSON.stringify({
        charts: await text("#charts-empty"),
        channels: await text("#channel-rows"),
        webhooks: await text("#webhook-rows"),
        placeholder: await page.$eval("#token", (e) => e.placeholder),
      }));
    } else if (command === "width") {
      // The window narrowed (or widened) to N px; then what a person would see wrong.
      await page.setViewportSize({ width: Number(arg), height: 900 });
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
      console.log("LAYOUT " + JSON.stringify(await layout(page)));
    } else if (command === "cluster") {
      const want = arg === "up" ? "ok" : "bad";
      outage = arg === "down";
      await page.waitForSelector(`#cluster-pill.${want}:not([hidden])`, { timeout: 20000 });
      await page.waitForSelector("#cluster:not([hidden])", { timeout: 20000 });
      console.log(`CLUSTER ${await page.textContent("#cluster-pill")} ${JSON.stringify(await table("nodes"))}`);
    } else if (command === "inspect") {
      await page.fill("#inspect-channels", arg);
      await page.click("#inspect button");
      await page.waitForSelector("#inspect-state.ok", { timeout: 20000 });
      console.log("WATCHING");
    } else if (command === "captured") {
      await page.waitForFunction((n) => document.querySelectorAll("#captured li").length >= n, Number(arg), { timeout: 20000 });
      await page.click("#captured li:first-child");
      const headers = Object.fromEntries(await table("req-headers"));
      console.log("REQUEST " + JSON.stringify({ line: await page.textContent("#req-line"), headers, body: await page.textContent("#req-body") }));
    } else if (command === "replay") {
      await page.click("#replay");
      await page.waitForFunction(() => /^(replayed as seq \d+|refused)/.test(document.querySelector("#replay-result").value), null, { timeout: 20000 });
      const out = await page.$eval("#replay-result", (o) => o.value);
      if (!out.startsWith("replayed")) throw new Error(out);
      console.log("REPLAYED " + out.split(" ").at(-1));
    } else {
      throw new Error("unknown command " + command);
    }
  }
} catch (e) {
  console.log("ERROR " + e.message.split("\n")[0]);
} finally {
  await browser.close();
  stdin.close();
}
