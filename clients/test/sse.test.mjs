// The HTTP fallback transport against a real edge: an event stream down
// and POSTs up (docs/protocol.md, "Fallback transports"), the same client
// API as over a WebSocket; and the automatic fallback when a proxy refuses
// or stalls the WebSocket Upgrade, remembered for fallbackMemoryMs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "natter-client";
import { startEdge, service, waitState, nextFrame, connId, until, withTimeout } from "../test-support/edge.mjs";
import { startProxy } from "../test-support/proxy.mjs";

let edge;
let nc;
const cleanup = [];
const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));
const fast = { initialDelayMs: 50, maxDelayMs: 500 };

/** A fetch that records its requests: [method, path?query]. */
function recordingFetch() {
  const calls = [];
  const f = (url, init = {}) => {
    const u = new URL(url);
    calls.push([init.method ?? "GET", u.pathname + u.search]);
    return fetch(url, init);
  };
  f.calls = calls;
  return f;
}

function client(user, options = {}, url = edge.url) {
  const c = connect(url, { user, reconnect: fast, ...options });
  cleanup.push(() => c.close());
  return c;
}
const sseClient = (user, options = {}) => client(user, { transports: ["sse"], ...options });

before(async () => {
  edge = await startEdge();
  nc = await service(edge);
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  await nc?.close();
  await edge?.stop();
});

test("sse: connects with an event stream and POSTs, seq from 1, one envelope per line", async () => {
  const f = recordingFetch();
  const c = sseClient("sid", { fetch: f });
  await waitState(c, "open");
  assert.match(c.connectionId, /\./);
  assert.deepEqual(f.calls[0], ["GET", "/ws/sse?user=sid"]);
  const sub = nc.subscribe("natter.in.sse.batch", { max: 5 });
  await nc.flush();
  for (let i = 0; i < 5; i++) c.send("sse.batch", { i });
  const got = [];
  for await (const m of sub) got.push(dec(m).payload.i);
  assert.deepEqual(got, [0, 1, 2, 3, 4]);
  const posts = f.calls.filter(([m]) => m === "POST").map(([, p]) => new URLSearchParams(p.split("?")[1]));
  assert.ok(posts.length >= 1 && posts.length <= 5, `${posts.length} POSTs`);
  assert.deepEqual(posts.map((q) => q.get("seq")), posts.map((_, i) => String(i + 1)));
  assert.ok(posts.every((q) => q.get("session")?.startsWith(c.connectionId + ".")), "the session token names the connection");
});

test("sse: join, room deliveries, send and receive between an sse and a WebSocket client", async () => {
  const s = sseClient("sse-sam");
  const w = client("ws-wes", { transports: ["websocket"] });
  await s.join("bridge");
  await w.join("bridge");
  for (const c of [s, w]) await c.rpc("chat.join", { room: "bridge" });
  const toW = nextFrame(w, "chat.message");
  s.send("chat.send", { room: "bridge", text: "over http" });
  const m = (await toW).payload;
  assert.deepEqual([m.text, m.user, m.conn], ["over http", "sse-sam", s.connectionId]);
  const toS = nextFrame(s, "chat.message");
  w.send("chat.send", { room: "bridge", text: "over ws" });
  assert.deepEqual([(await toS).payload.text, (await toS).meta.room], ["over ws", "bridge"]);
  // A service's room publish, and leave.
  const got = nextFrame(s, "bridge.news");
  nc.publish("natter.out.room.bridge", enc({ type: "bridge.news", payload: { n: 1 } }));
  assert.deepEqual((await got).payload, { n: 1 });
  await s.leave("bridge");
  assert.deepEqual(s.rooms(), []);
});

test("sse: rpc round trips, validation errors, abort, and a service's request to the connection", async () => {
  const c = sseClient("sse-rpc");
  assert.deepEqual(await c.rpc("echo", { hello: "sse" }), { hello: "sse" });
  assert.equal(typeof (await c.rpc("ping")).time, "number");
  const err = await c.rpc("chat.send", { room: "r", text: "" }).then(() => null, (e) => e);
  assert.equal(err?.code, "INVALID_ARGUMENT");
  assert.ok(err.details?.violations?.some((v) => v.field === "text"), JSON.stringify(err.details));
  // Abort.
  const sub = nc.subscribe("natter.in.test.sseslow", { max: 1 });
  await nc.flush();
  const ac = new AbortController();
  const call = c.rpc("test.sseslow", {}, { signal: ac.signal, timeoutMs: 20_000 });
  for await (const _ of sub) break;
  ac.abort();
  await assert.rejects(call, { code: "CANCELLED" });
  // Server to client.
  c.handle("geo.where", (p) => ({ asked: p }));
  const conn = await connId(nc, c);
  const reply = dec(await nc.request(`natter.out.conn.${conn}`, enc({ type: "geo.where", payload: 1 }), { timeout: 10_000 }));
  assert.deepEqual(reply.payload, { asked: 1 });
});

test("sse: presence diffs and state between an sse and a WebSocket client", async () => {
  const s = sseClient("sse-pia");
  const w = client("ws-pete", { transports: ["websocket"] });
  const diffs = [];
  s.onPresence("sse-lounge", (d) => diffs.push(d));
  await s.join("sse-lounge", { presence: true });
  await w.presence.setState({ typing: false });
  await w.join("sse-lounge", { presence: true });
  await until(() => diffs.some((d) => d.joins.some((m) => m.user === "ws-pete")), 30_000, "pete's join");
  await s.presence.setState({ typing: true });
  const page = await w.presence.room("sse-lounge");
  assert.deepEqual(page.members.map((m) => m.user).sort(), ["sse-pia", "ws-pete"]);
  assert.deepEqual(page.members.find((m) => m.user === "sse-pia").state, { typing: true });
  w.close();
  await until(() => diffs.some((d) => d.leaves.some((m) => m.user === "ws-pete")), 30_000, "pete's leave");
});

test("sse: close codes as over a WebSocket: 4003 reconnects and re-joins, 4102 ends the client", async () => {
  const c = sseClient("sse-kick");
  await c.join("sse-kicks");
  const states = [];
  c.onState((st, info) => states.push([st, info?.code, info?.reason]));
  let conn = await connId(nc, c);
  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4003, reason: "move along" }));
  await waitState(c, "reconnecting");
  await waitState(c, "open");
  assert.deepEqual(states.slice(0, 2), [["reconnecting", 4003, "move along"], ["open", undefined, undefined]]);
  assert.notEqual(c.connectionId, conn);
  const got = nextFrame(c, "after");
  nc.publish("natter.out.room.sse-kicks", enc({ type: "after" }));
  await got;

  conn = await connId(nc, c);
  const closed = waitState(c, "closed");
  nc.publish(`natter.ctl.conn.${conn}`, enc({ op: "close", code: 4102, reason: "bye" }));
  assert.deepEqual(await closed, { code: 4102, reason: "bye" });
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(c.state, "closed");
});

test("sse: close() ends the stream: the edge drops the connection and its presence", async () => {
  const w = client("ws-watch", { transports: ["websocket"] });
  const diffs = [];
  w.onPresence("sse-bye", (d) => diffs.push(d));
  await w.join("sse-bye", { presence: true });
  const s = sseClient("sse-leaver");
  await s.join("sse-bye", { presence: true });
  await until(() => diffs.some((d) => d.joins.some((m) => m.user === "sse-leaver")), 30_000, "the join");
  const last = nc.subscribe("natter.in.sse.last", { max: 1 });
  await nc.flush();
  s.send("sse.last", { n: 1 }); // sent before close: it still goes out
  s.close();
  for await (const m of last) assert.deepEqual(dec(m).payload, { n: 1 });
  await until(() => diffs.some((d) => d.leaves.some((m) => m.user === "sse-leaver")), 30_000, "the leave");
});

test("sse: a POST answered 404 (the session is gone) reconnects, and the rooms come back", async () => {
  const proxy = await startProxy(edge, { upgrade: "refuse" });
  cleanup.push(() => proxy.close());
  const c = client("sse-gone", { transports: ["sse"] }, proxy.url);
  await c.join("sse-gone-room");
  const first = c.connectionId;
  proxy.failPosts(1, 404);
  const states = [];
  c.onState((st, info) => states.push([st, info?.code]));
  c.send("sse.lost", {});
  await waitState(c, "reconnecting");
  await waitState(c, "open");
  assert.deepEqual(states[0], ["reconnecting", 1006]);
  assert.notEqual(c.connectionId, first);
  const got = nextFrame(c, "back");
  nc.publish("natter.out.room.sse-gone-room", enc({ type: "back" }));
  await got;
});

test("fallback: a proxy that refuses the WebSocket (403): sse, remembered for the next connect", async () => {
  const proxy = await startProxy(edge, { upgrade: "refuse" });
  cleanup.push(() => proxy.close());
  const c = client("fb-refused", {}, proxy.url);
  await waitState(c, "open");
  assert.equal(proxy.counts.upgrades, 1);
  assert.equal(proxy.counts.streams, 1);
  assert.deepEqual(await c.rpc("echo", "via sse"), "via sse");
  // A reconnect stays on sse: no second Upgrade.
  nc.publish(`natter.ctl.conn.${c.connectionId}`, enc({ op: "close", code: 4003 }));
  await waitState(c, "reconnecting");
  await waitState(c, "open");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [1, 2]);
  // So does another client of the same edge URL.
  const d = client("fb-refused-2", {}, proxy.url);
  await waitState(d, "open");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [1, 3]);
});

test("fallback: a proxy that stalls the Upgrade: sse after wsConnectTimeoutMs, well within connectTimeoutMs", async () => {
  const proxy = await startProxy(edge, { upgrade: "stall" });
  cleanup.push(() => proxy.close());
  const t0 = Date.now();
  const c = client("fb-stalled", { wsConnectTimeoutMs: 300, connectTimeoutMs: 10_000 }, proxy.url);
  const states = [];
  c.onState((st) => states.push(st));
  await waitState(c, "open");
  const took = Date.now() - t0;
  assert.ok(took >= 290 && took < 5000, `open after ${took} ms`);
  assert.deepEqual(states, ["open"], "one connect, no reconnect");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [1, 1]);
  assert.deepEqual(await c.rpc("echo", "stalled"), "stalled");
});

test("fallback: the memory expires after fallbackMemoryMs, then the WebSocket is tried again", async () => {
  const proxy = await startProxy(edge, { upgrade: "refuse" });
  cleanup.push(() => proxy.close());
  const c = client("fb-memory", { fallbackMemoryMs: 300 }, proxy.url);
  await waitState(c, "open");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [1, 1]);
  await new Promise((r) => setTimeout(r, 400));
  const d = client("fb-memory-2", { fallbackMemoryMs: 300 }, proxy.url);
  await waitState(d, "open");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [2, 2]);
});

test("fallback: a WebSocket that works is kept; nothing is remembered when sse fails too", async () => {
  const proxy = await startProxy(edge, { upgrade: "forward" });
  cleanup.push(() => proxy.close());
  const c = client("fb-fine", {}, proxy.url);
  await waitState(c, "open");
  assert.deepEqual(await c.rpc("echo", "ws"), "ws");
  assert.deepEqual([proxy.counts.upgrades, proxy.counts.streams], [1, 0]);

  // Nothing listens: both fail, the client backs off, and tries the WebSocket first each time.
  const dead = await startProxy(edge, { upgrade: "refuse" });
  const url = dead.url;
  await dead.close();
  const attempts = recordingFetch();
  let sockets = 0;
  class Counting extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets++;
    }
  }
  const e = client("fb-dead", { fetch: attempts, WebSocket: Counting }, url);
  await until(() => attempts.calls.length >= 3, 10_000, "three attempts");
  e.close();
  assert.ok(attempts.calls.every(([m, p]) => m === "GET" && p.startsWith("/ws/sse")));
  assert.ok(sockets >= attempts.calls.length, `every attempt starts with a WebSocket: ${sockets} sockets, ${attempts.calls.length} streams`);
});

test("fallback: localStorage holds the choice when the platform has one", async () => {
  const store = new Map();
  globalThis.localStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => void store.set(k, String(v)) };
  try {
    const proxy = await startProxy(edge, { upgrade: "refuse" });
    cleanup.push(() => proxy.close());
    const c = client("fb-storage", {}, proxy.url);
    await waitState(c, "open");
    const keys = [...store.keys()];
    assert.equal(keys.length, 1);
    assert.ok(keys[0].includes(new URL(proxy.url).host), keys[0]);
    const until = Number(store.get(keys[0]));
    assert.ok(until > Date.now() + 4 * 60_000 && until <= Date.now() + 5 * 60_000, `expires ${until - Date.now()} ms from now`);
  } finally {
    delete globalThis.localStorage;
  }
});

test("sse: an edge restart (4000) reconnects over sse", async () => {
  const own = await startEdge();
  cleanup.push(() => own.stop());
  const c = client("sse-phoenix", { transports: ["sse"], reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } }, own.url);
  await c.join("phoenix-room");
  const states = [];
  c.onState((st, info) => states.push([st, info?.code]));
  await own.stop("SIGTERM");
  await waitState(c, "reconnecting");
  assert.deepEqual(states[0], ["reconnecting", 4000]);
  const echoed = c.rpc("echo", "while away", { timeoutMs: 60_000 });
  const second = await startEdge({ port: own.port, dir: own.dir });
  cleanup.push(() => second.stop());
  await waitState(c, "open", 60_000);
  assert.equal(await withTimeout(echoed, 30_000, "echo"), "while away");
  assert.deepEqual(c.rooms(), ["phoenix-room"]);
});
