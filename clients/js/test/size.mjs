// The size budget: herald.js minified (esbuild) and gzipped (level 9) must stay <= 8 KiB.
// Prints the sizes; exits 1 over budget. Also run as part of the Node tests.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

export const BUDGET = 8 * 1024;

export async function measure() {
  const entry = fileURLToPath(new URL("../herald.js", import.meta.url));
  const out = await build({ entryPoints: [entry], minify: true, write: false, format: "esm" });
  const min = out.outputFiles[0].contents;
  return { minified: min.length, gzipped: gzipSync(min, { level: 9 }).length };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const s = await measure();
  console.log(`herald.js: ${s.minified} bytes minified, ${s.gzipped} bytes minified+gzip (budget ${BUDGET})`);
  process.exit(s.gzipped <= BUDGET ? 0 : 1);
}
