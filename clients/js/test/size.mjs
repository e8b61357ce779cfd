// The file Herald serves at /v1/client.js: herald.js minified by esbuild (pinned in the
// lockfile, so a build is reproducible byte for byte) and committed as herald.min.js, so
// building Herald needs no Node. `npm run build` rewrites it; the Node tests check the
// committed file is this build of the source. The size budget: minified and gzipped (level
// 9), at most 8 KiB.
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

export const BUDGET = 8 * 1024;
export const MINIFIED = fileURLToPath(new URL("../herald.min.js", import.meta.url));

/** herald.js as esbuild minifies it. */
export async function minify() {
  const entry = fileURLToPath(new URL("../herald.js", import.meta.url));
  const out = await build({
    entryPoints: [entry],
    minify: true,
    write: false,
    format: "esm",
    banner: { js: "// Herald's JavaScript client, minified from clients/js/herald.js (Apache-2.0)." },
  });
  return Buffer.from(out.outputFiles[0].contents);
}

export async function measure() {
  const min = await minify();
  return { minified: min.length, gzipped: gzipSync(min, { level: 9 }).length };
}

/** The committed herald.min.js, or null when there is none. */
export function committed() {
  try {
    return readFileSync(MINIFIED);
  } catch {
    return null;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv.includes("--write")) {
    writeFileSync(MINIFIED, await minify());
    console.log(`wrote ${MINIFIED}`);
  }
  const s = await measure();
  console.log(`herald.js: ${s.minified} bytes minified, ${s.gzipped} bytes minified+gzip (budget ${BUDGET})`);
  process.exit(s.gzipped <= BUDGET ? 0 : 1);
}
