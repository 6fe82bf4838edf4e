// The demo page in Debian's Chromium when WebSockets are broken: a small
// proxy in front of a real edge forwards plain HTTP (the pages, the event
// stream and the POSTs, unbuffered) but refuses every WebSocket Upgrade
// (403), or, in the second run, accepts the TCP connection and never
// answers the Upgrade. The client must fall back to sse by itself
// (docs/protocol.md, "When the TS client falls back"), and the demo must
// work as it does over WebSockets: two users chat both ways, see each other
// online and typing, an RPC answers, and all of it again after the stream
// is closed by a service (ctl close 4000), after the proxy drops every
// connection, and after an edge restart; reconnects stay on sse without
// trying the WebSocket again (the fallback is remembered). Run by
// fallback_browser_test.go; leaves artifacts/fallback-<mode>.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createServer as createHTTPServer, request } from "node:http";
import { connect as tcpConnect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "../../..");
const artifacts = join(here, "artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 60_000; // a generous wait for any one thing on a busy machine
const FALLBACK_WITHIN = 15_000; // the first connect, WebSocket attempt included (the client gives a stalled one 5 s)
const ROOM = "fallback-e2e";

let edgeBin; // built once for both runs
let tmp;

test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), "natter-fallback-"));
  edgeBin = join(tmp, "edge");
  await promisify(execFile)("go", ["build", "-o", edgeBin, "./cmd/edge"], { cwd: repoRoot, timeout: 300_000 });
});

test.after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

for (const mode of ["refuse", "stall"]) {
  test(`the demo works over sse when a proxy ${mode === "refuse" ? "refuses" : "stalls"} WebSocket upgrades`, { timeout: 300_000 }, async () => {
    await run(mode);
  });
}

async function run(mode) {
  const dataDir = join(tmp, `data-${mode}`);
  let edge;
  let proxy;
  let browser;
  const pages = {};
  const pageErrors = []; // uncaught exceptions in the pages fail the test
  const consoleErrors = [];
  const sockets = []; // WebSockets the pages opened (none may)
  try {
    const port = await freePort();
    const args = ["--listen", `127.0.0.1:${port}`, "--nats-listen", "127.0.0.1:0", "--data-dir", dataDir];
    edge = await startEdge(edgeBin, args);
    proxy = await startProxy(port, mode);
    const base = `http://127.0.0.1:${proxy.port}`;

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: WAIT,
    });
    for (const user of ["alice", "bob"]) {
      // A context each: their own localStorage, so each falls back by itself.
      const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
      context.setDefaultTimeout(WAIT);
      const page = await context.newPage();
      page.on("pageerror", (err) => pageErrors.push(`${user}: ${err.stack ?? err}`));
      // Printed on failure only: the refused WebSocket is expected.
      page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(`${user}: ${msg.text()}`); });
      page.on("websocket", (ws) => ws.on("framereceived", () => sockets.push(`${user}: ${ws.url()}`)));
      pages[user] = page;
    }
    const { alice, bob } = pages;

    // The first connect: the WebSocket fails or hangs, sse takes over.
    for (const [user, page] of Object.entries(pages)) {
      const started = Date.now();
      await page.goto(`${base}/?user=${user}`);
      await recordStates(page);
      await waitState(page, "open");
      const took = Date.now() - started;
      console.log(`${mode}: ${user} open over sse after ${took} ms`);
      assert.ok(took < FALLBACK_WITHIN, `${user} took ${took} ms to connect, want under ${FALLBACK_WITHIN} ms`);
    }
    assert.equal(proxy.counts.upgrades, 2, "one WebSocket attempt per page");
    assert.equal(proxy.streams("alice"), 1, "alice's event streams");
    assert.equal(proxy.streams("bob"), 1, "bob's event streams");

    for (const page of [alice, bob]) {
      await page.getByTestId("room-input").fill(ROOM);
      await page.getByTestId("join-button").click();
      await expectText(page.getByTestId("room-title"), `#${ROOM}`);
    }
    await chat(alice, bob, "first");

    // An RPC through the POSTs and back down the stream: the built-in ping worker.
    const pong = await alice.evaluate(() => globalThis.natter.rpc("ping", {}, { timeoutMs: 10_000 }));
    assert.equal(typeof pong?.time, "number", `ping answered ${JSON.stringify(pong)}`);
    const echo = await bob.evaluate(() => globalThis.natter.rpc("echo", { over: "sse", n: 42 }, { timeoutMs: 10_000 }));
    assert.deepEqual(echo, { over: "sse", n: 42 });

    // A service closes alice's connection (ctl close 4000: reconnect at once).
    const before = await connectionId(alice);
    const answer = await natsRequest(edge.nats, `natter.ctl.conn.${before}`, JSON.stringify({ op: "close", code: 4000, reason: "test: reconnect" }));
    assert.deepEqual(JSON.parse(answer), { ok: true }, "the ctl close's answer");
    await waitReconnected(alice, { code: 4000 });
    assert.notEqual(await connectionId(alice), before, "alice's connection id after the ctl close");
    await chat(alice, bob, "after the ctl close");

    // The proxy drops every connection (the streams among them): both reconnect.
    proxy.cut();
    await Promise.all([waitReconnected(alice), waitReconnected(bob)]);
    await chat(alice, bob, "after the proxy dropped the streams");

    // The edge restarts (SIGTERM: close 4000 down each stream), same port and data.
    await stopEdge(edge);
    edge = await startEdge(edgeBin, args);
    await Promise.all([waitReconnected(alice), waitReconnected(bob)]);
    await chat(alice, bob, "after the edge restart");
    const pong2 = await bob.evaluate(() => globalThis.natter.rpc("ping", {}, { timeoutMs: 10_000 }));
    assert.equal(typeof pong2?.time, "number", `ping after the restart answered ${JSON.stringify(pong2)}`);

    // Every reconnect went straight to sse: the fallback is remembered.
    assert.equal(proxy.counts.upgrades, 2, "WebSocket attempts after the first connects");
    assert.ok(proxy.counts.posts > 0, "POSTs through the proxy");
    assert.deepEqual(sockets, [], "WebSocket frames the pages received");
    assert.deepEqual(pageErrors, [], "uncaught errors in the pages");

    const shot = join(artifacts, `fallback-${mode}.png`);
    await mkdir(artifacts, { recursive: true });
    await alice.screenshot({ path: shot });
    console.log(`${mode}: proxy saw ${JSON.stringify(proxy.counts)}; screenshot: ${shot}`);
  } catch (err) {
    await mkdir(artifacts, { recursive: true });
    for (const [user, page] of Object.entries(pages)) {
      const shot = join(artifacts, `failure-fallback-${mode}-${user}.png`);
      await page.screenshot({ path: shot }).then(() => console.log(`failure screenshot: ${shot}`), () => {});
      const states = await page.evaluate(() => globalThis.testStates).catch(() => undefined);
      const id = await page.evaluate(() => globalThis.natter?.connectionId).catch(() => undefined);
      console.log(`${user} (connection ${id}) states: ${JSON.stringify(states)}`);
    }
    for (const e of pageErrors) console.log(`page error: ${e}`);
    for (const e of consoleErrors) console.log(`console error: ${e}`);
    if (proxy) console.log(`proxy: ${JSON.stringify(proxy.counts)} ${proxy.log.slice(-40).join("\n  ")}`);
    if (proxy) console.log(`proxy requests in flight:\n  ${proxy.inflight().join("\n  ")}`);
    if (edge) console.log(`edge log (last lines):\n${edge.log.slice(-30).join("\n")}`);
    throw err;
  } finally {
    await browser?.close().catch(() => {});
    await proxy?.close();
    if (edge) await stopEdge(edge).catch(() => {});
  }
}

// chat checks the room both ways: presence, typing, a message from each
// (alice's by Enter, bob's by the button), and alice's chat.send RPC
// answered.
async function chat(alice, bob, tag) {
  await onlineUser(alice, "bob").waitFor();
  await onlineUser(bob, "alice").waitFor();
  await alice.getByTestId("message-input").pressSequentially(`typing ${tag}`);
  await expectText(bob.getByTestId("typing"), "alice is typing…");
  await alice.getByTestId("message-input").fill(`alice ${tag}`);
  await alice.getByTestId("message-input").press("Enter");
  await message(bob, "alice", `alice ${tag}`).waitFor();
  await expectText(bob.getByTestId("typing"), "");
  await alice.locator(`[data-testid="message"][data-status="sent"]`).filter({ hasText: `alice ${tag}` }).waitFor();
  await bob.getByTestId("message-input").fill(`bob ${tag}`);
  await bob.getByTestId("send-button").click();
  await message(alice, "bob", `bob ${tag}`).waitFor();
}

const onlineUser = (page, user) => page.locator(`[data-testid="online-user"][data-user="${user}"]`);
const message = (page, user, text) =>
  page.locator(`[data-testid="message"][data-user="${user}"] [data-testid="message-text"]`).filter({ hasText: text });

async function waitState(page, state) {
  await page.locator(`[data-testid="conn-state"][data-state="${state}"]`).waitFor({ timeout: WAIT });
}

// recordStates keeps the client's state changes in the page, so that a
// short "reconnecting" is not missed.
async function recordStates(page) {
  await page.waitForFunction(() => globalThis.natter !== undefined);
  await page.evaluate(() => {
    globalThis.testStates = [];
    globalThis.natter.onState((state, info) => globalThis.testStates.push({ state, code: info?.code, reason: info?.reason }));
  });
}

// waitReconnected waits until the page has gone through "reconnecting"
// (with the close code, if given) to "open" since its last call.
async function waitReconnected(page, { code } = {}) {
  const seen = await page.waitForFunction((code) => {
    const s = globalThis.testStates;
    const from = globalThis.testStatesRead ?? 0;
    const i = s.findIndex((x, j) => j >= from && x.state === "reconnecting");
    if (i < 0 || !s.slice(i + 1).some((x) => x.state === "open")) return false;
    globalThis.testStatesRead = s.length;
    return s[i];
  }, code, { timeout: WAIT, polling: 50 }).then((h) => h.jsonValue());
  if (code !== undefined) assert.equal(seen.code, code, `the close code of the drop: ${JSON.stringify(seen)}`);
  await waitState(page, "open");
}

async function connectionId(page) {
  const id = await page.evaluate(() => globalThis.natter.connectionId);
  assert.match(id ?? "", /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, "connection id");
  return id;
}

async function expectText(locator, text) {
  const deadline = Date.now() + WAIT;
  let got;
  while (Date.now() < deadline) {
    got = (await locator.textContent()).trim();
    if (got === text) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(got, text);
}

// startProxy listens on a free loopback port in front of the edge on
// edgePort. Plain HTTP is forwarded as it comes, both ways (the event
// stream unbuffered); a WebSocket Upgrade is refused with 403 ("refuse") or
// never answered ("stall"). cut() drops every connection, as a proxy
// restart does.
async function startProxy(edgePort, mode) {
  const counts = { upgrades: 0, streams: 0, posts: 0 };
  const streamsBy = new Map(); // ?user= -> event streams
  const log = [];
  const sockets = new Set();
  const inflight = new Set(); // requests not yet ended, printed on failure
  const server = createHTTPServer((req, res) => {
    const url = new URL(req.url, "http://proxy");
    const entry = { what: `${req.method} ${url.pathname}${url.search.slice(0, 40)}`, started: Date.now(), status: "no answer from the edge yet" };
    inflight.add(entry);
    res.on("close", () => inflight.delete(entry));
    if (req.method === "POST") counts.posts++;
    if (url.pathname.endsWith("/sse")) {
      counts.streams++;
      const user = url.searchParams.get("user");
      streamsBy.set(user, (streamsBy.get(user) ?? 0) + 1);
    }
    const up = request({ host: "127.0.0.1", port: edgePort, method: req.method, path: req.url, headers: req.headers }, (r) => {
      entry.status = `the edge answered ${r.statusCode}`;
      if (url.pathname.endsWith("/sse") || req.method === "POST") log.push(`${req.method} ${url.pathname}${url.search.slice(0, 40)} -> ${r.statusCode} (${Date.now() - entry.started} ms)`);
      res.writeHead(r.statusCode, r.headers);
      res.flushHeaders();
      r.pipe(res);
      // An answer the edge cuts short is cut short here too.
      r.on("aborted", () => res.destroy());
      r.on("error", () => res.destroy());
    });
    up.on("error", () => res.destroy());
    // A client that ends its request (the stream's abort) ends the edge's.
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, socket) => {
    counts.upgrades++;
    log.push(`upgrade ${req.url}: ${mode}`);
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    if (mode === "refuse") socket.end("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\nno WebSockets in here");
    // "stall": the Upgrade is never answered; the socket stays open.
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    counts,
    log,
    streams: (user) => streamsBy.get(user) ?? 0,
    inflight: () => [...inflight].map((e) => `${e.what}: ${Date.now() - e.started} ms, ${e.status}`),
    cut() {
      log.push(`cut ${sockets.size} connections`);
      for (const s of sockets) s.destroy();
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// natsRequest sends one request over the NATS protocol to the edge's
// embedded server (the test's service; no client library needed) and
// resolves with the reply's payload.
function natsRequest(natsURL, subject, payload) {
  const { hostname, port } = new URL(natsURL);
  const inbox = `_INBOX.fallback_test_${process.pid}_${Date.now()}`;
  return new Promise((resolve, reject) => {
    const sock = tcpConnect(Number(port), hostname);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`NATS request to ${subject}: no reply within 10 s`));
    }, 10_000);
    let buf = "";
    let sent = false;
    sock.setEncoding("utf8");
    sock.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.on("data", (chunk) => {
      buf += chunk;
      if (!sent && buf.includes("\r\n")) {
        sent = true; // after the server's INFO
        sock.write(`CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true,"no_responders":true}\r\n` +
          `SUB ${inbox} 1\r\nPUB ${subject} ${inbox} ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
      }
      if (/^-ERR/m.test(buf)) {
        clearTimeout(timer);
        sock.destroy();
        reject(new Error(`NATS: ${buf.match(/^-ERR.*$/m)[0]}`));
        return;
      }
      if (/^PING\r$/m.test(buf)) {
        sock.write("PONG\r\n");
        buf = buf.replace(/^PING\r\n/m, "");
      }
      const m = buf.match(/(?:^|\n)H?MSG \S+ 1 (?:(\d+) )?(\d+)\r\n/);
      if (!m) return;
      const start = m.index + m[0].length;
      const total = Number(m[2]);
      const body = Buffer.from(buf.slice(start), "utf8");
      if (body.length < total) return;
      clearTimeout(timer);
      sock.destroy();
      const headerLen = Number(m[1] ?? 0);
      if (m[1] !== undefined && /^NATS\/1.0 503/.test(body.subarray(0, headerLen).toString())) {
        reject(new Error(`NATS request to ${subject}: no responders`));
        return;
      }
      resolve(body.subarray(headerLen, total).toString());
    });
  });
}

// Edges still running when Node exits (an interrupted run) are killed.
const running = new Set();
process.on("exit", () => { for (const proc of running) proc.kill("SIGKILL"); });

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

// startEdge starts the edge and resolves once it logs that it listens,
// with the embedded NATS server's URL from that line.
function startEdge(bin, args) {
  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const edge = { proc, log: [], nats: "", exited: new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal }))) };
  running.add(proc);
  edge.exited.then(() => running.delete(proc));
  return new Promise((resolve, reject) => {
    let started = false;
    const timer = setTimeout(() => fail(new Error("edge did not log \"edge listening\" in time")), WAIT);
    const fail = (err) => {
      if (started) return;
      clearTimeout(timer);
      proc.kill("SIGKILL");
      reject(new Error(`${err.message}\n${edge.log.slice(-30).join("\n")}`));
    };
    let partial = "";
    const onData = (chunk) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop();
      for (const line of lines) {
        edge.log.push(line);
        if (!started && line.includes('msg="edge listening"')) {
          const nats = line.match(/ nats=(nats:\/\/\S+)/);
          if (!nats) return fail(new Error(`no nats= in ${line}`));
          edge.nats = nats[1];
          started = true;
          clearTimeout(timer);
          resolve(edge);
        }
      }
    };
    proc.stdout.setEncoding("utf8").on("data", onData);
    proc.stderr.setEncoding("utf8").on("data", onData);
    proc.once("error", fail);
    edge.exited.then(({ code, signal }) => fail(new Error(`edge exited early (code ${code}, signal ${signal})`)));
  });
}

// stopEdge sends SIGTERM and waits for the exit (SIGKILL after a while).
async function stopEdge(edge) {
  if (edge.proc.exitCode !== null || edge.proc.signalCode !== null) return;
  edge.proc.kill("SIGTERM");
  const timer = setTimeout(() => edge.proc.kill("SIGKILL"), 30_000);
  const { code, signal } = await edge.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`edge exited with code ${code} (signal ${signal})`);
}
