package edge_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// connID learns a client's connection id the way a worker does: from the
// Natter-Conn header of a message it sends.
func connID(t *testing.T, nc *nats.Conn, c *wstest.Client) string {
	t.Helper()
	sub, err := nc.SubscribeSync("natter.in.whoami")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()
	c.Send(t, "whoami", envelope.Meta{}, nil)
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatal(err)
	}
	return msg.Header.Get(envelope.HeaderConn)
}

// A write deadline left over from an earlier write must not fail the pong
// to a client's own ping after a quiet spell.
func TestClientPingAfterQuietSpell(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.WriteTimeout = 200 * time.Millisecond
	m := newMesh(t, cfg)
	c := m.dial(t, "")
	c.Request(t, envelope.TypeHeartbeat, nil, wait)
	time.Sleep(600 * time.Millisecond) // past the old deadline, on purpose
	if err := c.Conn.WritePing([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if got := c.Request(t, envelope.TypeHeartbeat, nil, wait); got.Type != envelope.TypeHeartbeatAck {
		t.Fatalf("after ping: %s", got.Type)
	}
	if c.Closed() {
		t.Fatal("connection closed after the client pinged")
	}
}

// A client that always has frames queued is still pinged, answers, and is
// not taken for a dead peer.
func TestBusyReaderIsPinged(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.PingInterval = 100 * time.Millisecond
	cfg.WebSocket.PongTimeout = 300 * time.Millisecond
	m := newMesh(t, cfg)
	c := m.dial(t, "busy")
	testenv.Eventually(t, wait, "connected", func() bool { return m.Edge.Stats().Connections == 1 })
	payload := []byte(`{"type":"tick","payload":"` + strings.Repeat("x", 2000) + `"}`)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = m.NC.Publish("natter.out.user.busy", payload)
			time.Sleep(time.Millisecond) // paces the load: a steady stream, not one burst
		}
	}()
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) && !c.Closed() {
		c.NextRaw(50 * time.Millisecond)
	}
	close(stop)
	<-done
	if c.Closed() {
		t.Fatalf("busy reader closed with %d", c.CloseCode())
	}
}

// A valid envelope larger than the write queue bound is delivered to a
// client that keeps up.
func TestLargeFrameFitsEmptyQueue(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.WriteQueueBytes = 4096
	m := newMesh(t, cfg)
	c := m.dial(t, "big")
	// A round trip through NATS from the edge: its user subscription, sent
	// before, is on the server once the reply is back.
	c.Request(t, "echo", nil, wait)
	body := `{"type":"big","payload":"` + strings.Repeat("y", 100_000) + `"}`
	if err := m.NC.Publish("natter.out.user.big", []byte(body)); err != nil {
		t.Fatal(err)
	}
	if got := c.AwaitType(t, "big", wait); len(got.Payload) != 100_002 {
		t.Fatalf("payload of %d bytes", len(got.Payload))
	}
	if m.Edge.Stats().SlowConsumerCloses != 0 {
		t.Fatal("closed as a slow consumer")
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = 10
	cfg.Limits.MessageBurst = 5
	m := newMesh(t, cfg)
	c := m.dial(t, "")
	for i := range 20 {
		c.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: "h" + string(rune('a'+i))}, nil)
	}
	acks, limited := 0, 0
	for range 20 {
		got := c.Next(t, wait)
		switch got.Type {
		case envelope.TypeHeartbeatAck:
			acks++
		case envelope.TypeRPCError:
			var p envelope.ErrorPayload
			_ = json.Unmarshal(got.Payload, &p)
			if p.Code != envelope.CodeResourceExhausted || p.RetryAfterMs <= 0 || got.Meta.CorrelationID == "" {
				t.Fatalf("limited reply: %s %s", got.Payload, got.Meta.CorrelationID)
			}
			limited++
		default:
			t.Fatalf("unexpected %s", got.Type)
		}
	}
	if acks < 5 || limited < 10 {
		t.Fatalf("acks %d, limited %d", acks, limited)
	}
	if c.Closed() {
		t.Fatal("rate-limited client was closed")
	}
}

// A client cannot reach another connection's subjects by naming its id in
// a type: natter.in.conn.<id> is not one of them.
func TestConnTypeDoesNotReachAnotherConnection(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	attacker, victim := m.dial(t, ""), m.dial(t, "")
	id := connID(t, m.NC, victim)
	start := time.Now()
	got := attacker.Request(t, "conn."+id, nil, wait)
	assertRPCError(t, got, envelope.CodeUnavailable)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %s: something answered as a responder", d)
	}
	if !victim.Quiet(100 * time.Millisecond) {
		t.Fatal("the victim got a frame")
	}
}

// The deadline the edge grants reaches the worker's handler context.
func TestGrantedDeadlineReachesWorker(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.NATS.RPCTimeout = 300 * time.Millisecond
	m := newMesh(t, cfg)
	w, err := worker.New(m.NC, worker.Config{Queue: "deadline"})
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan time.Duration, 1)
	if err := w.Handle("wait.ctx", func(ctx context.Context, _ *worker.Message) error {
		start := time.Now()
		<-ctx.Done()
		ended <- time.Since(start)
		return ctx.Err()
	}); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush(t.Context())
	c := m.dial(t, "")
	tests := []struct {
		name      string
		timeoutMs int64
		max       time.Duration
	}{
		{"edge default", 0, 2 * time.Second},              // RPCTimeout 300ms
		{"client's meta.timeoutMs", 100, 2 * time.Second}, // below the default
		{"clamped to the minimum", 1, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.Send(t, "wait.ctx", envelope.Meta{CorrelationID: tc.name, TimeoutMs: tc.timeoutMs}, nil)
			got := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == tc.name })
			assertRPCError(t, got, envelope.CodeDeadlineExceeded)
			select {
			case d := <-ended:
				if d > tc.max {
					t.Fatalf("handler context lasted %s", d)
				}
			case <-time.After(wait):
				t.Fatal("handler context never ended")
			}
		})
	}
}
