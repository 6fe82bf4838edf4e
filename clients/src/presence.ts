/**
 * Presence: pages of a room's members, whether a user is online, this
 * connection's state (remembered by rooms.ts, like a room), and the
 * `$presence.diff` batches of rooms joined with presence.
 */
import type { Envelope, PresenceDiff, PresenceMember } from "./envelope.js";
import { ListenersByKey } from "./listeners.js";

/** One connection's presence entry. */
export interface PresenceEntry {
  conn: string;
  user?: string;
  edge: string;
  rooms?: string[];
  /** Unix ms. */
  connectedAt: number;
  state?: unknown;
}

/** A page of a room's members, ordered by connection id. */
export interface RoomPage {
  room: string;
  /** All members, not just this page's. */
  count: number;
  members: PresenceMember[];
  /** The cursor of the next page; absent on the last. */
  next?: string;
}

/** Whether a user is online; connections are listed for the client's own user only. */
export interface UserInfo {
  user: string;
  online: boolean;
  connections: PresenceEntry[];
}

export interface PresenceApi {
  /** A page of the members of a room this client is in. */
  room(room: string, page?: { cursor?: string; limit?: number }): Promise<RoomPage>;
  /** Whether a user is online. */
  user(user: string): Promise<UserInfo>;
  /** Sets this connection's presence state (at most 256 bytes of JSON; null clears); re-sent after reconnects. */
  setState(state: unknown): Promise<void>;
}

/** What presence needs of the connection (connection.ts: Connection): its requests (rpc.ts: Requests). */
export interface PresenceConn {
  readonly requests: { request(type: string, payload: unknown): Promise<unknown> };
}

/** Where this connection's presence state is remembered and re-sent, like a room (rooms.ts: Rooms). */
export interface PresenceState {
  setState(state: unknown): Promise<void>;
}

/** A client's presence: the API of client.presence and the watchers of diffs. */
export class Presence {
  /** client.presence. */
  readonly api: PresenceApi;
  readonly #watchers = new ListenersByKey<[PresenceDiff]>();

  constructor(conn: PresenceConn, rooms: PresenceState) {
    const { requests } = conn;
    this.api = {
      room: async (room, page = {}) => {
        const p = (await requests.request("$presence", { room, ...page })) as RoomPage;
        return { ...p, members: p.members ?? [] };
      },
      user: async (user) => {
        const u = (await requests.request("$presence", { user })) as UserInfo;
        return { ...u, connections: u.connections ?? [] };
      },
      setState: (state) => rooms.setState(state),
    };
  }

  /** Calls fn with the diffs of room; returns the unsubscribe function. */
  watch(room: string, fn: (diff: PresenceDiff) => void): () => void {
    return this.#watchers.add(room, fn);
  }

  /** Hands a `$presence.diff` to its room's watchers; returns it with every array present, for on(). */
  receive(env: Envelope): Envelope {
    const d = (env.payload ?? {}) as Partial<PresenceDiff>;
    const diff: PresenceDiff = { room: d.room ?? env.meta?.room ?? "", joins: d.joins ?? [], leaves: d.leaves ?? [], states: d.states ?? [] };
    const delivered = { ...env, payload: diff };
    this.#watchers.emit(diff.room, diff);
    return delivered;
  }
}
