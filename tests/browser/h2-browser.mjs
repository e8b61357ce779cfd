// Chromium holds more than 6 EventSource streams to one origin when it speaks HTTP/2 (over
// HTTP/1.1 it queues the 7th). For tests/e2e/tls.rs. Arguments: https base URL, chromium
// path, stream count. Prints READY when every stream is open, then OK once each got an event
// (the test publishes one per stream), ERROR on failure.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [base, executablePath, count] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin });
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
});
try {
  // The test's certificate comes from a throwaway CA.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const response = await page.goto(base);
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  if (protocol !== "h2") throw new Error("page loaded over " + protocol + " (status " + response.status() + ")");
  await page.evaluate((n) => {
    window.counts = [];
    window.opened = 0;
    for (let i = 0; i < n; i++) {
      window.counts.push(0);
      const es = new EventSource(`/v1/sse?channel=h2.${i}`);
      es.onopen = () => window.opened++;
      es.onmessage = () => window.counts[i]++;
    }
  }, Number(count));
  await page.waitForFunction((n) => window.opened === n, Number(count), { timeout: 20000 });
  console.log("READY");
  await page.waitForFunction(() => window.counts.every((c) => c >= 1), null, { timeout: 20000 });
  console.log("OK");
  lines.close();
} catch (e) {
  console.log("ERROR " + (e && e.message ? e.message.split("\n")[0] : e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
