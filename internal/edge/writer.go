package edge

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

// The delivery path, after profiling the room fan-out (docs/benchmarks.md,
// issue 8):
//
//   - A message for many local recipients is encoded once as a complete
//     WebSocket frame (header and payload, server frames are unmasked) and
//     that one immutable byte slice is queued on every recipient.
//   - A connection with frames queued is scheduled once on one of a few
//     writer goroutines (a shard per CPU), not woken or started per message.
//   - The writer takes everything queued for the connection and hands it to
//     the kernel in one writev, without blocking: a socket whose buffer is
//     full takes what fits, and the rest goes to a goroutine of the
//     connection's own that waits with the write timeout. One slow peer
//     never holds up the shard.
//
// Frames reach the socket only through this path: pings, pongs and data
// frames alike, so a partial write is always finished before anything else
// is written. The exception is gws itself answering a client's close frame
// or protocol error, which ends the connection anyway.

const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
	// maxIovecs is Linux's IOV_MAX: a writev takes at most this many frames.
	maxIovecs = 1024
)

// pingFrame is an empty ping; frames are never modified, so one serves all.
var pingFrame = wsFrame(opPing, nil)

// wsFrame returns payload as one final, unmasked server frame.
func wsFrame(op byte, payload []byte) []byte {
	n := len(payload)
	var f []byte
	switch {
	case n < 126:
		f = make([]byte, 2, 2+n)
		f[1] = byte(n)
	case n <= 0xFFFF:
		f = make([]byte, 4, 4+n)
		f[1] = 126
		binary.BigEndian.PutUint16(f[2:], uint16(n))
	default:
		f = make([]byte, 10, 10+n)
		f[1] = 127
		binary.BigEndian.PutUint64(f[2:], uint64(n))
	}
	f[0] = 0x80 | op
	return append(f, payload...)
}

// framePayload is the payload of a frame made by wsFrame.
func framePayload(f []byte) []byte {
	switch f[1] & 0x7F {
	case 126:
		return f[4:]
	case 127:
		return f[10:]
	}
	return f[2:]
}

// writerPool is the edge's writer goroutines, one shard each.
type writerPool struct {
	shards []writerShard
	stop   chan struct{}
	wg     sync.WaitGroup
}

type writerShard struct {
	mu    sync.Mutex
	ready []*conn // connections with something to write, each at most once
	wake  chan struct{}

	// The worker's own scratch state for the non-blocking writev, so that
	// the callback handed to RawConn.Write is allocated once.
	q     [][]byte
	n     int
	err   error
	write func(fd uintptr) bool

	_ [64]byte // keeps shards' locks off one cache line
}

func newWriterPool() *writerPool {
	p := &writerPool{shards: make([]writerShard, runtime.GOMAXPROCS(0)), stop: make(chan struct{})}
	for i := range p.shards {
		s := &p.shards[i]
		s.wake = make(chan struct{}, 1)
		s.write = s.writev
		p.wg.Add(1)
		go p.run(s)
	}
	return p
}

// close stops the workers; connections scheduled later are not written.
func (p *writerPool) close() {
	close(p.stop)
	p.wg.Wait()
}

// schedule queues c on its shard. The caller owns c's writing flag.
func (p *writerPool) schedule(c *conn) {
	s := &p.shards[c.shard]
	s.mu.Lock()
	s.ready = append(s.ready, c)
	first := len(s.ready) == 1
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (p *writerPool) run(s *writerShard) {
	defer p.wg.Done()
	var batch []*conn
	for {
		s.mu.Lock()
		batch, s.ready = s.ready, batch[:0]
		s.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-s.wake:
				continue
			case <-p.stop:
				return
			}
		}
		for i, c := range batch {
			c.flush(s)
			batch[i] = nil
		}
	}
}

// flush writes what c has queued without blocking; it runs on c's shard
// worker. What the socket does not take now, and closes, go to c's own
// goroutine.
func (c *conn) flush(s *writerShard) {
	c.wmu.Lock()
	if c.closing || c.raw == nil {
		c.wmu.Unlock()
		c.e.wg.Add(1)
		go c.writeLoop()
		return
	}
	q := c.queue
	c.queue = nil
	ping := c.pingDue
	if ping {
		c.pingDue = false
		q = append(q, pingFrame)
		c.pending += len(pingFrame) + frameOverhead
	}
	c.wmu.Unlock()

	n, err := s.writeNonblocking(c.raw, q)
	if err != nil {
		c.abandon()
		return
	}
	done, rest := c.account(q, n, ping)
	if len(rest) > 0 {
		// The socket's buffer is full: the connection's own goroutine
		// finishes, starting with the rest of a partly written frame.
		c.wmu.Lock()
		c.queue = append(rest, c.queue...)
		c.wmu.Unlock()
		c.e.wg.Add(1)
		go c.writeLoop()
		return
	}
	clear(q[:done])
	c.wmu.Lock()
	if len(c.queue) > 0 || c.pingDue || c.closing {
		c.e.writers.schedule(c) // still ours: to the back of the line
	} else {
		c.writing = false
		if c.queue == nil && cap(q) <= 64 {
			c.queue = q[:0] // keeps the small array for the next burst
		}
	}
	c.wmu.Unlock()
}

// account books n bytes of q as written: the queue's byte count and the
// counters. It returns how many frames went whole and the unwritten rest,
// whose first frame may be a tail. ping says q's last frame is a ping,
// which is not counted as a frame out.
func (c *conn) account(q [][]byte, n int, ping bool) (int, [][]byte) {
	written, frames := n, 0
	for _, f := range q {
		if n < len(f) {
			break
		}
		n -= len(f)
		frames++
	}
	data := frames
	if ping && frames == len(q) {
		data--
	}
	c.wmu.Lock()
	c.pending = max(c.pending-written-frames*frameOverhead, 0)
	c.wmu.Unlock()
	if data > 0 {
		c.e.stats.framesOut.Add(int64(data))
	}
	if written > 0 {
		c.e.stats.bytesOut.Add(int64(written))
	}
	if frames == len(q) {
		return frames, nil
	}
	rest := q[frames:]
	rest[0] = rest[0][n:]
	return frames, rest
}

// writeNonblocking hands up to maxIovecs frames of q to the socket in one
// writev and returns the bytes it took: zero when its buffer is full.
func (s *writerShard) writeNonblocking(raw syscall.RawConn, q [][]byte) (int, error) {
	if len(q) > maxIovecs {
		q = q[:maxIovecs]
	}
	s.q, s.n, s.err = q, 0, nil
	err := raw.Write(s.write)
	s.q = nil
	if err != nil {
		return 0, err
	}
	return s.n, s.err
}

// writeLoop is the connection's own writer: it finishes what the socket
// would not take at once, pings and closes. Frames are written in order
// with a write deadline per batch; a ping goes out after the frames queued
// before it, and a close after them too, unless the close dropped them.
// It hands the connection back to the pool once its queue is empty. The
// deadline is cleared then, so that gws's own close frames are not failed
// by a stale one.
func (c *conn) writeLoop() {
	defer c.e.wg.Done()
	nc := c.socket.NetConn()
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
			_ = nc.SetWriteDeadline(time.Time{})
			return
		}
		c.wmu.Unlock()

		if len(batch) > 0 && !c.dropped.Load() {
			_ = nc.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			var n int
			var err error
			if c.raw == nil && c.e.cfg.Compression {
				n, err = c.writeCompressed(batch)
			} else {
				bufs := net.Buffers(batch)
				var n64 int64
				n64, err = bufs.WriteTo(nc) // consumes bufs, not batch
				n = int(n64)
			}
			if err != nil {
				c.abandon()
				return
			}
			c.account(batch, n, false)
		}
		clear(batch)
		if ping {
			_ = nc.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			if _, err := nc.Write(pingFrame); err != nil {
				c.abandon()
				return
			}
		}
		if closing {
			_ = c.socket.SetWriteDeadline(time.Now().Add(c.e.cfg.WriteTimeout))
			_ = c.socket.WriteClose(uint16(code), []byte(reason))
			c.abandon()
			return
		}
	}
}

// writeCompressed writes batch through gws, which compresses each
// message when the client negotiated permessage-deflate. It reports the
// frames' own lengths as written, for account.
func (c *conn) writeCompressed(batch [][]byte) (int, error) {
	n := 0
	for _, f := range batch {
		op := gws.Opcode(f[0] & 0x0F)
		if err := c.socket.WriteMessage(op, framePayload(f)); err != nil {
			return n, err
		}
		n += len(f)
	}
	return n, nil
}
