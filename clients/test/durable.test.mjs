// Durable rooms against a real edge (--durable-rooms "dur-*"): what a client
// misses while away is replayed once and in order after the reconnect and
// reported by onRecovery; a position older than the retained history is
// reported as a gap; history pages. The client is kept away by a gate on its
// WebSocket constructor, so that messages are published while it is
// certainly disconnected.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { headers } from "@nats-io/transport-node";
import { connect } from "natter-client";
import { natterSchemas } from "natter-client/schemas";
import { startEdge, service, waitState, connId, until, withTimeout, gatedWebSocket } from "../test-support/edge.mjs";

const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));
const fast = { initialDelayMs: 20, maxDelayMs: 100 };

let edge;
let nc;
const cleanup = [];

before(async () => {
  edge = await startEdge({ args: ["--durable-rooms", "dur-*"] });
  nc = await service(edge);
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  await nc?.close();
  await edge?.stop();
});

/** A client for this file, closed at the end, that records deliveries and recoveries. */
function client(user, WebSocket) {
  // A gated WebSocket alone: the fallback to sse would get past the gate.
  const c = connect(edge.url, { user, WebSocket, reconnect: fast, ...(WebSocket ? { transports: ["websocket"] } : {}) });
  cleanup.push(() => c.close());
  const got = []; // [n, offset] of every dur.msg, in arrival order
  const recoveries = [];
  c.on("dur.msg", (p, env) => got.push([p.n, env.meta.offset]));
  c.onRecovery((info) => recoveries.push(info));
  return { c, got, recoveries };
}

/** A JetStream publish to a durable room (a request: the stream acknowledges); resolves with the offset. */
let ids = 0;
async function publish(conn, room, n) {
  const h = headers();
  h.set("Nats-Msg-Id", `test-${process.pid}-${++ids}`);
  const ack = dec(await conn.request(`natter.durable.room.${room}`, enc({ type: "dur.msg", payload: { n } }), { headers: h, timeout: 10_000 }));
  assert.ok(!ack.error && ack.seq > 0, `publish acknowledged: ${enc(ack)}`);
  return ack.seq;
}

/** Drops the client's connection with a ctl close (4003) while the gate keeps it away. */
async function dropAndHold(conn, c, gate) {
  const id = await connId(conn, c);
  gate.close();
  conn.publish(`natter.ctl.conn.${id}`, enc({ op: "close", code: 4003 }));
  await waitState(c, "reconnecting");
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

test("durable rooms: messages published while away arrive once, in order, after the reconnect; onRecovery says recovered", async () => {
  const gate = gatedWebSocket();
  const { c, got, recoveries } = client("durable-dora", gate.WebSocket);
  await c.join("dur-one");
  const offsets = [];
  for (const n of range(0, 3)) offsets.push(await publish(nc, "dur-one", n));
  await until(() => got.length === 3, 10_000, "3 live messages");
  assert.deepEqual(got, offsets.map((o, n) => [n, o]));
  const epoch = c.position("dur-one")?.epoch;
  assert.ok(epoch, "an epoch");
  assert.deepEqual(c.position("dur-one"), { offset: offsets[2], epoch });

  await dropAndHold(nc, c, gate);
  // Missed: JetStream publishes, then core publishes the edge's capturer stores.
  for (const n of range(3, 8)) offsets.push(await publish(nc, "dur-one", n));
  for (const n of range(8, 12)) nc.publish("natter.out.room.dur-one", enc({ type: "dur.msg", payload: { n } }));
  const observer = connect(edge.url, { user: "durable-observer", reconnect: fast });
  cleanup.push(() => observer.close());
  const stored = await until(async () => {
    const h = await observer.history("dur-one", { since: offsets[7] });
    return h.messages.length === 4 && h.messages;
  }, 10_000, "the captured publishes stored");
  offsets.push(...stored.map((m) => m.meta.offset));
  assert.equal(got.length, 3, "nothing while away");

  gate.open();
  await waitState(c, "open");
  await until(() => recoveries.length === 1, 10_000, "the recovery event");
  assert.deepEqual(recoveries, [{
    room: "dur-one", recovered: true,
    since: { offset: offsets[2], epoch }, position: { offset: offsets[11], epoch },
  }]);
  // Every message once, in order, with the offsets the stream gave them.
  assert.deepEqual(got, offsets.map((o, n) => [n, o]));
  // Live again, right after the seam.
  offsets.push(await publish(nc, "dur-one", 12));
  await until(() => got.length === 13, 10_000, "a live message after the recovery");
  assert.deepEqual(got, offsets.map((o, n) => [n, o]));
  assert.deepEqual(c.position("dur-one"), { offset: offsets[12], epoch });
});

test("durable rooms: a re-join with nothing missed is recovered; a plain room is re-joined without since", async () => {
  const gate = gatedWebSocket();
  const { c, got, recoveries } = client("durable-quiet", gate.WebSocket);
  await Promise.all([c.join("dur-quiet"), c.join("plain-quiet")]);
  // An empty durable room has a position too (offset 0).
  const start = c.position("dur-quiet");
  assert.equal(typeof start?.epoch, "string");
  assert.equal(c.position("plain-quiet"), undefined);
  await dropAndHold(nc, c, gate);
  const first = await publish(nc, "dur-quiet", 0);
  gate.open();
  await until(() => recoveries.length === 1, 10_000, "the recovery event");
  assert.deepEqual(got, [[0, first]]);
  assert.deepEqual(recoveries[0], { room: "dur-quiet", recovered: true, since: start, position: { offset: first, epoch: start.epoch } });
  // Nothing missed the second time.
  await dropAndHold(nc, c, gate);
  gate.open();
  await until(() => recoveries.length === 2, 10_000, "the second recovery event");
  assert.deepEqual(recoveries[1], { room: "dur-quiet", recovered: true, since: { offset: first, epoch: start.epoch }, position: { offset: first, epoch: start.epoch } });
  assert.deepEqual(got, [[0, first]]);
  assert.deepEqual(c.rooms().sort(), ["dur-quiet", "plain-quiet"]);
});

test("durable rooms: join(room, {since}) replays from a saved position; history pages forward and backward", async () => {
  const offsets = [];
  for (const n of range(0, 5)) offsets.push(await publish(nc, "dur-hist", n));
  const { c, got, recoveries } = client("durable-hist");

  const newest = await c.history("dur-hist", { limit: 2 });
  const epoch = newest.epoch;
  const page = (h) => [h.messages.map((m) => [m.payload.n, m.meta.offset]), h.more];
  assert.deepEqual(page(newest), [[[3, offsets[3]], [4, offsets[4]]], true]);
  assert.ok(newest.messages.every((m) => m.meta.room === "dur-hist" && m.meta.epoch === epoch && m.type === "dur.msg"));
  assert.deepEqual(page(await c.history("dur-hist", { limit: 2, before: offsets[3] })), [[[1, offsets[1]], [2, offsets[2]]], true]);
  assert.deepEqual(page(await c.history("dur-hist", { limit: 2, before: offsets[1] })), [[[0, offsets[0]]], false]);
  assert.deepEqual(page(await c.history("dur-hist", { limit: 3, since: 0 })), [[[0, offsets[0]], [1, offsets[1]], [2, offsets[2]]], true]);
  assert.deepEqual(page(await c.history("dur-hist", { limit: 3, since: offsets[2] })), [[[3, offsets[3]], [4, offsets[4]]], false]);
  await assert.rejects(c.history("plain-hist"), { code: "FAILED_PRECONDITION" });
  assert.equal(c.position("dur-hist"), undefined, "history does not make a position");

  // Rejoin from a position saved earlier: the two messages after it, then $joined.
  await c.join("dur-hist", { since: { offset: offsets[2], epoch } });
  assert.deepEqual(got, [[3, offsets[3]], [4, offsets[4]]]);
  assert.deepEqual(recoveries, [{ room: "dur-hist", recovered: true, since: { offset: offsets[2], epoch }, position: { offset: offsets[4], epoch } }]);
});

test("durable rooms: a position older than the retained history (--durable-room-max-msgs 5) is reported as a gap", async () => {
  const small = await startEdge({ args: ["--durable-rooms", "dur-*", "--durable-room-max-msgs", "5"] });
  const snc = await service(small);
  cleanup.push(async () => {
    await snc.close();
    await small.stop();
  });
  const gate = gatedWebSocket();
  const c = connect(small.url, { user: "durable-gappy", WebSocket: gate.WebSocket, transports: ["websocket"], reconnect: fast });
  cleanup.push(() => c.close());
  const got = [];
  const recoveries = [];
  c.on("dur.msg", (p, env) => got.push([p.n, env.meta.offset]));
  c.onRecovery((info) => recoveries.push(info));
  await c.join("dur-gap");
  const offsets = [];
  for (const n of range(0, 2)) offsets.push(await publish(snc, "dur-gap", n));
  await until(() => got.length === 2, 10_000, "2 live messages");
  const seen = c.position("dur-gap");

  await dropAndHold(snc, c, gate);
  for (const n of range(2, 10)) offsets.push(await publish(snc, "dur-gap", n)); // 8 missed, 5 kept
  gate.open();
  await until(() => recoveries.length === 1, 10_000, "the recovery event");
  assert.deepEqual(recoveries, [{ room: "dur-gap", recovered: false, since: seen, position: { offset: offsets[9], epoch: seen.epoch } }]);
  // What is retained after the position is still replayed, in order, once.
  assert.deepEqual(got, [0, 1, 5, 6, 7, 8, 9].map((n) => [n, offsets[n]]));
  assert.deepEqual(c.position("dur-gap"), { offset: offsets[9], epoch: seen.epoch });
});

test("durable rooms: recovery across an edge restart on the same data directory", async () => {
  const gate = gatedWebSocket();
  const { c, got, recoveries } = client("durable-phoenix", gate.WebSocket);
  await c.join("dur-restart");
  const offsets = [await publish(nc, "dur-restart", 0)];
  await until(() => got.length === 1, 10_000, "a live message");
  const seen = c.position("dur-restart");

  gate.close();
  await nc.close();
  await edge.stop("SIGTERM");
  await waitState(c, "reconnecting");
  edge = await startEdge({ port: edge.port, dir: edge.dir, args: ["--durable-rooms", "dur-*"] });
  nc = await service(edge);
  for (const n of range(1, 4)) offsets.push(await publish(nc, "dur-restart", n));
  gate.open();
  await withTimeout(waitState(c, "open"), 30_000, "reconnected");
  await until(() => recoveries.length === 1, 10_000, "the recovery event");
  assert.deepEqual(recoveries, [{ room: "dur-restart", recovered: true, since: seen, position: { offset: offsets[3], epoch: seen.epoch } }]);
  assert.deepEqual(got, offsets.map((o, n) => [n, o]));
});

// The same recovery over the other transports and wires: the positions
// travel as meta.offset / meta.epoch in the protobuf Meta's own fields, and
// the re-join with since as a POST.
for (const [name, options] of [
  ["sse", (gate) => ({ transports: ["sse"], fetch: gate.fetch })],
  ["the protobuf wire", (gate) => ({ transports: ["websocket"], WebSocket: gate.WebSocket, wire: "protobuf", schemas: natterSchemas })],
]) {
  test(`durable rooms over ${name}: missed messages once and in order, recovered`, async () => {
    const gate = gatedWebSocket();
    let closed = false;
    gate.fetch = (url, init) => (closed ? Promise.reject(new TypeError("gated")) : fetch(url, init));
    const close = gate.close;
    const open = gate.open;
    gate.close = () => { closed = true; close(); };
    gate.open = () => { closed = false; open(); };
    const room = `dur-${name.replace(/\W/g, "")}`;
    const c = connect(edge.url, { user: `durable-${room}`, reconnect: fast, ...options(gate) });
    cleanup.push(() => c.close());
    const got = [];
    const recoveries = [];
    c.on("dur.msg", (p, env) => got.push([p.n, env.meta.offset]));
    c.onRecovery((info) => recoveries.push(info));
    await c.join(room);
    const offsets = [await publish(nc, room, 0)];
    await until(() => got.length === 1, 10_000, "a live message");
    const epoch = c.position(room)?.epoch;
    assert.ok(epoch);
    await dropAndHold(nc, c, gate);
    for (const n of range(1, 5)) offsets.push(await publish(nc, room, n));
    gate.open();
    await waitState(c, "open");
    await until(() => recoveries.length === 1 && got.length === 5, 10_000, "the recovery");
    assert.deepEqual(recoveries, [{ room, recovered: true, since: { offset: offsets[0], epoch }, position: { offset: offsets[4], epoch } }]);
    assert.deepEqual(got, offsets.map((o, n) => [n, o]));
  });
}
