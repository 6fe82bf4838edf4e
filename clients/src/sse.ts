/**
 * The HTTP fallback transport (docs/protocol.md#fallback-transports), for
 * networks that break WebSockets: `GET <path>/sse`, an event stream read
 * with fetch (so that the token goes in an Authorization header), and
 * `POST <path>/send?session=<token>&seq=<n>` with the frames sent
 * meanwhile, one JSON envelope per line, one POST at a time. The wire is
 * JSON whatever options.wire says. Both requests carry credentials (the
 * natter_token cookie) cross-origin too, as a WebSocket handshake does.
 */
import type { Transport, TransportEvents } from "./transport.js";
import { jsonFrame, parseEnvelope, type Frame } from "./wire.js";

/** One event of a text/event-stream. */
export interface SseEvent {
  /** The `event:` field; "message" when there was none. */
  event: string;
  /** The `data:` lines, joined by "\n". */
  data: string;
  /** The last `id:` seen on the stream so far (the spec's last event ID). */
  id: string;
}

/**
 * A text/event-stream parser (the HTML standard's "event stream
 * interpretation"): push decoded text in chunks of any size; it calls
 * onEvent for every event that has data, and onComment for comment lines
 * (`: ping`). Lines end with CRLF, LF or CR; a leading BOM is skipped;
 * `retry:` and unknown fields are ignored.
 */
export class SseParser {
  readonly #onEvent: (ev: SseEvent) => void;
  readonly #onComment: ((text: string) => void) | undefined;
  #buf = "";
  #started = false;
  #skipLF = false; // the last chunk ended with CR: a LF that starts the next one ends no line
  #event = "";
  #data: string[] = [];
  #id = "";

  constructor(onEvent: (ev: SseEvent) => void, onComment?: (text: string) => void) {
    this.#onEvent = onEvent;
    this.#onComment = onComment;
  }

  /** Parses the next chunk of the stream's text. */
  push(text: string): void {
    if (!this.#started && text.length > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.#skipLF && text.startsWith("\n")) text = text.slice(1);
    this.#skipLF = false;
    this.#buf += text;
    let start = 0;
    for (;;) {
      const cr = this.#buf.indexOf("\r", start);
      const lf = this.#buf.indexOf("\n", start);
      const end = cr < 0 ? lf : lf < 0 ? cr : Math.min(cr, lf);
      if (end < 0) break;
      const line = this.#buf.slice(start, end);
      if (this.#buf[end] === "\r") {
        if (end + 1 === this.#buf.length) {
          this.#skipLF = true;
          start = end + 1;
          this.#line(line);
          break;
        }
        start = this.#buf[end + 1] === "\n" ? end + 2 : end + 1;
      } else {
        start = end + 1;
      }
      this.#line(line);
    }
    this.#buf = this.#buf.slice(start);
  }

  #line(line: string): void {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) {
      this.#onComment?.(line.slice(1).replace(/^ /, ""));
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.#event = value;
        break;
      case "data":
        this.#data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.#id = value;
        break;
    }
  }

  #dispatch(): void {
    const data = this.#data;
    const event = this.#event || "message";
    this.#data = [];
    this.#event = "";
    if (data.length === 0) return;
    this.#onEvent({ event, data: data.join("\n"), id: this.#id });
  }
}

/** What the fallback transport needs. */
export interface SseOptions {
  /** The edge's path as an http(s) URL (ws://host/ws becomes http://host/ws), with its query (dev mode's ?user=). */
  url: string;
  token?: string | undefined;
  fetch: typeof fetch;
  events: TransportEvents;
  /** How long one POST may go unanswered before it is sent again under its seq (POST_TIMEOUT_MS). */
  postTimeoutMs?: number | undefined;
}

// The edge takes at most 256 envelopes and 4 x --max-message-size per POST;
// the client does not know the edge's --max-message-size, so it sends at
// most one default (64 KiB) in a batch unless one frame is larger, and
// halves a batch the edge answers with 413.
const MAX_BATCH = 256;
const MAX_BATCH_BYTES = 64 * 1024;
const GONE_GRACE_MS = 1000; // after a 404, the stream's own close event has this long to give the close code
const CLOSE_GRACE_MS = 2000; // close() lets the POSTs under way finish for this long before it ends the stream
// A POST that a proxy or the network holds without an answer would hold
// every later frame (one POST at a time): after this long it is given up
// and sent again under the same seq. The edge acts on a seq once, and
// answers 409 while the first attempt is still in progress.
const POST_TIMEOUT_MS = 10_000;

/** Opens the event stream; the transport is writable once its `session` event has come. */
export function dialSse(options: SseOptions): Transport {
  const t = new SseTransport(options);
  // Not before the caller has the transport: its events name it.
  queueMicrotask(() => void t.start());
  return t;
}

class SseTransport implements Transport {
  readonly name = "sse";
  readonly #o: SseOptions;
  readonly #stream = new AbortController(); // the GET
  readonly #posts = new AbortController(); // the POSTs
  #sendUrl: URL | undefined; // set by the session event
  #queue: string[] = [];
  #posting = false;
  #seq = 0;
  #closing = false; // close() was called or the stream is gone: send refuses
  #done = false; // events.close was called (or is not to be)
  #closeInfo: { code: number; reason: string } | undefined; // the stream's close event
  #goneTimer: ReturnType<typeof setTimeout> | undefined; // after a 404: the end, unless the stream's own comes first

  constructor(o: SseOptions) {
    this.#o = o;
  }

  /** options.fetch, called without a receiver (a browser's fetch refuses any but the window). */
  #fetch(url: string, init: RequestInit): Promise<Response> {
    const f = this.#o.fetch;
    return f(url, init);
  }

  get writable(): boolean {
    return !this.#closing && this.#sendUrl !== undefined;
  }

  send(frame: Frame): void {
    if (!this.writable) throw new Error("not open");
    this.#queue.push(jsonFrame(frame));
    if (!this.#posting) void this.#post();
  }

  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#done = true; // the caller ignores the close event
    if (!this.#posting) return this.#abort();
    // The frames already sent go out first, as a WebSocket's do before its close frame.
    const timer = setTimeout(() => this.#abort(), CLOSE_GRACE_MS);
    void this.#drained().then(() => {
      clearTimeout(timer);
      this.#abort();
    });
  }

  async start(): Promise<void> {
    const url = new URL(this.#o.url);
    url.pathname = url.pathname.replace(/\/$/, "") + "/sse";
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.#o.token) headers.Authorization = `Bearer ${this.#o.token}`;
    let res: Response;
    try {
      res = await this.#fetch(url.toString(), { headers, signal: this.#stream.signal, cache: "no-store", credentials: "include" });
    } catch (err) {
      return this.#end(1006, `event stream failed: ${errText(err)}`);
    }
    if (res.status !== 200 || !res.body) {
      let text = "";
      try {
        text = (await res.text()).trim().slice(0, 100);
      } catch {
        // The reason is the status alone.
      }
      return this.#end(1006, `event stream refused: ${res.status}${text ? ` ${text}` : ""}`);
    }
    const parser = new SseParser((ev) => this.#event(ev, url));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
        if (this.#closeInfo) break;
      }
    } catch {
      // Aborted, or the network failed: the stream is over either way.
    }
    const info = this.#closeInfo;
    this.#end(info?.code ?? 1006, info ? info.reason : "event stream ended");
  }

  #event(ev: SseEvent, streamUrl: URL): void {
    if (this.#done) return;
    switch (ev.event) {
      case "message": {
        const env = parseEnvelope(ev.data);
        if (env) this.#o.events.frame(env);
        return;
      }
      case "session": {
        if (this.#sendUrl) return;
        const s = parseObject(ev.data);
        if (typeof s?.session !== "string") return;
        const send = new URL(typeof s.send === "string" ? s.send : streamUrl.pathname.replace(/\/sse$/, "/send"), streamUrl);
        send.search = "";
        send.searchParams.set("session", s.session);
        this.#sendUrl = send;
        this.#o.events.open();
        return;
      }
      case "close": {
        const c = parseObject(ev.data);
        this.#closeInfo = { code: typeof c?.code === "number" ? c.code : 1006, reason: typeof c?.reason === "string" ? c.reason : "" };
        return;
      }
    }
  }

  /** Posts the queue, in batches, one POST at a time, each retried under its seq until the edge answers. */
  async #post(): Promise<void> {
    this.#posting = true;
    try {
      while (this.#queue.length > 0 && !this.#posts.signal.aborted) {
        let batch = this.#take();
        const seq = ++this.#seq;
        for (let attempt = 0; ; attempt++) {
          const url = new URL(this.#sendUrl!);
          url.searchParams.set("seq", String(seq));
          const headers: Record<string, string> = { "Content-Type": "text/plain" };
          if (this.#o.token) headers.Authorization = `Bearer ${this.#o.token}`;
          if (this.#posts.signal.aborted) return; // stopped while waiting to retry
          const attemptCtl = new AbortController();
          const giveUp = () => attemptCtl.abort();
          const timer = setTimeout(giveUp, this.#o.postTimeoutMs ?? POST_TIMEOUT_MS);
          this.#posts.signal.addEventListener("abort", giveUp, { once: true });
          let res: Response;
          let text: string;
          try {
            res = await this.#fetch(url.toString(), { method: "POST", headers, body: batch.join("\n"), signal: attemptCtl.signal, cache: "no-store", credentials: "include" });
            text = await res.text().catch(() => "");
          } catch {
            if (this.#posts.signal.aborted) return;
            await this.#sleep(retryDelay(attempt)); // failed or unanswered: the same seq again, which the edge acts on once
            continue;
          } finally {
            clearTimeout(timer);
            this.#posts.signal.removeEventListener("abort", giveUp);
          }
          if (res.ok) break;
          if (res.status === 413 && batch.length > 1) {
            // Too large for this edge: the first half now, the rest next, under the same seq.
            this.#queue.unshift(...batch.slice(batch.length >> 1));
            batch = batch.slice(0, batch.length >> 1);
            continue;
          }
          if (res.status === 409 || res.status === 429 || res.status === 502 || res.status === 503 || res.status === 504) {
            // A retry while the lost attempt is still in progress, a rate,
            // an edge (or a gateway) slow to answer: the same seq again.
            await this.#sleep(Math.max(retryDelay(attempt), retryAfter(res)));
            continue;
          }
          const reason = `send refused: ${res.status}${text ? ` ${text.trim().slice(0, 100)}` : ""}`;
          if (res.status === 404) {
            // The session is gone: closed (its stream's close event, with
            // the code that says whether to reconnect, may be on its way),
            // or its edge is.
            this.#closing = true;
            this.#posts.abort();
            this.#goneTimer = setTimeout(() => this.#end(1006, reason), GONE_GRACE_MS);
            return;
          }
          // 400: a request the edge cannot read, which a retry would repeat
          // (a protocol error). 413 for one frame: it is over every limit.
          // Others (a proxy's answer, say): a drop, and the client reconnects.
          this.#end(res.status === 400 ? 1002 : res.status === 413 ? 1009 : 1006, reason);
          return;
        }
      }
    } finally {
      this.#posting = false;
      this.#idle?.();
    }
  }

  #idle: (() => void) | undefined;

  /** Resolves once no POST is under way and nothing waits to be posted. */
  #drained(): Promise<void> {
    return new Promise((resolve) => {
      this.#idle = () => {
        if (this.#posting || this.#queue.length > 0) return;
        this.#idle = undefined;
        resolve();
      };
    });
  }

  /** The next batch off the queue: at least one frame, at most MAX_BATCH and MAX_BATCH_BYTES. */
  #take(): string[] {
    let n = 1;
    let bytes = this.#queue[0]!.length;
    while (n < this.#queue.length && n < MAX_BATCH && bytes + this.#queue[n]!.length + 1 <= MAX_BATCH_BYTES) {
      bytes += this.#queue[n]!.length + 1;
      n++;
    }
    return this.#queue.splice(0, n);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#posts.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  /** Ends the stream and the POSTs. */
  #abort(): void {
    this.#closing = true;
    this.#posts.abort();
    this.#stream.abort();
  }

  /** The connection is over: tells the connection once, and stops everything. */
  #end(code: number, reason: string): void {
    clearTimeout(this.#goneTimer);
    this.#closing = true;
    this.#queue = [];
    this.#posts.abort();
    this.#stream.abort();
    if (this.#done) return;
    this.#done = true;
    this.#o.events.close(code, reason);
  }
}

function parseObject(data: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(data);
    return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The wait before retry attempt n of a POST: 100 ms doubling to 2 s. */
function retryDelay(attempt: number): number {
  return Math.min(2000, 100 * 2 ** attempt);
}

/** A Retry-After header's wait in ms (seconds form), 0 without one. */
function retryAfter(res: Response): number {
  const s = Number(res.headers.get("Retry-After"));
  return Number.isFinite(s) && s > 0 ? Math.min(s * 1000, 30_000) : 0;
}

function errText(err: unknown): string {
  const cause = (err as { cause?: { message?: string } } | undefined)?.cause?.message;
  return (err instanceof Error ? err.message : String(err)) + (cause ? ` (${cause})` : "");
}
