// Builds what the tests run besides dist/: the Natter client from its
// TypeScript source (clients/src) as one ES module, .build/natter-client.js.
// Not from clients/dist: that is not committed, and clients' own test
// rewrites it while this package's tests may be running. Bare imports the
// client makes resolve from this package (@bufbuild/protobuf, for wire:
// "protobuf"), except its optional @opentelemetry/api, imported at run time.
import * as esbuild from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
export const clientSrc = join(pkg, "..", "src");

await esbuild.build({
  entryPoints: [join(clientSrc, "natter.ts")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  external: ["@opentelemetry/api"],
  outfile: join(pkg, ".build", "natter-client.js"),
  logLevel: "warning",
});
