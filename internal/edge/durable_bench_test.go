package edge_test

// The cost of durable rooms, measured in one run against one embedded
// nats-server (file storage) and one edge, with a real WebSocket member:
//
//   - BenchmarkPublishToDeliver: the latency from a publisher's call to the
//     member reading the frame, one message at a time, for a plain room
//     (core publish), a durable room published with Publisher.ToDurableRoom
//     (stored, acknowledged, republished), and a durable room published
//     with a core publish (captured by the edge, stored, republished). It
//     reports the median and the 99th percentile.
//   - BenchmarkRecover1000: a member that missed 1,000 messages re-joins
//     with since; the time from sending the $join to reading the $joined,
//     after the 1,000 replayed messages.
//
//	go test -run='^$' -bench='PublishToDeliver|Recover1000' -benchtime=2000x ./internal/edge
//	go test -run='^$' -bench=Recover1000 -benchtime=20x ./internal/edge

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

func BenchmarkPublishToDeliver(b *testing.B) {
	for _, mode := range []string{"plain", "durable-acked", "durable-captured"} {
		b.Run(mode, func(b *testing.B) {
			m := newDurableMeshB(b)
			room := "plain-room"
			if mode != "plain" {
				room = "dur-bench"
			}
			c := wstest.Dial(b, m.a.URL)
			if got := c.Request(b, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait); got.Type != envelope.TypeJoined {
				b.Fatalf("join: %s", got.Payload)
			}
			env, _ := envelope.New("num", map[string]int{"n": 1})
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				var err error
				switch mode {
				case "durable-acked":
					_, err = m.pub.ToDurableRoom(context.Background(), room, env)
				default:
					err = m.pub.ToRoom(room, env)
				}
				if err != nil {
					b.Fatal(err)
				}
				if _, ok := c.NextRaw(wait); !ok {
					b.Fatal("no delivery")
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func BenchmarkRecover1000(b *testing.B) {
	m := newDurableMeshB(b)
	const room, missed = "dur-recover", 1000
	env, _ := envelope.New("num", map[string]int{"n": 1})
	var took []time.Duration
	for i := range b.N {
		b.StopTimer()
		c := wstest.Dial(b, m.a.URL)
		got := c.Request(b, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
		var j envelope.Joined
		if err := json.Unmarshal(got.Payload, &j); err != nil || !j.Durable {
			b.Fatalf("$joined %s", got.Payload)
		}
		since := envelope.Position{Offset: j.Offset, Epoch: j.Epoch}
		c.Close()
		for range missed {
			if _, err := m.pub.ToDurableRoom(context.Background(), room, env); err != nil {
				b.Fatal(err)
			}
		}
		c = wstest.Dial(b, m.a.URL)
		cid := "r" + strconv.Itoa(i)
		b.StartTimer()
		start := time.Now()
		c.Send(b, envelope.TypeJoin, envelope.Meta{CorrelationID: cid}, envelope.RoomPayload{Room: room, Since: &since})
		n := 0
		for {
			raw, ok := c.NextRaw(wait)
			if !ok {
				b.Fatal("replay stalled")
			}
			e, err := envelope.Decode(raw, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			if e.Type == envelope.TypeJoined {
				break
			}
			n++
		}
		took = append(took, time.Since(start))
		b.StopTimer()
		if n != missed {
			b.Fatalf("replayed %d, want %d", n, missed)
		}
		c.Close()
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms/1000-missed")
}

// newDurableMeshB is newDurableMesh for benchmarks.
func newDurableMeshB(b *testing.B) *durableMesh {
	b.Helper()
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = -1
	cfg.Presence = nil // not under measurement
	return newDurableMesh(b, cfg)
}
