// An edge restart: the client sees 4000, reconnects with backoff to the new
// edge on the same port and data directory, re-joins its rooms, and sends
// what was asked meanwhile.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "natter-client";
import { startEdge, service, waitState, nextFrame, withTimeout } from "../test-support/edge.mjs";

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

test("reconnect after an edge restart, with re-join and state events", async () => {
  const first = await startEdge();
  cleanup.push(() => first.stop());
  const nc1 = await service(first);

  const c = connect(first.url, { user: "phoenix", reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } });
  cleanup.push(() => c.close());
  const states = [];
  c.onState((s, info) => states.push([s, info?.code]));
  await c.join("ops", { presence: true });
  assert.equal(c.state, "open");

  // A request in flight when the edge goes away rejects UNAVAILABLE.
  const hang = nc1.subscribe("natter.in.test.hang", { max: 1 });
  await nc1.flush();
  const inFlight = c.rpc("test.hang", {}, { timeoutMs: 60_000 }).then(() => null, (e) => e);
  for await (const _ of hang) break;
  await nc1.close();

  await first.stop("SIGTERM");
  await waitState(c, "reconnecting");
  assert.deepEqual(states, [["open", undefined], ["reconnecting", 4000]]);
  assert.equal((await inFlight)?.code, "UNAVAILABLE");

  // Asked while away: buffered, sent after the reconnect and re-join.
  const echoed = c.rpc("echo", { asked: "while away" }, { timeoutMs: 60_000 });

  const second = await startEdge({ port: first.port, dir: first.dir });
  cleanup.push(() => second.stop());
  const nc2 = await service(second);
  cleanup.push(() => nc2.close());
  await waitState(c, "open", 60_000);
  assert.deepEqual(await withTimeout(echoed, 30_000, "echo after reconnect"), { asked: "while away" });
  assert.deepEqual(states, [["open", undefined], ["reconnecting", 4000], ["open", undefined]]);

  // Re-joined: a room publish on the new edge reaches the client.
  assert.deepEqual(c.rooms(), ["ops"]);
  const got = nextFrame(c, "ops.notice");
  nc2.publish("natter.out.room.ops", JSON.stringify({ type: "ops.notice", payload: { text: "back" } }));
  const env = await got;
  assert.deepEqual([env.meta.room, env.payload.text], ["ops", "back"]);
  const page = await c.presence.room("ops");
  assert.deepEqual(page.members.map((m) => m.user), ["phoenix"]);
});
