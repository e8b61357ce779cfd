// What the page drivers share: Chromium launched the way this box needs it, and commands
// read from stdin one line at a time, buffered, so a command that arrives while the last one
// is still finishing is not lost.
import { chromium } from "playwright-core";
import readline from "node:readline";

export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
  });
}

export function commands() {
  const lines = readline.createInterface({ input: process.stdin });
  const incoming = lines[Symbol.asyncIterator]();
  return {
    next: async () => (await incoming.next()).value,
    close: () => lines.close(),
  };
}

/** What a person would see wrong in a page's layout at its current width: a horizontal
 * scroll (the page wider than the window), and words broken across two lines ("enabl/ed").
 * Only plain words count: ids, URLs and channel names may wrap where they must. */
export function layout(page) {
  return page.evaluate(() => {
    const broken = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const node = walker.currentNode;
      const el = node.parentElement;
      if (!el || el.closest("[hidden], script, style, pre, textarea, code")) continue;
      if (!el.getClientRects().length) continue; // not rendered
      const re = /\S+/g;
      let m;
      while ((m = re.exec(node.textContent))) {
        const word = m[0].replace(/^[^A-Za-z]+|[^A-Za-z]+$/g, "");
        if (!/^[A-Za-z]{2,}$/.test(word)) continue;
        const start = m.index + m[0].indexOf(word);
        const range = document.createRange();
        range.setStart(node, start);
        range.setEnd(node, start + word.length);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (lines.size > 1) broken.push(`${word} (in ${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""})`);
      }
    }
    const doc = document.documentElement;
    return { overflow: doc.scrollWidth > doc.clientWidth ? doc.scrollWidth - doc.clientWidth : 0, broken };
  });
}
