// Generated from clients/src/durable.ts by `npm run build` in clients/. Do not edit.
import { isLost, NatterError } from "./errors.js";
import { Listeners } from "./listeners.js";
const DURABLE_TIMEOUT_MS = 30000; // sendDurable's default overall deadline
const ACCEPTED = "$ws:accepted"; // the edge's answer to a stored durable message
/**
 * The positions of the durable rooms the client is in (rooms.ts decides
 * which rooms those are), the recovery events, and history.
 */
export class DurableRooms {
    #conn;
    #positions = new Map();
    #recovery = new Listeners();
    constructor(conn) {
        this.#conn = conn;
    }
    /** The last position seen in room (not a copy), if any. */
    get(room) {
        return this.#positions.get(room);
    }
    /** The application's word replaces what the client saw: replay from there. */
    set(room, since) {
        this.#positions.set(room, { offset: since.offset, epoch: since.epoch });
    }
    /** Forgets room's position: the client is no longer in it. */
    delete(room) {
        this.#positions.delete(room);
    }
    /** A copy of room's position, for the application. */
    position(room) {
        const p = this.#positions.get(room);
        return p && { ...p };
    }
    onRecovery(fn) {
        return this.#recovery.add(fn);
    }
    /**
     * A $joined of a room the client is in: sets the position to continue
     * from, of a new epoch too, and answers a join with since (sent from
     * `since`) unless the answer is late: a join that timed out was reported
     * as a gap then, and its retry reports the outcome.
     */
    joined(room, j, since, late) {
        if (j.durable !== true) {
            this.#positions.delete(room); // not (or no longer) durable
            return;
        }
        // No offset: an older edge, for a room with no history yet.
        const at = { offset: j.offset ?? 0, epoch: j.epoch };
        if (isPosition(at))
            this.#advance(room, at, true);
        const position = this.#positions.get(room);
        if (typeof j.recovered === "boolean" && position && !late) {
            this.#recovery.emit({ room, recovered: j.recovered, since: { ...(since ?? position) }, position: { ...position } });
        }
    }
    /**
     * A delivery in a room the client is in: moves the position forward
     * within an epoch only (a delivery of another epoch was not announced by
     * a $joined: the next re-join reports the gap).
     */
    delivered(room, meta) {
        const at = { offset: meta.offset, epoch: meta.epoch };
        if (isPosition(at))
            this.#advance(room, at, false);
    }
    /**
     * A join from since that was not answered in time: the edge may have
     * replayed part and gone on live, so what arrived cannot be told
     * complete. Reported as a gap.
     */
    timedOut(room, since) {
        const position = this.#positions.get(room) ?? since;
        this.#recovery.emit({ room, recovered: false, since: { ...since }, position: { ...position } });
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
        const h = ((await this.#conn.requests.request("$history", query, rpc)) ?? {});
        return { room: h.room ?? room, epoch: h.epoch ?? "", messages: h.messages ?? [], more: h.more === true };
    }
    /** Moves a room's position forward: a larger offset of the same epoch, or (newEpoch) another epoch. */
    #advance(room, at, newEpoch) {
        const p = this.#positions.get(room);
        if (!p || (p.epoch === at.epoch ? at.offset > p.offset : newEpoch))
            this.#positions.set(room, at);
    }
}
/** sendDurable and its waits between attempts. */
export class DurableMessages {
    #conn;
    #sleepers = new Set(); // waits between attempts: end() ends them
    constructor(conn) {
        this.#conn = conn;
    }
    /** Sends until stored (see Client.sendDurable); every attempt carries trace's context. */
    async send(type, payload, options = {}, trace) {
        const { signal, timeoutMs = DURABLE_TIMEOUT_MS } = options;
        const { requests } = this.#conn;
        // One key for every attempt: a resend of a message whose answer was
        // lost is stored once, and answered duplicate with the original's seq.
        const key = options.idempotencyKey ?? randomKey();
        const end = Date.now() + timeoutMs;
        const attemptMs = requests.timeoutMs;
        for (let refusals = 0;;) {
            const rpc = { idempotencyKey: key, timeoutMs: Math.max(1, Math.min(attemptMs, end - Date.now())), envelope: true, trace };
            if (signal)
                rpc.signal = signal;
            let err;
            try {
                const env = (await requests.request(type, payload, rpc));
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
            if (!refused && !isLost(err) && err.code !== "DEADLINE_EXCEEDED")
                throw err;
            const wait = refused ? this.#conn.backoff(refusals++, err) : 0;
            if (Date.now() + wait >= end) {
                throw err.code === "DEADLINE_EXCEEDED" ? new NatterError("DEADLINE_EXCEEDED", `${type} not stored within ${timeoutMs} ms`) : err;
            }
            if (wait > 0)
                await this.#sleep(wait, signal);
        }
    }
    /** Ends every wait between attempts with err: the client has closed. */
    end(err) {
        for (const stop of [...this.#sleepers])
            stop(err);
    }
    /** Resolves after ms; rejects with CANCELLED when signal aborts, and with end's error when the client ends. */
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
}
/** Whether v is a usable position: a non-negative integer offset and a string epoch. */
export function isPosition(v) {
    return typeof v === "object" && v !== null && Number.isSafeInteger(v.offset) && v.offset >= 0 && typeof v.epoch === "string";
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
