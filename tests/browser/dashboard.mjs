// Drives the dashboard in headless Chromium for tests/e2e/browser.rs. Speaks over stdio:
// prints `READY` once subscribed, then `SEEN <seqs>` each time the page shows `want` events
// (read from stdin, one number per line), `PUBLISHED <seq>` after publishing through the page's
// form, and `ERROR <message>` on failure.
import { chromium } from "playwright-core";
import readline from "node:readline";

// An optional third argument is a credential typed into the page's key field; no request URL
// may ever contain it.
const [url, executablePath, credential] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once("line", resolve));

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // Network errors from the server being killed on purpose are expected; anything else
  // logged as an error (a CSP violation, a 404, a script error) is a failure.
  const expected = /net::ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE)/;
  page.on("console", (m) => m.type() === "error" && !expected.test(m.text()) && problems.push(m.text()));
  page.on("request", (r) => credential && r.url().includes(credential) && problems.push("credential in a URL: " + r.url()));
  await page.goto(url);
  if (credential) {
    await page.fill("#token", credential);
    await page.dispatchEvent("#token", "change");
  }
  await page.fill("#channels", "demo, chat/*");
  await page.check("#from-start");
  await page.click("#subscribe button");
  await page.waitForSelector("#state.ok", { timeout: 20000 });
  console.log("READY");
  for (;;) {
    const command = await next();
    if (command === "publish") {
      await page.fill("#pub-channel", "chat/room-1");
      await page.fill("#pub-type", "message.sent");
      // Text that is not JSON is refused in the page (nothing is sent), not stored as a string.
      await page.fill("#pub-data", "{total:3}");
      await page.click("#publish button");
      await page.waitForFunction(() => document.querySelector("#pub-result").value !== "", null, { timeout: 20000 });
      const refusal = await page.textContent("#pub-result");
      if (!refusal.startsWith("the data is not JSON")) problems.push("invalid JSON was not refused: " + refusal);
      await page.fill("#pub-data", '{"text": "from the page"}');
      await page.click("#publish button");
      await page.waitForFunction(() => /^seq \d+$/.test(document.querySelector("#pub-result").value), null, { timeout: 20000 });
      console.log("PUBLISHED " + (await page.textContent("#pub-result")).slice(4));
      continue;
    }
    if (command === "done" || command === undefined) break;
    const want = Number(command);
    await page.waitForFunction((n) => document.querySelectorAll("#events li.event").length >= n, want, { timeout: 30000 });
    const seqs = await page.$$eval("#events li.event", (items) => items.map((li) => li.value).reverse());
    console.log("SEEN " + seqs.join(","));
  }
  if (problems.length) console.log("ERROR " + problems.join("; "));
} catch (e) {
  console.log("ERROR " + e.message.split("\n")[0]);
} finally {
  await browser.close();
  lines.close();
}
process.exit(0);
