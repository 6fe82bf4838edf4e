// Tokens against an edge that verifies HS256 JWTs: the token goes out as a
// subprotocol, $auth.expiring makes the client refresh by itself, and a
// bad handshake is retried rather than fatal.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "natter-client";
import { startEdge, dataDir, nextFrame, waitState, withTimeout } from "../test-support/edge.mjs";

const secret = "client-test-secret-of-enough-length-0123456789";
let edge;

/** An HS256 JWT for sub, expiring in ttlSec seconds. */
function jwt(sub, ttlSec) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSec })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

before(async () => {
  const dir = dataDir();
  const file = join(dir, "secret");
  writeFileSync(file, secret);
  edge = await startEdge({ dir, args: ["--jwt-secret-file", file, "--refresh-window", "4s"] });
});

after(() => edge?.stop());

test("token: sent at the handshake, refreshed on $auth.expiring", async () => {
  const issued = [];
  const c = connect(edge.url, {
    // The first token expires soon: the edge asks for a new one at once.
    token: () => {
      const t = jwt("tess", issued.length === 0 ? 5 : 3600);
      issued.push(t);
      return t;
    },
    reconnect: false,
  });
  try {
    const expiring = nextFrame(c, "$auth.expiring");
    // The reply to the client's own $auth.refresh: only "*" sees it.
    const refreshed = withTimeout(new Promise((resolve) => c.on("*", (_, env) => env.type === "$auth.refreshed" && resolve(env))), 30_000, "$auth.refreshed");
    assert.deepEqual(await c.rpc("echo", "hi"), "hi");
    assert.ok((await expiring).payload.expiresAt > Date.now());
    const r = (await refreshed).payload;
    assert.equal(r.user, "tess");
    assert.ok(r.expiresAt > Date.now() + 3000_000, "the new token's expiry");
    assert.equal(issued.length, 2);
    // A token for someone else is refused; the connection stays.
    const other = connect(edge.url, { token: () => jwt("tess", 3600), reconnect: false });
    await waitState(other, "open");
    const swap = { n: 0 };
    const impostor = connect(edge.url, { token: () => jwt(swap.n++ === 0 ? "ivy" : "mallory", 3600), reconnect: false });
    await waitState(impostor, "open");
    await assert.rejects(impostor.refreshToken(), { code: "PERMISSION_DENIED" });
    assert.equal(impostor.state, "open");
    other.close();
    impostor.close();
  } finally {
    c.close();
  }
});

test("token: a refused handshake (401) is retried with backoff, not fatal", async () => {
  let calls = 0;
  const c = connect(edge.url, {
    token: () => (++calls < 3 ? "not-a-jwt" : jwt("tess", 3600)),
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  try {
    await waitState(c, "open");
    assert.equal(calls, 3);
    assert.deepEqual(await c.rpc("echo", 1), 1);
  } finally {
    c.close();
  }
});

test("token over sse: an Authorization header on the stream and the POSTs; a refused one (401) is retried", async () => {
  const headers = [];
  const f = (url, init = {}) => {
    headers.push([init.method ?? "GET", init.headers?.Authorization]);
    return fetch(url, init);
  };
  let calls = 0;
  const c = connect(edge.url, {
    transports: ["sse"],
    fetch: f,
    token: () => (++calls < 2 ? "not-a-jwt" : jwt("sasha", 3600)),
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
  });
  try {
    const connected = nextFrame(c, "$connected");
    await waitState(c, "open");
    assert.equal((await connected).payload.user, "sasha");
    assert.deepEqual(await c.rpc("echo", "authed"), "authed");
    assert.equal(calls, 2);
    assert.deepEqual(headers[0], ["GET", "Bearer not-a-jwt"]);
    assert.ok(headers.slice(1).every(([, h]) => h?.startsWith("Bearer ey")), JSON.stringify(headers.slice(1)));
    assert.ok(headers.some(([m]) => m === "POST"));
  } finally {
    c.close();
  }
});

test("token over sse: a token that is no WebSocket subprotocol goes in the header", async () => {
  // base64 with "/" and "=": refused as a subprotocol, fine in a header; the edge refuses it as a JWT.
  const c = connect(edge.url, { token: "a/b=", transports: ["sse"], reconnect: false });
  const closed = await waitState(c, "closed");
  assert.match(closed.reason, /401/);
});
