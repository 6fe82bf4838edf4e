// Copies the compiled single-file library to the demo page, which the Go
// binary embeds, so that building Go never needs npm. The copy is committed.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "dist", "natter.js");
const dst = join(root, "..", "internal", "demo", "static", "natter.js");

const js = readFileSync(src, "utf8");
// The runtime must stay one self-contained ES module: type imports vanish
// at compile time, a value import would break the embedded copy.
if (/^\s*import\s/m.test(js) || /\bfrom\s*["']\.\//.test(js)) {
  throw new Error(`${src} imports another module; keep the runtime in src/natter.ts`);
}
mkdirSync(dirname(dst), { recursive: true });
writeFileSync(dst, "// Generated from clients/src/natter.ts by `npm run build` in clients/. Do not edit.\n" + js);
console.log(`copied ${src} -> ${dst}`);
