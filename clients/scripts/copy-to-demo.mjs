// Copies the compiled library to the demo page, which the Go binary
// embeds, so that building Go never needs npm. The copy is committed.
//
// The page imports "./natter.js": the entry dist/natter.js becomes
// static/natter.js, with its imports pointed from "./x.js" to
// "./natter/x.js", and the modules it reaches become static/natter/*.js as
// they are (they import each other from the same directory). The runtime
// must import nothing but its own modules: type imports vanish at compile
// time, any other import would break the embedded copy (the protobuf wire
// and OpenTelemetry, loaded on demand, are the exceptions: see OPTIONAL).
import { readFileSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const demo = join(root, "..", "internal", "demo", "static");
const dir = "natter"; // static/natter/: the modules, generated as a whole

// A static import or re-export with its specifier (tsc prints each on lines of its own).
const FROM = /^(\s*(?:import|export)\b[^;]*?\bfrom\s*["'])([^"']+)(["'])|^(\s*import\s*["'])([^"']+)(["'])/gm;

// The two dynamic imports. The protobuf wire (connection.ts loads
// protobuf.js for wire: "protobuf" only) is not copied: protobuf.js imports
// @bufbuild/protobuf, which a page without a bundler cannot resolve, and the
// demo uses the JSON wire; there the import fails and the client says so.
// @opentelemetry/api (tracing.ts tries it once, unless options.otel says):
// a page without a bundler or import map cannot resolve it either, and the
// client then makes no spans.
const OPTIONAL = /\bimport\s*\(\s*["'](?:\.\/protobuf\.js|@opentelemetry\/api)["']\s*\)/g;

/** The modules that a compiled module imports at run time, by file name. */
function imports(name, js) {
  if (/\bimport\s*\(|\brequire\s*\(/.test(js.replace(OPTIONAL, ""))) throw new Error(`dist/${name} loads a module dynamically; keep the runtime to static imports of src/`);
  return [...js.matchAll(FROM)].map((m) => {
    const spec = m[2] ?? m[5];
    if (!/^\.\/[\w.-]+\.js$/.test(spec)) throw new Error(`dist/${name} imports ${spec}; the runtime may import only its own modules in src/`);
    return spec.slice(2);
  });
}

const header = (name) => `// Generated from clients/src/${name.replace(/\.js$/, ".ts")} by \`npm run build\` in clients/. Do not edit.\n`;

// Every module the entry reaches.
const modules = new Map();
for (const todo = ["natter.js"]; todo.length > 0;) {
  const name = todo.pop();
  if (modules.has(name)) continue;
  const js = readFileSync(join(dist, name), "utf8");
  modules.set(name, js);
  todo.push(...imports(name, js));
}
const entry = modules.get("natter.js");
modules.delete("natter.js");

rmSync(join(demo, dir), { recursive: true, force: true });
mkdirSync(join(demo, dir), { recursive: true });
for (const [name, js] of [...modules].sort()) writeFileSync(join(demo, dir, name), header(name) + js);
const rewritten = entry.replace(FROM, (m, pre, spec, post, pre2, spec2, post2) =>
  spec !== undefined ? `${pre}./${dir}/${spec.slice(2)}${post}` : `${pre2}./${dir}/${spec2.slice(2)}${post2}`);
writeFileSync(join(demo, "natter.js"), header("natter.js") + rewritten);
console.log(`copied dist/natter.js and the ${modules.size} modules it imports -> ${join(demo, "natter.js")}, ${join(demo, dir)}/`);
