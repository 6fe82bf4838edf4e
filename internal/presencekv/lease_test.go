package presencekv_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/presencekv"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/presence"
)

// node is one edge's presence service with its own NATS connection.
type node struct {
	*presencekv.Service
	nc *nats.Conn
}

func startNode(t *testing.T, url, edge string, ttl time.Duration, opts ...nats.Option) *node {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s, err := presencekv.Start(t.Context(), presencekv.Config{NATS: nc, Edge: edge, TTL: ttl, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return &node{s, nc}
}

// kill stops n as a SIGKILL of its edge would: no more lease refreshes,
// nothing removed, its NATS connection gone.
func (n *node) kill() {
	n.Kill()
	n.nc.Close()
}

func (ev *events) countOf(name, user string) int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	n := 0
	for _, e := range ev.all {
		if e.Event == name && e.User == user {
			n++
		}
	}
	return n
}

// bucket returns the presence bucket's stream state: LastSeq counts every
// write ever made, Msgs what the stream holds.
func bucket(t *testing.T, nc *nats.Conn) jetstream.StreamState {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "KV_"+presence.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// keys lists the bucket's live keys (deleted and purged ones are not).
func keys(t *testing.T, nc *nats.Conn) []string {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, presence.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range l.Keys() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// storedEvents reads every event the natter_events stream stored: one per
// transition if the deduplication holds, whatever the subscribers saw.
func storedEvents(t *testing.T, nc *nats.Conn) []presence.Event {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "natter_events")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []presence.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		var e presence.Event
		if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// countStored counts the stored events named name about user (conn, when
// not empty).
func countStored(evs []presence.Event, name, user, conn string) int {
	n := 0
	for _, e := range evs {
		if e.Event == name && e.User == user && (conn == "" || e.Conn == conn) {
			n++
		}
	}
	return n
}

// drained waits until every node has published and stored the events it
// derived so far: what the event stream holds then is final.
func drained(t *testing.T, nodes ...*node) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "events published", func() bool {
		for _, n := range nodes {
			if !n.Drained() {
				return false
			}
		}
		return true
	})
}

// Idle connections write nothing: over several lease periods the bucket
// gets the leases' refreshes, a few per edge and period, and not one write
// per connection.
func TestIdleConnectionsWriteNothing(t *testing.T) {
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	const perEdge = 100
	a := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	for i := range perEdge {
		a.Set(presence.Entry{Conn: fmt.Sprintf("a%03d", i), User: fmt.Sprintf("u%02d", i%50), Rooms: []string{"lobby"}})
		b.Set(presence.Entry{Conn: fmt.Sprintf("b%03d", i), User: fmt.Sprintf("u%02d", i%50), Rooms: []string{"lobby"}})
		b.Update(presence.Entry{Conn: fmt.Sprintf("b%03d", i), User: fmt.Sprintf("u%02d", i%50), Rooms: []string{"lobby"}, State: json.RawMessage(`"here"`), Seq: 1})
	}
	testenv.Eventually(t, 10*time.Second, "both mirrors loaded", func() bool {
		return a.Room("lobby", "", 1).Count == 2*perEdge && b.Room("lobby", "", 1).Count == 2*perEdge
	})
	drained(t, a, b) // the connects' events are out before the hold
	nc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, nc)
	before := bucket(t, nc)
	const hold = 3 * ttl
	time.Sleep(hold) // the idle hold being measured, not an ordering
	after := bucket(t, nc)
	writes := after.LastSeq - before.LastSeq
	periods := uint64(hold / (ttl / 3))
	t.Logf("%d idle connections on 2 edges for %s (lease TTL %s): %d writes to the bucket; it holds %d messages",
		2*perEdge, hold, ttl, writes, after.Msgs)
	// The leases' refreshes, and at most one edge re-asserting its keys
	// once: on a loaded machine a refresh can come late enough for an edge
	// to take its lease again. Per-connection refreshes would be 200 every
	// TTL/3, 1,800 here.
	if max := 2*(periods+1) + perEdge; writes > max {
		t.Fatalf("%d writes in %s: more than the two leases' refreshes and one re-assertion (%d at most)", writes, hold, max)
	}
	if writes < periods {
		t.Fatalf("%d writes in %s: the leases were not refreshed every TTL/3", writes, hold)
	}
	if after.Msgs > before.Msgs {
		t.Fatalf("the bucket grew from %d to %d messages while idle", before.Msgs, after.Msgs)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.all) > 0 {
		t.Fatalf("%d events while idle, the first %+v", len(ev.all), ev.all[0])
	}
}

// A crashed edge: its lease expires, the survivors (racing: both remove at
// once) delete its keys, and each of its users gets exactly one offline
// within TTL + 3 s, in both survivors' mirrors and in the event stream. A
// user also on a survivor stays online.
func TestCrashedEdgeRemovedOnce(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	c := startNode(t, srv.ClientURL(), "edgeC", ttl)
	dead := startNode(t, srv.ClientURL(), "edgeA", ttl) // the lowest id: the first remover, until it dies
	b.SetBackup(0)
	c.SetBackup(0)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	const solos = 20
	for i := range solos {
		dead.Set(presence.Entry{Conn: fmt.Sprintf("d%02d", i), User: fmt.Sprintf("solo%02d", i), Rooms: []string{"r"}})
	}
	dead.Set(presence.Entry{Conn: "dshared", User: "shared", Rooms: []string{"r"}})
	b.Set(presence.Entry{Conn: "bshared", User: "shared"})
	testenv.Eventually(t, 10*time.Second, "the survivors' mirrors", func() bool {
		return b.Room("r", "", 1).Count == solos+1 && c.Room("r", "", 1).Count == solos+1 && len(c.User("shared").Connections) == 2
	})
	if k := keys(t, svc); !slices.Contains(k, "edge.edgeA") {
		t.Fatalf("the edge holds no lease: %v", k)
	}

	dead.kill()
	killed := time.Now()
	testenv.Eventually(t, ttl+3*time.Second, "every solo user offline", func() bool {
		for i := range solos {
			if ev.countOf(presence.EventOffline, fmt.Sprintf("solo%02d", i)) == 0 {
				return false
			}
		}
		return true
	})
	took := time.Since(killed)
	testenv.Eventually(t, 5*time.Second, "both mirrors without the dead edge", func() bool {
		for _, n := range []*node{b, c} {
			if n.Room("r", "", 1).Count != 0 || len(n.User("shared").Connections) != 1 {
				return false
			}
			for i := range solos {
				if n.User(fmt.Sprintf("solo%02d", i)).Online {
					return false
				}
			}
		}
		return true
	})
	testenv.Eventually(t, 5*time.Second, "no key of the dead edge", func() bool {
		for _, k := range keys(t, svc) {
			if k == "edge.edgeA" || strings.HasPrefix(k, "conn.d") {
				return false
			}
		}
		return true
	})
	drained(t, b, c)
	stored := storedEvents(t, svc)
	for i := range solos {
		user, conn := fmt.Sprintf("solo%02d", i), fmt.Sprintf("d%02d", i)
		if off, disc, leave := countStored(stored, presence.EventOffline, user, ""), countStored(stored, presence.EventDisconnect, user, conn),
			countStored(stored, presence.EventLeave, user, conn); off != 1 || disc != 1 || leave != 1 {
			t.Errorf("%s: offline %d, disconnect %d, leave %d; want one each", user, off, disc, leave)
		}
	}
	if off, disc := countStored(stored, presence.EventOffline, "shared", ""), countStored(stored, presence.EventDisconnect, "shared", "dshared"); off != 0 || disc != 1 {
		t.Errorf("shared: offline %d, disconnect of dshared %d; want 0 and 1", off, disc)
	}
	testenv.Eventually(t, 5*time.Second, "the subscriber saw what is stored", func() bool {
		return ev.count(presence.EventOffline) == solos && ev.count(presence.EventDisconnect) == solos+1
	})
	if !b.User("shared").Online || !c.User("shared").Online {
		t.Fatal("shared is offline with a connection on edgeB")
	}
	t.Logf("every solo user offline %s after the crash (lease TTL %s); removals refused as already done: edgeB %d, edgeC %d",
		took.Round(time.Millisecond), ttl, b.Conflicts(), c.Conflicts())
	if took > ttl+3*time.Second {
		t.Fatalf("offline %s after the crash", took)
	}
}

// An edge cut off from NATS for longer than its lease: the others remove
// its connections (one offline each). When it comes back it takes its
// lease again and rewrites the connections it holds, with what changed
// meanwhile: a join, a new connection, a removal.
func TestPartitionedEdgeReasserts(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	px := testenv.StartProxy(t, srv.ClientURL())
	a := startNode(t, px.URL(), "edgeA", ttl, nats.ReconnectWait(50*time.Millisecond))
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	c := startNode(t, srv.ClientURL(), "edgeC", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	a.Set(presence.Entry{Conn: "p1", User: "pu1"})
	a.Set(presence.Entry{Conn: "p2", User: "pu2"})
	a.Set(presence.Entry{Conn: "p3", User: "pu3"})
	b.Set(presence.Entry{Conn: "p2b", User: "pu2"})
	testenv.Eventually(t, 10*time.Second, "mirrors", func() bool {
		return b.User("pu3").Online && c.User("pu3").Online && len(c.User("pu2").Connections) == 2
	})

	px.Cut()
	cut := time.Now()
	testenv.Eventually(t, ttl+3*time.Second, "the others remove edgeA's connections", func() bool {
		for _, n := range []*node{b, c} {
			for _, id := range []string{"p1", "p2", "p3"} {
				if _, ok := n.Conn(id); ok {
					return false
				}
			}
		}
		return true
	})
	t.Logf("edgeA's connections removed %s after the cut (lease TTL %s)", time.Since(cut).Round(time.Millisecond), ttl)
	// Meanwhile, on the cut-off edge:
	a.Update(presence.Entry{Conn: "p1", User: "pu1", Rooms: []string{"late"}, Seq: 1})
	a.Set(presence.Entry{Conn: "p4", User: "pu4"})
	a.Remove("p3")
	px.Restore()

	testenv.Eventually(t, 15*time.Second, "edgeA's connections back, as they are now", func() bool {
		for _, n := range []*node{a, b, c} {
			e, ok := n.Conn("p1")
			if !ok || !slices.Equal(e.Rooms, []string{"late"}) {
				return false
			}
			if _, ok := n.Conn("p2"); !ok {
				return false
			}
			if _, ok := n.Conn("p4"); !ok {
				return false
			}
			if _, ok := n.Conn("p3"); ok {
				return false
			}
		}
		return true
	})
	if k := keys(t, svc); !slices.Contains(k, "edge.edgeA") || slices.Contains(k, "conn.p3") {
		t.Fatalf("keys after the return: %v", k)
	}
	drained(t, a, b, c)
	stored := storedEvents(t, svc)
	for _, w := range []struct {
		user            string
		online, offline int
	}{{"pu1", 2, 1}, {"pu2", 1, 0}, {"pu3", 1, 1}, {"pu4", 1, 0}} {
		if on, off := countStored(stored, presence.EventOnline, w.user, ""), countStored(stored, presence.EventOffline, w.user, ""); on != w.online || off != w.offline {
			t.Errorf("%s: online %d, offline %d; want %d and %d", w.user, on, off, w.online, w.offline)
		}
	}
	if n := countStored(stored, presence.EventJoin, "pu1", "p1"); n != 1 {
		t.Errorf("p1's join of late: %d events", n)
	}
	testenv.Eventually(t, 5*time.Second, "the subscriber saw what is stored", func() bool {
		return ev.count(presence.EventOnline) == 5 && ev.count(presence.EventOffline) == 2
	})
}

// TestCrashBurstLosesNoEvent: an edge dies with many more connections
// than the survivor's event queue holds; every event of its death is
// stored, once. Not parallel: it shrinks the queue of the services it
// starts, and restores it before the parallel tests run.
func TestCrashBurstLosesNoEvent(t *testing.T) {
	restore := presencekv.SetEventQueue(8)
	defer restore()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	dead := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b.SetBackup(0)
	svc := testenv.Connect(t, srv.ClientURL())
	const n = 300
	for i := range n {
		dead.Set(presence.Entry{Conn: fmt.Sprintf("c%03d", i), User: fmt.Sprintf("u%03d", i), Rooms: []string{"r"}})
	}
	testenv.Eventually(t, 10*time.Second, "the survivor's mirror", func() bool { return b.Room("r", "", 1).Count == n })
	dead.kill()
	testenv.Eventually(t, ttl+10*time.Second, "the dead edge's connections gone", func() bool { return b.Room("r", "", 1).Count == 0 })
	drained(t, b)
	stored := storedEvents(t, svc)
	lost := 0
	for i := range n {
		user, conn := fmt.Sprintf("u%03d", i), fmt.Sprintf("c%03d", i)
		for _, name := range []string{presence.EventOffline, presence.EventDisconnect, presence.EventLeave} {
			if got := countStored(stored, name, user, conn); got != 1 {
				lost++
				if lost <= 5 {
					t.Errorf("%s of %s: %d stored, want 1", name, conn, got)
				}
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d events not stored once", lost, 3*n)
	}
	if b.QueueFull() == 0 {
		t.Error("the burst never filled the queue: the test tests nothing")
	}
	b.Stop()
}

// TestLaggingWatcherSendsRefusedRemovalsOnce: two survivors remove a dead
// edge's keys at once, and one of them has a watcher that lags. A removal
// refused because the key changed since (the other survivor's won) is not
// sent again while the lagging mirror still shows the key: each survivor
// sends each removal, and each purge of a marker, about once.
func TestLaggingWatcherSendsRefusedRemovalsOnce(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	c := startNode(t, srv.ClientURL(), "edgeC", ttl)
	dead := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b.SetBackup(0)
	c.SetBackup(0)
	const n = 200
	for i := range n {
		dead.Set(presence.Entry{Conn: fmt.Sprintf("l%03d", i), User: fmt.Sprintf("lu%03d", i)})
	}
	testenv.Eventually(t, 10*time.Second, "the survivors' mirrors", func() bool {
		return len(b.User("lu199").Connections) == 1 && len(c.User("lu199").Connections) == 1
	})
	c.SetSlowWatcher(20 * time.Millisecond) // 200 removals take c's mirror 4 s: six sweep rounds
	dead.kill()
	testenv.Eventually(t, 30*time.Second, "both mirrors without the dead edge's connections", func() bool {
		for i := range n {
			u := fmt.Sprintf("lu%03d", i)
			if b.User(u).Online || c.User(u).Online {
				return false
			}
		}
		return true
	})
	// And their delete markers purged: a TTL after they were seen, plus
	// the lagging mirror's delay.
	time.Sleep(3 * ttl) // the window the purges are sent in, refused ones included
	refused := b.Conflicts() + c.Conflicts()
	t.Logf("refused removals and purges: %d (edgeB %d, edgeC %d) for %d keys", refused, b.Conflicts(), c.Conflicts(), n)
	// Each key: one delete and one purge each from two survivors, one of
	// each pair refused: about 2n refusals; resent ones would add n a round.
	if refused > 3*n {
		t.Fatalf("%d removals refused for %d keys: refused ones were sent again", refused, n)
	}
}

// An edge cut off from NATS sends nothing stale when it is back: a
// connection that came and went during the cut never appears to the
// others (nats.go would have buffered its writes, and every retry of them,
// and sent them after the reconnect: its user online, then offline, after
// the fact), and one that came and stayed does, once.
func TestPartitionedEdgeSendsNoStaleWrites(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 30 * time.Second // no lapse: only the writes made during the cut are under test
	px := testenv.StartProxy(t, srv.ClientURL())
	a := startNode(t, px.URL(), "edgeA", ttl, nats.ReconnectWait(50*time.Millisecond))
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	a.Set(presence.Entry{Conn: "s1", User: "su1"})
	testenv.Eventually(t, 10*time.Second, "mirrored", func() bool { return b.User("su1").Online })

	px.Cut()
	testenv.Eventually(t, 5*time.Second, "edgeA disconnected", func() bool { return !a.nc.IsConnected() })
	a.Set(presence.Entry{Conn: "gone", User: "flicker"})
	a.Update(presence.Entry{Conn: "gone", User: "flicker", Rooms: []string{"r"}, Seq: 1})
	a.Set(presence.Entry{Conn: "stays", User: "newcomer"})
	// Long enough for the keeper's retries (a second apart) to have run.
	time.Sleep(2500 * time.Millisecond)
	a.Remove("gone")
	px.Restore()

	testenv.Eventually(t, 15*time.Second, "the connection that stayed is seen", func() bool {
		_, ok := b.Conn("stays")
		return ok
	})
	// The last of edgeA's writes after the reconnect: whatever it had
	// buffered is stored before it.
	a.Set(presence.Entry{Conn: "sentinel", User: "su1"})
	testenv.Eventually(t, 10*time.Second, "the sentinel is seen", func() bool {
		_, ok := b.Conn("sentinel")
		return ok
	})
	drained(t, a, b)
	stored := storedEvents(t, svc)
	if on, off := countStored(stored, presence.EventOnline, "flicker", ""), countStored(stored, presence.EventOffline, "flicker", ""); on != 0 || off != 0 {
		t.Errorf("flicker, whose connection came and went during the cut: online %d, offline %d; want none", on, off)
	}
	if on, off := countStored(stored, presence.EventOnline, "newcomer", ""), countStored(stored, presence.EventOffline, "newcomer", ""); on != 1 || off != 0 {
		t.Errorf("newcomer: online %d, offline %d; want 1 and 0", on, off)
	}
	if on := countStored(stored, presence.EventOnline, "su1", ""); on != 1 {
		t.Errorf("su1: online %d; want 1", on)
	}
}

// An edge whose process stalls (its lease refreshes stop, its watcher goes
// on) longer than a TTL sees its lease expire and its keys removed; when it
// runs again it takes the lease and rewrites them.
func TestPausedEdgeReasserts(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	a := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	a.Set(presence.Entry{Conn: "g1", User: "gus", Rooms: []string{"r"}})
	testenv.Eventually(t, 5*time.Second, "online", func() bool { return b.User("gus").Online })
	resume := a.Pause()
	testenv.Eventually(t, ttl+3*time.Second, "gus offline while edgeA stalls", func() bool { return ev.countOf(presence.EventOffline, "gus") == 1 })
	resume()
	testenv.Eventually(t, 5*time.Second, "gus back", func() bool {
		e, ok := b.Conn("g1")
		return ok && ev.countOf(presence.EventOnline, "gus") == 2 && slices.Equal(e.Rooms, []string{"r"})
	})
	drained(t, a, b)
	stored := storedEvents(t, svc)
	if on, off := countStored(stored, presence.EventOnline, "gus", ""), countStored(stored, presence.EventOffline, "gus", ""); on != 2 || off != 1 {
		t.Fatalf("gus: online %d, offline %d; want 2 and 1", on, off)
	}
}

// Stop removes the edge's connection keys and its lease at once, with
// their events, long before any TTL.
func TestStopRemovesKeysAtOnce(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 30 * time.Second
	a := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	const n = 10
	for i := range n {
		a.Set(presence.Entry{Conn: fmt.Sprintf("s%02d", i), User: fmt.Sprintf("gone%02d", i), Rooms: []string{"r"}})
	}
	a.Set(presence.Entry{Conn: "sshared", User: "stays"})
	b.Set(presence.Entry{Conn: "bshared", User: "stays"})
	testenv.Eventually(t, 5*time.Second, "mirror", func() bool { return b.Room("r", "", 1).Count == n && len(b.User("stays").Connections) == 2 })

	stopped := time.Now()
	a.Stop()
	took := time.Since(stopped)
	for _, k := range keys(t, svc) {
		if k == "edge.edgeA" || strings.HasPrefix(k, "conn.s") {
			t.Fatalf("key %s left after Stop returned (%s)", k, took)
		}
	}
	testenv.Eventually(t, 5*time.Second, "offline events", func() bool { return ev.count(presence.EventOffline) == n })
	drained(t, b)
	stored := storedEvents(t, svc)
	for i := range n {
		if off := countStored(stored, presence.EventOffline, fmt.Sprintf("gone%02d", i), ""); off != 1 {
			t.Errorf("gone%02d: %d offline events", i, off)
		}
	}
	if off := countStored(stored, presence.EventOffline, "stays", ""); off != 0 || !b.User("stays").Online {
		t.Errorf("stays: %d offline events, online %v", off, b.User("stays").Online)
	}
	t.Logf("Stop took %s (lease TTL %s)", took.Round(time.Millisecond), ttl)
}

// Connection keys of an edge that holds no lease (an older edge, or one
// whose lease expired before anyone watched) are removed once the edge
// wrote nothing for a TTL: one found at start after a TTL, one written
// later a TTL after its write. An older edge's keys, which it rewrites
// every TTL/3 with a TTL, are left alone and expire by themselves.
func TestKeysWithoutLease(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	svc := testenv.Connect(t, srv.ClientURL())
	js, err := jetstream.New(svc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{
		Bucket: presence.Bucket, History: 10, Storage: jetstream.FileStorage, LimitMarkerTTL: ttl,
	})
	if err != nil {
		t.Fatal(err)
	}
	put := func(id, user, edge string, opts ...jetstream.PublishOpt) {
		t.Helper()
		b, _ := json.Marshal(presence.Entry{Conn: id, User: user, Edge: edge})
		if _, err := js.Publish(t.Context(), "$KV."+presence.Bucket+".conn."+id, b, opts...); err != nil {
			t.Fatal(err)
		}
	}
	put("g1", "ghost", "gone")
	ev := collect(t, svc)
	started := time.Now()
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	if !b.User("ghost").Online {
		t.Fatal("the key without a lease is not in the mirror")
	}
	testenv.Eventually(t, ttl+3*time.Second, "ghost removed", func() bool { return ev.countOf(presence.EventOffline, "ghost") == 1 })
	if took := time.Since(started); took < ttl-100*time.Millisecond {
		t.Fatalf("ghost removed %s after the start, before a TTL (%s)", took, ttl)
	}

	put("g2", "phantom", "gone")
	written := time.Now()
	testenv.Eventually(t, ttl+3*time.Second, "phantom removed", func() bool { return ev.countOf(presence.EventOffline, "phantom") == 1 })
	if took := time.Since(written); took < ttl-100*time.Millisecond {
		t.Fatalf("phantom removed %s after its write, before a TTL (%s)", took, ttl)
	}

	// An older edge: each key with a TTL, rewritten every TTL/3.
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); <-tick.C {
		put("o1", "elder", "older", jetstream.WithMsgTTL(ttl))
	}
	if n := ev.countOf(presence.EventDisconnect, "elder"); n != 0 || !b.User("elder").Online {
		t.Fatalf("an older edge's live key was removed (%d disconnects)", n)
	}
	testenv.Eventually(t, ttl+3*time.Second, "elder's key expired", func() bool { return ev.countOf(presence.EventOffline, "elder") == 1 })
	if _, err := kv.Get(t.Context(), "conn.g1"); err == nil {
		t.Fatal("conn.g1 still there")
	}
}

// An edge restarted with the same id before its lease expired removes the
// keys its predecessor left, at once.
func TestRestartWithSameID(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 30 * time.Second
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	a := startNode(t, srv.ClientURL(), "edgeA", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	const n = 5
	for i := range n {
		a.Set(presence.Entry{Conn: fmt.Sprintf("old%d", i), User: fmt.Sprintf("r%d", i)})
	}
	testenv.Eventually(t, 5*time.Second, "mirror", func() bool { return b.User(fmt.Sprintf("r%d", n-1)).Online })
	a.kill()
	restarted := time.Now()
	a2 := startNode(t, srv.ClientURL(), "edgeA", ttl)
	testenv.Eventually(t, 5*time.Second, "the predecessor's keys removed", func() bool { return ev.count(presence.EventOffline) == n })
	took := time.Since(restarted)
	a2.Set(presence.Entry{Conn: "new0", User: "r0"})
	testenv.Eventually(t, 5*time.Second, "the new connection", func() bool {
		info := b.User("r0")
		return len(info.Connections) == 1 && info.Connections[0].Conn == "new0"
	})
	for _, k := range keys(t, svc) {
		if strings.HasPrefix(k, "conn.old") {
			t.Fatalf("%s left", k)
		}
	}
	drained(t, b, a2)
	stored := storedEvents(t, svc)
	for i := range n {
		if off := countStored(stored, presence.EventOffline, fmt.Sprintf("r%d", i), ""); off != 1 {
			t.Errorf("r%d: %d offline events", i, off)
		}
	}
	t.Logf("the predecessor's %d keys removed %s after the restart (lease TTL %s)", n, took.Round(time.Millisecond), ttl)
}

// A removed connection leaves nothing behind: its delete marker and
// earlier writes are purged a TTL later, and that purge's marker expires
// a TTL after; none of it brings an event.
func TestRemovedKeysPurged(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	const ttl = 2 * time.Second
	a := startNode(t, srv.ClientURL(), "edgeA", ttl)
	b := startNode(t, srv.ClientURL(), "edgeB", ttl)
	svc := testenv.Connect(t, srv.ClientURL())
	ev := collect(t, svc)
	const n = 20
	for i := range n {
		id, user := fmt.Sprintf("t%02d", i), fmt.Sprintf("tu%02d", i)
		a.Set(presence.Entry{Conn: id, User: user})
		a.Update(presence.Entry{Conn: id, User: user, Rooms: []string{"r"}, Seq: 1})
	}
	testenv.Eventually(t, 5*time.Second, "members", func() bool { return b.Room("r", "", 1).Count == n })
	for i := range n {
		a.Remove(fmt.Sprintf("t%02d", i))
	}
	testenv.Eventually(t, 5*time.Second, "removed", func() bool { return b.Room("r", "", 1).Count == 0 && ev.count(presence.EventOffline) == n })
	removed := time.Now()
	testenv.Eventually(t, 2*ttl+5*time.Second, "only the two leases in the bucket", func() bool { return bucket(t, svc).Msgs == 2 })
	t.Logf("the bucket holds only the leases %s after the removals (lease TTL %s)", time.Since(removed).Round(time.Millisecond), ttl)
	drained(t, a, b)
	stored := storedEvents(t, svc)
	for i := range n {
		user := fmt.Sprintf("tu%02d", i)
		for _, name := range []string{presence.EventConnect, presence.EventOnline, presence.EventJoin, presence.EventLeave, presence.EventDisconnect, presence.EventOffline} {
			if c := countStored(stored, name, user, ""); c != 1 {
				t.Errorf("%s: %d %s events", user, c, name)
			}
		}
	}
}
