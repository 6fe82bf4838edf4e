package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// workMsgs is how many messages the work stream holds (no worker consumes
// them in these tests).
func (m *mesh) workMsgs(t *testing.T) uint64 {
	t.Helper()
	return testenv.StreamMsgs(t, m.NC, envelope.DefaultNamespace.WorkStream())
}

// SendDurable returns once the work stream has the message; a resend with
// the same key is stored once; a send made while the edge is away is
// stored once it is back.
func TestSendDurableAcrossEdgeRestart(t *testing.T) {
	m := newMesh(t)
	cfg := m.devEdge(t)
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, cfg)
	st := newStates()
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	a1, err := c.SendDurable(ctx, "job.run", map[string]int{"n": 1}, client.WithIdempotencyKey("order-1"))
	if err != nil || a1.Seq == 0 || a1.Duplicate {
		t.Fatalf("first send: %+v %v", a1, err)
	}
	a2, err := c.SendDurable(ctx, "job.run", map[string]int{"n": 1}, client.WithIdempotencyKey("order-1"))
	if err != nil || !a2.Duplicate || a2.Seq != a1.Seq {
		t.Fatalf("resend: %+v %v, first %+v", a2, err, a1)
	}
	// Errors that no resend fixes return at once.
	if _, err := c.SendDurable(ctx, "job.run", 1, client.WithIdempotencyKey("has space")); !errors.Is(err, envelope.ErrInvalidMeta) {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := c.SendDurable(ctx, "echo", 1); rpc.FromError(err).Code != envelope.CodeFailedPrecondition {
		t.Fatalf("a type that is not durable: %v", err)
	}

	first.stop()
	st.await(t, client.StateReconnecting)
	type result struct {
		a   envelope.Accepted
		err error
	}
	done := make(chan result, 1)
	go func() {
		a, err := c.SendDurable(ctx, "job.run", map[string]int{"n": 2})
		done <- result{a, err}
	}()
	time.Sleep(300 * time.Millisecond) // the send waits for the edge
	select {
	case r := <-done:
		t.Fatalf("returned with no edge: %+v %v", r.a, r.err)
	default:
	}
	serveEdgeAt(t, addr, cfg)
	r := <-done
	if r.err != nil || r.a.Seq <= a1.Seq || r.a.Duplicate {
		t.Fatalf("send across the restart: %+v %v", r.a, r.err)
	}
	if n := m.workMsgs(t); n != 2 {
		t.Fatalf("the work stream holds %d messages, want 2", n)
	}
}

// SendDurable waits out RESOURCE_EXHAUSTED with a retry delay (here the
// connection's rate limit) and resends with the same key: every message
// is stored once.
func TestSendDurableWaitsOutTheRateLimit(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	cfg := m.devEdge(t)
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
	cfg.Limits.MessageRate, cfg.Limits.MessageBurst = 5, 1 // 10 sends need 2 s: some are refused however slow the machine
	e := testenv.StartEdge(t, cfg)
	c := dial(t, e.URL, client.Options{User: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seqs := map[uint64]bool{}
	for i := range 10 {
		a, err := c.SendDurable(ctx, "job.run", map[string]int{"n": i})
		if err != nil || a.Duplicate || seqs[a.Seq] {
			t.Fatalf("send %d: %+v %v", i, a, err)
		}
		seqs[a.Seq] = true
	}
	if n := m.workMsgs(t); n != 10 {
		t.Fatalf("the work stream holds %d messages, want 10", n)
	}
	if s := e.Stats(); s.RateLimited == 0 {
		t.Fatalf("no send was refused by the rate limit: nothing was retried")
	}
}
