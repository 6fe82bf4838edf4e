// Package client is a Go client of the Natter mesh: it holds one WebSocket
// connection to an edge, reconnects with backoff when the edge asks for it
// or the connection drops, and offers what the TypeScript client offers:
// fire-and-forget sends buffered while disconnected, handlers by message
// type, RPC with progress, deadlines and aborts, answers to server-to-client
// requests, rooms that are re-joined after a reconnect, presence queries,
// state and diffs, and token refresh.
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
// # Concurrency
//
// A Client is safe for concurrent use. Each client owns one goroutine that
// connects, restores rooms and state, and writes frames; one goroutine per
// live connection that reads; and one goroutine that runs callbacks (On,
// OnPresence, OnState) one at a time, in the order frames arrived. Handlers
// registered with Handle run on a goroutine of their own per request (at most
// MaxServerRequests at once). A callback may call any method of the client,
// including Close; a callback that blocks delays the callbacks after it, and
// once MaxInbound frames wait for it, the connection stops reading (the edge
// then closes it as a slow consumer, 4001, and the client reconnects).
//
// Every queue is bounded: sends wait in a buffer of Options.BufferSize frames
// (ErrBufferFull beyond), inbound frames in a queue of MaxInbound, and
// priority frames (aborts, answers) in a per-connection queue.
//
// Close stops the client's own goroutines and waits for them. Callbacks that
// are running when Close is called finish on their own; the Closed state is
// the last callback delivered.
package client
