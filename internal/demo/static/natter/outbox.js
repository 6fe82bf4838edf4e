// Generated from clients/src/outbox.ts by `npm run build` in clients/. Do not edit.
import { NatterError } from "./errors.js";
/** The send buffer and the send rate of one client, across its sockets. */
export class Outbox {
    #conn;
    #rate;
    #buffer = [];
    #flushTimer; // the paced flush's next step
    constructor(conn) {
        this.#conn = conn;
        const { sendRate } = conn.options;
        if (sendRate !== false)
            this.#rate = new SendRate(sendRate?.perSecond ?? 100, sendRate?.burst ?? 200);
    }
    /**
     * Sends q now when open (and the send rate allows), else buffers it under
     * the overflow policy. While open, a non-empty buffer means the rate
     * holds sends back: q waits behind them, in order.
     */
    enqueue(q) {
        if (this.#conn.state === "open" && this.#buffer.length === 0 && this.#wait() === 0 && this.transmit(q))
            return;
        const { max = 1000, overflow = "error" } = this.#conn.options.buffer ?? {};
        if (this.#buffer.length >= max) {
            const full = new NatterError("RESOURCE_EXHAUSTED", `send buffer full (${max} messages)`);
            if (overflow === "drop-oldest" && max > 0) {
                const old = this.#buffer.shift();
                if (old.cid)
                    this.#conn.requests.settle(old.cid, full);
            }
            else {
                // "drop-newest" drops q; "error" refuses it. A request rejects either way.
                if (q.cid)
                    this.#conn.requests.settle(q.cid, full);
                else if (overflow === "error")
                    throw full;
                return;
            }
        }
        this.#buffer.push(q);
        if (this.#conn.state === "open" && this.#flushTimer === undefined)
            this.flush();
    }
    /** Writes q to the socket if it is open (taking a token of the send rate); false when it is not. The socket encodes it for its wire. */
    transmit(q) {
        const t = this.#conn.transport;
        if (!t || !t.writable)
            return false;
        let meta = q.meta;
        if (q.cid) {
            const p = this.#conn.requests.get(q.cid);
            if (!p)
                return true; // settled (timed out, aborted) while buffered
            // The edge's deadline counts from arrival: send what is left of ours.
            meta = { correlationId: q.cid, timeoutMs: Math.max(1, p.deadline - Date.now()) };
            if (p.key !== undefined)
                meta.idempotencyKey = p.key;
            if (p.meta)
                Object.assign(meta, p.meta); // trace context
            p.gen = this.#conn.gen;
        }
        try {
            t.send({ type: q.type, meta, payload: q.payload });
        }
        catch {
            if (q.cid)
                this.#conn.requests.get(q.cid).gen = 0;
            return false;
        }
        // Frames the client sends by itself (re-joins, aborts, answers) take a
        // token too, possibly into debt: the edge counts every message.
        this.#rate?.take();
        return true;
    }
    /**
     * Sends the buffer in order, as fast as the send rate allows (the rest
     * follows from a timer); false if the socket closed on the way.
     */
    flush() {
        clearTimeout(this.#flushTimer);
        this.#flushTimer = undefined;
        while (this.#buffer.length > 0) {
            const wait = this.#wait();
            if (wait > 0) {
                const gen = this.#conn.gen;
                this.#flushTimer = setTimeout(() => {
                    this.#flushTimer = undefined;
                    if (gen === this.#conn.gen && this.#conn.state === "open")
                        this.flush();
                }, wait);
                return true;
            }
            if (!this.transmit(this.#buffer[0]))
                return false;
            this.#buffer.shift();
        }
        return true;
    }
    /** The edge said RESOURCE_EXHAUSTED with retryAfterMs: send nothing paced before then. */
    pause(ms) {
        this.#rate?.pause(ms);
    }
    /** Drops a request from the buffer (it was settled before it went out). */
    drop(cid) {
        this.#buffer = this.#buffer.filter((q) => q.cid !== cid);
    }
    /** Empties the buffer: the client has closed. */
    clear() {
        this.#buffer = [];
    }
    /** Stops the paced flush: the socket is gone. */
    stop() {
        clearTimeout(this.#flushTimer);
        this.#flushTimer = undefined;
    }
    /** Ms until a send may go out; 0 now. */
    #wait() {
        return this.#rate?.wait() ?? 0;
    }
}
/** The send rate: a token bucket like the edge's --rate-limit. */
class SendRate {
    #perSecond;
    #burst;
    #tokens;
    #tokensAt = Date.now();
    constructor(perSecond, burst) {
        this.#perSecond = perSecond;
        this.#burst = burst;
        this.#tokens = burst;
    }
    /** Takes a token for a frame that went out, possibly into debt. */
    take() {
        this.#refill();
        this.#tokens -= 1;
    }
    /** Ms until a token is there; 0 now. */
    wait() {
        this.#refill();
        return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.#perSecond);
    }
    /** Nothing paced goes out for ms. */
    pause(ms) {
        this.#refill();
        this.#tokens = Math.min(this.#tokens, 1 - (ms * this.#perSecond) / 1000);
    }
    /** Adds the tokens earned since the last call. */
    #refill() {
        const now = Date.now();
        this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#tokensAt) * this.#perSecond) / 1000);
        this.#tokensAt = now;
    }
}
