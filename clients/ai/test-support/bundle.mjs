// esbuild bundles for the tests, from sources: the Natter client from its
// TypeScript (clients/src: dist is not committed, and clients' own test
// rewrites it while these tests may be running), natter-ai from src/, and
// every other bare import, the client's own included (@bufbuild/protobuf),
// from this package's node_modules, as in an application that installed
// them; clients/node_modules is not needed. The client's optional
// @opentelemetry/api stays a run-time import (it finds none: no spans).
import * as esbuild from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = dirname(here);
const clientSrc = join(pkg, "..", "src");

const sources = {
  name: "natter-sources",
  setup(build) {
    build.onResolve({ filter: /^natter-client$/ }, () => ({ path: join(clientSrc, "natter.ts") }));
    build.onResolve({ filter: /^natter-ai$/ }, () => ({ path: join(pkg, "src", "index.ts") }));
    build.onResolve({ filter: /^[^./]/ }, (a) => {
      if (!a.importer.startsWith(clientSrc) || a.pluginData === here || a.path === "@opentelemetry/api") return undefined;
      return build.resolve(a.path, { kind: a.kind, resolveDir: here, pluginData: here });
    });
  },
};

const common = { bundle: true, format: "esm", target: "es2022", external: ["@opentelemetry/api"], plugins: [sources], logLevel: "warning" };

/** Writes the client as one module, .build/natter-client.js, for the Node tests. */
export async function bundleClient() {
  await esbuild.build({ ...common, entryPoints: [join(clientSrc, "natter.ts")], platform: "neutral", outfile: join(pkg, ".build", "natter-client.js") });
}

/** Bundles test-support/page.js for Chromium and returns its text. */
export async function bundlePage() {
  const out = await esbuild.build({ ...common, entryPoints: [join(here, "page.js")], platform: "browser", write: false });
  return out.outputFiles[0].text;
}
