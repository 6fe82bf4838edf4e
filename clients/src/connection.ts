/**
 * The connection: one WebSocket at a time to an edge, and the client's
 * state across them. A socket is dialled (after options.token()), counts
 * as connected at the edge's `$connected`, is brought up to date (the
 * presence state and rooms, then the send buffer) before the client is
 * "open", and on a drop is replaced after the backoff unless the close
 * code or options say stop. Also the token refresh, the heartbeat and the
 * onState and onError listeners. Each socket has a generation number:
 * events of a socket the client has given up on are ignored.
 */
import { backoffDelay, shouldReconnect, type ReconnectOptions } from "./backoff.js";
import type { Envelope } from "./envelope.js";
import { lost, NatterError, type BackgroundErrorInfo } from "./errors.js";
import { Listeners } from "./listeners.js";
import { Outbox, type BufferOptions, type SendRateOptions } from "./outbox.js";
import { Requests } from "./rpc.js";

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** The close that caused a state change, when there was one. */
export interface StateInfo {
  code?: number;
  reason?: string;
}

/** What the client needs of a WebSocket; the browser's, Node's and the `ws` package's fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: unknown) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

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
}

/** What a connection asks of the rest of the client (client.ts wires it). */
export interface Session {
  /** A text frame of the current socket. */
  receive(data: string): void;
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
  readonly #url: string;
  readonly #WebSocket: WebSocketConstructor;
  #state: State = "connecting";
  #ws: WebSocketLike | null = null;
  #gen = 0; // bumped for every socket, at a drop and at close: events of older sockets are ignored
  #attempt = 0; // failed attempts since the last lasting connection, for the backoff
  #openedAt = 0; // when the current socket became open (Date.now()), 0 if it has not
  #connectionId: string | undefined; // from the current socket's $connected
  #welcoming = 0; // the socket whose handshake is done and whose $connected is awaited, 0 if none
  #expired = false; // reconnecting after a 4100 with a fresh token: a failed handshake ends the client
  #retry: ReturnType<typeof setTimeout> | undefined; // the next dial
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined; // the next try of a failed automatic refresh
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  readonly #stateListeners = new Listeners<[State, StateInfo | undefined]>();
  readonly #errorListeners = new Listeners<[NatterError, BackgroundErrorInfo]>();

  /** Checks the options; dial starts connecting. */
  constructor(url: string, options: ConnectOptions, session: Session) {
    this.options = options;
    this.#session = session;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError("natter: no WebSocket; pass options.WebSocket (Node 20 needs --experimental-websocket or the ws package)");
    }
    this.#WebSocket = WS;
    // Relative URLs resolve against the page, and http(s) becomes ws(s).
    const base = (globalThis as { location?: { href: string } }).location?.href;
    const u = new URL(url, base);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    if (options.user !== undefined) u.searchParams.set("user", options.user);
    this.#url = u.toString();
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
  get socket(): WebSocketLike | null {
    return this.#ws;
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
    const ws = this.#ws;
    this.#shutdown({ code: 1000, reason: "client closed" }, new NatterError("CANCELLED", "client closed"));
    try {
      ws?.close(1000, "client closed");
    } catch {
      // Already closing.
    }
  }

  /** Opens a new socket; its events are ignored once #gen moves on. */
  async dial(): Promise<void> {
    const gen = ++this.#gen;
    let ws: WebSocketLike | undefined;
    // The attempt ends once, whichever comes first: the socket's close, an
    // error (Node 20's WebSocket may fire "error" without "close" when a
    // handshake fails), or a token() plus handshake that take too long.
    let ended = false;
    const end = (code: number, reason: string) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      this.#dropped(gen, code, reason);
      try {
        ws?.close();
      } catch {
        // Already closed.
      }
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
    if (token && !HTTP_TOKEN.test(token)) {
      // Retrying cannot help: the WebSocket refuses such a subprotocol.
      clearTimeout(timer);
      const err = new NatterError("INVALID_ARGUMENT", "the token cannot be sent as a WebSocket subprotocol: use base64url (JWTs are)");
      this.report(err, { op: "connect", retrying: false });
      this.#shutdown({ reason: err.message }, err);
      return;
    }
    try {
      ws = new this.#WebSocket(this.#url, token ? ["natter", `bearer.${token}`] : ["natter"]);
    } catch (err) {
      end(1006, `connect failed: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    const socket = ws;
    this.#ws = socket;
    socket.addEventListener("open", () => {
      if (gen !== this.#gen) return;
      this.#expired = false; // the fresh token was accepted
      // The edge's first frame, $connected, completes the connect (#welcomed).
      this.#welcoming = gen;
    });
    socket.addEventListener("message", (ev) => {
      const { data } = ev as { data: unknown };
      if (gen === this.#gen && typeof data === "string") this.#session.receive(data);
    });
    socket.addEventListener("error", () => end(1006, "connection error"));
    socket.addEventListener("close", (ev) => {
      const { code, reason } = ev as { code: number; reason: string };
      end(code, reason);
    });
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
    this.#ws = null;
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
    this.outbox.stop();
    clearTimeout(this.#refreshTimer);
    clearInterval(this.#heartbeat);
    this.#session.stop();
  }

  /** Ends the client for good: every waiting promise rejects with err. */
  #shutdown(info: StateInfo, err: NatterError): void {
    this.#gen++;
    this.#ws = null;
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
