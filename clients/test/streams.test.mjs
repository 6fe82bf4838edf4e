// Response streams. Against a real edge, with a real producer: the process
// test-support/producer.mjs, a plain NATS client written from the
// protocol doc's "Writing a stream" alone, driven line by line from here
// (so that every chunk is stored before the test goes on), and killed
// with SIGKILL for the dead producer. The client's text is compared with
// what the producer wrote: whole, once, in order, with byte offsets that
// add up, from 0, from an offset, after the end (rolled up), across a
// socket cut mid-stream, on both wires (and sse). Then the client's own
// logic against a scripted WebSocket: frames before $stream.joined,
// retries of UNAVAILABLE and of a join not answered in time from the same
// offset, refusals on a re-join.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer, connect as tcpConnect } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, NatterError } from "natter-client";
import { natterSchemas } from "natter-client/schemas";
import { startEdge, service, waitState, until, withTimeout } from "../test-support/edge.mjs";
import { fakeWebSocket, lastSocket } from "../test-support/fake.mjs";

const fast = { initialDelayMs: 20, maxDelayMs: 100 };
const bytes = (s) => Buffer.byteLength(s);
/** The text after byte offset off. */
const after_ = (s, off) => Buffer.from(s).subarray(off).toString();
const producerPath = fileURLToPath(new URL("../test-support/producer.mjs", import.meta.url));

let edge;
let nc;
const cleanup = [];
let ids = 0;
/** A fresh stream id. */
const newId = (name) => `${name}-${process.pid}-${++ids}`;

before(async () => {
  edge = await startEdge();
  nc = await service(edge);
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  await nc?.close();
  await edge?.stop();
});

/** A client for this file, closed at the end. */
function client(user, { wire = "json", ...options } = {}) {
  const wired = wire === "protobuf" ? { wire, schemas: natterSchemas, transports: ["websocket"] } : wire === "sse" ? { transports: ["sse"] } : {};
  const c = connect(options.url ?? edge.url, { user, reconnect: fast, ...wired, ...options });
  cleanup.push(() => c.close());
  return c;
}

/**
 * Starts producer.mjs for stream id, readable by `to` ([kind, who]), and
 * resolves once the stream is open: {events, chunk(text), done(),
 * kill(signal), exited}. chunk resolves once JetStream stored it.
 */
async function produce(id, [kind, who]) {
  const proc = spawn(process.execPath, [producerPath, edge.nats, id, kind, who], { stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  cleanup.push(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    return exited;
  });
  let stderr = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (d) => (stderr += d));
  const events = [];
  createInterface({ input: proc.stdout }).on("line", (l) => events.push(JSON.parse(l)));
  let chunks = 0;
  const wait = (pred, what) => until(() => {
    const failed = events.find((e) => e.failed);
    if (failed) throw new Error(`producer ${id}: ${failed.failed}`);
    if (proc.exitCode !== null && !events.some(pred)) throw new Error(`producer ${id} exited (${proc.exitCode}) before ${what}: ${stderr}`);
    return events.find(pred);
  }, 10_000, `producer ${id}: ${what}`);
  const send = (cmd) => proc.stdin.write(JSON.stringify(cmd) + "\n");
  const p = {
    events,
    exited,
    wait,
    async chunk(text) {
      const n = ++chunks;
      send({ chunk: text });
      return wait((e) => e.stored === n, `chunk ${n} stored`);
    },
    done() {
      send({ done: true });
      return wait((e) => e.ended, "the end stored");
    },
    kill(signal) {
      proc.kill(signal);
    },
  };
  await wait((e) => e.opened, "the open stored");
  return p;
}

/** Reads s in the background: {chunks, text, error, done (a promise)}. */
function read(s) {
  const got = { chunks: [], text: "", error: undefined };
  got.done = (async () => {
    try {
      for await (const c of s) {
        got.chunks.push(c);
        got.text += c.text;
      }
    } catch (err) {
      got.error = err;
    }
  })();
  return got;
}

/** Each chunk's offset is where the one before ended plus its bytes. */
function assertOffsets(chunks, from) {
  let at = from;
  for (const c of chunks) {
    assert.ok(c.text.length > 0, "no empty chunk");
    at += bytes(c.text);
    assert.equal(c.offset, at, `offset after ${JSON.stringify(c.text)}`);
  }
}

/** The error p rejects with. */
async function rejection(p) {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

/**
 * A TCP proxy to the edge whose connections the test can cut (the client
 * sees 1006) and hold off (new connections are closed at once).
 */
async function tcpProxy() {
  const target = new URL(edge.url);
  const sockets = new Set();
  let held = false;
  const server = createServer((s) => {
    if (held) return void s.destroy();
    const up = tcpConnect(Number(target.port), target.hostname);
    for (const [a, b] of [[s, up], [up, s]]) {
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
      a.pipe(b);
    }
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanup.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}${target.pathname}`,
    cut() {
      for (const s of sockets) s.destroy();
    },
    hold: () => void (held = true),
    release: () => void (held = false),
  };
}

for (const wire of ["json", "protobuf", "sse"]) {
  test(`streams (${wire}): a join from 0 reads the whole text once, in order, with offsets in bytes, then a done end`, async () => {
    const id = newId(`whole-${wire}`);
    const user = `s-ann-${wire}`;
    const p = await produce(id, ["user", user]);
    const parts = ["Hello", ", wörld", " ☃ ", "🎉🎉", " bye"];
    // Two chunks stored before the join, the rest while it reads.
    await p.chunk(parts[0]);
    await p.chunk(parts[1]);
    const c = client(user, { wire });
    const s = c.stream(id);
    assert.equal(s.id, id);
    assert.equal(s.offset, 0);
    const got = read(s);
    await until(() => got.text === parts[0] + parts[1], 10_000, "the stored chunks");
    for (const part of parts.slice(2)) await p.chunk(part);
    await p.done();
    const full = parts.join("");
    const end = await withTimeout(s.ended, 10_000, "the end");
    await got.done;
    assert.equal(got.error, undefined);
    assert.equal(got.text, full);
    assertOffsets(got.chunks, 0);
    assert.deepEqual(end, { status: "done", offset: bytes(full) });
    assert.equal(s.offset, bytes(full));
    // Ended: the same id can be read again, and gives the same text.
    assert.equal(await withTimeout(c.stream(id).text(), 10_000, "text again"), full);
  });
}

test("streams: a join mid-stream, and another connection of the user re-joining from an offset, get no gap and no duplicate", async () => {
  const id = newId("mid");
  const user = "s-bob";
  const p = await produce(id, ["user", user]);
  await p.chunk("one ");
  await p.chunk("two ");
  const tab1 = client(user);
  const s1 = tab1.stream(id);
  const got1 = read(s1);
  await until(() => got1.text === "one two ", 10_000, "the first chunks");
  const mark = s1.offset;
  assert.equal(mark, bytes("one two "));
  // Iteration ends without an end; ended says why.
  s1.leave();
  await got1.done;
  assert.equal(got1.error, undefined);
  assert.equal((await rejection(s1.ended)).code, "CANCELLED");

  await p.chunk("three ");
  await p.chunk("four ");
  // Another tab takes over from where the first stopped, one from inside a chunk.
  const tab2 = client(user);
  const s2 = tab2.stream(id, { offset: mark });
  const s3 = client(user).stream(id, { offset: mark + 2 });
  const texts = Promise.all([s2.text(), s3.text()]);
  await p.chunk("five");
  await p.done();
  const full = "one two three four five";
  assert.deepEqual(await withTimeout(texts, 10_000, "the texts"), [after_(full, mark), after_(full, mark + 2)]);
  assert.equal(s2.offset, bytes(full));
  assert.deepEqual(await s2.ended, { status: "done", offset: bytes(full) });
});

test("streams: after the end the subject holds one message (rolled up), and joins from 0, an offset or past the end read from it", async () => {
  const id = newId("rolled");
  const user = "s-cat";
  const p = await produce(id, ["user", user]);
  const parts = ["alpha ", "βeta ", "gamma"];
  for (const part of parts) await p.chunk(part);
  await p.done();
  const full = parts.join("");
  const jsm = await jetstreamManager(nc);
  const subject = `natter.stream.${id}`;
  const info = await jsm.streams.info("natter_streams", { subjects_filter: subject });
  assert.deepEqual(info.state.subjects, { [subject]: 1 }, "one message for the stream after the end");

  const c = client(user);
  const s = c.stream(id);
  const got = read(s);
  await got.done;
  assert.equal(got.error, undefined);
  assert.equal(got.text, full);
  assertOffsets(got.chunks, 0);
  assert.deepEqual(await s.ended, { status: "done", offset: bytes(full) });

  const from = bytes("alpha ");
  assert.equal(await withTimeout(c.stream(id, { offset: from }).text(), 10_000, "from an offset"), "βeta gamma");
  // Past the end: no chunks, the end.
  const past = c.stream(id, { offset: bytes(full) + 10 });
  assert.equal(await withTimeout(past.text(), 10_000, "past the end"), "");
  assert.equal((await past.ended).status, "done");
});

// docs/protocol.md: "an offset inside a UTF-8 character starts at the
// next character".
test("streams: a join from an offset inside a UTF-8 character starts at the next character", async () => {
  const id = newId("inside");
  const user = "s-ida";
  const p = await produce(id, ["user", user]);
  await p.chunk("βeta");
  await p.done();
  const inside = client(user).stream(id, { offset: 1 }); // inside β (two bytes)
  assert.equal(await withTimeout(inside.text(), 10_000, "from inside β"), "eta");
  assert.deepEqual(await inside.ended, { status: "done", offset: bytes("βeta") });
});

for (const wire of ["json", "protobuf"]) {
  test(`streams (${wire}): a socket cut mid-stream: the client re-joins from the last offset and reads on without a gap or a duplicate`, async () => {
    const id = newId(`cut-${wire}`);
    const user = `s-dan-${wire}`;
    const p = await produce(id, ["user", user]);
    const proxy = await tcpProxy();
    // Every $stream.join the client writes.
    const joins = [];
    const bin = wire === "protobuf";
    class Recording extends WebSocket {
      send(data) {
        if (!bin && JSON.parse(data).type === "$stream.join") joins.push(JSON.parse(data).payload);
        super.send(data);
      }
    }
    const c = client(user, { wire, url: proxy.url, transports: ["websocket"], WebSocket: Recording });
    const s = c.stream(id);
    const got = read(s);
    await p.chunk("a1 ");
    await p.chunk("a2 ");
    await until(() => got.text === "a1 a2 ", 10_000, "the chunks before the cut");
    proxy.hold();
    proxy.cut();
    await waitState(c, "reconnecting");
    // Written while the client is away.
    await p.chunk("b1 ");
    await p.chunk("b2 ");
    proxy.release();
    await waitState(c, "open");
    await p.chunk("c1");
    await p.done();
    await withTimeout(got.done, 10_000, "the end");
    const full = "a1 a2 b1 b2 c1";
    assert.equal(got.error, undefined);
    assert.equal(got.text, full);
    assertOffsets(got.chunks, 0);
    assert.deepEqual(await s.ended, { status: "done", offset: bytes(full) });
    if (!bin) assert.deepEqual(joins, [{ stream: id, offset: 0 }, { stream: id, offset: bytes("a1 a2 ") }]);
  });
}

test("streams: cancel reaches the producer, which ends the stream CANCELLED; the reader's iterator throws it", async () => {
  const id = newId("cancel");
  const user = "s-eve";
  const p = await produce(id, ["user", user]);
  await p.chunk("partial ");
  const c = client(user);
  const s = c.stream(id);
  const got = read(s);
  await until(() => got.text === "partial ", 10_000, "the first chunk");
  await withTimeout(s.cancel(), 10_000, "$stream.cancelled");
  await p.wait((e) => e.ctl === "cancel", "the cancel");
  await p.wait((e) => e.ended === "error", "the CANCELLED end");
  await withTimeout(got.done, 10_000, "the end");
  assert.ok(got.error instanceof NatterError);
  assert.equal(got.error.code, "CANCELLED");
  const end = await s.ended;
  assert.equal(end.status, "error");
  assert.equal(end.offset, bytes("partial "));
  assert.equal(end.error.code, "CANCELLED");
  // Cancelling an ended stream is not an error.
  await withTimeout(s.cancel(), 10_000, "cancel again");
});

test("streams: PERMISSION_DENIED for another user (join and cancel), a room's stream for its members only; NOT_FOUND", async () => {
  const id = newId("private");
  const p = await produce(id, ["user", "s-owner"]);
  await p.chunk("secret");
  const other = client("s-other");
  const s = other.stream(id);
  const err = await rejection(s.text());
  assert.ok(err instanceof NatterError);
  assert.equal(err.code, "PERMISSION_DENIED");
  assert.equal((await rejection(s.ended)).code, "PERMISSION_DENIED");
  assert.equal((await rejection(other.stream(id).cancel())).code, "PERMISSION_DENIED");

  const room = newId("s-room");
  const rid = newId("roomed");
  const rp = await produce(rid, ["room", room]);
  await rp.chunk("for the room");
  assert.equal((await rejection(other.stream(rid).ended)).code, "PERMISSION_DENIED");
  await other.join(room);
  const rs = other.stream(rid);
  const text = rs.text();
  await rp.done();
  assert.equal(await withTimeout(text, 10_000, "the room's stream"), "for the room");

  const missing = other.stream(newId("never-opened"));
  const got = read(missing);
  await got.done;
  assert.equal(got.error?.code, "NOT_FOUND");
  assert.equal((await rejection(missing.ended)).code, "NOT_FOUND");
  await p.done();
});

test("streams: a producer killed mid-stream: the reader gets an UNAVAILABLE end within seconds, and a later join the same end", async () => {
  const id = newId("killed");
  const user = "s-fay";
  const p = await produce(id, ["user", user]);
  await p.chunk("last words");
  const c = client(user);
  const s = c.stream(id);
  const got = read(s);
  await until(() => got.text === "last words", 10_000, "the chunk");
  const killedAt = Date.now();
  p.kill("SIGKILL");
  assert.equal((await p.exited).signal, "SIGKILL");
  const end = await withTimeout(s.ended, 15_000, "the end of a dead producer's stream");
  const took = Date.now() - killedAt;
  assert.ok(took < 10_000, `ended after ${took} ms`);
  assert.equal(end.status, "error");
  assert.equal(end.error.code, "UNAVAILABLE");
  assert.equal(end.offset, bytes("last words"));
  await got.done;
  assert.equal(got.error?.code, "UNAVAILABLE");
  const again = c.stream(id);
  assert.equal((await rejection(again.text())).code, "UNAVAILABLE");
  assert.deepEqual(await again.ended, end);
});

test("streams: the signal leaves; one reader per id; a stream is read once", async () => {
  const id = newId("local");
  const user = "s-gus";
  const p = await produce(id, ["user", user]);
  await p.chunk("x");
  const c = client(user);
  const ac = new AbortController();
  const s = c.stream(id, { signal: ac.signal });
  assert.equal((await rejection(c.stream(id).ended)).code, "ALREADY_EXISTS");
  const got = read(s);
  await until(() => got.text === "x", 10_000, "the chunk");
  assert.equal((await rejection(s.text())).code, "FAILED_PRECONDITION");
  ac.abort();
  await got.done;
  assert.equal(got.error, undefined);
  assert.equal((await rejection(s.ended)).code, "CANCELLED");
  // Left: the id is free again (here and on the edge, which took the leave).
  const again = c.stream(id).text();
  await p.chunk("y");
  await p.done();
  assert.equal(await withTimeout(again, 10_000, "the text"), "xy");
});

// The client's logic against a scripted WebSocket.

/** The frames of type the socket was sent. */
const sent = (ws, type) => ws.sent.filter((e) => e.type === type);
const tick = () => new Promise((r) => setTimeout(r, 0));

test("streams (scripted): frames before $stream.joined are dropped, chunks seen already are skipped, the end finishes", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, transports: ["websocket"], reconnect: { initialDelayMs: 1, maxDelayMs: 5 } });
  cleanup.push(() => c.close());
  const s = c.stream("s1", { offset: 3 });
  const got = read(s);
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  const [join] = sent(ws, "$stream.join");
  assert.deepEqual(join.payload, { stream: "s1", offset: 3 });
  assert.ok(join.meta.correlationId);
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s1", offset: 9 }, payload: "early!" });
  ws.serverSend({ type: "$stream.joined", meta: { correlationId: join.meta.correlationId }, payload: { stream: "s1", offset: 3, to: { user: "u" } } });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s1", offset: 6 }, payload: "abc" });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s1", offset: 6 }, payload: "abc" });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "other", offset: 7 }, payload: "zzzz" });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s1", offset: 8 }, payload: "de" });
  ws.serverSend({ type: "$stream.end", meta: { stream: "s1", offset: 8 }, payload: { status: "done" } });
  await got.done;
  assert.equal(got.error, undefined);
  assert.deepEqual(got.chunks, [{ text: "abc", offset: 6 }, { text: "de", offset: 8 }]);
  assert.deepEqual(await s.ended, { status: "done", offset: 8 });
});

test("streams (scripted): a re-join after a drop starts at the last offset; UNAVAILABLE is retried from it; NOT_FOUND ends the reader", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, transports: ["websocket"], reconnect: { initialDelayMs: 1, maxDelayMs: 5 } });
  cleanup.push(() => c.close());
  const errors = [];
  c.onError((e, info) => errors.push([info.op, info.stream, e.code, info.retrying]));
  const s = c.stream("s2");
  const gone = c.stream("s3");
  const got = read(s);
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  for (const j of sent(ws, "$stream.join")) {
    ws.serverSend({ type: "$stream.joined", meta: { correlationId: j.meta.correlationId }, payload: { stream: j.payload.stream, offset: 0 } });
  }
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s2", offset: 5 }, payload: "hello" });
  await until(() => got.text === "hello", 2000, "the chunk");
  ws.serverClose(1006);

  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  await tick();
  const joins2 = sent(ws2, "$stream.join");
  assert.deepEqual(joins2.map((j) => j.payload), [{ stream: "s2", offset: 5 }, { stream: "s3", offset: 0 }]);
  ws2.serverSend({ type: "RPC_ERROR", meta: { correlationId: joins2[0].meta.correlationId }, payload: { code: "UNAVAILABLE", message: "no JetStream" } });
  ws2.serverSend({ type: "RPC_ERROR", meta: { correlationId: joins2[1].meta.correlationId }, payload: { code: "NOT_FOUND", message: "expired" } });
  assert.equal((await rejection(gone.ended)).code, "NOT_FOUND");
  const retried = await until(() => sent(ws2, "$stream.join")[2], 2000, "the retry");
  assert.deepEqual(retried.payload, { stream: "s2", offset: 5 });
  ws2.serverSend({ type: "$stream.joined", meta: { correlationId: retried.meta.correlationId }, payload: { stream: "s2", offset: 5 } });
  ws2.serverSend({ type: "$stream.chunk", meta: { stream: "s2", offset: 11 }, payload: " world" });
  ws2.serverSend({ type: "$stream.end", meta: { stream: "s2", offset: 11 }, payload: { status: "error", error: { code: "INTERNAL", message: "model crashed" } } });
  await got.done;
  assert.equal(got.text, "hello world");
  assert.equal(got.error.code, "INTERNAL");
  assert.equal(got.error.message, "model crashed");
  assert.deepEqual(await s.ended, { status: "error", offset: 11, error: { code: "INTERNAL", message: "model crashed" } });
  assert.deepEqual(errors, [["stream", "s2", "UNAVAILABLE", true], ["stream", "s3", "NOT_FOUND", false]]);

  // leave() on an open socket sends $stream.leave; close() ends a reader with the client's error.
  const left = c.stream("s4");
  const closed = c.stream("s5");
  await tick();
  left.leave();
  assert.deepEqual(sent(ws2, "$stream.leave").map((e) => e.payload), [{ stream: "s4" }]);
  c.close();
  assert.equal((await rejection(closed.text())).code, "CANCELLED");
});

test("streams (scripted): a join not answered in time is left and joined again from the same offset; the late join's frames are dropped", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, transports: ["websocket"], rpcTimeoutMs: 50, reconnect: { initialDelayMs: 1, maxDelayMs: 5 } });
  cleanup.push(() => c.close());
  const errors = [];
  c.onError((e, info) => errors.push([info.op, info.stream, e.code, info.retrying]));
  const ws = await lastSocket(WS);
  ws.open();
  await waitState(c, "open");
  const s = c.stream("s6", { offset: 4 });
  const got = read(s);
  const [first] = sent(ws, "$stream.join");
  await until(() => sent(ws, "$stream.join").length === 2, 2000, "the second join");
  const types = ws.sent.map((e) => e.type).filter((t) => t.startsWith("$stream."));
  assert.deepEqual(types, ["$stream.join", "$stream.leave", "$stream.join"]);
  const second = sent(ws, "$stream.join")[1];
  assert.deepEqual(second.payload, { stream: "s6", offset: 4 });
  assert.deepEqual(errors, [["stream", "s6", "DEADLINE_EXCEEDED", true]]);
  // The late answer to the first join, and its chunk, before the edge takes the leave.
  ws.serverSend({ type: "$stream.joined", meta: { correlationId: first.meta.correlationId }, payload: { stream: "s6", offset: 4 } });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s6", offset: 7 }, payload: "old" });
  ws.serverSend({ type: "$stream.left", meta: { correlationId: sent(ws, "$stream.leave")[0].meta.correlationId }, payload: { stream: "s6" } });
  ws.serverSend({ type: "$stream.joined", meta: { correlationId: second.meta.correlationId }, payload: { stream: "s6", offset: 4 } });
  ws.serverSend({ type: "$stream.chunk", meta: { stream: "s6", offset: 7 }, payload: "new" });
  ws.serverSend({ type: "$stream.end", meta: { stream: "s6", offset: 7 }, payload: { status: "done" } });
  await got.done;
  assert.deepEqual(got.chunks, [{ text: "new", offset: 7 }]);
});
