// Package edge is Natter's edge server: it holds WebSocket connections and
// bridges them to NATS (DESIGN.md, docs/protocol.md). An Edge is an
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
//	handshake.go       RFC 6455 checks before gws sees a handshake, the upgrade, refusal reasons
//	wire.go            wireConn, the socket under gws: frame header checks, the size limit,
//	                   the lingering close
//	conn.go            conn: one connection's state, its bounded write queue, its close,
//	                   connection ids and the edge's two per-connection wildcards, control messages
//	welcome.go         $connected, every connection's first frame
//	metrics.go         the Prometheus collector of Stats
//
// Inbound, client to NATS:
//
//	handler.go         gws's callbacks and a client frame's way in: rate limits, decoding, the
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
//	deliver.go         a message from NATS to local sockets: checked and encoded once, fanned out
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
// # Goroutines
//
// Every goroutine has an owner that stops it and waits for it; Shutdown
// stops them all, and waits for them, in order.
//
//	per connection     its read loop, for its life; a writeLoop only while its socket is full
//	                   or it closes; runControl only while control messages wait; timers
//	                   (RPC deadlines, token expiry, the close deadline) instead of goroutines
//	per handshake      net/http's goroutine runs ServeHTTP (Shutdown waits for it)
//	per edge           the ticker; GOMAXPROCS writer shards; GOMAXPROCS dispatcher shards and
//	                   the router; nats.go's goroutine for each callback subscription (the
//	                   everyone subject, the RPC inbox); a short one per new group that confirms
//	                   its subscription; presence's own (internal/presencekv); with durable
//	                   rooms the capture lease holder; with durable types the waits for the
//	                   work stream's acknowledgements (work.spawn)
//
// Nothing per idle connection runs on a timer: the ticker scans all of them.
//
// # Locks
//
// Lock order: hub.mu, then group.mu, then conn.wmu, then a writer shard's
// mu; conn.authMu before conn.wmu (expiry sends and closes); call.mu before
// conn.rpcMu and conn.wmu (a reply is sent under it); adm.mu before the
// presence mirror's lock (per-user caps read it). conn.ctlMu and
// conn.rpcMu take no other lock. No lock is held across a NATS round trip
// or a socket write that can block.
package edge
