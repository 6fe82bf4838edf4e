/**
 * The frame, `{"type", "meta"?, "payload"?}` (docs/protocol.md#the-envelope),
 * and the payload types of the frames the client sends and receives: the
 * generated ones (messages.gen.ts) and the edge's own.
 */
import type { ClientMessages, ServerMessages } from "./messages.gen.js";
import type { ConnectedPayload } from "./connection.js";
import type { ErrorPayload } from "./errors.js";
import type { PresenceDiff } from "./presence.js";
import type { JoinedPayload } from "./rooms.js";

/**
 * An envelope's meta. The edge sets `room` on room deliveries, and `offset`
 * and `epoch` on deliveries in durable rooms; other keys pass untouched.
 */
export interface Meta {
  correlationId?: string;
  timeoutMs?: number;
  timestamp?: number;
  room?: string;
  /** The message's place in a durable room's history: larger is later (not contiguous). */
  offset?: number;
  /** The durable room history's incarnation; it changes when history is reset. */
  epoch?: string;
  /** A durable message's key: the edge's work stream stores one message per user, type and key within its dedupe window. */
  idempotencyKey?: string;
  [key: string]: unknown;
}

/** One frame: `{"type", "meta"?, "payload"?}`. */
export interface Envelope<P = unknown> {
  type: string;
  meta?: Meta;
  payload?: P;
}

/** Payloads of the frames the edge itself sends. */
export interface SystemServerMessages {
  "$connected": ConnectedPayload;
  "$joined": JoinedPayload;
  "$left": { room: string };
  "$presence.diff": PresenceDiff;
  "$auth.expiring": { expiresAt: number };
  "$auth.refreshed": { user: string; expiresAt: number };
  "ERROR": ErrorPayload;
}

type ServerTypes = ServerMessages & SystemServerMessages;

/** The payload type of a client message type: the generated one, unknown for others. */
export type ClientPayload<T extends string> = T extends keyof ClientMessages ? ClientMessages[T] : unknown;
/** The payload type of a server message type: the generated one, unknown for others. */
export type ServerPayload<T extends string> = T extends keyof ServerTypes ? ServerTypes[T] : unknown;
/** Known client types, still accepting any string. */
export type ClientType = (keyof ClientMessages & string) | (string & {});
/** Known server types (and "*"), still accepting any string. */
export type ServerType = (keyof ServerTypes & string) | "*" | (string & {});

/** System types start with "$" or "__" (docs/protocol.md#the-envelope). */
export function isSystemType(type: string): boolean {
  return type.startsWith("$") || type.startsWith("__");
}

/** JSON of a payload; undefined leaves the key out. */
export function encode(payload: unknown): string | undefined {
  return payload === undefined ? undefined : JSON.stringify(payload);
}
