// The wires' own logic: the SSE parser of the fallback transport, and the
// protobuf codec's envelope and meta conversion (docs/protocol.md, "Binary
// wire"), without an edge.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { natterSchemas } from "natter-client/schemas";
import { createProtobufCodec, metaFromProto, metaToProto, EnvelopeSchema, MetaSchema } from "natter-client/protobuf";
import { SseParser } from "../dist/sse.js";
import { jsonCodec } from "../dist/wire.js";

/** Feeds chunks to a parser and returns what it saw. */
function parse(...chunks) {
  const seen = [];
  const p = new SseParser((ev) => seen.push(ev), (c) => seen.push({ comment: c }));
  for (const c of chunks) p.push(c);
  return seen;
}

test("SseParser: events, default type, multi-line data, ids, comments", () => {
  const seen = parse(
    "event: session\ndata: {\"session\":\"a.b\"}\n\n",
    ": ping\n",
    "data: one\ndata: two\n\n",
    "id: e=1&r.x=5\ndata:no-space\n\n",
    "data\n\n", // a field without a colon: empty data
  );
  assert.deepEqual(seen, [
    { event: "session", data: "{\"session\":\"a.b\"}", id: "" },
    { comment: "ping" },
    { event: "message", data: "one\ntwo", id: "" },
    { event: "message", data: "no-space", id: "e=1&r.x=5" },
    { event: "message", data: "", id: "e=1&r.x=5" },
  ]);
});

test("SseParser: any chunking, CRLF and CR line ends, a BOM, ignored fields", () => {
  const stream = "\uFEFFevent: close\r\ndata: {\"code\":4001,\r\ndata: \"reason\":\"slow consumer\"}\r\n\r\nretry: 10\rfoo: bar\rdata: x\r\r";
  const want = [
    { event: "close", data: "{\"code\":4001,\n\"reason\":\"slow consumer\"}", id: "" },
    { event: "message", data: "x", id: "" },
  ];
  assert.deepEqual(parse(stream), want);
  // Every split point, including between CR and LF.
  for (let i = 1; i < stream.length; i++) assert.deepEqual(parse(stream.slice(0, i), stream.slice(i)), want, `split at ${i}`);
  // One character at a time.
  assert.deepEqual(parse(...stream), want);
});

test("SseParser: an event without data is not dispatched; the event type resets after each event", () => {
  assert.deepEqual(parse("event: session\n\ndata: a\n\n"), [{ event: "message", data: "a", id: "" }]);
  // An unfinished event at the end of the stream is not dispatched.
  assert.deepEqual(parse("data: a\n\ndata: unfinished\n"), [{ event: "message", data: "a", id: "" }]);
});

test("jsonCodec: the frame as the JSON wire writes it; anything but an envelope decodes to undefined", () => {
  assert.equal(jsonCodec.encode({ type: "a.b", meta: { room: "r" }, payload: "{\"x\":1}" }), "{\"type\":\"a.b\",\"meta\":{\"room\":\"r\"},\"payload\":{\"x\":1}}");
  assert.equal(jsonCodec.encode({ type: "a.b" }), "{\"type\":\"a.b\"}");
  assert.deepEqual(jsonCodec.decode("{\"type\":\"x\",\"payload\":1}"), { type: "x", payload: 1 });
  for (const bad of ["nope", "[]", "{\"type\":1}", "null", new Uint8Array([1])]) assert.equal(jsonCodec.decode(bad), undefined, String(bad));
});

const codec = createProtobufCodec(natterSchemas);
const decodeOut = (bytes) => fromBinary(EnvelopeSchema, bytes);

test("protobuf codec: a client-direction schema type's payload is protobuf; others are JSON text", () => {
  const send = decodeOut(codec.encode({ type: "chat.send", payload: JSON.stringify({ room: "r1", text: "hi" }) }));
  assert.equal(send.type, "chat.send");
  assert.equal(send.body.case, "payload");
  assert.equal(send.meta, undefined);
  // No schema: JSON text, as is.
  const echo = decodeOut(codec.encode({ type: "echo", payload: "{\"any\":[1,2]}" }));
  assert.deepEqual(echo.body, { case: "json", value: "{\"any\":[1,2]}" });
  // A system type, and a server-direction-only type sent by the client: JSON.
  assert.equal(decodeOut(codec.encode({ type: "$join", payload: "{\"room\":\"r\"}" })).body.case, "json");
  assert.equal(decodeOut(codec.encode({ type: "chat.message", payload: "{\"text\":\"t\"}" })).body.case, "json");
  // JSON the message cannot hold (an unknown key, a wrong type) stays JSON, for the edge to judge.
  assert.deepEqual(decodeOut(codec.encode({ type: "chat.send", payload: "{\"room\":\"r\",\"bogus\":1}" })).body, { case: "json", value: "{\"room\":\"r\",\"bogus\":1}" });
  assert.equal(decodeOut(codec.encode({ type: "chat.send", payload: "{\"room\":5}" })).body.case, "json");
  // No payload, and null, are no body.
  assert.equal(decodeOut(codec.encode({ type: "ping" })).body.case, undefined);
  assert.equal(decodeOut(codec.encode({ type: "chat.send", payload: "null" })).body.case, undefined);
  // An empty message is a payload of no bytes.
  assert.deepEqual(decodeOut(codec.encode({ type: "ping", payload: "{}" })).body.case, "payload");
});

test("protobuf codec: meta fields and extra, both ways", () => {
  const out = decodeOut(codec.encode({
    type: "calc.add",
    meta: { correlationId: "nc-1", timeoutMs: 1500, idempotencyKey: "k1", custom: { a: [1] }, skipped: undefined },
    payload: "{}",
  }));
  assert.equal(out.meta.correlationId, "nc-1");
  assert.equal(out.meta.timeoutMs, 1500n);
  assert.equal(out.meta.timestamp, undefined);
  assert.deepEqual(JSON.parse(out.meta.extra), { idempotencyKey: "k1", custom: { a: [1] } });

  assert.equal(metaToProto(undefined), undefined);
  assert.equal(metaToProto({}), undefined);
  assert.equal(metaToProto({ gone: undefined }), undefined);
  const all = metaToProto({ correlationId: "c", timeoutMs: 5, timestamp: 1700000000000, room: "r", offset: 42, epoch: "e1" });
  assert.deepEqual([all.correlationId, all.timeoutMs, all.timestamp, all.room, all.offset, all.epoch, all.extra], ["c", 5n, 1700000000000n, "r", 42n, "e1", ""]);
  // A known key whose value does not fit its field goes to extra (the edge refuses it, as it refuses such JSON).
  assert.deepEqual(JSON.parse(metaToProto({ timeoutMs: "5", offset: -1, room: 7 }).extra), { timeoutMs: "5", offset: -1, room: 7 });

  const pm = create(MetaSchema, { correlationId: "srv-1", room: "lobby", offset: 7n, epoch: "ep", timestamp: 12n, extra: "{\"user\":\"bob\",\"n\":[1]}" });
  assert.deepEqual(metaFromProto(pm), { user: "bob", n: [1], correlationId: "srv-1", room: "lobby", offset: 7, epoch: "ep", timestamp: 12 });
  assert.equal(metaFromProto(create(MetaSchema)), undefined);
  assert.deepEqual(metaFromProto(create(MetaSchema, { timeoutMs: 0n })), { timeoutMs: 0 });
  assert.equal(metaFromProto(create(MetaSchema, { extra: "[1]" })), undefined);
});

/** The bytes of an envelope from the edge: a server-direction payload of message desc. */
function fromEdge(init) {
  return toBinary(EnvelopeSchema, create(EnvelopeSchema, init));
}

test("protobuf codec: incoming payloads decode to protojson (defaults left out) with 64-bit integers as numbers; json bodies parse", async () => {
  const { createFileRegistry } = await import("@bufbuild/protobuf");
  const { FileDescriptorSetSchema } = await import("@bufbuild/protobuf/wkt");
  const { base64Decode } = await import("@bufbuild/protobuf/wire");
  const reg = createFileRegistry(fromBinary(FileDescriptorSetSchema, base64Decode(natterSchemas.descriptorSet)));
  const ChatMessage = reg.getMessage("natter.chat.v1.ChatMessage");
  const msg = toBinary(ChatMessage, create(ChatMessage, { room: "r1", text: "hi", ts: 1700000000123n }));
  const env = codec.decode(fromEdge({ type: "chat.message", meta: { room: "r1", offset: 3n, epoch: "e" }, body: { case: "payload", value: msg } }).buffer);
  assert.deepEqual(env, { type: "chat.message", meta: { room: "r1", offset: 3, epoch: "e" }, payload: { room: "r1", text: "hi", ts: 1700000000123 } });
  // A Uint8Array (Node's Buffer, the ws package) decodes as well as an ArrayBuffer.
  assert.deepEqual(codec.decode(fromEdge({ type: "$joined", body: { case: "json", value: "{\"room\":\"r\"}" } })), { type: "$joined", payload: { room: "r" } });
  assert.deepEqual(codec.decode(fromEdge({ type: "$left" })), { type: "$left" });
  // Garbage is no envelope; a payload of a type without a schema is an error the connection reports.
  assert.equal(codec.decode(new Uint8Array([0xff, 0xff, 0xff])), undefined);
  assert.equal(codec.decode("{\"type\":\"x\"}"), undefined);
  assert.equal(codec.decode(fromEdge({ type: "x", body: { case: "json", value: "{nope" } })), undefined);
  assert.throws(() => codec.decode(fromEdge({ type: "no.schema", body: { case: "payload", value: new Uint8Array() } })), { name: "PayloadError" });
});

test("createProtobufCodec: refuses schemas whose descriptor set lacks a named message", () => {
  assert.throws(() => createProtobufCodec({ ...natterSchemas, client: { "x.y": "no.such.Message" } }), /no\.such\.Message/);
  assert.throws(() => createProtobufCodec({ descriptorSet: "!!!", client: {}, server: {} }), TypeError);
});

test("protobuf codec: 64-bit integers become numbers in every place a message holds them; map keys and well-known types keep their JSON", async () => {
  const { createFileRegistry, toJson } = await import("@bufbuild/protobuf");
  const { FileDescriptorProtoSchema, FileDescriptorSetSchema, file_google_protobuf_wrappers } = await import("@bufbuild/protobuf/wkt");
  const { base64Encode } = await import("@bufbuild/protobuf/wire");
  // t/v1/num.proto, by hand (CI has no protoc):
  //   message Inner { fixed64 f = 1; }
  //   message Num { int64 a = 1; repeated uint64 list = 2; map<int64, sint64> byId = 3; Inner inner = 4;
  //                 repeated Inner inners = 5; google.protobuf.Int64Value boxed = 6; string s = 7; int32 small = 8; sfixed64 neg = 9; }
  const LABEL_OPT = 1, LABEL_REP = 3;
  const T = { INT64: 3, UINT64: 4, INT32: 5, FIXED64: 6, STRING: 9, MESSAGE: 11, SFIXED64: 16, SINT64: 18 };
  const field = (name, number, type, label = LABEL_OPT, typeName) => ({ name, number, type, label, jsonName: name, ...(typeName ? { typeName } : {}) });
  const file = create(FileDescriptorProtoSchema, {
    name: "t/v1/num.proto", package: "t.v1", syntax: "proto3", dependency: ["google/protobuf/wrappers.proto"],
    messageType: [
      { name: "Inner", field: [field("f", 1, T.FIXED64)] },
      {
        name: "Num",
        field: [
          field("a", 1, T.INT64), field("list", 2, T.UINT64, LABEL_REP), field("byId", 3, T.MESSAGE, LABEL_REP, ".t.v1.Num.ByIdEntry"),
          field("inner", 4, T.MESSAGE, LABEL_OPT, ".t.v1.Inner"), field("inners", 5, T.MESSAGE, LABEL_REP, ".t.v1.Inner"),
          field("boxed", 6, T.MESSAGE, LABEL_OPT, ".google.protobuf.Int64Value"), field("s", 7, T.STRING), field("small", 8, T.INT32),
          field("neg", 9, T.SFIXED64),
        ],
        nestedType: [{ name: "ByIdEntry", field: [field("key", 1, T.INT64), field("value", 2, T.SINT64)], options: { mapEntry: true } }],
      },
    ],
  });
  const set = create(FileDescriptorSetSchema, { file: [file_google_protobuf_wrappers.proto, file] });
  const schemas = { descriptorSet: base64Encode(toBinary(FileDescriptorSetSchema, set)), client: {}, server: { "t.num": "t.v1.Num" } };
  const reg = createFileRegistry(set);
  const Num = reg.getMessage("t.v1.Num");
  const msg = create(Num, {
    a: 9007199254740993n, list: [1n, 2n], byId: { "7": -3n }, inner: { f: 5n }, inners: [{ f: 6n }, {}],
    boxed: 8n, s: "12", small: 4, neg: -9n,
  });
  // protojson: strings.
  assert.equal(toJson(Num, msg, { registry: reg }).a, "9007199254740993");
  const env = createProtobufCodec(schemas).decode(fromEdge({ type: "t.num", body: { case: "payload", value: toBinary(Num, msg) } }));
  assert.deepEqual(env.payload, {
    a: 9007199254740992, // rounded past 2^53, as JSON.parse rounds it for a JSON client
    list: [1, 2], byId: { "7": -3 }, inner: { f: 5 }, inners: [{ f: 6 }, {}],
    boxed: "8", // google.protobuf.Int64Value keeps its own JSON form
    s: "12", small: 4, neg: -9,
  });
});
