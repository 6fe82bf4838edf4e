// Generated from clients/src/natter.ts by `npm run build` in clients/. Do not edit.
/** The error every failed request rejects with, and that handlers may throw. */
export class NatterError extends Error {
    name = "NatterError";
    code;
    details;
    retryAfterMs;
    constructor(code, message, extra = {}) {
        super(message);
        this.code = code;
        if (extra.details !== undefined)
            this.details = extra.details;
        if (extra.retryAfterMs !== undefined)
            this.retryAfterMs = extra.retryAfterMs;
    }
}
// ---------------------------------------------------------------- policy
/**
 * backoffDelay returns the wait before reconnect attempt `attempt` (0 for
 * the first after a drop): "full jitter", a uniformly random delay between 0
 * and min(maxDelayMs, initialDelayMs * factor^attempt), so that clients
 * dropped together by a restarting edge do not come back together.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
    const initial = options.initialDelayMs ?? 250;
    const max = options.maxDelayMs ?? 10000;
    const factor = options.factor ?? 2;
    const cap = Math.min(max, initial * factor ** Math.max(0, attempt));
    return Math.floor(random() * cap);
}
/**
 * shouldReconnect tells whether a close code asks for a reconnect:
 * 4000-4099 do, 4100-4199 do not; of the standard codes, normal closure and
 * protocol, data and policy errors (1000, 1002, 1003, 1007, 1008, 1009,
 * 1010) do not, the rest (1001 going away, 1006 abnormal, 1011 ...) do.
 */
export function shouldReconnect(code) {
    if (code >= 4100 && code <= 4199)
        return false;
    return ![1000, 1002, 1003, 1007, 1008, 1009, 1010].includes(code);
}
// ---------------------------------------------------------------- client
/** Connects to a Natter edge; the client reconnects by itself until close(). */
export function connect(url, options = {}) {
    return new NatterClient(url, options);
}
const OPEN = 1; // WebSocket.OPEN
const CONNECT_TIMEOUT_MS = 15000; // token() plus a handshake not done by then is given up and retried
const RPC_TIMEOUT_MS = 10000; // the default request deadline
const DURABLE_TIMEOUT_MS = 30000; // sendDurable's default overall deadline
const ACCEPTED = "$ws:accepted"; // the edge's answer to a stored durable message
const STABLE_MS = 5000; // a connection open this long resets the backoff
const OUR_ID = "nc-"; // prefix of this client's correlation ids
const SERVER_ID = "srv-"; // prefix of the edge's, on server-to-client requests
// A subprotocol must be an HTTP token (RFC 7230 tchar): base64url and JWTs are, base64's "/" and "=" are not.
const HTTP_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// The codes that make a re-join (or the state's re-send) final: the edge will not change its mind.
const FINAL_REFUSALS = new Set(["PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND"]);
// Errors the client made up for a socket that went away: what waited on it is retried on the next one.
const LOST = new WeakSet();
class NatterClient {
    presence;
    #url;
    #opts;
    #WebSocket;
    #rate;
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
    #flushTimer; // the paced flush's next step
    #refreshTimer; // the next try of a failed automatic refresh
    #heartbeat;
    #tokens = 0; // the send rate's token bucket
    #tokensAt = 0;
    #seq = 0;
    #pending = new Map();
    #buffer = [];
    #remembered = new Map(); // key: "$presence.state" or "$join:<room>"
    #leaving = new Map(); // rooms with a $leave of ours on its way
    #positions = new Map(); // durable rooms in #remembered: the last position seen
    #recoveryListeners = new Set();
    #listeners = new Map();
    #stateListeners = new Set();
    #errorListeners = new Set();
    #handlers = new Map();
    #presenceWatchers = new Map();
    #sleepers = new Set(); // sendDurable's waits between attempts: #shutdown ends them
    constructor(url, options) {
        this.#opts = options;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new TypeError("natter: no WebSocket; pass options.WebSocket (Node 20 needs --experimental-websocket or the ws package)");
        }
        this.#WebSocket = WS;
        if (options.sendRate !== false) {
            this.#rate = { perSecond: options.sendRate?.perSecond ?? 100, burst: options.sendRate?.burst ?? 200 };
            this.#tokens = this.#rate.burst;
            this.#tokensAt = Date.now();
        }
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
        this.presence = {
            room: async (room, page = {}) => {
                const p = (await this.#request("$presence", { room, ...page }));
                return { ...p, members: p.members ?? [] };
            },
            user: async (user) => {
                const u = (await this.#request("$presence", { user }));
                return { ...u, connections: u.connections ?? [] };
            },
            setState: (state) => this.#remember("$presence.state", "$presence.state", { state }),
        };
        void this.#dial();
    }
    get state() {
        return this.#state;
    }
    get connectionId() {
        return this.#connectionId;
    }
    onState(fn) {
        this.#stateListeners.add(fn);
        return () => void this.#stateListeners.delete(fn);
    }
    onError(fn) {
        this.#errorListeners.add(fn);
        return () => void this.#errorListeners.delete(fn);
    }
    on(type, fn) {
        let set = this.#listeners.get(type);
        if (!set)
            this.#listeners.set(type, (set = new Set()));
        const l = fn;
        set.add(l);
        return () => void set.delete(l);
    }
    send(type, payload, meta) {
        this.#checkNotClosed();
        this.#enqueue({ type, meta, payload: encode(payload) });
    }
    rpc(type, payload, options = {}) {
        return this.#request(type, payload, options);
    }
    async sendDurable(type, payload, options = {}) {
        const { signal, timeoutMs = DURABLE_TIMEOUT_MS } = options;
        // One key for every attempt: a resend of a message whose answer was
        // lost is stored once, and answered duplicate with the original's seq.
        const key = options.idempotencyKey ?? randomKey();
        const end = Date.now() + timeoutMs;
        const attemptMs = this.#opts.rpcTimeoutMs ?? RPC_TIMEOUT_MS;
        for (let refusals = 0;;) {
            const rpc = { idempotencyKey: key, timeoutMs: Math.max(1, Math.min(attemptMs, end - Date.now())), envelope: true };
            if (signal)
                rpc.signal = signal;
            let err;
            try {
                const env = (await this.#request(type, payload, rpc));
                if (env.type !== ACCEPTED) {
                    // A worker answered: the edge did not store it.
                    throw new NatterError("FAILED_PRECONDITION", `${type} was answered with ${env.type}, not ${ACCEPTED}: it is not one of the edge's --durable-types`);
                }
                const a = (env.payload ?? {});
                return { seq: Number.isSafeInteger(a.seq) ? a.seq : 0, duplicate: a.duplicate === true };
            }
            catch (e) {
                err = e;
            }
            // What may still be stored by a resend: the edge's "retry after"
            // (stream unreachable or full, a rate limit), an attempt without an
            // answer in time, a connection lost while it was out. The resend
            // waits in the send buffer until the client is open again.
            const refused = (err.code === "UNAVAILABLE" || err.code === "RESOURCE_EXHAUSTED") && err.retryAfterMs !== undefined;
            if (!refused && !LOST.has(err) && err.code !== "DEADLINE_EXCEEDED")
                throw err;
            const wait = refused ? this.#backoff(refusals++, err) : 0;
            if (Date.now() + wait >= end) {
                throw err.code === "DEADLINE_EXCEEDED" ? new NatterError("DEADLINE_EXCEEDED", `${type} not stored within ${timeoutMs} ms`) : err;
            }
            if (wait > 0)
                await this.#sleep(wait, signal);
        }
    }
    handle(type, fn) {
        const h = fn;
        this.#handlers.set(type, h);
        return () => {
            if (this.#handlers.get(type) === h)
                this.#handlers.delete(type);
        };
    }
    join(room, options = {}) {
        const payload = options.presence ? { room, presence: true } : { room };
        const { since } = options;
        if (since !== undefined) {
            if (!isPosition(since))
                return Promise.reject(new NatterError("INVALID_ARGUMENT", "since must be {offset: number, epoch: string}"));
            // The application's word replaces what the client saw: replay from there.
            this.#positions.set(room, { offset: since.offset, epoch: since.epoch });
        }
        return this.#remember(`$join:${room}`, "$join", payload, since !== undefined);
    }
    async leave(room) {
        const r = this.#remembered.get(`$join:${room}`);
        this.#remembered.delete(`$join:${room}`);
        this.#positions.delete(room);
        if (r) {
            clearTimeout(r.retry);
            r.waiters.splice(0).forEach((w) => w.reject(new NatterError("CANCELLED", `left ${room} before the join completed`)));
        }
        // Only a socket that is open, or being brought up to date and has sent
        // the join already, needs a $leave; the next socket simply does not
        // re-join. Like $join it bypasses the send buffer, so the edge sees
        // joins and leaves in the order they were made and ends up where
        // rooms() says: no extra $leave is needed when a join completes.
        const open = this.#state === "open";
        if (!open && r?.gen !== this.#gen)
            return;
        this.#leaving.set(room, (this.#leaving.get(room) ?? 0) + 1);
        const sent = this.#request("$leave", { room }, {}, true).finally(() => {
            const n = this.#leaving.get(room) - 1;
            if (n > 0)
                this.#leaving.set(room, n);
            else
                this.#leaving.delete(room);
        });
        // A lost socket left the room anyway. While the socket is being
        // brought up to date, leave() does not wait for $left.
        const done = sent.catch((err) => {
            if (open && !LOST.has(err))
                throw err;
        });
        if (open)
            await done;
    }
    rooms() {
        return [...this.#remembered.values()].filter((r) => r.type === "$join").map((r) => r.payload.room);
    }
    position(room) {
        const p = this.#positions.get(room);
        return p && { ...p };
    }
    onRecovery(fn) {
        this.#recoveryListeners.add(fn);
        return () => void this.#recoveryListeners.delete(fn);
    }
    async history(room, options = {}) {
        const { limit, since, before, timeoutMs, signal } = options;
        const query = { room };
        if (limit !== undefined)
            query.limit = limit;
        if (since !== undefined)
            query.since = since;
        if (before !== undefined)
            query.before = before;
        const rpc = {};
        if (timeoutMs !== undefined)
            rpc.timeoutMs = timeoutMs;
        if (signal !== undefined)
            rpc.signal = signal;
        const h = ((await this.#request("$history", query, rpc)) ?? {});
        return { room: h.room ?? room, epoch: h.epoch ?? "", messages: h.messages ?? [], more: h.more === true };
    }
    onPresence(room, fn) {
        let set = this.#presenceWatchers.get(room);
        if (!set)
            this.#presenceWatchers.set(room, (set = new Set()));
        set.add(fn);
        return () => void set.delete(fn);
    }
    async refreshToken() {
        const token = this.#opts.token;
        if (typeof token !== "function")
            throw new NatterError("FAILED_PRECONDITION", "options.token is not a function");
        // Not open: the next (re)connect calls options.token() itself.
        if (this.#state !== "open")
            return;
        await this.#request("$auth.refresh", { token: await timeLimit(token(), this.#connectTimeout(), "options.token()") });
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
    // ------------------------------------------------------------ socket
    #connectTimeout() {
        return this.#opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
    }
    /** Opens a new socket; its events are ignored once #gen moves on. */
    async #dial() {
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
            const t = this.#opts.token;
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
            this.#report(err, { op: "connect", retrying: false });
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
                this.#receive(data);
        });
        socket.addEventListener("error", () => end(1006, "connection error"));
        socket.addEventListener("close", (ev) => {
            const { code, reason } = ev;
            end(code, reason);
        });
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
        for (;;) {
            const todo = [...this.#remembered.values()].filter((r) => r.gen !== gen);
            if (todo.length === 0)
                break;
            todo.sort((a, b) => (a.type === b.type ? 0 : a.type === "$presence.state" ? -1 : 1));
            for (const ok of await Promise.all(todo.map((r) => this.#resend(r, gen))))
                if (ok)
                    done.push(ok);
            if (gen !== this.#gen)
                return; // waiters stay for the next socket
        }
        if (!this.#flush())
            return; // the socket is going away; its close event follows
        this.#openedAt = Date.now();
        const every = this.#opts.heartbeatMs ?? 0;
        if (every > 0) {
            // For --idle-timeout: the ack carries one of our ids and is ignored like a late reply.
            this.#heartbeat = setInterval(() => this.#transmit({ type: "__heartbeat", meta: { correlationId: this.#nextId() } }), every);
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
        const lost = new NatterError("UNAVAILABLE", `connection lost (${code}${reason ? ` ${reason}` : ""})`);
        LOST.add(lost);
        for (const [cid, p] of this.#pending)
            if (p.gen === gen)
                this.#settle(cid, lost);
        const policy = this.#opts.reconnect;
        // 4100 (token expired) with a token function: one reconnect with a
        // fresh token. If that handshake fails too (401), the client ends.
        const refresh = code === 4100 && typeof this.#opts.token === "function" && !this.#expired;
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
        this.#retry = setTimeout(() => void this.#dial(), backoffDelay(this.#attempt++, policy));
    }
    /** Stops what runs per socket. */
    #stopTimers() {
        clearTimeout(this.#connectTimer);
        clearTimeout(this.#flushTimer);
        this.#flushTimer = undefined;
        clearTimeout(this.#refreshTimer);
        clearInterval(this.#heartbeat);
        for (const r of this.#remembered.values())
            clearTimeout(r.retry);
    }
    /** Ends the client for good: every waiting promise rejects with err. */
    #shutdown(info, err) {
        this.#gen++;
        this.#ws = null;
        this.#connectionId = undefined;
        clearTimeout(this.#retry);
        this.#stopTimers();
        for (const cid of [...this.#pending.keys()])
            this.#settle(cid, err);
        for (const stop of [...this.#sleepers])
            stop(err);
        this.#buffer = [];
        for (const r of this.#remembered.values())
            r.waiters.splice(0).forEach((w) => w.reject(err));
        this.#setState("closed", info);
    }
    #setState(state, info) {
        if (state === this.#state)
            return;
        this.#state = state;
        for (const fn of [...this.#stateListeners])
            safely(() => fn(state, info));
    }
    #report(error, info) {
        for (const fn of [...this.#errorListeners])
            safely(() => fn(error, info));
    }
    #checkNotClosed() {
        if (this.#state === "closed")
            throw new NatterError("UNAVAILABLE", "the client is closed");
    }
    #backoff(attempt, err) {
        const policy = this.#opts.reconnect;
        return Math.max(err?.retryAfterMs ?? 0, backoffDelay(attempt, policy === false ? {} : policy));
    }
    /** Resolves after ms; rejects with CANCELLED when signal aborts, and with #shutdown's error when the client ends. */
    #sleep(ms, signal) {
        return new Promise((resolve, reject) => {
            if (signal?.aborted)
                throw new NatterError("CANCELLED", "aborted");
            const stop = (err) => {
                clearTimeout(timer);
                this.#sleepers.delete(stop);
                signal?.removeEventListener("abort", onAbort);
                reject(err);
            };
            const onAbort = () => stop(new NatterError("CANCELLED", "aborted"));
            const timer = setTimeout(() => {
                this.#sleepers.delete(stop);
                signal?.removeEventListener("abort", onAbort);
                resolve();
            }, ms);
            this.#sleepers.add(stop);
            signal?.addEventListener("abort", onAbort, { once: true });
        });
    }
    #nextId() {
        return OUR_ID + (++this.#seq).toString(36);
    }
    // ------------------------------------------------------------ sending
    /**
     * Sends q now when open (and the send rate allows), else buffers it under
     * the overflow policy. While open, a non-empty buffer means the rate
     * holds sends back: q waits behind them, in order.
     */
    #enqueue(q) {
        if (this.#state === "open" && this.#buffer.length === 0 && this.#wait() === 0 && this.#transmit(q))
            return;
        const { max = 1000, overflow = "error" } = this.#opts.buffer ?? {};
        if (this.#buffer.length >= max) {
            const full = new NatterError("RESOURCE_EXHAUSTED", `send buffer full (${max} messages)`);
            if (overflow === "drop-oldest" && max > 0) {
                const old = this.#buffer.shift();
                if (old.cid)
                    this.#settle(old.cid, full);
            }
            else {
                // "drop-newest" drops q; "error" refuses it. A request rejects either way.
                if (q.cid)
                    this.#settle(q.cid, full);
                else if (overflow === "error")
                    throw full;
                return;
            }
        }
        this.#buffer.push(q);
        if (this.#state === "open" && this.#flushTimer === undefined)
            this.#flush();
    }
    /** Writes q to the socket if it is open (taking a token of the send rate); false when it is not. */
    #transmit(q) {
        const ws = this.#ws;
        if (!ws || ws.readyState !== OPEN)
            return false;
        let meta = q.meta;
        if (q.cid) {
            const p = this.#pending.get(q.cid);
            if (!p)
                return true; // settled (timed out, aborted) while buffered
            // The edge's deadline counts from arrival: send what is left of ours.
            meta = { correlationId: q.cid, timeoutMs: Math.max(1, p.deadline - Date.now()) };
            if (p.key !== undefined)
                meta.idempotencyKey = p.key;
            p.gen = this.#gen;
        }
        let frame = `{"type":${JSON.stringify(q.type)}`;
        if (meta !== undefined)
            frame += `,"meta":${JSON.stringify(meta)}`;
        if (q.payload !== undefined)
            frame += `,"payload":${q.payload}`;
        try {
            ws.send(frame + "}");
        }
        catch {
            if (q.cid)
                this.#pending.get(q.cid).gen = 0;
            return false;
        }
        // Frames the client sends by itself (re-joins, aborts, answers) take a
        // token too, possibly into debt: the edge counts every message.
        if (this.#refill())
            this.#tokens -= 1;
        return true;
    }
    /**
     * Sends the buffer in order, as fast as the send rate allows (the rest
     * follows from a timer); false if the socket closed on the way.
     */
    #flush() {
        clearTimeout(this.#flushTimer);
        this.#flushTimer = undefined;
        while (this.#buffer.length > 0) {
            const wait = this.#wait();
            if (wait > 0) {
                const gen = this.#gen;
                this.#flushTimer = setTimeout(() => {
                    this.#flushTimer = undefined;
                    if (gen === this.#gen && this.#state === "open")
                        this.#flush();
                }, wait);
                return true;
            }
            if (!this.#transmit(this.#buffer[0]))
                return false;
            this.#buffer.shift();
        }
        return true;
    }
    // The send rate: a token bucket like the edge's --rate-limit.
    /** Adds the tokens earned since the last call; undefined without a send rate. */
    #refill() {
        const rate = this.#rate;
        if (!rate)
            return undefined;
        const now = Date.now();
        this.#tokens = Math.min(rate.burst, this.#tokens + ((now - this.#tokensAt) * rate.perSecond) / 1000);
        this.#tokensAt = now;
        return rate;
    }
    /** Ms until a send may go out; 0 now. */
    #wait() {
        const rate = this.#refill();
        return !rate || this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / rate.perSecond);
    }
    /** The edge said RESOURCE_EXHAUSTED with retryAfterMs: send nothing paced before then. */
    #pause(ms) {
        const rate = this.#refill();
        if (rate)
            this.#tokens = Math.min(this.#tokens, 1 - (ms * rate.perSecond) / 1000);
    }
    /** A request: buffered like a send, settled by its reply, an error, the deadline, an abort or a lost socket. */
    #request(type, payload, options = {}, direct = false) {
        return new Promise((resolve, reject) => {
            this.#checkNotClosed();
            const { signal, onProgress, idempotencyKey, envelope } = options;
            if (signal?.aborted)
                throw new NatterError("CANCELLED", "aborted before it was sent");
            const timeoutMs = options.timeoutMs ?? this.#opts.rpcTimeoutMs ?? RPC_TIMEOUT_MS;
            const body = encode(payload);
            const cid = this.#nextId();
            const p = {
                resolve, reject, onProgress, gen: 0, key: idempotencyKey, envelope,
                deadline: Date.now() + timeoutMs,
                timer: setTimeout(() => this.#settle(cid, new NatterError("DEADLINE_EXCEEDED", `no reply within ${timeoutMs} ms`)), timeoutMs),
            };
            if (signal) {
                const onAbort = () => this.#abort(cid);
                signal.addEventListener("abort", onAbort, { once: true });
                p.cleanup = () => signal.removeEventListener("abort", onAbort);
            }
            this.#pending.set(cid, p);
            const q = { type, payload: body, cid };
            if (!direct)
                this.#enqueue(q);
            else if (!this.#transmit(q)) {
                const lost = new NatterError("UNAVAILABLE", "not connected");
                LOST.add(lost);
                this.#settle(cid, lost);
            }
        });
    }
    /** Gives up on a request: the edge cancels the worker's handler and its late reply is ignored. */
    #abort(cid) {
        const p = this.#pending.get(cid);
        if (!p)
            return;
        if (p.gen === this.#gen)
            this.#transmit({ type: "$ws:abort", meta: { correlationId: cid } });
        this.#settle(cid, new NatterError("CANCELLED", "aborted"));
    }
    /** Settles a pending request once, with a payload or an error, and drops it from the buffer. */
    #settle(cid, result) {
        const p = this.#pending.get(cid);
        if (!p)
            return;
        this.#pending.delete(cid);
        clearTimeout(p.timer);
        p.cleanup?.();
        if (p.gen === 0)
            this.#buffer = this.#buffer.filter((q) => q.cid !== cid);
        if (result instanceof NatterError)
            p.reject(result);
        else
            p.resolve(result.ok);
    }
    // ------------------------------------------------------------ remembered state
    /** Records a room or the presence state for every future socket, and sends it now when open. */
    #remember(key, type, payload, replay = false) {
        return new Promise((resolve, reject) => {
            this.#checkNotClosed();
            let r = this.#remembered.get(key);
            if (!r)
                this.#remembered.set(key, (r = { type, payload, gen: 0, version: 0, waiters: [], inflight: 0, attempt: 0 }));
            r.payload = payload;
            r.replay = replay;
            r.gen = 0;
            r.version++;
            r.attempt = 0;
            clearTimeout(r.retry);
            r.waiters.push({ version: r.version, resolve, reject });
            // Otherwise #ready sends it on the next socket.
            if (this.#state === "open")
                void this.#resend(r, this.#gen).then((ok) => ok?.());
        });
    }
    /**
     * Sends the current value of a remembered item on socket gen. Success
     * returns the function that resolves the callers waiting for that value.
     * A lost socket leaves everything to the next one. A refusal rejects the
     * callers of that value; with nobody waiting (a re-join after a
     * reconnect) it is retried with backoff unless final (FINAL_REFUSALS).
     * A refused value is forgotten, or replaced by the value the edge
     * accepted on this socket, unless a newer value was sent since.
     */
    async #resend(r, gen) {
        r.gen = gen;
        const { version, payload } = r;
        const room = r.type === "$join" ? payload.room : undefined;
        const key = room === undefined ? r.type : `$join:${room}`;
        const mine = () => this.#remembered.get(key) === r && r.version === version;
        let wire = payload;
        if (room !== undefined) {
            // A durable room continues from the last position seen: on a re-join
            // after a reconnect, or when join() was given since. A join of a
            // room this socket is in already (say, to turn presence on) does
            // not ask for a replay: what it would replay is still on its way.
            const since = this.#positions.get(room);
            if (since && (r.replay || r.accepted?.gen !== gen)) {
                wire = { ...payload, since };
                r.since = since;
            }
        }
        r.inflight++;
        try {
            await this.#request(r.type, wire, {}, true);
        }
        catch (e) {
            const err = e;
            if (room !== undefined && r.since && err.code === "DEADLINE_EXCEEDED" && wire !== payload) {
                // A join from a position that was not answered in time: the edge
                // may have replayed part and gone on live, so what arrived cannot
                // be told complete. Report a gap; the retry continues from there.
                const position = this.#positions.get(room) ?? r.since;
                const info = { room, recovered: false, since: { ...r.since }, position: { ...position } };
                for (const fn of [...this.#recoveryListeners])
                    safely(() => fn(info));
            }
            if (gen !== this.#gen || LOST.has(err))
                return undefined; // the next socket sends it again
            const callers = r.waiters.filter((w) => w.version <= version);
            const info = { op: room === undefined ? "state" : "join", retrying: false };
            if (room !== undefined)
                info.room = room;
            if (callers.length === 0 && mine() && !FINAL_REFUSALS.has(err.code)) {
                info.retrying = true;
                this.#report(err, info);
                r.retry = setTimeout(() => {
                    if (gen === this.#gen && mine())
                        void this.#resend(r, gen).then((ok) => ok?.());
                }, this.#backoff(r.attempt++, err));
                return undefined;
            }
            r.waiters = r.waiters.filter((w) => w.version > version);
            callers.forEach((w) => w.reject(err));
            if (mine()) {
                if (r.accepted?.gen === gen)
                    r.payload = r.accepted.payload; // the edge still has that
                else {
                    this.#remembered.delete(key);
                    if (room !== undefined)
                        this.#positions.delete(room);
                }
                if (callers.length === 0)
                    this.#report(err, info);
            }
            return undefined;
        }
        finally {
            r.inflight--;
        }
        r.attempt = 0;
        if (r.version === version)
            r.replay = false;
        if (!r.accepted || r.accepted.version <= version)
            r.accepted = { payload, gen, version };
        return () => {
            const callers = r.waiters.filter((w) => w.version <= version);
            r.waiters = r.waiters.filter((w) => w.version > version);
            callers.forEach((w) => w.resolve());
        };
    }
    /**
     * A $joined / $left without a correlation id: a worker or service joined
     * or removed this connection (ctl). A server join is remembered (and so
     * re-joined after a reconnect, with the client's own grants); a server
     * leave forgets the room. A join or leave of ours that reaches the edge
     * after the change decides instead.
     */
    #serverMembership(env) {
        const room = env.payload?.room ?? env.meta?.room;
        if (typeof room !== "string")
            return;
        const key = `$join:${room}`;
        const r = this.#remembered.get(key);
        if ((r && (r.inflight > 0 || r.gen !== this.#gen)) || this.#leaving.has(room))
            return;
        if (env.type === "$joined" && !r) {
            const payload = { room };
            this.#remembered.set(key, { type: "$join", payload, gen: this.#gen, version: 0, waiters: [], inflight: 0, attempt: 0, accepted: { payload, gen: this.#gen, version: 0 } });
        }
        else if (env.type === "$left" && r) {
            clearTimeout(r.retry);
            this.#remembered.delete(key);
            this.#positions.delete(room);
        }
    }
    /** After $auth.expiring: refreshes, and retries with backoff until the token expires. */
    #autoRefresh(expiresAt, gen, attempt) {
        clearTimeout(this.#refreshTimer);
        this.refreshToken().catch((err) => {
            if (gen !== this.#gen)
                return;
            const e = err instanceof NatterError ? err : new NatterError("INTERNAL", String(err));
            const delay = this.#backoff(attempt, e);
            const retrying = Date.now() + delay < expiresAt;
            this.#report(e, { op: "refresh", retrying });
            // Otherwise the edge closes with 4100 at expiresAt (see #dropped).
            if (retrying)
                this.#refreshTimer = setTimeout(() => this.#autoRefresh(expiresAt, gen, attempt + 1), delay);
        });
    }
    // ------------------------------------------------------------ receiving
    #receive(data) {
        let env;
        try {
            env = JSON.parse(data);
        }
        catch {
            return; // the edge sends JSON only
        }
        if (typeof env !== "object" || env === null || typeof env.type !== "string")
            return;
        const cid = env.meta?.correlationId;
        // Server-driven membership first, so that a durable room's position
        // (tracked below, before any listener sees the frame) has its room.
        if (typeof cid !== "string" && (env.type === "$joined" || env.type === "$left"))
            this.#serverMembership(env);
        this.#track(env);
        this.#emit("*", env);
        const isError = env.type === "ERROR" || env.type === "RPC_ERROR";
        if (isError) {
            // A rate limit: hold the paced sends back for as long as the edge asks.
            const e = (env.payload ?? {});
            if (e.code === "RESOURCE_EXHAUSTED" && typeof e.retryAfterMs === "number" && e.retryAfterMs > 0)
                this.#pause(e.retryAfterMs);
        }
        if (typeof cid === "string") {
            const p = this.#pending.get(cid);
            if (p)
                return this.#reply(cid, p, env);
            // A server-to-client request, but never an error or a system frame:
            // answering the edge's RPC_ERROR for a late answer would start a loop.
            if (cid.startsWith(SERVER_ID) && !isError && !isSystemType(env.type))
                return void this.#answer(cid, env);
            if (cid.startsWith(OUR_ID))
                return; // a late reply to a request given up on
        }
        if (env.type === "$presence.diff") {
            const d = (env.payload ?? {});
            const diff = { room: d.room ?? env.meta?.room ?? "", joins: d.joins ?? [], leaves: d.leaves ?? [], states: d.states ?? [] };
            env = { ...env, payload: diff };
            for (const fn of [...(this.#presenceWatchers.get(diff.room) ?? [])])
                safely(() => fn(diff));
        }
        else if (env.type === "$auth.expiring" && typeof this.#opts.token === "function") {
            const expiresAt = env.payload?.expiresAt;
            this.#autoRefresh(typeof expiresAt === "number" ? expiresAt : 0, this.#gen, 0);
        }
        else if (env.type === "$connected") {
            const id = env.payload?.connectionId;
            if (typeof id === "string")
                this.#connectionId = id;
            const gen = this.#gen;
            this.#emit(env.type, env);
            this.#welcomed(gen); // the connection goes on to "open" after the listeners saw the id
            return;
        }
        this.#emit(env.type, env);
    }
    /**
     * Durable rooms: keeps the last position of every room in #remembered.
     * Deliveries only advance it within an epoch (a delivery of another
     * epoch was not announced by a $joined: the next re-join reports the
     * gap); a $joined sets the position to continue from, of a new epoch
     * too, and answers a join with since, reported to onRecovery before the
     * join resolves and before any later frame is delivered.
     */
    #track(env) {
        if (env.type === "$joined") {
            const j = (env.payload ?? {});
            const room = j.room ?? env.meta?.room;
            if (typeof room !== "string")
                return;
            const r = this.#remembered.get(`$join:${room}`);
            if (!r)
                return; // left meanwhile
            if (j.durable !== true) {
                this.#positions.delete(room); // not (or no longer) durable
                return;
            }
            // No offset: an older edge, for a room with no history yet.
            const at = { offset: j.offset ?? 0, epoch: j.epoch };
            if (isPosition(at))
                this.#advance(room, at, true);
            const position = this.#positions.get(room);
            // A late answer to a join that timed out was reported as a gap then;
            // its retry reports the outcome.
            const cid = env.meta?.correlationId;
            const late = typeof cid === "string" && !this.#pending.has(cid);
            if (typeof j.recovered === "boolean" && position && !late) {
                const info = { room, recovered: j.recovered, since: { ...(r.since ?? position) }, position: { ...position } };
                for (const fn of [...this.#recoveryListeners])
                    safely(() => fn(info));
            }
            return;
        }
        const meta = env.meta;
        if (!meta || typeof meta.room !== "string" || !this.#remembered.has(`$join:${meta.room}`))
            return;
        const at = { offset: meta.offset, epoch: meta.epoch };
        if (isPosition(at))
            this.#advance(meta.room, at, false);
    }
    /** Moves a room's position forward: a larger offset of the same epoch, or (newEpoch) another epoch. */
    #advance(room, at, newEpoch) {
        const p = this.#positions.get(room);
        if (!p || (p.epoch === at.epoch ? at.offset > p.offset : newEpoch))
            this.#positions.set(room, at);
    }
    #emit(type, env) {
        for (const fn of [...(this.#listeners.get(type) ?? [])])
            safely(() => fn(env.payload, env));
    }
    #reply(cid, p, env) {
        if (env.type === "$ws:rpc-progress") {
            const fn = p.onProgress;
            if (fn)
                safely(() => fn(env.payload));
            return;
        }
        if (env.type === "RPC_ERROR" || env.type === "ERROR") {
            const e = (env.payload ?? {});
            const extra = {};
            if (e.details != null)
                extra.details = e.details;
            if (e.retryAfterMs)
                extra.retryAfterMs = e.retryAfterMs;
            this.#settle(cid, new NatterError(e.code ?? "INTERNAL", e.message ?? "", extra));
            return;
        }
        this.#settle(cid, { ok: p.envelope ? env : env.payload });
    }
    /** Answers a server-to-client request on the socket it came from. */
    async #answer(cid, env) {
        const gen = this.#gen;
        const handler = this.#handlers.get(env.type);
        let type = env.type;
        let payload;
        if (!handler) {
            type = "RPC_ERROR";
            payload = { code: "UNIMPLEMENTED", message: `no handler for ${env.type}` };
        }
        else {
            try {
                const out = await handler(env.payload, env);
                if (isEnvelopeReply(out))
                    ({ type, payload } = out);
                else
                    payload = out;
            }
            catch (err) {
                type = "RPC_ERROR";
                payload = err instanceof NatterError
                    ? { code: err.code, message: err.message, details: err.details, retryAfterMs: err.retryAfterMs }
                    : { code: "INTERNAL", message: err instanceof Error ? err.message : String(err) };
            }
        }
        // After a reconnect the edge has already answered UNAVAILABLE.
        if (gen !== this.#gen)
            return;
        try {
            this.#transmit({ type, meta: { correlationId: cid }, payload: encode(payload) });
        }
        catch (err) {
            // An unencodable reply.
            this.#transmit({ type: "RPC_ERROR", meta: { correlationId: cid }, payload: encode({ code: "INTERNAL", message: String(err) }) });
        }
    }
}
/** A handler's return value is an envelope when it has exactly `type` (a string) and `payload`. */
function isEnvelopeReply(v) {
    if (typeof v !== "object" || v === null || Array.isArray(v))
        return false;
    const keys = Object.keys(v);
    return keys.length === 2 && "payload" in v && typeof v.type === "string";
}
/** Whether v is a usable position: a non-negative integer offset and a string epoch. */
function isPosition(v) {
    return typeof v === "object" && v !== null && Number.isSafeInteger(v.offset) && v.offset >= 0 && typeof v.epoch === "string";
}
/** System types start with "$" or "__" (docs/protocol.md#the-envelope). */
function isSystemType(type) {
    return type.startsWith("$") || type.startsWith("__");
}
/** Rejects with DEADLINE_EXCEEDED when v has not settled within ms. */
function timeLimit(v, ms, what) {
    let timer;
    const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new NatterError("DEADLINE_EXCEEDED", `${what} did not finish within ${ms} ms`)), ms);
    });
    return Promise.race([Promise.resolve(v), late]).finally(() => clearTimeout(timer));
}
/**
 * randomKey returns a fresh idempotency key: a random UUID, or 32 random
 * hex digits where crypto.randomUUID is missing (browsers outside secure
 * contexts).
 */
function randomKey() {
    const c = globalThis.crypto;
    if (typeof c?.randomUUID === "function")
        return c.randomUUID();
    const bytes = new Uint8Array(16);
    if (typeof c?.getRandomValues === "function")
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
/** JSON of a payload; undefined leaves the key out. */
function encode(payload) {
    return payload === undefined ? undefined : JSON.stringify(payload);
}
/** Runs a user callback; an exception is reported (like an event listener's), not thrown into the client. */
function safely(fn) {
    try {
        fn();
    }
    catch (err) {
        const report = globalThis.reportError;
        if (report)
            report(err);
        else
            setTimeout(() => { throw err; });
    }
}
