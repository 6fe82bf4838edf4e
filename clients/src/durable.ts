/**
 * Durable rooms and durable messages. Durable rooms: the last position seen
 * in each (sent as `since` when the room is re-joined), the recovery events
 * that report whether a re-join missed anything, and history pages.
 * Durable messages: sendDurable, which resends a message with one
 * idempotency key until the edge's work stream has stored it.
 */
import type { Envelope, JoinedPayload, Meta } from "./envelope.js";
import { isLost, NatterError } from "./errors.js";
import { Listeners } from "./listeners.js";
import type { AbortSignalLike, RequestOptions, RpcOptions } from "./rpc.js";

/**
 * A place in a durable room's history: the `meta.offset` and `meta.epoch`
 * of a delivery. Opaque beyond "a larger offset of the same epoch is later".
 */
export interface Position {
  offset: number;
  epoch: string;
}

/**
 * The outcome of a join of a durable room with `since` (every re-join after
 * a reconnect of a room with a known position, and join(room, {since})).
 */
export interface RecoveryInfo {
  room: string;
  /**
   * true: every message after `since` was delivered (before this event), in
   * order, without duplicates. false: a gap; messages were missed (the
   * position is older than the retained history, or history was reset), so
   * the application should refetch the room's state.
   */
  recovered: boolean;
  /** The position sent as `since`. */
  since: Position;
  /** The room's position now, to continue from. */
  position: Position;
}

export interface HistoryOptions {
  /** Messages per page, 1..1000. Default (the edge's) 100. */
  limit?: number;
  /** Page forward: the first `limit` messages after this offset (0: from the oldest kept). */
  since?: number;
  /** Page backward: the last `limit` messages before this offset. Without since or before: the newest. */
  before?: number;
  /** Deadline in ms. Default options.rpcTimeoutMs. */
  timeoutMs?: number;
  signal?: AbortSignalLike;
}

/** A page of a durable room's history, oldest first. */
export interface HistoryPage<P = unknown> {
  room: string;
  epoch: string;
  /** Each with meta.room, meta.offset and meta.epoch. */
  messages: Envelope<P>[];
  /** Whether another page exists in the direction asked. */
  more: boolean;
}

export interface DurableOptions {
  /**
   * The message's idempotency key (1-128 printable ASCII characters, no
   * spaces): a resend with the same key within the edge's dedupe window
   * (10 min by default) is stored once. Default: a fresh random key.
   */
  idempotencyKey?: string;
  /** The overall deadline in ms, resends included. Default 30000. */
  timeoutMs?: number;
  /** Aborting stops the resends and rejects with CANCELLED (a message sent already may still be stored). */
  signal?: AbortSignalLike;
}

/** The edge's `$ws:accepted`: the work stream has stored a durable message. */
export interface Accepted {
  /** The message's sequence number in the work stream. */
  seq: number;
  /** True when the stream had this user's message with this key already (seq is then the original's). */
  duplicate: boolean;
}

/** What durable rooms and messages need of the connection (connection.ts: Connection). */
export interface DurableConn {
  /** The requests waiting for replies (rpc.ts: Requests). */
  readonly requests: {
    /** The default deadline of a request, in ms. */
    readonly timeoutMs: number;
    request(type: string, payload: unknown, options?: RequestOptions): Promise<unknown>;
  };
  /** The wait before retry attempt of something the edge refused with err. */
  backoff(attempt: number, err?: NatterError): number;
}

const DURABLE_TIMEOUT_MS = 30000; // sendDurable's default overall deadline
const ACCEPTED = "$ws:accepted"; // the edge's answer to a stored durable message

/**
 * The positions of the durable rooms the client is in (rooms.ts decides
 * which rooms those are), the recovery events, and history.
 */
export class DurableRooms {
  readonly #conn: Pick<DurableConn, "requests">;
  readonly #positions = new Map<string, Position>();
  readonly #recovery = new Listeners<[RecoveryInfo]>();

  constructor(conn: Pick<DurableConn, "requests">) {
    this.#conn = conn;
  }

  /** The last position seen in room (not a copy), if any. */
  get(room: string): Position | undefined {
    return this.#positions.get(room);
  }

  /** The application's word replaces what the client saw: replay from there. */
  set(room: string, since: Position): void {
    this.#positions.set(room, { offset: since.offset, epoch: since.epoch });
  }

  /** Forgets room's position: the client is no longer in it. */
  delete(room: string): void {
    this.#positions.delete(room);
  }

  /** A copy of room's position, for the application. */
  position(room: string): Position | undefined {
    const p = this.#positions.get(room);
    return p && { ...p };
  }

  onRecovery(fn: (info: RecoveryInfo) => void): () => void {
    return this.#recovery.add(fn);
  }

  /**
   * A $joined of a room the client is in: sets the position to continue
   * from, of a new epoch too, and answers a join with since (sent from
   * `since`) unless the answer is late: a join that timed out was reported
   * as a gap then, and its retry reports the outcome.
   */
  joined(room: string, j: Partial<JoinedPayload>, since: Position | undefined, late: boolean): void {
    if (j.durable !== true) {
      this.#positions.delete(room); // not (or no longer) durable
      return;
    }
    // No offset: an older edge, for a room with no history yet.
    const at = { offset: j.offset ?? 0, epoch: j.epoch };
    if (isPosition(at)) this.#advance(room, at, true);
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
  delivered(room: string, meta: Meta): void {
    const at = { offset: meta.offset, epoch: meta.epoch };
    if (isPosition(at)) this.#advance(room, at, false);
  }

  /**
   * A join from since that was not answered in time: the edge may have
   * replayed part and gone on live, so what arrived cannot be told
   * complete. Reported as a gap.
   */
  timedOut(room: string, since: Position): void {
    const position = this.#positions.get(room) ?? since;
    this.#recovery.emit({ room, recovered: false, since: { ...since }, position: { ...position } });
  }

  async history<P = unknown>(room: string, options: HistoryOptions = {}): Promise<HistoryPage<P>> {
    const { limit, since, before, timeoutMs, signal } = options;
    const query: { room: string; limit?: number; since?: number; before?: number } = { room };
    if (limit !== undefined) query.limit = limit;
    if (since !== undefined) query.since = since;
    if (before !== undefined) query.before = before;
    const rpc: RpcOptions = {};
    if (timeoutMs !== undefined) rpc.timeoutMs = timeoutMs;
    if (signal !== undefined) rpc.signal = signal;
    const h = ((await this.#conn.requests.request("$history", query, rpc)) ?? {}) as Partial<HistoryPage<P>>;
    return { room: h.room ?? room, epoch: h.epoch ?? "", messages: h.messages ?? [], more: h.more === true };
  }

  /** Moves a room's position forward: a larger offset of the same epoch, or (newEpoch) another epoch. */
  #advance(room: string, at: Position, newEpoch: boolean): void {
    const p = this.#positions.get(room);
    if (!p || (p.epoch === at.epoch ? at.offset > p.offset : newEpoch)) this.#positions.set(room, at);
  }
}

/** sendDurable and its waits between attempts. */
export class DurableMessages {
  readonly #conn: DurableConn;
  readonly #sleepers = new Set<(err: NatterError) => void>(); // waits between attempts: end() ends them

  constructor(conn: DurableConn) {
    this.#conn = conn;
  }

  /** Sends until stored (see Client.sendDurable); every attempt carries trace's context. */
  async send(type: string, payload: unknown, options: DurableOptions = {}, trace?: RequestOptions["trace"]): Promise<Accepted> {
    const { signal, timeoutMs = DURABLE_TIMEOUT_MS } = options;
    const { requests } = this.#conn;
    // One key for every attempt: a resend of a message whose answer was
    // lost is stored once, and answered duplicate with the original's seq.
    const key = options.idempotencyKey ?? randomKey();
    const end = Date.now() + timeoutMs;
    const attemptMs = requests.timeoutMs;
    for (let refusals = 0; ;) {
      const rpc: RequestOptions = { idempotencyKey: key, timeoutMs: Math.max(1, Math.min(attemptMs, end - Date.now())), envelope: true, trace };
      if (signal) rpc.signal = signal;
      let err: NatterError;
      try {
        const env = (await requests.request(type, payload, rpc)) as Envelope;
        if (env.type !== ACCEPTED) {
          // A worker answered: the edge did not store it.
          throw new NatterError("FAILED_PRECONDITION", `${type} was answered with ${env.type}, not ${ACCEPTED}: it is not one of the edge's --durable-types`);
        }
        const a = (env.payload ?? {}) as { seq?: unknown; duplicate?: unknown };
        return { seq: Number.isSafeInteger(a.seq) ? (a.seq as number) : 0, duplicate: a.duplicate === true };
      } catch (e) {
        err = e as NatterError;
      }
      // What may still be stored by a resend: the edge's "retry after"
      // (stream unreachable or full, a rate limit), an attempt without an
      // answer in time, a connection lost while it was out. The resend
      // waits in the send buffer until the client is open again.
      const refused = (err.code === "UNAVAILABLE" || err.code === "RESOURCE_EXHAUSTED") && err.retryAfterMs !== undefined;
      if (!refused && !isLost(err) && err.code !== "DEADLINE_EXCEEDED") throw err;
      const wait = refused ? this.#conn.backoff(refusals++, err) : 0;
      if (Date.now() + wait >= end) {
        throw err.code === "DEADLINE_EXCEEDED" ? new NatterError("DEADLINE_EXCEEDED", `${type} not stored within ${timeoutMs} ms`) : err;
      }
      if (wait > 0) await this.#sleep(wait, signal);
    }
  }

  /** Ends every wait between attempts with err: the client has closed. */
  end(err: NatterError): void {
    for (const stop of [...this.#sleepers]) stop(err);
  }

  /** Resolves after ms; rejects with CANCELLED when signal aborts, and with end's error when the client ends. */
  #sleep(ms: number, signal?: AbortSignalLike): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) throw new NatterError("CANCELLED", "aborted");
      const stop = (err: NatterError) => {
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
export function isPosition(v: { offset?: unknown; epoch?: unknown } | null | undefined): v is Position {
  return typeof v === "object" && v !== null && Number.isSafeInteger(v.offset) && (v.offset as number) >= 0 && typeof v.epoch === "string";
}

/**
 * randomKey returns a fresh idempotency key: a random UUID, or 32 random
 * hex digits where crypto.randomUUID is missing (browsers outside secure
 * contexts).
 */
function randomKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string; getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (typeof c?.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
