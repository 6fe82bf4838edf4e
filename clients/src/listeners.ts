/**
 * The application's callbacks: sets of listeners that the client calls
 * without letting an exception of theirs into its own state.
 */

/** Listeners of one kind; add returns the function that removes one. */
export class Listeners<A extends unknown[]> {
  readonly #set = new Set<(...args: A) => void>();

  add(fn: (...args: A) => void): () => void {
    this.#set.add(fn);
    return () => void this.#set.delete(fn);
  }

  /** Calls every listener (those added when it starts), each safely. */
  emit(...args: A): void {
    for (const fn of [...this.#set]) safely(() => fn(...args));
  }
}

/** Listeners by key: a frame type, a room. */
export class ListenersByKey<A extends unknown[]> {
  readonly #byKey = new Map<string, Listeners<A>>();

  add(key: string, fn: (...args: A) => void): () => void {
    let set = this.#byKey.get(key);
    if (!set) this.#byKey.set(key, (set = new Listeners()));
    return set.add(fn);
  }

  emit(key: string, ...args: A): void {
    this.#byKey.get(key)?.emit(...args);
  }
}

/** Runs a user callback; an exception is reported (like an event listener's), not thrown into the client. */
export function safely(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
    if (report) report(err);
    else setTimeout(() => { throw err; });
  }
}
