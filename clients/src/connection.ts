/**
 * The connection: one transport at a time to an edge (a "socket": a
 * WebSocket, websocket.ts, or the HTTP fallback, sse.ts), and the client's
 * state across them. A socket is dialled (after options.token()), counts
 * as connected at the edge's `$connected`, is brought up to date (the
 * presence state and rooms, then the send buffer) before the client is
 * "open", and on a drop is replaced after the backoff unless the close
 * code or options say stop. Also the choice of transport (the fallback to
 * sse when a WebSocket handshake fails or hangs, remembered for a while),
 * the wire (JSON, or protobuf.ts loaded on demand), the token refresh, the
 * heartbeat and the onState and onError listeners. Each socket has a
 * generation number: events of a socket the client has given up on are
 * ignored.
 */
import { backoffDelay, shouldReconnect, type ReconnectOptions } from "./backoff.js";
import type { Envelope } from "./envelope.js";
import { lost, NatterError, type BackgroundErrorInfo } from "./errors.js";
import { Listeners } from "./listeners.js";
import { Outbox, type BufferOptions, type SendRateOptions } from "./outbox.js";
import { Requests } from "./rpc.js";
import { dialSse } from "./sse.js";
import { isOtelApi, type OtelApi, type OtelTracerProvider } from "./tracing.js";
import type { Transport, TransportEvents, TransportName } from "./transport.js";
import { dialWebSocket, type WebSocketConstructor } from "./websocket.js";
import { jsonCodec, type Codec, type Schemas } from "./wire.js";

export type { WebSocketConstructor, WebSocketLike } from "./websocket.js";

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** The close that caused a state change, when there was one. */
export interface StateInfo {
  code?: number;
  reason?: string;
}

export interface ConnectOptions {
  /** Sent as the subprotocol `bearer.<token>`; a function is called on every (re)connect and by refreshToken. */
  token?: string | (() => string | Promise<string>);
  /** Dev mode only (insecure): the user id, sent as `?user=`. */
  user?: string;
  /** WebSocket constructor. Default globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect with exponential backoff and full jitter (default), or never (false). */
  reconnect?: false | ReconnectOptions;
  /** The send buffer used while the connection is not open. */
  buffer?: BufferOptions;
  /** Default RPC deadline, in ms. Default 10000. */
  rpcTimeoutMs?: number;
  /** Time allowed for options.token(), the handshake and the edge's `$connected`, in ms. Default 15000. */
  connectTimeoutMs?: number;
  /** Client-side pacing of sends (the edge's default --rate-limit), or false. Default {perSecond: 100, burst: 200}. */
  sendRate?: false | SendRateOptions;
  /** Sends `__heartbeat` this often while open (for edges with --idle-timeout). Default 0: off. */
  heartbeatMs?: number;
  /**
   * The WebSocket wire: JSON text frames ("json", the default), or one
   * natter.v1.Envelope per binary frame ("protobuf": the subprotocol
   * natter.protobuf; needs options.schemas, and loads @bufbuild/protobuf
   * then). Payloads stay JSON-shaped for the application either way. The
   * sse transport is JSON.
   */
  wire?: "json" | "protobuf";
  /** The schemas of the protobuf wire: natterSchemas of the messages.gen.ts that natter-gen-ts writes. */
  schemas?: Schemas;
  /**
   * The transports to try, in order. Default ["websocket", "sse"]: when a
   * WebSocket handshake fails, or has not completed within
   * wsConnectTimeoutMs, the client connects over sse (an event stream and
   * POSTs) and stays with it for fallbackMemoryMs.
   */
  transports?: TransportName[];
  /** Time a WebSocket handshake may take before the next transport is tried, in ms. Default 5000, at most half of connectTimeoutMs. */
  wsConnectTimeoutMs?: number;
  /** How long a fallback from websocket to sse is remembered (in localStorage when there is one, else in memory), in ms. Default 300000. */
  fallbackMemoryMs?: number;
  /** fetch, for the sse transport. Default globalThis.fetch. */
  fetch?: typeof fetch;
  /**
   * OpenTelemetry (README.md, "Tracing"): the `@opentelemetry/api` module
   * (`import * as otel from "@opentelemetry/api"`), for a span per send,
   * sendDurable and rpc whose context the frame carries in
   * meta.traceparent; false for none. Default: the client imports
   * `@opentelemetry/api` itself, once per process, and traces when that
   * import succeeds (sends and requests made before it completes, in the
   * same tick as connect(), have no span); where it fails, there is none.
   */
  otel?: OtelApi | false;
  /** The provider of the spans. Default the API's global one. */
  tracerProvider?: OtelTracerProvider;
}

/** What a connection asks of the rest of the client (client.ts wires it). */
export interface Session {
  /** An envelope of the current socket. */
  receive(env: Envelope): void;
  /**
   * Sends on socket gen what the edge forgot with the last one (rooms.ts:
   * Rooms.resync); each send resolves, if the edge accepted it, with what
   * to call once the client is open.
   */
  resync(gen: number): Promise<(() => void) | undefined>[];
  /** The socket is gone: stop what waits to be re-sent on it. */
  stop(): void;
  /** The client has closed: reject everything still waiting with err. */
  end(err: NatterError): void;
}

const CONNECT_TIMEOUT_MS = 15000; // token() plus a handshake not done by then is given up and retried
const WS_CONNECT_TIMEOUT_MS = 5000; // a WebSocket handshake not done by then gives way to the next transport
const FALLBACK_MEMORY_MS = 5 * 60_000; // a fallback to sse is kept this long
const TRANSPORTS: readonly TransportName[] = ["websocket", "sse"];
const STABLE_MS = 5000; // a connection open this long resets the backoff
// A subprotocol must be an HTTP token (RFC 7230 tchar): base64url and JWTs are, base64's "/" and "=" are not.
const HTTP_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * A client's sockets, one after another, and what goes out on them. The
 * parts that act through it declare what they need of it (OutboxConn,
 * RequestsConn, HandlersConn, RoomsConn, PresenceConn, DurableConn) and do
 * not import it: it fits each, and only client.ts knows both.
 */
export class Connection {
  readonly options: ConnectOptions;
  /** The requests waiting for their replies. */
  readonly requests: Requests;
  /** The send buffer and the send rate. */
  readonly outbox: Outbox;

  readonly #session: Session;
  readonly #wsUrl: string; // ws: or wss:
  readonly #httpUrl: string; // the same with http: or https:, for sse
  readonly #edgeKey: string; // the edge's origin and path: what a fallback is remembered by
  readonly #WebSocket: WebSocketConstructor | undefined;
  readonly #fetch: typeof fetch | undefined;
  readonly #transports: readonly TransportName[];
  #codec: Promise<Codec> | undefined; // the protobuf wire's, loaded at the first dial
  #state: State = "connecting";
  #transport: Transport | null = null;
  #gen = 0; // bumped for every socket, at a drop and at close: events of older sockets are ignored
  #attempt = 0; // failed attempts since the last lasting connection, for the backoff
  #openedAt = 0; // when the current socket became open (Date.now()), 0 if it has not
  #connectionId: string | undefined; // from the current socket's $connected
  #welcoming = 0; // the socket whose handshake is done and whose $connected is awaited, 0 if none
  #expired = false; // reconnecting after a 4100 with a fresh token: a failed handshake ends the client
  #retry: ReturnType<typeof setTimeout> | undefined; // the next dial
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #wsTimer: ReturnType<typeof setTimeout> | undefined; // the current WebSocket's handshake deadline, before the next transport
  #refreshTimer: ReturnType<typeof setTimeout> | undefined; // the next try of a failed automatic refresh
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  readonly #stateListeners = new Listeners<[State, StateInfo | undefined]>();
  readonly #errorListeners = new Listeners<[NatterError, BackgroundErrorInfo]>();

  /** Checks the options; dial starts connecting. */
  constructor(url: string, options: ConnectOptions, session: Session) {
    this.options = options;
    this.#session = session;
    this.#WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.#fetch = options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    const wanted = options.transports ?? TRANSPORTS;
    if (!Array.isArray(wanted) || wanted.length === 0 || wanted.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError(`natter: options.transports must list "websocket" and/or "sse"`);
    }
    this.#transports = wanted.filter((t) => (t === "websocket" ? this.#WebSocket : this.#fetch) !== undefined);
    if (this.#transports.length === 0) {
      throw new TypeError(wanted.includes("websocket")
        ? "natter: no WebSocket; pass options.WebSocket (Node 20 needs --experimental-websocket or the ws package)"
        : "natter: no fetch; pass options.fetch");
    }
    if (options.wire !== undefined && options.wire !== "json" && options.wire !== "protobuf") {
      throw new TypeError(`natter: options.wire must be "json" or "protobuf"`);
    }
    if (options.otel !== undefined && options.otel !== false && !isOtelApi(options.otel)) {
      throw new TypeError(`natter: options.otel must be the @opentelemetry/api module, or false`);
    }
    if (options.wire === "protobuf" && !options.schemas) {
      throw new TypeError(`natter: wire "protobuf" needs options.schemas (natterSchemas of the messages.gen.ts natter-gen-ts writes)`);
    }
    // Relative URLs resolve against the page; ws(s) and http(s) are the same edge.
    const base = (globalThis as { location?: { href: string } }).location?.href;
    const u = new URL(url, base);
    if (options.user !== undefined) u.searchParams.set("user", options.user);
    u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
    this.#wsUrl = u.toString();
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    this.#httpUrl = u.toString();
    this.#edgeKey = u.origin + u.pathname;
    this.outbox = new Outbox(this);
    this.requests = new Requests(this);
  }

  get state(): State {
    return this.#state;
  }

  /** The current socket's generation. */
  get gen(): number {
    return this.#gen;
  }

  /** The current socket, null between sockets. */
  get transport(): Transport | null {
    return this.#transport;
  }

  get connectionId(): string | undefined {
    return this.#connectionId;
  }

  onState(fn: (state: State, info?: StateInfo) => void): () => void {
    return this.#stateListeners.add(fn);
  }

  onError(fn: (error: NatterError, info: BackgroundErrorInfo) => void): () => void {
    return this.#errorListeners.add(fn);
  }

  /** Tells the onError listeners that something the client does by itself failed. */
  report(error: NatterError, info: BackgroundErrorInfo): void {
    this.#errorListeners.emit(error, info);
  }

  checkNotClosed(): void {
    if (this.#state === "closed") throw new NatterError("UNAVAILABLE", "the client is closed");
  }

  /** The wait before retry attempt of something the edge refused with err: the reconnect backoff, at least err's retryAfterMs. */
  backoff(attempt: number, err?: NatterError): number {
    const policy = this.options.reconnect;
    return Math.max(err?.retryAfterMs ?? 0, backoffDelay(attempt, policy === false ? {} : policy));
  }

  /**
   * The edge's `$connected` on the current socket: its id. The connect
   * completes (and the connection goes on to "open") after deliver has
   * shown the frame to the listeners.
   */
  connected(env: Envelope, deliver: () => void): void {
    const id = (env.payload as { connectionId?: unknown } | undefined)?.connectionId;
    if (typeof id === "string") this.#connectionId = id;
    const gen = this.#gen;
    deliver();
    this.#welcomed(gen);
  }

  /** The edge's `$auth.expiring`: with a token function, refreshes the token by itself. */
  expiring(payload: unknown): void {
    if (typeof this.options.token !== "function") return;
    const expiresAt = (payload as { expiresAt?: unknown } | undefined)?.expiresAt;
    this.#autoRefresh(typeof expiresAt === "number" ? expiresAt : 0, this.#gen, 0);
  }

  async refreshToken(): Promise<void> {
    const token = this.options.token;
    if (typeof token !== "function") throw new NatterError("FAILED_PRECONDITION", "options.token is not a function");
    // Not open: the next (re)connect calls options.token() itself.
    if (this.#state !== "open") return;
    await this.requests.request("$auth.refresh", { token: await timeLimit(token(), this.#connectTimeout(), "options.token()") });
  }

  close(): void {
    if (this.#state === "closed") return;
    const t = this.#transport;
    this.#shutdown({ code: 1000, reason: "client closed" }, new NatterError("CANCELLED", "client closed"));
    t?.close(1000, "client closed");
  }

  /**
   * Opens a new socket; its events are ignored once #gen moves on. The
   * transports are tried in order (a remembered fallback skips the
   * WebSocket): the next one when a handshake fails, or when a WebSocket's
   * has not completed within wsConnectTimeoutMs.
   */
  async dial(): Promise<void> {
    const gen = ++this.#gen;
    let transport: Transport | undefined;
    // The attempt ends once, whichever comes first: the last transport's
    // close or failed handshake, or a token() plus handshake that take too long.
    let ended = false;
    const end = (code: number, reason: string) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      clearTimeout(this.#wsTimer);
      this.#dropped(gen, code, reason);
      transport?.close();
    };
    // One deadline for token(), the handshake and the edge's $connected.
    // An edge that opens the socket but sends no $connected by then gets
    // the connection anyway, without a connectionId.
    const timer = setTimeout(() => (this.#welcoming === gen ? this.#welcomed(gen) : end(1006, "connect timeout")), this.#connectTimeout());
    this.#connectTimer = timer; // for close()
    let token: string | undefined;
    try {
      const t = this.options.token;
      // Awaited even when static: a bad token then fails after connect()
      // returned, so that onState listeners and a first join() see it.
      token = await (typeof t === "function" ? t() : t);
    } catch (err) {
      end(1006, `options.token() failed: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (ended || gen !== this.#gen) return; // timed out or closed while the token was fetched
    let codec = jsonCodec;
    if (this.options.wire === "protobuf") {
      try {
        codec = await this.#protobuf();
      } catch (err) {
        if (ended || gen !== this.#gen) return;
        clearTimeout(timer);
        const e = err instanceof NatterError ? err : new NatterError("INTERNAL", String(err));
        this.report(e, { op: "connect", retrying: false });
        this.#shutdown({ reason: e.message }, e);
        return;
      }
      if (ended || gen !== this.#gen) return;
    }
    let plan = this.#plan();
    if (token && !HTTP_TOKEN.test(token)) {
      // The WebSocket refuses such a subprotocol; a header takes it.
      plan = plan.filter((t) => t !== "websocket");
      if (plan.length === 0) {
        // Retrying cannot help.
        clearTimeout(timer);
        const err = new NatterError("INVALID_ARGUMENT", "the token cannot be sent as a WebSocket subprotocol: use base64url (JWTs are)");
        this.report(err, { op: "connect", retrying: false });
        this.#shutdown({ reason: err.message }, err);
        return;
      }
    }
    const start = (i: number): void => {
      const name = plan[i]!;
      const next = i + 1 < plan.length ? () => start(i + 1) : undefined;
      let t: Transport | undefined;
      let opened = false;
      const current = () => !ended && gen === this.#gen && t !== undefined && transport === t;
      const events: TransportEvents = {
        open: () => {
          if (!current()) return;
          opened = true;
          clearTimeout(this.#wsTimer);
          if (i > 0 && plan[0] === "websocket" && name === "sse") this.#remember();
          this.#expired = false; // the fresh token was accepted
          // The edge's first frame, $connected, completes the connect (#welcomed).
          this.#welcoming = gen;
        },
        frame: (env) => {
          if (current()) this.#session.receive(env);
        },
        error: (err) => {
          if (current()) this.report(new NatterError("INTERNAL", err.message), { op: "receive", retrying: false });
        },
        close: (code, reason) => {
          if (!current()) return;
          clearTimeout(this.#wsTimer);
          if (!opened && next) next(); // the handshake failed: the next transport
          else end(code, reason);
        },
      };
      try {
        t = name === "websocket"
          ? dialWebSocket(this.#WebSocket!, this.#wsUrl, token, codec, events)
          : dialSse({ url: this.#httpUrl, token, fetch: this.#fetch!, events });
      } catch (err) {
        if (next) return next();
        end(1006, `connect failed: ${err instanceof Error ? err.message : String(err)}`);
        return;
      }
      transport = t;
      this.#transport = t;
      if (name === "websocket" && next) {
        // A proxy that stalls the Upgrade: give up on it before the connect deadline.
        this.#wsTimer = setTimeout(() => {
          if (!current() || opened) return;
          t!.close();
          next();
        }, this.#wsConnectTimeout());
      }
    };
    start(0);
  }

  /** The transports of the next dial: options.transports, less the WebSocket while a fallback is remembered. */
  #plan(): readonly TransportName[] {
    const list = this.#transports;
    if (list[0] === "websocket" && list.includes("sse") && recall(this.#edgeKey) > Date.now()) return list.filter((t) => t !== "websocket");
    return list;
  }

  /** A WebSocket failed where sse works: skip it for fallbackMemoryMs. */
  #remember(): void {
    const ms = this.options.fallbackMemoryMs ?? FALLBACK_MEMORY_MS;
    if (ms > 0) remember(this.#edgeKey, Date.now() + ms);
  }

  /** The protobuf wire's codec: protobuf.ts and @bufbuild/protobuf, loaded once. */
  #protobuf(): Promise<Codec> {
    this.#codec ??= import("./protobuf.js").then(
      (m) => {
        try {
          return m.createProtobufCodec(this.options.schemas!);
        } catch (err) {
          throw new NatterError("INVALID_ARGUMENT", err instanceof Error ? err.message : String(err));
        }
      },
      (err: unknown) => {
        throw new NatterError("FAILED_PRECONDITION", `natter: wire "protobuf" could not load its runtime (@bufbuild/protobuf): ${err instanceof Error ? err.message : String(err)}`);
      },
    );
    return this.#codec;
  }

  #wsConnectTimeout(): number {
    return this.options.wsConnectTimeoutMs ?? Math.min(WS_CONNECT_TIMEOUT_MS, this.#connectTimeout() / 2);
  }

  #connectTimeout(): number {
    return this.options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
  }

  /** The connect of socket gen is complete: its $connected came, or the connect deadline passed without one. */
  #welcomed(gen: number): void {
    if (this.#welcoming !== gen || gen !== this.#gen) return;
    this.#welcoming = 0;
    clearTimeout(this.#connectTimer);
    void this.#ready(gen);
  }

  /**
   * Brings a new socket up to date before it counts as open: the presence
   * state and every room first, then the buffered sends in order, so that
   * what was sent while away arrives after the re-joins.
   */
  async #ready(gen: number): Promise<void> {
    if (gen !== this.#gen) return;
    // Loop: a join() made during the sync is part of it. Joins resolve
    // once the client is open, so that `await join()` means both. A re-join
    // the edge refuses for now is retried later and does not hold this up.
    const done: (() => void)[] = [];
    for (let sends = this.#session.resync(gen); sends.length > 0; sends = this.#session.resync(gen)) {
      for (const ok of await Promise.all(sends)) if (ok) done.push(ok);
      if (gen !== this.#gen) return; // waiters stay for the next socket
    }
    if (!this.outbox.flush()) return; // the socket is going away; its close event follows
    this.#openedAt = Date.now();
    const every = this.options.heartbeatMs ?? 0;
    if (every > 0) {
      // For --idle-timeout: the ack carries one of our ids and is ignored like a late reply.
      this.#heartbeat = setInterval(() => this.outbox.transmit({ type: "__heartbeat", meta: { correlationId: this.requests.nextId() } }), every);
    }
    this.#setState("open");
    done.forEach((ok) => ok());
  }

  #dropped(gen: number, code: number, reason: string): void {
    if (gen !== this.#gen) return;
    // A new generation at once: what was on its way on this socket counts
    // as lost (not refused), and is sent again on the next one.
    this.#gen++;
    this.#transport = null;
    this.#connectionId = undefined;
    this.#stopTimers();
    this.requests.lose(gen, lost(`connection lost (${code}${reason ? ` ${reason}` : ""})`));
    const policy = this.options.reconnect;
    // 4100 (token expired) with a token function: one reconnect with a
    // fresh token. If that handshake fails too (401), the client ends.
    const refresh = code === 4100 && typeof this.options.token === "function" && !this.#expired;
    if (this.#expired || policy === false || (!shouldReconnect(code) && !refresh)) {
      const info = this.#expired ? { code: 4100, reason: "token expired; the fresh token was refused" } : { code, reason };
      this.#shutdown(info, new NatterError("UNAVAILABLE", info.reason || `connection closed (${code})`));
      return;
    }
    this.#expired = refresh;
    // The backoff starts over only after a connection that lasted: an edge
    // that accepts and then drops every connection still gets backed off.
    if (this.#openedAt > 0 && Date.now() - this.#openedAt >= STABLE_MS) this.#attempt = 0;
    this.#openedAt = 0;
    this.#setState("reconnecting", { code, reason });
    this.#retry = setTimeout(() => void this.dial(), backoffDelay(this.#attempt++, policy));
  }

  /** Stops what runs per socket. */
  #stopTimers(): void {
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#wsTimer);
    this.outbox.stop();
    clearTimeout(this.#refreshTimer);
    clearInterval(this.#heartbeat);
    this.#session.stop();
  }

  /** Ends the client for good: every waiting promise rejects with err. */
  #shutdown(info: StateInfo, err: NatterError): void {
    this.#gen++;
    this.#transport = null;
    this.#connectionId = undefined;
    clearTimeout(this.#retry);
    this.#stopTimers();
    this.requests.fail(err);
    this.outbox.clear();
    this.#session.end(err);
    this.#setState("closed", info);
  }

  #setState(state: State, info?: StateInfo): void {
    if (state === this.#state) return;
    this.#state = state;
    this.#stateListeners.emit(state, info);
  }

  /** After $auth.expiring: refreshes, and retries with backoff until the token expires. */
  #autoRefresh(expiresAt: number, gen: number, attempt: number): void {
    clearTimeout(this.#refreshTimer);
    this.refreshToken().catch((err: unknown) => {
      if (gen !== this.#gen) return;
      const e = err instanceof NatterError ? err : new NatterError("INTERNAL", String(err));
      const delay = this.backoff(attempt, e);
      const retrying = Date.now() + delay < expiresAt;
      this.report(e, { op: "refresh", retrying });
      // Otherwise the edge closes with 4100 at expiresAt (see #dropped).
      if (retrying) this.#refreshTimer = setTimeout(() => this.#autoRefresh(expiresAt, gen, attempt + 1), delay);
    });
  }
}

/** Rejects with DEADLINE_EXCEEDED when v has not settled within ms. */
function timeLimit<T>(v: T | Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NatterError("DEADLINE_EXCEEDED", `${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([Promise.resolve(v), late]).finally(() => clearTimeout(timer));
}

// Remembered fallbacks, by the edge's URL: expiry times in ms, in
// localStorage when the platform has one (shared by a page's clients and
// its later visits), else here.
const memory = new Map<string, number>();
const MEMORY_KEY = "natter.fallback ";

function storage(): { getItem(k: string): string | null; setItem(k: string, v: string): void } | undefined {
  try {
    return (globalThis as { localStorage?: { getItem(k: string): string | null; setItem(k: string, v: string): void } }).localStorage ?? undefined;
  } catch {
    return undefined; // a browser that forbids storage throws on access
  }
}

function recall(url: string): number {
  const s = storage();
  if (s) {
    try {
      return Number(s.getItem(MEMORY_KEY + url)) || 0;
    } catch {
      // Not readable: the memory below.
    }
  }
  return memory.get(url) ?? 0;
}

function remember(url: string, until: number): void {
  const s = storage();
  if (s) {
    try {
      s.setItem(MEMORY_KEY + url, String(until));
      return;
    } catch {
      // Full or forbidden: the memory below.
    }
  }
  memory.set(url, until);
}
