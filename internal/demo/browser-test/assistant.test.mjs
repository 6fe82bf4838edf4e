// The demo's "assistant" room in Debian's Chromium against a real edge
// process: an answer (a response stream) survives a reload mid-answer and
// reaches tabs opened mid-answer, whole, once and in order; a stop cancels
// it for every tab.
//
// Run by `go test ./internal/demo -run TestBrowserAssistant`
// (assistant_browser_test.go), which starts NATS, the assistant worker and
// the edge, and passes
//   ASSISTANT_DEMO_URL  the edge's base URL (dev users: ?user=)
//   ASSISTANT_CONTROL_URL  the Go test's: POST /restart-edge?ask=<question>
//                       stops the edge (SIGTERM), asks the question as a
//                       service while it is down, starts the edge again and
//                       answers once it listens
//   ASSISTANT_CASES     {"reload" | "away" | "stop": {question, answer}}:
//                       questions and the whole answers the worker writes
//                       for them (assistant.Answer)
// Not part of `npm test`: without them it fails.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BASE = process.env.ASSISTANT_DEMO_URL;
const CONTROL = process.env.ASSISTANT_CONTROL_URL;
const CASES = process.env.ASSISTANT_CASES ? JSON.parse(process.env.ASSISTANT_CASES) : undefined;
if (!BASE || !CONTROL || !CASES?.reload || !CASES?.away || !CASES?.stop) {
  throw new Error("assistant.test.mjs needs ASSISTANT_DEMO_URL, ASSISTANT_CONTROL_URL and ASSISTANT_CASES: run it with go test ./internal/demo -run TestBrowserAssistant");
}
const WAIT = 30_000; // for any one thing
const ANSWER_WAIT = 90_000; // for an answer to end (about ten seconds of writing)

test("the assistant's answers across a reload, tabs and an edge restart, and stop", { timeout: 300_000 }, async (t) => {
  await mkdir(artifacts, { recursive: true });
  for (const f of await readdir(artifacts)) if (f.startsWith("failure-assistant-")) await rm(join(artifacts, f)); // of an earlier run
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: WAIT,
  });
  const pages = {}; // name -> page
  const pageErrors = []; // uncaught exceptions in the pages fail the test
  const consoleErrors = []; // printed on failure only: refused connections while the edge is down are expected
  let failed = true;
  try {
    const alice = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const bob = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const open = async (name, context, user) => {
      context.setDefaultTimeout(WAIT);
      const page = await context.newPage();
      page.on("pageerror", (err) => pageErrors.push(`${name}: ${err.stack ?? err}`));
      page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(`${name}: ${msg.text()}`); });
      await page.goto(`${BASE}/?user=${user}`);
      await connected(page);
      pages[name] = page;
      return page;
    };

    // ---- an answer across a reload and other tabs ----
    const { question, answer } = CASES.reload;
    const a1 = await open("alice-1", alice, "alice");
    await enterAssistant(a1, "alice");
    await a1.getByTestId("question-input").fill(question);
    await a1.getByTestId("ask-button").click();
    const first = a1.getByTestId("answer");
    await first.waitFor();
    const id = await first.getAttribute("data-stream");
    assert.ok(id, "the answer names its stream");
    await textLongerThan(a1, id, 150);
    assert.equal(await status(a1, id), "streaming", "writing when the page reloads");

    await a1.reload();
    await connected(a1);
    await expectText(a1.getByTestId("room-title"), "#assistant"); // the tab's room, kept across the reload
    await midAnswer(a1, id, answer, "alice-1 after its reload");
    const a2 = await open("alice-2", alice, "alice"); // the same user's second tab
    await enterAssistant(a2, "alice");
    await midAnswer(a2, id, answer, "alice-2 (opened mid-answer)");
    const b = await open("bob", bob, "bob"); // another member of the room
    await enterAssistant(b, "bob");
    await midAnswer(b, id, answer, "bob (opened mid-answer)");

    // The edge restarts: every tab reconnects, and the client re-joins the
    // stream from the last offset it saw. Meanwhile a service asks: no
    // tab hears of it but by assistant.current after the reconnect.
    const away = CASES.away;
    const restart = await fetch(`${CONTROL}/restart-edge?${new URLSearchParams({ ask: away.question })}`, { method: "POST" });
    assert.equal(restart.status, 204, "the Go test restarted the edge");
    let awayId;
    for (const [name, page] of Object.entries(pages)) {
      await page.locator('[data-testid="conn-state"][data-state="open"]').waitFor({ timeout: 60_000 }); // the client's backoff
      await page.locator('[data-testid="notice"]').filter({ hasText: "reconnected" }).first().waitFor();
      t.diagnostic(`${name} reconnected at ${(await answerText(page, id)).length} bytes, ${await status(page, id)}`);
      const found = answerFor(page, away.question);
      await found.waitFor();
      awayId ??= await found.getAttribute("data-stream");
      assert.equal(await found.getAttribute("data-stream"), awayId, `${name}: the answer asked while away`);
    }

    for (const [name, page] of Object.entries(pages)) {
      for (const [sid, c] of [[id, CASES.reload], [awayId, away]]) {
        await waitStatus(page, sid, "done", ANSWER_WAIT);
        const text = await answerText(page, sid);
        assert.equal(text.length, c.answer.length, `${name}: the answer's length`);
        assert.equal(text, c.answer, `${name}: the whole answer, once, in order`);
        assert.equal(await page.locator(answerSel(sid)).count(), 1, `${name}: the answer shows once`);
        assert.equal(await page.locator(answerSel(sid)).getByTestId("answer-question").textContent(), c.question);
        assert.equal(await page.locator(answerSel(sid)).getByTestId("stop-button").count(), 0, `${name}: no stop button after the end`);
      }
    }
    t.diagnostic(`${answer.length} bytes in every tab: alice-1 (reloaded mid-answer), alice-2 and bob (opened mid-answer), all across the edge's restart; ` +
      `and the ${away.answer.length} of the answer asked while the edge was down`);

    // ---- stop ----
    const stop = CASES.stop;
    await a1.getByTestId("question-input").fill(stop.question);
    await a1.getByTestId("ask-button").click();
    const stopped = answerFor(a1, stop.question);
    await stopped.waitFor();
    const sid = await stopped.getAttribute("data-stream");
    assert.ok(sid && sid !== id && sid !== awayId, "a stream of its own");
    for (const page of Object.values(pages)) await textLongerThan(page, sid, 100); // the others learn of it from the room
    await a1.locator(answerSel(sid)).getByTestId("stop-button").click();
    const texts = {};
    for (const [name, page] of Object.entries(pages)) {
      await waitStatus(page, sid, "cancelled", WAIT);
      texts[name] = await answerText(page, sid);
      assert.ok(stop.answer.startsWith(texts[name]) && texts[name].length < stop.answer.length,
        `${name}: ${texts[name].length} bytes, want a strict prefix of the ${stop.answer.length} of the answer`);
      assert.equal(await page.locator(answerSel(sid)).getByTestId("stop-button").count(), 0, `${name}: no stop button after the end`);
    }
    assert.equal(new Set(Object.values(texts)).size, 1, `every tab shows the text up to the cancel: ${JSON.stringify(Object.fromEntries(Object.entries(texts).map(([k, v]) => [k, v.length])))}`);
    t.diagnostic(`stopped after ${texts["alice-1"].length} of ${stop.answer.length} bytes, "cancelled" in every tab`);

    assert.deepEqual(pageErrors, [], "uncaught errors in the pages");
    await a1.screenshot({ path: join(artifacts, "assistant.png") });
    failed = false;
  } finally {
    if (failed) {
      for (const [name, page] of Object.entries(pages)) {
        await page.screenshot({ path: join(artifacts, `failure-assistant-${name}.png`) }).catch(() => {});
      }
      if (pageErrors.length) console.error(`page errors:\n${pageErrors.join("\n")}`);
      if (consoleErrors.length) console.error(`console errors:\n${consoleErrors.join("\n")}`);
    }
    await browser.close();
  }
});

const answerSel = (id) => `[data-testid="answer"][data-stream="${id}"]`;

// answerFor is the page's answer to question.
function answerFor(page, question) {
  return page.getByTestId("answer").filter({ has: page.getByTestId("answer-question").getByText(question, { exact: true }) });
}

async function connected(page) {
  await page.locator('[data-testid="conn-state"][data-state="open"]').waitFor();
}

// enterAssistant puts the assistant room on screen and waits until the
// page is in it (lists its own user there).
async function enterAssistant(page, user) {
  await page.locator('[data-testid="room"][data-room="assistant"]').click();
  await expectText(page.getByTestId("room-title"), "#assistant");
  await page.locator(`[data-testid="online-user"][data-user="${user}"]`).waitFor();
}

// midAnswer: the page found the answer (assistant.current) while it is
// still being written, and shows a beginning of it.
async function midAnswer(page, id, answer, name) {
  await page.locator(answerSel(id)).waitFor();
  await textLongerThan(page, id, 0);
  const [st, text] = [await status(page, id), await answerText(page, id)];
  assert.equal(st, "streaming", `${name}: the answer is still being written (a slow machine? the worker's WordDelay sets the pace)`);
  assert.ok(answer.startsWith(text), `${name}: ${text.length} bytes that are not the answer's beginning: ${JSON.stringify(text.slice(0, 80))}`);
}

function status(page, id) {
  return page.locator(answerSel(id)).getByTestId("answer-status").getAttribute("data-status");
}

async function answerText(page, id) {
  return (await page.locator(answerSel(id)).getByTestId("answer-text").textContent()) ?? "";
}

async function waitStatus(page, id, want, timeout) {
  await page.locator(`${answerSel(id)} [data-testid="answer-status"][data-status="${want}"]`).waitFor({ timeout });
}

async function textLongerThan(page, id, n) {
  await page.waitForFunction(
    ([sel, n]) => (document.querySelector(sel)?.textContent.length ?? 0) > n,
    [`${answerSel(id)} [data-testid="answer-text"]`, n],
    { timeout: WAIT },
  );
}

async function expectText(locator, text) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const got = await locator.textContent();
    if (got === text) return;
    if (Date.now() > deadline) assert.equal(got, text);
    await new Promise((r) => setTimeout(r, 50));
  }
}
