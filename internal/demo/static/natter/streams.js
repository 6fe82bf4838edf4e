// Generated from clients/src/streams.ts by `npm run build` in clients/. Do not edit.
import { isLost, NatterError } from "./errors.js";
// The join refusals retried from the same offset: JetStream did not
// answer, or the join found no answer in time.
const RETRIED = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED"]);
/** The streams this client reads, by id: joined or being joined, not ended. */
export class Streams {
    #conn;
    #reads = new Map();
    constructor(conn) {
        this.#conn = conn;
    }
    /** Joins stream id (see Client.stream); sent now when open, else on the next socket (resync). */
    open(id, options = {}) {
        const { offset = 0, signal } = options;
        const reader = new Reader(id, offset, {
            leave: () => this.#leave(read),
            cancel: () => this.#conn.requests.request("$stream.cancel", { stream: id }).then(() => undefined),
        });
        const read = { reader, gen: 0, joining: false, attempt: 0 };
        try {
            this.#conn.checkNotClosed();
        }
        catch (err) {
            reader.finish({ error: err });
            return reader;
        }
        if (!Number.isSafeInteger(offset) || offset < 0) {
            reader.finish({ error: new NatterError("INVALID_ARGUMENT", "offset must be a non-negative integer") });
            return reader;
        }
        if (this.#reads.has(id)) {
            reader.finish({ error: new NatterError("ALREADY_EXISTS", `stream ${id} is read by this client already: leave it first`) });
            return reader;
        }
        this.#reads.set(id, read);
        if (signal) {
            if (signal.aborted) {
                reader.leave();
                return reader;
            }
            const onAbort = () => reader.leave();
            signal.addEventListener("abort", onAbort, { once: true });
            void reader.ended.finally(() => signal.removeEventListener("abort", onAbort)).catch(() => { });
        }
        if (this.#conn.state === "open")
            this.#join(read, this.#conn.gen);
        return reader;
    }
    /** Joins, on socket gen, every stream it has not been joined on, from its last offset. */
    resync(gen) {
        for (const read of this.#reads.values()) {
            if (read.gen === gen)
                continue;
            clearTimeout(read.retry);
            this.#join(read, gen);
        }
    }
    /**
     * Sees every frame: marks a stream joined at its `$stream.joined` (the
     * answer to its current join, by correlation id), and hands its reader
     * the chunks and the end that follow, by `meta.stream`.
     */
    receive(env) {
        const gen = this.#conn.gen;
        if (env.type === "$stream.joined") {
            const id = env.payload?.stream;
            const read = typeof id === "string" ? this.#reads.get(id) : undefined;
            if (read && read.joining && read.gen === gen && read.cid === env.meta?.correlationId)
                read.joining = false;
            return;
        }
        if (env.type !== "$stream.chunk" && env.type !== "$stream.end")
            return;
        const meta = env.meta ?? {};
        const read = typeof meta.stream === "string" ? this.#reads.get(meta.stream) : undefined;
        // Only after $stream.joined, on the socket of the join.
        if (!read || read.joining || read.gen !== gen)
            return;
        const { reader } = read;
        const offset = Number.isSafeInteger(meta.offset) && meta.offset >= 0 ? meta.offset : undefined;
        if (env.type === "$stream.chunk") {
            // A chunk ends past the last offset seen; anything else was had already.
            if (typeof env.payload === "string" && offset !== undefined && offset > reader.offset)
                reader.chunk({ text: env.payload, offset });
            return;
        }
        this.#reads.delete(reader.id);
        const p = (env.payload ?? {});
        const end = { status: p.status === "done" ? "done" : "error", offset: offset ?? reader.offset };
        if (end.status === "error") {
            const { code, message } = p.error ?? {};
            end.error = { code: typeof code === "string" && code ? code : "INTERNAL", message: typeof message === "string" ? message : "" };
        }
        reader.finish({ end });
    }
    /** Stops the retries waiting for their backoff: the socket is gone (the next one re-joins). */
    stop() {
        for (const read of this.#reads.values())
            clearTimeout(read.retry);
    }
    /** Ends every stream with err: the client has closed. */
    end(err) {
        const reads = [...this.#reads.values()];
        this.#reads.clear();
        for (const read of reads) {
            clearTimeout(read.retry);
            read.reader.finish({ error: err });
        }
    }
    /**
     * Sends `$stream.join` from the reader's offset on socket gen. A
     * refusal the edge may change its mind about (RETRIED) is tried again
     * after a backoff, on the same socket; a lost socket leaves it to the
     * next; any other refusal ends the reader with it.
     */
    #join(read, gen, leaveFirst = false) {
        const { requests } = this.#conn;
        const { id } = read.reader;
        read.gen = gen;
        read.joining = true;
        // A join that timed out may still be joined on the edge: leave it
        // first (not an error when it is not), and its frames are dropped
        // until the new join's $stream.joined.
        if (leaveFirst)
            requests.request("$stream.leave", { stream: id }, {}, true).catch(() => { });
        // The correlation id tells this join's $stream.joined from a late one's.
        const options = { trace: { meta: undefined, correlate: (cid) => (read.cid = cid) } };
        const current = () => this.#reads.get(id) === read && read.gen === gen; // not left, ended, or joined again since
        requests.request("$stream.join", { stream: id, offset: read.reader.offset }, options, true).then(() => {
            if (current())
                read.attempt = 0;
        }, (e) => {
            const err = e;
            if (!current() || gen !== this.#conn.gen || isLost(err))
                return; // a lost socket: the next one joins it again
            const info = { op: "stream", stream: id, retrying: RETRIED.has(err.code) };
            this.#conn.report(err, info);
            if (info.retrying) {
                read.retry = setTimeout(() => {
                    if (current() && gen === this.#conn.gen)
                        this.#join(read, gen, err.code === "DEADLINE_EXCEEDED");
                }, this.#conn.backoff(read.attempt++, err));
                return;
            }
            this.#reads.delete(id);
            read.reader.finish({ error: err });
        });
    }
    /** Forgets a read; a socket it was joined on (or is being joined on) is sent `$stream.leave`. */
    #leave(read) {
        const { id } = read.reader;
        if (this.#reads.get(id) !== read)
            return;
        this.#reads.delete(id);
        clearTimeout(read.retry);
        if (read.gen === this.#conn.gen)
            this.#conn.requests.request("$stream.leave", { stream: id }, {}, true).catch(() => { });
    }
}
/** One stream as the application reads it: its chunks, its finish, its iterator. */
class Reader {
    id;
    ended;
    #actions;
    #offset;
    // The chunks not read yet, from #head on; bounded by the text, which a
    // producer keeps to one NATS payload (1 MiB by default).
    #chunks = [];
    #head = 0;
    #final;
    #wake; // the read waiting for a chunk or the finish
    #read = false; // the iterator or text() has been taken
    #settle;
    constructor(id, offset, actions) {
        this.id = id;
        this.#offset = offset;
        this.#actions = actions;
        this.ended = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
        this.ended.catch(() => { }); // a rejection nobody awaits is not an unhandled one
    }
    get offset() {
        return this.#offset;
    }
    chunk(c) {
        this.#offset = c.offset;
        this.#chunks.push(c);
        this.#wakeUp();
    }
    /** Finishes the reader once: with its end, an error, or (neither) left. */
    finish(f) {
        if (this.#final)
            return;
        this.#final = f;
        if (f.end) {
            this.#offset = f.end.offset;
            this.#settle.resolve(f.end);
        }
        else {
            this.#settle.reject(f.error ?? new NatterError("CANCELLED", `left stream ${this.id} before its end`));
        }
        this.#wakeUp();
    }
    leave() {
        if (this.#final)
            return;
        this.#actions.leave();
        this.finish({});
    }
    cancel() {
        return this.#actions.cancel();
    }
    async text() {
        const it = this[Symbol.asyncIterator]();
        let text = "";
        for (let r = await it.next(); !r.done; r = await it.next())
            text += r.value.text;
        const f = this.#final;
        if (!f.end)
            throw new NatterError("CANCELLED", `left stream ${this.id} before its end`);
        return text;
    }
    [Symbol.asyncIterator]() {
        const taken = this.#read;
        this.#read = true;
        return {
            next: () => (taken ? Promise.reject(new NatterError("FAILED_PRECONDITION", `stream ${this.id} is read once: by one iterator or text()`)) : this.#next()),
            // A loop left early (break, throw) leaves the stream.
            return: () => {
                if (!taken)
                    this.leave();
                return Promise.resolve({ done: true, value: undefined });
            },
        };
    }
    async #next() {
        for (;;) {
            if (this.#head < this.#chunks.length) {
                const c = this.#chunks[this.#head];
                this.#chunks[this.#head++] = undefined;
                if (this.#head > 1024 && this.#head * 2 > this.#chunks.length) {
                    this.#chunks = this.#chunks.slice(this.#head);
                    this.#head = 0;
                }
                return { done: false, value: c };
            }
            const f = this.#final;
            if (f) {
                if (f.error)
                    throw f.error;
                if (f.end?.status === "error")
                    throw new NatterError(f.end.error.code, f.end.error.message);
                return { done: true, value: undefined };
            }
            await new Promise((resolve) => (this.#wake = resolve));
        }
    }
    #wakeUp() {
        const wake = this.#wake;
        this.#wake = undefined;
        wake?.();
    }
}
