/**
 * The wire: the frame, `{"type", "meta"?, "payload"?}`
 * (docs/protocol.md#the-envelope), and the payload types of the frames the
 * client sends and receives: the generated ones (messages.gen.ts) and those
 * of the frames the edge sends on its own (SystemServerMessages), which
 * several modules read. The replies to the client's own system requests
 * (`$presence`, `$history`, `$ws:accepted`) are typed by the module that
 * makes the request. This module is the bottom of the client: it imports
 * nothing but the generated types.
 */
import type { ClientMessages, ServerMessages } from "./messages.gen.js";

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
  /**
   * W3C trace context (docs/design/tracing.md): on a send or request, the
   * client's span unless the application sets its own; on a delivery, what
   * its NATS message carried (the edge's delivery span, the publisher's, or
   * on a reply the worker's).
   */
  traceparent?: string;
  tracestate?: string;
  [key: string]: unknown;
}

/** One frame: `{"type", "meta"?, "payload"?}`. */
export interface Envelope<P = unknown> {
  type: string;
  meta?: Meta;
  payload?: P;
}

/** The gRPC-style codes of ERROR / RPC_ERROR frames (docs/protocol.md#errors). */
export type ErrorCode =
  | "INVALID_ARGUMENT" | "NOT_FOUND" | "RESOURCE_EXHAUSTED" | "UNAUTHENTICATED"
  | "PERMISSION_DENIED" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL"
  | "FAILED_PRECONDITION" | "ALREADY_EXISTS" | "ABORTED" | "CANCELLED" | "UNIMPLEMENTED";

/** The payload of ERROR and RPC_ERROR frames. */
export interface ErrorPayload {
  code: ErrorCode | (string & {});
  message: string;
  /** Structured details, e.g. `{violations: [{field, rule, message}]}` for a payload that breaks its schema. */
  details?: unknown;
  /** When to retry, for RESOURCE_EXHAUSTED rate limits. */
  retryAfterMs?: number;
}

/** The payload of `$connected`, the first frame of every connection. */
export interface ConnectedPayload {
  /** The connection's id: services reach it at natter.out.conn.<connectionId>. */
  connectionId: string;
  /** The connection's user; absent for anonymous connections. */
  user?: string;
}

/** The payload of `$joined`; durable rooms add their position, and `recovered` answers a join with `since`. */
export interface JoinedPayload {
  room: string;
  /** True for a durable room; offset and epoch are then the position to continue from. */
  durable?: boolean;
  offset?: number;
  epoch?: string;
  /** Present when the join had `since`: whether every message after it was replayed. */
  recovered?: boolean;
}

/** One connection in a room. */
export interface PresenceMember {
  conn: string;
  user?: string;
  state?: unknown;
}

/** A batch of presence changes in a room (`$presence.diff`); the arrays are always present. */
export interface PresenceDiff {
  room: string;
  joins: PresenceMember[];
  leaves: PresenceMember[];
  states: PresenceMember[];
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
