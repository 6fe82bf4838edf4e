/**
 * The wire: how a frame the client writes becomes the bytes of a
 * transport, and how what the edge sends becomes an Envelope. The JSON
 * form ("natter": one JSON object per text frame, and every line of the
 * HTTP fallback) is here; the binary form ("natter.protobuf",
 * docs/protocol.md#binary-wire) is protobuf.ts, loaded only when
 * options.wire is "protobuf" so that the JSON client never loads a
 * protobuf runtime.
 */
import type { Envelope, Meta } from "./envelope.js";

/** A frame on its way out: the payload is already JSON text (encoded at send(), so that errors surface there). */
export interface Frame {
  type: string;
  meta?: Meta | undefined;
  payload?: string | undefined;
}

/** One wire's encoding, for one WebSocket subprotocol. */
export interface Codec {
  /** The WebSocket subprotocol that selects it. */
  readonly subprotocol: string;
  /** Frames are binary: the socket's binaryType is set to "arraybuffer". */
  readonly binary: boolean;
  /** The data of one WebSocket message. */
  encode(frame: Frame): string | Uint8Array<ArrayBuffer>;
  /** The envelope in one WebSocket message's data; undefined for data that is not one. */
  decode(data: unknown): Envelope | undefined;
}

/** The JSON text of a frame: `{"type","meta"?,"payload"?}`. */
export function jsonFrame(frame: Frame): string {
  let s = `{"type":${JSON.stringify(frame.type)}`;
  if (frame.meta !== undefined) s += `,"meta":${JSON.stringify(frame.meta)}`;
  if (frame.payload !== undefined) s += `,"payload":${frame.payload}`;
  return s + "}";
}

/** The envelope in JSON text; undefined when the text is not one. */
export function parseEnvelope(text: string): Envelope | undefined {
  let env: unknown;
  try {
    env = JSON.parse(text);
  } catch {
    return undefined;
  }
  return isEnvelope(env) ? env : undefined;
}

/** An object with a string type. */
export function isEnvelope(v: unknown): v is Envelope {
  return typeof v === "object" && v !== null && !Array.isArray(v) && typeof (v as { type?: unknown }).type === "string";
}

/** The "natter" subprotocol: one JSON object per text frame. */
export const jsonCodec: Codec = {
  subprotocol: "natter",
  binary: false,
  encode: jsonFrame,
  decode: (data) => (typeof data === "string" ? parseEnvelope(data) : undefined),
};

/**
 * The schemas of the binary wire, as natter-gen-ts writes them
 * (messages.gen.ts: natterSchemas): a serialized
 * google.protobuf.FileDescriptorSet in base64, and the message full name
 * of each type with a schema, by direction.
 */
export interface Schemas {
  readonly descriptorSet: string;
  readonly client: { readonly [type: string]: string };
  readonly server: { readonly [type: string]: string };
}
