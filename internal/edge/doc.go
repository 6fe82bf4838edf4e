// Package edge is Natter's edge server: it holds WebSocket connections and
// bridges them to NATS (docs/protocol.md). An Edge is an
// http.Handler for its upgrade path: New builds one from a Config
// (DefaultConfig is the production default), Drain refuses new
// handshakes, Shutdown closes every socket with 4000 and stops. It needs a
// NATS connection it does not own; the process around it (embedded
// nats-server, auth from flags, the built-in handlers, the demo page, the
// admin listener, the HTTP server) is internal/app.
//
// # Files
//
// Set-up, admission and the connection:
//
//	config.go          Config and its groups, DefaultConfig (the one source of defaults), validation
//	edge.go            Edge, New, ServeHTTP (the handshake path), Drain, Shutdown, the ticker
//	                   (pings, dead and idle peers), Stats, the registry of connections
//	admit.go           admission: handshake rate and connection caps per IP and user,
//	                   authentication, join authorization, token refresh and expiry
//	handshake.go       RFC 6455 checks before gws sees a handshake, the upgrade, the subprotocol
//	                   (natter: JSON text frames; natter.protobuf: binary frames), refusal reasons
//	fallback.go        the fallback transports: <path>/sse, a connection whose socket is a
//	                   Server-Sent Events stream (sseSocket), and <path>/send, its POSTs, acted
//	                   on here or forwarded over NATS to the edge that holds the session
//	wire.go            wireConn, the socket under gws: frame header checks, the size limit,
//	                   the lingering close
//	conn.go            conn: one connection's state, its bounded write queue, its close,
//	                   connection ids and the edge's two per-connection wildcards, control messages
//	welcome.go         $connected, every connection's first frame
//	metrics.go         the Prometheus collector of Stats
//
// Inbound, client to NATS:
//
//	handler.go         gws's callbacks and a client frame's way in (a natter.protobuf frame is
//	                   converted to its JSON envelope first, pkg/wire): rate limits, decoding, the
//	                   system types ($join, $leave, $presence, ...), forward to <prefix>.in.<type>
//	validate.go        payload schemas, in both directions
//	rpc.go             client requests (one inbox subscription for all), and requests
//	                   from services to a client (asks)
//	work.go            durable message types: client messages stored in the work-queue stream
//
// Outbound, NATS to client:
//
//	dispatch.go        the dispatcher: the edge's subscriptions' messages on a few goroutines
//	                   (shards), by room or user, or by connection id through the router
//	hub.go             rooms and users with local members: one subscription each, join, leave
//	deliver.go         a message from NATS to local sockets: checked and encoded once per wire
//	                   (outFrame: the text frame, the binary one on first need), fanned out
//	                   to a room, a user, every connection or one; control operations
//	writer.go          the write path: writer pool shards write queued frames without blocking
//	writev_*.go        the non-blocking writev (Linux) and its stand-in elsewhere
//
// Durable rooms (durable.go has their story): durable_stream.go,
// durable_capture.go, durable_live.go, durable_join.go, durable_history.go.
// Presence lives in internal/presencekv; the edge starts it and feeds it.
//
// # A frame's way in
//
// The connection's read loop goroutine (ServeHTTP starts it once the
// connection is registered) reads the socket through wireConn, which
// checks every frame header and the size limit before gws parses it. gws
// calls handler.OnMessage: UTF-8, the connection's and the user's rate
// limits, then conn.handle decodes the envelope. System types are acted on
// there (hub, admission, presence, durable rooms); anything else is checked
// against its schema and forward publishes it to <prefix>.in.<type> with the
// connection's identity in headers, or starts an RPC (rpc.go: the reply comes
// back on the edge's inbox), or stores it in the work stream (work.go).
// Only the read loop reads a socket. Publishing never waits, but a $join
// (its subscription confirmed, the join authorizer, a durable room's
// replay), $history and a token refresh wait on the read loop for NATS:
// they hold back that connection's next frames, and only its.
//
// A fallback connection has no read loop: the lines of a POST (fallback.go)
// go the same way from conn.admit and conn.handle, one POST at a time per
// session (httpSession.mu, held while they are handled, NATS waits
// included: a second POST meanwhile gets 409), so a POST's frames are in
// order and POSTs in seq order. The joins of its ?room= run on a goroutine
// of their own, concurrently with its first POSTs, as a service's control
// joins do.
//
// # A frame's way out
//
// A message on a room's or user's subject (one subscription per group with
// local members, hub.go) reaches a dispatcher shard goroutine, which runs
// deliverGroup: outbound decodes and checks the envelope once and encodes its
// frame once, and each member's conn.sendFrame queues that same frame. A
// message to one connection comes through the edge's wildcard
// <prefix>.out.conn.<edge>.*, the router and the shard of its connection id
// (onConnOut); to every connection, through <prefix>.out.all (deliverAll).
// Queuing never blocks: a connection whose queue passes
// WebSocketConfig.WriteQueueBytes is closed with 4001. Queuing schedules
// the connection on its writer pool shard, which writes the queue with a
// non-blocking writev; what a full socket does not take, and a close, go to
// the connection's own writeLoop goroutine until done.
//
// # Goroutines and lifecycle
//
// Every goroutine has an owner that stops it and waits for it, and there
// is one idiom for that: a routine.Group (internal/routine), after
// nats-server's startGoRoutine. Go starts a goroutine unless the group was
// stopped (then it reports false and the caller undoes what it prepared),
// Stop ends the context the goroutines get and refuses new ones, and Wait
// waits for every Go that was accepted. Nothing polls with sleep: waits
// are on channels and timers tied to the event.
//
//	Edge.handshakes    ServeHTTP runs in it (Do, on net/http's goroutine): Shutdown stops it
//	                   first, so no handshake starts after, and waits for those in progress.
//	                   A fallback stream's request stays in it for the stream's life: that
//	                   goroutine is the stream's writer (it runs writeLoop when c.wake
//	                   says so, instead of the writer pool), until the close event or
//	                   the client's going; POSTs run in it too
//	Edge.routines      the ticker; a forwarded POST's frames (one per session at a time);
//	                   a fallback stream's ?room= joins; per connection its read loop, for its life, a writeLoop
//	                   only while its socket is full or it closes, runControl only while
//	                   control messages wait; a short one per new group that confirms its
//	                   subscription
//	writerPool         GOMAXPROCS writer shards
//	dispatcher         GOMAXPROCS shards and the router
//	durable.leader     with durable rooms, the capture lease holder (lead)
//	work.bg            with durable types, the waits for the work stream's acknowledgements
//	                   and its re-creation (work.spawn)
//	presencekv         its own two groups: watcher, event publisher and diff flusher; keeper
//
// One goroutine is not in a group: the teardown, which the first Shutdown
// starts (the groups are what it stops) and which closes Edge.stopped when
// done; every Shutdown call waits on that channel.
//
// nats.go runs a goroutine for each callback subscription (the everyone
// subject, the RPC inbox, presence queries, capture, the forwarded fallback
// POSTs of <prefix>.http.<edge>); Shutdown unsubscribes them. Timers (RPC deadlines, token expiry, the close
// deadline) stand in for goroutines per connection, and nothing per idle
// connection runs on a timer: the ticker scans all of them.
//
// A connection's life is one atomic state, conn.phase: open, then closing
// (closeWith decided a close, or the socket closed under the writer), then
// closed (unregister: the read loop ended and the connection left the
// edge). It only moves forward, and only under conn.wmu, so the write
// queue always agrees with it; it is read without a lock. Every "is it
// ending" question derives from it: the handler drops frames once it is
// closing, sendFrame and ping queue nothing, and joins, calls, asks and
// expiry timers refuse once it is closed, each under its own lock (hub.mu,
// rpcMu, authMu), which unregister's clean-up takes after the phase
// changed. conn.ctx ends at closed, and only then. The socket's own close
// (close frame written, lingering, closed for good) is wireConn's.
//
// Shutdown runs once (a sync.Once starts the teardown; every call,
// concurrent or later, waits for it or for its own ctx), in the order of
// a lame-duck stop: Drain (called by the process when readiness fails)
// refuses new handshakes with 503; Shutdown stops handshakes, closes every
// socket with 4000 spread over ShutdownSpread, waits for the handshakes
// in progress and for the registry to empty, stops Edge.routines (the
// ticker ends; nothing starts from then on), unsubscribes, waits for
// Edge.routines (the read loops, whose unregister still writes to
// presence and the rooms), stops durable rooms (the lease goes to another
// edge), durable messages and presence, and closes the dispatcher and the
// writer pool.
// When a caller's ctx ends first, the lingering closes end and the
// sockets close at once (Edge.gaveUp), and the teardown goes on.
//
// # Locks
//
// Lock order: hub.mu, then group.mu, then conn.wmu, then a writer shard's
// mu; a registry shard's mu before conn.wmu (the ticker closes and pings
// under it); conn.authMu before conn.wmu (expiry sends and closes);
// call.mu before conn.rpcMu and conn.wmu (a reply is sent under it);
// adm.mu before the presence mirror's lock (per-user caps read it).
// conn.ctlMu and conn.rpcMu take no other lock; a routine.Group's lock is
// taken last and held for no call out. No lock is held across a NATS
// round trip or a socket write that can block, with two exceptions that
// each stand for a single reader or writer: a fallback session's
// httpSession.mu, held for one POST's frames as the read loop would be
// busy with them (it comes before every other lock), and sseSocket.mu,
// held by the stream's writer across its write (taken last).
package edge
