/**
 * The client's errors: the codes of the edge's ERROR and RPC_ERROR frames,
 * NatterError (what every failed request rejects with, and what handlers
 * may throw), their wire form, and the mark on errors the client made up
 * for a socket that went away.
 */

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
