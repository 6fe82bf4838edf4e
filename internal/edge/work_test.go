package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// workMesh is a mesh whose edge has job.* as durable types.
type workMesh struct{ *mesh }

func newWorkMesh(t *testing.T, cfg edge.Config) *workMesh {
	t.Helper()
	if cfg.DurableMessages == nil {
		cfg.DurableMessages = edge.DefaultDurableMessagesConfig()
	}
	cfg.DurableMessages.Types = []string{"job.*"}
	return &workMesh{newMesh(t, cfg)}
}

// handled is what a durable handler saw of one message.
type handled struct {
	user, key string
	attempt   int
	n         int
}

// durableWorker starts a worker handling typ durably with h, after which
// it records the message unless h failed.
func (m *workMesh) durableWorker(t *testing.T, typ string, opts worker.DurableOptions, h worker.Handler) (<-chan handled, *worker.Worker) {
	t.Helper()
	w, err := worker.New(testenv.Connect(t, m.URL), worker.Config{Logger: testenv.Logger(t), Queue: "jobs"})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan handled, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err = w.HandleDurable(ctx, typ, func(ctx context.Context, msg *worker.Message) error {
		if h != nil {
			if err := h(ctx, msg); err != nil {
				return err
			}
		}
		key, _ := msg.Envelope.Meta.IdempotencyKey()
		var p struct{ N int }
		_ = json.Unmarshal(msg.Envelope.Payload, &p)
		out <- handled{user: msg.User, key: key, attempt: msg.Attempt, n: p.N}
		return nil
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Drain(ctx)
	})
	return out, w
}

// sendDurable sends a durable request with meta.idempotencyKey (none when
// key is "") and returns the answer.
func sendDurable(t *testing.T, c *wstest.Client, typ, cid, key string, n int) *envelope.Envelope {
	t.Helper()
	meta := envelope.Meta{CorrelationID: cid}
	if key != "" {
		meta.Extra = map[string]json.RawMessage{envelope.MetaIdempotencyKey: wstest.JSON(t, key)}
	}
	c.Send(t, typ, meta, map[string]int{"n": n})
	return c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid })
}

func accepted(t *testing.T, got *envelope.Envelope) envelope.Accepted {
	t.Helper()
	var a envelope.Accepted
	if got.Type != envelope.TypeAccepted {
		t.Fatalf("got %s %s, want %s", got.Type, got.Payload, envelope.TypeAccepted)
	}
	if err := json.Unmarshal(got.Payload, &a); err != nil || a.Seq == 0 {
		t.Fatalf("accepted payload %s: %v", got.Payload, err)
	}
	return a
}

func collect(t *testing.T, ch <-chan handled, n int) []handled {
	t.Helper()
	var got []handled
	for len(got) < n {
		select {
		case h := <-ch:
			got = append(got, h)
		case <-time.After(wait):
			t.Fatalf("handled %d of %d: %+v", len(got), n, got)
		}
	}
	return got
}

// TestDurableTypeStoredDeduplicatedHandled: a durable message is stored
// before any worker runs, answered $ws:accepted, deduplicated per user by
// its idempotency key, and handled once a worker starts.
func TestDurableTypeStoredDeduplicatedHandled(t *testing.T) {
	t.Parallel()
	m := newWorkMesh(t, edge.DefaultConfig())
	alice, bob := m.dial(t, "alice"), m.dial(t, "bob")

	// No worker yet: still accepted, not UNAVAILABLE as a request would be.
	first := accepted(t, sendDurable(t, alice, "job.run", "a1", "order-1", 1))
	if first.Duplicate {
		t.Fatalf("first send reported duplicate: %+v", first)
	}
	// The client's resend (a reconnect, a lost answer) is stored once.
	again := accepted(t, sendDurable(t, alice, "job.run", "a2", "order-1", 1))
	if !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("resend: %+v, first %+v", again, first)
	}
	// Keys belong to their user: bob's order-1 is another message.
	if b := accepted(t, sendDurable(t, bob, "job.run", "b1", "order-1", 2)); b.Duplicate || b.Seq == first.Seq {
		t.Fatalf("bob's order-1: %+v", b)
	}
	// Without a key, and without a correlationId: stored, no answer.
	alice.Send(t, "job.run", envelope.Meta{}, map[string]int{"n": 3})
	// A durable message is never a worker's request, and a plain type is
	// untouched: echo still answers.
	if got := alice.Request(t, "echo", "hi", wait); got.Type != "echo" {
		t.Fatalf("echo: %s %s", got.Type, got.Payload)
	}
	// Bad keys are refused before anything is stored.
	for _, key := range []json.RawMessage{wstest.JSON(t, 7), wstest.JSON(t, ""), wstest.JSON(t, "has space"), wstest.JSON(t, strings.Repeat("k", 129))} {
		alice.Send(t, "job.run", envelope.Meta{CorrelationID: "bad", Extra: map[string]json.RawMessage{envelope.MetaIdempotencyKey: key}}, map[string]int{"n": 9})
		got := alice.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "bad" })
		assertRPCError(t, got, envelope.CodeInvalidArgument)
	}

	ch, _ := m.durableWorker(t, "job.run", worker.DurableOptions{}, nil)
	got := collect(t, ch, 3)
	seen := map[string]int{}
	for _, h := range got {
		seen[fmt.Sprintf("%s/%s/%d", h.user, h.key, h.n)]++
		if h.attempt != 1 {
			t.Errorf("attempt %d, want 1: %+v", h.attempt, h)
		}
	}
	want := map[string]int{"alice/order-1/1": 1, "bob/order-1/2": 1, "alice//3": 1}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("handled %v, want %v", seen, want)
	}
	select {
	case h := <-ch:
		t.Fatalf("handled more than sent: %+v", h)
	case <-time.After(300 * time.Millisecond):
	}
	s := m.Edge.Stats()
	if s.WorkStored != 4 || s.WorkDuplicates != 1 || s.WorkRefused != 0 {
		t.Fatalf("stats stored %d duplicates %d refused %d, want 4 1 0", s.WorkStored, s.WorkDuplicates, s.WorkRefused)
	}
	// Acknowledged work leaves the work queue.
	testenv.Eventually(t, wait, "an empty work stream", func() bool { return workMsgs(t, m.NC) == 0 })
}

// workMsgs is how many messages the work stream holds.
func workMsgs(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	return testenv.StreamMsgs(t, nc, envelope.DefaultNamespace.WorkStream())
}

// TestDurableTypeFullStreamRefusesLosesNothing: with workers behind and
// the stream full, a client is told RESOURCE_EXHAUSTED, and every message
// it was told was accepted is handled.
func TestDurableTypeFullStreamRefusesLosesNothing(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig()
	cfg.DurableMessages.MaxBytes = 4096
	m := newWorkMesh(t, cfg)
	c := m.dial(t, "alice")
	var kept []int
	for n := 1; ; n++ {
		got := sendDurable(t, c, "job.run", fmt.Sprintf("c%d", n), fmt.Sprintf("k%d", n), n)
		if got.Type == envelope.TypeAccepted {
			kept = append(kept, n)
			continue
		}
		assertRPCError(t, got, envelope.CodeResourceExhausted)
		var p envelope.ErrorPayload
		_ = json.Unmarshal(got.Payload, &p)
		if p.RetryAfterMs <= 0 {
			t.Fatalf("RESOURCE_EXHAUSTED without retryAfterMs: %s", got.Payload)
		}
		break
	}
	if len(kept) < 5 {
		t.Fatalf("only %d messages fit 4 KiB", len(kept))
	}
	if s := m.Edge.Stats(); s.WorkRefused != 1 {
		t.Fatalf("WorkRefused %d, want 1", s.WorkRefused)
	}
	ch, _ := m.durableWorker(t, "job.run", worker.DurableOptions{}, nil)
	got := collect(t, ch, len(kept))
	done := map[int]bool{}
	for _, h := range got {
		done[h.n] = true
	}
	for _, n := range kept {
		if !done[n] {
			t.Fatalf("accepted message %d not handled; handled %v", n, done)
		}
	}
	// Room again once the workers caught up (their acks processed).
	testenv.Eventually(t, wait, "an empty work stream", func() bool { return workMsgs(t, m.NC) == 0 })
	accepted(t, sendDurable(t, c, "job.run", "after", "k-after", 0))
}

// TestDurableTypeRetriesAndDrops: a handler's transient error or panic
// retries the message, with Attempt counting; a client's error drops it.
func TestDurableTypeRetriesAndDrops(t *testing.T) {
	t.Parallel()
	m := newWorkMesh(t, edge.DefaultConfig())
	var mu sync.Mutex
	attempts := map[int][]int{}
	ch, _ := m.durableWorker(t, "job.run", worker.DurableOptions{Backoff: 20 * time.Millisecond, MaxAttempts: 3}, func(_ context.Context, msg *worker.Message) error {
		var p struct{ N int }
		_ = json.Unmarshal(msg.Envelope.Payload, &p)
		mu.Lock()
		attempts[p.N] = append(attempts[p.N], msg.Attempt)
		mu.Unlock()
		switch {
		case p.N == 1 && msg.Attempt == 1:
			return rpc.Errorf(envelope.CodeUnavailable, "database down")
		case p.N == 2 && msg.Attempt < 3:
			panic("bug that a deploy fixes")
		case p.N == 3:
			return rpc.Errorf(envelope.CodeInvalidArgument, "no such product")
		case p.N == 4:
			return errors.New("always fails")
		}
		return nil
	})
	c := m.dial(t, "alice")
	for n := 1; n <= 5; n++ {
		accepted(t, sendDurable(t, c, "job.run", fmt.Sprintf("c%d", n), fmt.Sprintf("k%d", n), n))
	}
	got := collect(t, ch, 3) // 1, 2 and 5 succeed in the end
	done := map[int]int{}
	for _, h := range got {
		done[h.n] = h.attempt
	}
	if fmt.Sprint(done) != fmt.Sprint(map[int]int{1: 2, 2: 3, 5: 1}) {
		t.Fatalf("succeeded (n: attempt) %v", done)
	}
	// 4 fails all 3 attempts and stays in the stream; 3 is dropped after one.
	testenv.Eventually(t, wait, "4 attempted 3 times", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts[4]) == 3
	})
	// 1, 2, 3 and 5 leave the stream; 4 stays there after its last attempt.
	testenv.Eventually(t, wait, "one message left in the work stream", func() bool { return workMsgs(t, m.NC) == 1 })
	time.Sleep(300 * time.Millisecond) // a further attempt would come within a backoff (at most 80 ms)
	mu.Lock()
	defer mu.Unlock()
	if len(attempts[3]) != 1 || len(attempts[4]) != 3 {
		t.Fatalf("attempts %v: 3 once, 4 three times", attempts)
	}
}

// TestDurableTypeSlowHandlersNoRedelivery: messages waiting for one of a
// worker's few handler slots are not redelivered meanwhile, however long
// the handlers take beyond the ack wait: each is handled once, at its
// first attempt.
func TestDurableTypeSlowHandlersNoRedelivery(t *testing.T) {
	m := newWorkMesh(t, edge.DefaultConfig())
	c := m.dial(t, "alice")
	const total = 8
	for n := 1; n <= total; n++ {
		accepted(t, sendDurable(t, c, "job.run", fmt.Sprintf("c%d", n), fmt.Sprintf("k%d", n), n))
	}
	w, err := worker.New(testenv.Connect(t, m.URL), worker.Config{Logger: testenv.Logger(t), MaxConcurrent: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Drain(context.Background()) })
	var mu sync.Mutex
	seen := map[int][]int{}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// 8 messages, 2 at a time, 600 ms each: the last ones wait 1.8 s, past
	// the 1 s ack wait.
	err = w.HandleDurable(ctx, "job.run", func(_ context.Context, msg *worker.Message) error {
		var p struct{ N int }
		_ = json.Unmarshal(msg.Envelope.Payload, &p)
		mu.Lock()
		seen[p.N] = append(seen[p.N], msg.Attempt)
		mu.Unlock()
		time.Sleep(600 * time.Millisecond) // a slow handler: outlasting the ack wait is the point
		return nil
	}, worker.DurableOptions{AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.HandleDurable(ctx, "job.run", func(context.Context, *worker.Message) error { return nil }, worker.DurableOptions{}); err == nil {
		t.Error("a second HandleDurable of the same type was accepted")
	}
	testenv.Eventually(t, 10*time.Second, "every message handled and acknowledged", func() bool { return workMsgs(t, m.NC) == 0 })
	time.Sleep(time.Second) // a redelivery would come within the ack wait
	mu.Lock()
	defer mu.Unlock()
	for n := 1; n <= total; n++ {
		if fmt.Sprint(seen[n]) != "[1]" {
			t.Errorf("message %d handled at attempts %v, want once at 1", n, seen[n])
		}
	}
}

// TestDurableTypeKeysPerTypeAndFullSizeFrames: a key is one user's for one
// type, and a frame at the edge's size limit is stored whatever the
// headers (identity, message id) add to it.
func TestDurableTypeKeysPerTypeAndFullSizeFrames(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.MaxMessageSize = 2048
	m := newWorkMesh(t, cfg)
	user := strings.Repeat("u", 128)
	c := m.dial(t, user)
	key := strings.Repeat("k", envelope.MaxIdempotencyKey)
	run := accepted(t, sendDurable(t, c, "job.run", "a", key, 1))
	other := accepted(t, sendDurable(t, c, "job.other", "b", key, 1))
	if other.Duplicate || other.Seq == run.Seq {
		t.Fatalf("the same key on another type: %+v, first %+v", other, run)
	}
	// A frame of exactly 2048 bytes.
	meta := envelope.Meta{CorrelationID: "full", Extra: map[string]json.RawMessage{envelope.MetaIdempotencyKey: wstest.JSON(t, strings.Repeat("f", envelope.MaxIdempotencyKey))}}
	frame := func(pad int) []byte {
		env, _ := envelope.New("job.run", map[string]string{"pad": strings.Repeat("x", pad)})
		env.Meta = meta
		b, _ := envelope.Encode(env)
		return b
	}
	pad := 2048 - len(frame(0))
	if b := frame(pad); len(b) != 2048 {
		t.Fatalf("frame of %d bytes", len(b))
	}
	c.SendRaw(t, 1, frame(pad)) // 1: a text frame
	accepted(t, c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "full" }))
}

// TestDurableTypeStreamDeletedIsRecreated: with the work stream deleted
// (by an operator), durable messages get UNAVAILABLE with retryAfterMs,
// and the edge re-creates the stream, so that a resend is stored.
func TestDurableTypeStreamDeletedIsRecreated(t *testing.T) {
	t.Parallel()
	m := newWorkMesh(t, edge.DefaultConfig())
	ch, _ := m.durableWorker(t, "job.run", worker.DurableOptions{}, nil)
	c := m.dial(t, "alice")
	accepted(t, sendDurable(t, c, "job.run", "before", "k0", 0))
	collect(t, ch, 1)
	js, err := jetstream.New(m.NC)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(t.Context(), envelope.DefaultNamespace.WorkStream()); err != nil {
		t.Fatal(err)
	}
	got := sendDurable(t, c, "job.run", "during", "k1", 1)
	assertRPCError(t, got, envelope.CodeUnavailable)
	var p envelope.ErrorPayload
	if err := json.Unmarshal(got.Payload, &p); err != nil || p.RetryAfterMs <= 0 {
		t.Fatalf("UNAVAILABLE without retryAfterMs: %s", got.Payload)
	}
	for try := 0; ; try++ {
		got := sendDurable(t, c, "job.run", fmt.Sprintf("again%d", try), "k1", 1)
		if got.Type == envelope.TypeAccepted {
			break
		}
		if try == 20 {
			t.Fatalf("still not stored: %s %s", got.Type, got.Payload)
		}
		time.Sleep(time.Duration(p.RetryAfterMs) * time.Millisecond) // as a client must: retryAfterMs paces the retry
	}
	// The worker re-creates its consumer on the new stream, once its
	// waiting pull (5 s) ended and a new one found nobody answering.
	select {
	case h := <-ch:
		if h.key != "k1" {
			t.Fatalf("handled %+v, want k1", h)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the message stored in the re-created stream was not handled")
	}
}

// TestDurableTypeIdleHoldsNoSlot: a worker with one handler slot and an
// idle durable type still answers its plain requests at once (an idle
// durable pull holds no slot), and handles the durable messages too.
func TestDurableTypeIdleHoldsNoSlot(t *testing.T) {
	t.Parallel()
	m := newWorkMesh(t, edge.DefaultConfig())
	w, err := worker.New(testenv.Connect(t, m.URL), worker.Config{Logger: testenv.Logger(t), MaxConcurrent: 1, Queue: "one-slot"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Drain(context.Background()) })
	jobs := make(chan int, 10)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := w.HandleDurable(ctx, "job.run", func(_ context.Context, msg *worker.Message) error {
		var p struct{ N int }
		_ = json.Unmarshal(msg.Envelope.Payload, &p)
		jobs <- p.N
		return nil
	}, worker.DurableOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Handle("slot.ping", func(_ context.Context, msg *worker.Message) error { return msg.Reply("slot.pong", nil) }); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c := m.dial(t, "alice")
	for i := range 5 {
		// 1 s is far more than a ping takes, and far less than the 5 s
		// an idle durable pull would hold the only slot.
		cid := fmt.Sprintf("p%d", i)
		c.Send(t, "slot.ping", envelope.Meta{CorrelationID: cid, TimeoutMs: 1000}, nil)
		if got := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid }); got.Type != "slot.pong" {
			t.Fatalf("ping %d: %s %s", i, got.Type, got.Payload)
		}
		time.Sleep(300 * time.Millisecond) // a quiet spell, so that the durable pull is idle when the next message comes: the case under test
		accepted(t, sendDurable(t, c, "job.run", fmt.Sprintf("j%d", i), fmt.Sprintf("k%d", i), i))
		select {
		case n := <-jobs:
			if n != i {
				t.Fatalf("job %d handled, want %d", n, i)
			}
		case <-time.After(wait):
			t.Fatalf("job %d not handled", i)
		}
	}
}
