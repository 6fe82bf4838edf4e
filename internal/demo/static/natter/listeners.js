// Generated from clients/src/listeners.ts by `npm run build` in clients/. Do not edit.
/**
 * The application's callbacks: sets of listeners that the client calls
 * without letting an exception of theirs into its own state.
 */
/** Listeners of one kind; add returns the function that removes one. */
export class Listeners {
    #set = new Set();
    add(fn) {
        this.#set.add(fn);
        return () => void this.#set.delete(fn);
    }
    /** Calls every listener (those added when it starts), each safely. */
    emit(...args) {
        for (const fn of [...this.#set])
            safely(() => fn(...args));
    }
}
/** Listeners by key: a frame type, a room. */
export class ListenersByKey {
    #byKey = new Map();
    add(key, fn) {
        let set = this.#byKey.get(key);
        if (!set)
            this.#byKey.set(key, (set = new Listeners()));
        return set.add(fn);
    }
    emit(key, ...args) {
        this.#byKey.get(key)?.emit(...args);
    }
}
/** Runs a user callback; an exception is reported (like an event listener's), not thrown into the client. */
export function safely(fn) {
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
