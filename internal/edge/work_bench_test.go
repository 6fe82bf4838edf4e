package edge_test

// The cost of durable messages, measured in one run against one embedded
// nats-server (file storage), one edge and one worker, with a real
// WebSocket client sending one message at a time:
//
//   - plain: a message of a plain type, from the client's write to the
//     worker's handler (a core publish on natter.in.<type>, queue group);
//   - durable: a message of a durable type, from the client's write to the
//     worker's handler (stored in natter_work, pulled by the consumer);
//   - durable-accepted: from the client's write to its read of
//     $ws:accepted (stored and acknowledged by the stream).
//
// It reports the median and the 99th percentile.
//
//	go test -run='^$' -bench=ClientToWorker -benchtime=2000x -count=5 ./internal/edge

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

func BenchmarkClientToWorker(b *testing.B) {
	for _, mode := range []string{"plain", "durable", "durable-accepted"} {
		b.Run(mode, func(b *testing.B) {
			srv := testenv.NATS(b)
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = testenv.Connect(b, srv.ClientURL())
			cfg.Auth.DevMode = true
			// Loosens production: one user sends as fast as it can.
			cfg.Limits.MessageRate, cfg.Limits.UserMessageRate = -1, 0
			cfg.Presence = nil // not under measurement
			cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
			e := testenv.StartEdge(b, cfg)
			w, err := worker.New(testenv.Connect(b, srv.ClientURL()), worker.Config{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = w.Drain(context.Background()) })
			handled := make(chan struct{}, 1)
			h := func(context.Context, *worker.Message) error { handled <- struct{}{}; return nil }
			typ := "job.run"
			if mode == "plain" {
				typ = "plain.run"
				err = w.Handle(typ, h)
			} else {
				err = w.HandleDurable(context.Background(), typ, h, worker.DurableOptions{})
			}
			if err != nil {
				b.Fatal(err)
			}
			if err := w.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
			c := wstest.Dial(b, e.URL+"?user=bench")
			payload := map[string]int{"n": 1}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				meta := envelope.Meta{}
				if mode != "plain" {
					meta.Extra = map[string]json.RawMessage{envelope.MetaIdempotencyKey: json.RawMessage(`"k` + strconv.Itoa(i) + `"`)}
				}
				if mode == "durable-accepted" {
					meta.CorrelationID = "c" + strconv.Itoa(i)
				}
				start := time.Now()
				c.Send(b, typ, meta, payload)
				if mode == "durable-accepted" {
					if got := c.Next(b, wait); got.Type != envelope.TypeAccepted {
						b.Fatalf("got %s %s", got.Type, got.Payload)
					}
					lat = append(lat, time.Since(start))
				}
				select {
				case <-handled:
				case <-time.After(wait):
					b.Fatal("not handled")
				}
				if mode != "durable-accepted" {
					lat = append(lat, time.Since(start))
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
