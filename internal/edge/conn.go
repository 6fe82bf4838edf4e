package edge

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// frameOverhead is charged per queued frame on top of its bytes, so that a
// flood of tiny frames still hits the write-queue bound.
const frameOverhead = 64

// conn is one WebSocket connection.
//
// Its write queue is the only way data frames and pings reach the socket:
// frames are shared between connections and never modified, the queue is
// bounded in bytes, and one writer goroutine exists only while there is
// something to write.
type conn struct {
	e      *Edge
	socket *gws.Conn
	id     string
	user   string
	ctx    context.Context // ends when the connection closes
	cancel context.CancelFunc
	limit  *rate.Limiter // inbound messages; nil when unlimited
	ulimit *rate.Limiter // the user's inbound messages on this edge, shared; nil when off

	ident     atomic.Pointer[auth.Identity] // replaced by a token refresh; user never changes
	authMu    sync.Mutex
	authTimer *time.Timer // $auth.expiring, then the close at expiry
	authDone  bool        // closed: no timer again
	release   func()      // gives back the admission caps

	lastRead atomic.Int64 // unix nanos of the last frame of any kind
	lastData atomic.Int64 // unix nanos of the last data frame
	pingSent atomic.Int64 // unix nanos of the last ping queued, 0 if none

	subs [2]*nats.Subscription // <prefix>.out.conn.<id> and <prefix>.ctl.conn.<id>

	wmu         sync.Mutex
	queue       [][]byte
	pending     int // bytes in queue plus frameOverhead per frame
	writing     bool
	pingDue     bool
	closing     bool
	closeCode   envelope.CloseCode
	closeReason string
	closeTimer  *time.Timer
	dropped     atomic.Bool // the close discards queued frames

	rooms       map[string]struct{} // guarded by hub.mu
	gone        bool                // guarded by hub.mu: left every room for good
	state       json.RawMessage     // guarded by hub.mu: client-set presence state
	connectedAt int64               // Unix ms
	presenceSeq uint64              // guarded by hub.mu: orders presence updates

	rpcMu   sync.Mutex
	calls   map[string]*call // client requests in flight, by correlationId
	asks    map[string]*ask  // server-to-client requests waiting, by correlationId
	rpcGone bool             // no new call or ask once set
}

func newConn(e *Edge, socket *gws.Conn, id string, ident *auth.Identity, release func()) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{e: e, socket: socket, id: id, user: ident.User, ctx: ctx, cancel: cancel, release: release}
	c.ident.Store(ident)
	if e.cfg.RateLimit > 0 {
		c.limit = rate.NewLimiter(rate.Limit(e.cfg.RateLimit), e.cfg.RateBurst)
	}
	c.ulimit = e.userLimiter(c.user)
	now := time.Now().UnixNano()
	c.connectedAt = now / 1e6
	c.lastRead.Store(now)
	c.lastData.Store(now)
	return c
}

// register subscribes the connection's subjects and makes it visible. The
// subscriptions go out before any message of the client's can, so a reply
// addressed to the connection always finds it. The two subjects are exact:
// a wildcard would also match a client's own natter.in.conn.<id>.
func (c *conn) register() error {
	out, err := c.e.ns.Conn(c.id)
	if err != nil {
		return err
	}
	ctl, err := c.e.ns.Ctl(c.id)
	if err != nil {
		return err
	}
	if c.subs[0], err = c.e.nc.Subscribe(out.String(), c.onOut); err != nil {
		return err
	}
	if c.subs[1], err = c.e.nc.Subscribe(ctl.String(), c.control); err != nil {
		_ = c.subs[0].Unsubscribe()
		return err
	}
	if c.user != "" {
		if err := c.e.hub.addUser(c); err != nil {
			c.unsubscribe()
			return err
		}
	}
	c.e.conns.add(c)
	c.e.stats.connections.Add(1)
	c.e.stats.accepted.Add(1)
	if c.e.presence != nil {
		c.e.presence.Set(presence.Entry{Conn: c.id, User: c.user, ConnectedAt: c.connectedAt})
	}
	return nil
}

func (c *conn) unsubscribe() {
	for _, s := range c.subs {
		if s != nil {
			_ = s.Unsubscribe()
		}
	}
}

// unregister undoes register and leaves every room. Called once, from OnClose.
func (c *conn) unregister() {
	c.cancel()
	c.stopAuth()
	c.release()
	c.unsubscribe()
	c.e.rpc.dropConn(c)
	c.e.hub.leaveAll(c)
	if c.user != "" {
		c.e.hub.removeUser(c)
	}
	if c.e.presence != nil {
		c.e.presence.Remove(c.id)
	}
	c.e.conns.remove(c)
	c.e.stats.connections.Add(-1)
	c.wmu.Lock()
	c.closing = true
	c.queue = nil
	c.pending = 0
	if c.closeTimer != nil {
		c.closeTimer.Stop()
	}
	c.wmu.Unlock()
}

// send queues one encoded frame. It never blocks: a connection whose queue
// would pass Config.WriteQueueBytes is closed as a slow consumer instead. A
// frame always fits an empty queue, so no valid frame by itself closes a
// client that keeps up.
func (c *conn) send(frame []byte) {
	c.wmu.Lock()
	if c.closing {
		c.wmu.Unlock()
		return
	}
	n := len(frame) + frameOverhead
	if c.pending > 0 && c.pending+n > c.e.cfg.WriteQueueBytes {
		c.wmu.Unlock()
		c.e.stats.slow.Add(1)
		c.e.cfg.Logger.Debug("edge: slow consumer", "conn", c.id, "pending", c.pending)
		c.closeWith(envelope.CloseSlowConsumer, "slow consumer", true)
		return
	}
	c.queue = append(c.queue, frame)
	c.pending += n
	c.startWriterLocked()
	c.wmu.Unlock()
}

// ping asks the writer to send a ping frame after the frames queued now.
func (c *conn) ping(now int64) {
	c.wmu.Lock()
	if !c.closing {
		c.pingDue = true
		c.pingSent.Store(now)
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
	if c.closing {
		return
	}
	c.closing = true
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
	c.closeTimer = time.AfterFunc(c.e.cfg.WriteTimeout+time.Second, func() { _ = c.socket.NetConn().Close() })
}

func (c *conn) startWriterLocked() {
	if c.writing {
		return
	}
	c.writing = true
	c.e.wg.Add(1)
	go c.writeLoop()
}

// writeLoop drains the queue and exits when it is empty. Frames are written
// in order, each with its own write deadline; a ping goes out after the
// frames queued before it, and a close after them too, unless the close
// dropped them. The deadline is cleared when the writer goes idle, so that
// pongs and gws's own close frames are not failed by a stale one.
func (c *conn) writeLoop() {
	defer c.e.wg.Done()
	var batch [][]byte
	for {
		c.wmu.Lock()
		batch, c.queue = c.queue, batch[:0]
		ping := c.pingDue
		c.pingDue = false
		closing, code, reason := c.closing, c.closeCode, c.closeReason
		if len(batch) == 0 && !ping && !closing {
			c.writing = false
			c.wmu.Unlock()
			_ = c.socket.SetWriteDeadline(time.Time{})
			return
		}
		c.wmu.Unlock()

		written := 0
		for i, f := range batch {
			if c.dropped.Load() {
				break
			}
			_ = c.socket.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			if err := c.socket.WriteMessage(gws.OpcodeText, f); err != nil {
				c.abandon()
				return
			}
			batch[i] = nil
			written += len(f) + frameOverhead
			c.e.stats.framesOut.Add(1)
			c.e.stats.bytesOut.Add(int64(len(f)))
		}
		clear(batch)
		if written > 0 {
			c.wmu.Lock()
			c.pending = max(c.pending-written, 0)
			c.wmu.Unlock()
		}
		if ping {
			_ = c.socket.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			if err := c.socket.WritePing(nil); err != nil {
				c.abandon()
				return
			}
		}
		if closing && (len(batch) == 0 || c.dropped.Load()) {
			_ = c.socket.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			_ = c.socket.WriteClose(uint16(code), []byte(reason))
			c.abandon()
			return
		}
	}
}

// abandon ends the writer for good after a failed write or a close.
func (c *conn) abandon() {
	c.wmu.Lock()
	c.closing = true
	c.queue = nil
	c.pending = 0
	c.writing = true // no writer will start again
	c.wmu.Unlock()
	_ = c.socket.NetConn().Close()
}
