// Generated from clients/src/connection.ts by `npm run build` in clients/. Do not edit.
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
import { backoffDelay, shouldReconnect } from "./backoff.js";
import { lost, NatterError } from "./errors.js";
import { Listeners } from "./listeners.js";
import { Outbox } from "./outbox.js";
import { Requests } from "./rpc.js";
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
    options;
    /** The requests waiting for their replies. */
    requests;
    /** The send buffer and the send rate. */
    outbox;
    #session;
    #url;
    #WebSocket;
    #state = "connecting";
    #ws = null;
    #gen = 0; // bumped for every socket, at a drop and at close: events of older sockets are ignored
    #attempt = 0; // failed attempts since the last lasting connection, for the backoff
    #openedAt = 0; // when the current socket became open (Date.now()), 0 if it has not
    #connectionId; // from the current socket's $connected
    #welcoming = 0; // the socket whose handshake is done and whose $connected is awaited, 0 if none
    #expired = false; // reconnecting after a 4100 with a fresh token: a failed handshake ends the client
    #retry; // the next dial
    #connectTimer;
    #refreshTimer; // the next try of a failed automatic refresh
    #heartbeat;
    #stateListeners = new Listeners();
    #errorListeners = new Listeners();
    /** Checks the options; dial starts connecting. */
    constructor(url, options, session) {
        this.options = options;
        this.#session = session;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new TypeError("natter: no WebSocket; pass options.WebSocket (Node 20 needs --experimental-websocket or the ws package)");
        }
        this.#WebSocket = WS;
        // Relative URLs resolve against the page, and http(s) becomes ws(s).
        const base = globalThis.location?.href;
        const u = new URL(url, base);
        if (u.protocol === "http:")
            u.protocol = "ws:";
        if (u.protocol === "https:")
            u.protocol = "wss:";
        if (options.user !== undefined)
            u.searchParams.set("user", options.user);
        this.#url = u.toString();
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
    get socket() {
        return this.#ws;
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
        const ws = this.#ws;
        this.#shutdown({ code: 1000, reason: "client closed" }, new NatterError("CANCELLED", "client closed"));
        try {
            ws?.close(1000, "client closed");
        }
        catch {
            // Already closing.
        }
    }
    /** Opens a new socket; its events are ignored once #gen moves on. */
    async dial() {
        const gen = ++this.#gen;
        let ws;
        // The attempt ends once, whichever comes first: the socket's close, an
        // error (Node 20's WebSocket may fire "error" without "close" when a
        // handshake fails), or a token() plus handshake that take too long.
        let ended = false;
        const end = (code, reason) => {
            if (ended)
                return;
            ended = true;
            clearTimeout(timer);
            this.#dropped(gen, code, reason);
            try {
                ws?.close();
            }
            catch {
                // Already closed.
            }
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
        }
        catch (err) {
            end(1006, `connect failed: ${err instanceof Error ? err.message : String(err)}`);
            return;
        }
        const socket = ws;
        this.#ws = socket;
        socket.addEventListener("open", () => {
            if (gen !== this.#gen)
                return;
            this.#expired = false; // the fresh token was accepted
            // The edge's first frame, $connected, completes the connect (#welcomed).
            this.#welcoming = gen;
        });
        socket.addEventListener("message", (ev) => {
            const { data } = ev;
            if (gen === this.#gen && typeof data === "string")
                this.#session.receive(data);
        });
        socket.addEventListener("error", () => end(1006, "connection error"));
        socket.addEventListener("close", (ev) => {
            const { code, reason } = ev;
            end(code, reason);
        });
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
        if (this.#openedAt > 0 && Date.now() - this.#openedAt >= STABLE_MS)
            this.#attempt = 0;
        this.#openedAt = 0;
        this.#setState("reconnecting", { code, reason });
        this.#retry = setTimeout(() => void this.dial(), backoffDelay(this.#attempt++, policy));
    }
    /** Stops what runs per socket. */
    #stopTimers() {
        clearTimeout(this.#connectTimer);
        this.outbox.stop();
        clearTimeout(this.#refreshTimer);
        clearInterval(this.#heartbeat);
        this.#session.stop();
    }
    /** Ends the client for good: every waiting promise rejects with err. */
    #shutdown(info, err) {
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
