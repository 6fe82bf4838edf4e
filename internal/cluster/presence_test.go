//go:build cluster

package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/presence"
)

// testEdgeSIGKILLPresence kills edge-a with SIGKILL. Its lease expires
// and edge-b removes its connection keys: every user who was only on
// edge-a gets exactly one offline within the lease TTL + 3 s, users also
// on edge-b stay online, and no key of edge-a is left. edge-a is started
// again afterwards (same id) for the tests that follow.
func testEdgeSIGKILLPresence(t *testing.T, c *Cluster, fig *figures) {
	a, b := c.edges[0], c.edges[1]
	svc := connectNode(t, c.live()[0])
	js, err := jetstream.New(svc)
	if err != nil {
		t.Fatal(err)
	}
	solos := []string{"sk-ann", "sk-abe", "sk-amy"}
	for _, u := range solos {
		dial(t, a.url, u).join(t, "sk")
	}
	dial(t, a.url, "sk-both").join(t, "sk")
	dial(t, b.url, "sk-both")
	dial(t, b.url, "sk-bea")
	testenv.Eventually(t, wait, "everyone in presence", func() bool {
		for _, u := range solos {
			if countEdge(connEdges(userInfo(t, svc, u)), a.id) != 1 {
				return false
			}
		}
		both := connEdges(userInfo(t, svc, "sk-both"))
		return countEdge(both, a.id) == 1 && countEdge(both, b.id) == 1 && userInfo(t, svc, "sk-bea").Online
	})
	if k := bucketKeys(t, js); !slices.Contains(k, "edge."+a.id) {
		t.Fatalf("%s holds no lease: %v", a.id, k)
	}
	events := watchEvents(t, svc)

	kill := time.Now()
	sigkill(t, a.proc)
	defer restartEdge(t, c, a) // the later tests need it
	testenv.Eventually(t, *presenceTTL+3*time.Second, "every user only on "+a.id+" offline", func() bool {
		for _, u := range solos {
			if len(events.find(of(presence.EventOffline, u))) == 0 {
				return false
			}
		}
		return true
	})
	took := time.Since(kill)
	var left []string
	testenv.Eventually(t, wait, "no key of "+a.id, func() bool {
		left = edgeKeys(t, js, a.id)
		return len(left) == 0
	})
	// Only edge-b derives events now, in the bucket's order: once the
	// online of a user who connects after is out, so is every event the
	// removals caused.
	dial(t, b.url, "sk-sentinel")
	testenv.Eventually(t, wait, "the sentinel's online", func() bool { return len(events.find(of(presence.EventOnline, "sk-sentinel"))) == 1 })
	for _, u := range solos {
		if n := len(events.find(of(presence.EventOffline, u))); n != 1 {
			t.Errorf("%s: %d offline events, want 1", u, n)
		}
	}
	for _, u := range []string{"sk-both", "sk-bea"} {
		if got := events.find(of(presence.EventOffline, u)); len(got) > 0 {
			t.Errorf("%s went offline with a connection on %s: %+v", u, b.id, got)
		}
	}
	if both := connEdges(userInfo(t, svc, "sk-both")); len(both) != 1 || countEdge(both, b.id) != 1 {
		t.Errorf("sk-both after the kill: %v, want its one connection on %s", both, b.id)
	}
	if !userInfo(t, svc, "sk-bea").Online {
		t.Error("sk-bea offline")
	}
	stored := storedOffline(t, js)
	for _, u := range solos {
		if stored[u] != 1 {
			t.Errorf("%s: the event stream holds %d offline events, want 1", u, stored[u])
		}
	}
	t.Logf("edge SIGKILL: users only on %s offline %s after the kill (lease TTL %s); stored offline events %v",
		a.id, took.Round(time.Millisecond), *presenceTTL, stored)
	fig.add("edge SIGKILL, presence: %d users only on %s got exactly one offline %s after the kill (lease TTL %s); users also on %s stayed online; no key of %s left: %v",
		len(solos), a.id, took.Round(time.Millisecond), *presenceTTL, b.id, a.id, !t.Failed())
	if took > *presenceTTL+3*time.Second {
		t.Errorf("offline %s after the kill; the lease TTL is %s", took, *presenceTTL)
	}
}

// bucketKeys lists the presence bucket's live keys.
func bucketKeys(t testing.TB, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
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

// edgeKeys returns the keys of edge: its lease, and the connection keys
// whose entry names it.
func edgeKeys(t testing.TB, js jetstream.JetStream, edge string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	kv, err := js.KeyValue(ctx, presence.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range bucketKeys(t, js) {
		if k == "edge."+edge {
			out = append(out, k)
			continue
		}
		if !strings.HasPrefix(k, "conn.") {
			continue
		}
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed since the listing
		}
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		var entry presence.Entry
		if json.Unmarshal(e.Value(), &entry) == nil && entry.Edge == edge {
			out = append(out, k)
		}
	}
	return out
}

// storedOffline counts, per user, the offline events the natter_events
// stream holds: one per transition if the deduplication holds, whatever
// a subscriber saw.
func storedOffline(t testing.TB, js jetstream.JetStream) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := js.Stream(ctx, "natter_events")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject("natter.evtq."+presence.EventOffline))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("offline events from %d: %v", seq, err)
		}
		var e presence.Event
		if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatal(err)
		}
		out[e.User]++
		seq = m.Sequence + 1
	}
	return out
}

// leaseRevisions reads the edges' leases from the bucket, keyed edge.<id>.
func leaseRevisions(js jetstream.JetStream, edges ...string) (map[string]keyRev, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, presence.Bucket)
	if err != nil {
		return nil, err
	}
	out := map[string]keyRev{}
	for _, id := range edges {
		e, err := kv.Get(ctx, "edge."+id)
		if err != nil {
			return nil, fmt.Errorf("edge.%s: %w", id, err)
		}
		out["edge."+id] = keyRev{e.Revision(), e.Created()}
	}
	return out, nil
}
