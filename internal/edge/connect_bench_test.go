package edge_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// BenchmarkConnectJoin measures connection set-up (WebSocket handshake,
// $join, $joined) with presence off and on, against one NATS server in one
// run. Each op is one connection with a user id, joined to one of 100
// rooms, then closed. Clients run in this process, so CPU is shared; the
// ratio between the two is the figure to read.
//
//	go test -run '^$' -bench BenchmarkConnectJoin -benchtime 3000x ./internal/edge
func BenchmarkConnectJoin(b *testing.B) {
	srv := testenv.NATS(b)
	for _, on := range []bool{false, true} {
		name := "presence=off"
		if on {
			name = "presence=on"
		}
		b.Run(name, func(b *testing.B) {
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = testenv.Connect(b, srv.ClientURL())
			cfg.Auth.DevMode = true
			if !on {
				cfg.Presence = nil
			}
			// Loosens production limits: one client IP opens every
			// connection, as fast as it can.
			cfg.Limits.MessageRate = -1
			cfg.Limits.HandshakeRate = 0
			e := testenv.StartEdge(b, cfg)
			var n atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					c, err := wstest.DialErr(e.URL+"?user=u"+itoa(i%1000), nil)
					if err != nil {
						b.Error(err)
						return
					}
					room := "room" + itoa(i%100)
					c.Send(b, envelope.TypeJoin, envelope.Meta{CorrelationID: "j"}, envelope.RoomPayload{Room: room})
					if _, ok := c.NextRaw(10 * time.Second); !ok {
						b.Error("no $joined")
					}
					c.Close()
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
		})
	}
}

func itoa(i int64) string {
	if i == 0 {
		return "0"
	}
	var buf [20]byte
	p := len(buf)
	for ; i > 0; i /= 10 {
		p--
		buf[p] = byte('0' + i%10)
	}
	return string(buf[p:])
}
