// heartbeatMs against an edge with --idle-timeout: a client that sends
// __heartbeat stays connected, one that sends nothing is closed with 4002,
// over a WebSocket and over sse alike.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "natter-client";
import { startEdge, waitState } from "../test-support/edge.mjs";

let edge;
before(async () => {
  edge = await startEdge({ args: ["--idle-timeout", "1s"] });
});
after(() => edge?.stop());

for (const transport of ["websocket", "sse"]) test(`heartbeatMs keeps a connection past the edge's idle timeout (${transport})`, async () => {
  const options = { transports: [transport], reconnect: { initialDelayMs: 50, maxDelayMs: 200 } };
  const beating = connect(edge.url, { user: "beat", heartbeatMs: 300, ...options });
  const silent = connect(edge.url, { user: "quiet", ...options });
  try {
    const drops = [];
    beating.onState((s, info) => s === "reconnecting" && drops.push(info?.code));
    await waitState(beating, "open");
    await waitState(silent, "open");
    const idle = await waitState(silent, "reconnecting", 10_000);
    assert.equal(idle.code, 4002);
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(drops, []);
    assert.equal(beating.state, "open");
  } finally {
    beating.close();
    silent.close();
  }
});
