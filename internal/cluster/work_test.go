//go:build cluster

package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/worker"
)

// testDurableMessagesNodeKilled: a client sends durable messages (job.run,
// stored in the R3 work queue natter_work) one after another while the
// queue's leader node is SIGKILLed. Every send returns accepted (the
// client resends with the same key through the election), and a worker
// handles every accepted message; the queue ends empty.
func testDurableMessagesNodeKilled(t *testing.T, c *Cluster, fig *figures) {
	const total = 400
	wnc, err := nats.Connect(c.urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer wnc.Close()
	w, err := worker.New(wnc, worker.Config{Queue: "cluster-jobs", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handled := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	err = w.HandleDurable(ctx, "job.run", func(_ context.Context, m *worker.Message) error {
		key, _ := m.Envelope.Meta.IdempotencyKey()
		mu.Lock()
		handled[key]++
		mu.Unlock()
		return nil
	}, worker.DurableOptions{AckWait: 2 * time.Second})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = w.Drain(ctx)
	}()

	dctx, dcancel := context.WithTimeout(context.Background(), wait)
	cl, err := client.Dial(dctx, c.edges[1].url, client.Options{User: "sender", Logger: slog.New(slog.DiscardHandler)})
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	type sent struct {
		slowest    time.Duration
		duplicates int
		err        error
	}
	accepted := make(chan int, total)
	done := make(chan sent, 1)
	go func() {
		var s sent
		for i := range total {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			a, err := cl.SendDurable(ctx, "job.run", map[string]int{"n": i}, client.WithIdempotencyKey(fmt.Sprintf("job-%d", i)))
			cancel()
			if err != nil {
				s.err = fmt.Errorf("send %d: %w", i, err)
				break
			}
			s.slowest = max(s.slowest, time.Since(start))
			if a.Duplicate {
				s.duplicates++
			}
			accepted <- i
			time.Sleep(5 * time.Millisecond)
		}
		done <- s
	}()
	for range 100 {
		select {
		case <-accepted:
		case <-time.After(wait):
			t.Fatal("100 durable messages not accepted before the kill")
		}
	}
	s1 := connectNode(t, c.live()[0])
	js, err := jetstream.New(s1)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.live()[1]
	moveLeader(t, s1, js, "natter_work", victim.name)
	sigkill(t, victim.proc)
	victim.dead = true
	killed := time.Now()
	defer restartNode(t, c, victim) // the later tests need three nodes
	t.Logf("killed %s, the natter_work leader", victim.name)

	var s sent
	select {
	case s = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the sender did not finish")
	}
	if s.err != nil {
		t.Fatal(s.err)
	}
	testenv.Eventually(t, 30*time.Second, "every accepted message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == total
	})
	twice := 0
	mu.Lock()
	for _, n := range handled {
		if n > 1 {
			twice++
		}
	}
	mu.Unlock()
	testenv.Eventually(t, 30*time.Second, "an empty work queue", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, "natter_work")
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	fig.add("durable messages, natter_work leader node killed after 100 of %d sends: all accepted (slowest send %s, %d resends found stored already), all handled %s after the kill, %d handled twice (at least once)",
		total, s.slowest.Round(time.Millisecond), s.duplicates, time.Since(killed).Round(time.Millisecond), twice)
}
