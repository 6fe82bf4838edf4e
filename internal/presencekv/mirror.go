package presencekv

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// record is a connection in the mirror: its entry and the revision of its
// key, which a removal must match.
type record struct {
	presence.Entry
	rev uint64
	// refused: a removal of rev was refused because the key changed
	// since (another edge removed it first, or its edge wrote it again).
	// The watcher will bring the change; until then removing it again
	// is refused again.
	refused bool
}

// edgeState is what the mirror knows of one edge: every edge with a lease
// or with connection keys has one.
type edgeState struct {
	name  string    // the edge id, shared by its records' Entry.Edge
	lease uint64    // revision of its lease; 0: it holds none
	lapse bool      // its lease was seen to go (expiry, purge): remove its keys at once
	since time.Time // when the mirror found it without a lease (zero while it holds one)
	wrote time.Time // when the mirror last saw it write a connection key
	conns int       // its connections in the mirror
	swept time.Time // when this edge last sent removals of its keys
}

// tomb is a removed connection's delete marker, purged a TTL after it was
// seen.
type tomb struct {
	rev   uint64
	owner string    // the connection's edge; "" when loaded (unknown)
	seen  time.Time // when the mirror saw it
	tried time.Time // when this edge last sent its purge
}

func (s *Service) watch(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		s.follow(ctx, w)
		if ctx.Err() != nil {
			return
		}
		// The watch ended under us (say, its consumer could not be
		// recreated): watch again and reload the copy from the snapshot.
		// Changes in the gap come without events from this edge; the other
		// edges still publish theirs.
		s.cfg.Logger.Error("presence: the bucket watch ended; re-watching")
		for w = nil; w == nil && ctx.Err() == nil; {
			var err error
			if w, err = s.kv.WatchAll(ctx); err != nil {
				w = nil
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
		if w == nil {
			return
		}
		s.resync(ctx, w)
	}
}

// follow applies live changes until the watch or ctx ends.
func (s *Service) follow(ctx context.Context, w jetstream.KeyWatcher) {
	defer func() {
		_ = w.Stop()
		for range w.Updates() { // let a callback blocked on the channel go
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				s.apply(e, true)
			}
		}
	}
}

// resync replaces the copy with a new watch's initial values.
func (s *Service) resync(ctx context.Context, w jetstream.KeyWatcher) {
	s.mu.Lock()
	s.conns = make(map[string]*record)
	s.users = make(map[string][]string)
	s.rooms = make(roomIndex)
	s.edges = make(map[string]*edgeState)
	s.tombs = make(map[string]*tomb)
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				s.wake() // the keeper looks at what the new copy holds
				return
			}
			s.apply(e, false)
		}
	}
}

// apply updates the mirror with one change and, when live, derives its
// events and room diffs. Only the watcher goroutine (and Start, before it
// runs) calls it.
func (s *Service) apply(kve jetstream.KeyValueEntry, live bool) {
	if d := s.slowApply.Load(); d > 0 {
		time.Sleep(time.Duration(d)) // a lagging watcher (tests)
	}
	key := kve.Key()
	if id, ok := strings.CutPrefix(key, "conn."); ok {
		s.applyConn(kve, id, live)
	} else if edge, ok := strings.CutPrefix(key, "edge."); ok {
		s.applyLease(kve, edge, live)
	}
	s.progressed()
}

// applyLease records an edge's lease, or its end.
func (s *Service) applyLease(kve jetstream.KeyValueEntry, edge string, live bool) {
	put := kve.Operation() == jetstream.KeyValuePut
	s.mu.Lock()
	st := s.edgeLocked(edge)
	if put {
		st.lease, st.lapse, st.since = kve.Revision(), false, time.Time{}
	} else {
		st.lease, st.lapse, st.since = 0, true, time.Now()
	}
	s.gcEdgeLocked(st)
	s.mu.Unlock()
	if put {
		return
	}
	if edge == s.cfg.Edge && live {
		// Our own lease went (it expired while we were cut off or paused):
		// the other edges are removing our keys. Take it again and rewrite
		// them.
		s.lapse(kve.Revision())
	}
	s.wake()
}

// edgeLocked returns edge's state, creating it; mu is held.
func (s *Service) edgeLocked(edge string) *edgeState {
	st := s.edges[edge]
	if st == nil {
		st = &edgeState{name: edge, since: time.Now()}
		s.edges[edge] = st
	}
	return st
}

// gcEdgeLocked forgets an edge with neither a lease nor connections; mu is
// held.
func (s *Service) gcEdgeLocked(st *edgeState) {
	if st.lease == 0 && st.conns == 0 {
		delete(s.edges, st.name)
	}
}

// applyConn applies a change of one connection's key.
func (s *Service) applyConn(kve jetstream.KeyValueEntry, id string, live bool) {
	rev := kve.Revision()
	op := kve.Operation()
	var next *record
	if op == jetstream.KeyValuePut {
		next = &record{rev: rev}
		if err := json.Unmarshal(kve.Value(), &next.Entry); err != nil || next.Conn != id || envelope.ValidateID(next.Edge) != nil {
			return
		}
	}
	s.mu.Lock()
	// One string for the maps and the entry, not a slice of the message's
	// subject, which would keep all of it.
	if prev := s.conns[id]; prev != nil {
		id = prev.Conn
	} else {
		id = strings.Clone(id)
	}
	if next != nil {
		next.Conn = id
	}
	switch op {
	case jetstream.KeyValuePut:
		delete(s.tombs, id)
	case jetstream.KeyValueDelete:
		// A removal: purged a TTL from now, by its edge or for it.
		tb := &tomb{rev: rev, seen: time.Now()}
		if prev := s.conns[id]; prev != nil {
			tb.owner = prev.Edge
		}
		s.tombs[id] = tb
	default:
		// A purge: the end of a delete marker, or the expiry of an older
		// edge's key, which carried a TTL.
		delete(s.tombs, id)
	}
	prev := s.conns[id]
	var events []presence.Event
	ev := func(name, room string, e *record) {
		events = append(events, presence.Event{Event: name, Conn: id, User: e.User, Edge: e.Edge, Room: room, Revision: rev, At: time.Now().UnixMilli()})
	}
	var joins, leaves, states []string
	switch {
	case prev == nil && next == nil:
		s.mu.Unlock()
		return
	case prev == nil:
		ev(presence.EventConnect, "", next)
		if next.User != "" && len(s.users[next.User]) == 0 {
			ev(presence.EventOnline, "", next)
		}
		joins = next.Rooms
	case next == nil:
		leaves = prev.Rooms
	default:
		joins = minus(next.Rooms, prev.Rooms)
		leaves = minus(prev.Rooms, next.Rooms)
		if string(prev.State) != string(next.State) {
			states = minus(next.Rooms, joins)
		}
	}
	for _, r := range joins {
		ev(presence.EventJoin, r, next)
	}
	for _, r := range leaves {
		ev(presence.EventLeave, r, prev)
	}
	// Update the indexes.
	if prev != nil {
		for _, r := range prev.Rooms {
			s.rooms.del(r, id)
		}
		if prev.User != "" {
			delSorted(s.users, prev.User, id)
		}
		st := s.edges[prev.Edge]
		st.conns--
		s.gcEdgeLocked(st)
	}
	if next != nil {
		s.conns[id] = next
		for i, r := range next.Rooms {
			next.Rooms[i] = s.rooms.add(r, id)
		}
		if next.User != "" {
			addSorted(s.users, next.User, id)
		}
		st := s.edgeLocked(next.Edge)
		next.Edge = st.name
		st.conns++
		st.wrote = time.Now()
	} else {
		delete(s.conns, id)
		ev(presence.EventDisconnect, "", prev)
		if prev.User != "" && len(s.users[prev.User]) == 0 {
			ev(presence.EventOffline, "", prev)
		}
	}
	s.mu.Unlock()
	if !live {
		return
	}
	if next == nil && prev.Edge == s.cfg.Edge && s.owns(id) {
		// Someone removed a connection this edge still holds: another edge
		// took our lease for lapsed. Take it again and rewrite our keys.
		s.lapse(rev)
	}
	for _, e := range events {
		s.publish(e)
	}
	// Within one batch each connection ends up in the list of its last
	// change, so a quick leave and rejoin reads as what it ended as.
	for _, r := range joins {
		s.addDiff(r, func(d *Diff) {
			d.Leaves = without(d.Leaves, id)
			d.Joins = append(without(d.Joins, id), member(&next.Entry))
		})
	}
	for _, r := range leaves {
		s.addDiff(r, func(d *Diff) {
			d.Joins, d.States = without(d.Joins, id), without(d.States, id)
			d.Leaves = append(without(d.Leaves, id), presence.Member{Conn: id, User: prev.User})
		})
	}
	for _, r := range states {
		s.addDiff(r, func(d *Diff) {
			if i := slices.IndexFunc(d.Joins, func(m presence.Member) bool { return m.Conn == id }); i >= 0 {
				d.Joins[i] = member(&next.Entry)
				return
			}
			d.States = append(without(d.States, id), member(&next.Entry))
		})
	}
}

// lapse records that the change at rev showed our lease lapsed, and wakes
// the keeper.
func (s *Service) lapse(rev uint64) {
	if s.stopping.Load() {
		return
	}
	for {
		cur := s.lapsed.Load()
		if rev <= cur || s.lapsed.CompareAndSwap(cur, rev) {
			break
		}
	}
	s.wake()
}

// owns reports whether this edge holds connection id.
func (s *Service) owns(id string) bool {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	_, ok := s.own[id]
	return ok
}

func without(ms []presence.Member, conn string) []presence.Member {
	return slices.DeleteFunc(ms, func(m presence.Member) bool { return m.Conn == conn })
}

func member(e *presence.Entry) presence.Member {
	return presence.Member{Conn: e.Conn, User: e.User, State: e.State}
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// addSorted and delSorted keep each user's connections sorted: a user's
// few connections cost a slice, not a map.
func addSorted(m map[string][]string, k, v string) {
	ids := m[k]
	if i, found := slices.BinarySearch(ids, v); !found {
		m[k] = slices.Insert(ids, i, v)
	}
}

// roomIndex maps each room to its members' connection ids, sorted, and
// holds one copy of the room's name, which its members' entries share.
type roomIndex map[string]*roomMembers

type roomMembers struct {
	name string
	ids  []string
}

// add adds id to room and returns the room's shared name.
func (x roomIndex) add(room, id string) string {
	m := x[room]
	if m == nil {
		m = &roomMembers{name: room}
		x[room] = m
	}
	if i, found := slices.BinarySearch(m.ids, id); !found {
		m.ids = slices.Insert(m.ids, i, id)
	}
	return m.name
}

func (x roomIndex) del(room, id string) {
	m := x[room]
	if m == nil {
		return
	}
	if i, found := slices.BinarySearch(m.ids, id); found {
		m.ids = slices.Delete(m.ids, i, i+1)
		if len(m.ids) == 0 {
			delete(x, room)
		}
	}
}

func delSorted(m map[string][]string, k, v string) {
	ids := m[k]
	if i, found := slices.BinarySearch(ids, v); found {
		ids = slices.Delete(ids, i, i+1)
		if len(ids) == 0 {
			delete(m, k)
		} else {
			m[k] = ids
		}
	}
}

// User answers "is user online, and where".
func (s *Service) User(user string) *presence.UserInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	info := &presence.UserInfo{User: user, Connections: []presence.Entry{}}
	for _, id := range s.users[user] { // sorted
		info.Connections = append(info.Connections, s.conns[id].Entry)
	}
	info.Online = len(info.Connections) > 0
	return info
}

// Conn returns one connection's entry.
func (s *Service) Conn(id string) (presence.Entry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.conns[id]
	if !ok {
		return presence.Entry{}, false
	}
	return r.Entry, true
}

// Room returns a page of room's members, ordered by connection id, after
// cursor (a connection id; "" for the first page).
func (s *Service) Room(room, cursor string, limit int) *presence.RoomPage {
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ids []string
	if m := s.rooms[room]; m != nil {
		ids = m.ids
	}
	page := &presence.RoomPage{Room: room, Count: len(ids), Members: []presence.Member{}}
	i := 0
	if cursor != "" {
		var found bool
		if i, found = slices.BinarySearch(ids, cursor); found {
			i++
		}
	}
	end := min(i+limit, len(ids))
	for _, id := range ids[i:end] {
		page.Members = append(page.Members, member(&s.conns[id].Entry))
	}
	if end < len(ids) {
		page.Next = ids[end-1]
	}
	return page
}

// onQuery answers natter.presence.query from the mirror.
func (s *Service) onQuery(msg *nats.Msg) {
	var q presence.Query
	var r presence.Reply
	switch err := json.Unmarshal(msg.Data, &q); {
	case err != nil:
		r.Error = &envelope.ErrorPayload{Code: envelope.CodeInvalidArgument, Message: "query must be JSON"}
	case btoi(q.User != "")+btoi(q.Room != "")+btoi(q.Conn != "") != 1:
		r.Error = &envelope.ErrorPayload{Code: envelope.CodeInvalidArgument, Message: "set exactly one of user, room, conn"}
	case q.User != "":
		r.User = s.User(q.User)
	case q.Room != "":
		r.Room = s.Room(q.Room, q.Cursor, q.Limit)
	case q.Conn != "":
		if e, ok := s.Conn(q.Conn); ok {
			r.Conn = &e
		} else {
			r.Error = &envelope.ErrorPayload{Code: envelope.CodeNotFound, Message: "no such connection"}
		}
	}
	b, _ := json.Marshal(r)
	_ = msg.Respond(b)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
