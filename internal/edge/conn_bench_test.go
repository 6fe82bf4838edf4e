//go:build unix

package edge_test

// BenchmarkConnDeliver: the cost on the edge of envelopes published on
// natter.out.conn.<id>, each to one connection, over N connections in turn.
// The edge receives them on its wildcard natter.out.conn.<edge>.* (before
// issue 16: on a subscription per connection), routes each to its
// connection's dispatcher shard, decodes it, and queues its frame on the
// connection's write queue. Like BenchmarkRoomFanoutEncode, every socket is
// an in-memory sink that counts and checks frames (no descriptors, no
// kernel), so that the edge's own work shows; the sinks' checks are timed
// with it. It also reports the NATS subscriptions of the edge's connection
// and of the whole server with N connections (edge-subs, server-subs), and
// the live heap each connection adds to this process, edge, sink and
// embedded server together (heap-B/conn; meaningful for N = 1000).
//
//	go test -run='^$' -bench=BenchmarkConnDeliver -benchmem ./internal/edge

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
)

// connDeliverBody is what a service publishes to one connection.
var connDeliverBody = []byte(`{"type":"dm","meta":{"timestamp":1730450000000},"payload":{"from":"alice","text":"The quick brown fox jumps over the lazy dog, twice over."}}`)

func BenchmarkConnDeliver(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			srv := testenv.NATS(b)
			nc := testenv.Connect(b, srv.ClientURL())
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = nc
			cfg.Auth.Anonymous = true
			cfg.WebSocket.WriteQueueBytes = 4 << 20
			cfg.WebSocket.PingInterval = time.Hour
			cfg.WebSocket.PongTimeout = time.Hour
			// Loosens production: one client IP opens every connection.
			cfg.Limits.HandshakeRate = 0
			cfg.Presence = nil // not under measurement
			e := testenv.StartEdge(b, cfg)
			pub := testenv.Connect(b, srv.ClientURL())
			set := &connSinkSet{wire: textFrame(connDeliverBody), delivered: newCounter()}
			heapBefore := liveHeap()
			subjects := make([]string, n)
			for i := range subjects {
				subjects[i] = "natter.out.conn." + set.connect(b, e)
			}
			if err := nc.Flush(); err != nil {
				b.Fatal(err)
			}
			// The live heap a connection adds in this process: the edge's
			// state, its sink, and the embedded server's.
			heapPerConn := float64(int64(liveHeap())-int64(heapBefore)) / float64(n)
			// Reported after the loop: b.Loop's start drops metrics reported before it.
			edgeSubs, serverSubs := nc.NumSubscriptions(), srv.NATS().NumSubscriptions()

			b.ReportAllocs()
			b.SetBytes(int64(len(connDeliverBody)))
			const batch = 1000
			sent, done := 0, 0
			cpu0 := cpuTime()
			await := func(target int) {
				if got, ok := set.delivered.wait(int64(target), fanoutTimeout); !ok {
					b.Fatalf("%d of %d deliveries after %s", got, target, fanoutTimeout)
				}
			}
			for b.Loop() {
				if err := pub.Publish(subjects[sent%n], connDeliverBody); err != nil {
					b.Fatal(err)
				}
				sent++
				if limit := min(2*batch, max(sent/2, 1)); sent-done >= limit {
					done = sent - limit/2
					await(done)
				}
			}
			b.StartTimer()
			await(sent)
			b.StopTimer()
			cpu := cpuTime() - cpu0
			if bad := set.bad.Load(); bad > 0 {
				b.Fatalf("%d unexpected frames", bad)
			}
			if st := e.Stats(); st.SlowConsumerCloses > 0 || st.OutboundDropped > 0 || st.Connections != int64(n) {
				b.Fatalf("edge stats after the run: %+v", st)
			}
			b.ReportMetric(float64(edgeSubs), "edge-subs")
			b.ReportMetric(float64(serverSubs), "server-subs")
			b.ReportMetric(heapPerConn, "heap-B/conn")
			// CPU time of the whole process (edge, NATS server, publisher,
			// sinks) per message: steadier than ns/op on a shared machine.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(sent), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// textFrame is payload as a final, unmasked text frame.
func textFrame(payload []byte) []byte {
	var f []byte
	switch n := len(payload); {
	case n < 126:
		f = []byte{0x81, byte(n)}
	case n < 1<<16:
		f = []byte{0x81, 126, byte(n >> 8), byte(n)}
	default:
		f = []byte{0x81, 127, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
	return append(f, payload...)
}

// connSinkSet is the connections of BenchmarkConnDeliver.
type connSinkSet struct {
	wire      []byte // the frame every delivery must be
	delivered *counter
	bad       atomic.Int64
}

// connect upgrades one sink connection through Edge.ServeHTTP and returns
// its connection id, from its $connected.
func (s *connSinkSet) connect(b *testing.B, e *testenv.Edge) string {
	b.Helper()
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	r := httptest.NewRequest(http.MethodGet, e.Path(), nil)
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
	c := &connSink{set: s, id: make(chan string, 1), closed: make(chan struct{})}
	w := &hijackWriter{conn: c, header: http.Header{}}
	e.ServeHTTP(w, r)
	if w.code != 0 {
		b.Fatalf("upgrade of a sink failed: status %d", w.code)
	}
	select {
	case id := <-c.id:
		return id
	case <-time.After(fanoutTimeout):
		b.Fatal("no $connected")
		return ""
	}
}

// connSink is the server end of one connection: the client sends nothing;
// writes are the upgrade, $connected, then deliveries, checked and counted.
type connSink struct {
	set       *connSinkSet
	id        chan string
	upgraded  atomic.Bool
	welcomed  atomic.Bool
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *connSink) Read([]byte) (int, error) {
	<-c.closed
	return 0, io.EOF
}

func (c *connSink) Write(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	switch {
	case !c.upgraded.Load():
		c.upgraded.Store(true)
	case len(p) < 2 || p[0] != 0x81: // not a final text frame: close, pong
	case !c.welcomed.Load():
		c.welcomed.Store(true)
		var env struct {
			Type    string
			Payload struct{ ConnectionID string }
		}
		if p[1] >= 126 || json.Unmarshal(p[2:], &env) != nil || env.Type != "$connected" {
			c.set.bad.Add(1)
		}
		c.id <- env.Payload.ConnectionID
	default:
		if !bytes.Equal(p, c.set.wire) {
			c.set.bad.Add(1)
		}
		c.set.delivered.add()
	}
	return len(p), nil
}

func (c *connSink) CloseWrite() error { return c.Close() }

func (c *connSink) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *connSink) LocalAddr() net.Addr              { return sinkAddr{} }
func (c *connSink) RemoteAddr() net.Addr             { return sinkAddr{} }
func (c *connSink) SetDeadline(time.Time) error      { return nil }
func (c *connSink) SetReadDeadline(time.Time) error  { return nil }
func (c *connSink) SetWriteDeadline(time.Time) error { return nil }
