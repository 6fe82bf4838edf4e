// Test helpers: a real edge process in single-binary mode (embedded NATS,
// dev mode), and a plain NATS client acting as a service. Lives outside
// test/ because node --test runs every .mjs file under a test directory.
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { connect as natsConnect } from "@nats-io/transport-node";

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const tmp = mkdtempSync(join(tmpdir(), "natter-client-test-"));
const running = new Set();

// No stray processes, whatever happens to the test run: "exit" covers
// normal ends and uncaught errors, the signal handlers a killed runner.
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
  rmSync(tmp, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"]) process.once(sig, () => process.exit(128 + (sig === "SIGINT" ? 2 : 15)));

let built;
/** Builds ./cmd/edge once per test process and returns the binary's path. */
export function buildEdge() {
  built ??= promisify(execFile)("go", ["build", "-o", join(tmp, "edge"), "./cmd/edge"], { cwd: repoRoot })
    .then(() => join(tmp, "edge"));
  return built;
}

/** A free loopback port (there is a small race until the edge binds it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A new data directory for an edge's embedded JetStream. */
export function dataDir() {
  return mkdtempSync(join(tmp, "data-"));
}

/**
 * Starts an edge and resolves once it logs "edge listening":
 * {url (ws://.../ws), nats (the embedded server's URL), stop(signal)}.
 */
export async function startEdge({ port, dir = dataDir(), args = [] } = {}) {
  const bin = await buildEdge();
  port ??= await freePort();
  const proc = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--nats-listen", "127.0.0.1:0", "--data-dir", dir, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  running.add(proc);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => {
    running.delete(proc);
    resolve({ code, signal });
  }));
  let log = "";
  const ready = new Promise((resolve, reject) => {
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      log += chunk;
      const line = log.split("\n").find((l) => l.includes('msg="edge listening"'));
      if (line) resolve(line);
    });
    exited.then(({ code, signal }) => reject(new Error(`edge exited (${code ?? signal}) before listening:\n${log}`)));
  });
  const line = await withTimeout(ready, 60_000, "edge did not start");
  const field = (k) => line.match(new RegExp(`\\b${k}=(\\S+)`))?.[1];
  return {
    port,
    dir,
    url: `ws://${field("addr")}${field("path") ?? "/ws"}`,
    nats: field("nats"),
    log: () => log,
    /** Stops the edge (SIGTERM: clients get 4000) and waits for it to exit. */
    async stop(signal = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return withTimeout(exited, 30_000, "edge did not exit");
    },
  };
}

/** A plain NATS client on the edge's embedded server: the "service". */
export function service(edge) {
  return natsConnect({ servers: edge.nats });
}

/** Rejects when p does not settle within ms. */
export function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timeout: ${what} (${ms} ms)`)), ms); }),
  ]);
}

/** Resolves when the client reaches state (at once if it is there). */
export function waitState(client, state, ms = 30_000) {
  if (client.state === state) return Promise.resolve();
  return withTimeout(new Promise((resolve) => {
    const off = client.onState((s, info) => {
      if (s === state) { off(); resolve(info); }
    });
  }), ms, `state ${state}`);
}

/** Resolves with the next frame of type the client receives. */
export function nextFrame(client, type, ms = 30_000) {
  return withTimeout(new Promise((resolve) => {
    const off = client.on(type, (payload, env) => { off(); resolve(env); });
  }), ms, `frame ${type}`);
}

/** Polls check() until it returns a truthy value. */
export async function until(check, ms = 30_000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Learns a client's connection id: subscribes to natter.in.<probe type>,
 * has the client send that type, and reads the Natter-Conn header.
 */
let probes = 0;
export async function connId(nc, client, probe = `test.whoami${++probes}`) {
  const sub = nc.subscribe(`natter.in.${probe}`, { max: 1 });
  await nc.flush();
  client.send(probe, {});
  for await (const m of sub) return m.headers?.get("Natter-Conn");
  throw new Error("no probe message");
}

/**
 * A WebSocket constructor with a gate: while closed, every new socket goes
 * to a port nothing listens on, so the client keeps failing to reconnect
 * (with transports: ["websocket"]; the fallback to sse would get past it).
 */
export function gatedWebSocket() {
  let closed = false;
  class Gated extends WebSocket {
    constructor(url, protocols) {
      super(closed ? "ws://127.0.0.1:1/ws" : url, protocols);
    }
  }
  return { WebSocket: Gated, close: () => void (closed = true), open: () => void (closed = false) };
}
