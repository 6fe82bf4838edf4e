// Drives the demo page in Debian's Chromium against a real edge process:
// two users chat, see each other online and typing, and keep chatting
// across a restart of the edge. Leaves a screenshot in artifacts/demo.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createServer } from "node:net";
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
const ROOM = "lobby-e2e";

test("two browsers chat through the demo, across an edge restart", { timeout: 600_000 }, async () => {
  for (const user of ["alice", "bob"]) await rm(join(artifacts, `failure-${user}.png`), { force: true }); // of an earlier run
  const tmp = await mkdtemp(join(tmpdir(), "natter-demo-"));
  const dataDir = join(tmp, "data");
  const edgeBin = join(tmp, "edge");
  let edge;
  let browser;
  const pages = {};
  const pageErrors = []; // uncaught exceptions in the pages fail the test
  const consoleErrors = [];
  try {
    await promisify(execFile)("go", ["build", "-o", edgeBin, "./cmd/edge"], { cwd: repoRoot, timeout: 300_000 });
    const port = await freePort();
    const args = ["--listen", `127.0.0.1:${port}`, "--nats-listen", "127.0.0.1:0", "--data-dir", dataDir];
    edge = await startEdge(edgeBin, args);
    const base = `http://127.0.0.1:${port}`;

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // Playwright makes a fresh user-data dir for each launch.
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: WAIT,
    });
    for (const user of ["alice", "bob"]) {
      const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
      context.setDefaultTimeout(WAIT);
      const page = await context.newPage();
      page.on("pageerror", (err) => pageErrors.push(`${user}: ${err.stack ?? err}`));
      // Printed on failure only: refused connections while the edge is down are expected.
      page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(`${user}: ${msg.text()}`); });
      pages[user] = page;
    }
    const { alice, bob } = pages;

    // A name from the login form, the other from the URL.
    await alice.goto(`${base}/`);
    await alice.getByTestId("name-input").fill("alice");
    await alice.getByTestId("login-button").click();
    await alice.waitForURL(/\?user=alice$/);
    await bob.goto(`${base}/?user=bob`);
    for (const page of [alice, bob]) {
      await waitState(page, "open");
      await page.getByTestId("room-input").fill(ROOM);
      await page.getByTestId("join-button").click();
      await expectText(page.getByTestId("room-title"), `#${ROOM}`);
    }

    // Each sees the other online in the room.
    await onlineUser(alice, "bob").waitFor();
    await onlineUser(bob, "alice").waitFor();

    // Typing shows up on the other side, and goes away with the send.
    await alice.getByTestId("message-input").pressSequentially("hello bo");
    await expectText(bob.getByTestId("typing"), "alice is typing…");
    await alice.getByTestId("message-input").pressSequentially("b");
    await alice.getByTestId("message-input").press("Enter");
    await message(bob, "alice", "hello bob").waitFor();
    await expectText(bob.getByTestId("typing"), "");
    await alice.locator(`[data-testid="message"][data-status="sent"]`).filter({ hasText: "hello bob" }).waitFor();

    await bob.getByTestId("message-input").fill("hi alice");
    await bob.getByTestId("send-button").click();
    await message(alice, "bob", "hi alice").waitFor();

    // Restart the edge on the same port and data directory: both pages
    // reconnect by themselves and keep working.
    await stopEdge(edge);
    for (const page of [alice, bob]) await waitState(page, "reconnecting");
    edge = await startEdge(edgeBin, args);
    for (const page of [alice, bob]) await waitState(page, "open");

    await onlineUser(alice, "bob").waitFor();
    await onlineUser(bob, "alice").waitFor();
    await alice.getByTestId("message-input").fill("still there?");
    await alice.getByTestId("message-input").press("Enter");
    await message(bob, "alice", "still there?").waitFor();
    await bob.getByTestId("message-input").fill("yes, reconnected");
    await bob.getByTestId("message-input").press("Enter");
    await message(alice, "bob", "yes, reconnected").waitFor();
    await bob.getByTestId("message-input").pressSequentially("typing after the restart");
    await expectText(alice.getByTestId("typing"), "bob is typing…");

    assert.deepEqual(pageErrors, [], "uncaught errors in the pages");

    const shot = join(artifacts, "demo.png");
    await mkdir(artifacts, { recursive: true });
    await alice.screenshot({ path: shot });
    console.log(`screenshot: ${shot}`);
  } catch (err) {
    await mkdir(artifacts, { recursive: true });
    for (const [user, page] of Object.entries(pages)) {
      const shot = join(artifacts, `failure-${user}.png`);
      await page.screenshot({ path: shot }).then(() => console.log(`failure screenshot: ${shot}`), () => {});
    }
    for (const e of pageErrors) console.log(`page error: ${e}`);
    for (const e of consoleErrors) console.log(`console error: ${e}`);
    if (edge) console.log(`edge log (last lines):\n${edge.log.slice(-30).join("\n")}`);
    throw err;
  } finally {
    await browser?.close().catch(() => {});
    if (edge) await stopEdge(edge).catch(() => {});
    await rm(tmp, { recursive: true, force: true });
  }
});

// Edges still running when Node exits (an interrupted run) are killed.
const running = new Set();
process.on("exit", () => { for (const proc of running) proc.kill("SIGKILL"); });

const onlineUser = (page, user) => page.locator(`[data-testid="online-user"][data-user="${user}"]`);
const message = (page, user, text) =>
  page.locator(`[data-testid="message"][data-user="${user}"] [data-testid="message-text"]`).filter({ hasText: text });

async function waitState(page, state) {
  await page.locator(`[data-testid="conn-state"][data-state="${state}"]`).waitFor({ timeout: WAIT });
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

// freePort asks the kernel for a free port for the edge; it stays the same
// across the restart.
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

// startEdge starts the edge and resolves once it logs that it listens.
function startEdge(bin, args) {
  const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const edge = { proc, log: [], exited: new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal }))) };
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
