package edge

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/wire"
)

// frameOverhead is charged per queued frame on top of its bytes, so that a
// flood of tiny frames still hits the write-queue bound.
const frameOverhead = 64

// conn is one WebSocket connection.
//
// Its write queue is the only way data frames, pings and pongs reach the
// socket: frames are shared between connections and never modified, and
// the queue is bounded in bytes. writer.go writes it.
//
// Its life is one state, phase (open, closing, closed; see connPhase):
// every "is it ending" question reads it, whatever lock the asker holds.
type conn struct {
	e      *Edge
	socket *gws.Conn // nil on a fallback stream
	wire   *wireConn // the socket under gws: frame checks and the lingering close; nil on a fallback stream
	// transport is how the client reached the edge; session is set on
	// fallback streams only (fallback.go).
	transport transport
	session   *httpSession
	// wake, on a fallback stream, wakes its writer: the goroutine serving
	// the stream's request runs writeLoop (fallback.go).
	wake chan struct{}
	id   string
	user string
	// protobuf: the connection speaks natter.protobuf, binary frames of
	// natter.v1.Envelope; otherwise JSON text frames.
	protobuf bool
	// phase is the connection's state, a connPhase. It is read without a
	// lock and only moves forward, under wmu, so that the write queue
	// always agrees with it: closeWith and stopWriting make it closing,
	// unregister (finish) closed.
	phase atomic.Int32
	// ctx ends when the phase becomes closed, and only then: the
	// connection's done signal, for the calls it makes (authorizers).
	ctx    context.Context
	cancel context.CancelFunc
	limit  *rate.Limiter // inbound messages; nil when unlimited
	ulimit *rate.Limiter // the user's inbound messages on this edge, shared; nil when off

	ident     atomic.Pointer[auth.Identity] // replaced by a token refresh; user never changes
	authMu    sync.Mutex
	authTimer *time.Timer // $auth.expiring, then the close at expiry; none once closed
	release   func()      // gives back the admission caps

	lastRead atomic.Int64 // unix nanos of the last frame of any kind
	lastData atomic.Int64 // unix nanos of the last data frame
	pingSent atomic.Int64 // unix nanos of the last ping queued, 0 if none

	sock   socket // the socket as the write path sees it (writer.go)
	direct bool   // sock takes writes that never block (writeNow); false: writeLoop writes
	shard  int    // the writer pool shard

	wmu         sync.Mutex
	queue       [][]byte // complete WebSocket frames, shared and never modified
	pending     int      // bytes in queue plus frameOverhead per frame
	writing     bool     // a pool worker or writeLoop owns the socket's writes
	tail        []byte   // the unwritten rest of a partly written frame; goes first, even past a drop
	pingDue     bool
	roomFreed   chan struct{} // closed when pending falls to half its bound, or the phase leaves open (waitRoom)
	closeCode   envelope.CloseCode
	closeReason string
	closeTimer  *time.Timer
	dropped     atomic.Bool // how the connection closes: the close discards queued frames

	rooms       roomSet         // guarded by hub.mu
	state       json.RawMessage // guarded by hub.mu: client-set presence state
	connectedAt int64           // Unix ms
	presenceSeq uint64          // guarded by hub.mu: orders presence updates

	workPending atomic.Int32 // durable messages waiting for the work stream

	ctlMu      sync.Mutex
	ctlQueue   []*nats.Msg // control messages waiting, in order
	ctlRunning bool        // a goroutine is working through ctlQueue

	rpcMu sync.Mutex
	calls map[string]*call // client requests in flight, by correlationId
	asks  map[string]*ask  // server-to-client requests waiting, by correlationId; none once closed
}

// connPhase is where a connection is in its life. It only moves forward:
// open, closing, closed.
type connPhase int32

const (
	// phaseOpen: frames flow both ways.
	phaseOpen connPhase = iota
	// phaseClosing: the edge decided to close the connection (closeWith),
	// or its socket closed under the writer (stopWriting). Nothing new is
	// queued and client frames are not acted on; the writer finishes with
	// the close frame and the socket lingers.
	phaseClosing
	// phaseClosed: the socket's read loop ended and the connection left
	// the edge (unregister): its rooms, user, presence, calls and timers
	// are gone, nothing is written, and ctx has ended. Joins, calls, asks
	// and expiry timers check for it under their own locks, after which
	// unregister's clean-up, which takes those locks, finds them.
	phaseClosed
)

func (c *conn) phaseNow() connPhase { return connPhase(c.phase.Load()) }

// isClosing reports whether the connection is closing or closed: frames
// that still arrive are not acted on, and nothing new is queued.
func (c *conn) isClosing() bool { return c.phaseNow() != phaseOpen }

// isClosed reports whether the connection has left the edge.
func (c *conn) isClosed() bool { return c.phaseNow() == phaseClosed }

// closingLocked moves an open connection to closing and reports whether
// this call did; c.wmu is held.
func (c *conn) closingLocked() bool {
	if !c.phase.CompareAndSwap(int32(phaseOpen), int32(phaseClosing)) {
		return false
	}
	c.freeRoomLocked()
	return true
}

// finish moves the connection to closed and reports whether this call
// did (only the first acts): the queue goes, the close timer stops, and
// ctx ends.
func (c *conn) finish() bool {
	c.wmu.Lock()
	if c.phaseNow() == phaseClosed {
		c.wmu.Unlock()
		return false
	}
	c.phase.Store(int32(phaseClosed))
	c.queue = nil
	c.pending = 0
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.freeRoomLocked()
	c.wmu.Unlock()
	c.cancel()
	return true
}

// newConn makes a connection of one of the edge's transports: a WebSocket
// (newWSConn) or a fallback stream (fallback.go). The caller gives it its
// socket before it registers.
func newConn(e *Edge, tr transport, id string, ident *auth.Identity, release func()) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{e: e, transport: tr, protobuf: tr == transportProtobuf, id: id, user: ident.User, ctx: ctx, cancel: cancel, release: release}
	c.ident.Store(ident)
	c.shard = int(e.nextShard.Add(1) % uint32(len(e.writers.shards)))
	if e.cfg.Limits.MessageRate > 0 {
		c.limit = rate.NewLimiter(rate.Limit(e.cfg.Limits.MessageRate), e.cfg.Limits.MessageBurst)
	}
	c.ulimit = e.userLimiter(c.user)
	now := time.Now().UnixNano()
	c.connectedAt = now / 1e6
	c.lastRead.Store(now)
	c.lastData.Store(now)
	return c
}

// newWSConn makes a WebSocket connection on socket, whose wire is wire.
func newWSConn(e *Edge, socket *gws.Conn, wire *wireConn, binary bool, id string, ident *auth.Identity, release func()) *conn {
	tr := transportWebSocket
	if binary {
		tr = transportProtobuf
	}
	c := newConn(e, tr, id, ident, release)
	c.socket, c.wire = socket, wire
	wire.violation = func(code envelope.CloseCode, reason string) { c.closeWith(code, reason, true) }
	wire.onClose = c.stopWriting
	ws := &wireSocket{ws: socket, wire: wire, compress: e.cfg.WebSocket.Compression}
	if sc, ok := wire.Conn.(syscall.Conn); ok && nonblockingWrites && !e.cfg.WebSocket.Compression {
		ws.raw, _ = sc.SyscallConn()
	}
	c.sock, c.direct = ws, ws.raw != nil
	return c
}

// connIDs gives out the edge's connection ids, <edge>.<n> (see
// envelope.ValidateConnID). n counts up in base 36 from a random start
// drawn when the edge starts: unique for the edge's life by construction,
// and, with 64 random bits, not given out again by a later edge with the
// same configured id (a restarted pod), so a service holding an old id
// never reaches someone else's connection. Ids are not secrets (room
// members see each other's in presence, and the next id is this one plus
// one): what may address a connection is decided by NATS permissions on
// natter.out.> and natter.ctl.conn.>, which clients never hold.
type connIDs struct {
	prefix string // "<edge>."
	n      atomic.Uint64
}

func (g *connIDs) init(edge string) {
	g.prefix = edge + "."
	g.n.Store(rand.Uint64())
}

func (g *connIDs) next() string {
	return g.prefix + strconv.FormatUint(g.n.Add(1), 36)
}

// subscribeConns subscribes the edge's two wildcards for all its
// connections, <prefix>.out.conn.<edge>.* and <prefix>.ctl.conn.<edge>.*:
// one subscription each for the edge, none per connection. The dispatcher
// runs each message on its connection id's shard; the registry finds the
// connection.
func (e *Edge) subscribeConns() error {
	out, err := e.ns.ConnAll(e.cfg.EdgeID)
	if err != nil {
		return err
	}
	ctl, err := e.ns.CtlAll(e.cfg.EdgeID)
	if err != nil {
		return err
	}
	// A connection id is the subject's last two tokens: <edge>.<n>.
	at := len(out) - len(e.cfg.EdgeID) - len(".*")
	if e.connSubs[0], err = e.disp.subscribeByID(e.nc, out.String(), at, e.onConnOut); err != nil {
		return err
	}
	at = len(ctl) - len(e.cfg.EdgeID) - len(".*")
	if e.connSubs[1], err = e.disp.subscribeByID(e.nc, ctl.String(), at, e.onConnCtl); err != nil {
		e.disp.unsubscribe(e.connSubs[0])
		return err
	}
	return nil
}

// onConnOut delivers a message on <prefix>.out.conn.<id> to connection id.
// One that is not (or no longer) on this edge drops it; a request gets
// RPC_ERROR UNAVAILABLE at once, as NATS's "no responders" once did when
// every connection had its own subscription, so that rpc.Ask fails fast.
func (e *Edge) onConnOut(id string, msg *nats.Msg) {
	if c := e.conns.get(id); c != nil {
		c.onOut(msg)
		return
	}
	if msg.Reply != "" {
		_ = msg.Respond(envelope.RPCErrorFrame("", envelope.CodeUnavailable, "no such connection"))
	}
}

// onConnCtl passes a message on <prefix>.ctl.conn.<id> to connection id.
// For one that is not (or no longer) on this edge, a request gets
// NOT_FOUND at once.
func (e *Edge) onConnCtl(id string, msg *nats.Msg) {
	if c := e.conns.get(id); c != nil {
		c.onCtl(msg)
		return
	}
	replyControl(msg, &rpc.Error{Code: envelope.CodeNotFound, Message: "no such connection"})
}

// register makes the connection visible: to the edge's two subscriptions
// for all its connections (subscribeConns), which find it by its id, and
// to its user's subscription. It needs no subscription of its own. It runs
// before the read loop starts, so a reply addressed to the connection
// always finds it.
func (c *conn) register() (err error) {
	// $connected goes first, before any subscription can deliver a frame,
	// and out only once the connection can be found: registration owns
	// the writes until then, so that a service that answers $connected
	// at once (rpc.Ask) reaches the connection.
	c.wmu.Lock()
	c.writing = true
	c.wmu.Unlock()
	defer func() {
		if err != nil {
			return // the caller closes the socket itself; nothing is written
		}
		c.wmu.Lock()
		c.writing = false
		if len(c.queue) > 0 || c.pingDue || c.isClosing() {
			c.startWriterLocked()
		}
		c.wmu.Unlock()
	}()
	c.sendWelcome()
	if c.user != "" {
		if err := c.e.hub.addUser(c); err != nil {
			return err
		}
	}
	c.e.conns.add(c)
	c.e.stats.connections.Add(1)
	c.e.stats.accepted.Add(1)
	c.e.stats.transports[c.transport].open.Add(1)
	c.e.stats.transports[c.transport].accepted.Add(1)
	if c.e.presence != nil {
		c.e.presence.Set(presence.Entry{Conn: c.id, User: c.user, ConnectedAt: c.connectedAt})
	}
	return nil
}

// unregister makes the connection closed, undoes register and leaves
// every room. Called from OnClose, after a panic in the read loop, or when
// the edge stopped before its read loop could start; only the first call
// acts.
func (c *conn) unregister() {
	if !c.finish() {
		return
	}
	c.stopAuth()
	c.release()
	c.e.rpc.dropConn(c)
	c.e.hub.leaveAll(c)
	if c.e.streams != nil {
		c.e.streams.dropConn(c)
	}
	if c.user != "" {
		c.e.hub.removeUser(c)
	}
	if c.e.presence != nil {
		c.e.presence.Remove(c.id)
	}
	c.e.conns.remove(c)
	c.e.stats.connections.Add(-1)
	c.e.stats.transports[c.transport].open.Add(-1)
}

// send queues one JSON envelope for this connection alone, as a text
// frame, or converted to a binary one on natter.protobuf.
func (c *conn) send(env []byte) {
	if frame, ok := c.frameOf(env); ok {
		c.sendFrame(frame)
	}
}

// offer is send for a frame that may wait: when it does not fit the
// write queue now, offer reports false and the connection stays open
// (response streams send it later, with what came meanwhile).
func (c *conn) offer(env []byte) bool {
	frame, ok := c.frameOf(env)
	return !ok || c.queueFrame(frame, false)
}

func (c *conn) frameOf(env []byte) ([]byte, bool) {
	if !c.protobuf {
		return wsFrame(opText, env), true
	}
	b, err := c.e.codec.JSONToProto(wire.Server, env, len(env))
	if err != nil {
		c.e.cfg.Logger.Error("edge: an envelope of the edge's does not convert to protobuf", "err", err)
		return nil, false
	}
	return wsFrame(opBinary, b), true
}

// sendFrame queues one complete frame (see wsFrame), which may be shared
// with other connections. It never blocks: a connection whose queue would
// pass Config.WebSocket.WriteQueueBytes is closed as a slow consumer instead. A frame
// always fits an empty queue, so no valid frame by itself closes a client
// that keeps up.
func (c *conn) sendFrame(frame []byte) { c.queueFrame(frame, true) }

// queueFrame queues frame, or, when it would pass the bound, closes the
// connection as a slow consumer (slowClose) or leaves it be; it reports
// whether frame was queued (true on a closing connection: nothing will be).
func (c *conn) queueFrame(frame []byte, slowClose bool) bool {
	c.wmu.Lock()
	if c.isClosing() {
		c.wmu.Unlock()
		return true
	}
	n := len(frame) + frameOverhead
	if c.pending > 0 && c.pending+n > c.e.cfg.WebSocket.WriteQueueBytes {
		c.wmu.Unlock()
		if !slowClose {
			return false
		}
		c.e.stats.slow.Add(1)
		c.e.cfg.Logger.Debug("edge: slow consumer", "conn", c.id, "pending", c.pending)
		c.closeWith(envelope.CloseSlowConsumer, "slow consumer", true)
		return false
	}
	c.queue = append(c.queue, frame)
	c.pending += n
	c.startWriterLocked()
	c.wmu.Unlock()
	return true
}

// waitRoom waits until the connection's queue is below half its bound, so
// that a replay of many messages is paced by the client instead of closing
// it as a slow consumer. It reports false once the connection closes or
// ctx ends. The writer wakes it (freeRoomLocked) when it has written
// enough.
func (c *conn) waitRoom(ctx context.Context) bool {
	for {
		c.wmu.Lock()
		if c.isClosing() {
			c.wmu.Unlock()
			return false
		}
		if c.pending <= c.e.cfg.WebSocket.WriteQueueBytes/2 {
			c.wmu.Unlock()
			return true
		}
		if c.roomFreed == nil {
			c.roomFreed = make(chan struct{})
		}
		freed := c.roomFreed
		c.wmu.Unlock()
		select {
		case <-ctx.Done():
			return false
		case <-freed:
		}
	}
}

// freeRoomLocked wakes a waitRoom once the queue is down to half its
// bound or the connection is no longer open; c.wmu is held.
func (c *conn) freeRoomLocked() {
	if c.roomFreed != nil && (c.pending <= c.e.cfg.WebSocket.WriteQueueBytes/2 || c.isClosing()) {
		close(c.roomFreed)
		c.roomFreed = nil
	}
}

// ping asks the writer to send a ping frame after the frames queued now.
// A fallback stream's ping is an SSE comment that nothing answers: its
// peer counts as alive while the stream takes writes.
func (c *conn) ping(now int64) {
	c.wmu.Lock()
	if !c.isClosing() {
		c.pingDue = true
		c.pingSent.Store(now)
		if c.session != nil {
			c.lastRead.Store(now)
		}
		c.startWriterLocked()
	}
	c.wmu.Unlock()
}

// closeWith closes the connection with code. With drop, frames still queued
// are discarded (slow or dead peers); otherwise they are written first. It
// is idempotent: the first code wins.
func (c *conn) closeWith(code envelope.CloseCode, reason string, drop bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.closingLocked() {
		return
	}
	c.closeCode = code
	c.closeReason = reason
	if drop {
		c.dropped.Store(true)
		c.queue = nil
		c.pending = 0
	}
	c.startWriterLocked()
	// Whatever the writer does, the socket is gone after one write timeout
	// more; unregister stops the timer once it is.
	c.closeTimer = time.AfterFunc(c.e.cfg.WebSocket.WriteTimeout+time.Second, c.sock.abort)
}

// startWriterLocked schedules the connection on its writer shard unless a
// writer owns it already; c.wmu must be held. A fallback stream has a
// goroutine of its own that writes (the one serving its request): it is
// woken instead.
func (c *conn) startWriterLocked() {
	if c.writing {
		return
	}
	c.writing = true
	if c.wake != nil {
		select {
		case c.wake <- struct{}{}:
		default: // woken already: it will find this
		}
		return
	}
	c.e.writers.schedule(c)
}

// maxCtlQueue bounds the control messages waiting for one connection.
const maxCtlQueue = 256

// onCtl queues a control message from a worker or service. Control can
// wait (a join confirms its subscription, a join as the client may ask the
// authorizer), so it runs on a goroutine of the connection's own, which
// exists only while messages wait, and never on the dispatcher.
func (c *conn) onCtl(msg *nats.Msg) {
	c.ctlMu.Lock()
	if len(c.ctlQueue) >= maxCtlQueue {
		c.ctlMu.Unlock()
		if c.e.logLimit.Allow() {
			c.e.cfg.Logger.Warn("edge: control queue full, refused", "conn", c.id, "reply", msg.Reply != "")
		}
		replyControl(msg, &rpc.Error{Code: envelope.CodeResourceExhausted, Message: "too many control messages waiting for this connection"})
		return
	}
	c.ctlQueue = append(c.ctlQueue, msg)
	start := !c.ctlRunning
	c.ctlRunning = true
	c.ctlMu.Unlock()
	if start && !c.e.routines.Go(func(context.Context) { c.runControl() }) {
		// The edge has stopped its goroutines: nothing will run the queue.
		c.ctlMu.Lock()
		waiting := c.ctlQueue
		c.ctlQueue = nil
		c.ctlRunning = false
		c.ctlMu.Unlock()
		for _, m := range waiting {
			replyControl(m, &rpc.Error{Code: envelope.CodeUnavailable, Message: "edge shutting down"})
		}
	}
}

func (c *conn) runControl() {
	for {
		c.ctlMu.Lock()
		if len(c.ctlQueue) == 0 {
			c.ctlQueue = nil
			c.ctlRunning = false
			c.ctlMu.Unlock()
			return
		}
		msg := c.ctlQueue[0]
		c.ctlQueue[0] = nil
		c.ctlQueue = c.ctlQueue[1:]
		c.ctlMu.Unlock()
		c.control(msg)
	}
}

// abandon ends the writer for good after a failed write: the socket
// closes at once.
func (c *conn) abandon() {
	c.stopWriting()
	if !c.sock.closed() {
		// Once the close frame is out (gws wrote it), a write that failed
		// after it must not cut the lingering short.
		c.sock.abort()
	}
}

// stopWriting ends the writer for good: after a failed write, or after
// the close frame, whose socket then lingers (wireConn.Close).
func (c *conn) stopWriting() {
	c.wmu.Lock()
	c.closingLocked()
	c.queue = nil
	c.pending = 0
	c.writing = true // no writer will start again
	c.freeRoomLocked()
	c.wmu.Unlock()
}
