package presencekv_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/presencekv"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/worker"
)

type events struct {
	mu      sync.Mutex
	all     []presence.Event
	settled int // settle's rounds
}

func collect(t *testing.T, nc *nats.Conn) *events {
	t.Helper()
	ev := &events{}
	_, err := nc.Subscribe("natter.evt.>", func(m *nats.Msg) {
		var e presence.Event
		if json.Unmarshal(m.Data, &e) == nil {
			ev.mu.Lock()
			ev.all = append(ev.all, e)
			ev.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	return ev
}

// count counts the events name, leaving out those of settle's sentinels.
func (ev *events) count(name string) int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	n := 0
	for _, e := range ev.all {
		if e.Event == name && (name == "sentinel" || !strings.HasPrefix(e.User, "sentinel-")) {
			n++
		}
	}
	return n
}

// settle waits until every event the services derive from the changes
// made so far has reached ev, instead of leaving a fixed time for a late
// or duplicate one: a sentinel connection set on each service is seen by
// every mirror (a watcher sees changes in order, so each has seen the
// earlier ones and queued their events), every service has published and
// had acknowledged what it queued, and then a sentinel event stored after
// them all reaches ev (the stream republishes in order).
func (ev *events) settle(t *testing.T, nc *nats.Conn, services ...*presencekv.Service) {
	t.Helper()
	ev.mu.Lock()
	round := ev.settled
	ev.settled++
	ev.mu.Unlock()
	user := fmt.Sprintf("sentinel-%d", round)
	for i, s := range services {
		s.Set(presence.Entry{Conn: fmt.Sprintf("%s-%d", user, i), User: user})
	}
	testenv.Eventually(t, 5*time.Second, "the sentinels in every mirror, every event acknowledged", func() bool {
		for _, s := range services {
			if len(s.User(user).Connections) != len(services) || !s.Drained() {
				return false
			}
		}
		return true
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), "natter.evtq.sentinel", []byte(`{"event":"sentinel"}`), jetstream.WithMsgID(user)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the sentinel event", func() bool { return ev.count("sentinel") == round+1 })
}

func start(t testing.TB, url, edge string, ttl time.Duration) *presencekv.Service {
	t.Helper()
	s, err := presencekv.Start(t.Context(), presencekv.Config{NATS: testenv.Connect(t, url), Edge: edge, TTL: ttl, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

func TestOnlineOfflineOnceAcrossEdges(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	a := start(t, srv.ClientURL(), "edgeA", 5*time.Second)
	b := start(t, srv.ClientURL(), "edgeB", 5*time.Second)
	nc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, nc)

	a.Set(presence.Entry{Conn: "c1", User: "alice", Rooms: []string{"r"}})
	b.Set(presence.Entry{Conn: "c2", User: "alice", Rooms: []string{"r"}})
	testenv.Eventually(t, 5*time.Second, "two connects", func() bool { return ev.count("connect") == 2 })
	testenv.Eventually(t, 5*time.Second, "both mirrors", func() bool {
		return len(a.User("alice").Connections) == 2 && b.Room("r", "", 10).Count == 2
	})
	a.Remove("c1")
	testenv.Eventually(t, 5*time.Second, "one disconnect", func() bool { return ev.count("disconnect") == 1 })
	ev.settle(t, nc, a, b)
	if n := ev.count("offline"); n != 0 {
		t.Fatalf("offline with a connection left: %d", n)
	}
	b.Remove("c2")
	testenv.Eventually(t, 5*time.Second, "offline", func() bool { return ev.count("offline") == 1 })
	ev.settle(t, nc, a, b) // a duplicate would have arrived before the sentinel
	if on, off, j, l := ev.count("online"), ev.count("offline"), ev.count("join"), ev.count("leave"); on != 1 || off != 1 || j != 2 || l != 2 {
		t.Fatalf("online %d offline %d join %d leave %d; want 1 1 2 2", on, off, j, l)
	}
}

func TestRoomPaging(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	s := start(t, srv.ClientURL(), "edgeA", 10*time.Second)
	for i := range 250 {
		s.Set(presence.Entry{Conn: fmt.Sprintf("c%04d", i), User: "u", Rooms: []string{"big"}})
	}
	testenv.Eventually(t, 10*time.Second, "250 members", func() bool { return s.Room("big", "", 1).Count == 250 })
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		p := s.Room("big", cursor, 100)
		for _, m := range p.Members {
			if seen[m.Conn] {
				t.Fatalf("%s twice", m.Conn)
			}
			seen[m.Conn] = true
		}
		if p.Next == "" {
			if pages != 2 || len(seen) != 250 {
				t.Fatalf("pages %d, seen %d", pages+1, len(seen))
			}
			break
		}
		cursor = p.Next
	}
}

// Workers get lifecycle events through the SDK, one worker of the group
// per event.
func TestWorkerEventHandlers(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	s := start(t, srv.ClientURL(), "edgeA", 5*time.Second)
	got := make(chan presence.Event, 16)
	for range 2 { // two workers in one queue group
		w, err := worker.New(testenv.Connect(t, srv.ClientURL()), worker.Config{Logger: testenv.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		h := func(_ context.Context, e presence.Event) { got <- e }
		for _, on := range []func(worker.EventHandler) error{w.OnConnect, w.OnDisconnect, w.OnOnline, w.OnOffline, w.OnJoin, w.OnLeave} {
			if err := on(h); err != nil {
				t.Fatal(err)
			}
		}
		_ = w.Flush(t.Context())
	}
	s.Set(presence.Entry{Conn: "w1", User: "wanda", Rooms: []string{"den"}})
	s.Remove("w1")
	want := map[string]int{"connect": 1, "online": 1, "join": 1, "leave": 1, "disconnect": 1, "offline": 1}
	seen := map[string]int{}
	deadline := time.After(5 * time.Second)
	for n := 0; n < 6; n++ {
		select {
		case e := <-got:
			seen[e.Event]++
			if e.User != "wanda" || e.Conn != "w1" {
				t.Fatalf("event %+v", e)
			}
		case <-deadline:
			t.Fatalf("events so far %v", seen)
		}
	}
	select {
	case e := <-got:
		t.Fatalf("an extra event: %+v", e)
	case <-time.After(300 * time.Millisecond):
	}
	for k, v := range want {
		if seen[k] != v {
			t.Fatalf("events %v, want %v", seen, want)
		}
	}
}

// The last edge to stop still reports its users offline.
func TestLastEdgeStopReportsOffline(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	ev := collect(t, testenv.Connect(t, srv.ClientURL()))
	s, err := presencekv.Start(t.Context(), presencekv.Config{NATS: testenv.Connect(t, srv.ClientURL()), Edge: "last", TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		s.Set(presence.Entry{Conn: fmt.Sprintf("l%d", i), User: fmt.Sprintf("user%d", i)})
	}
	testenv.Eventually(t, 5*time.Second, "all online", func() bool { return ev.count("online") == n })
	for i := range n {
		s.Remove(fmt.Sprintf("l%d", i))
	}
	s.Stop()
	testenv.Eventually(t, 5*time.Second, "all offline", func() bool { return ev.count("offline") == n })
}

// Stop is idempotent: concurrent calls and a later one all return, and
// the connections still held go offline once.
func TestStopTwice(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	ev := collect(t, testenv.Connect(t, srv.ClientURL()))
	s, err := presencekv.Start(t.Context(), presencekv.Config{NATS: testenv.Connect(t, srv.ClientURL()), Edge: "twice", TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	for i := range n {
		s.Set(presence.Entry{Conn: fmt.Sprintf("t%d", i), User: fmt.Sprintf("user%d", i)})
	}
	testenv.Eventually(t, 5*time.Second, "all online", func() bool { return ev.count("online") == n })
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); s.Stop() }()
	}
	wg.Wait()
	s.Stop()
	testenv.Eventually(t, 5*time.Second, "all offline", func() bool { return ev.count("offline") == n })
}

// A quick leave and rejoin within one batch reads as a join.
func TestDiffMergesQuickRejoin(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	diffs := make(chan *presencekv.Diff, 16)
	s, err := presencekv.Start(t.Context(), presencekv.Config{
		NATS: testenv.Connect(t, srv.ClientURL()), Edge: "e", TTL: 10 * time.Second, DiffInterval: 300 * time.Millisecond,
		Diff:       func(_ string, d *presencekv.Diff) { diffs <- d },
		Interested: func(string) bool { return true },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	s.Set(presence.Entry{Conn: "q1", User: "quincy"})
	s.Update(presence.Entry{Conn: "q1", User: "quincy", Rooms: []string{"r"}, Seq: 1})
	s.Update(presence.Entry{Conn: "q1", User: "quincy", Seq: 2})
	s.Update(presence.Entry{Conn: "q1", User: "quincy", Rooms: []string{"r"}, Seq: 3})
	s.Update(presence.Entry{Conn: "q1", User: "quincy", Rooms: []string{"stale"}, Seq: 2}) // older: dropped
	var joins, leaves int
	deadline := time.After(3 * time.Second)
	for joins+leaves == 0 {
		select {
		case d := <-diffs:
			joins, leaves = len(d.Joins), len(d.Leaves)
		case <-deadline:
			t.Fatal("no diff")
		}
	}
	if joins != 1 || leaves != 0 {
		t.Fatalf("joins %d leaves %d, want 1 and 0", joins, leaves)
	}
	testenv.Eventually(t, 3*time.Second, "final rooms", func() bool {
		e, ok := s.Conn("q1")
		return ok && len(e.Rooms) == 1 && e.Rooms[0] == "r"
	})
}
