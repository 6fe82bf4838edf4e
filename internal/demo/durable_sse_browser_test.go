package demo_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// TestBrowserDurableRoomOverSSE is TestBrowserDurableRoomAcrossEdgeRestarts
// on the fallback transport: the demo page reaches the edge through a proxy
// that refuses every WebSocket Upgrade, so the client falls back to sse and
// stays there. While a Go service publishes a numbered stream into a
// durable room, the edge is stopped (SIGTERM, then SIGKILL) and started
// again behind the same proxy; the page must show every number exactly
// once and in order, with a "recovered" notice for each re-join.
func TestBrowserDurableRoomOverSSE(t *testing.T) {
	const (
		room     = "durable-sse"
		feedUser = "feed"
		downFor  = 50 // messages published while the edge is down (>= 1 s)
		liveFor  = 20 // messages published between the restarts
		wait     = 20 * time.Second
	)
	ns := testenv.NATS(t)
	addr := freeAddr(t)
	args := []string{
		"--nats", ns.ClientURL(), "--insecure-dev-users", "--listen", addr,
		"--durable-rooms", "durable-*", "--shutdown-spread", "10ms",
	}
	edge := startEdgeProcess(t, args)
	proxy := startNoWebSocketProxy(t, addr)
	page := startDriver(t)
	page.do(t, map[string]any{"op": "open", "url": proxy.url + "/?user=watcher", "room": room})
	if up, streams := proxy.upgrades.Load(), proxy.streams.Load(); up != 1 || streams != 1 {
		t.Fatalf("before the restarts the proxy saw %d WebSocket upgrades and %d event streams, want 1 and 1", up, streams)
	}

	pub := newNumberedPublisher(t, worker.NewPublisher(testenv.Connect(t, ns.ClientURL()), envelope.DefaultNamespace), room, feedUser)
	publishedAtLeast := func(n int64) {
		t.Helper()
		testenv.Eventually(t, wait, fmt.Sprintf("%d messages published", n), func() bool {
			if err := pub.failed(); err != nil {
				t.Fatalf("publisher stopped: %v", err)
			}
			return pub.count() >= n
		})
	}

	publishedAtLeast(liveFor)
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := edge.Cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d published: %v to the edge", pub.count(), sig)
		code := edge.Wait(t, 15*time.Second)
		if sig == syscall.SIGTERM && code != 0 {
			t.Fatalf("edge exited with %d after SIGTERM:\n%s", code, edge.Log())
		}
		page.do(t, map[string]any{"op": "waitState", "state": "reconnecting"})
		publishedAtLeast(pub.count() + downFor) // the page misses these
		edge = startEdgeProcess(t, args)
		t.Logf("%d published: edge listening again", pub.count())
		page.do(t, map[string]any{"op": "waitState", "state": "open", "timeoutMs": 30_000})
		t.Logf("%d published: page connected", pub.count())
		if _, err := page.try(map[string]any{"op": "waitNotices", "recovery": "recovered", "count": i + 1, "timeoutMs": 5000}); err != nil {
			t.Errorf("after the restart by %v: no recovery notice: %v", sig, err)
		}
		publishedAtLeast(pub.count() + liveFor)
	}
	if err := pub.stop(); err != nil {
		t.Fatalf("publisher: %v", err)
	}
	n := int(pub.count())

	var got struct {
		Texts      []string `json:"texts"`
		Recoveries []string `json:"recoveries"`
		PageErrors []string `json:"pageErrors"`
	}
	page.do(t, map[string]any{"op": "messages", "user": feedUser, "count": n, "timeoutMs": 10_000}, &got)
	if problems := checkSequence(got.Texts, n); len(problems) > 0 {
		t.Errorf("the page rendered %d messages for %d published into the durable room over sse; %s", len(got.Texts), n, strings.Join(problems, "; "))
	}
	if want := []string{"recovered", "recovered"}; !slices.Equal(got.Recoveries, want) {
		t.Errorf("recovery notices %q, want %q", got.Recoveries, want)
	}
	if len(got.PageErrors) > 0 {
		t.Errorf("uncaught errors in the page:\n%s", strings.Join(got.PageErrors, "\n"))
	}
	// The reconnects stayed on sse: the fallback is remembered.
	if up := proxy.upgrades.Load(); up != 1 {
		t.Errorf("the proxy saw %d WebSocket upgrades, want the first one only", up)
	}
	t.Logf("%d messages over sse, edge stopped twice (SIGTERM, SIGKILL), recoveries %q; the proxy saw %d event streams and %d POSTs",
		n, got.Recoveries, proxy.streams.Load(), proxy.posts.Load())
}

// noWebSocketProxy forwards plain HTTP to an edge (the event stream
// flushed as it comes: httputil.ReverseProxy does that for
// text/event-stream) and refuses every WebSocket Upgrade with 403.
type noWebSocketProxy struct {
	url                      string // http://127.0.0.1:<port>
	upgrades, streams, posts atomic.Int64
}

func startNoWebSocketProxy(t *testing.T, edgeAddr string) *noWebSocketProxy {
	t.Helper()
	p := &noWebSocketProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: edgeAddr})
	rp.ErrorLog = log.New(io.Discard, "", 0) // an edge killed mid-stream cuts a copy short: expected
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		http.Error(w, "edge unreachable: "+err.Error(), http.StatusBadGateway)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			p.upgrades.Add(1)
			http.Error(w, "no WebSockets in here", http.StatusForbidden)
			return
		case r.Method == http.MethodPost:
			p.posts.Add(1)
		case strings.HasSuffix(r.URL.Path, "/sse"):
			p.streams.Add(1)
		}
		rp.ServeHTTP(w, r)
	})}
	var served sync.WaitGroup
	served.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() {
		_ = srv.Close()
		served.Wait()
	})
	p.url = "http://" + ln.Addr().String()
	return p
}

// numberedPublisher publishes chat.message "1", "2", ... into a durable
// room every 20 ms, each stored before the next (ToDurableRoom retries
// until acknowledged), until stop.
type numberedPublisher struct {
	published  atomic.Int64
	err        error // set before done closes
	stopCh     chan struct{}
	done       chan struct{}
	stopResult func() error
}

func newNumberedPublisher(t *testing.T, pub *worker.Publisher, room, user string) *numberedPublisher {
	p := &numberedPublisher{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-p.stopCh:
				return
			case <-tick.C:
			}
			env, err := envelope.New("chat.message", map[string]any{
				"room": room, "user": user, "text": strconv.Itoa(n), "ts": time.Now().UnixMilli(),
			})
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = pub.ToDurableRoom(ctx, room, env)
				cancel()
			}
			if err != nil {
				p.err = fmt.Errorf("publish %d: %w", n, err)
				return
			}
			p.published.Store(int64(n))
		}
	}()
	p.stopResult = sync.OnceValue(func() error {
		close(p.stopCh)
		<-p.done
		return p.err
	})
	t.Cleanup(func() { _ = p.stop() })
	return p
}

func (p *numberedPublisher) count() int64 { return p.published.Load() }

func (p *numberedPublisher) stop() error { return p.stopResult() }

// failed is the error the publisher stopped with, nil while it runs.
func (p *numberedPublisher) failed() error {
	select {
	case <-p.done:
		if p.err == nil {
			return fmt.Errorf("stopped")
		}
		return p.err
	default:
		return nil
	}
}
