//go:build cluster

package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
)

// TestCluster runs every scenario on one cluster, the destructive ones
// last: a worker killed, an edge killed (and restarted), then a NATS node
// killed, then an edge stopped.
func TestCluster(t *testing.T) {
	c := startCluster(t)
	fig := &figures{}
	t.Run("RoomAcrossEdges", func(t *testing.T) { testRoomAcrossEdges(t, c) })
	t.Run("UserOnBothEdges", func(t *testing.T) { testUserOnBothEdges(t, c) })
	t.Run("PublishOnEveryNode", func(t *testing.T) { testPublishOnEveryNode(t, c) })
	t.Run("CrossEdgeLatency", func(t *testing.T) { testCrossEdgeLatency(t, c, fig) })
	t.Run("RPCSpreadAndWorkerKill", func(t *testing.T) { testRPCSpreadAndWorkerKill(t, c, fig) })
	t.Run("DurableResumeThroughOtherEdge", func(t *testing.T) { testDurableResume(t, c, fig, false) })
	t.Run("DurableResumeNATSNodeKilled", func(t *testing.T) { testDurableResume(t, c, fig, true) })
	t.Run("StreamResumeThroughOtherEdge", func(t *testing.T) { testStreamResume(t, c, fig, false) })
	t.Run("StreamNATSNodeKilled", func(t *testing.T) { testStreamResume(t, c, fig, true) })
	t.Run("DurableMessagesNATSNodeKilled", func(t *testing.T) { testDurableMessagesNodeKilled(t, c, fig) })
	t.Run("EdgeSIGKILLPresence", func(t *testing.T) { testEdgeSIGKILLPresence(t, c, fig) })
	t.Run("NATSNodeKill", func(t *testing.T) { testNATSNodeKill(t, c, fig) })
	t.Run("EdgeSIGTERM", func(t *testing.T) { testEdgeSIGTERM(t, c, fig) })
	fig.report(t)
}

// testRoomAcrossEdges: a chat message (chat.send through a worker) from a
// client on one edge reaches the room's members on both edges, both ways.
func testRoomAcrossEdges(t *testing.T, c *Cluster) {
	a, b := c.edges[0], c.edges[1]
	alice, amy := dial(t, a.url, "alice"), dial(t, a.url, "amy")
	bob, ben := dial(t, b.url, "bob"), dial(t, b.url, "ben")
	all := []*member{alice, amy, bob, ben}
	for _, m := range all {
		m.join(t, "r1")
	}
	say := func(from *member, text string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := from.c.Call(ctx, "chat.send", map[string]string{"room": "r1", "text": text}, nil); err != nil {
			t.Fatalf("%s: chat.send: %v", from.name, err)
		}
		for _, m := range all {
			if m == from {
				continue
			}
			got := m.await(t, "chat.message", func(e *envelope.Envelope) bool { return payloadField(e, "text") == text })
			if user := payloadField(got, "user"); user != from.name || got.Meta.Room != "r1" {
				t.Fatalf("%s got %s (meta.room %q), want from %s in r1", m.name, got.Payload, got.Meta.Room, from.name)
			}
		}
	}
	say(alice, "hello from "+a.id)
	say(bob, "hello from "+b.id)
}

// testUserOnBothEdges: a service's message to natter.out.user.<id>
// reaches every connection of that user, on both edges, and no one else.
func testUserOnBothEdges(t *testing.T, c *Cluster) {
	a, b := c.edges[0], c.edges[1]
	carolA, carolB := dial(t, a.url, "carol"), dial(t, b.url, "carol")
	danA, danB := dial(t, a.url, "dan"), dial(t, b.url, "dan")
	nc := connectNode(t, c.nodes[0])
	publish(t, nc, "natter.out.user.carol", "notice", map[string]string{"to": "carol"})
	publish(t, nc, "natter.out.all", "marker", nil)
	for _, m := range []*member{carolA, carolB} {
		m.await(t, "notice", func(e *envelope.Envelope) bool { return payloadField(e, "to") == "carol" })
	}
	// dan gets the broadcast published after carol's notice; a notice that
	// leaked to him would be among the frames before or soon after it.
	for _, m := range []*member{danA, danB} {
		m.await(t, "marker", func(e *envelope.Envelope) bool { return true })
		for len(m.frames) > 0 {
			if e := <-m.frames; e.Type == "notice" {
				t.Fatalf("%s got carol's notice: %s", m.name, e.Payload)
			}
		}
	}
}

// testPublishOnEveryNode: a service connected to any node reaches room
// members on both edges.
func testPublishOnEveryNode(t *testing.T, c *Cluster) {
	a, b := c.edges[0], c.edges[1]
	eveA, eveB := dial(t, a.url, "eve"), dial(t, b.url, "eva")
	eveA.join(t, "r3")
	eveB.join(t, "r3")
	for _, n := range c.nodes {
		nc := connectNode(t, n)
		publish(t, nc, "natter.out.room.r3", "svc.note", map[string]string{"node": n.name})
		for _, m := range []*member{eveA, eveB} {
			got := m.await(t, "svc.note", func(e *envelope.Envelope) bool { return payloadField(e, "node") == n.name })
			if got.Meta.Room != "r3" {
				t.Fatalf("%s: meta.room %q", m.name, got.Meta.Room)
			}
		}
		nc.Close()
	}
}

// testCrossEdgeLatency measures the time from a client's chat.send on one
// edge to its delivery to a room member on the other edge: client ->
// edge -> NATS -> worker (membership check with the sender's edge) ->
// NATS -> other edge -> client. Two senders per edge send at a moderate
// rate; one receiver per edge records every message (cross-edge and
// same-edge).
func testCrossEdgeLatency(t *testing.T, c *Cluster, fig *figures) {
	const (
		perSender = 300
		interval  = 20 * time.Millisecond // 50 msg/s per sender, 200 msg/s in all
		room      = "lat"
	)
	type sender struct {
		m    *member
		edge string
	}
	var senders []sender
	var receivers []sender
	for _, e := range c.edges {
		for i := range 2 {
			senders = append(senders, sender{dial(t, e.url, fmt.Sprintf("lat-%s-%d", e.id, i)), e.id})
		}
		receivers = append(receivers, sender{dial(t, e.url, "lat-rx-"+e.id), e.id})
	}
	var (
		mu          sync.Mutex
		cross, same latencies
		got         = map[string]int{}
		bad         []string
	)
	for _, rx := range receivers {
		rx.m.join(t, room)
		rx.m.c.On("chat.message", func(env *envelope.Envelope) {
			now := time.Now()
			var edge string
			var seq, sent int64
			_, err := fmt.Sscanf(payloadField(env, "text"), "%s %d %d", &edge, &seq, &sent)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				bad = append(bad, string(env.Payload))
				return
			}
			got[rx.edge]++
			d := now.Sub(time.Unix(0, sent))
			if edge != rx.edge {
				cross = append(cross, d)
			} else {
				same = append(same, d)
			}
		})
	}
	var refused int
	for _, s := range senders {
		s.m.join(t, room)
		s.m.c.On(envelope.TypeError, func(env *envelope.Envelope) {
			mu.Lock()
			refused++
			bad = append(bad, string(env.Payload))
			mu.Unlock()
		})
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(senders))
	for _, s := range senders {
		wg.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := range perSender {
				<-tick.C
				text := fmt.Sprintf("%s %d %d", s.edge, i, time.Now().UnixNano())
				if err := s.m.c.Send("chat.send", map[string]string{"room": room, "text": text}); err != nil {
					errs <- fmt.Errorf("%s: send: %w", s.m.name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := perSender * len(senders)
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		done := got[c.edges[0].id] >= total && got[c.edges[1].id] >= total
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("cross-edge latency: %s", cross)
	t.Logf("same-edge latency:  %s", same)
	fig.add("cross-edge delivery latency (client on one edge sends chat.send -> worker -> room member on the other edge; "+
		"%d messages at %d msg/s from 4 clients, race-enabled binaries): %s",
		total, int(float64(len(senders))*float64(time.Second)/float64(interval)), cross)
	fig.add("same-edge delivery latency (same messages, member on the sender's edge): %s", same)
	if len(bad) > 0 {
		t.Errorf("%d error frames or unparsable messages (%d refused), first: %s", len(bad), refused, bad[0])
	}
	for _, rx := range receivers {
		if got[rx.edge] != total {
			t.Errorf("%s received %d of %d messages in %s", rx.m.name, got[rx.edge], total, elapsed)
		}
	}
	if len(cross) < 1000 {
		t.Errorf("only %d cross-edge samples", len(cross))
	}
}

// rpcResult is one ping.
type rpcResult struct {
	caller     string
	worker     string // from the pong, with --worker-id
	sent, done time.Time
	err        error
}

// rpcLoad runs paced pings from several clients until stopped.
type rpcLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	res    []rpcResult
}

// rpcTimeout is the deadline of each ping (sent as meta.timeoutMs): an RPC
// lost with a killed worker fails after it.
const rpcTimeout = 3 * time.Second

func startLoad(callers []*member, every time.Duration) *rpcLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &rpcLoad{cancel: cancel}
	for _, m := range callers {
		l.wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				cctx, ccancel := context.WithTimeout(context.Background(), rpcTimeout)
				r := rpcResult{caller: m.name, sent: time.Now()}
				var pong struct {
					Time   int64  `json:"time"`
					Worker string `json:"worker"`
				}
				r.err = m.c.Call(cctx, "ping", struct{}{}, &pong)
				if r.err == nil && pong.Time == 0 {
					r.err = errors.New("pong without time")
				}
				r.worker = pong.Worker
				ccancel()
				r.done = time.Now()
				l.mu.Lock()
				l.res = append(l.res, r)
				l.mu.Unlock()
			}
		})
	}
	return l
}

// count returns how many results f accepts.
func (l *rpcLoad) count(f func(rpcResult) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.res {
		if f(r) {
			n++
		}
	}
	return n
}

// stop stops the callers, waits for the calls in flight and returns every
// result.
func (l *rpcLoad) stop() []rpcResult {
	l.cancel()
	l.wg.Wait()
	return l.res
}

// answeredBy counts the successful pings per answering worker.
func answeredBy(res []rpcResult) map[string]int {
	out := map[string]int{}
	for _, r := range res {
		if r.err == nil {
			out[r.worker]++
		}
	}
	return out
}

// everything counts every result.
func everything(rpcResult) bool { return true }

// code is an RPC error's wire code.
func code(err error) string {
	var re *rpc.Error
	if errors.As(err, &re) {
		return string(re.Code)
	}
	return err.Error()
}

// testRPCSpreadAndWorkerKill: pings from clients on both edges are spread
// over both worker processes (counted by the cluster's /connz: messages
// delivered to each worker's NATS user); then one worker is killed with
// SIGKILL mid-stream, and every ping sent after its connection left the
// cluster is answered by the survivor.
func testRPCSpreadAndWorkerKill(t *testing.T, c *Cluster, fig *figures) {
	var callers []*member
	for _, e := range c.edges {
		for i := range 2 {
			callers = append(callers, dial(t, e.url, fmt.Sprintf("rpc-%s-%d", e.id, i)))
		}
	}
	const every = 20 * time.Millisecond // 50 RPC/s per client, 200 in all
	w1, w2 := c.workers[0], c.workers[1]

	// Spread.
	before := c.delivered(t)
	load := startLoad(callers, every)
	testenv.Eventually(t, wait, "200 pings", func() bool { return load.count(everything) >= 200 })
	res := load.stop()
	after := c.delivered(t)
	for _, r := range res {
		if r.err != nil {
			t.Errorf("%s: ping at %s: %v", r.caller, r.sent.Format(time.StampMilli), r.err)
		}
	}
	// Who answered: the pong names the worker (--worker-id); the nodes'
	// /connz counts the messages each worker's NATS user received.
	answered := answeredBy(res)
	n1, n2 := after[w1.user]-before[w1.user], after[w2.user]-before[w2.user]
	t.Logf("%d pings: answered by %v; NATS delivered %d to %s, %d to %s; connections per node: %v",
		len(res), answered, n1, w1.user, n2, w2.user, c.where(t))
	fig.add("RPC spread over two workers: %d pings from 4 clients on 2 edges -> pongs from %v; NATS deliveries %s %d, %s %d",
		len(res), answered, w1.user, n1, w2.user, n2)
	if n1 == 0 || n2 == 0 || n1+n2 < int64(len(res)) {
		t.Errorf("pings not spread over both workers: NATS delivered %d to %s, %d to %s, for %d pings", n1, w1.user, n2, w2.user, len(res))
	}
	if answered[w1.user] == 0 || answered[w2.user] == 0 || answered[w1.user]+answered[w2.user] != len(res) {
		t.Errorf("pings not answered by both workers: %v of %d", answered, len(res))
	}

	// Kill worker-1 mid-stream.
	load = startLoad(callers, every)
	testenv.Eventually(t, wait, "100 pings before the kill", func() bool { return load.count(everything) >= 100 })
	kill := time.Now()
	sigkill(t, w1.proc)
	var gone time.Time
	testenv.Eventually(t, wait, w1.user+"'s connection to leave the cluster", func() bool {
		for _, users := range c.where(t) {
			if slices.Contains(users, w1.user) {
				return false
			}
		}
		gone = time.Now()
		return true
	})
	atGone := c.delivered(t)
	testenv.Eventually(t, wait, "200 pings sent after the kill", func() bool {
		return load.count(func(r rpcResult) bool { return r.sent.After(gone) }) >= 200
	})
	res = load.stop()
	atEnd := c.delivered(t)

	var inFlight, window, later, laterFailed int
	codes := map[string]int{}
	var lateRes []rpcResult
	for _, r := range res {
		switch {
		case r.sent.After(gone):
			later++
			lateRes = append(lateRes, r)
			if r.err != nil {
				laterFailed++
				t.Errorf("%s: ping sent %s after the worker left failed: %v", r.caller, r.sent.Sub(gone), r.err)
			}
		case r.err == nil:
		case r.sent.Before(kill):
			inFlight++
			codes[code(r.err)]++
		default:
			window++
			codes[code(r.err)]++
		}
	}
	survivor := atEnd[w2.user] - atGone[w2.user]
	t.Logf("worker kill: %d pings in all; failed: %d in flight at the kill, %d sent between the kill and the connection leaving (%s later); codes %v; %d sent after, %d failed; NATS delivered %d to %s after",
		len(res), inFlight, window, gone.Sub(kill).Round(time.Millisecond), codes, later, laterFailed, survivor, w2.user)
	fig.add("worker SIGKILL mid-stream (%d pings, %d/s): %d failed (%d in flight at the kill, %d sent before its connection left the cluster %s after the kill), codes %v; %d later pings all answered by %s: %v",
		len(res), int(float64(len(callers))*float64(time.Second)/float64(every)), inFlight+window, inFlight, window,
		gone.Sub(kill).Round(time.Millisecond), codes, later, w2.user, laterFailed == 0)
	// (survivor is only logged: its first snapshot is taken a little after
	// gone, so it misses the pings answered in between.)
	if late := answeredBy(lateRes); late[w2.user] != later {
		t.Errorf("pings sent after the kill answered by %v, want all %d by %s", late, later, w2.user)
	}
}

// testNATSNodeKill kills the NATS node that holds the most edge
// connections with SIGKILL. The clients keep their WebSockets, the edges
// reconnect to the survivors and deliver again; presence (R3) stays
// correct: the same connections online, no spurious offline.
func testNATSNodeKill(t *testing.T, c *Cluster, fig *figures) {
	a, b := c.edges[0], c.edges[1]
	kate, kurt := dial(t, a.url, "kate"), dial(t, b.url, "kurt")
	kate.join(t, "r5")
	kurt.join(t, "r5")

	where := c.where(t)
	var victim *natsNode
	most := -1
	for _, n := range c.live() {
		k := 0
		for _, u := range where[n.name] {
			if strings.HasPrefix(u, "edge-") {
				k++
			}
		}
		if k > most {
			victim, most = n, k
		}
	}
	var survivors []*natsNode
	for _, n := range c.live() {
		if n != victim {
			survivors = append(survivors, n)
		}
	}
	s1, s2 := connectNode(t, survivors[0]), connectNode(t, survivors[1])
	js, err := jetstream.New(s1)
	if err != nil {
		t.Fatal(err)
	}
	// The worst case: the victim also leads the presence bucket and the
	// event stream, so the kill forces their leader elections.
	streams := []string{"KV_" + presence.Bucket, "natter_events"}
	for _, s := range streams {
		moveLeader(t, s1, js, s, victim.name)
	}
	leaders := streamLeaders(t, js, streams...)
	t.Logf("killing %s (connections: %v); stream leaders: %v", victim.name, where[victim.name], leaders)

	// Before: both users online with one connection each, both in r5.
	var conns map[string]map[string]string // user -> conn -> edge
	testenv.Eventually(t, wait, "kate and kurt in presence", func() bool {
		conns = map[string]map[string]string{}
		for _, u := range []string{"kate", "kurt"} {
			conns[u] = connEdges(userInfo(t, s1, u))
		}
		return len(conns["kate"]) == 1 && len(conns["kurt"]) == 1
	})
	events := watchEvents(t, s1)
	rev0 := map[string]uint64{}
	testenv.Eventually(t, wait, "the presence keys in the bucket", func() bool {
		revs, err := keyRevisions(js, conns)
		for key, r := range revs {
			rev0[key] = r.rev
		}
		return err == nil
	})
	lease0 := map[string]uint64{}
	testenv.Eventually(t, wait, "the edges' leases in the bucket", func() bool {
		revs, err := leaseRevisions(js, a.id, b.id)
		for key, r := range revs {
			lease0[key] = r.rev
		}
		return err == nil
	})
	var mu sync.Mutex
	first := map[string]time.Time{} // member -> first probe sent after the node died
	var dead time.Time
	for _, m := range []*member{kate, kurt} {
		m.c.On("probe", func(env *envelope.Envelope) {
			now := time.Now()
			var p struct {
				Sent int64 `json:"sent"`
			}
			_ = json.Unmarshal(env.Payload, &p)
			mu.Lock()
			defer mu.Unlock()
			if _, ok := first[m.name]; !ok && !dead.IsZero() && p.Sent >= dead.UnixNano() {
				first[m.name] = now
			}
		})
	}

	kill := time.Now()
	sigkill(t, victim.proc)
	victim.dead = true
	mu.Lock()
	dead = time.Now()
	mu.Unlock()

	// Probes through a survivor every 10ms until both edges deliver again.
	deadline := time.Now().Add(wait)
	for seq := 0; ; seq++ {
		mu.Lock()
		done := len(first) == 2
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery on both edges within %s of the kill (got %v)", wait, first)
		}
		publish(t, s1, "natter.out.room.r5", "probe", map[string]int64{"seq": int64(seq), "sent": time.Now().UnixNano()})
		time.Sleep(10 * time.Millisecond)
	}
	recovery := max(first["kate"].Sub(kill), first["kurt"].Sub(kill))
	t.Logf("delivery again after the kill: %s on %s (kate), %s on %s (kurt)",
		first["kate"].Sub(kill).Round(time.Millisecond), a.id, first["kurt"].Sub(kill).Round(time.Millisecond), b.id)

	// The bucket answers reads through a survivor again (a stream whose
	// leader was killed has none until the survivors elect one), stores
	// the edges' lease refreshes again, and one TTL after the kill still
	// holds every connection key as it was: a lease that lapsed would have
	// had its edge's keys removed and rewritten.
	var kvBack, writesBack time.Time
	testenv.Eventually(t, wait, "presence keys readable from the bucket", func() bool {
		_, err := keyRevisions(js, conns)
		kvBack = time.Now()
		return err == nil
	})
	testenv.Eventually(t, wait, "lease refreshes stored after the kill", func() bool {
		revs, err := leaseRevisions(js, a.id, b.id)
		if err != nil {
			return false
		}
		for key, r := range revs {
			if r.rev <= lease0[key] {
				return false
			}
		}
		writesBack = time.Now()
		return true
	})
	testenv.Eventually(t, wait, "leases refreshed one TTL after the kill", func() bool {
		revs, err := leaseRevisions(js, a.id, b.id)
		if err != nil {
			return false
		}
		for _, r := range revs {
			if !r.stored.After(kill.Add(*presenceTTL)) {
				return false
			}
		}
		return true
	})
	if revs, err := keyRevisions(js, conns); err != nil {
		t.Errorf("presence keys one TTL after the kill: %v", err)
	} else {
		for key, r := range revs {
			if r.rev != rev0[key] {
				t.Errorf("%s: revision %d one TTL after the kill, %d before: removed or rewritten", key, r.rev, rev0[key])
			}
		}
	}
	// The event pipeline works after the failover (so its silence about
	// kate and kurt means something): a new user's online event arrives.
	kim := dial(t, b.url, "kim")
	testenv.Eventually(t, wait, "kim's online event", func() bool { return len(events.find(of(presence.EventOnline, "kim"))) > 0 })
	_ = kim
	for _, u := range []string{"kate", "kurt"} {
		for _, ev := range []string{presence.EventOffline, presence.EventDisconnect} {
			if got := events.find(of(ev, u)); len(got) > 0 {
				t.Errorf("spurious %s of %s after the node kill: %+v", ev, u, got)
			}
		}
	}
	// Presence, asked through each survivor: the same connections on the
	// same edges.
	for _, nc := range []*nats.Conn{s1, s2} {
		for _, u := range []string{"kate", "kurt"} {
			info := userInfo(t, nc, u)
			if !info.Online || !mapsEqual(connEdges(info), conns[u]) {
				t.Errorf("presence of %s after the kill: online %v, %v; before %v", u, info.Online, connEdges(info), conns[u])
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		page, err := presence.Room(ctx, nc, envelope.DefaultNamespace, "r5", "", 100)
		cancel()
		if err != nil || page.Count != 2 {
			t.Errorf("room r5 after the kill: %+v, %v", page, err)
		}
	}
	// The clients never noticed: no state change after their first open.
	for _, m := range []*member{kate, kurt} {
		if log := m.stateLog(); len(log) != 2 || log[1].state != client.StateOpen {
			t.Errorf("%s saw state changes: %+v", m.name, log)
		}
	}
	// RPCs work (the surviving worker may have been on the victim).
	for _, m := range []*member{kate, kurt} {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		if err := m.c.Call(ctx, "ping", struct{}{}, nil); err != nil {
			t.Errorf("%s: ping after the kill: %v", m.name, err)
		}
		cancel()
	}
	after := streamLeaders(t, js, streams...)
	t.Logf("after the kill: presence KV readable after %s, lease refreshes stored after %s; stream leaders %v",
		kvBack.Sub(kill).Round(time.Millisecond), writesBack.Sub(kill).Round(time.Millisecond), after)
	fig.add("NATS node SIGKILL (%s, holding %v and the stream leaders, new leaders %v): room delivery through a survivor on both edges again after %s (%s %s, %s %s); presence KV readable after %s, lease refreshes stored after %s (presence TTL %s); no close, no spurious offline: %v",
		victim.name, where[victim.name], after, recovery.Round(time.Millisecond),
		a.id, first["kate"].Sub(kill).Round(time.Millisecond), b.id, first["kurt"].Sub(kill).Round(time.Millisecond),
		kvBack.Sub(kill).Round(time.Millisecond), writesBack.Sub(kill).Round(time.Millisecond), *presenceTTL, !t.Failed())
}

// streamLeaders returns each stream's cluster leader. A stream info
// request that gets no answer is retried (with a log line) until wait.
func streamLeaders(t testing.TB, js jetstream.JetStream, names ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range names {
		deadline := time.Now().Add(wait)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			s, err := js.Stream(ctx, name)
			var info *jetstream.StreamInfo
			if err == nil {
				info, err = s.Info(ctx)
			}
			cancel()
			if err == nil {
				if info.Cluster != nil {
					out[name] = info.Cluster.Leader
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stream %s: %v", name, err)
			}
			t.Logf("stream %s info: %v after %s; retrying", name, err, time.Since(start).Round(time.Millisecond))
		}
	}
	return out
}

// moveLeader makes server the leader of stream: it asks the leader to step
// down in favour of server until server leads.
func moveLeader(t testing.TB, nc *nats.Conn, js jetstream.JetStream, stream, server string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if streamLeaders(t, js, stream)[stream] == server {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: leader not moved to %s within %s", stream, server, wait)
		}
		body := fmt.Sprintf(`{"placement":{"preferred":%q}}`, server)
		if msg, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(body), 5*time.Second); err != nil {
			t.Logf("%s: leader stepdown: %v", stream, err)
		} else if !strings.Contains(string(msg.Data), `"success":true`) {
			t.Logf("%s: leader stepdown: %s", stream, msg.Data)
		}
		// A new leader is elected within a few hundred milliseconds.
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if streamLeaders(t, js, stream)[stream] == server {
				return
			}
		}
	}
}

// keyRev is a presence key's latest revision and when it was stored.
type keyRev struct {
	rev    uint64
	stored time.Time
}

// keyRevisions reads the presence keys of conns (user -> conn -> edge)
// from the bucket.
func keyRevisions(js jetstream.JetStream, conns map[string]map[string]string) (map[string]keyRev, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, presence.Bucket)
	if err != nil {
		return nil, err
	}
	out := map[string]keyRev{}
	for _, cs := range conns {
		for conn := range cs {
			e, err := kv.Get(ctx, "conn."+conn)
			if err != nil {
				return nil, fmt.Errorf("conn.%s: %w", conn, err)
			}
			out["conn."+conn] = keyRev{e.Revision(), e.Created()}
		}
	}
	return out, nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// testEdgeSIGTERM stops edge-a with SIGTERM. Its clients, which came in
// through a front (load balancer) preferring edge-a, get close code 4000,
// reconnect through the front to edge-b and re-join their rooms; presence
// moves to edge-b and the old connections disappear.
func testEdgeSIGTERM(t *testing.T, c *Cluster, fig *figures) {
	a, b := c.edges[0], c.edges[1]
	fr := startFront(t, a.addr, b.addr)
	frontURL := strings.Replace(a.url, a.addr, fr.addr(), 1)
	dave1, dave2 := dial(t, frontURL, "dave"), dial(t, frontURL, "dave")
	frankA, frankB := dial(t, frontURL, "frank"), dial(t, b.url, "frank")
	movers := []*member{dave1, dave2, frankA}
	for _, m := range []*member{dave1, dave2, frankA, frankB} {
		m.join(t, "r6")
	}
	svc := connectNode(t, c.live()[0])
	var before map[string]map[string]string
	testenv.Eventually(t, wait, "dave and frank in presence", func() bool {
		before = map[string]map[string]string{"dave": connEdges(userInfo(t, svc, "dave")), "frank": connEdges(userInfo(t, svc, "frank"))}
		return countEdge(before["dave"], a.id) == 2 && countEdge(before["frank"], a.id) == 1 && countEdge(before["frank"], b.id) == 1
	})
	events := watchEvents(t, svc)

	term := time.Now()
	sigterm(t, a.proc)
	reopened := map[string]time.Duration{}
	for i, m := range movers {
		var closeCode envelope.CloseCode
		testenv.Eventually(t, wait, m.name+" to reconnect", func() bool {
			var dropped bool
			for _, s := range m.stateLog() {
				switch {
				case s.state == client.StateReconnecting && s.at.After(term):
					dropped, closeCode = true, s.info.Code
				case s.state == client.StateOpen && dropped:
					reopened[fmt.Sprintf("%s#%d", m.name, i)] = s.at.Sub(term)
					return true
				}
			}
			return false
		})
		if closeCode != envelope.CloseShutdown {
			t.Errorf("%s: close code %d, want %d", m.name, closeCode, envelope.CloseShutdown)
		}
	}
	if code := a.proc.Wait(t, wait); code != 0 {
		t.Errorf("%s exit code %d", a.id, code)
	}
	if log := frankB.stateLog(); len(log) != 2 {
		t.Errorf("frank's connection on %s saw state changes: %+v", b.id, log)
	}

	// Presence moved: every connection on edge-b, the old ones gone.
	var after map[string]map[string]string
	testenv.Eventually(t, wait, "presence to move to "+b.id, func() bool {
		after = map[string]map[string]string{"dave": connEdges(userInfo(t, svc, "dave")), "frank": connEdges(userInfo(t, svc, "frank"))}
		return len(after["dave"]) == 2 && countEdge(after["dave"], b.id) == 2 &&
			len(after["frank"]) == 2 && countEdge(after["frank"], b.id) == 2
	})
	var old []string
	for _, u := range []string{"dave", "frank"} {
		for conn, edge := range before[u] {
			if edge != a.id {
				continue
			}
			old = append(old, conn)
			if _, ok := after[u][conn]; ok {
				t.Errorf("%s's old connection %s still in presence", u, conn)
			}
			testenv.Eventually(t, wait, "the disconnect event of "+conn, func() bool {
				return len(events.find(func(e presence.Event) bool { return e.Event == presence.EventDisconnect && e.Conn == conn })) == 1
			})
		}
	}
	// The movers re-joined r6 on edge-b.
	publish(t, svc, "natter.out.room.r6", "svc.note", map[string]string{"after": "sigterm"})
	for _, m := range []*member{dave1, dave2, frankA, frankB} {
		m.await(t, "svc.note", func(e *envelope.Envelope) bool { return payloadField(e, "after") == "sigterm" })
	}
	if got := events.find(of(presence.EventOffline, "frank")); len(got) > 0 {
		t.Errorf("frank went offline although his connection on %s stayed: %+v", b.id, got)
	}
	daveOff, daveOn := len(events.find(of(presence.EventOffline, "dave"))), len(events.find(of(presence.EventOnline, "dave")))
	var times []string
	var worst time.Duration
	for k, d := range reopened {
		times = append(times, fmt.Sprintf("%s %s", k, d.Round(time.Millisecond)))
		worst = max(worst, d)
	}
	sort.Strings(times)
	t.Logf("edge SIGTERM: reopened on %s: %s; old connections removed: %v; dave offline/online events: %d/%d",
		b.id, strings.Join(times, ", "), old, daveOff, daveOn)
	fig.add("edge SIGTERM (--shutdown-spread 200ms): %d clients closed with 4000 and open again on %s after at most %s (%s); dave (all connections on the stopped edge) offline/online events: %d/%d",
		len(movers), b.id, worst.Round(time.Millisecond), strings.Join(times, ", "), daveOff, daveOn)
}

// countEdge counts the connections on edge.
func countEdge(conns map[string]string, edge string) int {
	n := 0
	for _, e := range conns {
		if e == edge {
			n++
		}
	}
	return n
}
