// The same chat in headless Chromium (Debian's, $CHROMIUM, driven by
// playwright-core): test-support/page.js bundled with esbuild and served
// on loopback, against a real edge process and the Node test worker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { startEdge, until, withTimeout } from "../../test-support/edge.mjs";
import { startWorker } from "../test-support/worker.mjs";
import { bundlePage } from "../test-support/bundle.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CHUNKS = ["Grüß ", "dich", " — ", "ça va", " 🙂?", " Straße", " ✓", " end."];
const FULL = CHUNKS.join("");

let edge;
let worker;
let server;
let origin;
let browser;
const pageErrors = [];

before(async () => {
  // Fail, never skip, without the browser.
  assert.ok(existsSync(CHROMIUM), `the browser test needs Debian's Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does)`);
  const [e, js] = await Promise.all([startEdge(), bundlePage()]);
  edge = e;
  worker = await startWorker(edge.nats);
  const html = '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>natter-ai</title><script type="module" src="/page.js"></script>';
  server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/") res.writeHead(200, { "content-type": "text/html", "cache-control": "no-store" }).end(html);
    else if (path === "/page.js") res.writeHead(200, { "content-type": "text/javascript", "cache-control": "no-store" }).end(js);
    else res.writeHead(404).end();
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 30_000,
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  server?.close();
  await worker?.stop();
  await edge?.stop();
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});

/** A new page showing the chat of chatId for user. */
async function openPage(user, chatId) {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  page.on("pageerror", (err) => pageErrors.push(String(err.stack ?? err)));
  await load(page, user, chatId);
  return page;
}

/** (Re)loads the page's script and opens the chat; answers how many messages it had saved. */
async function load(page, user, chatId, reload = false) {
  if (reload) await page.reload();
  else await page.goto(`${origin}/`);
  await page.waitForFunction(() => globalThis.natterAi !== undefined);
  return page.evaluate((a) => globalThis.natterAi.open(a), { url: edge.url, user, chatId });
}

const snapshot = (page) => page.evaluate(() => globalThis.natterAi.snapshot());
const lastText = async (page) => (await snapshot(page)).messages.at(-1)?.text;

async function untilPageText(page, text) {
  await until(async () => {
    const s = await snapshot(page);
    return s.messages.at(-1)?.role === "assistant" && s.messages.at(-1).text === text;
  }, 20_000, `the page shows ${JSON.stringify(text)}`);
}

test("Chromium: a response streams in; a reload mid-stream and resumeStream() get the whole text once", async () => {
  const user = `browser${Date.now()}`;
  const chatId = `bchat-${Date.now()}`;
  const page = await openPage(user, chatId);

  // A whole response.
  worker.script = () => ({ chunks: CHUNKS, delayMs: 10 });
  await page.evaluate(() => globalThis.natterAi.send("first"));
  await withTimeout(page.evaluate(() => globalThis.natterAi.settled()), 20_000, "first response");
  let s = await snapshot(page);
  const first = worker.latest(chatId);
  assert.equal(s.status, "ready");
  assert.deepEqual(s.messages.map((m) => [m.role, m.text]), [["user", "first"], ["assistant", FULL]]);

  // A second one, interrupted by a reload after three chunks.
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 3 });
  await page.evaluate(() => globalThis.natterAi.send("second"));
  const p = await until(() => worker.latest(chatId) !== first && worker.latest(chatId), 20_000, "the second stream");
  await untilPageText(page, CHUNKS.slice(0, 3).join(""));
  const partialId = (await snapshot(page)).messages.at(-1).id;

  const saved = await load(page, user, chatId, true);
  assert.equal(saved, 4, "the page saved both turns, the partial reply included");
  assert.equal(await lastText(page), CHUNKS.slice(0, 3).join(""));
  await page.evaluate(() => globalThis.natterAi.resume());
  await untilPageText(page, CHUNKS.slice(0, 3).join(""));
  p.release();
  await withTimeout(page.evaluate(() => globalThis.natterAi.settled()), 20_000, "resumeStream");
  s = await snapshot(page);
  assert.equal(s.status, "ready");
  assert.equal(s.error, undefined);
  assert.deepEqual(s.messages.map((m) => [m.role, m.text]),
    [["user", "first"], ["assistant", FULL], ["user", "second"], ["assistant", FULL]]);
  assert.equal(s.messages[3].id, partialId, "the partial reply was replaced, not duplicated");
  assert.equal((await p.ended).status, "done");
  assert.ok(!p.ctl.includes("cancel"), "the reload cancelled nothing");
  await page.close();
});

test("Chromium: stop() cancels the producer", async () => {
  const user = `browser-stop${Date.now()}`;
  const chatId = `bstop-${Date.now()}`;
  const page = await openPage(user, chatId);
  worker.script = () => ({ chunks: CHUNKS, delayMs: 5, holdAfter: 2 });
  await page.evaluate(() => globalThis.natterAi.send("stop me"));
  const p = await until(() => worker.latest(chatId), 20_000, "the stream");
  await untilPageText(page, CHUNKS.slice(0, 2).join(""));
  await withTimeout(page.evaluate(() => globalThis.natterAi.stop()), 10_000, "stop");
  const end = await withTimeout(p.ended, 10_000, "the producer's end");
  assert.equal(end.code, "CANCELLED");
  assert.deepEqual(p.ctl.filter((op) => op === "cancel"), ["cancel"]);
  const s = await snapshot(page);
  assert.equal(s.status, "ready");
  assert.equal(s.messages.at(-1).text, CHUNKS.slice(0, 2).join(""));
  await page.close();
});
