// The sse transport's own machinery against a scripted fetch: the session
// event, one POST at a time with what queued meanwhile, seq, retries under
// the same seq, the 413 split, 404 and the stream's close event, close().
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { dialSse } from "../dist/sse.js";

/** A fetch whose event stream and POST answers the test controls. */
function scriptedFetch({ status = 200 } = {}) {
  const posts = [];
  const streams = [];
  const f = async (url, init = {}) => {
    if ((init.method ?? "GET") === "GET") {
      let ctl;
      const body = new ReadableStream({ start: (c) => void (ctl = c) });
      const s = { url: new URL(url), init, ctl, aborted: false };
      streams.push(s);
      init.signal?.addEventListener("abort", () => {
        s.aborted = true;
        try {
          ctl.error(new DOMException("aborted", "AbortError"));
        } catch {
          // Closed already.
        }
      });
      return new Response(status === 200 ? body : "refused", { status });
    }
    return new Promise((resolve, reject) => {
      const u = new URL(url);
      posts.push({
        at: Date.now(),
        seq: u.searchParams.get("seq"),
        session: u.searchParams.get("session"),
        path: u.pathname,
        body: init.body,
        headers: init.headers,
        answer: (code, text = "", headers = {}) => resolve(new Response(code === 204 ? null : text, { status: code, headers })),
        fail: () => reject(new TypeError("fetch failed")),
      });
      init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    });
  };
  f.posts = posts;
  f.streams = streams;
  f.emit = (text) => streams.at(-1).ctl.enqueue(new TextEncoder().encode(text));
  f.end = () => streams.at(-1).ctl.close();
  return f;
}

function recorder() {
  const ev = { opened: 0, frames: [], closes: [], errors: [] };
  ev.events = {
    open: () => ev.opened++,
    frame: (env) => ev.frames.push(env),
    error: (err) => ev.errors.push(err),
    close: (code, reason) => ev.closes.push([code, reason]),
  };
  return ev;
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function until(check, ms = 2000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("timeout");
    await tick(1);
  }
}
const SESSION = 'event: session\ndata: {"session":"e.1.secret","send":"/ws/send"}\n\n';

// A transport whose POST is unanswered retries it every postTimeoutMs:
// each test's transport is closed at the end, or Node would not exit.
const dialed = [];
after(() => dialed.forEach((t) => t.close()));

async function opened(options = {}) {
  const f = scriptedFetch();
  const ev = recorder();
  const t = dialSse({ url: "http://edge.test/ws?user=u", token: options.token, fetch: f, events: ev.events, postTimeoutMs: options.postTimeoutMs });
  dialed.push(t);
  await until(() => f.streams.length === 1);
  assert.equal(t.writable, false, "not before the session event");
  f.emit(SESSION);
  await until(() => ev.opened === 1);
  assert.equal(t.writable, true);
  return { f, ev, t };
}

test("sse transport: the stream's request, then one POST at a time with what queued meanwhile; seq counts POSTs", async () => {
  const { f, ev, t } = await opened({ token: "tok" });
  const s = f.streams[0];
  assert.equal(s.url.toString(), "http://edge.test/ws/sse?user=u");
  assert.deepEqual(s.init.headers, { Accept: "text/event-stream", Authorization: "Bearer tok" });
  f.emit('data: {"type":"$connected","payload":{"connectionId":"e.1"}}\n\n: ping\n\ndata: not json\n\n');
  await until(() => ev.frames.length === 1);
  assert.deepEqual(ev.frames, [{ type: "$connected", payload: { connectionId: "e.1" } }]);

  t.send({ type: "a", payload: "1" });
  t.send({ type: "b", meta: { room: "r" } });
  t.send({ type: "c" });
  await until(() => f.posts.length === 1);
  assert.deepEqual([f.posts[0].path, f.posts[0].session, f.posts[0].seq, f.posts[0].body], ["/ws/send", "e.1.secret", "1", '{"type":"a","payload":1}']);
  assert.deepEqual(f.posts[0].headers, { "Content-Type": "text/plain", Authorization: "Bearer tok" });
  await tick(5);
  assert.equal(f.posts.length, 1, "one POST in flight");
  f.posts[0].answer(204);
  await until(() => f.posts.length === 2);
  assert.deepEqual([f.posts[1].seq, f.posts[1].body], ["2", '{"type":"b","meta":{"room":"r"}}\n{"type":"c"}']);
  f.posts[1].answer(204);
  await tick(5);
  assert.equal(f.posts.length, 2);
  assert.deepEqual(ev.closes, []);
});

test("sse transport: a POST that fails on the network, or is answered 409, 429 or 503, goes again under the same seq", async () => {
  const { f, t } = await opened();
  t.send({ type: "a" });
  await until(() => f.posts.length === 1);
  t.send({ type: "b" }); // queued meanwhile: not part of the retried batch
  f.posts[0].fail();
  await until(() => f.posts.length === 2, 3000);
  assert.deepEqual([f.posts[1].seq, f.posts[1].body], ["1", '{"type":"a"}']);
  f.posts[1].answer(409, "seq in progress");
  await until(() => f.posts.length === 3, 3000);
  assert.equal(f.posts[2].seq, "1");
  f.posts[2].answer(503);
  await until(() => f.posts.length === 4, 3000);
  assert.equal(f.posts[3].seq, "1");
  f.posts[3].answer(204);
  await until(() => f.posts.length === 5);
  assert.deepEqual([f.posts[4].seq, f.posts[4].body], ["2", '{"type":"b"}']);
});

test("sse transport: a POST left unanswered is given up after postTimeoutMs and goes again under the same seq; later frames follow", async () => {
  const { f, ev, t } = await opened({ postTimeoutMs: 200 });
  t.send({ type: "a" });
  await until(() => f.posts.length === 1);
  t.send({ type: "b" });
  // The first attempt hangs (a proxy that holds it): nothing else is sent meanwhile.
  await tick(100);
  assert.equal(f.posts.length, 1, "one POST at a time");
  await until(() => f.posts.length === 2, 3000);
  assert.deepEqual([f.posts[1].seq, f.posts[1].body], ["1", '{"type":"a"}'], "the same seq and batch again");
  f.posts[1].answer(409, "seq in progress"); // the edge still works on the first
  await until(() => f.posts.length === 3, 3000);
  assert.equal(f.posts[2].seq, "1");
  f.posts[2].answer(204);
  await until(() => f.posts.length === 4);
  assert.deepEqual([f.posts[3].seq, f.posts[3].body], ["2", '{"type":"b"}']);
  f.posts[3].answer(204);
  f.posts[0].answer(204); // the first attempt's late answer changes nothing
  await tick(300);
  assert.equal(f.posts.length, 4);
  assert.deepEqual(ev.closes, []);
  t.close();
});

test("sse transport: after close() has given up on the POSTs, a retry waiting for its turn sends nothing", async () => {
  const { f, t } = await opened();
  t.send({ type: "a" });
  let failing = true;
  const failer = (async () => {
    for (let seen = 0; failing; await tick(5)) {
      for (; seen < f.posts.length; seen++) f.posts[seen].fail(); // the network fails every attempt
    }
  })();
  await until(() => f.posts.length === 1);
  const closed = Date.now();
  t.close(); // the POST under way gets CLOSE_GRACE_MS (2 s) to go through, then everything stops
  await tick(4500); // past the grace and the longest retry delay (2 s)
  failing = false;
  await failer;
  // Retries 100, 200, 400 and 800 ms apart: the last within the grace is
  // about 1.5 s after the close; the retry waiting when the grace ends
  // must not go out.
  const late = f.posts.filter((p) => p.at - closed >= 1900).map((p) => p.at - closed);
  assert.deepEqual(late, [], "ms after close() of POSTs sent after the transport stopped");
});

test("sse transport: a 413 halves the batch under the same seq; a single frame over every limit closes 1009", async () => {
  const { f, ev, t } = await opened();
  t.send({ type: "first" });
  await until(() => f.posts.length === 1);
  for (const type of ["a", "b", "c", "d"]) t.send({ type });
  f.posts[0].answer(204);
  await until(() => f.posts.length === 2);
  assert.equal(f.posts[1].body.split("\n").length, 4);
  f.posts[1].answer(413, "body too large");
  await until(() => f.posts.length === 3);
  assert.deepEqual([f.posts[2].seq, f.posts[2].body], ["2", '{"type":"a"}\n{"type":"b"}']);
  f.posts[2].answer(204);
  await until(() => f.posts.length === 4);
  assert.deepEqual([f.posts[3].seq, f.posts[3].body], ["3", '{"type":"c"}\n{"type":"d"}']);
  f.posts[3].answer(204);

  t.send({ type: "huge" });
  await until(() => f.posts.length === 5);
  f.posts[4].answer(413, "body too large");
  await until(() => ev.closes.length === 1);
  assert.equal(ev.closes[0][0], 1009);
  assert.equal(t.writable, false);
  assert.ok(f.streams[0].aborted, "the stream ended");
});

test("sse transport: the stream's close event gives the code; a 404 waits for it; a stream that ends without one is 1006", async () => {
  {
    const { f, ev, t } = await opened();
    t.send({ type: "a" });
    await until(() => f.posts.length === 1);
    f.posts[0].answer(404, "unknown session");
    await tick(20);
    assert.equal(t.writable, false, "no more sends once the session is gone");
    assert.deepEqual(ev.closes, [], "the stream may still say why");
    f.emit('event: close\ndata: {"code": 4100, "reason": "token expired"}\n\n');
    f.end();
    await until(() => ev.closes.length === 1);
    assert.deepEqual(ev.closes, [[4100, "token expired"]]);
  }
  {
    const { f, ev, t } = await opened();
    t.send({ type: "a" });
    await until(() => f.posts.length === 1);
    f.posts[0].answer(404, "unknown session");
    await until(() => ev.closes.length === 1, 3000);
    assert.deepEqual(ev.closes, [[1006, "send refused: 404 unknown session"]]);
  }
  {
    const { f, ev } = await opened();
    f.end();
    await until(() => ev.closes.length === 1);
    assert.deepEqual(ev.closes, [[1006, "event stream ended"]]);
  }
});

test("sse transport: a refused stream closes 1006 with the status; a 400 POST is a protocol error (1002), a 502 is retried", async () => {
  const f = scriptedFetch({ status: 401 });
  const ev = recorder();
  dialed.push(dialSse({ url: "http://edge.test/ws", fetch: f, events: ev.events }));
  await until(() => ev.closes.length === 1);
  assert.deepEqual(ev.closes, [[1006, "event stream refused: 401 refused"]]);
  assert.equal(ev.opened, 0);

  const { f: g, ev: ev2, t } = await opened();
  t.send({ type: "a" });
  await until(() => g.posts.length === 1);
  g.posts[0].answer(502, "bad gateway");
  await until(() => g.posts.length === 2, 3000);
  assert.equal(g.posts[1].seq, "1");
  g.posts[1].answer(400, "bad seq");
  await until(() => ev2.closes.length === 1);
  assert.deepEqual(ev2.closes, [[1002, "send refused: 400 bad seq"]]);
});

test("sse transport: close() lets the POST under way finish, then ends the stream, and reports no close", async () => {
  const { f, ev, t } = await opened();
  t.send({ type: "last" });
  await until(() => f.posts.length === 1);
  t.close(1000, "client closed");
  assert.equal(t.writable, false);
  assert.throws(() => t.send({ type: "late" }));
  await tick(10);
  assert.equal(f.streams[0].aborted, false, "the stream waits for the POST");
  f.posts[0].answer(204);
  await until(() => f.streams[0].aborted);
  await tick(10);
  assert.deepEqual(ev.closes, []);
  assert.equal(f.posts.length, 1);
});
