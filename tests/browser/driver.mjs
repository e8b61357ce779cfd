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
