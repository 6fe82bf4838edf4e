package edge

import (
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/natsd"
)

// Unit tests of the dispatcher against a real embedded nats-server. They
// are in package edge because the dispatcher is not exported; testenv
// imports edge, so they start the server themselves.

const dispatchWait = 5 * time.Second

func dispatchNATS(t testing.TB) *nats.Conn {
	t.Helper()
	srv, err := natsd.Start(natsd.Config{Addr: "127.0.0.1:0", StoreDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newTestDispatcher starts a dispatcher with at least two shards and
// checks at cleanup that close stops every goroutine it started.
func newTestDispatcher(t *testing.T) *dispatcher {
	t.Helper()
	if runtime.GOMAXPROCS(0) < 2 {
		prev := runtime.GOMAXPROCS(2)
		t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	}
	base := runtime.NumGoroutine()
	d := newDispatcher()
	t.Cleanup(func() {
		d.close()
		deadline := time.Now().Add(dispatchWait)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines after close, %d before the dispatcher", runtime.NumGoroutine(), base)
				return
			}
			time.Sleep(5 * time.Millisecond) // polls, with the deadline above
		}
	})
	return d
}

// got records what handlers received, per id.
type got struct {
	mu       sync.Mutex
	seqs     map[string][]int
	n        int
	inFlight map[string]*atomic.Int32
	overlap  atomic.Int32 // handler calls for one id that ran at once
}

func newGot() *got {
	return &got{seqs: make(map[string][]int), inFlight: make(map[string]*atomic.Int32)}
}

func (g *got) handle(id string, msg *nats.Msg) {
	g.mu.Lock()
	f := g.inFlight[id]
	if f == nil {
		f = new(atomic.Int32)
		g.inFlight[id] = f
	}
	g.mu.Unlock()
	if f.Add(1) > 1 {
		g.overlap.Add(1)
	}
	seq, _ := strconv.Atoi(string(msg.Data))
	g.mu.Lock()
	g.seqs[id] = append(g.seqs[id], seq)
	g.n++
	g.mu.Unlock()
	f.Add(-1)
}

func (g *got) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(dispatchWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polls, with the deadline above
	}
}

// Two subscriptions by id, as an edge has for out.conn and ctl.conn: each
// message reaches the handler with the id at the end of its subject, only
// subjects of this edge's ids arrive, and every id's messages, from both
// subscriptions, run one at a time in the order they were published,
// while different ids spread over the shards.
func TestDispatcherByIDRoutesAndKeepsOrder(t *testing.T) {
	nc := dispatchNATS(t)
	d := newTestDispatcher(t)
	g := newGot()
	for _, mid := range []string{"t.out.conn.", "t.ctl.conn."} {
		if _, err := d.subscribeByID(nc, mid+"e1.*", len(mid), g.handle); err != nil {
			t.Fatal(err)
		}
	}
	// Not this edge's, or not a connection id: the wildcard does not match.
	for _, s := range []string{"t.out.conn.e2.a", "t.out.conn.e1", "t.out.conn.e1.a.b", "t.ctl.conn.e10.a", "t.out.user.e1.a"} {
		if err := nc.Publish(s, []byte("-1")); err != nil {
			t.Fatal(err)
		}
	}
	const ids, rounds = 40, 100
	for seq := range rounds {
		for i := range ids {
			mid := "t.out.conn."
			if (seq+i)%3 == 0 {
				mid = "t.ctl.conn."
			}
			if err := nc.Publish(fmt.Sprintf("%se1.c%d", mid, i), []byte(strconv.Itoa(seq))); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, "every message", func() bool { return g.count() >= ids*rounds })
	// A sentinel on every shard: whatever else was to arrive has.
	sentinels := newGot()
	for shard := range d.chans {
		subj := "t.sentinel." + strconv.Itoa(shard)
		if _, err := d.subscribe(nc, subj, shard, func(m *nats.Msg) { sentinels.handle(subj, m) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for shard := range d.chans {
		_ = nc.Publish("t.sentinel."+strconv.Itoa(shard), []byte("0"))
	}
	eventually(t, "the sentinels", func() bool { return sentinels.count() == len(d.chans) })

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n != ids*rounds || len(g.seqs) != ids {
		t.Fatalf("%d messages for %d ids, want %d for %d: %v", g.n, len(g.seqs), ids*rounds, ids, keys(g.seqs))
	}
	shards := map[int]bool{}
	for i := range ids {
		id := fmt.Sprintf("e1.c%d", i)
		seqs := g.seqs[id]
		for want, seq := range seqs {
			if seq != want {
				t.Fatalf("%s: message %d is %d: %v", id, want, seq, seqs)
			}
		}
		shards[d.shardOf(id)] = true
	}
	if n := g.overlap.Load(); n > 0 {
		t.Errorf("%d handler calls ran alongside another of the same id", n)
	}
	if len(shards) < 2 {
		t.Errorf("%d ids on %d shard(s) of %d", ids, len(shards), len(d.chans))
	}
}

func keys(m map[string][]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// After unsubscribe, messages of the subscription still waiting on a
// channel are dropped, even when a new subscription took the subject over,
// and nothing more arrives; the new subscription gets only its own.
func TestDispatcherUnsubscribe(t *testing.T) {
	nc := dispatchNATS(t)
	d := newTestDispatcher(t)
	const id = "e1.a"
	shard := d.shardOf(id)
	started, release := make(chan struct{}), make(chan struct{})
	var old atomic.Int32
	sub, err := d.subscribeByID(nc, "t.out.conn.e1.*", len("t.out.conn."), func(string, *nats.Msg) {
		if old.Add(1) == 1 {
			close(started)
			<-release // holds the shard: the next messages wait on its channel
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_ = nc.Publish("t.out.conn."+id, []byte(strconv.Itoa(i)))
	}
	<-started
	eventually(t, "four messages waiting on the shard", func() bool { return len(d.chans[shard]) == 4 })
	d.unsubscribe(sub)

	fresh := newGot()
	if _, err := d.subscribeByID(nc, "t.out.conn.e1.*", len("t.out.conn."), fresh.handle); err != nil {
		t.Fatal(err)
	}
	sentinel := make(chan struct{})
	if _, err := d.subscribe(nc, "t.sentinel", shard, func(*nats.Msg) { close(sentinel) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = nc.Publish("t.out.conn."+id, []byte("5"))
	eventually(t, "the new subscription's message on the shard", func() bool { return len(d.chans[shard]) == 5 })
	_ = nc.Publish("t.sentinel", nil)
	close(release)
	select {
	case <-sentinel:
	case <-time.After(dispatchWait):
		t.Fatal("no sentinel")
	}
	if n := old.Load(); n != 1 {
		t.Errorf("the unsubscribed handler ran %d times, want 1", n)
	}
	fresh.mu.Lock()
	defer fresh.mu.Unlock()
	if seqs := fresh.seqs[id]; len(seqs) != 1 || seqs[0] != 5 {
		t.Errorf("the new subscription got %v, want [5]", seqs)
	}
}

// A plain subscription's messages, and messages injected in its name, run
// on its shard in order; an injected message of a subscription that has
// ended is dropped.
func TestDispatcherPlainAndInject(t *testing.T) {
	nc := dispatchNATS(t)
	d := newTestDispatcher(t)
	g := newGot()
	sub, err := d.subscribe(nc, "t.out.room.r", 1, func(m *nats.Msg) { g.handle("r", m) })
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = nc.Publish("t.out.room.r", []byte("0"))
	eventually(t, "the first message", func() bool { return g.count() == 1 })
	if !d.inject(&nats.Msg{Subject: sub.Subject, Sub: sub, Data: []byte("1")}, 1) {
		t.Fatal("inject refused")
	}
	_ = nc.Publish("t.out.room.r", []byte("2"))
	eventually(t, "three messages", func() bool { return g.count() == 3 })

	d.unsubscribe(sub)
	if _, err := d.subscribe(nc, "t.out.room.r", 1, func(m *nats.Msg) { g.handle("r", m) }); err != nil {
		t.Fatal(err)
	}
	sentinel := make(chan struct{})
	if _, err := d.subscribe(nc, "t.sentinel", 1, func(*nats.Msg) { close(sentinel) }); err != nil {
		t.Fatal(err)
	}
	d.inject(&nats.Msg{Subject: sub.Subject, Sub: sub, Data: []byte("9")}, 1) // the old subscription's
	d.inject(&nats.Msg{Subject: "t.sentinel", Data: nil}, 1)                  // no subscription at all
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = nc.Publish("t.sentinel", nil)
	select {
	case <-sentinel:
	case <-time.After(dispatchWait):
		t.Fatal("no sentinel")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if seqs := g.seqs["r"]; fmt.Sprint(seqs) != "[0 1 2]" {
		t.Errorf("got %v, want [0 1 2]", seqs)
	}
}
