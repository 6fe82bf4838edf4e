package edge

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/routine"
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
//
// The path reaches the socket only through the small interface socket,
// which a real connection implements with wireSocket and writer_test.go
// with a fake.

const (
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
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

// socket is a connection's socket as the write path needs it. Only the
// writer that owns the connection's writes (conn.writing) calls the write
// methods; abort and closed may come from any goroutine.
type socket interface {
	// writeNow hands frames to the socket in one writev that never waits,
	// with the scratch state of the shard s, and returns the bytes it
	// took: fewer, or none, when the send buffer is full. Only a
	// connection whose direct flag is set calls it.
	writeNow(s *writerShard, frames [][]byte) (int, error)
	// write writes frames whole, within timeout, and returns the bytes
	// written, counted as the frames' own lengths. scratch is the
	// caller's, for the iovecs.
	write(frames [][]byte, timeout time.Duration, scratch *[][]byte) (int, error)
	// writeClose writes the close frame within timeout; the socket then
	// closes, lingering so that the frame reaches the peer. A socket that
	// is closed already is not an error.
	writeClose(code uint16, reason string, timeout time.Duration) error
	// closed reports whether the socket has closed: after its close frame,
	// or when the peer went.
	closed() bool
	// abort closes the socket at once.
	abort()
}

// wireSocket is a real connection's socket: its descriptor for the writes
// that never wait, the wire (wireConn) for the others, and gws for the
// close frame and for compressed frames.
type wireSocket struct {
	ws       *gws.Conn
	wire     *wireConn
	raw      syscall.RawConn // nil: no writes that never wait (not Linux, or compression)
	compress bool            // frames go through gws, which compresses them
}

func (w *wireSocket) writeNow(s *writerShard, frames [][]byte) (int, error) {
	return s.writeNonblocking(w.raw, frames)
}

func (w *wireSocket) write(frames [][]byte, timeout time.Duration, scratch *[][]byte) (int, error) {
	nc := w.wire.Conn // whole frames only: the wire's Write is gws's
	_ = nc.SetWriteDeadline(time.Now().Add(timeout))
	var n int
	var err error
	if w.raw == nil && w.compress {
		n, err = w.writeCompressed(frames)
	} else {
		// WriteTo consumes the slice it is given: a copy keeps frames intact
		// for account.
		*scratch = append((*scratch)[:0], frames...)
		var n64 int64
		n64, err = (*net.Buffers)(scratch).WriteTo(nc)
		n = int(n64)
	}
	// Cleared while the writer still owns the socket, so that no stale
	// deadline fails a later write.
	_ = nc.SetWriteDeadline(time.Time{})
	return n, err
}

// writeCompressed writes batch through gws, which compresses each
// message when the client negotiated permessage-deflate. It reports the
// frames' own, uncompressed lengths as written, for account.
func (w *wireSocket) writeCompressed(batch [][]byte) (int, error) {
	n := 0
	for _, f := range batch {
		op := gws.Opcode(f[0] & 0x0F)
		if err := w.ws.WriteMessage(op, framePayload(f)); err != nil {
			return n, err
		}
		n += len(f)
	}
	return n, nil
}

// writeClose has gws write the close frame and close the wire, which
// lingers so that the frame reaches the client.
func (w *wireSocket) writeClose(code uint16, reason string, timeout time.Duration) error {
	_ = w.wire.Conn.SetWriteDeadline(time.Now().Add(timeout))
	w.wire.ownClose.Store(true)
	if err := w.ws.WriteClose(code, []byte(reason)); err != nil && !errors.Is(err, gws.ErrConnClosed) {
		return err
	}
	return nil
}

func (w *wireSocket) closed() bool {
	select {
	case <-w.wire.closing:
		return true
	default:
		return false
	}
}

func (w *wireSocket) abort() { w.wire.abort() }

// writerPool is the edge's writer goroutines, one shard each.
type writerPool struct {
	shards  []writerShard
	workers routine.Group
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
	p := &writerPool{shards: make([]writerShard, runtime.GOMAXPROCS(0))}
	for i := range p.shards {
		s := &p.shards[i]
		s.wake = make(chan struct{}, 1)
		s.write = s.writev
		p.workers.Go(func(ctx context.Context) { p.run(ctx, s) })
	}
	return p
}

// close stops the workers and waits for them; connections scheduled later
// are not written. It is idempotent.
func (p *writerPool) close() {
	p.workers.Stop()
	_ = p.workers.Wait(context.Background())
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

func (p *writerPool) run(ctx context.Context, s *writerShard) {
	var batch []*conn
	for {
		s.mu.Lock()
		batch, s.ready = s.ready, batch[:0]
		s.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
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
	if c.isClosed() {
		// The socket is gone: nothing to write, so start no writeLoop.
		c.queue = nil
		c.wmu.Unlock()
		return
	}
	if c.isClosing() || !c.direct || c.tail != nil {
		c.wmu.Unlock()
		c.handOff()
		return
	}
	q := c.queue
	c.queue = nil
	if c.pingDue {
		c.pingDue = false
		q = append(q, pingFrame)
		c.pending += len(pingFrame) + frameOverhead
	}
	c.wmu.Unlock()

	offered := q[:min(len(q), maxIovecs)]
	n, err := c.sock.writeNow(s, offered)
	if err != nil {
		c.abandon()
		return
	}
	done, tail := c.account(offered, n)
	if tail != nil || done < len(offered) {
		// The socket's buffer is full: the connection's own goroutine
		// finishes, starting with the rest of a partly written frame,
		// which nothing may precede or drop.
		next := done // the first frame not touched
		if tail != nil {
			next++
		}
		c.wmu.Lock()
		c.tail = tail
		c.queue = append(q[next:len(q):len(q)], c.queue...)
		c.wmu.Unlock()
		c.handOff()
		return
	}
	c.wmu.Lock()
	if done < len(q) {
		// More than one writev holds, and the socket took all it was
		// offered: the rest waits its turn like new frames.
		c.queue = append(q[done:len(q):len(q)], c.queue...)
	} else {
		clear(q)
	}
	if len(c.queue) > 0 || c.pingDue || c.isClosing() {
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
// counters (every frame counts, pings and pongs too). It returns how many
// frames went whole and, when the next one went in part, its unwritten
// rest.
func (c *conn) account(q [][]byte, n int) (int, []byte) {
	written, frames := n, 0
	for _, f := range q {
		if n < len(f) {
			break
		}
		n -= len(f)
		frames++
	}
	c.wmu.Lock()
	c.pending = max(c.pending-written-frames*frameOverhead, 0)
	c.freeRoomLocked()
	c.wmu.Unlock()
	c.e.stats.framesOut.Add(int64(frames))
	c.e.stats.bytesOut.Add(int64(written))
	if frames < len(q) && n > 0 {
		return frames, q[frames][n:]
	}
	return frames, nil
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

// handOff gives c's writes to a goroutine of its own, writeLoop, which
// the edge owns. Once the edge has stopped its goroutines (Shutdown, after
// its connections are gone or it gave up on them) none starts: the socket
// closes at once.
func (c *conn) handOff() {
	if !c.e.routines.Go(func(context.Context) { c.writeLoop() }) {
		c.abandon()
	}
}

// writeChunk bounds the bytes one blocking write may take: each chunk gets
// its own write timeout, as each frame did before frames were batched, and
// a close that drops the queue is seen between chunks.
const writeChunk = 64 << 10

// writeLoop is the connection's own writer: it finishes what the socket
// would not take at once, pings and closes. It writes, in order: the rest
// of a partly written frame, always, even when a close dropped the queue
// (a close frame inside another frame would garble both); then the queue
// in chunks of whole frames, each with the write timeout; a ping after the
// frames queued before it; and a close after them too, unless the close
// dropped them. It hands the connection back to the pool once its queue is
// empty. The deadline is cleared after each write, while the loop still
// owns the socket, so no stale one fails a later write.
func (c *conn) writeLoop() {
	var batch, scratch [][]byte
	for {
		c.wmu.Lock()
		tail := c.tail
		c.tail = nil
		batch, c.queue = c.queue, batch[:0]
		ping := c.pingDue
		c.pingDue = false
		closing, code, reason := c.isClosing(), c.closeCode, c.closeReason
		if tail == nil && len(batch) == 0 && !ping && !closing {
			c.writing = false
			c.wmu.Unlock()
			return
		}
		c.wmu.Unlock()

		if tail != nil {
			if !c.writeBlocking([][]byte{tail}, &scratch) {
				return
			}
		}
		for len(batch) > 0 && !c.dropped.Load() {
			k, size := 0, 0
			for k < len(batch) && (k == 0 || size+len(batch[k]) <= writeChunk) && k < maxIovecs {
				size += len(batch[k])
				k++
			}
			if !c.writeBlocking(batch[:k], &scratch) {
				return
			}
			clear(batch[:k])
			batch = batch[k:]
		}
		clear(batch)
		batch = batch[:0]
		if ping && !c.writeBlocking([][]byte{pingFrame}, &scratch) {
			return
		}
		if closing {
			if err := c.sock.writeClose(uint16(code), reason, c.e.cfg.WebSocket.WriteTimeout); err != nil {
				c.abandon()
				return
			}
			c.stopWriting()
			return
		}
	}
}

// writeBlocking writes frames (a tail counts as one) with the write
// timeout and books them; on failure it abandons the connection.
func (c *conn) writeBlocking(frames [][]byte, scratch *[][]byte) bool {
	n, err := c.sock.write(frames, c.e.cfg.WebSocket.WriteTimeout, scratch)
	if err != nil {
		c.abandon()
		return false
	}
	c.account(frames, n)
	return true
}
