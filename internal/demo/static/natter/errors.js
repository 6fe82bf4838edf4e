// Generated from clients/src/errors.ts by `npm run build` in clients/. Do not edit.
/** The error every failed request rejects with, and that handlers may throw. */
export class NatterError extends Error {
    name = "NatterError";
    code;
    details;
    retryAfterMs;
    constructor(code, message, extra = {}) {
        super(message);
        this.code = code;
        if (extra.details !== undefined)
            this.details = extra.details;
        if (extra.retryAfterMs !== undefined)
            this.retryAfterMs = extra.retryAfterMs;
    }
}
/** fromPayload returns the NatterError an ERROR or RPC_ERROR payload stands for. */
export function fromPayload(payload) {
    const e = (payload ?? {});
    const extra = {};
    if (e.details != null)
        extra.details = e.details;
    if (e.retryAfterMs)
        extra.retryAfterMs = e.retryAfterMs;
    return new NatterError(e.code ?? "INTERNAL", e.message ?? "", extra);
}
/** toPayload returns the RPC_ERROR payload that answers a request whose handler threw err. */
export function toPayload(err) {
    return err instanceof NatterError
        ? { code: err.code, message: err.message, details: err.details, retryAfterMs: err.retryAfterMs }
        : { code: "INTERNAL", message: err instanceof Error ? err.message : String(err) };
}
// Errors the client made up for a socket that went away: what waited on it
// is retried on the next one.
const LOST = new WeakSet();
/** lost returns an UNAVAILABLE error marked as made up for a socket that went away. */
export function lost(message) {
    const err = new NatterError("UNAVAILABLE", message);
    LOST.add(err);
    return err;
}
/** isLost tells whether err was made by lost: the socket went away, the edge refused nothing. */
export function isLost(err) {
    return LOST.has(err);
}
