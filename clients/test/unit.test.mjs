// The client's own logic against a scripted WebSocket: backoff, close-code
// policy, the send buffer and its overflow policies, tokens, re-joins.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { connect as natterConnect, backoffDelay, shouldReconnect, NatterError } from "natter-client";

// Every client is closed after its test, also a failed one: live timers
// (heartbeats, retries) would keep the test process from exiting.
const made = [];
// The scripted WebSocket alone: the fallback to sse has tests of its own.
const connect = (url, options) => {
  const c = natterConnect(url, { transports: ["websocket"], ...options });
  made.push(c);
  return c;
};
afterEach(() => made.splice(0).forEach((c) => c.close()));
import { fakeWebSocket, lastSocket } from "../test-support/fake.mjs";

const fast = { initialDelayMs: 1, maxDelayMs: 5 };

test("backoffDelay: full jitter below an exponential cap bounded by maxDelayMs", () => {
  const opts = { initialDelayMs: 100, maxDelayMs: 5000, factor: 2 };
  const almostOne = () => 0.999999;
  for (const [attempt, cap] of [[0, 100], [1, 200], [2, 400], [5, 3200], [6, 5000], [60, 5000], [10000, 5000]]) {
    assert.equal(backoffDelay(attempt, opts, () => 0), 0, `attempt ${attempt}: lower bound`);
    const top = backoffDelay(attempt, opts, almostOne);
    assert.ok(top < cap && top >= cap - 1, `attempt ${attempt}: ${top} just below ${cap}`);
  }
  // Defaults: 250 ms first cap, 10 s at most.
  assert.ok(backoffDelay(0, {}, almostOne) < 250);
  assert.ok(backoffDelay(100, undefined, almostOne) < 10000 && backoffDelay(100, undefined, almostOne) > 9990);
  // Jitter: real randomness spreads the delays over the whole range.
  const seen = new Set();
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(4, opts);
    assert.ok(d >= 0 && d < 1600, `${d} in [0, 1600)`);
    seen.add(Math.floor(d / 160));
  }
  assert.ok(seen.size >= 8, `delays spread over ${seen.size}/10 buckets`);
});

test("shouldReconnect: 4000-4099 and abnormal closes yes, terminal codes no", () => {
  for (const code of [4000, 4001, 4002, 4003, 4004, 4099, 1001, 1005, 1006, 1011, 1012]) assert.equal(shouldReconnect(code), true, `${code}`);
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4100, 4101, 4102, 4199]) assert.equal(shouldReconnect(code), false, `${code}`);
});

test("sends before open are buffered and flushed in order after the re-joins", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, user: "alice", reconnect: fast });
  c.send("a.one", { n: 1 });
  const joined = c.join("lobby", { presence: true });
  c.send("a.two", { n: 2 }, { custom: "x" });
  const ws = await lastSocket(WS);
  assert.equal(ws.url, "ws://edge.test/ws?user=alice");
  assert.deepEqual(ws.protocols, ["natter"]);
  ws.open();
  // The join goes first; the buffer waits for its ack.
  assert.equal(ws.sent.length, 1);
  assert.equal(ws.sent[0].type, "$join");
  assert.deepEqual(ws.sent[0].payload, { room: "lobby", presence: true });
  assert.equal(c.state, "connecting");
  ws.serverSend({ type: "$joined", meta: { correlationId: ws.sent[0].meta.correlationId, room: "lobby" }, payload: { room: "lobby" } });
  await joined;
  assert.equal(c.state, "open");
  assert.deepEqual(ws.sent.slice(1), [
    { type: "a.one", payload: { n: 1 } },
    { type: "a.two", meta: { custom: "x" }, payload: { n: 2 } },
  ]);
  assert.deepEqual(c.rooms(), ["lobby"]);

  // After a drop: re-join, then what was sent meanwhile.
  const states = [];
  c.onState((s, info) => states.push([s, info?.code]));
  ws.serverClose(4001, "slow");
  c.send("a.three");
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent.map((e) => e.type), ["$join"]);
  ws2.serverSend({ type: "$joined", meta: { correlationId: ws2.sent[0].meta.correlationId }, payload: { room: "lobby" } });
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(ws2.sent.map((e) => e.type), ["$join", "a.three"]);
  assert.deepEqual(states, [["reconnecting", 4001], ["open", undefined]]);
  c.close();
  assert.deepEqual(states.at(-1), ["closed", 1000]);
});

test("connectionId: the edge's $connected completes the connect; undefined while away, the new one after a reconnect", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const told = [];
  c.on("$connected", (p) => told.push([p.connectionId, c.connectionId, c.state]));
  const ws = await lastSocket(WS);
  assert.equal(c.connectionId, undefined);
  ws.open({ welcome: false });
  assert.equal(c.state, "connecting", "the handshake alone does not open the client");
  assert.equal(c.connectionId, undefined);
  ws.serverSend({ type: "$connected", payload: { connectionId: "conn-1", user: "alice" } });
  assert.equal(c.state, "open");
  assert.equal(c.connectionId, "conn-1");
  assert.deepEqual(told, [["conn-1", "conn-1", "connecting"]], "listeners see the id before the client opens");
  assert.deepEqual(ws.sent, [], "$connected is not answered");

  ws.serverClose(4001, "slow");
  assert.equal(c.state, "reconnecting");
  assert.equal(c.connectionId, undefined);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.equal(c.state, "open");
  assert.equal(c.connectionId, "fake-2");
  c.close();
  assert.equal(c.connectionId, undefined);
});

test("connectionId: an edge that sends no $connected opens the client at the connect deadline, without one", async () => {
  const WS = fakeWebSocket();
  // The deadline counts from the dial, which connect() starts.
  const t0 = Date.now();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast, connectTimeoutMs: 30 });
  const ws = await lastSocket(WS);
  const opened = new Promise((resolve) => c.onState((s) => s === "open" && resolve()));
  ws.open({ welcome: false });
  assert.equal(c.state, "connecting", "waiting for $connected");
  await opened;
  assert.ok(Date.now() - t0 >= 25, `opened after ${Date.now() - t0} ms, at the deadline`);
  assert.equal(c.connectionId, undefined);
  assert.equal(WS.sockets.length, 1, "not given up and redialled");
});

test("leave while the join is on its way: the join rejects CANCELLED and the edge gets $leave", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  const joining = c.join("hall");
  const ws = await lastSocket(WS);
  ws.open();
  await c.leave("hall");
  await assert.rejects(joining, { code: "CANCELLED" });
  assert.deepEqual(c.rooms(), []);
  ws.serverSend({ type: "$joined", meta: { correlationId: ws.sent[0].meta.correlationId }, payload: { room: "hall" } });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(c.state, "open");
  assert.deepEqual(ws.sent.map((e) => e.type).slice(0, 2), ["$join", "$leave"]);
  c.close();
});

test("buffer overflow: error, drop-oldest, drop-newest", async () => {
  for (const overflow of ["error", "drop-oldest", "drop-newest"]) {
    const WS = fakeWebSocket();
    const c = connect("ws://edge.test/ws", { WebSocket: WS, buffer: { max: 2, overflow } });
    c.send("m", 1);
    c.send("m", 2);
    if (overflow === "error") {
      assert.throws(() => c.send("m", 3), (e) => e instanceof NatterError && e.code === "RESOURCE_EXHAUSTED");
      await assert.rejects(c.rpc("r"), { code: "RESOURCE_EXHAUSTED" });
    } else {
      c.send("m", 3); // no error: the policy drops one
    }
    const ws = await lastSocket(WS);
    ws.open();
    const expect = { "error": [1, 2], "drop-oldest": [2, 3], "drop-newest": [1, 2] }[overflow];
    assert.deepEqual(ws.sent.map((e) => e.payload), expect, overflow);
    c.close();
  }
  // A request dropped from the buffer rejects rather than hangs.
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, buffer: { max: 1, overflow: "drop-oldest" } });
  const dropped = c.rpc("r", { n: 1 });
  c.send("m", 2);
  await assert.rejects(dropped, { code: "RESOURCE_EXHAUSTED" });
  c.close();
});

test("token: a function is called on every connect and sent as a subprotocol", async () => {
  const WS = fakeWebSocket();
  let n = 0;
  const c = connect("ws://edge.test/ws", { WebSocket: WS, token: async () => `t${++n}`, reconnect: fast });
  const ws = await lastSocket(WS);
  assert.deepEqual(ws.protocols, ["natter", "bearer.t1"]);
  ws.open();
  ws.serverClose(4000, "shutting down");
  const ws2 = await lastSocket(WS, 2);
  assert.deepEqual(ws2.protocols, ["natter", "bearer.t2"]);
  ws2.open();
  // $auth.expiring refreshes with a new token.
  ws2.serverSend({ type: "$auth.expiring", payload: { expiresAt: Date.now() + 1000 } });
  await new Promise((r) => setTimeout(r, 0));
  const refresh = ws2.sent.find((e) => e.type === "$auth.refresh");
  assert.deepEqual(refresh.payload, { token: "t3" });
  c.close();
});

test("requests: lost with the socket reject UNAVAILABLE; buffered ones survive it", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const ws = await lastSocket(WS);
  ws.open();
  const inFlight = c.rpc("slow", {}, { timeoutMs: 30_000 });
  assert.equal(ws.sent[0].meta.timeoutMs > 29_000, true);
  ws.serverClose(1006);
  const later = c.rpc("later", { x: 1 }, { timeoutMs: 30_000 });
  await assert.rejects(inFlight, { code: "UNAVAILABLE" });
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.equal(ws2.sent[0].type, "later");
  ws2.serverSend({ type: "later.ok", meta: { correlationId: ws2.sent[0].meta.correlationId }, payload: 42 });
  assert.equal(await later, 42);
  c.close();
});

test("a failed handshake that fires only an error is retried", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const states = [];
  c.onState((s, info) => states.push([s, info?.code]));
  (await lastSocket(WS)).fail();
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(states, [["reconnecting", 1006], ["open", undefined]]);
  c.close();
});

test("a terminal close code ends the client without reconnecting", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const ws = await lastSocket(WS);
  ws.open();
  const pending = c.rpc("x");
  const closed = new Promise((r) => c.onState((s, info) => s === "closed" && r(info)));
  ws.serverClose(4101, "forbidden");
  assert.deepEqual(await closed, { code: 4101, reason: "forbidden" });
  await assert.rejects(pending, { code: "UNAVAILABLE" });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(WS.sockets.length, 1);
  assert.throws(() => c.send("x"), { code: "UNAVAILABLE" });
  await assert.rejects(c.join("r"), { code: "UNAVAILABLE" });
});

test("close() rejects what waits with CANCELLED", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  const r = c.rpc("x");
  const j = c.join("room");
  c.close();
  await assert.rejects(r, { code: "CANCELLED" });
  await assert.rejects(j, { code: "CANCELLED" });
  assert.equal(c.state, "closed");
});

// ---------------------------------------------------------------- review fixes

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
/** Polls until check() holds (timers may run late on a busy machine). */
async function eventually(check, what, ms = 2000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await tick(2);
  }
}
/** The edge's answer to a request frame the client sent. */
const answer = (ws, frame, type, payload) => ws.serverSend({ type, meta: { correlationId: frame.meta.correlationId }, payload });
const refuse = (ws, frame, code, extra = {}) => answer(ws, frame, "RPC_ERROR", { code, message: code.toLowerCase(), ...extra });
/** Opens ws and acknowledges every re-join and state it is sent. */
function openAndAck(ws) {
  ws.open();
  for (const f of ws.sent) {
    if (f.type === "$join") answer(ws, f, "$joined", { room: f.payload.room });
    if (f.type === "$presence.state") answer(ws, f, "$presence.state", {});
  }
}

test("an RPC_ERROR, ERROR or system frame with a srv- id is emitted, never answered (no loop)", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  const seen = [];
  c.on("RPC_ERROR", (p) => seen.push(p.code));
  c.on("ERROR", (p) => seen.push(p.code));
  c.on("$ws:rpc-progress", () => seen.push("progress"));
  // The edge's answer to a late answer of ours: UNAVAILABLE with the same srv- id.
  ws.serverSend({ type: "RPC_ERROR", meta: { correlationId: "srv-1" }, payload: { code: "UNAVAILABLE", message: "no responders" } });
  ws.serverSend({ type: "ERROR", meta: { correlationId: "srv-2" }, payload: { code: "INVALID_ARGUMENT", message: "x" } });
  ws.serverSend({ type: "$ws:rpc-progress", meta: { correlationId: "srv-3" }, payload: {} });
  ws.serverSend({ type: "__anything", meta: { correlationId: "srv-4" } });
  await tick();
  assert.deepEqual(ws.sent, []);
  assert.deepEqual(seen, ["UNAVAILABLE", "INVALID_ARGUMENT", "progress"]);
  // An app type is still a request: answered UNIMPLEMENTED without a handler.
  ws.serverSend({ type: "geo.where", meta: { correlationId: "srv-5" } });
  await tick();
  assert.deepEqual(ws.sent.map((f) => [f.type, f.meta.correlationId, f.payload.code]), [["RPC_ERROR", "srv-5", "UNIMPLEMENTED"]]);
  c.close();
});

test("a drop during the re-join keeps the rooms and the state for the next socket", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const joined = c.join("lobby");
  const stated = c.presence.setState("away");
  openAndAck(await lastSocket(WS));
  await Promise.all([joined, stated]);
  (await lastSocket(WS)).serverClose(4000);
  // The second socket drops before the edge answers the re-join.
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent.map((f) => f.type).sort(), ["$join", "$presence.state"]);
  ws2.serverClose(1006);
  await tick();
  assert.deepEqual(c.rooms(), ["lobby"]);
  const ws3 = await lastSocket(WS, 3);
  ws3.open();
  assert.deepEqual(ws3.sent.map((f) => [f.type, f.payload]).sort(), [["$join", { room: "lobby" }], ["$presence.state", { state: "away" }]]);
  openAndAck(ws3);
  await tick();
  assert.equal(c.state, "open");
  assert.deepEqual(c.rooms(), ["lobby"]);
  c.close();
});

test("a join made while open and cut off by a drop resolves once the next connection has joined", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  let settled = null;
  const joining = c.join("hall").then(() => (settled = "ok"), (e) => (settled = e.code));
  assert.equal(ws.sent[0].type, "$join");
  ws.serverClose(1006);
  await tick();
  assert.equal(settled, null, "neither resolved nor rejected by the drop");
  assert.deepEqual(c.rooms(), ["hall"]);
  const ws2 = await lastSocket(WS, 2);
  openAndAck(ws2);
  await joining;
  assert.equal(settled, "ok");
  c.close();
});

test("re-joins: retried with backoff on UNAVAILABLE and RESOURCE_EXHAUSTED, forgotten on PERMISSION_DENIED, reported by onError", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const errors = [];
  c.onError((e, info) => errors.push([info.op, info.room, e.code, info.retrying]));
  const joins = ["a", "b", "c"].map((r) => c.join(r));
  openAndAck(await lastSocket(WS));
  await Promise.all(joins);
  (await lastSocket(WS)).serverClose(4000);
  const ws = await lastSocket(WS, 2);
  ws.open();
  const [a, b, cc] = ["a", "b", "c"].map((r) => ws.sent.find((f) => f.payload.room === r));
  const t0 = Date.now();
  refuse(ws, a, "UNAVAILABLE");
  refuse(ws, b, "RESOURCE_EXHAUSTED", { retryAfterMs: 60 });
  refuse(ws, cc, "PERMISSION_DENIED");
  await tick();
  // The connection opens anyway; only c is forgotten.
  assert.equal(c.state, "open");
  assert.deepEqual(c.rooms().sort(), ["a", "b"]);
  assert.deepEqual(errors.sort(), [["join", "a", "UNAVAILABLE", true], ["join", "b", "RESOURCE_EXHAUSTED", true], ["join", "c", "PERMISSION_DENIED", false]]);
  // a comes again after the backoff (at most 5 ms), b not before 60 ms.
  await eventually(() => ws.sent.length > 3, "a's retry");
  assert.equal(ws.sent[3].payload.room, "a");
  if (Date.now() - t0 < 50) assert.equal(ws.sent.length, 4, "b waits for retryAfterMs");
  await eventually(() => ws.sent.length > 4, "b's retry");
  assert.ok(Date.now() - t0 >= 59, "b not before retryAfterMs");
  assert.deepEqual(ws.sent.slice(3).map((f) => f.payload.room), ["a", "b"]);
  answer(ws, ws.sent[3], "$joined", { room: "a" });
  answer(ws, ws.sent[4], "$joined", { room: "b" });
  await tick();
  assert.deepEqual(c.rooms().sort(), ["a", "b"]);
  c.close();
});

test("sendRate: buffered sends are paced by a token bucket, and RESOURCE_EXHAUSTED pauses them", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, sendRate: { perSecond: 100, burst: 3 } });
  for (let i = 0; i < 6; i++) c.send("m", i);
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  assert.equal(c.state, "open");
  assert.deepEqual(ws.sent.map((f) => f.payload), [0, 1, 2], "the burst, then the rate");
  c.send("m", 6); // waits behind the backlog
  await eventually(() => ws.sent.length === 7, "the paced rest");
  assert.deepEqual(ws.sent.map((f) => f.payload), [0, 1, 2, 3, 4, 5, 6]);
  // The edge's rate limit: nothing paced goes out before retryAfterMs.
  ws.serverSend({ type: "ERROR", payload: { code: "RESOURCE_EXHAUSTED", message: "connection rate limit exceeded", retryAfterMs: 80 } });
  const paused = Date.now();
  c.send("m", 7);
  await eventually(() => ws.sent.length === 8, "the send after the pause");
  assert.ok(Date.now() - paused >= 79, "not before retryAfterMs");
  assert.equal(ws.sent[7].payload, 7);
  c.close();

  // sendRate: false sends everything at once.
  const WS2 = fakeWebSocket();
  const c2 = connect("ws://edge.test/ws", { WebSocket: WS2, sendRate: false });
  for (let i = 0; i < 300; i++) c2.send("m", i);
  const ws2 = await lastSocket(WS2);
  ws2.open();
  assert.equal(ws2.sent.length, 300);
  c2.close();
});

test("the default send rate lets 200 go at once, then 100/s", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  for (let i = 0; i < 220; i++) c.send("m", i);
  const ws = await lastSocket(WS);
  const t0 = Date.now();
  ws.open();
  // The burst at once (plus what the time the sends took earned).
  assert.ok(ws.sent.length >= 200 && ws.sent.length <= 201 + (Date.now() - t0) / 10, `${ws.sent.length} at open`);
  await eventually(() => ws.sent.length >= 205, "more after the burst");
  // At most one per 10 ms (plus rounding) since the burst.
  assert.ok(ws.sent.length <= 202 + (Date.now() - t0) / 10, `${ws.sent.length} after ${Date.now() - t0} ms`);
  c.close();
});

test("a failed automatic refresh is retried with backoff until the token expires", async () => {
  const WS = fakeWebSocket();
  let n = 0;
  const token = () => {
    n++;
    if (n === 2) throw new Error("auth server down");
    return `t${n}`;
  };
  const c = connect("ws://edge.test/ws", { WebSocket: WS, token, reconnect: fast });
  const errors = [];
  c.onError((e, info) => errors.push([info.op, info.retrying]));
  const ws = await lastSocket(WS);
  ws.open();
  ws.serverSend({ type: "$auth.expiring", payload: { expiresAt: Date.now() + 5000 } });
  await eventually(() => ws.sent.some((f) => f.type === "$auth.refresh"), "the second try");
  assert.deepEqual(errors, [["refresh", true]]);
  const refresh = ws.sent.filter((f) => f.type === "$auth.refresh");
  assert.deepEqual(refresh.map((f) => f.payload.token), ["t3"]);
  answer(ws, refresh[0], "$auth.refreshed", { user: "u", expiresAt: Date.now() + 3600_000 });
  await tick(30);
  assert.equal(ws.sent.filter((f) => f.type === "$auth.refresh").length, 1, "no more tries after success");
  c.close();
});

test("4100: a token function reconnects once with a fresh token; a static token stays closed", async () => {
  const WS = fakeWebSocket();
  let n = 0;
  const c = connect("ws://edge.test/ws", { WebSocket: WS, token: () => `t${++n}`, reconnect: fast });
  const states = [];
  c.onState((s, info) => states.push([s, info?.code]));
  (await lastSocket(WS)).open();
  (await lastSocket(WS)).serverClose(4100, "token expired");
  const ws2 = await lastSocket(WS, 2);
  assert.deepEqual(ws2.protocols, ["natter", "bearer.t2"]);
  ws2.open();
  await tick();
  assert.deepEqual(states, [["open", undefined], ["reconnecting", 4100], ["open", undefined]]);
  // The next expiry: one more reconnect, whose handshake is refused (401): the end.
  ws2.serverClose(4100, "token expired");
  (await lastSocket(WS, 3)).fail();
  await tick(20);
  assert.deepEqual(states.slice(3), [["reconnecting", 4100], ["closed", 4100]]);
  assert.equal(WS.sockets.length, 3);

  const WS2 = fakeWebSocket();
  const s = connect("ws://edge.test/ws", { WebSocket: WS2, token: "static", reconnect: fast });
  (await lastSocket(WS2)).open();
  const closed = new Promise((r) => s.onState((st, info) => st === "closed" && r(info)));
  (await lastSocket(WS2)).serverClose(4100, "token expired");
  assert.deepEqual(await closed, { code: 4100, reason: "token expired" });
});

test("join, leave, join within one round trip: no extra $leave, rooms() and the edge agree", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  const first = c.join("x");
  const left = c.leave("x");
  const second = c.join("x");
  assert.deepEqual(ws.sent.map((f) => f.type), ["$join", "$leave", "$join"]);
  answer(ws, ws.sent[0], "$joined", { room: "x" });
  answer(ws, ws.sent[1], "$left", { room: "x" });
  answer(ws, ws.sent[2], "$joined", { room: "x" });
  await assert.rejects(first, { code: "CANCELLED" });
  await left;
  await second;
  await tick();
  assert.deepEqual(ws.sent.map((f) => f.type), ["$join", "$leave", "$join"]);
  assert.deepEqual(c.rooms(), ["x"]);
  c.close();
});

test("server-driven membership: a ctl join is remembered and re-joined, a ctl leave forgets", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  ws.serverSend({ type: "$joined", meta: { room: "ops" }, payload: { room: "ops" } });
  ws.serverSend({ type: "$joined", meta: { room: "gone" }, payload: { room: "gone" } });
  ws.serverSend({ type: "$left", meta: { room: "gone" }, payload: { room: "gone" } });
  assert.deepEqual(c.rooms(), ["ops"]);
  assert.deepEqual(ws.sent, []);
  ws.serverClose(4000);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent.map((f) => [f.type, f.payload]), [["$join", { room: "ops" }]]);
  c.close();
});

test("heartbeatMs sends __heartbeat while open; the acks are not delivered", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, heartbeatMs: 20 });
  const frames = [];
  c.on("__heartbeat_ack", () => frames.push("ack"));
  const ws = await lastSocket(WS);
  ws.open();
  const t0 = Date.now();
  await eventually(() => ws.sent.length >= 2, "two heartbeats");
  const beats = ws.sent.filter((f) => f.type === "__heartbeat");
  assert.ok(beats.length <= (Date.now() - t0) / 20 + 1, `${beats.length} heartbeats in ${Date.now() - t0} ms`);
  answer(ws, beats[0], "__heartbeat_ack", null);
  assert.deepEqual(frames, []);
  c.close();
  const after = ws.sent.length;
  await tick(50);
  assert.equal(ws.sent.length, after, "none after close");
});

test("options.token() gets the connect timeout; a token that is no HTTP token closes with INVALID_ARGUMENT", async () => {
  const WS = fakeWebSocket();
  let calls = 0;
  const c = connect("ws://edge.test/ws", {
    WebSocket: WS, connectTimeoutMs: 30, reconnect: fast,
    token: () => (++calls === 1 ? new Promise(() => {}) : "ok"),
  });
  const states = [];
  c.onState((s, info) => states.push([s, info?.reason]));
  (await lastSocket(WS)).open();
  assert.equal(calls, 2);
  assert.deepEqual(states[0], ["reconnecting", "connect timeout"]);
  c.close();

  const WS2 = fakeWebSocket();
  const bad = connect("ws://edge.test/ws", { WebSocket: WS2, token: "abc/def+ghi==", reconnect: fast });
  const joined = bad.join("r");
  await assert.rejects(joined, { code: "INVALID_ARGUMENT" });
  assert.equal(bad.state, "closed");
  await tick(20);
  assert.equal(WS2.sockets.length, 0);
});

test("setState: the refusal of an older value does not forget a newer accepted one", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  const big = c.presence.setState("x".repeat(300));
  const small = c.presence.setState("away");
  refuse(ws, ws.sent[0], "RESOURCE_EXHAUSTED");
  answer(ws, ws.sent[1], "$presence.state", {});
  await assert.rejects(big, { code: "RESOURCE_EXHAUSTED" });
  await small;
  // And the other way round: a refused newer value falls back to the accepted one.
  const bigger = c.presence.setState("y".repeat(300));
  refuse(ws, ws.sent[2], "RESOURCE_EXHAUSTED");
  await assert.rejects(bigger, { code: "RESOURCE_EXHAUSTED" });
  ws.serverClose(4000);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent.map((f) => [f.type, f.payload]), [["$presence.state", { state: "away" }]]);
  c.close();
});

// ---------------------------------------------------------------- durable rooms

/** A delivery in a durable room. */
const delivery = (room, offset, epoch, n) => ({ type: "dur.msg", meta: { room, offset, epoch }, payload: { n } });
/** The durable $joined answer to a $join frame. */
const joinedDurable = (ws, frame, offset, epoch, recovered) =>
  answer(ws, frame, "$joined", { room: frame.payload.room, durable: true, offset, epoch, ...(recovered === undefined ? {} : { recovered }) });

test("durable rooms: positions advance with deliveries and $joined; a re-join sends since and reports recovered", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const events = [];
  c.onRecovery((info) => events.push(["recovery", info]));
  c.on("dur.msg", (p, env) => events.push(["msg", p.n, c.position(env.meta.room)?.offset]));
  const joining = c.join("dur-a");
  const plain = c.join("plain");
  const ws = await lastSocket(WS);
  ws.open();
  assert.deepEqual(ws.sent.map((f) => f.payload), [{ room: "dur-a" }, { room: "plain" }], "no since without a position");
  joinedDurable(ws, ws.sent[0], 10, "e1");
  answer(ws, ws.sent[1], "$joined", { room: "plain" });
  await Promise.all([joining, plain]);
  assert.deepEqual(c.position("dur-a"), { offset: 10, epoch: "e1" });
  assert.equal(c.position("plain"), undefined);

  ws.serverSend(delivery("dur-a", 12, "e1", 1));
  ws.serverSend(delivery("dur-a", 11, "e1", 0)); // never backwards
  ws.serverSend(delivery("dur-a", 99, "e2", 9)); // another epoch without a $joined: not adopted
  ws.serverSend(delivery("elsewhere", 50, "e1", 5)); // not a room of ours
  ws.serverSend({ type: "plain.msg", meta: { room: "plain" }, payload: {} });
  assert.deepEqual(c.position("dur-a"), { offset: 12, epoch: "e1" });
  assert.equal(c.position("elsewhere"), undefined);
  assert.equal(c.position("plain"), undefined);
  // Listeners see the position of the frame they get.
  assert.deepEqual(events, [["msg", 1, 12], ["msg", 0, 12], ["msg", 9, 12], ["msg", 5, undefined]]);
  events.length = 0;
  // The copy handed out is not the client's own.
  c.position("dur-a").offset = 0;
  assert.equal(c.position("dur-a").offset, 12);

  // A reconnect: the durable room re-joins with since, the other without.
  ws.serverClose(4000);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  const rejoin = ws2.sent.find((f) => f.payload.room === "dur-a");
  assert.deepEqual(rejoin.payload, { room: "dur-a", since: { offset: 12, epoch: "e1" } });
  assert.deepEqual(ws2.sent.find((f) => f.payload.room === "plain").payload, { room: "plain" });
  // The replay comes before $joined, then the event, before the next frame.
  ws2.serverSend(delivery("dur-a", 14, "e1", 2));
  ws2.serverSend(delivery("dur-a", 15, "e1", 3));
  joinedDurable(ws2, rejoin, 15, "e1", true);
  ws2.serverSend(delivery("dur-a", 16, "e1", 4));
  answer(ws2, ws2.sent.find((f) => f.payload.room === "plain"), "$joined", { room: "plain" });
  await eventually(() => c.state === "open", "open");
  assert.deepEqual(events, [
    ["msg", 2, 14],
    ["msg", 3, 15],
    ["recovery", { room: "dur-a", recovered: true, since: { offset: 12, epoch: "e1" }, position: { offset: 15, epoch: "e1" } }],
    ["msg", 4, 16],
  ]);
});

test("durable rooms: a gap (recovered false, a new epoch) is reported, and the new epoch is adopted", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const events = [];
  c.onRecovery((info) => events.push(info));
  const joining = c.join("dur-b", { presence: true });
  const ws = await lastSocket(WS);
  ws.open();
  joinedDurable(ws, ws.sent[0], 7, "old");
  await joining;
  ws.serverClose(1006);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent[0].payload, { room: "dur-b", presence: true, since: { offset: 7, epoch: "old" } });
  // History was reset: a smaller offset of another epoch.
  joinedDurable(ws2, ws2.sent[0], 3, "new", false);
  await eventually(() => c.state === "open", "open");
  assert.deepEqual(events, [{ room: "dur-b", recovered: false, since: { offset: 7, epoch: "old" }, position: { offset: 3, epoch: "new" } }]);
  assert.deepEqual(c.position("dur-b"), { offset: 3, epoch: "new" });
  // Deliveries of the new epoch advance it now.
  ws2.serverSend(delivery("dur-b", 4, "new", 1));
  assert.deepEqual(c.position("dur-b"), { offset: 4, epoch: "new" });
  // A drop while the re-join is on its way: the next socket asks from the same place.
  ws2.serverClose(1006);
  const ws3 = await lastSocket(WS, 3);
  ws3.open();
  ws3.serverSend(delivery("dur-b", 6, "new", 2)); // replayed, then the socket drops before $joined
  ws3.serverClose(1006);
  const ws4 = await lastSocket(WS, 4);
  ws4.open();
  assert.deepEqual(ws4.sent[0].payload.since, { offset: 6, epoch: "new" });
  joinedDurable(ws4, ws4.sent[0], 6, "new", true);
  await eventually(() => events.length === 2, "second event");
  assert.deepEqual(events[1], { room: "dur-b", recovered: true, since: { offset: 6, epoch: "new" }, position: { offset: 6, epoch: "new" } });
});

test("durable rooms: a re-join with since that times out is reported as a gap, then retried from the position reached", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast, rpcTimeoutMs: 40 });
  const events = [];
  const errors = [];
  c.onRecovery((info) => events.push(info));
  c.onError((e, info) => errors.push([info.op, info.room, e.code, info.retrying]));
  const joining = c.join("dur-t");
  const ws = await lastSocket(WS);
  ws.open();
  joinedDurable(ws, ws.sent[0], 20, "e1");
  await joining;
  ws.serverSend(delivery("dur-t", 21, "e1", 1));
  assert.deepEqual(c.position("dur-t"), { offset: 21, epoch: "e1" });

  ws.serverClose(1006);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.equal(ws2.sent.length, 1);
  assert.deepEqual(ws2.sent[0].payload, { room: "dur-t", since: { offset: 21, epoch: "e1" } });
  // The edge replays part, then never answers the join.
  ws2.serverSend(delivery("dur-t", 22, "e1", 2));
  assert.equal(events.length, 0, "nothing reported before the deadline");
  await eventually(() => events.length === 1, "the gap after the client's deadline");
  assert.deepEqual(events[0], { room: "dur-t", recovered: false, since: { offset: 21, epoch: "e1" }, position: { offset: 22, epoch: "e1" } });
  assert.deepEqual(errors, [["join", "dur-t", "DEADLINE_EXCEEDED", true]]);
  await eventually(() => c.state === "open", "open without the join");
  assert.deepEqual(c.rooms(), ["dur-t"]);

  // The retry asks from the position reached; its answer is reported too.
  await eventually(() => ws2.sent.length === 2, "the retried $join");
  assert.deepEqual(ws2.sent[1].payload, { room: "dur-t", since: { offset: 22, epoch: "e1" } });
  // The timed-out join's answer turns up late: reported once already.
  joinedDurable(ws2, ws2.sent[0], 22, "e1", false);
  await tick();
  assert.equal(events.length, 1, "a late answer is not reported again");
  ws2.serverSend(delivery("dur-t", 23, "e1", 3));
  joinedDurable(ws2, ws2.sent[1], 23, "e1", true);
  await eventually(() => events.length === 2, "the retry's recovery");
  assert.deepEqual(events[1], { room: "dur-t", recovered: true, since: { offset: 22, epoch: "e1" }, position: { offset: 23, epoch: "e1" } });
  assert.deepEqual(c.position("dur-t"), { offset: 23, epoch: "e1" });
  assert.equal(errors.length, 1);
});

test("durable rooms: join with since; no since to a room the socket is in; leave and refusals forget the position", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const events = [];
  c.onRecovery((info) => events.push(info));
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  await assert.rejects(c.join("dur-c", { since: { offset: 1 } }), { code: "INVALID_ARGUMENT" });
  assert.deepEqual(ws.sent, []);

  // Explicit since: sent, and the position is the application's.
  const first = c.join("dur-c", { since: { offset: 40, epoch: "e" } });
  assert.deepEqual(c.position("dur-c"), { offset: 40, epoch: "e" });
  assert.deepEqual(ws.sent[0].payload, { room: "dur-c", since: { offset: 40, epoch: "e" } });
  ws.serverSend(delivery("dur-c", 41, "e", 1));
  joinedDurable(ws, ws.sent[0], 41, "e", true);
  await first;
  assert.deepEqual(events.map((e) => [e.since.offset, e.position.offset, e.recovered]), [[40, 41, true]]);

  // Joining again on the same socket (presence on) asks for no replay...
  const again = c.join("dur-c", { presence: true });
  assert.deepEqual(ws.sent[1].payload, { room: "dur-c", presence: true });
  joinedDurable(ws, ws.sent[1], 41, "e");
  await again;
  // ... unless told to.
  const told = c.join("dur-c", { since: { offset: 30, epoch: "e" } });
  assert.deepEqual(ws.sent[2].payload, { room: "dur-c", since: { offset: 30, epoch: "e" } });
  joinedDurable(ws, ws.sent[2], 41, "e", true);
  await told;
  assert.deepEqual(c.position("dur-c"), { offset: 41, epoch: "e" });
  assert.equal(events.length, 2);

  // Leaving forgets the position; so does a refused join and a ctl $left.
  const left = c.leave("dur-c");
  answer(ws, ws.sent[3], "$left", { room: "dur-c" });
  await left;
  assert.equal(c.position("dur-c"), undefined);
  ws.serverSend(delivery("dur-c", 50, "e", 2));
  assert.equal(c.position("dur-c"), undefined, "no position for a room left");

  const refused = c.join("dur-d", { since: { offset: 5, epoch: "e" } });
  refuse(ws, ws.sent[4], "PERMISSION_DENIED");
  await assert.rejects(refused, { code: "PERMISSION_DENIED" });
  assert.equal(c.position("dur-d"), undefined);

  // A ctl join of a durable room has a position too, and a ctl leave drops it.
  ws.serverSend({ type: "$joined", meta: { room: "dur-e" }, payload: { room: "dur-e", durable: true, offset: 9, epoch: "e" } });
  assert.deepEqual(c.position("dur-e"), { offset: 9, epoch: "e" });
  ws.serverSend({ type: "$left", meta: { room: "dur-e" }, payload: { room: "dur-e" } });
  assert.equal(c.position("dur-e"), undefined);

  // An empty durable room: $joined has no offset (zero), and a re-join asks from 0.
  const empty = c.join("dur-empty");
  answer(ws, ws.sent.at(-1), "$joined", { room: "dur-empty", durable: true, epoch: "e" });
  await empty;
  assert.deepEqual(c.position("dur-empty"), { offset: 0, epoch: "e" });

  // A room that turns out not to be durable keeps no position.
  const nd = c.join("notdur", { since: { offset: 5, epoch: "e" } });
  answer(ws, ws.sent.at(-1), "$joined", { room: "notdur" });
  await nd;
  assert.equal(c.position("notdur"), undefined);
  assert.equal(events.length, 2);

  // After a drop: since only where there is a position.
  ws.serverClose(4000);
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  assert.deepEqual(ws2.sent.map((f) => f.payload).sort((a, b) => a.room.localeCompare(b.room)), [
    { room: "dur-empty", since: { offset: 0, epoch: "e" } },
    { room: "notdur" },
  ]);
});

test("history: $history with the query; the page normalized; errors reject; no position taken from it", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast });
  const queued = c.history("dur-h", { limit: 2, before: 30 });
  const ws = await lastSocket(WS);
  ws.open();
  await tick();
  const joined = c.join("dur-h");
  joinedDurable(ws, ws.sent.find((f) => f.type === "$join"), 30, "e");
  await joined;
  const h = ws.sent.find((f) => f.type === "$history");
  assert.deepEqual(h.payload, { room: "dur-h", limit: 2, before: 30 });
  assert.equal(typeof h.meta.correlationId, "string");
  const msgs = [20, 25].map((o) => ({ type: "dur.msg", meta: { room: "dur-h", offset: o, epoch: "e" }, payload: { o } }));
  answer(ws, h, "$history", { room: "dur-h", epoch: "e", messages: msgs, more: true });
  assert.deepEqual(await queued, { room: "dur-h", epoch: "e", messages: msgs, more: true });

  const forward = c.history("dur-h", { since: 0 });
  const f = ws.sent.at(-1);
  assert.deepEqual(f.payload, { room: "dur-h", since: 0 });
  answer(ws, f, "$history", { room: "dur-h", epoch: "e", messages: null, more: false });
  assert.deepEqual(await forward, { room: "dur-h", epoch: "e", messages: [], more: false });
  // A reply with offsets far ahead does not move the position.
  const ahead = c.history("dur-h");
  answer(ws, ws.sent.at(-1), "$history", { room: "dur-h", epoch: "e", messages: [{ type: "x", meta: { room: "dur-h", offset: 99, epoch: "e" } }], more: false });
  await ahead;
  assert.deepEqual(c.position("dur-h"), { offset: 30, epoch: "e" });

  const refused = c.history("plain");
  answer(ws, ws.sent.at(-1), "RPC_ERROR", { code: "FAILED_PRECONDITION", message: "plain is not a durable room" });
  await assert.rejects(refused, (e) => e instanceof NatterError && e.code === "FAILED_PRECONDITION");
});

// ---------------------------------------------------------------- durable messages

/** The frames of type the client sent on ws, once there are n of them. */
async function sentOf(ws, type, n) {
  await eventually(() => ws.sent.filter((f) => f.type === type).length >= n, `${n} ${type} frame(s)`);
  return ws.sent.filter((f) => f.type === type);
}
const KEY = /^[\x21-\x7e]{1,128}$/;

test("sendDurable: resends with the same key after UNAVAILABLE with retryAfterMs, a late answer and a lost socket; resolves {seq, duplicate}", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast, rpcTimeoutMs: 100 });
  const ws = await lastSocket(WS);
  ws.open();
  const t0 = Date.now();
  const stored = c.sendDurable("job.run", { n: 1 });
  // 1: the edge cannot reach the stream now.
  const [first] = await sentOf(ws, "job.run", 1);
  assert.deepEqual(first.payload, { n: 1 });
  const key = first.meta.idempotencyKey;
  assert.match(key, KEY);
  refuse(ws, first, "UNAVAILABLE", { retryAfterMs: 30 });
  // 2: not before retryAfterMs; then no answer within rpcTimeoutMs (100 ms).
  const [, second] = await sentOf(ws, "job.run", 2);
  assert.ok(Date.now() - t0 >= 29, "the resend waited retryAfterMs");
  // 3: right after that attempt's deadline; the socket drops while it is out.
  const [, , third] = await sentOf(ws, "job.run", 3);
  assert.ok(Date.now() - t0 >= 129, "the third attempt followed the second's deadline");
  answer(ws, second, "$ws:accepted", { seq: 6 }); // too late: ignored
  ws.serverClose(1006);
  // 4: on the next socket, and stored once: the edge says duplicate.
  const ws2 = await lastSocket(WS, 2);
  ws2.open();
  const [fourth] = await sentOf(ws2, "job.run", 1);
  answer(ws2, fourth, "$ws:accepted", { seq: 6, duplicate: true });
  assert.deepEqual(await stored, { seq: 6, duplicate: true });
  const frames = [first, second, third, fourth];
  assert.deepEqual(frames.map((f) => f.meta.idempotencyKey), [key, key, key, key], "one key for every attempt");
  assert.equal(new Set(frames.map((f) => f.meta.correlationId)).size, 4, "a request per attempt");
  assert.ok(frames.every((f) => f.meta.timeoutMs <= 100));

  // An explicit key; duplicate is false unless the edge says true.
  const again = c.sendDurable("job.run", undefined, { idempotencyKey: "order-17" });
  const [, f] = await sentOf(ws2, "job.run", 2);
  assert.equal(f.meta.idempotencyKey, "order-17");
  assert.equal("payload" in f, false);
  answer(ws2, f, "$ws:accepted", { seq: 7 });
  assert.deepEqual(await again, { seq: 7, duplicate: false });
  // A fresh key per call.
  const other = c.sendDurable("job.run", {});
  const [, , g] = await sentOf(ws2, "job.run", 3);
  assert.match(g.meta.idempotencyKey, KEY);
  assert.notEqual(g.meta.idempotencyKey, key);
  answer(ws2, g, "$ws:accepted", { seq: 8 });
  assert.deepEqual(await other, { seq: 8, duplicate: false });
});

test("sendDurable: RESOURCE_EXHAUSTED with retryAfterMs is retried until timeoutMs; other errors reject at once", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: fast, sendRate: false });
  const ws = await lastSocket(WS);
  ws.open();
  // The stream stays full: resends every retryAfterMs until timeoutMs, then the last refusal.
  let refusals = 0;
  const full = (f) => {
    if (f.type !== "job.run") return;
    refusals++;
    refuse(ws, f, "RESOURCE_EXHAUSTED", { retryAfterMs: 20 });
  };
  const send = ws.send.bind(ws);
  ws.send = (data) => {
    send(data);
    queueMicrotask(() => full(JSON.parse(data)));
  };
  const t0 = Date.now();
  await assert.rejects(c.sendDurable("job.run", { n: 1 }, { timeoutMs: 150 }), (e) => e instanceof NatterError && e.code === "RESOURCE_EXHAUSTED" && e.retryAfterMs === 20);
  const took = Date.now() - t0;
  assert.ok(took >= 125 && took < 1000, `gave up after ${took} ms`);
  assert.ok(refusals >= 3 && refusals <= 8, `${refusals} attempts`);
  assert.equal(new Set(ws.sent.map((f) => f.meta.idempotencyKey)).size, 1);
  ws.send = send;

  // Without retryAfterMs (too large), INVALID_ARGUMENT, a worker's answer: once, at once.
  for (const [code, extra] of [["RESOURCE_EXHAUSTED", {}], ["INVALID_ARGUMENT", {}], ["INTERNAL", {}], ["UNAVAILABLE", {}]]) {
    const n = ws.sent.length;
    const p = c.sendDurable("job.run", {}, { idempotencyKey: "bad key" });
    refuse(ws, ws.sent.at(-1), code, extra);
    await assert.rejects(p, { code });
    await tick(20);
    assert.equal(ws.sent.length, n + 1, `${code}: no resend`);
  }
  const p = c.sendDurable("job.plain", {});
  answer(ws, ws.sent.at(-1), "job.plain", { done: true });
  await assert.rejects(p, (e) => e.code === "FAILED_PRECONDITION" && /--durable-types/.test(e.message));
});

test("sendDurable: the overall timeout rejects DEADLINE_EXCEEDED while away; abort and close() end it between attempts", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS, reconnect: false, rpcTimeoutMs: 40 });
  await lastSocket(WS); // never opens
  const t0 = Date.now();
  await assert.rejects(c.sendDurable("job.run", {}, { timeoutMs: 150 }), (e) => e.code === "DEADLINE_EXCEEDED" && /150 ms/.test(e.message));
  assert.ok(Date.now() - t0 >= 145, "not before timeoutMs");

  const ws = await lastSocket(WS);
  ws.open();
  const ac = new AbortController();
  const aborted = c.sendDurable("job.run", {}, { signal: ac.signal });
  refuse(ws, ws.sent.at(-1), "UNAVAILABLE", { retryAfterMs: 5000 });
  await tick(5);
  ac.abort();
  await assert.rejects(aborted, { code: "CANCELLED" });
  await assert.rejects(c.sendDurable("job.run", {}, { signal: ac.signal }), { code: "CANCELLED" });

  const closing = c.sendDurable("job.run", {});
  refuse(ws, ws.sent.at(-1), "UNAVAILABLE", { retryAfterMs: 5000 });
  await tick(5);
  c.close();
  await assert.rejects(closing, { code: "CANCELLED" });
  await assert.rejects(c.sendDurable("job.run", {}), { code: "UNAVAILABLE" });
});

test("rpc: idempotencyKey is sent as meta.idempotencyKey, on the send from the buffer too", async () => {
  const WS = fakeWebSocket();
  const c = connect("ws://edge.test/ws", { WebSocket: WS });
  const buffered = c.rpc("job.run", { n: 1 }, { idempotencyKey: "k-1" });
  const ws = await lastSocket(WS);
  ws.open();
  const plain = c.rpc("calc.add", {});
  const [f, g] = ws.sent;
  assert.equal(f.meta.idempotencyKey, "k-1");
  assert.equal(typeof f.meta.correlationId, "string");
  assert.equal("idempotencyKey" in g.meta, false);
  answer(ws, f, "$ws:accepted", { seq: 3 });
  assert.deepEqual(await buffered, { seq: 3 });
  answer(ws, g, "calc.add", 1);
  assert.equal(await plain, 1);
});
