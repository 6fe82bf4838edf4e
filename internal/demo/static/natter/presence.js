// Generated from clients/src/presence.ts by `npm run build` in clients/. Do not edit.
import { ListenersByKey } from "./listeners.js";
/** A client's presence: the API of client.presence and the watchers of diffs. */
export class Presence {
    /** client.presence. */
    api;
    #watchers = new ListenersByKey();
    constructor(conn, rooms) {
        const { requests } = conn;
        this.api = {
            room: async (room, page = {}) => {
                const p = (await requests.request("$presence", { room, ...page }));
                return { ...p, members: p.members ?? [] };
            },
            user: async (user) => {
                const u = (await requests.request("$presence", { user }));
                return { ...u, connections: u.connections ?? [] };
            },
            setState: (state) => rooms.setState(state),
        };
    }
    /** Calls fn with the diffs of room; returns the unsubscribe function. */
    watch(room, fn) {
        return this.#watchers.add(room, fn);
    }
    /** Hands a `$presence.diff` to its room's watchers; returns it with every array present, for on(). */
    receive(env) {
        const d = (env.payload ?? {});
        const diff = { room: d.room ?? env.meta?.room ?? "", joins: d.joins ?? [], leaves: d.leaves ?? [], states: d.states ?? [] };
        const delivered = { ...env, payload: diff };
        this.#watchers.emit(diff.room, diff);
        return delivered;
    }
}
