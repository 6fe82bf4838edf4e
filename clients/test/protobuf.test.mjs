// The binary wire against a real edge: a client with wire: "protobuf"
// shares rooms, RPC and services with JSON clients (NATS carries JSON
// whatever the wire), and the application sees JSON-shaped payloads.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "natter-client";
import { natterSchemas } from "natter-client/schemas";
import { startEdge, service, waitState, nextFrame, connId, withTimeout } from "../test-support/edge.mjs";

let edge;
let nc;
const clients = [];
const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));

/** A WebSocket that records what each socket offered and what the edge chose. */
class Recording extends WebSocket {
  static sockets = [];
  constructor(url, protocols) {
    super(url, protocols);
    this.offered = protocols;
    this.kinds = new Set(); // what the client wrote: "binary" or "text"
    this.received = new Set();
    this.addEventListener("message", (ev) => this.received.add(typeof ev.data === "string" ? "text" : "binary"));
    Recording.sockets.push(this);
  }
  send(data) {
    this.kinds.add(typeof data === "string" ? "text" : "binary");
    super.send(data);
  }
}

function client(user, options = {}) {
  const c = connect(edge.url, { user, transports: ["websocket"], reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...options });
  clients.push(c);
  return c;
}
const pbClient = (user, options = {}) => client(user, { wire: "protobuf", schemas: natterSchemas, ...options });

before(async () => {
  edge = await startEdge();
  nc = await service(edge);
});

after(async () => {
  for (const c of clients) c.close();
  await nc?.close();
  await edge?.stop();
});

test("protobuf: the socket offers natter.protobuf, the edge picks it, and every frame both ways is binary", async () => {
  const c = pbClient("proto", { WebSocket: Recording });
  await c.join("pb-frames");
  assert.deepEqual(await c.rpc("echo", { x: 1 }), { x: 1 });
  const ws = Recording.sockets.at(-1);
  assert.deepEqual(ws.offered, ["natter.protobuf"]);
  assert.equal(ws.protocol, "natter.protobuf");
  assert.equal(ws.binaryType, "arraybuffer");
  assert.deepEqual([...ws.kinds], ["binary"]);
  assert.deepEqual([...ws.received], ["binary"]);
  assert.match(c.connectionId, /\./);
});

test("protobuf: a protobuf client and JSON clients in one room see the same messages", async () => {
  const a = client("json-a");
  const b = pbClient("pb-b");
  const j = client("json-c");
  for (const c of [a, b, j]) await c.rpc("chat.join", { room: "mixed" });

  // From a JSON client: both receive the worker's chat.message, the same
  // payload (the int64 ts a number on both wires).
  let toB = nextFrame(b, "chat.message");
  let toJ = nextFrame(j, "chat.message");
  a.send("chat.send", { room: "mixed", text: "from json" });
  const [mb, mj] = await Promise.all([toB, toJ]);
  assert.equal(typeof mj.payload.ts, "number");
  assert.deepEqual(mb.payload, mj.payload);
  assert.deepEqual([mb.payload.text, mb.payload.user, mb.meta.room], ["from json", "json-a", "mixed"]);
  assert.deepEqual(mb.meta, mj.meta);

  // From the protobuf client: the JSON clients see what a JSON sender's gets them.
  const toA = nextFrame(a, "chat.message");
  toJ = nextFrame(j, "chat.message");
  b.send("chat.send", { room: "mixed", text: "from protobuf ✓" });
  const [ma, mj2] = await Promise.all([toA, toJ]);
  assert.deepEqual(ma.payload, mj2.payload);
  assert.deepEqual([ma.payload.text, ma.payload.user, ma.payload.conn], ["from protobuf ✓", "pb-b", b.connectionId]);

  // A service's publish of a type without a schema: JSON text on the binary wire, the same payload.
  toB = nextFrame(b, "mixed.notice");
  toJ = nextFrame(j, "mixed.notice");
  nc.publish("natter.out.room.mixed", enc({ type: "mixed.notice", meta: { custom: { k: [1, 2] } }, payload: { big: 12345678901234, list: [null, "x"] } }));
  const [nb, nj] = await Promise.all([toB, toJ]);
  assert.deepEqual(nb, nj);
  assert.deepEqual(nb.payload, { big: 12345678901234, list: [null, "x"] });
  assert.deepEqual(nb.meta.custom, { k: [1, 2] });
});

test("protobuf: what the client sends reaches NATS as JSON, meta keys included", async () => {
  const c = pbClient("pb-nats");
  await waitState(c, "open");
  const sends = nc.subscribe("natter.in.chat.send", { max: 1 });
  const other = nc.subscribe("natter.in.test.pbmeta", { max: 1 });
  await nc.flush();
  await c.join("nats-room");
  c.send("chat.send", { room: "nats-room", text: "hello" });
  c.send("test.pbmeta", { n: 1, s: "two" }, { custom: "x", nested: { a: true } });
  for await (const m of sends) assert.deepEqual(dec(m).payload, { room: "nats-room", text: "hello" });
  for await (const m of other) {
    const env = dec(m);
    assert.deepEqual(env.payload, { n: 1, s: "two" });
    assert.deepEqual([env.meta.custom, env.meta.nested], ["x", { a: true }]);
  }
});

test("protobuf: rpc round trips, with and without schemas", async () => {
  const c = pbClient("pb-rpc");
  assert.deepEqual(await c.rpc("echo", { hello: "world", n: [1, 2.5] }), { hello: "world", n: [1, 2.5] });
  assert.deepEqual(await c.rpc("chat.join", { room: "pb-rpc-room" }), { room: "pb-rpc-room" });
  const sent = await c.rpc("chat.send", { room: "pb-rpc-room", text: "ack me" });
  assert.ok(Number.isSafeInteger(sent.ts) && sent.ts > 1.7e12, `chat.sent's int64 as a number: ${sent.ts}`);
  const pong = await c.rpc("ping");
  assert.ok(Number.isSafeInteger(pong.time), `pong's int64 as a number: ${pong.time}`);
  assert.equal(typeof pong.worker, "string");
});

test("protobuf: a payload that breaks its schema rejects INVALID_ARGUMENT with the violations", async () => {
  const c = pbClient("pb-invalid");
  await c.join("pb-errors");
  const err = await c.rpc("chat.send", { room: "pb-errors", text: "" }).then(() => null, (e) => e);
  assert.equal(err?.name, "NatterError");
  assert.equal(err.code, "INVALID_ARGUMENT", err.message);
  assert.ok(err.details?.violations?.some((v) => v.field === "text"), JSON.stringify(err.details));
  // An unknown key: the client sends JSON text, and the edge judges it as it judges JSON.
  const unknown = await c.rpc("chat.send", { room: "pb-errors", text: "x", bogus: 1 }).then(() => null, (e) => e);
  assert.equal(unknown?.code, "INVALID_ARGUMENT", unknown?.message);
  // The connection stays open.
  assert.deepEqual(await c.rpc("echo", 1), 1);
});

test("protobuf: aborting an rpc sends $ws:abort and rejects CANCELLED", async () => {
  const aborts = nc.subscribe("natter.ctl.abort");
  const giveUp = setTimeout(() => aborts.unsubscribe(), 10_000);
  const sub = nc.subscribe("natter.in.test.pbslow", { max: 1 });
  await nc.flush();
  const c = pbClient("pb-abort");
  await waitState(c, "open");
  const ac = new AbortController();
  const call = c.rpc("test.pbslow", { n: 1 }, { signal: ac.signal, timeoutMs: 20_000 });
  let request;
  for await (const m of sub) request = m;
  assert.deepEqual(dec(request).payload, { n: 1 });
  ac.abort();
  await assert.rejects(call, { code: "CANCELLED" });
  const seen = [];
  for await (const m of aborts) {
    seen.push(new TextDecoder().decode(m.data));
    if (seen.at(-1) === request.reply) break;
  }
  clearTimeout(giveUp);
  aborts.unsubscribe();
  assert.equal(seen.at(-1), request.reply);
  assert.deepEqual(await c.rpc("echo", "after"), "after");
});

test("protobuf: a service's request to the connection is answered over the binary wire", async () => {
  const c = pbClient("pb-geo");
  c.handle("geo.where", (payload, env) => ({ asked: payload, cid: env.meta.correlationId.slice(0, 4) }));
  const conn = await connId(nc, c);
  const reply = dec(await nc.request(`natter.out.conn.${conn}`, enc({ type: "geo.where", payload: { precise: true } }), { timeout: 10_000 }));
  assert.deepEqual([reply.type, reply.payload], ["geo.where", { asked: { precise: true }, cid: "srv-" }]);
});

test("protobuf: close codes and reconnects work as on the JSON wire", async () => {
  const c = pbClient("pb-kick");
  await c.join("pb-kicks");
  const conn = await connId(nc, c);
  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4003, reason: "move along" }));
  assert.deepEqual(await waitState(c, "reconnecting"), { code: 4003, reason: "move along" });
  await waitState(c, "open");
  const got = nextFrame(c, "after.kick");
  nc.publish("natter.out.room.pb-kicks", enc({ type: "after.kick" }));
  assert.equal((await withTimeout(got, 10_000, "re-joined")).meta.room, "pb-kicks");
});

test("protobuf: options are checked; a descriptor set that does not load ends the client with onError", async () => {
  assert.throws(() => connect(edge.url, { wire: "protobuf" }), /options\.schemas/);
  assert.throws(() => connect(edge.url, { wire: "cbor" }), /options\.wire/);
  const c = client("pb-bad", { wire: "protobuf", schemas: { ...natterSchemas, client: { "x.y": "no.such.Message" } } });
  const errors = [];
  c.onError((e, info) => errors.push([e.code, info.op, info.retrying]));
  await waitState(c, "closed");
  assert.deepEqual(errors, [["INVALID_ARGUMENT", "connect", false]]);
});
