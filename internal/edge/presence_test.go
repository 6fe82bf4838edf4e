package edge_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/presence"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	pub "github.com/natter/natter/pkg/presence"
)

func diffOf(t *testing.T, c *wstest.Client, pred func(*presence.Diff) bool) *presence.Diff {
	t.Helper()
	var d presence.Diff
	c.Await(t, wait, func(e *envelope.Envelope) bool {
		if e.Type != envelope.TypePresenceDiff {
			return false
		}
		d = presence.Diff{}
		return json.Unmarshal(e.Payload, &d) == nil && pred(&d)
	})
	return &d
}

func TestPresenceStateAndDiffs(t *testing.T) {
	m := newMesh(t, edge.Config{Presence: true, PresenceTTL: 5e9})
	watcher := m.dial(t, "wendy")
	other := m.dial(t, "oscar")
	quiet := m.dial(t, "quinn")
	if got := watcher.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "lobby", Presence: true}, wait); got.Type != envelope.TypeJoined {
		t.Fatal(got.Type)
	}
	join(t, quiet, "lobby") // no opt-in: no diffs
	join(t, other, "lobby")
	diffOf(t, watcher, func(d *presence.Diff) bool {
		return len(d.Joins) > 0 && d.Joins[len(d.Joins)-1].User == "oscar"
	})

	// A small state, seen by members who watch.
	got := other.Request(t, envelope.TypePresenceState, map[string]any{"state": map[string]bool{"typing": true}}, wait)
	if got.Type != envelope.TypePresenceState {
		t.Fatalf("state ack: %s %s", got.Type, got.Payload)
	}
	d := diffOf(t, watcher, func(d *presence.Diff) bool { return len(d.States) > 0 })
	if s := d.States[0]; s.User != "oscar" || string(s.State) != `{"typing":true}` {
		t.Fatalf("state diff %+v", s)
	}
	// Too large a state is refused.
	got = other.Request(t, envelope.TypePresenceState, map[string]string{"state": strings.Repeat("x", 300)}, wait)
	assertRPCError(t, got, envelope.CodeResourceExhausted)

	// $presence lists the room with states; a user query about someone else
	// says whether they are online but not where.
	got = quiet.Request(t, envelope.TypePresence, map[string]string{"room": "lobby"}, wait)
	var page pub.RoomPage
	if err := json.Unmarshal(got.Payload, &page); err != nil || page.Count != 3 {
		t.Fatalf("room: %s", got.Payload)
	}
	got = quiet.Request(t, envelope.TypePresence, map[string]string{"user": "oscar"}, wait)
	var info pub.UserInfo
	if err := json.Unmarshal(got.Payload, &info); err != nil || !info.Online || len(info.Connections) != 0 {
		t.Fatalf("user: %s", got.Payload)
	}

	other.Close()
	diffOf(t, watcher, func(d *presence.Diff) bool { return len(d.Leaves) > 0 && d.Leaves[0].User == "oscar" })
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
