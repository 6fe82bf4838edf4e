/**
 * A transport: one connection to an edge, over a WebSocket
 * (websocket.ts) or the HTTP fallback (sse.ts: an event stream down,
 * POSTs up). connection.ts dials one per attempt and sees only this
 * interface: the rest of the client does not know which it has.
 */
import type { Envelope } from "./envelope.js";
import type { Frame } from "./wire.js";

/** The transports, in the order options.transports lists them. */
export type TransportName = "websocket" | "sse";

/** What a transport tells its connection; each at most once per event, none after close. */
export interface TransportEvents {
  /** The handshake is done: frames may be sent. The edge's `$connected` follows. */
  open(): void;
  /** One envelope from the edge. */
  frame(env: Envelope): void;
  /** A frame that could not be decoded (a payload without a schema of the client's). */
  error(err: Error): void;
  /** The connection is gone (once): the close code and reason, 1006 for a failure without one. */
  close(code: number, reason: string): void;
}

export interface Transport {
  readonly name: TransportName;
  /** Open and not closing: send writes now. */
  readonly writable: boolean;
  /** Writes a frame; throws when not writable. */
  send(frame: Frame): void;
  /** Ends the connection; the close event may follow, and is to be ignored. */
  close(code?: number, reason?: string): void;
}
