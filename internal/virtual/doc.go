// Package virtual holds VIRTUAL connections on an edge, for load tests:
// WebSocket connections that go through the edge's real code path (the
// handshake in Edge.ServeHTTP, the hijack, the edge's wire checks, gws,
// registration, presence, room joins, routing, pings, shutdown) with an
// in-memory socket in place of TCP. They let one machine hold more
// presence-tracked connections than its open-file limit allows real
// sockets (docs/scale.md), and they are labelled as what they are: the
// edge logs a WARN when it starts them and when it holds them, and
// /metrics shows natter_virtual_connections next to natter_edge_connections,
// which counts them too.
//
// Each connection's client side is a sink: the net.Conn the edge hijacks.
// Its reads return the client's bytes: first its $join (a masked text
// frame), then the pongs answering the edge's pings, then its close reply;
// in between they block, like a socket's, honouring read deadlines. Its
// writes are the edge's frames: parsed, counted (Stats) and dropped. The
// sink answers a ping with a pong, so that idle virtual connections are
// not closed as dead peers, and a close frame with the client's close
// reply and end of stream. Churn closes a connection as a browser does:
// a close frame (1001), then the edge's answer, then end of stream.
//
// What differs from TCP, and is not measured with virtual connections:
// the kernel's socket memory and work (buffers, the TCP state, the file
// descriptor, epoll), the client's side on another machine (here the sink
// lives in the edge's process: a few hundred bytes each, in its RSS), and
// the edge's writer pool: a sink has no file descriptor, so the edge
// writes to it through each connection's own writer goroutine (its
// fallback for sockets without one) rather than one non-blocking writev.
// Idle figures are unaffected; delivery figures are not comparable with
// those over TCP.
//
// Connection i (counting from Config.First) is user virtual-<i mod
// Users>, joins room virtual-<i mod Rooms> and comes from one address of
// 198.18.0.0/15, so per-IP limits see distinct clients. Users come from
// the edge's dev-mode query parameter (?user=): the edge must run in dev
// mode.
//
// Concurrency: Start runs one opener goroutine (with Config.Workers
// handshakes at a time) and, with churn, Config.Workers churn goroutines;
// Stop ends and waits for them. The connections' own goroutines are the
// edge's (its read loops and writers): the edge's Shutdown closes the
// connections and waits for them. Stats and the metrics read atomics.
package virtual
