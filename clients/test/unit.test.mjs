// The client's own logic against a scripted WebSocket: backoff, close-code
// policy, the send buffer and its overflow policies, tokens, re-joins.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, backoffDelay, shouldReconnect, NatterError } from "natter-client";
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
