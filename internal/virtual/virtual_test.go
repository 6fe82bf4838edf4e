package virtual_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter/natter/internal/app"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/virtual"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// wait bounds every wait: generous, for a 2-core machine under -race.
const wait = 30 * time.Second

// presenceEdge starts an embedded nats-server and a dev-mode edge with
// presence on it, pinging connections silent for 100 ms. The edge pings a
// connection again only once it read something after the last ping, so a
// connection pinged three times answered at least twice: what the tests
// check, with a pong timeout long enough for a loaded machine.
func presenceEdge(t *testing.T) (*testenv.Edge, *nats.Conn) {
	t.Helper()
	cfg := testenv.DevEdge()
	cfg.Presence.TTL = 5 * time.Second
	cfg.WebSocket.PingInterval = 100 * time.Millisecond
	cfg.WebSocket.PongTimeout = 10 * time.Second
	m := testenv.NewMesh(t, testenv.MeshOptions{Edge: &cfg, NoWorker: true})
	return m.Edge, m.NC
}

// connKeys counts the presence bucket's connection keys.
func connKeys(t *testing.T, nc *nats.Conn) int {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kv, err := js.KeyValue(ctx, "natter_presence")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "conn.") {
			n++
		}
	}
	return n
}

func awaitReady(t *testing.T, set *virtual.Set) {
	t.Helper()
	select {
	case <-set.Ready():
	case <-time.After(wait):
		t.Fatalf("not ready after %s: %+v", wait, set.Stats())
	}
}

// gauge reads a metric without labels from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestHoldsConnections holds 200 virtual connections on a real edge with
// presence: the edge counts them, presence has their keys and their rooms,
// they answer pings, a publish to each room reaches each member once, and
// the edge's Shutdown closes them all. Not parallel: it counts the
// process's goroutines, and parallel tests start only after it.
func TestHoldsConnections(t *testing.T) {
	const conns, users, rooms = 200, 50, 4
	e, nc := presenceEdge(t)
	base := runtime.NumGoroutine()
	reg := prometheus.NewRegistry()
	set, err := virtual.Start(t.Context(), virtual.Config{
		Conns: conns, Users: users, Rooms: rooms, PresenceDiffs: true,
		Handler: e, Path: e.Path(), Logger: testenv.Logger(t), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Stop()
	awaitReady(t, set)

	if st := set.Stats(); st.Held != conns || st.Opened != conns || st.Failed != 0 || st.ClosedByEdge != 0 {
		t.Fatalf("held: %+v", st)
	}
	if got := e.Stats().Connections; got != conns {
		t.Fatalf("edge holds %d connections, want %d", got, conns)
	}
	if got := gauge(t, reg, "natter_virtual_connections"); got != conns {
		t.Fatalf("natter_virtual_connections %v", got)
	}

	// Presence: a key per connection, each room's members, each user's
	// connections (connection i is user i%users, room i%rooms).
	testenv.Eventually(t, wait, "a presence key per connection", func() bool { return connKeys(t, nc) == conns })
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	for r := range rooms {
		room := "virtual-" + string(rune('0'+r))
		testenv.Eventually(t, wait, "members of "+room, func() bool {
			page, err := presence.Room(ctx, nc, envelope.DefaultNamespace, room, "", 1000)
			return err == nil && page.Count == conns/rooms
		})
	}
	u, err := presence.Online(ctx, nc, envelope.DefaultNamespace, "virtual-7")
	if err != nil || !u.Online || len(u.Connections) != conns/users {
		t.Fatalf("user virtual-7: %+v, %v", u, err)
	}

	// Pings: three per connection, so the edge read the pongs answering
	// them (a connection whose pongs it did not read is pinged once); none
	// is closed.
	testenv.Eventually(t, wait, "three pongs per connection", func() bool {
		st := set.Stats()
		if st.ClosedByEdge > 0 {
			t.Fatalf("the edge closed virtual connections: %+v", st)
		}
		return st.Pongs >= 3*conns
	})
	if st := set.Stats(); st.Held != conns || st.ClosedByEdge != 0 {
		t.Fatalf("after pings: %+v", st)
	}

	// One message per room reaches each member once: 200 deliveries.
	before := set.Stats().Messages
	for r := range rooms {
		subj, err := envelope.DefaultNamespace.Room("virtual-" + string(rune('0'+r)))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subj.String(), []byte(`{"type":"chat.message","payload":{"text":"hi"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, wait, "a delivery per connection", func() bool { return set.Stats().Messages-before >= conns })
	// Nothing more: a second round to room 0 alone adds exactly its members.
	subj, _ := envelope.DefaultNamespace.Room("virtual-0")
	if err := nc.Publish(subj.String(), []byte(`{"type":"chat.message","payload":{"text":"again"}}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "room 0's second delivery", func() bool { return set.Stats().Messages-before >= conns+conns/rooms })
	if got := set.Stats().Messages - before; got != conns+conns/rooms {
		t.Fatalf("%d deliveries, want %d", got, conns+conns/rooms)
	}

	// Shutdown closes every virtual connection, and presence loses them.
	set.Stop()
	sctx, scancel := context.WithTimeout(context.Background(), wait)
	defer scancel()
	if err := e.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if st := set.Stats(); st.Held != 0 || st.ClosedByEdge != conns || st.ClosedByClient != 0 {
		t.Fatalf("after shutdown: %+v", st)
	}
	if got := e.Stats().Connections; got != 0 {
		t.Fatalf("edge holds %d connections after shutdown", got)
	}
	testenv.Eventually(t, wait, "no presence key after shutdown", func() bool { return connKeys(t, nc) == 0 })
	// The edge's goroutines (and so the connections' read loops) are gone.
	testenv.GoroutinesSettle(t, base, 5, wait)
}

// TestChurn replaces connections at a rate: each replacement closes the
// oldest (the client's close frame) and opens a new one; the edge and
// presence end with Conns connections. The churned-in connections time
// their presence: the last 50, which stay, all see their own join.
func TestChurn(t *testing.T) {
	t.Parallel()
	const conns = 50
	e, nc := presenceEdge(t)
	start := make(chan os.Signal, 1)
	set, err := virtual.Start(t.Context(), virtual.Config{
		Conns: conns, Churn: 400, PresenceDiffs: true, ChurnStart: start,
		Handler: e, Path: e.Path(), Logger: testenv.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Stop()
	awaitReady(t, set)
	// Held until its start: a sentinel round trip through the edge (a
	// publish to the room, delivered to all 50) shows nothing was churned.
	subj, _ := envelope.DefaultNamespace.Room("virtual-0")
	if err := nc.Publish(subj.String(), []byte(`{"type":"chat.message","payload":{}}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "the sentinel's deliveries", func() bool { return set.Stats().Messages == conns })
	if st := set.Stats(); st.Churned != 0 || st.ClosedByClient != 0 {
		t.Fatalf("churned before its start: %+v", st)
	}
	start <- syscall.SIGUSR1
	testenv.Eventually(t, wait, "200 replacements", func() bool { return set.Stats().Churned >= 200 })
	set.Stop()
	// Every replacement closed one and opened one: the population is 50
	// again once the closes and joins in flight are done.
	testenv.Eventually(t, wait, "the edge back to 50 connections", func() bool {
		st := set.Stats()
		return st.Held == conns && e.Stats().Connections == conns && st.ClosedByClient == st.Churned
	})
	if st := set.Stats(); st.Failed != 0 || st.ClosedByEdge != 0 || st.Opened != conns+st.Churned {
		t.Fatalf("after churn: %+v", st)
	}
	testenv.Eventually(t, wait, "a presence key per held connection", func() bool { return connKeys(t, nc) == conns })
	testenv.Eventually(t, wait, "the survivors' own joins in a diff", func() bool { return set.Stats().PresenceSeen >= conns })
	if st := set.Stats(); st.PresenceProbes != st.Churned || st.PresenceMean <= 0 {
		t.Fatalf("probes: %+v", st)
	}
}

func TestConfigInvalid(t *testing.T) {
	t.Parallel()
	h := http.NotFoundHandler()
	for _, tc := range []struct {
		name string
		cfg  virtual.Config
	}{
		{"no conns", virtual.Config{Handler: h}},
		{"too many conns", virtual.Config{Conns: virtual.MaxConns + 1, Handler: h}},
		{"negative users", virtual.Config{Conns: 1, Users: -1, Handler: h}},
		{"negative first", virtual.Config{Conns: 1, First: -1, Handler: h}},
		{"negative churn", virtual.Config{Conns: 1, Churn: -1, Handler: h}},
		{"negative delay", virtual.Config{Conns: 1, Delay: -time.Second, Handler: h}},
		{"no handler", virtual.Config{Conns: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := virtual.Start(t.Context(), tc.cfg); !errors.Is(err, virtual.ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestRefused counts handshakes the edge refuses (here: it is draining)
// and is ready once all are settled.
func TestRefused(t *testing.T) {
	t.Parallel()
	e, _ := presenceEdge(t)
	e.Drain()
	set, err := virtual.Start(t.Context(), virtual.Config{Conns: 10, Handler: e, Path: e.Path(), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Stop()
	awaitReady(t, set)
	if st := set.Stats(); st.Failed != 10 || st.Held != 0 || st.Opened != 0 {
		t.Fatalf("%+v", st)
	}
}

// syncBuffer is a log sink safe for the edge's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunVirtual is the command's wiring: app.Run in single-binary mode
// with app.Config.Virtual holds the connections, says so at WARN, and
// closes them when its context ends; an edge that is not in dev mode
// refuses the mode before it starts.
func TestRunVirtual(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		rc := app.DefaultConfig()
		rc.Listen, rc.NATSListen, rc.DataDir = "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
		rc.Edge.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		rc.Virtual = &virtual.Config{Conns: 50, Rooms: 5}
		done <- app.Run(ctx, rc)
	}()
	testenv.Eventually(t, wait, "the held line", func() bool {
		return strings.Contains(logs.String(), `level=WARN msg="edge holds 50 VIRTUAL connections (in-memory, not TCP)"`)
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v\n%s", err, logs.String())
		}
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}

	rc := app.DefaultConfig()
	rc.NATSURL, rc.Edge.Auth.Anonymous = "nats://127.0.0.1:1", true
	rc.Virtual = &virtual.Config{Conns: 5}
	err := app.Run(t.Context(), rc)
	if !errors.Is(err, edge.ErrInvalidConfig) || !strings.Contains(err.Error(), "--insecure-dev-users") {
		t.Fatalf("not in dev mode: %v", err)
	}
}
