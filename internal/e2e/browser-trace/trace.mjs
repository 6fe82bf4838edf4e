// One traced RPC from the Natter TypeScript client in headless Chromium,
// for internal/e2e/browser_trace_test.go (TestBrowserTrace), which owns
// the OTLP receiver (Jaeger), NATS, the edge and the worker, and reads the
// trace back.
//
//   node trace.mjs --edge ws://127.0.0.1:PORT/ws --otlp http://127.0.0.1:PORT [--user U] [--type ping]
//
// It bundles page.js (the OpenTelemetry web SDK, the OTLP/HTTP exporter
// and the client from clients/src) with esbuild into a temporary
// directory, serves that on 127.0.0.1 from a tiny HTTP server, opens it in
// Debian's Chromium ($CHROMIUM, default /usr/bin/chromium) through
// playwright-core, and there runs runTrace (page.js). It prints one JSON
// line to stdout: {traceId, spanId, reply, exports, pageErrors, timings},
// or {error, pageErrors} and exits 1. Progress goes to stderr.
//
// The client is bundled from its TypeScript source, not clients/dist: dist
// is not committed, and clients' own test writes it while this runs.
// Every bare import of the client resolves from this directory's
// node_modules, as it would in an application: one @opentelemetry/api.
//
// The OpenTelemetry packages are pinned to one release (SDK 2.12.0, OTLP
// exporter 0.223.0, which is built on it); their peer range stops below
// API 1.10, which the client's own tests use too, hence the override in
// package.json.
import { createServer } from "node:http";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const clientSrc = join(here, "..", "..", "..", "clients", "src");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const { values: args } = parseArgs({
  options: {
    edge: { type: "string" },
    otlp: { type: "string" },
    user: { type: "string", default: "alice" },
    type: { type: "string", default: "ping" },
    "timeout-ms": { type: "string", default: "20000" },
  },
});
if (!args.edge || !args.otlp) {
  console.error("usage: node trace.mjs --edge ws://HOST:PORT/ws --otlp http://HOST:PORT [--user U] [--type T]");
  process.exit(2);
}
const timeoutMs = Number(args["timeout-ms"]);

const log = (line) => console.error(`${new Date().toISOString()} ${line}`);
const pageErrors = [];
const timings = {};
const started = performance.now();
const lap = (name) => (timings[name] = Math.round(performance.now() - started));

// natter-client: the client's source; any other bare import from the
// client: this directory's node_modules.
const resolveFromHere = {
  name: "natter-client-from-source",
  setup(build) {
    build.onResolve({ filter: /^natter-client$/ }, () => ({ path: join(clientSrc, "natter.ts") }));
    build.onResolve({ filter: /^[^./]/ }, async (a) => {
      if (!a.importer.startsWith(clientSrc) || a.pluginData === here) return undefined;
      return build.resolve(a.path, { kind: a.kind, resolveDir: here, pluginData: here });
    });
  },
};

let dir;
let server;
let browser;
try {
  dir = await mkdtemp(join(tmpdir(), "natter-browser-trace-"));
  await esbuild.build({
    entryPoints: [join(here, "page.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outfile: join(dir, "page.js"),
    plugins: [resolveFromHere],
    logLevel: "warning",
  });
  lap("bundled");

  const files = {
    "/": ["text/html", Buffer.from('<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>natter browser trace</title><script type="module" src="/page.js"></script>')],
    "/page.js": ["text/javascript", await readFile(join(dir, "page.js"))],
  };
  server = createServer((req, res) => {
    const f = files[new URL(req.url, "http://x").pathname];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": f[0], "cache-control": "no-store" }).end(f[1]);
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  log(`page served at ${origin}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: timeoutMs,
  });
  lap("launched");
  const page = await browser.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on("pageerror", (err) => pageErrors.push(String(err.stack ?? err)));
  page.on("console", (msg) => log(`console ${msg.type()}: ${msg.text()}`));
  page.on("requestfailed", (req) => log(`request failed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => typeof globalThis.runTrace === "function");
  lap("loaded");
  const result = await page.evaluate((a) => globalThis.runTrace(a),
    { edge: args.edge, otlp: args.otlp, user: args.user, type: args.type, timeoutMs });
  lap("traced");
  process.stdout.write(JSON.stringify({ ...result, pageErrors, timings }) + "\n");
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err.stack ?? err), pageErrors, timings }) + "\n");
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
  server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
}
