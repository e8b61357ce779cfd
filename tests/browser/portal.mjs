// Drives the consumer portal (/portal#token=...) in headless Chromium for tests/e2e/browser.rs.
// Arguments: portal URL (with the token in its fragment), Chromium path, the token. Prints
// `READY <address bar>` once the endpoint list has loaded, then answers commands from stdin:
//   add URL CHANNELS   -> ADDED <id> <secret>   or  REFUSED <message>
//   attempts STATUS    -> ATTEMPTS [[cells...], ...] once a row with STATUS is listed
//   retry              -> RETRIED <result>  (the newest failed row's Retry button)
//   test               -> TESTED <result>
//   rotate             -> ROTATED <secret>
//   texts              -> TEXTS {"endpoints","scope","offered"} (what an empty page says)
//   view               -> PAYLOAD {"title","body"} (the newest attempt's event)
//   edit URL CHANNELS RATE -> EDITED <result>  (the open endpoint's form; RATE "-" clears it)
//   reload             -> RELOADED <address bar>  (the token comes from session storage)
//   delete             -> DELETED <endpoints listed>  (accepting the confirmation)
//   screenshot PATH    -> SHOT PATH
// and `ERROR <message>` on failure. Any request URL holding the token is an error.
import { commands, launch, layout } from "./driver.mjs";

const [url, executablePath, token] = process.argv.slice(2);
const stdin = commands();
const next = stdin.next;

const browser = await launch(executablePath);
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && !/status of 403/.test(m.text()) && problems.push(m.text()));
  page.on("request", (r) => r.url().split("#")[0].includes(token) && problems.push("token in a URL: " + r.url()));
  const apiCalls = [];
  page.on("request", (r) => new URL(r.url()).pathname.startsWith("/v1/") && apiCalls.push(r.method() + " " + r.url()));
  await page.goto(url);
  await page.waitForSelector("#who.ok, #who.bad", { timeout: 20000 });
  if (await page.$("#who.bad")) {
    // The refusal must be real, not cosmetic: no credential kept, and the add form, if it is
    // there at all, sends nothing when submitted. A marker request made after the submit
    // shows that anything the submit sent has been seen.
    const kept = await page.evaluate(() => sessionStorage.getItem("herald_portal_token"));
    if (kept) problems.push("a credential was kept in sessionStorage");
    const marker = page.waitForRequest((r) => r.url().includes("/healthz?marker"), { timeout: 20000 });
    await page.evaluate(() => {
      const form = document.querySelector("#add");
      if (form) {
        document.querySelector("#add-url").value = "https://example.com/x";
        document.querySelector("#add-channels").value = "anything.*";
        form.requestSubmit();
      }
      fetch("/healthz?marker");
    });
    await marker;
    if (apiCalls.length) problems.push("the refused page called the API: " + apiCalls.join(", "));
    if (problems.length) throw new Error(problems.join("; "));
    throw new Error("the page refused: " + (await page.textContent("#who")));
  }
  console.log("READY " + page.url());
  const result = async () => {
    await page.waitForFunction(() => document.querySelector("#action-result").value !== "", null, { timeout: 20000 });
    return page.$eval("#action-result", (o) => o.value);
  };
  for (;;) {
    const [command, ...args] = ((await next()) || "done").split(" ");
    if (problems.length) throw new Error(problems.join("; "));
    if (command === "done") break;
    if (command === "add") {
      await page.fill("#add-url", args[0]);
      await page.fill("#add-channels", args[1]);
      await page.click("#add button");
      await page.waitForFunction(() => document.querySelector("#add-result").value !== "", null, { timeout: 10000 }).catch(async () => {
        const state = await page.evaluate(() => ({ valid: document.querySelector("#add").checkValidity(), url: document.querySelector("#add-url").value, who: document.querySelector("#who").textContent }));
        throw new Error("adding never answered: " + JSON.stringify(state));
      });
      const out = await page.$eval("#add-result", (o) => o.value);
      if (out.startsWith("added ")) {
        await page.waitForSelector("#detail:not([hidden])", { timeout: 10000 });
        console.log(`ADDED ${out.slice(6)} ${await page.textContent("#secret")}`);
      } else {
        console.log("REFUSED " + out);
      }
      await page.$eval("#add-result", (o) => (o.value = ""));
    } else if (command === "attempts") {
      const rows = () => page.$$eval("#attempt-rows tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
      await page.waitForSelector(`#attempt-rows tr[data-status="${args[0]}"]`, { timeout: 15000 }).catch(async () => {
        throw new Error(`no ${args[0]} attempt listed: ${JSON.stringify(await rows())} ${await page.textContent("#detail-id")}`);
      });
      console.log("ATTEMPTS " + JSON.stringify(await rows()));
    } else if (command === "retry") {
      await page.$eval("#action-result", (o) => (o.value = ""));
      await page.click('#attempt-rows tr[data-status="failed"] button.retry');
      console.log("RETRIED " + (await result()));
    } else if (command === "test") {
      await page.$eval("#action-result", (o) => (o.value = ""));
      await page.click("#test");
      console.log("TESTED " + (await result()));
    } else if (command === "rotate") {
      const before = await page.textContent("#secret");
      await page.$eval("#action-result", (o) => (o.value = ""));
      await page.click("#rotate");
      await result();
      await page.waitForFunction((b) => document.querySelector("#secret").textContent !== b, before);
      console.log("ROTATED " + (await page.textContent("#secret")));
    } else if (command === "texts") {
      await page.waitForSelector("#endpoint-rows tr", { timeout: 20000 });
      console.log("TEXTS " + JSON.stringify({
        endpoints: await page.textContent("#endpoint-rows"),
        scope: await page.textContent("#scope"),
        offered: await page.$$eval("#allowed-channels option", (os) => os.map((o) => o.value)),
      }));
    } else if (command === "view") {
      await page.click("#attempt-rows button.view");
      await page.waitForSelector("#payload-box:not([hidden])", { timeout: 10000 });
      await page.waitForFunction(() => document.querySelector("#payload").textContent.trim() !== "", null, { timeout: 10000 });
      console.log("PAYLOAD " + JSON.stringify({ title: await page.textContent("#payload-seq"), body: await page.textContent("#payload") }));
    } else if (command === "width") {
      // The window narrowed (or widened) to N px; then what a person would see wrong.
      await page.setViewportSize({ width: Number(args[0]), height: 900 });
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
      console.log("LAYOUT " + JSON.stringify(await layout(page)));
    } else if (command === "edit") {
      await page.$eval("#action-result", (o) => (o.value = ""));
      await page.fill("#edit-url", args[0]);
      await page.fill("#edit-channels", args[1]);
      await page.fill("#edit-rate", args[2] === "-" ? "" : args[2]);
      await page.click("#edit button");
      console.log("EDITED " + (await result()));
    } else if (command === "reload") {
      await page.reload();
      await page.waitForSelector("#who.ok, #who.bad", { timeout: 20000 });
      if (await page.$("#who.bad")) throw new Error("after a reload: " + (await page.textContent("#who")));
      console.log("RELOADED " + page.url());
    } else if (command === "delete") {
      page.once("dialog", (d) => d.accept());
      await page.click("#delete");
      await page.waitForSelector("#detail[hidden]", { state: "attached", timeout: 10000 });
      console.log("DELETED " + (await page.$$eval("#endpoint-rows tr[data-id]", (trs) => trs.length)));
    } else if (command === "screenshot") {
      await page.screenshot({ path: args[0], fullPage: true });
      console.log("SHOT " + args[0]);
    } else {
      throw new Error("unknown command " + command);
    }
  }
  if (problems.length) console.log("ERROR " + problems.join("; "));
} catch (e) {
  console.log("ERROR " + e.message.split("\n")[0]);
} finally {
  await browser.close();
  stdin.close();
}
