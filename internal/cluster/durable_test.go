//go:build cluster

package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
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

// durableReader is a client that records a durable room's numbered
// messages and its recoveries.
type durableReader struct {
	c          *client.Client
	mu         sync.Mutex
	got        []int
	offsets    []uint64
	recoveries []client.Recovery
	recoveryAt []time.Time
}

func dialDurable(t *testing.T, url, user, room string) *durableReader {
	t.Helper()
	r := &durableReader{}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, url, client.Options{
		User:      user,
		Reconnect: &client.Backoff{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:    slog.New(slog.DiscardHandler),
		OnRecovery: func(rec client.Recovery) {
			r.mu.Lock()
			r.recoveries = append(r.recoveries, rec)
			r.recoveryAt = append(r.recoveryAt, time.Now())
			r.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	r.c = c
	c.On("num", func(env *envelope.Envelope) {
		var p struct{ N int }
		_ = json.Unmarshal(env.Payload, &p)
		off, _ := client.OffsetOf(env)
		r.mu.Lock()
		r.got = append(r.got, p.N)
		r.offsets = append(r.offsets, off.Offset)
		r.mu.Unlock()
	})
	if err := c.Join(ctx, room); err != nil {
		t.Fatalf("%s: join %s: %v", user, room, err)
	}
	return r
}

func (r *durableReader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func (r *durableReader) last() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) == 0 {
		return -1
	}
	return r.got[len(r.got)-1]
}

// check fails unless the reader saw 0..total-1 exactly once, in order,
// with growing offsets.
func (r *durableReader) check(t *testing.T, name string, total int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, n := range r.got {
		if n != i {
			at := slices.Index(r.got, i)
			t.Errorf("%s: message %d is %d (a gap or a duplicate); around it %v, offsets %v; %d is at index %d; recoveries %+v",
				name, i, n, r.got[max(0, i-3):min(len(r.got), i+4)], r.offsets[max(0, i-3):min(len(r.got), i+4)], i, at, r.recoveries)
			return
		}
		if i > 0 && r.offsets[i] <= r.offsets[i-1] {
			t.Errorf("%s: offset of message %d is %d, not after %d", name, i, r.offsets[i], r.offsets[i-1])
			return
		}
	}
	if len(r.got) != total {
		t.Errorf("%s: got %d messages, want %d", name, len(r.got), total)
	}
}

// testDurableResume: a service publishes a steady numbered stream into a
// durable room (replicated three times). The edge A of a client dies
// (SIGKILL; restarted afterwards for the tests that follow); the client
// comes back a few seconds later through edge B, re-joins from its last
// position and sees every message exactly once, in order. Another client
// stays on edge B all along. With killNode, edge A lives and the client is
// only cut off from it, while the NATS node leading the rooms stream is
// killed (and restarted afterwards).
func testDurableResume(t *testing.T, c *Cluster, fig *figures, killNode bool) {
	a, b := c.edges[0], c.edges[1]
	room, total := "dur-resume", 1500
	if killNode {
		room = "dur-nodekill"
	}
	path := a.url[strings.Index(a.url[len("ws://"):], "/")+len("ws://"):]
	f := startFront(t, a.addr)
	mover := dialDurable(t, "ws://"+f.addr()+path, "mover", room)
	stayer := dialDurable(t, b.url, "stayer", room)

	pubNC, err := nats.Connect(c.urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer pubNC.Close()
	pub := worker.NewPublisher(pubNC, envelope.DefaultNamespace)
	pubDone := make(chan error, 1)
	var retried time.Duration
	go func() {
		for i := range total {
			env, _ := envelope.New("num", map[string]int{"n": i})
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			start := time.Now()
			_, err := pub.ToDurableRoom(ctx, room, env)
			cancel()
			if err != nil {
				pubDone <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
			retried = max(retried, time.Since(start))
			time.Sleep(4 * time.Millisecond)
		}
		pubDone <- nil
	}()

	testenv.Eventually(t, wait, "200 messages before the outage", func() bool { return mover.count() >= 200 })
	f.route(true) // the outage: reconnects are refused
	cut := time.Now()
	if !killNode {
		sigkill(t, a.proc) // the mover's edge dies
		defer restartEdge(t, c, a)
	}
	var victim *natsNode
	if killNode {
		s1 := connectNode(t, c.live()[0])
		js, err := jetstream.New(s1)
		if err != nil {
			t.Fatal(err)
		}
		victim = c.live()[1]
		moveLeader(t, s1, js, "natter_rooms", victim.name)
		sigkill(t, victim.proc)
		victim.dead = true
		defer restartNode(t, c, victim) // even when this test fails: the later tests need three nodes
		t.Logf("killed %s, the natter_rooms leader, %s into the outage", victim.name, time.Since(cut).Round(time.Millisecond))
	}
	time.Sleep(3*time.Second - time.Since(cut))
	f.route(false, b.addr) // back, through the other edge
	back := time.Now()

	testenv.Eventually(t, wait, "the mover recovered", func() bool {
		mover.mu.Lock()
		defer mover.mu.Unlock()
		return len(mover.recoveries) > 0
	})
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "both readers at the last message", func() bool {
		return mover.last() == total-1 && stayer.last() == total-1
	})
	time.Sleep(200 * time.Millisecond) // anything after the last would be a duplicate
	mover.check(t, "mover", total)
	stayer.check(t, "stayer", total)

	mover.mu.Lock()
	rec, recAt := mover.recoveries[0], mover.recoveryAt[0]
	n := len(mover.recoveries)
	mover.mu.Unlock()
	if !rec.Recovered || !rec.Rejoin || n != 1 {
		t.Fatalf("mover's recovery: %+v (%d reports), want one recovered re-join", rec, n)
	}
	what := "edge A SIGKILLed, client back 3 s later through edge B"
	if killNode {
		what = "client cut off from edge A for 3 s, back through edge B, the rooms stream's leader node killed meanwhile"
	}
	// Only this room is written to meanwhile, so offsets count messages.
	fig.add("durable room, %s: %d messages replayed at the seam (of %d published); joined again %s after the route came back (reconnect backoff included); slowest acknowledged publish %s",
		what, rec.Position.Offset-rec.Since.Offset, total, recAt.Sub(back).Round(time.Millisecond), retried.Round(time.Millisecond))

}

// restartEdge starts a killed edge again (on a new port) for the tests
// that follow.
func restartEdge(t *testing.T, c *Cluster, e *edgeProc) {
	t.Helper()
	e.proc = testenv.Start(c.t, "edge", e.args...)
	m := e.proc.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, edgeSetup)
	e.addr, e.url = m[1], "ws://"+m[1]+m[2]
}

// restartNode starts a killed node again from its configuration and waits
// until the cluster is whole and JetStream current on every node.
func restartNode(t *testing.T, c *Cluster, n *natsNode) {
	t.Helper()
	n.proc = testenv.Start(c.t, "nats-server", "-c", n.conf) // the later tests need it
	n.proc.WaitLog(t, `Server is ready`, wait)
	n.dead = false
	for _, n := range c.nodes {
		testenv.Eventually(t, wait, "node "+n.name+" healthy again", func() bool {
			return getJSON(n.monURL+"/healthz", nil) == nil
		})
	}
}
