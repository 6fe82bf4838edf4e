/**
 * natter-ai: a Vercel AI SDK `ChatTransport` over Natter's response streams.
 *
 * `sendMessages` asks a worker (an RPC of `sendType`) to answer the chat;
 * the worker replies with the id of a response stream it writes the
 * answer's text to, and the transport reads that stream through the Natter
 * client, turning each chunk into a `text-delta`. `reconnectToStream` asks
 * the worker (an RPC of `resumeType`) which stream is still being written
 * for the chat and reads it from its beginning. The client re-joins the
 * stream from its last position after a reconnect of its WebSocket, so a
 * response survives drops; reading from 0 after a reload makes it survive
 * reloads, other tabs and other devices of the same user.
 *
 * Wire contract: docs/protocol.md, "Response streams".
 */
import type { ChatTransport, UIMessage, UIMessageChunk } from "ai";

/** A chunk of a Natter response stream: its text and the byte offset after it. */
export interface StreamChunkLike {
  text: string;
  offset: number;
}

/**
 * The part of a Natter response stream (natter-client's `NatterStream`)
 * this transport uses: the chunks as an async iterable (whose iterator
 * throws the client's `NatterError` at an error end), `cancel()` (tells the
 * producer to stop) and `leave()` (stops reading; the producer goes on).
 */
export interface NatterStreamLike extends AsyncIterable<StreamChunkLike> {
  readonly id: string;
  cancel(): Promise<void>;
  leave(): void;
}

/**
 * The part of a Natter client (natter-client's `Client`) this transport
 * uses: `rpc` and `stream`.
 */
export interface NatterClientLike {
  rpc(type: string, payload?: any, options?: { timeoutMs?: number }): Promise<unknown>;
  stream(id: string, options?: { offset?: number }): NatterStreamLike;
}

/** Options of {@link NatterChatTransport}. */
export interface NatterChatTransportOptions {
  /** A connected Natter client (natter-client's `connect(...)`). The transport never closes it. */
  client: NatterClientLike;
  /**
   * The RPC type that asks a worker to answer the chat. Default
   * `"ai.chat.send"` (`chat.send` is the edge's built-in chat room type,
   * with a schema of its own).
   */
  sendType?: string;
  /** The RPC type that asks a worker for the chat's stream in progress. Default `"ai.chat.resume"`. */
  resumeType?: string;
  /** The deadline of each RPC in ms; default the client's `rpcTimeoutMs`. */
  timeoutMs?: number;
}

/**
 * What the worker receives for `sendType`: the SDK's request. `body` and
 * `metadata` are there only when the application passed them
 * (`sendMessage(msg, { body })`).
 */
export interface SendRequest<UI_MESSAGE extends UIMessage = UIMessage> {
  chatId: string;
  messages: UI_MESSAGE[];
  trigger: "submit-message" | "regenerate-message";
  messageId: string | undefined;
  body?: object;
  metadata?: unknown;
}

/** What the worker receives for `resumeType`. */
export interface ResumeRequest {
  chatId: string;
  body?: object;
  metadata?: unknown;
}

/**
 * The worker's reply to both RPCs: the response stream's id (null: no
 * response in progress, for `resumeType` only), and optionally the id of
 * the assistant message (default: the stream id), which the chat uses for
 * the message, so that a resumed response replaces the same message.
 */
export interface StreamReply {
  stream: string | null;
  messageId?: string;
}

/** The default RPC types. */
export const DEFAULT_SEND_TYPE = "ai.chat.send";
export const DEFAULT_RESUME_TYPE = "ai.chat.resume";

/**
 * A `ChatTransport` for the AI SDK's `Chat` (`useChat({ transport })`)
 * over a Natter client: requests are RPCs, responses are Natter response
 * streams.
 *
 * - `stop()` (the request's abort signal) cancels the stream: the edge tells
 *   the producer to stop, and the chat keeps the text it has.
 * - A WebSocket drop mid-response is invisible to the chat: the client
 *   re-joins the stream from the last byte it saw.
 * - `resumeStream()` (after a reload, in another tab) reads the stream
 *   in progress from its beginning; `resumeStreamIsReplay` tells the chat
 *   to replace what it has of the message rather than append to it.
 */
export class NatterChatTransport<UI_MESSAGE extends UIMessage> implements ChatTransport<UI_MESSAGE> {
  /** A resumed stream is read from offset 0: the whole response so far, then live. */
  readonly resumeStreamIsReplay = true;

  readonly #client: NatterClientLike;
  readonly #sendType: string;
  readonly #resumeType: string;
  readonly #timeoutMs: number | undefined;
  /** Counts reconnectToStream calls per chat, to tell a superseded resume from stop(). */
  readonly #resumes = new Map<string, number>();
  /** The reads in progress by stream id: a client reads a stream once at a time. */
  readonly #reading = new Map<string, (how: "leave") => void>();

  constructor({ client, sendType = DEFAULT_SEND_TYPE, resumeType = DEFAULT_RESUME_TYPE, timeoutMs }: NatterChatTransportOptions) {
    if (client == null) throw new TypeError("NatterChatTransport: options.client is required");
    this.#client = client;
    this.#sendType = sendType;
    this.#resumeType = resumeType;
    this.#timeoutMs = timeoutMs;
  }

  async sendMessages({ chatId, messages, abortSignal, trigger, messageId, body, metadata }: Parameters<ChatTransport<UI_MESSAGE>["sendMessages"]>[0]): Promise<ReadableStream<UIMessageChunk>> {
    const request: SendRequest<UI_MESSAGE> = { chatId, messages, trigger, messageId };
    if (body !== undefined) request.body = body;
    if (metadata !== undefined) request.metadata = metadata;
    const pending = this.#rpc(this.#sendType, request);
    const reply = await untilAborted(pending, abortSignal, (late) => {
      // stop() before the worker answered: the answer still comes, and the
      // producer it started is cancelled then.
      late.then((r) => { if (r.stream != null) cancelThenLeave(this.#client.stream(r.stream)); }, () => {});
    });
    if (reply.stream == null) throw new Error(`natter-ai: the worker's ${this.#sendType} reply has no stream`);
    return this.#read(reply, 0, abortSignal, () => "cancel");
  }

  async reconnectToStream({ chatId, abortSignal, body, metadata }: Parameters<ChatTransport<UI_MESSAGE>["reconnectToStream"]>[0]): Promise<ReadableStream<UIMessageChunk> | null> {
    const generation = (this.#resumes.get(chatId) ?? 0) + 1;
    this.#resumes.set(chatId, generation);
    const request: ResumeRequest = { chatId };
    if (body !== undefined) request.body = body;
    if (metadata !== undefined) request.metadata = metadata;
    // Aborted before the answer: a newer resume or stop() came first; the
    // stream was not read yet and is left alone.
    const reply = await untilAborted(this.#rpc(this.#resumeType, request), abortSignal);
    if (reply.stream == null) return null;
    // The chat aborts a resume both for stop() and when resumeStream() is
    // called again, which calls reconnectToStream for the same chat in the
    // same tick: only the first cancels the producer.
    return this.#read(reply, 0, abortSignal, () => (this.#resumes.get(chatId) === generation ? "cancel" : "leave"));
  }

  async #rpc(type: string, payload: SendRequest<UI_MESSAGE> | ResumeRequest): Promise<StreamReply> {
    const reply = await this.#client.rpc(type, payload, this.#timeoutMs === undefined ? {} : { timeoutMs: this.#timeoutMs });
    const stream = (reply as StreamReply | null)?.stream;
    if (stream !== null && typeof stream !== "string") {
      throw new Error(`natter-ai: the worker's ${type} reply is not {stream: id | null}: ${JSON.stringify(reply)}`);
    }
    const messageId = (reply as StreamReply).messageId;
    return { stream, messageId: typeof messageId === "string" ? messageId : stream ?? undefined } as StreamReply;
  }

  /**
   * Reads the stream from offset as UI message chunks: start, text-start, a
   * text-delta per chunk, text-end, then finish (done) or error. An abort of
   * signal ends the reading at once, and then, as onAbort decides after the
   * caller's own synchronous reaction, cancels the stream or leaves it.
   */
  #read(reply: StreamReply, offset: number, signal: AbortSignal | undefined, onAbort: () => "cancel" | "leave"): ReadableStream<UIMessageChunk> {
    const id = reply.stream as string;
    // A newer read of the same stream (a resume while this transport still
    // reads it) takes over: the older one ends without a finish.
    this.#reading.get(id)?.("leave");
    const stream = this.#client.stream(id, { offset });
    const iterator = stream[Symbol.asyncIterator]();
    const textId = `text-${stream.id}`;
    let finished = false; // the reading ended: by the stream's end, an abort or a cancel of the ReadableStream
    let controllerRef: ReadableStreamDefaultController<UIMessageChunk> | undefined;

    const reading = this.#reading;
    const done = () => {
      finished = true;
      signal?.removeEventListener("abort", aborted);
      if (reading.get(id) === stopReading) reading.delete(id);
    };
    const stopReading = (how: "cancel" | "leave") => {
      if (finished) return;
      done();
      if (how === "cancel") cancelThenLeave(stream);
      else stream.leave();
      try { controllerRef?.close(); } catch { /* closed or cancelled already */ }
    };
    const aborted = () => {
      if (finished) return;
      // Decide after the code that aborted has run on: a new resume of
      // the same chat follows its abort synchronously.
      queueMicrotask(() => stopReading(onAbort()));
    };

    reading.set(id, stopReading);

    return new ReadableStream<UIMessageChunk>({
      start(controller) {
        controllerRef = controller;
        controller.enqueue(reply.messageId === undefined ? { type: "start" } : { type: "start", messageId: reply.messageId });
        controller.enqueue({ type: "text-start", id: textId });
        if (signal?.aborted) aborted();
        else signal?.addEventListener("abort", aborted, { once: true });
      },
      async pull(controller) {
        if (finished) return;
        let next: IteratorResult<StreamChunkLike>;
        try {
          next = await iterator.next();
        } catch (err) {
          if (finished) return;
          done();
          controller.enqueue({ type: "text-end", id: textId });
          controller.enqueue({ type: "error", errorText: errorText(err) });
          controller.close();
          return;
        }
        if (finished) return;
        if (next.done) {
          done();
          controller.enqueue({ type: "text-end", id: textId });
          controller.enqueue({ type: "finish", finishReason: "stop" });
          controller.close();
          return;
        }
        if (next.value.text !== "") controller.enqueue({ type: "text-delta", id: textId, delta: next.value.text });
      },
      cancel() {
        // The chat stopped reading (after an abort, or a resume it no
        // longer wants): stop receiving; an abort has decided already.
        if (finished) return;
        done();
        stream.leave();
      },
    });
  }
}

/**
 * Resolves with p, or rejects with an AbortError as soon as signal aborts
 * (the AI SDK treats that error as a stop, not a failure); p is then given
 * to late, if any.
 */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, late?: (p: Promise<T>) => void): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      late?.(p);
      reject(abortError());
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener("abort", onAbort); resolve(v); },
      (e) => { signal.removeEventListener("abort", onAbort); reject(e); },
    );
  });
}

/**
 * Cancels a stream (the edge tells the producer) and then stops reading it,
 * whether the cancel went through or not: nobody reads what follows.
 */
function cancelThenLeave(stream: NatterStreamLike): void {
  stream.cancel().then(() => stream.leave(), () => stream.leave());
}

function abortError(): Error {
  const err = new Error("natter-ai: the request was aborted");
  err.name = "AbortError";
  return err;
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === "object" && err !== null && typeof (err as { message?: unknown }).message === "string") return (err as { message: string }).message;
  return String(err);
}
