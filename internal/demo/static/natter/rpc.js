// Generated from clients/src/rpc.ts by `npm run build` in clients/. Do not edit.
/**
 * Requests both ways: the client's own (rpc and every request the client
 * makes by itself), each waiting for its reply under a deadline, and the
 * answers to the edge's server-to-client requests (handle).
 */
import { encode } from "./envelope.js";
import { fromPayload, lost, NatterError, toPayload } from "./errors.js";
import { safely } from "./listeners.js";
const RPC_TIMEOUT_MS = 10000; // the default request deadline
export const OUR_ID = "nc-"; // prefix of this client's correlation ids
export const SERVER_ID = "srv-"; // prefix of the edge's, on server-to-client requests
/** The client's requests that wait for a reply, by correlation id. */
export class Requests {
    #conn;
    #pending = new Map();
    #seq = 0;
    constructor(conn) {
        this.#conn = conn;
    }
    /** The default deadline of a request, in ms. */
    get timeoutMs() {
        return this.#conn.options.rpcTimeoutMs ?? RPC_TIMEOUT_MS;
    }
    /** A fresh correlation id of this client's. */
    nextId() {
        return OUR_ID + (++this.#seq).toString(36);
    }
    /** The request waiting under cid, if any. */
    get(cid) {
        return this.#pending.get(cid);
    }
    /**
     * Sends a request: buffered like a send (direct: written now or lost, for
     * what the client sends by itself ahead of the buffer), settled by its
     * reply, an error, the deadline, an abort or a lost socket.
     */
    request(type, payload, options = {}, direct = false) {
        return new Promise((resolve, reject) => {
            this.#conn.checkNotClosed();
            const { signal, onProgress, idempotencyKey, envelope, trace } = options;
            if (signal?.aborted)
                throw new NatterError("CANCELLED", "aborted before it was sent");
            const timeoutMs = options.timeoutMs ?? this.timeoutMs;
            const body = encode(payload);
            const cid = this.nextId();
            const p = {
                resolve, reject, onProgress, gen: 0, key: idempotencyKey, envelope,
                deadline: Date.now() + timeoutMs,
                timer: setTimeout(() => this.settle(cid, new NatterError("DEADLINE_EXCEEDED", `no reply within ${timeoutMs} ms`)), timeoutMs),
            };
            if (trace) {
                p.meta = trace.meta;
                trace.correlate(cid);
            }
            if (signal) {
                const onAbort = () => this.#abort(cid);
                signal.addEventListener("abort", onAbort, { once: true });
                p.cleanup = () => signal.removeEventListener("abort", onAbort);
            }
            this.#pending.set(cid, p);
            const q = { type, payload: body, cid };
            if (!direct)
                this.#conn.outbox.enqueue(q);
            else if (!this.#conn.outbox.transmit(q))
                this.settle(cid, lost("not connected"));
        });
    }
    /** Settles a pending request once, with a payload or an error, and drops it from the buffer. */
    settle(cid, result) {
        const p = this.#pending.get(cid);
        if (!p)
            return;
        this.#pending.delete(cid);
        clearTimeout(p.timer);
        p.cleanup?.();
        if (p.gen === 0)
            this.#conn.outbox.drop(cid);
        if (result instanceof NatterError)
            p.reject(result);
        else
            p.resolve(result.ok);
    }
    /** Settles what went out on socket gen with err: the socket is gone. */
    lose(gen, err) {
        for (const [cid, p] of this.#pending)
            if (p.gen === gen)
                this.settle(cid, err);
    }
    /** Settles every request with err: the client has closed. */
    fail(err) {
        for (const cid of [...this.#pending.keys()])
            this.settle(cid, err);
    }
    /**
     * Handles a frame that carries cid: progress, or the reply that settles
     * the request. False when no request waits under cid.
     */
    reply(cid, env) {
        const p = this.#pending.get(cid);
        if (!p)
            return false;
        if (env.type === "$ws:rpc-progress") {
            const fn = p.onProgress;
            if (fn)
                safely(() => fn(env.payload));
        }
        else if (env.type === "RPC_ERROR" || env.type === "ERROR") {
            this.settle(cid, fromPayload(env.payload));
        }
        else {
            this.settle(cid, { ok: p.envelope ? env : env.payload });
        }
        return true;
    }
    /** Gives up on a request: the edge cancels the worker's handler and its late reply is ignored. */
    #abort(cid) {
        const p = this.#pending.get(cid);
        if (!p)
            return;
        if (p.gen === this.#conn.gen)
            this.#conn.outbox.transmit({ type: "$ws:abort", meta: { correlationId: cid } });
        this.settle(cid, new NatterError("CANCELLED", "aborted"));
    }
}
/** The application's handlers of server-to-client requests, one per type. */
export class Handlers {
    #conn;
    #handlers = new Map();
    constructor(conn) {
        this.#conn = conn;
    }
    /** Sets the handler of type; returns the function that removes it (unless replaced since). */
    handle(type, h) {
        this.#handlers.set(type, h);
        return () => {
            if (this.#handlers.get(type) === h)
                this.#handlers.delete(type);
        };
    }
    /** Answers a server-to-client request on the socket it came from. */
    async answer(cid, env) {
        const gen = this.#conn.gen;
        const handler = this.#handlers.get(env.type);
        let type = env.type;
        let payload;
        if (!handler) {
            type = "RPC_ERROR";
            payload = { code: "UNIMPLEMENTED", message: `no handler for ${env.type}` };
        }
        else {
            try {
                const out = await handler(env.payload, env);
                if (isEnvelopeReply(out))
                    ({ type, payload } = out);
                else
                    payload = out;
            }
            catch (err) {
                type = "RPC_ERROR";
                payload = toPayload(err);
            }
        }
        // After a reconnect the edge has already answered UNAVAILABLE.
        if (gen !== this.#conn.gen)
            return;
        const { outbox } = this.#conn;
        try {
            outbox.transmit({ type, meta: { correlationId: cid }, payload: encode(payload) });
        }
        catch (err) {
            // An unencodable reply.
            outbox.transmit({ type: "RPC_ERROR", meta: { correlationId: cid }, payload: encode({ code: "INTERNAL", message: String(err) }) });
        }
    }
}
/** A handler's return value is an envelope when it has exactly `type` (a string) and `payload`. */
function isEnvelopeReply(v) {
    if (typeof v !== "object" || v === null || Array.isArray(v))
        return false;
    const keys = Object.keys(v);
    return keys.length === 2 && "payload" in v && typeof v.type === "string";
}
