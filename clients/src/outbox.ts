/**
 * What goes out on the socket: the send buffer that holds messages and
 * requests while the connection is not open (under its overflow policy),
 * the send rate that paces them like the edge's --rate-limit, and the
 * write of a frame.
 */
import type { Meta } from "./envelope.js";
import { NatterError } from "./errors.js";
import type { Frame } from "./wire.js";

export interface BufferOptions {
  /** Messages held while the connection is not open. Default 1000. */
  max?: number;
  /** What a send into a full buffer does. Default "error". */
  overflow?: "drop-oldest" | "drop-newest" | "error";
}

export interface SendRateOptions {
  /** Average messages per second. Default 100. */
  perSecond?: number;
  /** Messages that may go out at once. Default 200. */
  burst?: number;
}

/** A frame waiting in the send buffer. */
export interface Queued {
  type: string;
  meta?: Meta | undefined;
  payload?: string | undefined; // JSON, encoded at send() so that errors surface there
  cid?: string; // set for requests: their meta is built when they go out
}

/** What the outbox needs of the connection it writes to (connection.ts: Connection). */
export interface OutboxConn {
  readonly options: { buffer?: BufferOptions; sendRate?: false | SendRateOptions };
  /** "open" once a socket is up to date; frames wait in the buffer until then. */
  readonly state: string;
  /** The current socket's generation. */
  readonly gen: number;
  /** The current socket (transport.ts: Transport), null between sockets. */
  readonly transport: { readonly writable: boolean; send(frame: Frame): void } | null;
  readonly requests: OutboxRequests;
}

/**
 * What the outbox needs of the requests waiting for replies (rpc.ts:
 * Requests): a buffered request's deadline, key and trace context when it
 * goes out (and the socket it went out on, set here), and to settle one the
 * buffer drops.
 */
export interface OutboxRequests {
  get(cid: string): { readonly deadline: number; readonly key?: string | undefined; readonly meta?: Meta | undefined; gen: number } | undefined;
  settle(cid: string, err: NatterError): void;
}

/** The send buffer and the send rate of one client, across its sockets. */
export class Outbox {
  readonly #conn: OutboxConn;
  readonly #rate: SendRate | undefined;
  #buffer: Queued[] = [];
  #flushTimer: ReturnType<typeof setTimeout> | undefined; // the paced flush's next step

  constructor(conn: OutboxConn) {
    this.#conn = conn;
    const { sendRate } = conn.options;
    if (sendRate !== false) this.#rate = new SendRate(sendRate?.perSecond ?? 100, sendRate?.burst ?? 200);
  }

  /**
   * Sends q now when open (and the send rate allows), else buffers it under
   * the overflow policy. While open, a non-empty buffer means the rate
   * holds sends back: q waits behind them, in order.
   */
  enqueue(q: Queued): void {
    if (this.#conn.state === "open" && this.#buffer.length === 0 && this.#wait() === 0 && this.transmit(q)) return;
    const { max = 1000, overflow = "error" } = this.#conn.options.buffer ?? {};
    if (this.#buffer.length >= max) {
      const full = new NatterError("RESOURCE_EXHAUSTED", `send buffer full (${max} messages)`);
      if (overflow === "drop-oldest" && max > 0) {
        const old = this.#buffer.shift()!;
        if (old.cid) this.#conn.requests.settle(old.cid, full);
      } else {
        // "drop-newest" drops q; "error" refuses it. A request rejects either way.
        if (q.cid) this.#conn.requests.settle(q.cid, full);
        else if (overflow === "error") throw full;
        return;
      }
    }
    this.#buffer.push(q);
    if (this.#conn.state === "open" && this.#flushTimer === undefined) this.flush();
  }

  /** Writes q to the socket if it is open (taking a token of the send rate); false when it is not. The socket encodes it for its wire. */
  transmit(q: Queued): boolean {
    const t = this.#conn.transport;
    if (!t || !t.writable) return false;
    let meta = q.meta;
    if (q.cid) {
      const p = this.#conn.requests.get(q.cid);
      if (!p) return true; // settled (timed out, aborted) while buffered
      // The edge's deadline counts from arrival: send what is left of ours.
      meta = { correlationId: q.cid, timeoutMs: Math.max(1, p.deadline - Date.now()) };
      if (p.key !== undefined) meta.idempotencyKey = p.key;
      if (p.meta) Object.assign(meta, p.meta); // trace context
      p.gen = this.#conn.gen;
    }
    try {
      t.send({ type: q.type, meta, payload: q.payload });
    } catch {
      if (q.cid) this.#conn.requests.get(q.cid)!.gen = 0;
      return false;
    }
    // Frames the client sends by itself (re-joins, aborts, answers) take a
    // token too, possibly into debt: the edge counts every message.
    this.#rate?.take();
    return true;
  }

  /**
   * Sends the buffer in order, as fast as the send rate allows (the rest
   * follows from a timer); false if the socket closed on the way.
   */
  flush(): boolean {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    while (this.#buffer.length > 0) {
      const wait = this.#wait();
      if (wait > 0) {
        const gen = this.#conn.gen;
        this.#flushTimer = setTimeout(() => {
          this.#flushTimer = undefined;
          if (gen === this.#conn.gen && this.#conn.state === "open") this.flush();
        }, wait);
        return true;
      }
      if (!this.transmit(this.#buffer[0]!)) return false;
      this.#buffer.shift();
    }
    return true;
  }

  /** The edge said RESOURCE_EXHAUSTED with retryAfterMs: send nothing paced before then. */
  pause(ms: number): void {
    this.#rate?.pause(ms);
  }

  /** Drops a request from the buffer (it was settled before it went out). */
  drop(cid: string): void {
    this.#buffer = this.#buffer.filter((q) => q.cid !== cid);
  }

  /** Empties the buffer: the client has closed. */
  clear(): void {
    this.#buffer = [];
  }

  /** Stops the paced flush: the socket is gone. */
  stop(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
  }

  /** Ms until a send may go out; 0 now. */
  #wait(): number {
    return this.#rate?.wait() ?? 0;
  }
}

/** The send rate: a token bucket like the edge's --rate-limit. */
class SendRate {
  readonly #perSecond: number;
  readonly #burst: number;
  #tokens: number;
  #tokensAt = Date.now();

  constructor(perSecond: number, burst: number) {
    this.#perSecond = perSecond;
    this.#burst = burst;
    this.#tokens = burst;
  }

  /** Takes a token for a frame that went out, possibly into debt. */
  take(): void {
    this.#refill();
    this.#tokens -= 1;
  }

  /** Ms until a token is there; 0 now. */
  wait(): number {
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.#perSecond);
  }

  /** Nothing paced goes out for ms. */
  pause(ms: number): void {
    this.#refill();
    this.#tokens = Math.min(this.#tokens, 1 - (ms * this.#perSecond) / 1000);
  }

  /** Adds the tokens earned since the last call. */
  #refill(): void {
    const now = Date.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#tokensAt) * this.#perSecond) / 1000);
    this.#tokensAt = now;
  }
}
