// Loads a page from another origin that frames Herald's portal (tests/e2e/browser.rs) and
// prints `FRAMED shown` when the portal rendered inside the frame, `FRAMED blocked` when the
// browser refused to frame it (its console names the CSP frame-ancestors directive), or
// `ERROR <message>` when neither happened: a failure of anything else is never "blocked".
import { launch } from "./driver.mjs";

const [url, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath);
try {
  const page = await browser.newPage();
  let refused = false;
  page.on("console", (m) => /frame-ancestors/.test(m.text()) && (refused = true));
  await page.goto(url);
  const deadline = Date.now() + 20000;
  let verdict = null;
  while (!verdict) {
    if (refused) verdict = "blocked";
    const portal = page.frames().find((f) => f !== page.mainFrame());
    if (portal && (await portal.$("#who.ok").catch(() => null))) verdict = "shown";
    if (!verdict && Date.now() > deadline) throw new Error("the frame neither showed the portal nor was refused");
    if (!verdict) await new Promise((r) => setTimeout(r, 25));
  }
  console.log("FRAMED " + verdict);
} catch (e) {
  console.log("ERROR " + e.message.split("\n")[0]);
} finally {
  await browser.close();
}
