// The client against a real edge (single-binary mode, dev mode), with a
// plain NATS client playing the services that only NATS can reach.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { headers } from "@nats-io/transport-node";
import { connect, NatterError } from "natter-client";
import { startEdge, service, waitState, nextFrame, connId, until, withTimeout } from "../test-support/edge.mjs";

let edge;
let nc;
const clients = [];
const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));

/** A client for this test file; all are closed at the end. */
function client(user, options = {}) {
  const c = connect(edge.url, { user, reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  edge = await startEdge();
  nc = await service(edge);
});

after(async () => {
  for (const c of clients) c.close();
  await nc?.close();
  await edge?.stop();
});

test("sends made before open arrive in order", async () => {
  const sub = nc.subscribe("natter.in.buf.seq", { max: 20 });
  await nc.flush();
  const c = client("buffy");
  assert.equal(c.state, "connecting");
  for (let i = 0; i < 20; i++) c.send("buf.seq", { i });
  const got = [];
  await withTimeout((async () => {
    for await (const m of sub) got.push(dec(m).payload.i);
  })(), 30_000, "20 messages");
  assert.deepEqual(got, [...Array(20).keys()]);
  assert.equal(c.state, "open");
});

test("connectionId: the id services reach the client by, told again at every reconnect", async () => {
  const c = client("idris");
  await waitState(c, "open");
  const first = c.connectionId;
  assert.equal(first, await connId(nc, c));
  const direct = nextFrame(c, "direct");
  nc.publish(`natter.out.conn.${first}`, enc({ type: "direct", payload: { n: 1 } }));
  assert.deepEqual((await direct).payload, { n: 1 });

  const told = nextFrame(c, "$connected");
  const away = waitState(c, "reconnecting");
  nc.publish(`natter.ctl.conn.${first}`, enc({ op: "close", code: 4003 }));
  await away;
  assert.equal(c.connectionId, undefined);
  const again = await told;
  await waitState(c, "open");
  const second = c.connectionId;
  assert.ok(second && second !== first, `${first} then ${second}`);
  assert.deepEqual(again.payload, { connectionId: second, user: "idris" });
  assert.equal(second, await connId(nc, c));
});

test("rpc: echo resolves with the reply's payload", async () => {
  const c = client("alice");
  assert.deepEqual(await c.rpc("echo", { hello: "world" }), { hello: "world" });
  const pong = await c.rpc("ping");
  assert.equal(typeof pong.time, "number");
});

test("rpc: an invalid payload rejects INVALID_ARGUMENT with the violations", async () => {
  const c = client("alice");
  await c.join("errors");
  const err = await c.rpc("chat.send", { room: "errors", text: "" }).then(() => null, (e) => e);
  assert.equal(err?.name, "NatterError");
  assert.equal(err.code, "INVALID_ARGUMENT");
  assert.ok(Array.isArray(err.details?.violations), JSON.stringify(err.details));
  assert.ok(err.details.violations.some((v) => v.field === "text"), JSON.stringify(err.details));
  // No worker for a type: UNAVAILABLE at once.
  await assert.rejects(c.rpc("nobody.listens"), { code: "UNAVAILABLE" });
});

test("rpc: a client-side deadline rejects DEADLINE_EXCEEDED and sends meta.timeoutMs", async () => {
  const sub = nc.subscribe("natter.in.test.never", { max: 1 }); // never answers
  await nc.flush();
  const c = client("alice");
  const seen = (async () => { for await (const m of sub) return m; })();
  const t0 = Date.now();
  await assert.rejects(c.rpc("test.never", {}, { timeoutMs: 300 }), { code: "DEADLINE_EXCEEDED" });
  assert.ok(Date.now() - t0 >= 290, "not before the deadline");
  const m = await seen;
  const env = dec(m);
  assert.ok(env.meta.timeoutMs > 0 && env.meta.timeoutMs <= 300, `timeoutMs ${env.meta.timeoutMs}`);
  assert.ok(Number(m.headers.get("Natter-Timeout-Ms")) <= 300);
});

test("rpc: aborting sends $ws:abort, rejects CANCELLED and ignores the late reply", async () => {
  // Not max: 1. The previous test's deadline also sends an abort, and the
  // edge may publish it after this subscription starts.
  const aborts = nc.subscribe("natter.ctl.abort");
  const giveUp = setTimeout(() => aborts.unsubscribe(), 10_000);
  const sub = nc.subscribe("natter.in.test.slow", { max: 1 });
  await nc.flush();
  const c = client("alice");
  await waitState(c, "open");
  const ac = new AbortController();
  const frames = [];
  c.on("*", (_, env) => frames.push(env));
  const call = c.rpc("test.slow", { n: 1 }, { signal: ac.signal, timeoutMs: 20_000 });
  let request;
  for await (const m of sub) request = m;
  ac.abort();
  await assert.rejects(call, { code: "CANCELLED" });
  // The worker side learns of it: the edge publishes the request's reply subject.
  const seenAborts = [];
  for await (const m of aborts) {
    seenAborts.push(new TextDecoder().decode(m.data));
    if (seenAborts.at(-1) === request.reply) break;
  }
  clearTimeout(giveUp);
  aborts.unsubscribe();
  assert.equal(seenAborts.at(-1), request.reply, `aborts seen: ${seenAborts}`);
  // A late reply is dropped by the edge or ignored by the client.
  request.respond(enc({ type: "test.slow.done", payload: { late: true } }));
  assert.deepEqual(await c.rpc("echo", 1), 1);
  assert.ok(!frames.some((f) => f.type === "test.slow.done"), "late reply not delivered");
});

test("rpc: progress frames reach onProgress in order, before the reply", async () => {
  const sub = nc.subscribe("natter.in.test.progress", {
    callback: (_, m) => {
      const h = headers();
      h.set("Natter-Progress", "1");
      for (const percent of [25, 50, 75]) m.respond(enc({ type: "$ws:rpc-progress", payload: { percent } }), { headers: h });
      m.respond(enc({ type: "test.progress.done", payload: { percent: 100 } }));
    },
  });
  await nc.flush();
  const c = client("alice");
  const seen = [];
  const result = await c.rpc("test.progress", {}, { onProgress: (p) => seen.push(p.percent) });
  seen.push(result.percent);
  assert.deepEqual(seen, [25, 50, 75, 100]);
  sub.unsubscribe();
});

test("handle: the client answers a service's request to its connection", async () => {
  const c = client("geo");
  const calls = [];
  c.handle("geo.where", async (payload, env) => {
    calls.push(env.meta.correlationId);
    return { lat: 52.5, lng: 13.4, asked: payload };
  });
  c.handle("geo.typed", () => ({ type: "geo.position", payload: { lat: 1 } }));
  c.handle("geo.fail", () => { throw new Error("no fix"); });
  const conn = await connId(nc, c);
  const ask = async (type) => dec(await nc.request(`natter.out.conn.${conn}`, enc({ type, payload: { precise: true } }), { timeout: 10_000 }));

  const answer = await ask("geo.where");
  assert.equal(answer.type, "geo.where");
  assert.deepEqual(answer.payload, { lat: 52.5, lng: 13.4, asked: { precise: true } });
  assert.match(calls[0], /^srv-/);

  const typed = await ask("geo.typed");
  assert.deepEqual([typed.type, typed.payload], ["geo.position", { lat: 1 }]);

  const failed = await ask("geo.fail");
  assert.equal(failed.type, "RPC_ERROR");
  assert.deepEqual([failed.payload.code, failed.payload.message], ["INTERNAL", "no fix"]);

  const unknown = await ask("geo.nobody");
  assert.equal(unknown.payload.code, "UNIMPLEMENTED");
});

test("rooms: join resolves once a room publish reaches the client; leave stops it", async () => {
  const c = client("roomy");
  await c.join("news");
  assert.deepEqual(c.rooms(), ["news"]);
  const got = nextFrame(c, "headline");
  nc.publish("natter.out.room.news", enc({ type: "headline", payload: { text: "up" } }));
  const env = await got;
  assert.deepEqual(env.payload, { text: "up" });
  assert.equal(env.meta.room, "news");
  await c.leave("news");
  assert.deepEqual(c.rooms(), []);
  // After the leave, a room publish no longer arrives but a direct one does.
  const conn = await connId(nc, c);
  const frames = [];
  c.on("*", (_, e) => frames.push(e.type));
  nc.publish("natter.out.room.news", enc({ type: "headline", payload: { text: "missed" } }));
  const marker = nextFrame(c, "marker");
  nc.publish(`natter.out.conn.${conn}`, enc({ type: "marker" }));
  await marker;
  assert.deepEqual(frames, ["marker"]);
});

test("presence: diffs of a room joined with presence, and the room's members", async () => {
  const a = client("pia");
  const b = client("pete");
  const diffs = [];
  a.onPresence("lounge", (d) => diffs.push(d));
  await a.join("lounge", { presence: true });
  await b.presence.setState({ typing: false });
  await b.join("lounge", { presence: true });
  await until(() => diffs.some((d) => d.joins.some((m) => m.user === "pete")), 30_000, "pete's join in a diff");
  const page = await a.presence.room("lounge");
  assert.equal(page.room, "lounge");
  assert.equal(page.count, 2);
  assert.deepEqual(page.members.map((m) => m.user).sort(), ["pete", "pia"]);
  const pete = page.members.find((m) => m.user === "pete");
  assert.deepEqual(pete.state, { typing: false });
  const info = await a.presence.user("pete");
  assert.equal(info.online, true);
  // A state change shows up as a diff too.
  await b.presence.setState({ typing: true });
  await until(() => diffs.some((d) => d.states.some((m) => m.user === "pete" && m.state?.typing === true)), 30_000, "pete's state in a diff");
  // Not a member: PERMISSION_DENIED.
  await assert.rejects(b.presence.room("elsewhere"), { code: "PERMISSION_DENIED" });
});

test("close codes: 4003 reconnects, 4102 ends the client", async () => {
  const c = client("kick");
  await c.join("kicks");
  const states = [];
  c.onState((s, info) => states.push([s, info?.code, info?.reason]));

  let conn = await connId(nc, c);
  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4003, reason: "move along" }));
  await waitState(c, "reconnecting");
  await waitState(c, "open");
  assert.deepEqual(states.slice(0, 2), [["reconnecting", 4003, "move along"], ["open", undefined, undefined]]);
  // Re-joined: a room publish reaches the new connection.
  const got = nextFrame(c, "after");
  nc.publish("natter.out.room.kicks", enc({ type: "after" }));
  await got;

  conn = await connId(nc, c);
  const closed = waitState(c, "closed");
  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4102, reason: "bye" }));
  assert.deepEqual(await closed, { code: 4102, reason: "bye" });
  // It stays closed: no reconnect after the longest backoff.
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(c.state, "closed");
  assert.deepEqual(states.at(-1), ["closed", 4102, "bye"]);
  await assert.rejects(c.rpc("echo"), { code: "UNAVAILABLE" });
});

test("handle: an answer after the service gave up does not start a loop with the edge", async () => {
  const c = client("late");
  let calls = 0;
  c.handle("geo.slow", async () => {
    calls++;
    await new Promise((r) => setTimeout(r, 400));
    throw new NatterError("UNAVAILABLE", "too late anyway");
  });
  const conn = await connId(nc, c);
  const h = headers();
  h.set("Natter-Timeout-Ms", "100");
  const reply = dec(await nc.request(`natter.out.conn.${conn}`, enc({ type: "geo.slow" }), { timeout: 10_000, headers: h }));
  assert.equal(reply.payload.code, "DEADLINE_EXCEEDED");
  // The late RPC_ERROR goes out at 400 ms; whatever the edge makes of it
  // comes back as an error with the srv- id, which must not be answered.
  let frames = 0;
  c.on("*", () => frames++);
  await new Promise((r) => setTimeout(r, 1000));
  assert.ok(frames <= 2, `${frames} frames after the late answer`);
  assert.equal(calls, 1);
  assert.deepEqual(await c.rpc("echo", "still fine"), "still fine");
});

test("rooms: a worker's ctl join is remembered and re-joined after a reconnect; a ctl leave forgets", async () => {
  const c = client("steered");
  let conn = await connId(nc, c);
  const ctl = async (op, room) => dec(await nc.request(`natter.ctl.conn.${conn}`, enc({ op, room }), { timeout: 10_000 }));
  assert.deepEqual(await ctl("join", "steer-a"), { ok: true });
  assert.deepEqual(await ctl("join", "steer-b"), { ok: true });
  await until(() => c.rooms().length === 2, 10_000, "both ctl joins seen");
  assert.deepEqual(await ctl("leave", "steer-b"), { ok: true });
  await until(() => c.rooms().length === 1, 10_000, "the ctl leave seen");
  assert.deepEqual(c.rooms(), ["steer-a"]);

  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4003 }));
  await waitState(c, "reconnecting");
  await waitState(c, "open");
  conn = await connId(nc, c);
  const got = nextFrame(c, "steer.news");
  nc.publish("natter.out.room.steer-a", enc({ type: "steer.news" }));
  assert.equal((await got).meta.room, "steer-a");
  const frames = [];
  c.on("*", (_, e) => frames.push(e.type));
  nc.publish("natter.out.room.steer-b", enc({ type: "steer.news" }));
  const marker = nextFrame(c, "marker");
  nc.publish(`natter.out.conn.${conn}`, enc({ type: "marker" }));
  await marker;
  assert.deepEqual(frames, ["marker"], "not re-joined to the room the worker removed");
});

test("durable rooms: an edge without --durable-rooms answers history UNIMPLEMENTED and keeps no positions", async () => {
  const c = client("nodurable");
  await c.join("dur-none");
  await assert.rejects(c.history("dur-none"), { code: "UNIMPLEMENTED" });
  const got = nextFrame(c, "dur.msg");
  nc.publish("natter.out.room.dur-none", enc({ type: "dur.msg" }));
  const env = await got;
  assert.equal(env.meta.offset, undefined);
  assert.equal(c.position("dur-none"), undefined);
});
