// Generated from clients/src/connection.ts by `npm run build` in clients/. Do not edit.
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
import { backoffDelay, shouldReconnect } from "./backoff.js";
import { lost, NatterError } from "./errors.js";
import { Listeners } from "./listeners.js";
import { Outbox } from "./outbox.js";
import { Requests } from "./rpc.js";
import { dialSse } from "./sse.js";
import { isOtelApi } from "./tracing.js";
import { dialWebSocket } from "./websocket.js";
import { jsonCodec } from "./wire.js";
const CONNECT_TIMEOUT_MS = 15000; // token() plus a handshake not done by then is given up and retried
const WS_CONNECT_TIMEOUT_MS = 5000; // a WebSocket handshake not done by then gives way to the next transport
const FALLBACK_MEMORY_MS = 5 * 60_000; // a fallback to sse is kept this long
const TRANSPORTS = ["websocket", "sse"];
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
    options;
    /** The requests waiting for their replies. */
    requests;
    /** The send buffer and the send rate. */
    outbox;
    #session;
    #wsUrl; // ws: or wss:
    #httpUrl; // the same with http: or https:, for sse
    #edgeKey; // the edge's origin and path: what a fallback is remembered by
    #WebSocket;
    #fetch;
    #transports;
    #codec; // the protobuf wire's, loaded at the first dial
    #state = "connecting";
    #transport = null;
    #gen = 0; // bumped for every socket, at a drop and at close: events of older sockets are ignored
    #attempt = 0; // failed attempts since the last lasting connection, for the backoff
    #openedAt = 0; // when the current socket became open (Date.now()), 0 if it has not
    #connectionId; // from the current socket's $connected
    #welcoming = 0; // the socket whose handshake is done and whose $connected is awaited, 0 if none
    #expired = false; // reconnecting after a 4100 with a fresh token: a failed handshake ends the client
    #retry; // the next dial
    #connectTimer;
    #wsTimer; // the current WebSocket's handshake deadline, before the next transport
    #refreshTimer; // the next try of a failed automatic refresh
    #heartbeat;
    #stateListeners = new Listeners();
    #errorListeners = new Listeners();
    /** Checks the options; dial starts connecting. */
    constructor(url, options, session) {
        this.options = options;
        this.#session = session;
        this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
        this.#fetch = options.fetch ?? globalThis.fetch;
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
        const base = globalThis.location?.href;
        const u = new URL(url, base);
        if (options.user !== undefined)
            u.searchParams.set("user", options.user);
        u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
        this.#wsUrl = u.toString();
        u.protocol = u.protocol === "wss:" ? "https:" : "http:";
        this.#httpUrl = u.toString();
        this.#edgeKey = u.origin + u.pathname;
        this.outbox = new Outbox(this);
        this.requests = new Requests(this);
    }
    get state() {
        return this.#state;
    }
    /** The current socket's generation. */
    get gen() {
        return this.#gen;
    }
    /** The current socket, null between sockets. */
    get transport() {
        return this.#transport;
    }
    get connectionId() {
        return this.#connectionId;
    }
    onState(fn) {
        return this.#stateListeners.add(fn);
    }
    onError(fn) {
        return this.#errorListeners.add(fn);
    }
    /** Tells the onError listeners that something the client does by itself failed. */
    report(error, info) {
        this.#errorListeners.emit(error, info);
    }
    checkNotClosed() {
        if (this.#state === "closed")
            throw new NatterError("UNAVAILABLE", "the client is closed");
    }
    /** The wait before retry attempt of something the edge refused with err: the reconnect backoff, at least err's retryAfterMs. */
    backoff(attempt, err) {
        const policy = this.options.reconnect;
        return Math.max(err?.retryAfterMs ?? 0, backoffDelay(attempt, policy === false ? {} : policy));
    }
    /**
     * The edge's `$connected` on the current socket: its id. The connect
     * completes (and the connection goes on to "open") after deliver has
     * shown the frame to the listeners.
     */
    connected(env, deliver) {
        const id = env.payload?.connectionId;
        if (typeof id === "string")
            this.#connectionId = id;
        const gen = this.#gen;
        deliver();
        this.#welcomed(gen);
    }
    /** The edge's `$auth.expiring`: with a token function, refreshes the token by itself. */
    expiring(payload) {
        if (typeof this.options.token !== "function")
            return;
        const expiresAt = payload?.expiresAt;
        this.#autoRefresh(typeof expiresAt === "number" ? expiresAt : 0, this.#gen, 0);
    }
    async refreshToken() {
        const token = this.options.token;
        if (typeof token !== "function")
            throw new NatterError("FAILED_PRECONDITION", "options.token is not a function");
        // Not open: the next (re)connect calls options.token() itself.
        if (this.#state !== "open")
            return;
        await this.requests.request("$auth.refresh", { token: await timeLimit(token(), this.#connectTimeout(), "options.token()") });
    }
    close() {
        if (this.#state === "closed")
            return;
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
    async dial() {
        const gen = ++this.#gen;
        let transport;
        // The attempt ends once, whichever comes first: the last transport's
        // close or failed handshake, or a token() plus handshake that take too long.
        let ended = false;
        const end = (code, reason) => {
            if (ended)
                return;
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
        let token;
        try {
            const t = this.options.token;
            // Awaited even when static: a bad token then fails after connect()
            // returned, so that onState listeners and a first join() see it.
            token = await (typeof t === "function" ? t() : t);
        }
        catch (err) {
            end(1006, `options.token() failed: ${err instanceof Error ? err.message : String(err)}`);
            return;
        }
        if (ended || gen !== this.#gen)
            return; // timed out or closed while the token was fetched
        let codec = jsonCodec;
        if (this.options.wire === "protobuf") {
            try {
                codec = await this.#protobuf();
            }
            catch (err) {
                if (ended || gen !== this.#gen)
                    return;
                clearTimeout(timer);
                const e = err instanceof NatterError ? err : new NatterError("INTERNAL", String(err));
                this.report(e, { op: "connect", retrying: false });
                this.#shutdown({ reason: e.message }, e);
                return;
            }
            if (ended || gen !== this.#gen)
                return;
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
        const start = (i) => {
            const name = plan[i];
            const next = i + 1 < plan.length ? () => start(i + 1) : undefined;
            let t;
            let opened = false;
            const current = () => !ended && gen === this.#gen && t !== undefined && transport === t;
            const events = {
                open: () => {
                    if (!current())
                        return;
                    opened = true;
                    clearTimeout(this.#wsTimer);
                    if (i > 0 && plan[0] === "websocket" && name === "sse")
                        this.#remember();
                    this.#expired = false; // the fresh token was accepted
                    // The edge's first frame, $connected, completes the connect (#welcomed).
                    this.#welcoming = gen;
                },
                frame: (env) => {
                    if (current())
                        this.#session.receive(env);
                },
                error: (err) => {
                    if (current())
                        this.report(new NatterError("INTERNAL", err.message), { op: "receive", retrying: false });
                },
                close: (code, reason) => {
                    if (!current())
                        return;
                    clearTimeout(this.#wsTimer);
                    if (!opened && next)
                        next(); // the handshake failed: the next transport
                    else
                        end(code, reason);
                },
            };
            try {
                t = name === "websocket"
                    ? dialWebSocket(this.#WebSocket, this.#wsUrl, token, codec, events)
                    : dialSse({ url: this.#httpUrl, token, fetch: this.#fetch, events });
            }
            catch (err) {
                if (next)
                    return next();
                end(1006, `connect failed: ${err instanceof Error ? err.message : String(err)}`);
                return;
            }
            transport = t;
            this.#transport = t;
            if (name === "websocket" && next) {
                // A proxy that stalls the Upgrade: give up on it before the connect deadline.
                this.#wsTimer = setTimeout(() => {
                    if (!current() || opened)
                        return;
                    t.close();
                    next();
                }, this.#wsConnectTimeout());
            }
        };
        start(0);
    }
    /** The transports of the next dial: options.transports, less the WebSocket while a fallback is remembered. */
    #plan() {
        const list = this.#transports;
        if (list[0] === "websocket" && list.includes("sse") && recall(this.#edgeKey) > Date.now())
            return list.filter((t) => t !== "websocket");
        return list;
    }
    /** A WebSocket failed where sse works: skip it for fallbackMemoryMs. */
    #remember() {
        const ms = this.options.fallbackMemoryMs ?? FALLBACK_MEMORY_MS;
        if (ms > 0)
            remember(this.#edgeKey, Date.now() + ms);
    }
    /** The protobuf wire's codec: protobuf.ts and @bufbuild/protobuf, loaded once. */
    #protobuf() {
        this.#codec ??= import("./protobuf.js").then((m) => {
            try {
                return m.createProtobufCodec(this.options.schemas);
            }
            catch (err) {
                throw new NatterError("INVALID_ARGUMENT", err instanceof Error ? err.message : String(err));
            }
        }, (err) => {
            throw new NatterError("FAILED_PRECONDITION", `natter: wire "protobuf" could not load its runtime (@bufbuild/protobuf): ${err instanceof Error ? err.message : String(err)}`);
        });
        return this.#codec;
    }
    #wsConnectTimeout() {
        return this.options.wsConnectTimeoutMs ?? Math.min(WS_CONNECT_TIMEOUT_MS, this.#connectTimeout() / 2);
    }
    #connectTimeout() {
        return this.options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
    }
    /** The connect of socket gen is complete: its $connected came, or the connect deadline passed without one. */
    #welcomed(gen) {
        if (this.#welcoming !== gen || gen !== this.#gen)
            return;
        this.#welcoming = 0;
        clearTimeout(this.#connectTimer);
        void this.#ready(gen);
    }
    /**
     * Brings a new socket up to date before it counts as open: the presence
     * state and every room first, then the buffered sends in order, so that
     * what was sent while away arrives after the re-joins.
     */
    async #ready(gen) {
        if (gen !== this.#gen)
            return;
        // Loop: a join() made during the sync is part of it. Joins resolve
        // once the client is open, so that `await join()` means both. A re-join
        // the edge refuses for now is retried later and does not hold this up.
        const done = [];
        for (let sends = this.#session.resync(gen); sends.length > 0; sends = this.#session.resync(gen)) {
            for (const ok of await Promise.all(sends))
                if (ok)
                    done.push(ok);
            if (gen !== this.#gen)
                return; // waiters stay for the next socket
        }
        if (!this.outbox.flush())
            return; // the socket is going away; its close event follows
        this.#openedAt = Date.now();
        const every = this.options.heartbeatMs ?? 0;
        if (every > 0) {
            // For --idle-timeout: the ack carries one of our ids and is ignored like a late reply.
            this.#heartbeat = setInterval(() => this.outbox.transmit({ type: "__heartbeat", meta: { correlationId: this.requests.nextId() } }), every);
        }
        this.#setState("open");
        done.forEach((ok) => ok());
    }
    #dropped(gen, code, reason) {
        if (gen !== this.#gen)
            return;
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
        if (this.#openedAt > 0 && Date.now() - this.#openedAt >= STABLE_MS)
            this.#attempt = 0;
        this.#openedAt = 0;
        this.#setState("reconnecting", { code, reason });
        this.#retry = setTimeout(() => void this.dial(), backoffDelay(this.#attempt++, policy));
    }
    /** Stops what runs per socket. */
    #stopTimers() {
        clearTimeout(this.#connectTimer);
        clearTimeout(this.#wsTimer);
        this.outbox.stop();
        clearTimeout(this.#refreshTimer);
        clearInterval(this.#heartbeat);
        this.#session.stop();
    }
    /** Ends the client for good: every waiting promise rejects with err. */
    #shutdown(info, err) {
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
    #setState(state, info) {
        if (state === this.#state)
            return;
        this.#state = state;
        this.#stateListeners.emit(state, info);
    }
    /** After $auth.expiring: refreshes, and retries with backoff until the token expires. */
    #autoRefresh(expiresAt, gen, attempt) {
        clearTimeout(this.#refreshTimer);
        this.refreshToken().catch((err) => {
            if (gen !== this.#gen)
                return;
            const e = err instanceof NatterError ? err : new NatterError("INTERNAL", String(err));
            const delay = this.backoff(attempt, e);
            const retrying = Date.now() + delay < expiresAt;
            this.report(e, { op: "refresh", retrying });
            // Otherwise the edge closes with 4100 at expiresAt (see #dropped).
            if (retrying)
                this.#refreshTimer = setTimeout(() => this.#autoRefresh(expiresAt, gen, attempt + 1), delay);
        });
    }
}
/** Rejects with DEADLINE_EXCEEDED when v has not settled within ms. */
function timeLimit(v, ms, what) {
    let timer;
    const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new NatterError("DEADLINE_EXCEEDED", `${what} did not finish within ${ms} ms`)), ms);
    });
    return Promise.race([Promise.resolve(v), late]).finally(() => clearTimeout(timer));
}
// Remembered fallbacks, by the edge's URL: expiry times in ms, in
// localStorage when the platform has one (shared by a page's clients and
// its later visits), else here.
const memory = new Map();
const MEMORY_KEY = "natter.fallback ";
function storage() {
    try {
        return globalThis.localStorage ?? undefined;
    }
    catch {
        return undefined; // a browser that forbids storage throws on access
    }
}
function recall(url) {
    const s = storage();
    if (s) {
        try {
            return Number(s.getItem(MEMORY_KEY + url)) || 0;
        }
        catch {
            // Not readable: the memory below.
        }
    }
    return memory.get(url) ?? 0;
}
function remember(url, until) {
    const s = storage();
    if (s) {
        try {
            s.setItem(MEMORY_KEY + url, String(until));
            return;
        }
        catch {
            // Full or forbidden: the memory below.
        }
    }
    memory.set(url, until);
}
