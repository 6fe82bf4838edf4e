package edge

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkDispatch times the dispatcher alone, from a publish on a real
// embedded nats-server to the handler, for n connections addressed in
// turn: with a subscription per connection (exact, as before issue 16)
// and with one wildcard for all of them (byID, the edge's way now: one
// more hop, through the router, per message). "room" is one plain
// subscription, the path of room and user messages.
//
//	go test -run='^$' -bench=BenchmarkDispatch ./internal/edge
func BenchmarkDispatch(b *testing.B) {
	b.Run("room", func(b *testing.B) {
		benchDispatch(b, 1, func(d *dispatcher, nc *nats.Conn, handled *atomic.Int64) []string {
			if _, err := d.subscribe(nc, "t.out.room.r", 0, func(*nats.Msg) { handled.Add(1) }); err != nil {
				b.Fatal(err)
			}
			return []string{"t.out.room.r"}
		})
	})
	for _, n := range []int{1, 1000} {
		b.Run("exact/conns="+strconv.Itoa(n), func(b *testing.B) {
			benchDispatch(b, n, func(d *dispatcher, nc *nats.Conn, handled *atomic.Int64) []string {
				subjects := make([]string, n)
				for i := range subjects {
					subjects[i] = "t.out.conn.e1.c" + strconv.Itoa(i)
					if _, err := d.subscribe(nc, subjects[i], i, func(*nats.Msg) { handled.Add(1) }); err != nil {
						b.Fatal(err)
					}
				}
				return subjects
			})
		})
		b.Run("byID/conns="+strconv.Itoa(n), func(b *testing.B) {
			benchDispatch(b, n, func(d *dispatcher, nc *nats.Conn, handled *atomic.Int64) []string {
				if _, err := d.subscribeByID(nc, "t.out.conn.e1.*", len("t.out.conn."), func(string, *nats.Msg) { handled.Add(1) }); err != nil {
					b.Fatal(err)
				}
				subjects := make([]string, n)
				for i := range subjects {
					subjects[i] = "t.out.conn.e1.c" + strconv.Itoa(i)
				}
				return subjects
			})
		})
	}
}

func benchDispatch(b *testing.B, n int, setup func(*dispatcher, *nats.Conn, *atomic.Int64) []string) {
	nc := dispatchNATS(b)
	d := newDispatcher()
	defer d.close()
	var handled atomic.Int64
	subjects := setup(d, nc, &handled)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	await := func(target int64) {
		deadline := time.Now().Add(time.Minute)
		for handled.Load() < target {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d messages handled", handled.Load(), target)
			}
			time.Sleep(50 * time.Microsecond) // polls, with the deadline above
		}
	}
	body := []byte(`{"type":"dm","payload":{"text":"hello"}}`)
	b.ReportAllocs()
	sent := 0
	for b.Loop() {
		if err := nc.Publish(subjects[sent%n], body); err != nil {
			b.Fatal(err)
		}
		sent++
		if sent%4096 == 0 {
			await(int64(sent - 2048))
		}
	}
	b.StartTimer()
	await(int64(sent))
	b.StopTimer()
}
