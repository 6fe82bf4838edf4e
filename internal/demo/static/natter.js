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
const CONNECT_TIMEOUT_MS = 15000; // a handshake not done by then is given up and retried
const STABLE_MS = 5000; // a connection open this long resets the backoff
const OUR_ID = "nc-"; // prefix of this client's correlation ids
const SERVER_ID = "srv-"; // prefix of the edge's, on server-to-client requests
class NatterClient {
    presence;
    #url;
    #opts;
    #WebSocket;
    #state = "connecting";
    #ws = null;
    #gen = 0; // bumped for every socket and at close: events of older sockets are ignored
    #attempt = 0; // failed attempts since the last lasting connection, for the backoff
    #openedAt = 0; // when the current socket became open (Date.now()), 0 if it has not
    #retry;
    #seq = 0;
    #pending = new Map();
    #buffer = [];
    #remembered = new Map(); // key: "$presence.state" or "$join:<room>"
    #listeners = new Map();
    #stateListeners = new Set();
    #handlers = new Map();
    #presenceWatchers = new Map();
    constructor(url, options) {
        this.#opts = options;
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
    onState(fn) {
        this.#stateListeners.add(fn);
        return () => void this.#stateListeners.delete(fn);
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
        return this.#remember(`$join:${room}`, "$join", payload);
    }
    async leave(room) {
        const r = this.#remembered.get(`$join:${room}`);
        this.#remembered.delete(`$join:${room}`);
        r?.waiters.splice(0).forEach((w) => w.reject(new NatterError("CANCELLED", `left ${room} before the join completed`)));
        if (this.#state === "open")
            await this.#request("$leave", { room });
        // A socket being brought up to date may have re-joined it already.
        else if (r && r.gen === this.#gen)
            this.#transmit({ type: "$leave", payload: encode({ room }) });
        // Otherwise the next socket simply does not re-join it.
    }
    rooms() {
        return [...this.#remembered.values()].filter((r) => r.type === "$join").map((r) => r.payload.room);
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
        await this.#request("$auth.refresh", { token: await token() });
    }
    close() {
        if (this.#state === "closed")
            return;
        const ws = this.#ws;
        this.#shutdown(1000, "client closed", "CANCELLED");
        try {
            ws?.close(1000, "client closed");
        }
        catch {
            // Already closing.
        }
    }
    // ------------------------------------------------------------ socket
    /** Opens a new socket; its events are ignored once #gen moves on. */
    async #dial() {
        const gen = ++this.#gen;
        let ws;
        try {
            const t = this.#opts.token;
            const token = typeof t === "function" ? await t() : t;
            if (gen !== this.#gen)
                return; // closed while the token was fetched
            ws = new this.#WebSocket(this.#url, token ? ["natter", `bearer.${token}`] : ["natter"]);
        }
        catch (err) {
            this.#dropped(gen, 1006, `connect failed: ${err instanceof Error ? err.message : String(err)}`);
            return;
        }
        this.#ws = ws;
        // The socket ends once, whichever comes first: its close, an error
        // (Node 20's WebSocket may fire "error" without "close" when a
        // handshake fails), or a handshake that takes too long.
        let ended = false;
        const end = (code, reason) => {
            if (ended)
                return;
            ended = true;
            clearTimeout(timer);
            this.#dropped(gen, code, reason);
            try {
                ws.close();
            }
            catch {
                // Already closed.
            }
        };
        const timer = setTimeout(() => end(1006, "connect timeout"), CONNECT_TIMEOUT_MS);
        ws.addEventListener("open", () => {
            clearTimeout(timer);
            void this.#ready(gen);
        });
        ws.addEventListener("message", (ev) => {
            const { data } = ev;
            if (gen === this.#gen && typeof data === "string")
                this.#receive(data);
        });
        ws.addEventListener("error", () => end(1006, "connection error"));
        ws.addEventListener("close", (ev) => {
            const { code, reason } = ev;
            end(code, reason);
        });
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
        // once the client is open, so that `await join()` means both.
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
        this.#setState("open");
        done.forEach((ok) => ok());
    }
    #dropped(gen, code, reason) {
        if (gen !== this.#gen)
            return;
        this.#ws = null;
        const lost = new NatterError("UNAVAILABLE", `connection lost (${code}${reason ? ` ${reason}` : ""})`);
        for (const [cid, p] of this.#pending)
            if (p.gen === gen)
                this.#settle(cid, lost);
        const policy = this.#opts.reconnect;
        if (policy === false || !shouldReconnect(code)) {
            this.#shutdown(code, reason, "UNAVAILABLE");
            return;
        }
        // The backoff starts over only after a connection that lasted: an edge
        // that accepts and then drops every connection still gets backed off.
        if (this.#openedAt > 0 && Date.now() - this.#openedAt >= STABLE_MS)
            this.#attempt = 0;
        this.#openedAt = 0;
        this.#setState("reconnecting", { code, reason });
        this.#retry = setTimeout(() => void this.#dial(), backoffDelay(this.#attempt++, policy));
    }
    /** Ends the client for good: every waiting promise rejects with code. */
    #shutdown(closeCode, reason, code) {
        this.#gen++;
        this.#ws = null;
        clearTimeout(this.#retry);
        const err = new NatterError(code, reason || `connection closed (${closeCode})`);
        for (const cid of [...this.#pending.keys()])
            this.#settle(cid, err);
        this.#buffer = [];
        for (const r of this.#remembered.values())
            r.waiters.splice(0).forEach((w) => w.reject(err));
        this.#setState("closed", { code: closeCode, reason });
    }
    #setState(state, info) {
        if (state === this.#state)
            return;
        this.#state = state;
        for (const fn of [...this.#stateListeners])
            safely(() => fn(state, info));
    }
    #checkNotClosed() {
        if (this.#state === "closed")
            throw new NatterError("UNAVAILABLE", "the client is closed");
    }
    // ------------------------------------------------------------ sending
    /** Sends q now when open, else buffers it under the overflow policy. */
    #enqueue(q) {
        if (this.#state === "open" && this.#transmit(q))
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
    }
    /** Writes q to the socket if it is open; false when it is not. */
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
        return true;
    }
    /** Sends the buffer in order; false if the socket closed on the way. */
    #flush() {
        while (this.#buffer.length > 0) {
            if (!this.#transmit(this.#buffer[0]))
                return false;
            this.#buffer.shift();
        }
        return true;
    }
    /** A request: buffered like a send, settled by its reply, an error, the deadline, an abort or a lost socket. */
    #request(type, payload, options = {}, direct = false) {
        return new Promise((resolve, reject) => {
            this.#checkNotClosed();
            const { signal, onProgress } = options;
            if (signal?.aborted)
                throw new NatterError("CANCELLED", "aborted before it was sent");
            const timeoutMs = options.timeoutMs ?? this.#opts.rpcTimeoutMs ?? 10000;
            const body = encode(payload);
            const cid = OUR_ID + (++this.#seq).toString(36);
            const p = {
                resolve, reject, onProgress, gen: 0,
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
            else if (!this.#transmit(q))
                this.#settle(cid, new NatterError("UNAVAILABLE", "not connected"));
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
    #remember(key, type, payload) {
        return new Promise((resolve, reject) => {
            this.#checkNotClosed();
            let r = this.#remembered.get(key);
            if (!r)
                this.#remembered.set(key, (r = { type, payload, gen: 0, waiters: [] }));
            r.payload = payload;
            r.gen = 0;
            r.waiters.push({ resolve, reject });
            // Otherwise #ready sends it on the next socket.
            if (this.#state === "open")
                void this.#resend(r, this.#gen).then((ok) => ok?.());
        });
    }
    /**
     * Sends a remembered item on socket gen. A refusal rejects its waiters;
     * success returns the function that resolves them.
     */
    async #resend(r, gen) {
        r.gen = gen;
        const key = r.type === "$join" ? `$join:${r.payload.room}` : r.type;
        try {
            await this.#request(r.type, r.payload, {}, true);
        }
        catch (err) {
            // A lost socket: the next one retries. Otherwise the edge refused
            // (e.g. PERMISSION_DENIED), so forget it.
            if (gen !== this.#gen)
                return;
            if (this.#remembered.get(key) === r)
                this.#remembered.delete(key);
            r.waiters.splice(0).forEach((w) => w.reject(err));
            return;
        }
        if (this.#remembered.get(key) !== r && r.type === "$join" && gen === this.#gen) {
            // Left while the join was on its way.
            this.#transmit({ type: "$leave", payload: encode({ room: r.payload.room }) });
        }
        return () => r.waiters.splice(0).forEach((w) => w.resolve());
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
        this.#emit("*", env);
        const cid = env.meta?.correlationId;
        if (typeof cid === "string") {
            const p = this.#pending.get(cid);
            if (p)
                return this.#reply(cid, p, env);
            if (cid.startsWith(SERVER_ID))
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
            // On failure the edge closes with 4100 when the token expires.
            this.refreshToken().catch(() => { });
        }
        this.#emit(env.type, env);
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
        this.#settle(cid, { ok: env.payload });
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
