// Loads a page from another origin that frames Herald's portal (tests/e2e/browser.rs) and
// prints `FRAMED shown` when the portal rendered inside the frame, `FRAMED blocked` when the
// browser refused to frame it (CSP frame-ancestors), or `ERROR <message>`.
import { launch } from "./driver.mjs";

const [url, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath);
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForTimeout(1500);
  const portal = page.frames().find((f) => f !== page.mainFrame());
  let shown = false;
  try {
    shown = !!portal && (await portal.$eval("#who", (w) => w.className.includes("ok"), null));
  } catch {
    shown = false;
  }
  console.log("FRAMED " + (shown ? "shown" : "blocked"));
} catch (e) {
  console.log("ERROR " + e.message.split("\n")[0]);
} finally {
  await browser.close();
}
