/**
 * natter-client: the browser and Node client of Natter, a realtime WebSocket
 * mesh on NATS. The wire contract is docs/protocol.md of the Natter
 * repository. This module is the package's public API; the runtime lives in
 * the modules it re-exports from (see the module map in README.md), which
 * import nothing else.
 *
 * Concurrency: JavaScript is single-threaded; every method may be called at
 * any time, in any state. Socket events of a socket the client has given up
 * on are ignored (each socket has a generation number).
 */
export type { ClientMessages, ServerMessages } from "./messages.gen.js";

export { connect, type Client } from "./client.js";
export { NatterError, type BackgroundErrorInfo } from "./errors.js";
export { backoffDelay, shouldReconnect, type ReconnectOptions } from "./backoff.js";
export type { ConnectOptions, State, StateInfo, WebSocketConstructor, WebSocketLike } from "./connection.js";
export type { TransportName } from "./transport.js";
export type { Schemas } from "./wire.js";
export type {
  ClientPayload, ClientType, ConnectedPayload, Envelope, ErrorCode, ErrorPayload, JoinedPayload, Meta,
  PresenceDiff, PresenceMember, ServerPayload, ServerType, SystemServerMessages
} from "./envelope.js";
export type { BufferOptions, SendRateOptions } from "./outbox.js";
export type { AbortSignalLike, HandlerReply, RpcOptions } from "./rpc.js";
export type { JoinOptions } from "./rooms.js";
export type { PresenceApi, PresenceEntry, RoomPage, UserInfo } from "./presence.js";
export type { NatterStream, StreamChunk, StreamEnd, StreamOptions } from "./streams.js";
export type { Accepted, DurableOptions, HistoryOptions, HistoryPage, Position, RecoveryInfo } from "./durable.js";
export type { OtelApi, OtelContext, OtelSpan, OtelSpanContext, OtelTracer, OtelTracerProvider } from "./tracing.js";
