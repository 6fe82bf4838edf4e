/**
 * The client: connect() and the Client it returns, which puts the parts
 * together (connection.ts, rooms.ts, presence.ts, durable.ts, rpc.ts,
 * streams.ts) and
 * routes each frame the edge sends to them and then to the application.
 */
import { Connection, type ConnectOptions, type State, type StateInfo } from "./connection.js";
import { DurableMessages, DurableRooms, type Accepted, type DurableOptions, type HistoryOptions, type HistoryPage, type Position, type RecoveryInfo } from "./durable.js";
import { encode, isSystemType, type ClientPayload, type ClientType, type Envelope, type ErrorPayload, type Meta, type PresenceDiff, type ServerPayload, type ServerType } from "./envelope.js";
import type { BackgroundErrorInfo, NatterError } from "./errors.js";
import { ListenersByKey } from "./listeners.js";
import { Presence, type PresenceApi } from "./presence.js";
import { Rooms, type JoinOptions } from "./rooms.js";
import { Handlers, OUR_ID, SERVER_ID, type Handler, type HandlerReply, type RpcOptions } from "./rpc.js";
import { Streams, type NatterStream, type StreamOptions } from "./streams.js";
import { Tracing, withImportedOtel } from "./tracing.js";

export interface Client {
  readonly state: State;
  /**
   * The id the edge gave the current connection (its first frame,
   * `$connected`): services reach this client at natter.out.conn.<id>.
   * Set before the state becomes "open"; undefined before the first
   * connection and while reconnecting; a new one on every reconnect
   * (`on("$connected", fn)` sees each).
   */
  readonly connectionId: string | undefined;
  /** Calls fn on every state change; returns the unsubscribe function. */
  onState(fn: (state: State, info?: StateInfo) => void): () => void;
  /** Calls fn for every frame of this type that is not a reply to this client's own request; "*" gets every frame. */
  on<T extends ServerType>(type: T, fn: (payload: ServerPayload<T>, envelope: Envelope<ServerPayload<T>>) => void): () => void;
  /** Sends a message; buffered while the connection is not open. */
  send<T extends ClientType>(type: T, payload?: ClientPayload<T>, meta?: Meta): void;
  /** Sends a request and resolves with the reply's payload. */
  rpc<T extends ClientType, R = unknown>(type: T, payload?: ClientPayload<T>, options?: RpcOptions): Promise<R>;
  /**
   * Sends a message of a durable type (the edge's --durable-types) and
   * resolves once the edge's work stream has stored it, with {seq,
   * duplicate}. Resends with the same idempotency key, so that the stream
   * stores it once, while the edge asks to retry (UNAVAILABLE or
   * RESOURCE_EXHAUSTED with retryAfterMs), an attempt finds no answer in
   * time (rpcTimeoutMs) or the connection drops, until options.timeoutMs;
   * any other error rejects at once. Workers' results come as publishes:
   * a durable message has no reply.
   */
  sendDurable<T extends ClientType>(type: T, payload?: ClientPayload<T>, options?: DurableOptions): Promise<Accepted>;
  /** Answers server-to-client requests of this type; one handler per type. */
  handle<T extends ServerType>(type: T, fn: (payload: ServerPayload<T>, envelope: Envelope<ServerPayload<T>>) => HandlerReply | Promise<HandlerReply>): () => void;
  /** Joins a room; remembered and re-joined after every reconnect (durable rooms with since: their last position). */
  join(room: string, options?: JoinOptions): Promise<void>;
  /** Leaves a room and forgets it. */
  leave(room: string): Promise<void>;
  /** The rooms this client is in or is joining. */
  rooms(): string[];
  /** The last position seen in a durable room this client is in or is joining; undefined for other rooms. */
  position(room: string): Position | undefined;
  /** Calls fn with the outcome of every join of a durable room with since (recovered or a gap); returns the unsubscribe function. */
  onRecovery(fn: (info: RecoveryInfo) => void): () => void;
  /** A page of a durable room's history (`$history`). */
  history<P = unknown>(room: string, options?: HistoryOptions): Promise<HistoryPage<P>>;
  readonly presence: PresenceApi;
  /** Calls fn with the `$presence.diff` batches of a room joined with presence: true. */
  onPresence(room: string, fn: (diff: PresenceDiff) => void): () => void;
  /**
   * Joins a response stream (`$stream.join`) from options.offset (default
   * 0) and reads its text: iterate the chunks, or await text(). After a
   * reconnect the client joins it again from the last `meta.offset` seen,
   * until its end; a join the edge refuses for now (UNAVAILABLE) is
   * retried from the same offset. One reader per stream id at a time.
   */
  stream(id: string, options?: StreamOptions): NatterStream;
  /** Calls options.token() and sends the new token with `$auth.refresh`. */
  refreshToken(): Promise<void>;
  /** Calls fn when something the client does by itself fails (re-joins, automatic refreshes); returns the unsubscribe function. */
  onError(fn: (error: NatterError, info: BackgroundErrorInfo) => void): () => void;
  /** Closes with 1000 and never reconnects. */
  close(): void;
}

/** Connects to a Natter edge; the client reconnects by itself until close(). */
export function connect(url: string, options: ConnectOptions = {}): Client {
  return new NatterClient(url, options);
}

type Listener = (payload: unknown, envelope: Envelope) => void;

class NatterClient implements Client {
  readonly presence: PresenceApi;

  readonly #conn: Connection;
  readonly #rooms: Rooms;
  readonly #durableRooms: DurableRooms;
  readonly #durableMessages: DurableMessages;
  readonly #presence: Presence;
  readonly #handlers: Handlers;
  readonly #streams: Streams;
  readonly #listeners = new ListenersByKey<[unknown, Envelope]>(); // by frame type, "*" for all
  #tracing: Tracing | undefined; // undefined: no spans

  constructor(url: string, options: ConnectOptions) {
    this.#conn = new Connection(url, options, {
      receive: (env) => this.#receive(env),
      resync: (gen) => {
        // The rooms' sends are awaited before "open"; the streams' joins
        // go out with them and are not.
        const sends = this.#rooms.resync(gen);
        this.#streams.resync(gen);
        return sends;
      },
      stop: () => {
        this.#rooms.stop();
        this.#streams.stop();
      },
      end: (err) => {
        this.#durableMessages.end(err);
        this.#rooms.end(err);
        this.#streams.end(err);
      },
    });
    this.#durableRooms = new DurableRooms(this.#conn);
    this.#durableMessages = new DurableMessages(this.#conn);
    this.#rooms = new Rooms(this.#conn, this.#durableRooms);
    this.#presence = new Presence(this.#conn, this.#rooms);
    this.presence = this.#presence.api;
    this.#handlers = new Handlers(this.#conn);
    this.#streams = new Streams(this.#conn);
    const { otel, tracerProvider } = options;
    if (otel) this.#tracing = new Tracing(otel, tracerProvider);
    else if (otel === undefined) withImportedOtel((api) => (this.#tracing = new Tracing(api, tracerProvider)));
    void this.#conn.dial();
  }

  get state(): State {
    return this.#conn.state;
  }

  get connectionId(): string | undefined {
    return this.#conn.connectionId;
  }

  onState(fn: (state: State, info?: StateInfo) => void): () => void {
    return this.#conn.onState(fn);
  }

  onError(fn: (error: NatterError, info: BackgroundErrorInfo) => void): () => void {
    return this.#conn.onError(fn);
  }

  on<T extends ServerType>(type: T, fn: (payload: ServerPayload<T>, envelope: Envelope<ServerPayload<T>>) => void): () => void {
    return this.#listeners.add(type, fn as Listener);
  }

  send<T extends ClientType>(type: T, payload?: ClientPayload<T>, meta?: Meta): void {
    this.#conn.checkNotClosed();
    const body = encode(payload);
    const tracing = this.#tracing;
    if (tracing === undefined || isSystemType(type)) return this.#conn.outbox.enqueue({ type, meta, payload: body });
    // The span ends once the frame is written or buffered.
    const span = tracing.send(type, meta);
    try {
      this.#conn.outbox.enqueue({ type, meta: span.meta, payload: body });
    } catch (err) {
      span.end(err);
      throw err;
    }
    span.end();
  }

  rpc<T extends ClientType, R = unknown>(type: T, payload?: ClientPayload<T>, options: RpcOptions = {}): Promise<R> {
    const tracing = this.#tracing;
    if (tracing === undefined || isSystemType(type)) return this.#conn.requests.request(type, payload, options) as Promise<R>;
    // The span ends when the reply, an error, the deadline or an abort settles the request.
    const span = tracing.rpc(type);
    return span.settle(this.#conn.requests.request(type, payload, { ...options, trace: span })) as Promise<R>;
  }

  sendDurable<T extends ClientType>(type: T, payload?: ClientPayload<T>, options: DurableOptions = {}): Promise<Accepted> {
    const tracing = this.#tracing;
    if (tracing === undefined || isSystemType(type)) return this.#durableMessages.send(type, payload, options);
    // A send (as in the Go client) whose span lasts until the stream has stored it, resends included.
    const span = tracing.send(type, undefined);
    return span.settle(this.#durableMessages.send(type, payload, options, span));
  }

  handle<T extends ServerType>(type: T, fn: (payload: ServerPayload<T>, envelope: Envelope<ServerPayload<T>>) => HandlerReply | Promise<HandlerReply>): () => void {
    return this.#handlers.handle(type, fn as Handler);
  }

  join(room: string, options: JoinOptions = {}): Promise<void> {
    return this.#rooms.join(room, options);
  }

  leave(room: string): Promise<void> {
    return this.#rooms.leave(room);
  }

  rooms(): string[] {
    return this.#rooms.list();
  }

  position(room: string): Position | undefined {
    return this.#durableRooms.position(room);
  }

  onRecovery(fn: (info: RecoveryInfo) => void): () => void {
    return this.#durableRooms.onRecovery(fn);
  }

  history<P = unknown>(room: string, options: HistoryOptions = {}): Promise<HistoryPage<P>> {
    return this.#durableRooms.history<P>(room, options);
  }

  onPresence(room: string, fn: (diff: PresenceDiff) => void): () => void {
    return this.#presence.watch(room, fn);
  }

  stream(id: string, options: StreamOptions = {}): NatterStream {
    return this.#streams.open(id, options);
  }

  refreshToken(): Promise<void> {
    return this.#conn.refreshToken();
  }

  close(): void {
    this.#conn.close();
  }

  /** A frame of the current socket, decoded by its wire, on its way to the parts and then to the application. */
  #receive(env: Envelope): void {
    // Joins and leaves made by a service, and durable rooms' positions,
    // before any listener sees the frame.
    this.#rooms.receive(env);
    // Response streams: a join's $stream.joined before its reply settles,
    // so that the chunks right after it are taken.
    this.#streams.receive(env);
    this.#emit("*", env);
    const isError = env.type === "ERROR" || env.type === "RPC_ERROR";
    if (isError) {
      // A rate limit: hold the paced sends back for as long as the edge asks.
      const e = (env.payload ?? {}) as Partial<ErrorPayload>;
      if (e.code === "RESOURCE_EXHAUSTED" && typeof e.retryAfterMs === "number" && e.retryAfterMs > 0) this.#conn.outbox.pause(e.retryAfterMs);
    }
    const cid = env.meta?.correlationId;
    if (typeof cid === "string") {
      if (this.#conn.requests.reply(cid, env)) return;
      // A server-to-client request, but never an error or a system frame:
      // answering the edge's RPC_ERROR for a late answer would start a loop.
      if (cid.startsWith(SERVER_ID) && !isError && !isSystemType(env.type)) return void this.#handlers.answer(cid, env);
      if (cid.startsWith(OUR_ID)) return; // a late reply to a request given up on
    }
    if (env.type === "$presence.diff") {
      env = this.#presence.receive(env);
    } else if (env.type === "$auth.expiring") {
      this.#conn.expiring(env.payload);
    } else if (env.type === "$connected") {
      const connected = env;
      this.#conn.connected(connected, () => this.#emit(connected.type, connected));
      return;
    }
    this.#emit(env.type, env);
  }

  #emit(type: string, env: Envelope): void {
    this.#listeners.emit(type, env.payload, env);
  }
}
