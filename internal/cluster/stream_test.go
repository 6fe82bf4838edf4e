//go:build cluster

package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// streamReader reads one response stream into a buffer.
type streamReader struct {
	c    *client.Client
	mu   sync.Mutex
	text strings.Builder
	err  error // the end: io.EOF when done
	done chan struct{}
}

func readStreamVia(t *testing.T, url, user, id string) *streamReader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, url, client.Options{
		User:      user,
		Reconnect: &client.Backoff{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s, err := c.Stream(ctx, id, 0)
	if err != nil {
		t.Fatalf("%s: stream %s: %v", user, id, err)
	}
	r := &streamReader{c: c, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			ch, err := s.Next(context.Background())
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			r.text.WriteString(ch.Text)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *streamReader) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.text.Len()
}

// testStreamResume: a service writes a response stream (replicated three
// times) token by token; the edge A of one reader dies (SIGKILL; restarted
// afterwards); the reader comes back 3 s later through edge B, joins the
// stream again from its offset and reads the whole text exactly once.
// Another reader stays on edge B. With killNode, edge A lives and the
// reader is only cut off from it, while the NATS node leading the streams
// stream is killed: the writer's acknowledged, deduplicated retries lose
// and double nothing.
func testStreamResume(t *testing.T, c *Cluster, fig *figures, killNode bool) {
	a, b := c.edges[0], c.edges[1]
	const total = 1500
	pubNC, err := nats.Connect(c.urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer pubNC.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := worker.NewPublisher(pubNC, envelope.DefaultNamespace).OpenStream(ctx, worker.StreamTo{User: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	path := a.url[strings.Index(a.url[len("ws://"):], "/")+len("ws://"):]
	f := startFront(t, a.addr)
	mover := readStreamVia(t, "ws://"+f.addr()+path, "reader", w.ID())
	stayer := readStreamVia(t, b.url, "reader", w.ID())

	var want strings.Builder
	wrote := make(chan error, 1)
	var written sync.WaitGroup
	written.Add(1)
	go func() {
		defer written.Done()
		for i := range total {
			tok := fmt.Sprintf("t%d ", i)
			want.WriteString(tok)
			if _, err := w.WriteString(tok); err != nil {
				wrote <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			time.Sleep(4 * time.Millisecond)
		}
		wrote <- w.Close()
	}()

	testenv.Eventually(t, wait, "text before the outage", func() bool { return mover.len() >= 1000 })
	f.route(true) // the outage: reconnects are refused
	cut := time.Now()
	if !killNode {
		sigkill(t, a.proc)
		defer restartEdge(t, c, a)
	} else {
		s1 := connectNode(t, c.live()[0])
		js, err := jetstream.New(s1)
		if err != nil {
			t.Fatal(err)
		}
		victim := c.live()[1]
		moveLeader(t, s1, js, "natter_streams", victim.name)
		sigkill(t, victim.proc)
		victim.dead = true
		defer restartNode(t, c, victim)
		t.Logf("killed %s, the natter_streams leader, %s into the outage", victim.name, time.Since(cut).Round(time.Millisecond))
	}
	time.Sleep(3*time.Second - time.Since(cut))
	f.route(false, b.addr) // back, through the other edge
	back := time.Now()

	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the writer did not finish")
	}
	written.Wait()
	for name, r := range map[string]*streamReader{"mover": mover, "stayer": stayer} {
		select {
		case <-r.done:
		case <-time.After(wait):
			t.Fatalf("%s: no end within %s (read %d bytes of %d)", name, wait, r.len(), want.Len())
		}
		r.mu.Lock()
		got, end := r.text.String(), r.err
		r.mu.Unlock()
		if end == nil || end.Error() != "EOF" {
			t.Fatalf("%s: end %v", name, end)
		}
		if got != want.String() {
			i := 0
			for i < len(got) && i < want.Len() && got[i] == want.String()[i] {
				i++
			}
			t.Fatalf("%s: %d bytes, want %d; first difference at %d: %q vs %q", name, len(got), want.Len(), i,
				got[i:min(len(got), i+20)], want.String()[i:min(want.Len(), i+20)])
		}
	}
	what := "edge A SIGKILLed, reader back 3 s later through edge B"
	if killNode {
		what = "reader cut off from edge A for 3 s, back through edge B, the streams stream's leader node killed meanwhile"
	}
	fig.add("response stream of %d tokens, %s: both readers got the whole text exactly once; the writer finished %s after the route came back",
		total, what, time.Since(back).Round(time.Millisecond))
}
