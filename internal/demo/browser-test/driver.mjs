// A headless Chromium showing the demo page, driven by a Go test
// (internal/demo/durable_browser_test.go) over stdin and stdout: one JSON
// command per line in, one JSON answer per line out, in order. The Go test
// owns NATS and the edge and publishes; this opens the page, watches what
// it renders and reports it. Not a node:test file: `npm test` skips it.
//
// Commands ({"op": ..., ...}); every answer is {"ok": true, ...} or
// {"ok": false, "error": "..."}:
//   open {url, room}       launch Chromium, open url (with ?user=), join room
//                          through the page's form, wait until the page lists
//                          its own user in the room, then record every item
//                          the page adds to the room's message list
//   waitState {state}      the connection badge shows state
//   waitNotices {recovery, count}  the page added at least count notices
//                          with data-recovery="recovery" (one per re-join)
//   messages {user, count, settleMs}  waits until the page added at least
//                          count messages of user, then settleMs more (late
//                          duplicates), and answers {texts, recoveries,
//                          pageErrors}; after the timeout it answers what it
//                          has, so that the caller can say what is missing
//   screenshot {path}
//   close                  closes Chromium; the driver then exits
// And for a plain EventSource, no SDK (eventsource_browser_test.go), in a
// page of its own:
//   esOpen {pageUrl, src}  opens pageUrl (an empty page the driver serves
//                          itself, on the edge's origin, without the edge
//                          seeing the request) and there
//                          `new EventSource(src)`; records its events and
//                          the Last-Event-ID header of every GET .../sse
//   esLog                  answers {log, requests, pageErrors}: log has
//                          {kind: "open"}, {kind: "error", readyState},
//                          {kind: "message" | "session" | "close", data, id}
//                          (id: the event's lastEventId) in order; requests
//                          {url, lastEventId, status} (the Last-Event-ID
//                          header or null; the answer's status, 0 before
//                          it came), in order
//   esClose                closes the EventSource (es.close())
//   esStart {src}          opens a new EventSource in the same page
// Every wait gives up after timeoutMs (default 20 s).
//
// The record comes from a MutationObserver on the message list rather than
// from the list itself, which keeps only the room's last 500 items.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

let browser;
let page;
let esPage; // esOpen's
const sseRequests = []; // esOpen's page's GET .../sse: {url, lastEventId}
const pageErrors = [];
const log = (line) => console.error(`${new Date().toISOString()} ${line}`); // the Go test logs it on failure

const ops = {
  async open({ url, room, timeoutMs = 20_000 }) {
    await launch(timeoutMs);
    const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
    context.setDefaultTimeout(timeoutMs);
    page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(String(err.stack ?? err)));
    // Refused connects while the edge is down are expected.
    page.on("console", (msg) => { if (msg.type() === "error") log(`console: ${msg.text()}`); });
    await page.exposeFunction("driverLog", log);
    await page.goto(url);
    // The client's state changes, $joined frames and recovery reports.
    await page.evaluate(() => {
      const { natter, driverLog } = globalThis;
      natter.onState((state, info) => driverLog(`state ${state} ${info ? JSON.stringify(info) : ""}`));
      natter.on("*", (_, env) => { if (env.type === "$joined") driverLog(`$joined ${JSON.stringify(env.payload)}`); });
      natter.onRecovery((info) => driverLog(`recovery ${JSON.stringify(info)}`));
      natter.onError((err, info) => driverLog(`client error ${err.code}: ${err.message} ${JSON.stringify(info)}`));
    });
    const me = new URL(url).searchParams.get("user");
    await badge("open", timeoutMs);
    await page.getByTestId("room-input").fill(room);
    await page.getByTestId("join-button").click();
    await page.locator(`[data-testid="room-title"]`).filter({ hasText: room }).waitFor();
    // Listed in the room: $joined came back (the client has the room's
    // position) and the presence page was read.
    await page.locator(`[data-testid="online-user"][data-user="${me}"]`).waitFor();
    // From now on the room stays on screen: record what the page adds.
    await page.evaluate(() => {
      const rendered = (globalThis.rendered = []);
      new MutationObserver((records) => {
        for (const r of records) {
          for (const n of r.addedNodes) {
            if (!(n instanceof HTMLElement)) continue;
            const d = n.dataset;
            if (d.testid === "message") rendered.push({ user: d.user, text: n.querySelector('[data-testid="message-text"]')?.textContent });
            else if (d.recovery) rendered.push({ recovery: d.recovery });
          }
        }
      }).observe(document.querySelector('[data-testid="messages"]'), { childList: true });
    });
    return {};
  },

  async waitState({ state, timeoutMs = 20_000 }) {
    await badge(state, timeoutMs);
    return {};
  },

  async waitNotices({ recovery, count, timeoutMs = 20_000 }) {
    await until(timeoutMs, async () => (await recoveries()).filter((r) => r === recovery).length >= count);
    return { recoveries: await recoveries() };
  },

  async messages({ user, count, settleMs = 500, timeoutMs = 20_000 }) {
    const texts = () => page.evaluate((user) => globalThis.rendered.filter((m) => m.user === user).map((m) => m.text), user);
    const complete = await until(timeoutMs, async () => (await texts()).length >= count).then(() => true, () => false);
    if (complete) await new Promise((r) => setTimeout(r, settleMs));
    return { texts: await texts(), recoveries: await recoveries(), pageErrors };
  },

  async esOpen({ pageUrl, src, timeoutMs = 20_000 }) {
    await launch(timeoutMs);
    const context = await browser.newContext({ viewport: { width: 800, height: 400 } });
    context.setDefaultTimeout(timeoutMs);
    esPage = await context.newPage();
    esPage.on("pageerror", (err) => pageErrors.push(String(err.stack ?? err)));
    esPage.on("console", (msg) => log(`eventsource page console ${msg.type()}: ${msg.text()}`));
    // The headers as sent (Playwright's request.allHeaders() gives only
    // the provisional ones of a response that never ends), from the
    // DevTools protocol's extra info.
    const cdp = await context.newCDPSession(esPage);
    const sent = new Map(); // requestId -> the extra info's headers
    const streams = new Map(); // requestId -> sseRequests entry
    cdp.on("Network.requestWillBeSent", ({ requestId, request }) => {
      if (!new URL(request.url).pathname.endsWith("/sse")) return;
      const entry = { url: request.url, lastEventId: null, status: 0 };
      sseRequests.push(entry); // in the order the page made them
      streams.set(requestId, entry);
      if (sent.has(requestId)) entry.lastEventId = lastEventIdOf(sent.get(requestId));
      log(`eventsource request ${request.url}`);
    });
    cdp.on("Network.responseReceived", ({ requestId, response }) => {
      const entry = streams.get(requestId);
      if (entry) entry.status = response.status;
    });
    cdp.on("Network.requestWillBeSentExtraInfo", ({ requestId, headers }) => {
      sent.set(requestId, headers);
      const entry = streams.get(requestId);
      if (entry) entry.lastEventId = lastEventIdOf(headers);
    });
    await cdp.send("Network.enable");
    // The page is the driver's: the edge serves only the stream.
    await esPage.route(pageUrl, (route) => route.fulfill({ contentType: "text/html", body: "<!doctype html><title>EventSource</title>" }));
    await esPage.goto(pageUrl);
    await esPage.evaluate(() => {
      const record = (globalThis.esLog = []);
      globalThis.esStart = (src) => {
        const es = (globalThis.es = new EventSource(src));
        es.onopen = () => record.push({ kind: "open" });
        es.onerror = () => record.push({ kind: "error", readyState: es.readyState });
        es.onmessage = (ev) => record.push({ kind: "message", data: ev.data, id: ev.lastEventId });
        for (const name of ["session", "close"]) {
          es.addEventListener(name, (ev) => record.push({ kind: name, data: ev.data, id: ev.lastEventId }));
        }
      };
    });
    await esPage.evaluate((src) => globalThis.esStart(src), src);
    return {};
  },

  async esLog() {
    return { log: await esPage.evaluate(() => globalThis.esLog), requests: sseRequests, pageErrors };
  },

  async esClose() {
    await esPage.evaluate(() => globalThis.es.close());
    return {};
  },

  async esStart({ src }) {
    await esPage.evaluate((src) => globalThis.esStart(src), src);
    return {};
  },

  async screenshot({ path }) {
    await page?.screenshot({ path });
    return {};
  },

  async close() {
    await browser?.close();
    browser = undefined;
    return {};
  },
};

// lastEventIdOf is the Last-Event-ID header of a request's headers, null without one.
function lastEventIdOf(headers) {
  const name = Object.keys(headers).find((k) => k.toLowerCase() === "last-event-id");
  return name === undefined ? null : headers[name];
}

async function launch(timeoutMs) {
  browser ??= await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: timeoutMs,
  });
}

function badge(state, timeoutMs) {
  return page.locator(`[data-testid="conn-state"][data-state="${state}"]`).waitFor({ timeout: timeoutMs });
}

// recoveries lists the recovery notices the page added, in order:
// "recovered" or "gap".
function recoveries() {
  return page.evaluate(() => globalThis.rendered.filter((m) => m.recovery).map((m) => m.recovery));
}

async function until(timeoutMs, cond) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Commands run one at a time, in the order they come.
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let cmd;
  let answer;
  try {
    cmd = JSON.parse(line);
    const op = ops[cmd.op];
    if (!op) throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
    answer = { ok: true, ...(await op(cmd)) };
  } catch (err) {
    answer = { ok: false, error: `${cmd?.op ?? "?"}: ${err.message ?? err}` };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (cmd?.op === "close") break;
}
// stdin closed (the Go test ended) or close: never leave Chromium behind.
await browser?.close().catch(() => {});
