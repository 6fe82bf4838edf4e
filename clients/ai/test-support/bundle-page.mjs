// Bundles test-support/page.js for Chromium with esbuild: natter-client
// from its TypeScript source (clients/src), natter-ai from this package's
// source, every other bare import (ai and its dependencies) from this
// package's node_modules. Returns the bundle's text.
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
    // The client's own bare imports (@bufbuild/protobuf, @opentelemetry/api)
    // resolve from here, as they would in an application.
    build.onResolve({ filter: /^[^./]/ }, (a) => {
      if (!a.importer.startsWith(clientSrc) || a.pluginData === here) return undefined;
      return build.resolve(a.path, { kind: a.kind, resolveDir: here, pluginData: here });
    });
  },
};

export async function bundlePage() {
  const out = await esbuild.build({
    entryPoints: [join(here, "page.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    external: ["@opentelemetry/api"],
    plugins: [sources],
    logLevel: "warning",
  });
  return out.outputFiles[0].text;
}
