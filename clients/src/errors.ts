/**
 * The client's errors: NatterError (what every failed request rejects with,
 * and what handlers may throw), to and from the payload of the edge's ERROR
 * and RPC_ERROR frames (envelope.ts), what the onError listeners are told
 * of a failure in the background, and the mark on errors the client made up
 * for a socket that went away.
 */
import type { ErrorCode, ErrorPayload } from "./envelope.js";

/** What failed in the background, for onError. */
export interface BackgroundErrorInfo {
  /**
   * A re-join ("join"), the presence state's re-send ("state"), an
   * automatic token refresh ("refresh"), connecting ("connect"), a frame
   * of the edge's that the client could not decode ("receive": a protobuf
   * payload of a type options.schemas has no message for), or a join of
   * a response stream that the edge refused ("stream").
   */
  op: "join" | "state" | "refresh" | "connect" | "receive" | "stream";
  /** The room, for "join". */
  room?: string;
  /** The stream's id, for "stream". */
  stream?: string;
  /** Whether the client tries again by itself (with backoff). */
  retrying: boolean;
}

/** The error every failed request rejects with, and that handlers may throw. */
export class NatterError extends Error implements ErrorPayload {
  override name = "NatterError";
  readonly code: ErrorCode | (string & {});
  readonly details?: unknown;
  readonly retryAfterMs?: number;

  constructor(code: ErrorCode | (string & {}), message: string, extra: { details?: unknown; retryAfterMs?: number } = {}) {
    super(message);
    this.code = code;
    if (extra.details !== undefined) this.details = extra.details;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
  }
}

/** fromPayload returns the NatterError an ERROR or RPC_ERROR payload stands for. */
export function fromPayload(payload: unknown): NatterError {
  const e = (payload ?? {}) as Partial<ErrorPayload>;
  const extra: { details?: unknown; retryAfterMs?: number } = {};
  if (e.details != null) extra.details = e.details;
  if (e.retryAfterMs) extra.retryAfterMs = e.retryAfterMs;
  return new NatterError(e.code ?? "INTERNAL", e.message ?? "", extra);
}

/** toPayload returns the RPC_ERROR payload that answers a request whose handler threw err. */
export function toPayload(err: unknown): ErrorPayload {
  return err instanceof NatterError
    ? { code: err.code, message: err.message, details: err.details, retryAfterMs: err.retryAfterMs }
    : { code: "INTERNAL", message: err instanceof Error ? err.message : String(err) };
}

// Errors the client made up for a socket that went away: what waited on it
// is retried on the next one.
const LOST = new WeakSet<NatterError>();

/** lost returns an UNAVAILABLE error marked as made up for a socket that went away. */
export function lost(message: string): NatterError {
  const err = new NatterError("UNAVAILABLE", message);
  LOST.add(err);
  return err;
}

/** isLost tells whether err was made by lost: the socket went away, the edge refused nothing. */
export function isLost(err: NatterError): boolean {
  return LOST.has(err);
}
