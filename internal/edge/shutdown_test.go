package edge_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// shutdownEdge is an edge with presence, durable rooms (dur-*) and durable
// messages (job.*) all on, serving two clients: one in a durable room, one
// with a durable message stored. Shutdown is the test's to call; the
// cleanup calls it once more.
type shutdownEdge struct {
	*edge.Edge
	url     string
	nc      *nats.Conn // the edge's
	clients []*wstest.Client
}

func newShutdownEdge(t *testing.T) *shutdownEdge {
	t.Helper()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	cfg := testenv.DevEdge()
	cfg.NATS.Conn = m.Connect(t)
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig("dur-*")
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
	if cfg.Presence == nil {
		t.Fatal("presence is off in DefaultConfig")
	}
	e := m.StartEdge(t, cfg) // its cleanup calls Shutdown once more
	se := &shutdownEdge{Edge: e.Edge, url: e.URL, nc: cfg.NATS.Conn}
	member := wstest.Dial(t, se.url+"?user=amy")
	join(t, member, "dur-lobby")
	sender := wstest.Dial(t, se.url+"?user=bo")
	got := sender.Request(t, "job.thing", map[string]int{"n": 1}, wait)
	if got.Type != envelope.TypeAccepted {
		t.Fatalf("durable message: got %s %s", got.Type, got.Payload)
	}
	se.clients = []*wstest.Client{member, sender}
	return se
}

// closedWith waits until every client is closed with code.
func (se *shutdownEdge) closedWith(t *testing.T, code envelope.CloseCode) {
	t.Helper()
	for _, c := range se.clients {
		if got := c.WaitClose(t, wait); got != uint16(code) {
			t.Fatalf("close code %d, want %d", got, code)
		}
	}
}

// leftNothing checks that no goroutine runs the edge's code (its own,
// presence's, or a routine.Group's) once Shutdown returned, and that the
// edge's NATS connection holds no subscription of the edge's: at most
// nats.go's own mux for requests. The NATS server's and the clients'
// goroutines go on.
func (se *shutdownEdge) leftNothing(t *testing.T) {
	t.Helper()
	ours := []string{"natter/internal/edge.", "natter/internal/presencekv.", "natter/internal/routine."}
	var left []string
	for range 100 {
		left = left[:0]
		buf := make([]byte, 4<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "testing.tRunner") {
				continue // a test, this one or a parallel one waiting for it
			}
			for _, o := range ours {
				if strings.Contains(g, o) {
					left = append(left, g)
					break
				}
			}
		}
		if len(left) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond) // Shutdown returned: they are ending, not started
	}
	if len(left) > 0 {
		t.Fatalf("%d goroutines of the edge left after Shutdown:\n%s", len(left), strings.Join(left, "\n\n"))
	}
	if n := se.nc.NumSubscriptions(); n > 1 {
		t.Fatalf("the edge's NATS connection holds %d subscriptions after Shutdown, want at most nats.go's request mux", n)
	}
}

// refuses checks that a handshake after Shutdown is refused with 503.
func (se *shutdownEdge) refuses(t *testing.T) {
	t.Helper()
	if status, _, _ := wstest.Handshake(t, se.url, nil, ""); status != http.StatusServiceUnavailable {
		t.Fatalf("handshake after Shutdown: %d, want 503", status)
	}
}

// TestShutdownTwice: with presence, durable rooms and durable messages on
// (a second Shutdown used to panic there, closing a closed channel on a
// goroutine of its own), Shutdown runs once and every later call returns
// nil at once. The edge's goroutines are gone after it.
func TestShutdownTwice(t *testing.T) {
	se := newShutdownEdge(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := se.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	se.closedWith(t, envelope.CloseShutdown)
	if err := se.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	ended, stop := context.WithCancel(t.Context())
	stop()
	if err := se.Shutdown(ended); err != nil {
		t.Fatalf("Shutdown with an ended ctx, after the shutdown: %v, want nil", err)
	}
	se.refuses(t)
	se.leftNothing(t)
}

// TestShutdownConcurrent: calls at once run one shutdown, and all return
// nil once it is done. Run with -race.
func TestShutdownConcurrent(t *testing.T) {
	se := newShutdownEdge(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	const callers = 4
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- se.Shutdown(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	se.closedWith(t, envelope.CloseShutdown)
	se.refuses(t)
}

// TestShutdownGivenUpThenAgain: a first Shutdown whose ctx has ended
// returns its error after closing the sockets at once; the shutdown goes
// on, and a second call waits for it and returns nil. This is the
// sequence that used to panic with durable rooms on.
func TestShutdownGivenUpThenAgain(t *testing.T) {
	se := newShutdownEdge(t)
	ended, stop := context.WithCancel(t.Context())
	stop()
	if err := se.Shutdown(ended); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with an ended ctx: %v, want context.Canceled", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := se.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	for _, c := range se.clients {
		c.WaitClose(t, wait) // closed at once, with whatever code got out
	}
	se.refuses(t)
}
