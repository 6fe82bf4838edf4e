package edge

// Unit tests of the hub (hub.go): the bookkeeping of rooms and users with
// local members, one NATS subscription each, and the fan-out of a message
// to the members. The edge is a real one on an embedded nats-server; its
// connections are fakes on fakeSocket (writer_test.go), so a test reads
// exactly the frames each member was sent.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// hubEdge is an edge without presence on its own nats-server.
func hubEdge(t *testing.T, maxRooms int) *Edge {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NATS.Conn = dispatchNATS(t)
	cfg.Auth.DevMode = true
	cfg.Presence = nil
	cfg.Limits.MaxRoomsPerConn = maxRooms
	e, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), dispatchWait)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return e
}

// member is a fake connection of e.
type member struct {
	*conn
	sock *fakeSocket
}

func hubMember(t *testing.T, e *Edge, user string) member {
	t.Helper()
	sock := &fakeSocket{}
	c := fakeConn(t, e, sock, true)
	c.id, c.user = e.ids.next(), user
	return member{c, sock}
}

// envelopes decodes the text frames the member was sent.
func (m member) envelopes(t *testing.T) []*envelope.Envelope {
	t.Helper()
	b := m.sock.state().out
	var out []*envelope.Envelope
	for len(b) > 0 {
		n, at := int(b[1]&0x7F), 2
		switch n {
		case 126:
			n, at = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			n, at = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		env, err := envelope.Decode(b[at:at+n], 1<<20)
		if err != nil {
			t.Fatalf("frame %q: %v", b[at:at+n], err)
		}
		out = append(out, env)
		b = b[at+n:]
	}
	return out
}

// types lists the member's frames as type or type:text.
func (m member) types(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, env := range m.envelopes(t) {
		s := env.Type
		if env.Meta.Room != "" {
			s += "@" + env.Meta.Room
		}
		out = append(out, s)
	}
	return out
}

// members returns a copy of room's members on h (true: wants presence
// diffs); nil when h has no such room.
func members(h *hub, room string) map[*conn]bool {
	h.mu.Lock()
	g := h.rooms[room]
	h.mu.Unlock()
	if g == nil {
		return nil
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	return maps.Clone(g.members)
}

// subs is the number of subscriptions of the edge's NATS connection.
func subs(e *Edge) int { return e.nc.NumSubscriptions() }

// publishRoom publishes a message of type typ to room, as a service would.
func publishRoom(t *testing.T, e *Edge, room, typ string) {
	t.Helper()
	subj, err := e.ns.Room(room)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Encode(&envelope.Envelope{Type: typ, Payload: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Publish(subj.String(), b); err != nil {
		t.Fatal(err)
	}
}

// sentinel publishes a sentinel message to room and waits until each of
// members has it. A room's messages are delivered in order, on one
// dispatcher shard: whatever was published to the room before it has
// been delivered.
func sentinel(t *testing.T, e *Edge, room string, members ...member) {
	t.Helper()
	publishRoom(t, e, room, "sentinel")
	for _, m := range members {
		eventually(t, "the sentinel", func() bool {
			got := m.types(t)
			return len(got) > 0 && got[len(got)-1] == "sentinel@"+room
		})
	}
}

func wantTypes(t *testing.T, m member, want ...string) {
	t.Helper()
	if got := m.types(t); !slices.Equal(got, want) {
		t.Errorf("%s got %v, want %v", m.id, got, want)
	}
}

// A room has one subscription while it has local members: the first join
// subscribes, the last leave unsubscribes, and a message reaches each
// member once and nobody else.
func TestHubJoinLeaveFanOut(t *testing.T) {
	t.Parallel()
	e := hubEdge(t, 10)
	h := e.hub
	base := subs(e)
	a, b, c := hubMember(t, e, "amy"), hubMember(t, e, "bo"), hubMember(t, e, "cy")

	for _, m := range []member{a, b} {
		if err := h.join(m.conn, "lobby", "j-"+m.user, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.join(a.conn, "lobby", "again", false, nil); err != nil { // joining twice is one membership
		t.Fatal(err)
	}
	if err := h.join(c.conn, "side", "j", false, nil); err != nil {
		t.Fatal(err)
	}
	if n := subs(e) - base; n != 2 {
		t.Errorf("%d subscriptions for two rooms, want 2", n)
	}
	if n := len(members(h, "lobby")); n != 2 || !slices.Equal(a.rooms, roomSet{"lobby"}) {
		t.Errorf("lobby has %d members, amy's rooms %v; want 2, [lobby]", n, a.rooms)
	}

	publishRoom(t, e, "lobby", "chat.message")
	sentinel(t, e, "lobby", a, b)
	sentinel(t, e, "side", c)
	wantTypes(t, a, "$joined@lobby", "$joined@lobby", "chat.message@lobby", "sentinel@lobby")
	wantTypes(t, b, "$joined@lobby", "chat.message@lobby", "sentinel@lobby")
	wantTypes(t, c, "$joined@side", "sentinel@side")
	if env := a.envelopes(t)[1]; env.Meta.CorrelationID != "again" {
		t.Errorf("the second $joined has correlationId %q, want again", env.Meta.CorrelationID)
	}

	h.leave(a.conn, "lobby", "l")
	h.leave(a.conn, "nowhere", "l2") // not a member: still answered
	eventually(t, "amy's $left frames", func() bool { return len(a.types(t)) == 6 })
	wantTypes(t, a, "$joined@lobby", "$joined@lobby", "chat.message@lobby", "sentinel@lobby", "$left@lobby", "$left@nowhere")
	if n := subs(e) - base; n != 2 {
		t.Errorf("%d subscriptions while lobby still has a member, want 2", n)
	}
	// Nothing reaches a member that left: bo's sentinel comes after.
	publishRoom(t, e, "lobby", "chat.message")
	sentinel(t, e, "lobby", b)
	if got := a.types(t); len(got) != 6 {
		t.Errorf("amy got %v after leaving", got)
	}

	h.leave(b.conn, "lobby", "l")
	if n := subs(e) - base; n != 1 {
		t.Errorf("%d subscriptions after lobby's last member left, want 1", n)
	}
	if members(h, "lobby") != nil {
		t.Error("lobby is still in the hub")
	}
}

// leaveAll takes a closed connection out of every room; a join of a closed
// connection is refused with NOT_FOUND, one past the room limit with
// RESOURCE_EXHAUSTED, and neither changes the bookkeeping.
func TestHubLimitsAndLeaveAll(t *testing.T) {
	t.Parallel()
	e := hubEdge(t, 3)
	h := e.hub
	base := subs(e)
	a, b := hubMember(t, e, "amy"), hubMember(t, e, "bo")
	for _, r := range []string{"r1", "r2", "r3"} {
		if err := h.join(a.conn, r, "", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.join(b.conn, "r1", "", false, nil); err != nil {
		t.Fatal(err)
	}
	var rerr *rpc.Error
	if err := h.join(a.conn, "r4", "", false, nil); !errors.As(err, &rerr) || rerr.Code != envelope.CodeResourceExhausted {
		t.Fatalf("a fourth room: %v, want RESOURCE_EXHAUSTED", err)
	}
	if err := h.join(a.conn, "r3", "", true, nil); err != nil { // a room it is in does not count again
		t.Fatalf("joining a room again at the limit: %v", err)
	}
	if n := subs(e) - base; n != 3 {
		t.Errorf("%d subscriptions, want 3", n)
	}

	a.finish()
	h.leaveAll(a.conn)
	if len(a.rooms) != 0 {
		t.Errorf("rooms after leaveAll: %v", a.rooms)
	}
	if n := subs(e) - base; n != 1 {
		t.Errorf("%d subscriptions after leaveAll, want 1 (r1 keeps bo)", n)
	}
	if h.watching("r3") {
		t.Error("r3 is still watched")
	}
	if err := h.join(a.conn, "r1", "", false, nil); !errors.As(err, &rerr) || rerr.Code != envelope.CodeNotFound {
		t.Fatalf("join of a closed connection: %v, want NOT_FOUND", err)
	}
	if _, in := members(h, "r1")[a.conn]; in {
		t.Error("a closed connection was added to r1")
	}
}

// watching counts the members that asked for presence diffs: a member's
// own join changes its choice, a server-side join keeps it.
func TestHubWatchers(t *testing.T) {
	t.Parallel()
	e := hubEdge(t, 10)
	h := e.hub
	a, b := hubMember(t, e, "amy"), hubMember(t, e, "bo")
	steps := []struct {
		name string
		do   func() error
		want bool
	}{
		{"a member without diffs", func() error { return h.join(a.conn, "r", "", false, nil) }, false},
		{"a member asks for diffs", func() error { return h.join(b.conn, "r", "", true, nil) }, true},
		{"a server join keeps the choice", func() error { return h.joinAs(b.conn, "r", "", false, true, nil) }, true},
		{"the member's own join changes it", func() error { return h.join(b.conn, "r", "", false, nil) }, false},
		{"asks again", func() error { return h.join(a.conn, "r", "", true, nil) }, true},
		{"the watcher leaves", func() error { h.drop(a.conn, "r"); return nil }, false},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := h.watching("r"); got != s.want {
			t.Errorf("%s: watching %v, want %v", s.name, got, s.want)
		}
	}
	h.mu.Lock()
	g := h.rooms["r"]
	h.mu.Unlock()
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.watchers != 0 || len(g.members) != 1 {
		t.Errorf("watchers %d, members %d; want 0, 1", g.watchers, len(g.members))
	}
}

// A user's connections on the edge share one subscription to the user's
// subject, and a message to the user reaches each of them.
func TestHubUsers(t *testing.T) {
	t.Parallel()
	e := hubEdge(t, 10)
	h, base := e.hub, subs(e)
	a1, a2, b := hubMember(t, e, "amy"), hubMember(t, e, "amy"), hubMember(t, e, "bo")
	for _, m := range []member{a1, a2, b} {
		if err := h.addUser(m.conn); err != nil {
			t.Fatal(err)
		}
	}
	if n := subs(e) - base; n != 2 {
		t.Errorf("%d subscriptions for two users, want 2", n)
	}
	toUser := func(user, text string) {
		subj, err := e.ns.User(user)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := envelope.Encode(&envelope.Envelope{Type: "note", Payload: []byte(fmt.Sprintf("%q", text))})
		if err := e.nc.Publish(subj.String(), b); err != nil {
			t.Fatal(err)
		}
	}
	toUser("amy", "hi")
	toUser("bo", "sentinel")
	eventually(t, "both of amy's connections and bo's sentinel", func() bool {
		return len(a1.types(t)) == 1 && len(a2.types(t)) == 1 && len(b.types(t)) == 1
	})

	h.removeUser(a1.conn)
	if n := subs(e) - base; n != 2 {
		t.Errorf("%d subscriptions with one of amy's connections left, want 2", n)
	}
	h.removeUser(a2.conn)
	if n := subs(e) - base; n != 1 {
		t.Errorf("%d subscriptions after amy's last connection, want 1", n)
	}
	toUser("amy", "gone")
	toUser("bo", "sentinel 2")
	eventually(t, "bo's second sentinel", func() bool { return len(b.types(t)) == 2 })
	if n := len(a1.types(t)) + len(a2.types(t)); n != 2 {
		t.Errorf("amy's connections got %d frames, want 2: nothing after they left", n)
	}
}

// roomSet stays sorted and without duplicates.
func TestRoomSet(t *testing.T) {
	t.Parallel()
	var s roomSet
	for _, r := range []string{"m", "b", "z", "b", "a"} {
		s = s.add(r)
	}
	if !slices.Equal(s, roomSet{"a", "b", "m", "z"}) {
		t.Fatalf("after adds: %v", s)
	}
	s = s.remove("m").remove("nope")
	if !slices.Equal(s, roomSet{"a", "b", "z"}) || s.has("m") || !s.has("z") {
		t.Fatalf("after removes: %v", s)
	}
}
