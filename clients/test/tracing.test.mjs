// Tracing against a real edge, with the real OpenTelemetry SDK: a
// BasicTracerProvider exporting to memory and the AsyncLocalStorage context
// manager, registered globally as an application would. The client makes a
// span per send, sendDurable and rpc, and its frames carry the span's
// context in meta.traceparent / meta.tracestate on both wires.
//
// The tests named "(edge) ..." also read what the edge makes of it: the
// Traceparent/Tracestate NATS headers of what it publishes, and the
// meta.traceparent of what it delivers (docs/design/tracing.md).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as otel from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { headers } from "@nats-io/transport-node";
import { connect } from "natter-client";
import { natterSchemas } from "natter-client/schemas";
import { EnvelopeSchema, createProtobufCodec, metaFromProto, metaToProto } from "natter-client/protobuf";
import { startEdge, service, waitState, nextFrame, connId, until, withTimeout } from "../test-support/edge.mjs";

const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");
const enc = (v) => JSON.stringify(v);
const dec = (m) => JSON.parse(new TextDecoder().decode(m.data));
const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

// The application's OpenTelemetry set-up.
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
otel.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
otel.trace.setGlobalTracerProvider(provider);
const app = otel.trace.getTracer("app");

let edge;
let nc;
const cleanup = [];

before(async () => {
  edge = await startEdge({ args: ["--durable-types", "trace.durable"] });
  nc = await service(edge);
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  await nc?.close();
  await edge?.stop();
});

/** A WebSocket that records every frame the client writes, decoded (binary ones with their Meta.extra as sent). */
class Recording extends WebSocket {
  static frames = [];
  send(data) {
    if (typeof data === "string") {
      Recording.frames.push(JSON.parse(data));
    } else {
      const pb = fromBinary(EnvelopeSchema, new Uint8Array(data.buffer ?? data, data.byteOffset ?? 0, data.byteLength));
      Recording.frames.push({ type: pb.type, meta: pb.meta && metaFromProto(pb.meta), extra: pb.meta?.extra, binary: true });
    }
    super.send(data);
  }
}

/** The last frame of type the client wrote. */
const sent = (type) => until(() => Recording.frames.findLast((f) => f.type === type), 10_000, `a ${type} frame`);

/** A client for this file (recording its frames, with the API passed explicitly unless options say), closed at the end. */
function client(user, options = {}) {
  const c = connect(edge.url, { user, otel, WebSocket: Recording, transports: ["websocket"], reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...options });
  cleanup.push(() => c.close());
  return c;
}
const pbClient = (user, options = {}) => client(user, { wire: "protobuf", schemas: natterSchemas, ...options });

/** Runs fn under a new active span of the application's, ended after; resolves with that span's context and fn's result. */
function underSpan(fn, name = "app.op") {
  return app.startActiveSpan(name, async (span) => {
    try {
      return { parent: span.spanContext(), result: await fn() };
    } finally {
      span.end();
    }
  });
}

/** The finished span named name in trace traceId. */
const finished = (traceId, name) =>
  until(() => exporter.getFinishedSpans().find((s) => s.name === name && s.spanContext().traceId === traceId), 10_000, `span ${name}`);

/** The finished spans of the client (natter.*) in trace traceId. */
const clientSpans = (traceId) => exporter.getFinishedSpans().filter((s) => s.name.startsWith("natter.") && s.spanContext().traceId === traceId);

/** The W3C traceparent of a span context. */
const traceparentOf = (sc) => `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags.toString(16)}`;

/** Answers every request of natter.in.<type> with reply(m) (an envelope), recording the NATS messages. */
async function worker(type, reply = (m) => ({ type: `${type}.ok`, payload: dec(m).payload })) {
  const seen = [];
  const sub = nc.subscribe(`natter.in.${type}`, {
    callback: (err, m) => {
      if (err) return;
      seen.push(m);
      const r = reply(m);
      if (r && m.reply) m.respond(enc(r));
    },
  });
  cleanup.push(() => sub.unsubscribe());
  await nc.flush();
  return seen;
}

/** A remote parent context with a tracestate, as a server that continues a caller's trace has. */
function remoteParent(flags = otel.TraceFlags.SAMPLED, state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") {
  const sc = {
    traceId: [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join(""),
    spanId: "00f067aa0ba902b7",
    traceFlags: flags,
    isRemote: true,
    traceState: otel.createTraceState(state),
  };
  return { sc, ctx: otel.trace.setSpanContext(otel.ROOT_CONTEXT, sc) };
}

test("tracing: send makes a natter.send <type> producer span under the active span, and the frame carries its traceparent", async () => {
  const c = client("tr-send");
  await waitState(c, "open");
  const { parent } = await underSpan(() => c.send("trace.send", { n: 1 }, { custom: "kept" }));
  const span = await finished(parent.traceId, "natter.send trace.send");
  assert.equal(span.kind, otel.SpanKind.PRODUCER);
  assert.equal(span.parentSpanContext?.spanId, parent.spanId);
  assert.equal(span.instrumentationScope.name, "natter-client");
  assert.deepEqual(span.attributes, { "messaging.system": "natter", "natter.type": "trace.send" });
  assert.equal(span.status.code, otel.SpanStatusCode.UNSET);
  const frame = await sent("trace.send");
  assert.equal(frame.meta.traceparent, traceparentOf(span.spanContext()));
  assert.match(frame.meta.traceparent, TRACEPARENT);
  assert.equal(frame.meta.tracestate, undefined);
  assert.equal(frame.meta.custom, "kept");
  // Outside any span: a trace of its own.
  c.send("trace.root", {});
  const root = await sent("trace.root");
  assert.match(root.meta.traceparent, TRACEPARENT);
  assert.notEqual(root.meta.traceparent.slice(3, 35), parent.traceId);
});

test("tracing: rpc makes a natter.rpc <type> client span that ends at the reply, with the request's correlation id", async () => {
  const seen = await worker("trace.rpc");
  const c = client("tr-rpc");
  const { parent, result } = await underSpan(() => c.rpc("trace.rpc", { q: 1 }));
  assert.deepEqual(result, { q: 1 });
  assert.equal(seen.length, 1);
  const span = await finished(parent.traceId, "natter.rpc trace.rpc");
  const frame = await sent("trace.rpc");
  assert.equal(span.kind, otel.SpanKind.CLIENT);
  assert.equal(span.parentSpanContext?.spanId, parent.spanId);
  assert.deepEqual(span.attributes, { "messaging.system": "natter", "natter.type": "trace.rpc", "natter.correlation_id": frame.meta.correlationId });
  assert.equal(span.status.code, otel.SpanStatusCode.UNSET);
  assert.equal(frame.meta.traceparent, traceparentOf(span.spanContext()));
  assert.match(frame.meta.correlationId, /^nc-/);
  assert.ok(frame.meta.timeoutMs > 0);
});

test("tracing: a failed rpc ends its span with status ERROR and natter.error.code", async () => {
  await worker("trace.fail", () => ({ type: "RPC_ERROR", payload: { code: "NOT_FOUND", message: "no such thing" } }));
  await worker("trace.silent", () => undefined);
  const c = client("tr-fail");
  await waitState(c, "open");
  const cases = [
    { name: "the worker's error", type: "trace.fail", code: "NOT_FOUND", call: () => c.rpc("trace.fail", {}) },
    { name: "no worker", type: "trace.nobody", code: "UNAVAILABLE", call: () => c.rpc("trace.nobody", {}) },
    { name: "the deadline", type: "trace.silent", code: "DEADLINE_EXCEEDED", call: () => c.rpc("trace.silent", {}, { timeoutMs: 200 }) },
    {
      name: "an abort", type: "trace.silent", code: "CANCELLED", call: () => {
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 50);
        return c.rpc("trace.silent", {}, { signal: ac.signal, timeoutMs: 10_000 });
      },
    },
  ];
  for (const tc of cases) {
    const { parent, result: err } = await underSpan(() => tc.call().then(() => null, (e) => e));
    assert.equal(err?.code, tc.code, `${tc.name}: ${err}`);
    const span = await finished(parent.traceId, `natter.rpc ${tc.type}`);
    assert.equal(span.status.code, otel.SpanStatusCode.ERROR, tc.name);
    assert.equal(span.status.message, err.message, tc.name);
    assert.equal(span.attributes["natter.error.code"], tc.code, tc.name);
    assert.equal(span.parentSpanContext?.spanId, parent.spanId, tc.name);
  }
});

test("tracing: sendDurable makes a natter.send span that ends once the stream has stored the message", async () => {
  const c = client("tr-durable");
  const { parent, result } = await underSpan(() => c.sendDurable("trace.durable", { job: 1 }, { idempotencyKey: "tr-1" }));
  assert.equal(result.duplicate, false);
  const span = await finished(parent.traceId, "natter.send trace.durable");
  const frame = await sent("trace.durable");
  assert.equal(span.kind, otel.SpanKind.PRODUCER);
  assert.equal(span.parentSpanContext?.spanId, parent.spanId);
  assert.equal(span.attributes["natter.correlation_id"], frame.meta.correlationId);
  assert.equal(frame.meta.traceparent, traceparentOf(span.spanContext()));
  assert.equal(frame.meta.idempotencyKey, "tr-1");
});

test("tracing: the parent's tracestate travels, an unsampled parent's context travels without a span, system frames have none", async () => {
  const c = client("tr-state");
  await waitState(c, "open");
  const { sc, ctx } = remoteParent();
  await otel.context.with(ctx, () => c.rpc("echo", { s: 1 }));
  const span = await finished(sc.traceId, "natter.rpc echo");
  assert.equal(span.parentSpanContext?.spanId, sc.spanId);
  const frame = await sent("echo");
  assert.equal(frame.meta.traceparent, traceparentOf(span.spanContext()));
  assert.equal(frame.meta.tracestate, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");

  // Not sampled: no span is recorded, but the context (flags 00) still goes
  // to the edge, so that the services downstream make the same decision.
  const unsampled = remoteParent(otel.TraceFlags.NONE, "k=v");
  otel.context.with(unsampled.ctx, () => c.send("trace.unsampled", {}));
  const quiet = await sent("trace.unsampled");
  assert.match(quiet.meta.traceparent, new RegExp(`^00-${unsampled.sc.traceId}-[0-9a-f]{16}-00$`));
  assert.equal(quiet.meta.tracestate, "k=v");

  // The client's own frames ($join ...) make no spans and carry no context.
  const joined = await underSpan(() => c.join("tr-room"));
  const join = await sent("$join");
  assert.equal(join.meta?.traceparent, undefined);
  assert.deepEqual(clientSpans(joined.parent.traceId), []);
  assert.deepEqual(clientSpans(unsampled.sc.traceId), []);
});

test("tracing: an application's own meta.traceparent is sent as it is", async () => {
  const c = client("tr-own");
  await waitState(c, "open");
  const own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const { parent } = await underSpan(() => c.send("trace.own", {}, { traceparent: own, tracestate: "mine=1" }));
  const frame = await sent("trace.own");
  assert.equal(frame.meta.traceparent, own);
  assert.equal(frame.meta.tracestate, "mine=1");
  // The span is still made, as in the Go client; only the carrier is the application's.
  await finished(parent.traceId, "natter.send trace.own");
});

test("tracing: a registered W3C propagator writes the same meta as the client's own format", async () => {
  const c = client("tr-prop");
  await waitState(c, "open");
  const { sc, ctx } = remoteParent();
  // Without a propagator (the API's default does nothing): the client's format.
  otel.context.with(ctx, () => c.send("trace.noprop", {}));
  const own = await sent("trace.noprop");
  // With OpenTelemetry's W3C propagator registered.
  otel.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  try {
    otel.context.with(ctx, () => c.send("trace.prop", {}));
  } finally {
    otel.propagation.disable();
  }
  const theirs = await sent("trace.prop");
  const [a, b] = [await finished(sc.traceId, "natter.send trace.noprop"), await finished(sc.traceId, "natter.send trace.prop")];
  assert.equal(own.meta.traceparent, traceparentOf(a.spanContext()));
  assert.equal(theirs.meta.traceparent, traceparentOf(b.spanContext()));
  assert.equal(own.meta.tracestate, theirs.meta.tracestate);
  // The propagator's own reading of the client's format gives the span back.
  const read = otel.trace.getSpanContext(new W3CTraceContextPropagator().extract(otel.ROOT_CONTEXT, own.meta, otel.defaultTextMapGetter));
  assert.deepEqual([read.traceId, read.spanId, read.traceFlags, read.traceState.serialize()],
    [sc.traceId, a.spanContext().spanId, 1, own.meta.tracestate]);
});

test("tracing: protobuf wire: the context travels in Meta.extra", async () => {
  const c = pbClient("tr-pb");
  await waitState(c, "open");
  const { parent } = await underSpan(async () => {
    c.send("trace.pbsend", { n: 1 });
    return c.rpc("echo", { pb: true });
  });
  const sendSpan = await finished(parent.traceId, "natter.send trace.pbsend");
  const rpcSpan = await finished(parent.traceId, "natter.rpc echo");
  const s = await sent("trace.pbsend");
  const r = Recording.frames.findLast((f) => f.type === "echo" && f.binary);
  assert.ok(s.binary && r, "binary frames");
  assert.equal(JSON.parse(s.extra).traceparent, traceparentOf(sendSpan.spanContext()));
  assert.equal(r.meta.traceparent, traceparentOf(rpcSpan.spanContext()));
  assert.equal(r.meta.correlationId, rpcSpan.attributes["natter.correlation_id"]);
});

test("tracing: traceparent and tracestate survive the client's protobuf encoding both ways", () => {
  const meta = {
    correlationId: "nc-1", timeoutMs: 5000, room: "r",
    traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: "rojo=00f067aa0ba902b7",
    custom: { k: [1] },
  };
  const pm = metaToProto(meta);
  assert.deepEqual(JSON.parse(pm.extra), { traceparent: meta.traceparent, tracestate: meta.tracestate, custom: { k: [1] } });
  assert.deepEqual(metaFromProto(pm), meta);
  // The whole frame, as the codec writes and reads it.
  const codec = createProtobufCodec(natterSchemas);
  const bytes = codec.encode({ type: "trace.x", meta, payload: enc({ a: 1 }) });
  assert.deepEqual(metaFromProto(fromBinary(EnvelopeSchema, bytes).meta), meta);
  const back = codec.decode(toBinary(EnvelopeSchema, fromBinary(EnvelopeSchema, bytes)));
  assert.deepEqual([back.type, back.meta, back.payload], ["trace.x", meta, { a: 1 }]);
});

test("tracing: without the otel option the client imports @opentelemetry/api itself", async () => {
  const c = client("tr-auto", { otel: undefined });
  await waitState(c, "open");
  const { parent } = await underSpan(() => c.send("trace.auto", {}));
  const span = await finished(parent.traceId, "natter.send trace.auto");
  assert.equal((await sent("trace.auto")).meta.traceparent, traceparentOf(span.spanContext()));
});

test("tracing: tracerProvider makes the spans instead of the global provider", async () => {
  const mine = new InMemorySpanExporter();
  const c = client("tr-provider", { tracerProvider: new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(mine)] }) });
  await waitState(c, "open");
  const { parent } = await underSpan(() => c.send("trace.provider", {}));
  const span = await until(() => mine.getFinishedSpans().find((s) => s.name === "natter.send trace.provider"));
  assert.equal(span.parentSpanContext?.spanId, parent.spanId);
  assert.deepEqual(clientSpans(parent.traceId), []);
});

test("tracing: otel: false makes no spans and sends no trace context", async () => {
  const seen = await worker("trace.off");
  const c = client("tr-off", { otel: false });
  const { parent, result } = await underSpan(async () => {
    c.send("trace.offsend", {}, { custom: 1 });
    return c.rpc("trace.off", { x: 1 });
  });
  assert.deepEqual(result, { x: 1 });
  assert.deepEqual((await sent("trace.offsend")).meta, { custom: 1 });
  assert.equal((await sent("trace.off")).meta.traceparent, undefined);
  assert.equal(seen[0].headers?.get("Traceparent") ?? "", "");
  assert.deepEqual(clientSpans(parent.traceId), []);
  assert.throws(() => connect(edge.url, { otel: {} }), /options\.otel/);
});

test("tracing: where @opentelemetry/api cannot be imported, the client works without spans", async () => {
  // The built client copied where no node_modules is above it: its import
  // of the API fails, as in an application that has not installed it.
  const dir = mkdtempSync(join(tmpdir(), "natter-no-otel-"));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(dist, dir, { recursive: true });
  writeFileSync(join(dir, "probe.js"), `export const api = import("@opentelemetry/api");\n`);
  const probe = await import(pathToFileURL(join(dir, "probe.js")).href);
  await assert.rejects(probe.api, /Cannot find (package|module)/, "the premise: nothing installed above " + dir);
  const bare = await import(pathToFileURL(join(dir, "natter.js")).href);

  const seen = await worker("trace.absent");
  const c = bare.connect(edge.url, { user: "tr-absent", WebSocket: Recording, transports: ["websocket"] });
  cleanup.push(() => c.close());
  await waitState(c, "open");
  const { parent, result } = await underSpan(async () => {
    c.send("trace.absentsend", { n: 1 });
    return c.rpc("trace.absent", { y: 2 });
  });
  assert.deepEqual(result, { y: 2 });
  assert.equal((await sent("trace.absentsend")).meta, undefined);
  assert.equal((await sent("trace.absent")).meta.traceparent, undefined);
  assert.equal(seen[0].headers?.get("Traceparent") ?? "", "");
  assert.deepEqual(clientSpans(parent.traceId), []);
});

test("tracing: the public types do not import @opentelemetry/api", () => {
  for (const name of readdirSync(dist).filter((n) => n.endsWith(".d.ts"))) {
    const dts = readFileSync(join(dist, name), "utf8");
    // Import declarations, import types and reference directives (doc comments may name the package).
    assert.doesNotMatch(dts, /^\s*(?:import|export)\b[^\n]*\bfrom\s*["']@opentelemetry\/|\bimport\(\s*["']@opentelemetry\/|reference\s+types=["']@opentelemetry\//m, `dist/${name}`);
  }
});

test("(edge) tracing: the worker's NATS messages carry the client span's context as Traceparent/Tracestate headers, on both wires", async () => {
  const workers = { json: await worker("trace.hdr.json"), pb: await worker("trace.hdr.pb") };
  const events = await worker("trace.hdr.event");
  const stored = [];
  const sub = nc.subscribe("natter.work.trace.durable", { callback: (err, m) => !err && stored.push(m) });
  cleanup.push(() => sub.unsubscribe());
  await nc.flush();
  for (const [wire, c] of [["json", client("tr-hdr-json")], ["pb", pbClient("tr-hdr-pb")]]) {
    await waitState(c, "open");
    const { sc, ctx } = remoteParent();
    await otel.context.with(ctx, async () => {
      c.send("trace.hdr.event", { wire });
      await c.rpc(`trace.hdr.${wire}`, { wire });
    });
    const [send, rpc] = [await finished(sc.traceId, "natter.send trace.hdr.event"), await finished(sc.traceId, `natter.rpc trace.hdr.${wire}`)];
    const request = workers[wire].at(-1);
    assert.equal(request.headers?.get("Traceparent"), traceparentOf(rpc.spanContext()), `${wire}: the request's header`);
    assert.equal(request.headers?.get("Tracestate"), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", wire);
    // With tracing off the edge leaves valid keys in the body, saying what
    // the headers say (docs/protocol.md, "Trace context").
    assert.equal(dec(request).meta.traceparent, traceparentOf(rpc.spanContext()), wire);
    const event = await until(() => events.find((m) => dec(m).payload.wire === wire), 10_000, `${wire}: the publish`);
    assert.equal(event.headers?.get("Traceparent"), traceparentOf(send.spanContext()), `${wire}: the publish's header`);
    assert.equal(dec(event).meta?.traceparent, traceparentOf(send.spanContext()), wire);
  }
  const c = client("tr-hdr-durable");
  const { parent } = await underSpan(() => c.sendDurable("trace.durable", { job: 2 }, { idempotencyKey: "tr-hdr-2" }));
  const span = await finished(parent.traceId, "natter.send trace.durable");
  const m = await until(() => stored.find((m) => dec(m).payload.job === 2), 10_000, "the stored message");
  assert.equal(m.headers?.get("Traceparent"), traceparentOf(span.spanContext()), "the stored message's header");
});

test("(edge) tracing: a delivery's Traceparent header reaches the application untouched in meta.traceparent, on both wires", async () => {
  const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  for (const c of [client("tr-in-json", { otel: false }), pbClient("tr-in-pb", { otel: false })]) {
    const conn = await connId(nc, c);
    const got = nextFrame(c, "trace.delivered");
    const h = headers();
    h.set("Traceparent", tp);
    h.set("Tracestate", "rojo=1");
    nc.publish(`natter.out.conn.${conn}`, enc({ type: "trace.delivered", meta: { custom: "x" }, payload: { n: 1 } }), { headers: h });
    const env = await withTimeout(got, 10_000, "delivery");
    assert.equal(env.meta.traceparent, tp);
    assert.equal(env.meta.tracestate, "rojo=1");
    assert.equal(env.meta.custom, "x");
  }
});
