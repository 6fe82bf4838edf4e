// Generated from clients/src/client.ts by `npm run build` in clients/. Do not edit.
/**
 * The client: connect() and the Client it returns, which puts the parts
 * together (connection.ts, rooms.ts, presence.ts, durable.ts, rpc.ts,
 * streams.ts) and
 * routes each frame the edge sends to them and then to the application.
 */
import { Connection } from "./connection.js";
import { DurableMessages, DurableRooms } from "./durable.js";
import { encode, isSystemType } from "./envelope.js";
import { ListenersByKey } from "./listeners.js";
import { Presence } from "./presence.js";
import { Rooms } from "./rooms.js";
import { Handlers, OUR_ID, SERVER_ID } from "./rpc.js";
import { Streams } from "./streams.js";
import { Tracing, withImportedOtel } from "./tracing.js";
/** Connects to a Natter edge; the client reconnects by itself until close(). */
export function connect(url, options = {}) {
    return new NatterClient(url, options);
}
class NatterClient {
    presence;
    #conn;
    #rooms;
    #durableRooms;
    #durableMessages;
    #presence;
    #handlers;
    #streams;
    #listeners = new ListenersByKey(); // by frame type, "*" for all
    #tracing; // undefined: no spans
    constructor(url, options) {
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
        if (otel)
            this.#tracing = new Tracing(otel, tracerProvider);
        else if (otel === undefined)
            withImportedOtel((api) => (this.#tracing = new Tracing(api, tracerProvider)));
        void this.#conn.dial();
    }
    get state() {
        return this.#conn.state;
    }
    get connectionId() {
        return this.#conn.connectionId;
    }
    onState(fn) {
        return this.#conn.onState(fn);
    }
    onError(fn) {
        return this.#conn.onError(fn);
    }
    on(type, fn) {
        return this.#listeners.add(type, fn);
    }
    send(type, payload, meta) {
        this.#conn.checkNotClosed();
        const body = encode(payload);
        const tracing = this.#tracing;
        if (tracing === undefined || isSystemType(type))
            return this.#conn.outbox.enqueue({ type, meta, payload: body });
        // The span ends once the frame is written or buffered.
        const span = tracing.send(type, meta);
        try {
            this.#conn.outbox.enqueue({ type, meta: span.meta, payload: body });
        }
        catch (err) {
            span.end(err);
            throw err;
        }
        span.end();
    }
    rpc(type, payload, options = {}) {
        const tracing = this.#tracing;
        if (tracing === undefined || isSystemType(type))
            return this.#conn.requests.request(type, payload, options);
        // The span ends when the reply, an error, the deadline or an abort settles the request.
        const span = tracing.rpc(type);
        return span.settle(this.#conn.requests.request(type, payload, { ...options, trace: span }));
    }
    sendDurable(type, payload, options = {}) {
        const tracing = this.#tracing;
        if (tracing === undefined || isSystemType(type))
            return this.#durableMessages.send(type, payload, options);
        // A send (as in the Go client) whose span lasts until the stream has stored it, resends included.
        const span = tracing.send(type, undefined);
        return span.settle(this.#durableMessages.send(type, payload, options, span));
    }
    handle(type, fn) {
        return this.#handlers.handle(type, fn);
    }
    join(room, options = {}) {
        return this.#rooms.join(room, options);
    }
    leave(room) {
        return this.#rooms.leave(room);
    }
    rooms() {
        return this.#rooms.list();
    }
    position(room) {
        return this.#durableRooms.position(room);
    }
    onRecovery(fn) {
        return this.#durableRooms.onRecovery(fn);
    }
    history(room, options = {}) {
        return this.#durableRooms.history(room, options);
    }
    onPresence(room, fn) {
        return this.#presence.watch(room, fn);
    }
    stream(id, options = {}) {
        return this.#streams.open(id, options);
    }
    refreshToken() {
        return this.#conn.refreshToken();
    }
    close() {
        this.#conn.close();
    }
    /** A frame of the current socket, decoded by its wire, on its way to the parts and then to the application. */
    #receive(env) {
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
            const e = (env.payload ?? {});
            if (e.code === "RESOURCE_EXHAUSTED" && typeof e.retryAfterMs === "number" && e.retryAfterMs > 0)
                this.#conn.outbox.pause(e.retryAfterMs);
        }
        const cid = env.meta?.correlationId;
        if (typeof cid === "string") {
            if (this.#conn.requests.reply(cid, env))
                return;
            // A server-to-client request, but never an error or a system frame:
            // answering the edge's RPC_ERROR for a late answer would start a loop.
            if (cid.startsWith(SERVER_ID) && !isError && !isSystemType(env.type))
                return void this.#handlers.answer(cid, env);
            if (cid.startsWith(OUR_ID))
                return; // a late reply to a request given up on
        }
        if (env.type === "$presence.diff") {
            env = this.#presence.receive(env);
        }
        else if (env.type === "$auth.expiring") {
            this.#conn.expiring(env.payload);
        }
        else if (env.type === "$connected") {
            const connected = env;
            this.#conn.connected(connected, () => this.#emit(connected.type, connected));
            return;
        }
        this.#emit(env.type, env);
    }
    #emit(type, env) {
        this.#listeners.emit(type, env.payload, env);
    }
}
