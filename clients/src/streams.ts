/**
 * Response streams (docs/protocol.md, "Response streams"): client.stream()
 * joins a stream that a producer writes to JetStream, hands its text out
 * in order as chunks, and after every reconnect re-joins it from the last
 * byte offset seen (`meta.offset`), so that a reader gets the whole text
 * once, without a gap or a duplicate, until the stream's end.
 */
import type { Envelope } from "./envelope.js";
import { isLost, NatterError, type BackgroundErrorInfo } from "./errors.js";
import type { AbortSignalLike, RequestOptions } from "./rpc.js";

export interface StreamOptions {
  /**
   * The byte offset (UTF-8 bytes of the text) to read from: a
   * `NatterStream.offset` or chunk offset seen before, say one saved
   * across a page reload. Default 0: the whole text.
   */
  offset?: number;
  /** Aborting leaves the stream (leave()). */
  signal?: AbortSignalLike;
}

/** A piece of a stream's text. */
export interface StreamChunk {
  text: string;
  /** The byte offset after this chunk (`meta.offset`): where to read from next time. */
  offset: number;
}

/** How a stream ended (`$stream.end`). */
export interface StreamEnd {
  status: "done" | "error";
  /** The length of the whole text, in bytes. */
  offset: number;
  /** An error end's code (CANCELLED, UNAVAILABLE when the producer is gone, INTERNAL ...) and message. */
  error?: { code: string; message: string };
}

/**
 * A joined response stream, read once: iterate it, or call text(). The
 * chunks are kept from the join until they are read.
 */
export interface NatterStream extends AsyncIterable<StreamChunk> {
  readonly id: string;
  /** The last `meta.offset` seen (of a chunk or the end): the position to resume from. */
  readonly offset: number;
  /**
   * Resolves with the end when `$stream.end` arrives, an error end
   * included. Rejects when the stream ends without one for this reader:
   * the join was refused (its code), leave() or the signal (CANCELLED),
   * close() (the client's error).
   */
  readonly ended: Promise<StreamEnd>;
  /**
   * The rest of the text, concatenated: resolves at a "done" end; rejects
   * with a NatterError of the end's code at an error end, and as ended
   * rejects otherwise. Reads the stream (as the iterator does).
   */
  text(): Promise<string>;
  /** Sends `$stream.cancel` and resolves on `$stream.cancelled`; the stream then ends with CANCELLED. */
  cancel(): Promise<void>;
  /** Sends `$stream.leave`; iteration finishes without an end. */
  leave(): void;
}

/** What streams need of the connection (connection.ts: Connection). */
export interface StreamsConn {
  /** "open" once a socket is up to date. */
  readonly state: string;
  /** The current socket's generation. */
  readonly gen: number;
  /** The requests waiting for replies (rpc.ts: Requests); joins and leaves go out direct, ahead of the send buffer. */
  readonly requests: {
    request(type: string, payload: unknown, options?: RequestOptions, direct?: boolean): Promise<unknown>;
  };
  /** Throws UNAVAILABLE once the client is closed. */
  checkNotClosed(): void;
  /** Tells the onError listeners that a re-join failed. */
  report(error: NatterError, info: BackgroundErrorInfo): void;
  /** The wait before retry attempt of something the edge refused with err. */
  backoff(attempt: number, err?: NatterError): number;
}

// The join refusals retried from the same offset: JetStream did not
// answer, or the join found no answer in time.
const RETRIED = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED"]);

/** A stream being read: its reader, and its join on the current socket. */
interface Read {
  readonly reader: Reader;
  gen: number; // the socket of the last join, 0 for none
  joining: boolean; // that join's $stream.joined is awaited: no chunks before it
  cid?: string | undefined; // that join's correlation id
  attempt: number; // refused joins in a row, for the backoff
  retry?: ReturnType<typeof setTimeout> | undefined;
}

/** The streams this client reads, by id: joined or being joined, not ended. */
export class Streams {
  readonly #conn: StreamsConn;
  readonly #reads = new Map<string, Read>();

  constructor(conn: StreamsConn) {
    this.#conn = conn;
  }

  /** Joins stream id (see Client.stream); sent now when open, else on the next socket (resync). */
  open(id: string, options: StreamOptions = {}): NatterStream {
    const { offset = 0, signal } = options;
    const reader = new Reader(id, offset, {
      leave: () => this.#leave(read),
      cancel: () => this.#conn.requests.request("$stream.cancel", { stream: id }).then(() => undefined),
    });
    const read: Read = { reader, gen: 0, joining: false, attempt: 0 };
    try {
      this.#conn.checkNotClosed();
    } catch (err) {
      reader.finish({ error: err as NatterError });
      return reader;
    }
    if (!Number.isSafeInteger(offset) || offset < 0) {
      reader.finish({ error: new NatterError("INVALID_ARGUMENT", "offset must be a non-negative integer") });
      return reader;
    }
    if (this.#reads.has(id)) {
      reader.finish({ error: new NatterError("ALREADY_EXISTS", `stream ${id} is read by this client already: leave it first`) });
      return reader;
    }
    this.#reads.set(id, read);
    if (signal) {
      if (signal.aborted) {
        reader.leave();
        return reader;
      }
      const onAbort = () => reader.leave();
      signal.addEventListener("abort", onAbort, { once: true });
      void reader.ended.finally(() => signal.removeEventListener("abort", onAbort)).catch(() => {});
    }
    if (this.#conn.state === "open") this.#join(read, this.#conn.gen);
    return reader;
  }

  /** Joins, on socket gen, every stream it has not been joined on, from its last offset. */
  resync(gen: number): void {
    for (const read of this.#reads.values()) {
      if (read.gen === gen) continue;
      clearTimeout(read.retry);
      this.#join(read, gen);
    }
  }

  /**
   * Sees every frame: marks a stream joined at its `$stream.joined` (the
   * answer to its current join, by correlation id), and hands its reader
   * the chunks and the end that follow, by `meta.stream`.
   */
  receive(env: Envelope): void {
    const gen = this.#conn.gen;
    if (env.type === "$stream.joined") {
      const id = (env.payload as { stream?: unknown } | undefined)?.stream;
      const read = typeof id === "string" ? this.#reads.get(id) : undefined;
      if (read && read.joining && read.gen === gen && read.cid === env.meta?.correlationId) read.joining = false;
      return;
    }
    if (env.type !== "$stream.chunk" && env.type !== "$stream.end") return;
    const meta = env.meta ?? {};
    const read = typeof meta.stream === "string" ? this.#reads.get(meta.stream) : undefined;
    // Only after $stream.joined, on the socket of the join.
    if (!read || read.joining || read.gen !== gen) return;
    const { reader } = read;
    const offset = Number.isSafeInteger(meta.offset) && (meta.offset as number) >= 0 ? (meta.offset as number) : undefined;
    if (env.type === "$stream.chunk") {
      // A chunk ends past the last offset seen; anything else was had already.
      if (typeof env.payload === "string" && offset !== undefined && offset > reader.offset) reader.chunk({ text: env.payload, offset });
      return;
    }
    this.#reads.delete(reader.id);
    const p = (env.payload ?? {}) as { status?: unknown; error?: { code?: unknown; message?: unknown } };
    const end: StreamEnd = { status: p.status === "done" ? "done" : "error", offset: offset ?? reader.offset };
    if (end.status === "error") {
      const { code, message } = p.error ?? {};
      end.error = { code: typeof code === "string" && code ? code : "INTERNAL", message: typeof message === "string" ? message : "" };
    }
    reader.finish({ end });
  }

  /** Stops the retries waiting for their backoff: the socket is gone (the next one re-joins). */
  stop(): void {
    for (const read of this.#reads.values()) clearTimeout(read.retry);
  }

  /** Ends every stream with err: the client has closed. */
  end(err: NatterError): void {
    const reads = [...this.#reads.values()];
    this.#reads.clear();
    for (const read of reads) {
      clearTimeout(read.retry);
      read.reader.finish({ error: err });
    }
  }

  /**
   * Sends `$stream.join` from the reader's offset on socket gen. A
   * refusal the edge may change its mind about (RETRIED) is tried again
   * after a backoff, on the same socket; a lost socket leaves it to the
   * next; any other refusal ends the reader with it.
   */
  #join(read: Read, gen: number, leaveFirst = false): void {
    const { requests } = this.#conn;
    const { id } = read.reader;
    read.gen = gen;
    read.joining = true;
    // A join that timed out may still be joined on the edge: leave it
    // first (not an error when it is not), and its frames are dropped
    // until the new join's $stream.joined.
    if (leaveFirst) requests.request("$stream.leave", { stream: id }, {}, true).catch(() => {});
    // The correlation id tells this join's $stream.joined from a late one's.
    const options: RequestOptions = { trace: { meta: undefined, correlate: (cid) => (read.cid = cid) } };
    const current = () => this.#reads.get(id) === read && read.gen === gen; // not left, ended, or joined again since
    requests.request("$stream.join", { stream: id, offset: read.reader.offset }, options, true).then(
      () => {
        if (current()) read.attempt = 0;
      },
      (e: unknown) => {
        const err = e as NatterError;
        if (!current() || gen !== this.#conn.gen || isLost(err)) return; // a lost socket: the next one joins it again
        const info: BackgroundErrorInfo = { op: "stream", stream: id, retrying: RETRIED.has(err.code) };
        this.#conn.report(err, info);
        if (info.retrying) {
          read.retry = setTimeout(() => {
            if (current() && gen === this.#conn.gen) this.#join(read, gen, err.code === "DEADLINE_EXCEEDED");
          }, this.#conn.backoff(read.attempt++, err));
          return;
        }
        this.#reads.delete(id);
        read.reader.finish({ error: err });
      },
    );
  }

  /** Forgets a read; a socket it was joined on (or is being joined on) is sent `$stream.leave`. */
  #leave(read: Read): void {
    const { id } = read.reader;
    if (this.#reads.get(id) !== read) return;
    this.#reads.delete(id);
    clearTimeout(read.retry);
    if (read.gen === this.#conn.gen) this.#conn.requests.request("$stream.leave", { stream: id }, {}, true).catch(() => {});
  }
}

/** How a reader finished: its end, an error (a refused join, the client closed), or left. */
interface Final {
  end?: StreamEnd;
  error?: NatterError;
}

/** One stream as the application reads it: its chunks, its finish, its iterator. */
class Reader implements NatterStream {
  readonly id: string;
  readonly ended: Promise<StreamEnd>;

  readonly #actions: { leave(): void; cancel(): Promise<void> };
  #offset: number;
  // The chunks not read yet, from #head on; bounded by the text, which a
  // producer keeps to one NATS payload (1 MiB by default).
  #chunks: StreamChunk[] = [];
  #head = 0;
  #final: Final | undefined;
  #wake: (() => void) | undefined; // the read waiting for a chunk or the finish
  #read = false; // the iterator or text() has been taken
  #settle!: { resolve(end: StreamEnd): void; reject(err: NatterError): void };

  constructor(id: string, offset: number, actions: { leave(): void; cancel(): Promise<void> }) {
    this.id = id;
    this.#offset = offset;
    this.#actions = actions;
    this.ended = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
    this.ended.catch(() => {}); // a rejection nobody awaits is not an unhandled one
  }

  get offset(): number {
    return this.#offset;
  }

  chunk(c: StreamChunk): void {
    this.#offset = c.offset;
    this.#chunks.push(c);
    this.#wakeUp();
  }

  /** Finishes the reader once: with its end, an error, or (neither) left. */
  finish(f: Final): void {
    if (this.#final) return;
    this.#final = f;
    if (f.end) {
      this.#offset = f.end.offset;
      this.#settle.resolve(f.end);
    } else {
      this.#settle.reject(f.error ?? new NatterError("CANCELLED", `left stream ${this.id} before its end`));
    }
    this.#wakeUp();
  }

  leave(): void {
    if (this.#final) return;
    this.#actions.leave();
    this.finish({});
  }

  cancel(): Promise<void> {
    return this.#actions.cancel();
  }

  async text(): Promise<string> {
    const it = this[Symbol.asyncIterator]();
    let text = "";
    for (let r = await it.next(); !r.done; r = await it.next()) text += r.value.text;
    const f = this.#final!;
    if (!f.end) throw new NatterError("CANCELLED", `left stream ${this.id} before its end`);
    return text;
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamChunk> {
    const taken = this.#read;
    this.#read = true;
    return {
      next: () => (taken ? Promise.reject(new NatterError("FAILED_PRECONDITION", `stream ${this.id} is read once: by one iterator or text()`)) : this.#next()),
      // A loop left early (break, throw) leaves the stream.
      return: () => {
        if (!taken) this.leave();
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }

  async #next(): Promise<IteratorResult<StreamChunk>> {
    for (;;) {
      if (this.#head < this.#chunks.length) {
        const c = this.#chunks[this.#head]!;
        this.#chunks[this.#head++] = undefined!;
        if (this.#head > 1024 && this.#head * 2 > this.#chunks.length) {
          this.#chunks = this.#chunks.slice(this.#head);
          this.#head = 0;
        }
        return { done: false, value: c };
      }
      const f = this.#final;
      if (f) {
        if (f.error) throw f.error;
        if (f.end?.status === "error") throw new NatterError(f.end.error!.code, f.end.error!.message);
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
