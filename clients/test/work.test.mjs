// Durable messages against a real edge (--durable-types "job.*"): sendDurable
// resolves once the work stream natter_work has stored the message, a resend
// with the same idempotency key is stored once, a bad key is refused, and a
// message sent while the client is away, or whose answer is lost with the
// connection, is stored exactly once. No worker runs, so the stream keeps
// every message; the tests read its count with the JetStream API.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, NatterError } from "natter-client";
import { natterSchemas } from "natter-client/schemas";
import { startEdge, service, waitState, connId, until, withTimeout, gatedWebSocket } from "../test-support/edge.mjs";

const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));
const fast = { initialDelayMs: 20, maxDelayMs: 100 };
const KEY = /^[\x21-\x7e]{1,128}$/;

let edge;
let nc;
const cleanup = [];

before(async () => {
  edge = await startEdge({ args: ["--durable-types", "job.*"] });
  nc = await service(edge);
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  await nc?.close();
  await edge?.stop();
});

/** A client for this file, closed at the end. */
function client(user, options = {}) {
  const c = connect(edge.url, { user, reconnect: fast, ...options });
  cleanup.push(() => c.close());
  return c;
}

/** The number of messages in the work stream. */
async function stored() {
  const info = dec(await nc.request("$JS.API.STREAM.INFO.natter_work", "", { timeout: 5000 }));
  assert.ok(!info.error, `stream info: ${enc(info)}`);
  return info.state.messages;
}

/**
 * Every envelope published to natter.work.<type> (core subscribers see the
 * stream's subjects too, duplicates the stream drops included).
 */
async function watch(type) {
  const seen = [];
  const sub = nc.subscribe(`natter.work.${type}`, { callback: (err, m) => !err && seen.push(dec(m)) });
  cleanup.push(() => sub.unsubscribe());
  await nc.flush();
  return seen;
}

/**
 * A WebSocket constructor that, when armed, swallows the next $ws:accepted
 * and closes its socket instead (4000: the client reconnects): an answer
 * lost with the connection, after the stream stored the message.
 */
function losingWebSocket() {
  const lost = [];
  let armed = false;
  class Losing extends WebSocket {
    addEventListener(type, fn, options) {
      if (type !== "message") return super.addEventListener(type, fn, options);
      super.addEventListener("message", (ev) => {
        if (armed && typeof ev.data === "string" && JSON.parse(ev.data).type === "$ws:accepted") {
          armed = false;
          lost.push(JSON.parse(ev.data));
          this.close(4000, "test: answer lost");
          return;
        }
        fn(ev);
      }, options);
    }
  }
  return { WebSocket: Losing, arm: () => void (armed = true), lost };
}

test("sendDurable: stored once per key: the same key again is a duplicate with the same seq, another key a new message", async () => {
  const seen = await watch("job.run");
  const c = client("work-wanda");
  const before = await stored();
  const first = await c.sendDurable("job.run", { order: 17 }, { idempotencyKey: "order-17" });
  assert.ok(Number.isSafeInteger(first.seq) && first.seq > 0, `seq ${first.seq}`);
  assert.equal(first.duplicate, false);
  const again = await c.sendDurable("job.run", { order: 17 }, { idempotencyKey: "order-17" });
  assert.deepEqual(again, { seq: first.seq, duplicate: true });
  const other = await c.sendDurable("job.run", { order: 18 }, { idempotencyKey: "order-18" });
  assert.ok(other.seq > first.seq, `${other.seq} after ${first.seq}`);
  assert.equal(other.duplicate, false);
  // Default keys: a fresh one per call, each a valid key.
  const a = await c.sendDurable("job.run", { order: 19 });
  const b = await c.sendDurable("job.run", { order: 19 });
  assert.ok(b.seq > a.seq && !a.duplicate && !b.duplicate, enc([a, b]));
  assert.equal(await stored(), before + 4);
  await until(() => seen.length === 5, 5000, "5 publishes seen");
  assert.deepEqual(seen.map((e) => e.payload.order), [17, 17, 18, 19, 19]);
  const keys = seen.map((e) => e.meta.idempotencyKey);
  assert.deepEqual(keys.slice(0, 3), ["order-17", "order-17", "order-18"]);
  assert.ok(keys.slice(3).every((k) => KEY.test(k)), enc(keys));
  assert.notEqual(keys[3], keys[4]);
  // The key is the user's: another user's same key is a message of its own.
  const d = await client("work-walter").sendDurable("job.run", { order: 17 }, { idempotencyKey: "order-17" });
  assert.equal(d.duplicate, false);
  assert.notEqual(d.seq, first.seq);
  assert.equal(await stored(), before + 5);
});

test("sendDurable: a bad key is refused INVALID_ARGUMENT at once, and nothing is stored", async () => {
  const c = client("work-bad");
  await waitState(c, "open");
  const errors = [];
  c.on("*", (p, env) => env.type === "RPC_ERROR" && errors.push(p.code));
  const before = await stored();
  for (const key of ["with space", "x".repeat(129), "tab\tkey", "ключ"]) {
    errors.length = 0;
    const err = await c.sendDurable("job.run", {}, { idempotencyKey: key }).then(() => null, (e) => e);
    assert.ok(err instanceof NatterError, `${enc(key)}: rejected`);
    assert.equal(err.code, "INVALID_ARGUMENT", `${enc(key)}: ${err.message}`);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(errors, ["INVALID_ARGUMENT"], `${enc(key)}: one attempt`);
  }
  // The longest key is fine.
  const ok = await c.sendDurable("job.run", {}, { idempotencyKey: "~".repeat(128) });
  assert.equal(ok.duplicate, false);
  assert.equal(await stored(), before + 1);
});

test("sendDurable while the client cannot reach the edge: stored once after it reconnects", async () => {
  const seen = await watch("job.away");
  const gate = gatedWebSocket();
  // Attempts of 200 ms: several of them expire in the buffer while away.
  const c = client("work-away", { WebSocket: gate.WebSocket, transports: ["websocket"], rpcTimeoutMs: 200 });
  const id = await connId(nc, c);
  gate.close();
  nc.publish(`natter.ctl.conn.${id}`, enc({ op: "close", code: 4003 }));
  await waitState(c, "reconnecting");
  const before = await stored();
  let settled = false;
  const sending = c.sendDurable("job.away", { n: 1 }, { timeoutMs: 20_000 }).finally(() => void (settled = true));
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(settled, false, "waits while away");
  assert.equal(c.state, "reconnecting");
  gate.open();
  const accepted = await withTimeout(sending, 15_000, "sendDurable after the reconnect");
  assert.ok(accepted.seq > 0, enc(accepted));
  assert.equal(await stored(), before + 1);
  // Attempts that expired in the buffer were never sent. The one that went
  // out may still have run out of time before its answer (when the client
  // flushed it just before its deadline): its resend is then a duplicate.
  await until(() => seen.length >= 1, 5000, "the publish seen");
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(accepted.duplicate, seen.length > 1, `${seen.length} sent, ${enc(accepted)}`);
  assert.ok(seen.length <= 2, `${seen.length} sent`);
  assert.match(seen[0].meta.idempotencyKey, KEY);
  assert.ok(seen.every((e) => e.meta.idempotencyKey === seen[0].meta.idempotencyKey), "one key");
});

test("sendDurable whose answer is lost with the connection: resent with the same key, stored once, resolves duplicate", async () => {
  const seen = await watch("job.lost");
  const ws = losingWebSocket();
  const c = client("work-lost", { WebSocket: ws.WebSocket });
  await waitState(c, "open");
  const before = await stored();
  ws.arm();
  const accepted = await withTimeout(c.sendDurable("job.lost", { n: 1 }, { idempotencyKey: "lost-1" }), 15_000, "sendDurable");
  assert.equal(ws.lost.length, 1, "the first answer was lost");
  assert.deepEqual(accepted, { seq: ws.lost[0].payload.seq, duplicate: true });
  assert.equal(await stored(), before + 1);
  await until(() => seen.length === 2, 5000, "2 publishes seen");
  assert.deepEqual(seen.map((e) => e.meta.idempotencyKey), ["lost-1", "lost-1"]);
  assert.notEqual(seen[0].meta.correlationId, seen[1].meta.correlationId);
});

test("rpc: idempotencyKey goes out as meta.idempotencyKey; sendDurable of a type that is not durable rejects FAILED_PRECONDITION", async () => {
  const seen = await watch("job.rpc");
  const c = client("work-rpc");
  const p = await c.rpc("job.rpc", { n: 1 }, { idempotencyKey: "rpc-1" });
  assert.ok(p.seq > 0, enc(p));
  await until(() => seen.length === 1, 5000, "the publish seen");
  assert.equal(seen[0].meta.idempotencyKey, "rpc-1");
  // A type that is not durable goes to the workers; this one answers with the meta it got.
  const sub = nc.subscribe("natter.in.plain.echo", {
    callback: (err, m) => !err && m.respond(enc({ type: "plain.echo.ok", payload: dec(m).meta })),
  });
  cleanup.push(() => sub.unsubscribe());
  await nc.flush();
  const meta = await c.rpc("plain.echo", {}, { idempotencyKey: "rpc-2" });
  assert.equal(meta.idempotencyKey, "rpc-2");
  const err = await c.sendDurable("plain.echo", {}).then(() => null, (e) => e);
  assert.equal(err?.code, "FAILED_PRECONDITION", err?.message);
});

// The same over the fallback transport and the binary wire (meta.idempotencyKey
// travels in the protobuf Meta's extra).
for (const [name, options] of [
  ["sse", { transports: ["sse"] }],
  ["the protobuf wire", { transports: ["websocket"], wire: "protobuf", schemas: natterSchemas }],
]) {
  test(`sendDurable over ${name}: stored once per key`, async () => {
    const seen = await watch("job.run");
    const c = client(`work-${name.replace(/\W/g, "")}`, options);
    const key = `over-${name.replace(/\W/g, "")}`;
    const first = await c.sendDurable("job.run", { order: 1 }, { idempotencyKey: key });
    assert.equal(first.duplicate, false);
    assert.deepEqual(await c.sendDurable("job.run", { order: 1 }, { idempotencyKey: key }), { seq: first.seq, duplicate: true });
    await until(() => seen.length === 2, 5000, "2 publishes seen");
    assert.deepEqual(seen.map((e) => [e.payload.order, e.meta.idempotencyKey]), [[1, key], [1, key]]);
  });
}
