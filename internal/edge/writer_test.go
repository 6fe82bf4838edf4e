package edge

// Unit tests of the write path (writer.go, and the queue in conn.go's
// sendFrame, ping, closeWith and waitRoom) against a fake socket, without
// NATS, gws or a network: the bounded queue and its slow-consumer close,
// pending-bytes accounting, order, coalescing into one writev, partial and
// refused (EAGAIN) writes, the write timeout, and stopping. The tests in
// wire_test.go and edge_test.go run the same paths through real sockets.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/natter/natter/pkg/envelope"
)

// fakeSocket records what the write path hands it. writeNow takes what
// take says, one entry per call (-1 or no entry: everything); pause makes
// the next call of a kind wait until released.
type fakeSocket struct {
	mu         sync.Mutex
	out        []byte   // every byte written, in order; the close frame apart
	nowCalls   []int    // frames offered to each writeNow
	writes     [][]byte // the bytes of each write
	timeouts   []time.Duration
	take       []int
	nowErr     error // writeNow fails with it
	writeErr   error // write fails with it
	closeCode  uint16
	closeWhy   string
	closes     int
	aborts     int
	isClosed   bool
	paused     map[string]*pause
	scratchNil bool // a write came without the caller's scratch
}

type pause struct {
	started chan struct{}
	release chan struct{}
}

// pause makes the next call of kind ("now", "write" or "close") wait: it
// returns a channel closed when that call has started, and the release.
func (f *fakeSocket) pause(kind string) (<-chan struct{}, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused == nil {
		f.paused = map[string]*pause{}
	}
	p := &pause{started: make(chan struct{}), release: make(chan struct{})}
	f.paused[kind] = p
	return p.started, sync.OnceFunc(func() { close(p.release) })
}

func (f *fakeSocket) wait(kind string) {
	f.mu.Lock()
	p := f.paused[kind]
	delete(f.paused, kind)
	f.mu.Unlock()
	if p != nil {
		close(p.started)
		<-p.release
	}
}

func (f *fakeSocket) writeNow(_ *writerShard, frames [][]byte) (int, error) {
	f.wait("now")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nowCalls = append(f.nowCalls, len(frames))
	if f.nowErr != nil {
		return 0, f.nowErr
	}
	n := size(frames)
	if len(f.take) > 0 {
		if f.take[0] >= 0 {
			n = min(f.take[0], n)
		}
		f.take = f.take[1:]
	}
	left := n
	for _, fr := range frames {
		k := min(left, len(fr))
		f.out = append(f.out, fr[:k]...)
		left -= k
	}
	return n, nil
}

func (f *fakeSocket) write(frames [][]byte, timeout time.Duration, scratch *[][]byte) (int, error) {
	f.wait("write")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timeouts = append(f.timeouts, timeout)
	f.scratchNil = f.scratchNil || scratch == nil
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	var b []byte
	for _, fr := range frames {
		b = append(b, fr...)
	}
	f.writes = append(f.writes, b)
	f.out = append(f.out, b...)
	return len(b), nil
}

func (f *fakeSocket) writeClose(code uint16, reason string, timeout time.Duration) error {
	f.wait("close")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeCode, f.closeWhy = code, reason
	f.closes++
	f.timeouts = append(f.timeouts, timeout)
	f.isClosed = true
	return nil
}

func (f *fakeSocket) closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.isClosed
}

func (f *fakeSocket) abort() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.aborts++
	f.isClosed = true
}

// state returns a copy of what the socket recorded.
func (f *fakeSocket) state() fakeSocket {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeSocket{
		out: slices.Clone(f.out), nowCalls: slices.Clone(f.nowCalls), writes: slices.Clone(f.writes),
		timeouts: slices.Clone(f.timeouts), closeCode: f.closeCode, closeWhy: f.closeWhy,
		closes: f.closes, aborts: f.aborts, isClosed: f.isClosed, scratchNil: f.scratchNil,
	}
}

func size(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	return n
}

// writerEdge is just enough of an edge for the write path: its config, a
// writer pool and the group that owns writeLoops. Cleanup stops both and
// checks that every goroutine they started has ended.
func writerEdge(t *testing.T, ws func(*WebSocketConfig)) *Edge {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	if ws != nil {
		ws(&cfg.WebSocket)
	}
	e := &Edge{cfg: cfg, writers: newWriterPool()}
	t.Cleanup(func() {
		e.writers.close()
		e.routines.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), dispatchWait)
		defer cancel()
		if err := e.routines.Wait(ctx); err != nil {
			t.Errorf("a writeLoop is still running: %v", err)
		}
	})
	return e
}

// fakeConn is a connection of e on sock; direct says whether the pool
// writes it without blocking (as on Linux without compression) or only its
// own writeLoop does.
func fakeConn(t *testing.T, e *Edge, sock socket, direct bool) *conn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{e: e, sock: sock, direct: direct, id: "e1.1", ctx: ctx, cancel: cancel}
	t.Cleanup(func() { c.finish() }) // stops a close timer
	return c
}

// frameN is a text frame of size payload bytes that starts with n.
func frameN(n, size int) []byte {
	p := fmt.Appendf(nil, "%d:", n)
	p = append(p, bytes.Repeat([]byte{'x'}, max(size-len(p), 0))...)
	return wsFrame(opText, p)
}

func frames(from, to, size int) [][]byte {
	var fs [][]byte
	for i := from; i < to; i++ {
		fs = append(fs, frameN(i, size))
	}
	return fs
}

// hold queues fs[0] on c and waits until the writer holds it in a paused
// call of kind ("now" or "write"), then queues the rest of fs behind it.
// It returns the release of the held call.
func hold(c *conn, sock *fakeSocket, kind string, fs ...[]byte) (release func()) {
	started, release := sock.pause(kind)
	c.sendFrame(fs[0])
	<-started
	for _, f := range fs[1:] {
		c.sendFrame(f)
	}
	return release
}

// idle waits until no writer owns c and returns its pending bytes.
func idle(t *testing.T, c *conn) int {
	t.Helper()
	var pending int
	eventually(t, "the writer to finish", func() bool {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		pending = c.pending
		return !c.writing && len(c.queue) == 0
	})
	return pending
}

func pendingOf(c *conn) int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.pending
}

func wantOut(t *testing.T, got []byte, want ...[]byte) {
	t.Helper()
	if w := bytes.Join(want, nil); !bytes.Equal(got, w) {
		t.Fatalf("the socket got %d bytes, want %d:\n got %q\nwant %q", len(got), len(w), trim(got), trim(w))
	}
}

func trim(b []byte) []byte {
	if len(b) > 200 {
		return append(b[:200:200], "..."...)
	}
	return b
}

// Frames reach the socket whole and in the order queued, on both paths;
// every frame and byte is counted once and the queue's bytes go back to
// zero.
func TestWriterOrderAndAccounting(t *testing.T) {
	t.Parallel()
	onBothPaths(t, func(t *testing.T, e *Edge, sock *fakeSocket, c *conn, direct bool) {
		var want [][]byte
		for i := range 200 {
			f := frameN(i, i*37%3000)
			want = append(want, f)
			c.sendFrame(f)
		}
		if p := idle(t, c); p != 0 {
			t.Errorf("pending %d after the writer finished, want 0", p)
		}
		st := sock.state()
		wantOut(t, st.out, want...)
		if got := e.stats.framesOut.Load(); got != 200 {
			t.Errorf("framesOut %d, want 200", got)
		}
		if got := e.stats.bytesOut.Load(); got != int64(size(want)) {
			t.Errorf("bytesOut %d, want %d", got, size(want))
		}
		if direct && len(st.writes) > 0 {
			t.Errorf("the pool handed %d writes to a writeLoop; the socket took everything", len(st.writes))
		}
		if !direct && (len(st.nowCalls) > 0 || st.scratchNil) {
			t.Errorf("without direct writes: %d writeNow calls, a write without scratch %v", len(st.nowCalls), st.scratchNil)
		}
	})
}

// onBothPaths runs f on a new edge and connection for each write path:
// direct (the pool's writev that never blocks) and not (the connection's
// own writeLoop).
func onBothPaths(t *testing.T, f func(t *testing.T, e *Edge, sock *fakeSocket, c *conn, direct bool)) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			t.Parallel()
			e := writerEdge(t, nil)
			sock := &fakeSocket{}
			f(t, e, sock, fakeConn(t, e, sock, direct), direct)
		})
	}
}

// Frames queued while the writer is busy go out together in the next
// writev, at most IOV_MAX frames each.
func TestWriterCoalesces(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		queue int // frames queued while the first write is held
		want  []int
	}{
		{"one frame alone", 0, []int{1}},
		{"nine behind the first", 9, []int{1, 9}},
		{"IOV_MAX behind the first", maxIovecs, []int{1, maxIovecs}},
		{"more than IOV_MAX", maxIovecs + 476, []int{1, maxIovecs, 476}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := writerEdge(t, nil)
			sock := &fakeSocket{}
			c := fakeConn(t, e, sock, true)
			all := frames(0, 1+tt.queue, 10)
			release := hold(c, sock, "now", all...) // the writer holds frame 0; the rest waits
			defer release()
			if want := size(all) + len(all)*frameOverhead; pendingOf(c) != want {
				t.Errorf("pending %d while held, want %d (bytes plus %d a frame)", pendingOf(c), want, frameOverhead)
			}
			release()
			idle(t, c)
			st := sock.state()
			if !slices.Equal(st.nowCalls, tt.want) {
				t.Errorf("frames per writev %v, want %v", st.nowCalls, tt.want)
			}
			wantOut(t, st.out, all...)
		})
	}
}

// What the socket does not take at once (a full buffer: EAGAIN, or a part)
// goes to the connection's writeLoop, which finishes a partly written frame
// first, in a write of its own, then the rest in order; then the pool
// writes the connection again.
func TestWriterPartialWrites(t *testing.T) {
	t.Parallel()
	fs := frames(0, 5, 100)
	tests := []struct {
		name string
		take int // bytes of frames 1-4 the socket takes
		tail []byte
	}{
		{"would block (EAGAIN)", 0, nil},
		{"inside the first frame's header", 1, fs[1][1:]},
		{"inside a frame", len(fs[1]) + 3, fs[2][3:]},
		{"at a frame boundary", len(fs[1]) + len(fs[2]), nil},
		{"all but the last byte", size(fs[1:]) - 1, fs[4][len(fs[4])-1:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := writerEdge(t, nil)
			sock := &fakeSocket{take: []int{-1, tt.take}}
			c := fakeConn(t, e, sock, true)
			hold(c, sock, "now", fs...)()
			if p := idle(t, c); p != 0 {
				t.Errorf("pending %d, want 0", p)
			}
			st := sock.state()
			wantOut(t, st.out, fs...)
			if len(st.writes) == 0 {
				t.Fatal("nothing went to the writeLoop")
			}
			if tt.tail != nil && !bytes.Equal(st.writes[0], tt.tail) {
				t.Errorf("the writeLoop's first write is %q, want the rest of the frame alone, %q", trim(st.writes[0]), tt.tail)
			}
			if got := e.stats.framesOut.Load(); got != 5 {
				t.Errorf("framesOut %d, want 5 (a frame written in two parts counts once)", got)
			}

			// Back to the pool: the next frame is written without blocking.
			calls := len(st.nowCalls)
			c.sendFrame(frameN(5, 100))
			idle(t, c)
			if st := sock.state(); len(st.nowCalls) != calls+1 {
				t.Errorf("writeNow calls %d after one more frame, want %d", len(st.nowCalls), calls+1)
			}
		})
	}
}

// The queue is bounded in bytes plus frameOverhead a frame: a frame that
// would pass the bound closes the connection as a slow consumer (4001),
// drops what is queued, and counts it; a frame always fits an empty queue.
func TestWriterSlowConsumer(t *testing.T) {
	t.Parallel()
	const bound = 4096
	e := writerEdge(t, func(ws *WebSocketConfig) { ws.WriteQueueBytes = bound; ws.WriteTimeout = 300 * time.Millisecond })

	t.Run("over the bound", func(t *testing.T) {
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, true)
		fs := frames(0, 4, 1000) // 1004 bytes + 64 each: the fourth passes 4096
		release := hold(c, sock, "now", fs[:3]...)
		defer release()
		if p := pendingOf(c); p != 3*(len(fs[0])+frameOverhead) {
			t.Fatalf("pending %d before the bound", p)
		}
		c.sendFrame(fs[3])
		if !c.isClosing() || pendingOf(c) != 0 {
			t.Fatalf("after passing the bound: closing %v, pending %d; want closing, 0", c.isClosing(), pendingOf(c))
		}
		if n := e.stats.slow.Load(); n != 1 {
			t.Errorf("slow consumer closes %d, want 1", n)
		}
		c.sendFrame(frameN(9, 10)) // closing: not queued
		release()
		eventually(t, "the close frame", func() bool { return sock.state().closes == 1 })
		st := sock.state()
		wantOut(t, st.out, fs[0]) // the frame being written when it closed; the queued ones are dropped
		if st.closeCode != uint16(envelope.CloseSlowConsumer) || st.closeWhy != "slow consumer" {
			t.Errorf("close %d %q, want %d %q", st.closeCode, st.closeWhy, envelope.CloseSlowConsumer, "slow consumer")
		}
		if st.aborts != 0 {
			t.Errorf("aborted %d times after a clean close frame", st.aborts)
		}
		if got := st.timeouts[len(st.timeouts)-1]; got != 300*time.Millisecond {
			t.Errorf("the close frame's timeout %s, want the write timeout", got)
		}
		if p := pendingOf(c); p != 0 {
			t.Errorf("pending %d after the close, want 0", p)
		}
	})

	t.Run("a frame larger than the bound fits an empty queue", func(t *testing.T) {
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, true)
		big := frameN(0, 3*bound)
		c.sendFrame(big)
		idle(t, c)
		if c.isClosing() {
			t.Fatal("closed a client that keeps up")
		}
		wantOut(t, sock.state().out, big)
	})
}

// A write that fails or times out abandons the connection: the socket
// closes at once, nothing more is queued or written, and no writer starts
// again; unless the close frame is out already, whose lingering close a
// failed write must not cut short.
func TestWriterAbandon(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		direct    bool
		nowErr    error
		writeErr  error
		closed    bool // the socket closed before the failed write
		wantAbort int
	}{
		{"write timeout in the writeLoop", false, nil, os.ErrDeadlineExceeded, false, 1},
		{"writeNow fails", true, errors.New("broken pipe"), nil, false, 1},
		{"writeNow fails after the close frame", true, errors.New("broken pipe"), nil, true, 0},
		{"write fails after the close frame", false, nil, errors.New("broken pipe"), true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := writerEdge(t, func(ws *WebSocketConfig) { ws.WriteTimeout = 250 * time.Millisecond })
			sock := &fakeSocket{nowErr: tt.nowErr, writeErr: tt.writeErr, isClosed: tt.closed}
			c := fakeConn(t, e, sock, tt.direct)
			c.sendFrame(frameN(0, 10))
			eventually(t, "the connection to close", c.isClosing)
			st := sock.state()
			if st.aborts != tt.wantAbort {
				t.Errorf("aborts %d, want %d", st.aborts, tt.wantAbort)
			}
			if !tt.direct && (len(st.timeouts) != 1 || st.timeouts[0] != 250*time.Millisecond) {
				t.Errorf("write timeouts %v, want [250ms]", st.timeouts)
			}
			c.sendFrame(frameN(1, 10))
			c.ping(time.Now().UnixNano())
			c.wmu.Lock()
			queued, pending, writing := len(c.queue), c.pending, c.writing
			c.wmu.Unlock()
			if queued != 0 || pending != 0 || !writing {
				t.Errorf("after abandon: %d queued, pending %d, writing %v; want 0, 0, true (no writer starts again)", queued, pending, writing)
			}
			if st := sock.state(); st.closes != 0 || len(st.out) != 0 {
				t.Errorf("after a failed write: %d close frames, %d bytes", st.closes, len(st.out))
			}
		})
	}
}

// A ping goes after the frames queued before it, on both paths, and is
// counted as a frame.
func TestWriterPing(t *testing.T) {
	t.Parallel()
	onBothPaths(t, func(t *testing.T, e *Edge, sock *fakeSocket, c *conn, direct bool) {
		kind := "now"
		if !direct {
			kind = "write"
		}
		started, release := sock.pause(kind)
		fs := frames(0, 3, 20)
		c.sendFrame(fs[0])
		<-started
		c.sendFrame(fs[1])
		c.ping(42)
		c.sendFrame(fs[2])
		release()
		if p := idle(t, c); p != 0 {
			t.Errorf("pending %d, want 0", p)
		}
		wantOut(t, sock.state().out, fs[0], fs[1], fs[2], pingFrame)
		if c.pingSent.Load() != 42 {
			t.Errorf("pingSent %d, want 42", c.pingSent.Load())
		}
		if got := e.stats.framesOut.Load(); got != 4 {
			t.Errorf("framesOut %d, want 4", got)
		}
	})
}

// closeWith writes what is queued and then the close frame; with drop it
// discards the queue, but a frame partly written is finished first (a
// close frame inside a frame would garble both).
func TestWriterClose(t *testing.T) {
	t.Parallel()
	t.Run("keeps the queue", func(t *testing.T) {
		t.Parallel()
		e := writerEdge(t, nil)
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, true)
		fs := frames(0, 3, 50)
		release := hold(c, sock, "now", fs...)
		c.closeWith(envelope.CloseShutdown, "edge shutting down", false)
		c.closeWith(envelope.CloseSlowConsumer, "second", true) // the first code wins
		release()
		eventually(t, "the close frame", func() bool { return sock.state().closes == 1 })
		st := sock.state()
		wantOut(t, st.out, fs...)
		if st.closeCode != uint16(envelope.CloseShutdown) || st.closeWhy != "edge shutting down" {
			t.Errorf("close %d %q, want %d", st.closeCode, st.closeWhy, envelope.CloseShutdown)
		}
	})
	t.Run("drops the queue but finishes a partial frame", func(t *testing.T) {
		t.Parallel()
		e := writerEdge(t, nil)
		sock := &fakeSocket{take: []int{-1, 3}}
		c := fakeConn(t, e, sock, true)
		fs := frames(0, 4, 50)
		releaseNow := hold(c, sock, "now", fs[:3]...)
		// The next writev takes 3 bytes of frame 1; the writeLoop then holds
		// in writing the rest of it, with frame 2 in its batch.
		tail, releaseTail := sock.pause("write")
		releaseNow()
		<-tail
		c.sendFrame(fs[3])
		c.closeWith(envelope.CloseSlowConsumer, "slow consumer", true)
		releaseTail()
		eventually(t, "the close frame", func() bool { return sock.state().closes == 1 })
		st := sock.state()
		wantOut(t, st.out, fs[0], fs[1])
		if st.closeCode != uint16(envelope.CloseSlowConsumer) {
			t.Errorf("close %d, want %d", st.closeCode, envelope.CloseSlowConsumer)
		}
	})
}

// waitRoom holds a sender until the writer has brought the queue down to
// half its bound, and lets go with false when the connection closes or
// ctx ends.
func TestWriterWaitRoom(t *testing.T) {
	t.Parallel()
	const bound = 4096
	setup := func(t *testing.T) (*conn, func()) {
		e := writerEdge(t, func(ws *WebSocketConfig) { ws.WriteQueueBytes = bound })
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, true)
		release := hold(c, sock, "now", frames(0, 3, 1000)...) // 3*1068 bytes: over half the bound
		t.Cleanup(release)
		return c, release
	}
	wait := func(ctx context.Context, c *conn) <-chan bool {
		ch := make(chan bool, 1)
		go func() { ch <- c.waitRoom(ctx) }()
		return ch
	}
	result := func(t *testing.T, ch <-chan bool, want bool) {
		t.Helper()
		select {
		case got := <-ch:
			if got != want {
				t.Errorf("waitRoom %v, want %v", got, want)
			}
		case <-time.After(dispatchWait):
			t.Fatal("waitRoom did not return")
		}
	}
	t.Run("the writer frees room", func(t *testing.T) {
		t.Parallel()
		c, release := setup(t)
		ch := wait(context.Background(), c)
		select {
		case <-ch:
			t.Fatal("waitRoom returned while the queue was over half its bound and the writer held")
		default:
		}
		release()
		result(t, ch, true)
	})
	t.Run("the connection closes", func(t *testing.T) {
		t.Parallel()
		c, _ := setup(t)
		ch := wait(context.Background(), c)
		c.closeWith(envelope.CloseShutdown, "bye", false)
		result(t, ch, false)
	})
	t.Run("ctx ends", func(t *testing.T) {
		t.Parallel()
		c, _ := setup(t)
		ctx, cancel := context.WithCancel(context.Background())
		ch := wait(ctx, c)
		cancel()
		result(t, ch, false)
	})
}

// Once the pool is closed nothing scheduled is written, and closing it
// again is a no-op; once the edge has stopped its goroutines, a connection
// that needs its own writer closes at once instead.
func TestWriterStop(t *testing.T) {
	t.Parallel()
	t.Run("pool closed", func(t *testing.T) {
		t.Parallel()
		e := writerEdge(t, nil)
		e.writers.close()
		e.writers.close()
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, true)
		c.sendFrame(frameN(0, 10))
		s := &e.writers.shards[c.shard]
		s.mu.Lock()
		ready := len(s.ready)
		s.mu.Unlock()
		// No worker is left to take it (close waited for them all).
		if ready != 1 || len(sock.state().nowCalls) != 0 {
			t.Errorf("%d connections waiting, %d writes; want 1, 0", ready, len(sock.state().nowCalls))
		}
	})
	t.Run("edge goroutines stopped", func(t *testing.T) {
		t.Parallel()
		e := writerEdge(t, nil)
		e.routines.Stop()
		sock := &fakeSocket{}
		c := fakeConn(t, e, sock, false)
		c.sendFrame(frameN(0, 10))
		eventually(t, "the socket to be aborted", func() bool { return sock.state().aborts == 1 })
		if !c.isClosing() {
			t.Error("the connection is still open")
		}
		if st := sock.state(); len(st.out) != 0 || st.closes != 0 {
			t.Errorf("wrote %d bytes and %d close frames with no writer", len(st.out), st.closes)
		}
	})
}

// Frames are shared between connections and never modified: the same
// frame queued on many connections reaches each whole, whatever each
// socket takes at once.
func TestWriterSharedFrames(t *testing.T) {
	t.Parallel()
	e := writerEdge(t, nil)
	fs := frames(0, 20, 300)
	keep := make([][]byte, len(fs))
	for i, f := range fs {
		keep[i] = slices.Clone(f)
	}
	var socks []*fakeSocket
	var conns []*conn
	for i := range 8 {
		sock := &fakeSocket{take: []int{i * 97, 0, i * 13}}
		socks = append(socks, sock)
		conns = append(conns, fakeConn(t, e, sock, i%3 != 0))
	}
	for _, f := range fs {
		for _, c := range conns {
			c.sendFrame(f)
		}
	}
	for i, c := range conns {
		idle(t, c)
		wantOut(t, socks[i].state().out, keep...)
	}
	for i := range fs {
		if !bytes.Equal(fs[i], keep[i]) {
			t.Fatalf("frame %d was modified", i)
		}
	}
}
