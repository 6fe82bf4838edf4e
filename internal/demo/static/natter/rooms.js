// Generated from clients/src/rooms.ts by `npm run build` in clients/. Do not edit.
/**
 * What the edge forgets with a connection and the client re-sends on every
 * new socket: the rooms it is in (join, leave, and the joins and leaves a
 * service makes for it) and its presence state (presence.ts sets it).
 * Durable rooms are re-joined from their last position (durable.ts).
 */
import { isPosition } from "./durable.js";
import { isLost, NatterError } from "./errors.js";
// The codes that make a re-join (or the state's re-send) final: the edge will not change its mind.
const FINAL_REFUSALS = new Set(["PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND"]);
/** The rooms of one client and its presence state, across its sockets. */
export class Rooms {
    #conn;
    #durable;
    #remembered = new Map(); // key: "$presence.state" or "$join:<room>"
    #leaving = new Map(); // rooms with a $leave of ours on its way
    constructor(conn, durable) {
        this.#conn = conn;
        this.#durable = durable;
    }
    join(room, options = {}) {
        const payload = options.presence ? { room, presence: true } : { room };
        const { since } = options;
        if (since !== undefined) {
            if (!isPosition(since))
                return Promise.reject(new NatterError("INVALID_ARGUMENT", "since must be {offset: number, epoch: string}"));
            this.#durable.set(room, since);
        }
        return this.#remember(`$join:${room}`, "$join", payload, since !== undefined);
    }
    async leave(room) {
        const r = this.#remembered.get(`$join:${room}`);
        this.#remembered.delete(`$join:${room}`);
        this.#durable.delete(room);
        if (r) {
            clearTimeout(r.retry);
            r.waiters.splice(0).forEach((w) => w.reject(new NatterError("CANCELLED", `left ${room} before the join completed`)));
        }
        // Only a socket that is open, or being brought up to date and has sent
        // the join already, needs a $leave; the next socket simply does not
        // re-join. Like $join it bypasses the send buffer, so the edge sees
        // joins and leaves in the order they were made and ends up where
        // rooms() says: no extra $leave is needed when a join completes.
        const open = this.#conn.state === "open";
        if (!open && r?.gen !== this.#conn.gen)
            return;
        this.#leaving.set(room, (this.#leaving.get(room) ?? 0) + 1);
        const sent = this.#conn.requests.request("$leave", { room }, {}, true).finally(() => {
            const n = this.#leaving.get(room) - 1;
            if (n > 0)
                this.#leaving.set(room, n);
            else
                this.#leaving.delete(room);
        });
        // A lost socket left the room anyway. While the socket is being
        // brought up to date, leave() does not wait for $left.
        const done = sent.catch((err) => {
            if (open && !isLost(err))
                throw err;
        });
        if (open)
            await done;
    }
    /** The rooms joined or being joined. */
    list() {
        return [...this.#remembered.values()].filter((r) => r.type === "$join").map((r) => r.payload.room);
    }
    /** Sets this connection's presence state, re-sent on every socket. */
    setState(state) {
        return this.#remember("$presence.state", "$presence.state", { state });
    }
    /**
     * Sends on socket gen what it has not had yet, the presence state first,
     * and returns the sends (none: gen is up to date). Each resolves with
     * what to call once the client is open, if the edge accepted it.
     */
    resync(gen) {
        const todo = [...this.#remembered.values()].filter((r) => r.gen !== gen);
        todo.sort((a, b) => (a.type === b.type ? 0 : a.type === "$presence.state" ? -1 : 1));
        return todo.map((r) => this.#resend(r, gen));
    }
    /**
     * Sees every frame before any listener does: joins and leaves a service
     * made, then durable rooms' positions (so that a server join has its
     * room before its position is tracked).
     */
    receive(env) {
        const cid = env.meta?.correlationId;
        if (typeof cid !== "string" && (env.type === "$joined" || env.type === "$left"))
            this.#serverMembership(env);
        this.#track(env);
    }
    /** Stops the re-sends waiting for their backoff: the socket is gone. */
    stop() {
        for (const r of this.#remembered.values())
            clearTimeout(r.retry);
    }
    /** Rejects every caller still waiting with err: the client has closed. */
    end(err) {
        for (const r of this.#remembered.values())
            r.waiters.splice(0).forEach((w) => w.reject(err));
    }
    /** Records a room or the presence state for every future socket, and sends it now when open. */
    #remember(key, type, payload, replay = false) {
        return new Promise((resolve, reject) => {
            this.#conn.checkNotClosed();
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
            // Otherwise the connection sends it (resync) on the next socket.
            if (this.#conn.state === "open")
                void this.#resend(r, this.#conn.gen).then((ok) => ok?.());
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
            const since = this.#durable.get(room);
            if (since && (r.replay || r.accepted?.gen !== gen)) {
                wire = { ...payload, since };
                r.since = since;
            }
        }
        r.inflight++;
        try {
            await this.#conn.requests.request(r.type, wire, {}, true);
        }
        catch (e) {
            const err = e;
            // A join from a position that was not answered in time: reported as
            // a gap; the retry continues from there.
            if (room !== undefined && r.since && err.code === "DEADLINE_EXCEEDED" && wire !== payload)
                this.#durable.timedOut(room, r.since);
            if (gen !== this.#conn.gen || isLost(err))
                return undefined; // the next socket sends it again
            const callers = r.waiters.filter((w) => w.version <= version);
            const info = { op: room === undefined ? "state" : "join", retrying: false };
            if (room !== undefined)
                info.room = room;
            if (callers.length === 0 && mine() && !FINAL_REFUSALS.has(err.code)) {
                info.retrying = true;
                this.#conn.report(err, info);
                r.retry = setTimeout(() => {
                    if (gen === this.#conn.gen && mine())
                        void this.#resend(r, gen).then((ok) => ok?.());
                }, this.#conn.backoff(r.attempt++, err));
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
                        this.#durable.delete(room);
                }
                if (callers.length === 0)
                    this.#conn.report(err, info);
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
        const gen = this.#conn.gen;
        if ((r && (r.inflight > 0 || r.gen !== gen)) || this.#leaving.has(room))
            return;
        if (env.type === "$joined" && !r) {
            const payload = { room };
            this.#remembered.set(key, { type: "$join", payload, gen, version: 0, waiters: [], inflight: 0, attempt: 0, accepted: { payload, gen, version: 0 } });
        }
        else if (env.type === "$left" && r) {
            clearTimeout(r.retry);
            this.#remembered.delete(key);
            this.#durable.delete(room);
        }
    }
    /**
     * Durable rooms: hands the frames of the rooms in #remembered to their
     * positions: a $joined, which answers a join with since (reported to
     * onRecovery before the join resolves and before any later frame), and
     * every delivery.
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
            // A late answer to a join that timed out was reported as a gap then.
            const cid = env.meta?.correlationId;
            const late = typeof cid === "string" && !this.#conn.requests.get(cid);
            this.#durable.joined(room, j, r.since, late);
            return;
        }
        const meta = env.meta;
        if (!meta || typeof meta.room !== "string" || !this.#remembered.has(`$join:${meta.room}`))
            return;
        this.#durable.delivered(meta.room, meta);
    }
}
