/**
 * Requests both ways: the client's own (rpc and every request the client
 * makes by itself), each waiting for its reply under a deadline, and the
 * answers to the edge's server-to-client requests (handle).
 */
import { encode, type Envelope, type Meta } from "./envelope.js";
import { fromPayload, lost, NatterError, toPayload } from "./errors.js";
import { safely } from "./listeners.js";
import type { Queued } from "./outbox.js";

/** A minimal AbortSignal, so that the browser's and Node's both fit. */
export interface AbortSignalLike {
  readonly aborted: boolean;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

export interface RpcOptions {
  /** Deadline in ms, sent as meta.timeoutMs (the edge clamps it to 10 ms..60 s). Default options.rpcTimeoutMs. */
  timeoutMs?: number;
  /** Aborting sends `$ws:abort` and rejects with CANCELLED. */
  signal?: AbortSignalLike;
  /** Called with each `$ws:rpc-progress` payload, in order, before the promise settles. */
  onProgress?: (payload: unknown) => void;
  /**
   * Sent as meta.idempotencyKey (1-128 printable ASCII characters, no
   * spaces): for a durable type, the edge stores one message per user, type
   * and key within its dedupe window. See sendDurable.
   */
  idempotencyKey?: string;
}

/** What a handler of server-to-client requests may return: a payload, or an envelope to choose the type. */
export type HandlerReply = unknown;

const RPC_TIMEOUT_MS = 10000; // the default request deadline
export const OUR_ID = "nc-"; // prefix of this client's correlation ids
export const SERVER_ID = "srv-"; // prefix of the edge's, on server-to-client requests

/** A request waiting for its reply. */
export interface Pending {
  resolve(payload: unknown): void;
  reject(err: NatterError): void;
  onProgress?: ((payload: unknown) => void) | undefined;
  deadline: number; // Date.now() ms
  timer: ReturnType<typeof setTimeout>;
  gen: number; // the socket it went out on; 0 while buffered
  cleanup?: () => void;
  key?: string | undefined; // meta.idempotencyKey, on every send of it
  envelope?: boolean | undefined; // resolve with the reply's envelope, not its payload
  meta?: Meta | undefined; // the trace context, on every send of it
}

/** A request's options, with the client's own. */
export interface RequestOptions extends RpcOptions {
  /** Resolve with the reply's envelope rather than its payload. */
  envelope?: boolean;
  /** The request's span (tracing.ts: TraceSpan): its meta goes out with the request, and it learns the correlation id. */
  trace?: { readonly meta: Meta | undefined; correlate(cid: string): void } | undefined;
}

/** What the client's requests need of the connection (connection.ts: Connection). */
export interface RequestsConn {
  readonly options: { rpcTimeoutMs?: number };
  /** The current socket's generation. */
  readonly gen: number;
  /** The send buffer (outbox.ts: Outbox). */
  readonly outbox: {
    enqueue(q: Queued): void;
    transmit(q: Queued): boolean;
    drop(cid: string): void;
  };
  /** Throws UNAVAILABLE once the client is closed. */
  checkNotClosed(): void;
}

/** The client's requests that wait for a reply, by correlation id. */
export class Requests {
  readonly #conn: RequestsConn;
  readonly #pending = new Map<string, Pending>();
  #seq = 0;

  constructor(conn: RequestsConn) {
    this.#conn = conn;
  }

  /** The default deadline of a request, in ms. */
  get timeoutMs(): number {
    return this.#conn.options.rpcTimeoutMs ?? RPC_TIMEOUT_MS;
  }

  /** A fresh correlation id of this client's. */
  nextId(): string {
    return OUR_ID + (++this.#seq).toString(36);
  }

  /** The request waiting under cid, if any. */
  get(cid: string): Pending | undefined {
    return this.#pending.get(cid);
  }

  /**
   * Sends a request: buffered like a send (direct: written now or lost, for
   * what the client sends by itself ahead of the buffer), settled by its
   * reply, an error, the deadline, an abort or a lost socket.
   */
  request(type: string, payload: unknown, options: RequestOptions = {}, direct = false): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.#conn.checkNotClosed();
      const { signal, onProgress, idempotencyKey, envelope, trace } = options;
      if (signal?.aborted) throw new NatterError("CANCELLED", "aborted before it was sent");
      const timeoutMs = options.timeoutMs ?? this.timeoutMs;
      const body = encode(payload);
      const cid = this.nextId();
      const p: Pending = {
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
      if (!direct) this.#conn.outbox.enqueue(q);
      else if (!this.#conn.outbox.transmit(q)) this.settle(cid, lost("not connected"));
    });
  }

  /** Settles a pending request once, with a payload or an error, and drops it from the buffer. */
  settle(cid: string, result: { ok: unknown } | NatterError): void {
    const p = this.#pending.get(cid);
    if (!p) return;
    this.#pending.delete(cid);
    clearTimeout(p.timer);
    p.cleanup?.();
    if (p.gen === 0) this.#conn.outbox.drop(cid);
    if (result instanceof NatterError) p.reject(result);
    else p.resolve(result.ok);
  }

  /** Settles what went out on socket gen with err: the socket is gone. */
  lose(gen: number, err: NatterError): void {
    for (const [cid, p] of this.#pending) if (p.gen === gen) this.settle(cid, err);
  }

  /** Settles every request with err: the client has closed. */
  fail(err: NatterError): void {
    for (const cid of [...this.#pending.keys()]) this.settle(cid, err);
  }

  /**
   * Handles a frame that carries cid: progress, or the reply that settles
   * the request. False when no request waits under cid.
   */
  reply(cid: string, env: Envelope): boolean {
    const p = this.#pending.get(cid);
    if (!p) return false;
    if (env.type === "$ws:rpc-progress") {
      const fn = p.onProgress;
      if (fn) safely(() => fn(env.payload));
    } else if (env.type === "RPC_ERROR" || env.type === "ERROR") {
      this.settle(cid, fromPayload(env.payload));
    } else {
      this.settle(cid, { ok: p.envelope ? env : env.payload });
    }
    return true;
  }

  /** Gives up on a request: the edge cancels the worker's handler and its late reply is ignored. */
  #abort(cid: string): void {
    const p = this.#pending.get(cid);
    if (!p) return;
    if (p.gen === this.#conn.gen) this.#conn.outbox.transmit({ type: "$ws:abort", meta: { correlationId: cid } });
    this.settle(cid, new NatterError("CANCELLED", "aborted"));
  }
}

/** A handler of server-to-client requests of one type. */
export type Handler = (payload: unknown, envelope: Envelope) => unknown;

/** What the answers to server-to-client requests need of the connection (connection.ts: Connection). */
export interface HandlersConn {
  /** The current socket's generation: an answer goes out only on the socket its request came on. */
  readonly gen: number;
  /** The send buffer (outbox.ts: Outbox); answers bypass it. */
  readonly outbox: { transmit(q: Queued): boolean };
}

/** The application's handlers of server-to-client requests, one per type. */
export class Handlers {
  readonly #conn: HandlersConn;
  readonly #handlers = new Map<string, Handler>();

  constructor(conn: HandlersConn) {
    this.#conn = conn;
  }

  /** Sets the handler of type; returns the function that removes it (unless replaced since). */
  handle(type: string, h: Handler): () => void {
    this.#handlers.set(type, h);
    return () => {
      if (this.#handlers.get(type) === h) this.#handlers.delete(type);
    };
  }

  /** Answers a server-to-client request on the socket it came from. */
  async answer(cid: string, env: Envelope): Promise<void> {
    const gen = this.#conn.gen;
    const handler = this.#handlers.get(env.type);
    let type = env.type;
    let payload: unknown;
    if (!handler) {
      type = "RPC_ERROR";
      payload = { code: "UNIMPLEMENTED", message: `no handler for ${env.type}` };
    } else {
      try {
        const out = await handler(env.payload, env);
        if (isEnvelopeReply(out)) ({ type, payload } = out);
        else payload = out;
      } catch (err) {
        type = "RPC_ERROR";
        payload = toPayload(err);
      }
    }
    // After a reconnect the edge has already answered UNAVAILABLE.
    if (gen !== this.#conn.gen) return;
    const { outbox } = this.#conn;
    try {
      outbox.transmit({ type, meta: { correlationId: cid }, payload: encode(payload) });
    } catch (err) {
      // An unencodable reply.
      outbox.transmit({ type: "RPC_ERROR", meta: { correlationId: cid }, payload: encode({ code: "INTERNAL", message: String(err) }) });
    }
  }
}

/** A handler's return value is an envelope when it has exactly `type` (a string) and `payload`. */
function isEnvelopeReply(v: unknown): v is { type: string; payload: unknown } {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const keys = Object.keys(v);
  return keys.length === 2 && "payload" in v && typeof (v as { type?: unknown }).type === "string";
}
