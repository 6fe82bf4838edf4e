// Package client is a Go client of the Natter mesh: it holds one WebSocket
// connection to an edge, reconnects with backoff when the edge asks for it
// or the connection drops, and offers what the TypeScript client offers:
// fire-and-forget sends buffered while disconnected, handlers by message
// type, RPC with progress, deadlines and aborts, answers to server-to-client
// requests, rooms that are re-joined after a reconnect, recovery and
// history of durable rooms, durable messages stored before they are
// acknowledged (SendDurable), presence queries, state and diffs, and token
// refresh.
//
//	c, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{Token: client.StaticToken(jwt)})
//	if err != nil { ... }
//	defer c.Close()
//	stop := c.On("chat.message", func(env *envelope.Envelope) { ... })
//	defer stop()
//	_ = c.Join(ctx, "general")
//	var out json.RawMessage
//	err = c.Call(ctx, "echo", map[string]string{"hello": "world"}, &out)
//
// The edge's first frame on every connection, $connected, tells the
// connection's id; the client is Open only once it has it. ConnID returns
// it: services reach this client at natter.out.conn.<id>.
//
// # Reconnecting
//
// The client reconnects after a close code that asks for it (4000-4099, an
// abnormal end) with backoff and full jitter (Options.Reconnect). The
// backoff starts over only after a connection that stayed open for 5 s, so
// an edge that accepts and then drops every connection still gets backed
// off. After a reconnect the client re-joins its rooms and re-sends its
// presence state before any buffered send is written. A re-join refused
// with PERMISSION_DENIED, INVALID_ARGUMENT or NOT_FOUND forgets the room;
// other failures keep it and are retried with backoff (no sooner than the
// edge's retryAfterMs). Failures are logged and handed to Options.OnError
// as *BackgroundError.
//
// The remembered rooms (Rooms) follow the last Join or Leave of each room,
// whatever order their answers come in, and also the server's own
// membership changes: a $joined or $left without a correlation id (a
// worker or service joined or removed the connection through natter.ctl)
// adds or forgets the room, unless a Join or Leave of it is in flight.
//
// # Durable rooms
//
// Rooms matching the edge's --durable-rooms patterns keep their messages,
// and every delivery carries its Position (meta.offset and meta.epoch, see
// OffsetOf). The client remembers the last position per durable room
// (Position), from deliveries and from the $joined of its joins, and
// re-joins such a room after a reconnect from there: the edge replays what
// was missed, in order and before the re-join is acknowledged, then goes on
// live without a gap or a duplicate at the seam. Options.OnRecovery then
// gets a Recovery: Recovered, or a gap (the position was older than the
// retained history, or the history was reset), after which the
// application should refetch the room's state. Join WithSince joins from a
// position saved earlier; History reads pages of a room's history.
//
//	c, err := client.Dial(ctx, url, client.Options{OnRecovery: func(r client.Recovery) {
//		if !r.Recovered {
//			reload(r.Room) // e.g. c.History(ctx, r.Room, client.HistoryQuery{Limit: 50})
//		}
//	}})
//	_ = c.Join(ctx, "orders-42")
//	pos, _ := c.Position("orders-42") // save it; later: c.Join(ctx, "orders-42", client.WithSince(pos))
//
// Writes are paced to the edge's per-connection rate limit
// (Options.SendRate, 100 messages/s by default), so that flushing the
// buffer after a reconnect is not answered with RESOURCE_EXHAUSTED.
// Options.Heartbeat sends __heartbeat for edges that run with
// --idle-timeout (WebSocket pings do not count as activity there).
//
// Tokens: Options.Token is asked before every connection. On
// $auth.expiring the client refreshes the token, retrying with backoff
// until it expires; if the edge closes with 4100 anyway, the client
// reconnects with a fresh token, once per expiry, and closes if the edge
// refuses that handshake with 401.
//
// # Binary wire
//
// Options.Wire WireProtobuf speaks the edge's binary wire (subprotocol
// natter.protobuf, docs/protocol.md "Binary wire"): one natter.v1.Envelope
// per binary frame, payloads of types with a schema as protobuf, others as
// JSON text. The application API does not change: frames are converted at
// the socket, JSON envelope to protobuf on the way out and back on the way
// in (pkg/wire), so Send, Call, On and Handle take and give the same JSON
// payloads on both wires. The schemas are the edge's .proto files:
// Options.Schemas, by default the shipped ones; LoadSchemas compiles them
// with the application's own.
//
//	types, err := client.LoadSchemas("./schemas") // the dirs given to the edge's --schemas
//	c, err := client.Dial(ctx, url, client.Options{Wire: client.WireProtobuf, Schemas: types})
//
// # Concurrency
//
// A Client is safe for concurrent use. Each client owns one goroutine that
// connects, restores rooms and state, and writes frames; one goroutine per
// live connection that reads; one goroutine that runs callbacks (On,
// OnPresence, OnState, OnError, OnRecovery) one at a time, in the order
// frames arrived; and, while needed, a goroutine that refreshes the token
// and one that retries re-joins. Handlers registered with Handle run on a
// goroutine of their own per request (at most MaxServerRequests at once).
// A callback may call any method of the client, including Close; a
// callback that blocks delays the callbacks after it, and once MaxInbound
// frames wait for it, the connection stops reading (the edge then closes
// it as a slow consumer, 4001, and the client reconnects).
//
// Every queue is bounded: sends wait in a buffer of Options.BufferSize frames
// (ErrBufferFull beyond), inbound frames in a queue of MaxInbound, and
// priority frames (aborts, answers) in a per-connection queue.
//
// Close stops the client's goroutines and waits for them, including the
// callback goroutine, which delivers the remaining state changes with
// Closed last. User code running when Close is called is not waited for
// (Close may be called from it): a callback running then finishes on its
// own, and the callback goroutine ends after it; Handle handlers running
// then have their context cancelled, and their answers are dropped.
package client
