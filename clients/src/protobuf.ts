/**
 * The binary wire (docs/protocol.md#binary-wire): the subprotocol
 * "natter.protobuf", one natter.v1.Envelope per binary frame. The protobuf
 * work is @bufbuild/protobuf's: the Envelope's generated code
 * (gen/natter/v1/envelope_pb.ts) and the payloads' messages from the
 * schemas' descriptor set (natterSchemas of messages.gen.ts).
 *
 * The application keeps JSON-shaped payloads. Out: a payload of a type
 * with a client-direction schema is protojson-parsed into its message and
 * travels encoded in `payload`; everything else (no schema, system types,
 * JSON the message does not hold) travels as JSON text in `json`. In: a
 * `payload` decodes with the type's server-direction message into its
 * protojson form (enums by name, defaults left out), except that 64-bit
 * integers are JSON numbers, not protojson's strings: what a JSON client
 * gets for the same message, so that an application sees the same
 * payloads on both wires (the edge converts protobuf frames the same way,
 * and so does the Go client).
 *
 * connection.ts loads this module with a dynamic import, only for
 * wire: "protobuf".
 */
import { create, createFileRegistry, fromBinary, fromJsonString, ScalarType, toBinary, toJson, type DescField, type DescMessage, type FileRegistry, type JsonValue } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { base64Decode } from "@bufbuild/protobuf/wire";
import type { Envelope, Meta } from "./envelope.js";
import { EnvelopeSchema, MetaSchema, type Meta as ProtoMeta } from "./gen/natter/v1/envelope_pb.js";
import type { Codec, Frame, Schemas } from "./wire.js";

export { EnvelopeSchema, MetaSchema };

/** The subprotocol of the binary wire. */
export const SUBPROTOCOL = "natter.protobuf";

/** A payload the client cannot decode: its type has no server-direction schema in options.schemas, or the bytes are not its message. */
export class PayloadError extends Error {
  override name = "PayloadError";
}

/**
 * The binary wire's codec for schemas. Throws a TypeError when the
 * descriptor set does not load or lacks a message the maps name.
 */
export function createProtobufCodec(schemas: Schemas): Codec {
  let registry: FileRegistry;
  try {
    registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, base64Decode(schemas.descriptorSet)));
  } catch (err) {
    throw new TypeError(`natter: options.schemas.descriptorSet does not load: ${err instanceof Error ? err.message : String(err)}`);
  }
  const messages = (names: { readonly [type: string]: string }): Map<string, DescMessage> => {
    const m = new Map<string, DescMessage>();
    for (const [type, name] of Object.entries(names)) {
      const desc = registry.getMessage(name);
      if (!desc) throw new TypeError(`natter: options.schemas names ${name} for ${type}, which its descriptor set lacks`);
      m.set(type, desc);
    }
    return m;
  };
  const client = messages(schemas.client);
  const server = messages(schemas.server);

  return {
    subprotocol: SUBPROTOCOL,
    binary: true,
    encode(frame: Frame): Uint8Array<ArrayBuffer> {
      const env = create(EnvelopeSchema, { type: frame.type });
      const meta = metaToProto(frame.meta);
      if (meta) env.meta = meta;
      const p = frame.payload;
      if (p !== undefined && p !== "null") {
        const bin = payloadToProto(client.get(frame.type), p, registry);
        env.body = bin ? { case: "payload", value: bin } : { case: "json", value: p };
      }
      return toBinary(EnvelopeSchema, env);
    },
    decode(data: unknown): Envelope | undefined {
      const bytes = asBytes(data);
      if (!bytes) return undefined;
      let pb;
      try {
        pb = fromBinary(EnvelopeSchema, bytes);
      } catch {
        return undefined;
      }
      const env: Envelope = { type: pb.type };
      const meta = pb.meta ? metaFromProto(pb.meta) : undefined;
      if (meta) env.meta = meta;
      switch (pb.body.case) {
        case "json":
          try {
            env.payload = JSON.parse(pb.body.value);
          } catch {
            return undefined;
          }
          break;
        case "payload": {
          const desc = server.get(pb.type);
          if (!desc) throw new PayloadError(`${pb.type}: a protobuf payload, but options.schemas has no server message for the type`);
          try {
            env.payload = int64sAsNumbers(desc, toJson(desc, fromBinary(desc, pb.body.value), { registry }));
          } catch (err) {
            throw new PayloadError(`${pb.type}: the payload is not a ${desc.typeName}: ${err instanceof Error ? err.message : String(err)}`);
          }
          break;
        }
      }
      return env;
    },
  };
}

/** The message encoding of JSON text p, or undefined when it stays JSON (no schema, or JSON the message does not hold). */
function payloadToProto(desc: DescMessage | undefined, p: string, registry: FileRegistry): Uint8Array | undefined {
  if (!desc) return undefined;
  try {
    return toBinary(desc, fromJsonString(desc, p, { registry }));
  } catch {
    return undefined;
  }
}

const INT64S = new Set<ScalarType>([ScalarType.INT64, ScalarType.UINT64, ScalarType.FIXED64, ScalarType.SFIXED64, ScalarType.SINT64]);
const DIGITS = /^-?\d+$/;

/**
 * Rewrites, in place, the 64-bit integers of v, the protojson of message
 * desc, from strings to numbers (past 2^53 they round, as JSON.parse
 * rounds them for a JSON client). Map keys stay strings, as in any JSON;
 * well-known types (Timestamp, wrappers, Struct ...) keep their own JSON
 * forms. Returns v.
 */
export function int64sAsNumbers(desc: DescMessage, v: JsonValue, depth = 0): JsonValue {
  if (depth > 100 || desc.typeName.startsWith("google.protobuf.") || typeof v !== "object" || v === null || Array.isArray(v)) return v;
  for (const f of desc.fields) {
    const key = f.jsonName in v ? f.jsonName : f.name;
    const val = v[key];
    if (val === undefined) continue;
    if (f.fieldKind === "map") {
      if (typeof val === "object" && val !== null && !Array.isArray(val)) {
        for (const k of Object.keys(val)) val[k] = numberValue(f, val[k]!, depth);
      }
    } else if (f.fieldKind === "list") {
      if (Array.isArray(val)) val.forEach((e, i) => (val[i] = numberValue(f, e, depth)));
    } else {
      v[key] = numberValue(f, val, depth);
    }
  }
  return v;
}

/** One value of field f (an element of a list, a value of a map) with its 64-bit integers as numbers. */
function numberValue(f: DescField, v: JsonValue, depth: number): JsonValue {
  if (f.scalar !== undefined && INT64S.has(f.scalar)) return typeof v === "string" && DIGITS.test(v) ? Number(v) : v;
  return f.message ? int64sAsNumbers(f.message, v, depth + 1) : v;
}

function asBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v);

/**
 * The protobuf Meta of a JSON meta: correlationId, timeoutMs, timestamp,
 * room, offset and epoch as fields when their values fit them, every
 * other key (and a known one whose value does not fit: the edge refuses
 * it, as it refuses such JSON) in extra, a JSON object. Undefined when
 * nothing is set.
 */
export function metaToProto(meta: Meta | undefined): ProtoMeta | undefined {
  if (!meta) return undefined;
  const m = create(MetaSchema);
  const extra: Record<string, unknown> = {};
  let set = false;
  for (const [k, v] of Object.entries(meta)) {
    if (v === undefined) continue;
    set = true;
    if (k === "correlationId" && typeof v === "string") m.correlationId = v;
    else if (k === "timeoutMs" && isInt(v)) m.timeoutMs = BigInt(v);
    else if (k === "timestamp" && isInt(v)) m.timestamp = BigInt(v);
    else if (k === "room" && typeof v === "string") m.room = v;
    else if (k === "offset" && isInt(v) && v >= 0) m.offset = BigInt(v);
    else if (k === "epoch" && typeof v === "string") m.epoch = v;
    else extra[k] = v;
  }
  if (!set) return undefined;
  if (Object.keys(extra).length > 0) m.extra = JSON.stringify(extra);
  return m;
}

/** The JSON meta of a protobuf Meta: its set fields (64-bit ones as numbers) and extra's keys; undefined when empty. */
export function metaFromProto(pm: ProtoMeta): Meta | undefined {
  const meta: Meta = {};
  if (pm.extra) {
    let extra: unknown;
    try {
      extra = JSON.parse(pm.extra);
    } catch {
      extra = undefined;
    }
    if (typeof extra === "object" && extra !== null && !Array.isArray(extra)) Object.assign(meta, extra);
  }
  if (pm.correlationId !== undefined) meta.correlationId = pm.correlationId;
  if (pm.timeoutMs !== undefined) meta.timeoutMs = Number(pm.timeoutMs);
  if (pm.timestamp !== undefined) meta.timestamp = Number(pm.timestamp);
  if (pm.room !== undefined) meta.room = pm.room;
  if (pm.offset !== undefined) meta.offset = Number(pm.offset);
  if (pm.epoch !== undefined) meta.epoch = pm.epoch;
  return Object.keys(meta).length > 0 ? meta : undefined;
}
