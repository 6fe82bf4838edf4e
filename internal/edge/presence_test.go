package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/presencekv"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

func diffOf(t *testing.T, c *wstest.Client, pred func(*presencekv.Diff) bool) *presencekv.Diff {
	t.Helper()
	var d presencekv.Diff
	c.Await(t, wait, func(e *envelope.Envelope) bool {
		if e.Type != envelope.TypePresenceDiff {
			return false
		}
		d = presencekv.Diff{}
		return json.Unmarshal(e.Payload, &d) == nil && pred(&d)
	})
	return &d
}

func TestPresenceStateAndDiffs(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Presence.TTL = 5e9
	m := newMesh(t, cfg)
	watcher := m.dial(t, "wendy")
	other := m.dial(t, "oscar")
	quiet := m.dial(t, "quinn")
	if got := watcher.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "lobby", Presence: true}, wait); got.Type != envelope.TypeJoined {
		t.Fatal(got.Type)
	}
	join(t, quiet, "lobby") // no opt-in: no diffs
	join(t, other, "lobby")
	diffOf(t, watcher, func(d *presencekv.Diff) bool {
		return len(d.Joins) > 0 && d.Joins[len(d.Joins)-1].User == "oscar"
	})

	// A small state, seen by members who watch.
	got := other.Request(t, envelope.TypePresenceState, map[string]any{"state": map[string]bool{"typing": true}}, wait)
	if got.Type != envelope.TypePresenceState {
		t.Fatalf("state ack: %s %s", got.Type, got.Payload)
	}
	d := diffOf(t, watcher, func(d *presencekv.Diff) bool { return len(d.States) > 0 })
	if s := d.States[0]; s.User != "oscar" || string(s.State) != `{"typing":true}` {
		t.Fatalf("state diff %+v", s)
	}
	// Too large a state is refused.
	got = other.Request(t, envelope.TypePresenceState, map[string]string{"state": strings.Repeat("x", 300)}, wait)
	assertRPCError(t, got, envelope.CodeResourceExhausted)

	// $presence lists the room with states; a user query about someone else
	// says whether they are online but not where.
	got = quiet.Request(t, envelope.TypePresence, map[string]string{"room": "lobby"}, wait)
	var page presence.RoomPage
	if err := json.Unmarshal(got.Payload, &page); err != nil || page.Count != 3 {
		t.Fatalf("room: %s", got.Payload)
	}
	got = quiet.Request(t, envelope.TypePresence, map[string]string{"user": "oscar"}, wait)
	var info presence.UserInfo
	if err := json.Unmarshal(got.Payload, &info); err != nil || !info.Online || len(info.Connections) != 0 {
		t.Fatalf("user: %s", got.Payload)
	}

	other.Close()
	diffOf(t, watcher, func(d *presencekv.Diff) bool { return len(d.Leaves) > 0 && d.Leaves[0].User == "oscar" })
	for {
		b, ok := quiet.NextRaw(100e6)
		if !ok {
			break
		}
		if strings.Contains(string(b), envelope.TypePresenceDiff) {
			t.Fatalf("a member that did not opt in got a diff: %s", b)
		}
	}
}

// presenceEdge starts an edge with presence and dev-mode users on m.
func presenceEdge(t *testing.T, m *testenv.Mesh, id string, cfg edge.Config) *testenv.Edge {
	t.Helper()
	cfg.EdgeID, cfg.Auth.DevMode = id, true
	if cfg.Presence == nil {
		cfg.Presence = edge.DefaultPresenceConfig()
	}
	return m.StartEdge(t, cfg)
}

// presenceStream returns the presence bucket's stream state.
func presenceStream(t *testing.T, nc *nats.Conn) jetstream.StreamState {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), "KV_"+presence.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// presenceKeys returns the bucket's live keys with, for connection keys,
// the edge their entry names.
func presenceKeys(t *testing.T, nc *nats.Conn) map[string]string {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), presence.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	l, err := kv.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k := range l.Keys() {
		out[k] = ""
		if strings.HasPrefix(k, "conn.") {
			if e, err := kv.Get(t.Context(), k); err == nil {
				var entry presence.Entry
				_ = json.Unmarshal(e.Value(), &entry)
				out[k] = entry.Edge
			}
		}
	}
	return out
}

// Joined WebSocket connections held idle write nothing to the presence
// bucket: over three lease periods only the edge's lease is refreshed.
func TestPresenceIdleConnectionsWriteNothing(t *testing.T) {
	m := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	const ttl = 2 * time.Second
	cfg := edge.DefaultConfig()
	cfg.Presence.TTL = ttl
	e := presenceEdge(t, m, "idle", cfg)
	nc := m.NC
	const n = 40
	for i := range n {
		c := wstest.Dial(t, e.URL+fmt.Sprintf("?user=u%02d", i))
		join(t, c, "lobby")
	}
	testenv.Eventually(t, wait, "every member in presence", func() bool {
		p, err := presence.Room(t.Context(), nc, envelope.DefaultNamespace, "lobby", "", 1)
		return err == nil && p.Count == n
	})
	before := presenceStream(t, nc)
	const hold = 3 * ttl
	time.Sleep(hold) // the idle hold being measured, not an ordering
	after := presenceStream(t, nc)
	writes, periods := after.LastSeq-before.LastSeq, uint64(hold/(ttl/3))
	t.Logf("%d joined connections idle for %s (lease TTL %s): %d writes to the bucket", n, hold, ttl, writes)
	if writes > periods+1 {
		t.Fatalf("%d writes in %s; the lease's refreshes are %d at most", writes, hold, periods+1)
	}
}

// A graceful shutdown removes the edge's connection keys and its lease
// before it returns; users on another edge stay.
func TestPresenceShutdownRemovesKeys(t *testing.T) {
	t.Parallel()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	cfg := edge.DefaultConfig()
	cfg.Presence.TTL = 30 * time.Second
	e1 := presenceEdge(t, m, "e1", cfg)
	e2 := presenceEdge(t, m, "e2", cfg)
	nc := m.NC
	join(t, wstest.Dial(t, e1.URL+"?user=amy"), "lobby")
	wstest.Dial(t, e2.URL+"?user=bo")
	testenv.Eventually(t, wait, "both online", func() bool {
		a, err1 := presence.Online(t.Context(), nc, envelope.DefaultNamespace, "amy")
		b, err2 := presence.Online(t.Context(), nc, envelope.DefaultNamespace, "bo")
		return err1 == nil && err2 == nil && a.Online && b.Online
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := e1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for k, edgeID := range presenceKeys(t, nc) {
		if k == "edge.e1" || edgeID == "e1" {
			t.Fatalf("%s (edge %q) left after the shutdown", k, edgeID)
		}
	}
	testenv.Eventually(t, wait, "amy offline, bo online", func() bool {
		a, err1 := presence.Online(t.Context(), nc, envelope.DefaultNamespace, "amy")
		b, err2 := presence.Online(t.Context(), nc, envelope.DefaultNamespace, "bo")
		return err1 == nil && err2 == nil && !a.Online && b.Online
	})
}

// The per-user connection cap counts the user's connections on every edge,
// from the presence mirror.
func TestPresenceUserCapAcrossEdges(t *testing.T) {
	t.Parallel()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	cfg := edge.DefaultConfig()
	cfg.Limits.MaxConnsPerUser = 2
	cfg.Presence.Open = true
	e1 := presenceEdge(t, m, "e1", cfg)
	e2 := presenceEdge(t, m, "e2", cfg)
	wstest.Dial(t, e1.URL+"?user=alice")
	wstest.Dial(t, e1.URL+"?user=alice")
	asker := wstest.Dial(t, e2.URL+"?user=quinn")
	testenv.Eventually(t, wait, "e2's mirror holds alice's two connections", func() bool {
		got := asker.Request(t, envelope.TypePresence, map[string]string{"user": "alice"}, wait)
		var info presence.UserInfo
		return json.Unmarshal(got.Payload, &info) == nil && len(info.Connections) == 2
	})
	if status, body, _ := wstest.Handshake(t, e2.URL+"?user=alice", nil, ""); status != 429 || body != "too many connections for this user" {
		t.Fatalf("alice's third connection, on e2: %d %q", status, body)
	}
	if status, _, _ := wstest.Handshake(t, e2.URL+"?user=bob", nil, ""); status != 101 {
		t.Fatalf("bob on e2: %d", status)
	}
}
