package edge

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
)

// hub tracks the rooms and users with local connections. Each has exactly
// one NATS subscription while it has at least one local member, and a
// message on it is fanned out locally: interest-based routing.
type hub struct {
	e     *Edge
	mu    sync.Mutex // guards rooms, users and every conn.rooms
	rooms map[string]*group
	users map[string]*group
}

// group is the local members of one room or user.
type group struct {
	id       string
	room     bool
	sub      *nats.Subscription
	ready    chan struct{} // closed once the server has the subscription
	mu       sync.RWMutex
	members  map[*conn]bool // true: wants $presence.diff frames
	watchers int            // members with true, guarded by mu
	log      *roomLog       // durable rooms only, guarded by mu
}

func newHub(e *Edge) *hub {
	return &hub{e: e, rooms: make(map[string]*group), users: make(map[string]*group)}
}

// join adds c to room and acknowledges with $joined once the subscription is
// in place, so publishes made after the ack reach c.
func (h *hub) join(c *conn, room, cid string, watch bool, since *envelope.Position) error {
	return h.joinAs(c, room, cid, watch, false, since)
}

// joinAs is join; a server-side join (byServer) keeps a member's own
// choice of presence diffs. In a durable room, since asks for the messages
// after it to be replayed first.
func (h *hub) joinAs(c *conn, room, cid string, watch, byServer bool, since *envelope.Position) error {
	h.mu.Lock()
	if c.isClosed() {
		// A ctl join raced with the connection closing: leaveAll, which
		// takes h.mu after the phase became closed, has run or finds it.
		h.mu.Unlock()
		return &rpc.Error{Code: envelope.CodeNotFound, Message: "connection closed"}
	}
	had := c.rooms.has(room)
	if !had && len(c.rooms) >= h.e.cfg.Limits.MaxRoomsPerConn {
		h.mu.Unlock()
		return &rpc.Error{Code: envelope.CodeResourceExhausted, Message: fmt.Sprintf("at most %d rooms per connection", h.e.cfg.Limits.MaxRoomsPerConn)}
	}
	if byServer && had {
		if g := h.rooms[room]; g != nil {
			g.mu.RLock()
			watch = g.members[c]
			g.mu.RUnlock()
		}
	}
	g, rec, err := h.addLocked(h.rooms, room, true, c, watch, since != nil)
	var entry *presence.Entry
	if err == nil {
		c.rooms = c.rooms.add(room)
		if !had {
			entry = c.entryLocked()
		}
	}
	h.mu.Unlock()
	if err != nil {
		return err
	}
	h.e.setPresence(entry)
	h.waitReady(g)
	if g.log != nil {
		if err := h.e.dur.join(c, g, rec, cid, since); err != nil {
			h.drop(c, room)
			return err
		}
		return nil
	}
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeJoined, Meta: envelope.Meta{CorrelationID: cid, Room: room}, Payload: roomPayload(room)})
	return nil
}

// leave removes c from room and acknowledges with $left. Leaving a room one
// is not in is not an error.
func (h *hub) leave(c *conn, room, cid string) {
	h.drop(c, room)
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeLeft, Meta: envelope.Meta{CorrelationID: cid, Room: room}, Payload: roomPayload(room)})
}

// drop removes c from room without a $left (leave sends it; a join that
// failed after the member was added does not).
func (h *hub) drop(c *conn, room string) {
	h.mu.Lock()
	var entry *presence.Entry
	if c.rooms.has(room) {
		c.rooms = c.rooms.remove(room)
		h.removeLocked(h.rooms, room, c)
		entry = c.entryLocked()
	}
	h.mu.Unlock()
	h.e.setPresence(entry)
}

// leaveAll removes c from every room, once it is closed.
func (h *hub) leaveAll(c *conn) {
	h.mu.Lock()
	for _, room := range c.rooms {
		h.removeLocked(h.rooms, room, c)
	}
	c.rooms = nil
	h.mu.Unlock()
}

func (h *hub) addUser(c *conn) error {
	h.mu.Lock()
	_, _, err := h.addLocked(h.users, c.user, false, c, false, false)
	h.mu.Unlock()
	return err
}

func (h *hub) removeUser(c *conn) {
	h.mu.Lock()
	h.removeLocked(h.users, c.user, c)
	h.mu.Unlock()
}

// addLocked adds c to the group id of m, subscribing when it is the first
// local member. The flush that confirms the subscription runs outside the
// lock; waitReady waits for it. In a durable room, recover registers c's
// replay in the same step, so that no live message reaches c before it.
func (h *hub) addLocked(m map[string]*group, id string, room bool, c *conn, watch, recover bool) (*group, *recovery, error) {
	g := m[id]
	if g == nil {
		var subj envelope.Subject
		var err error
		durable := room && h.e.dur.isDurable(id)
		switch {
		case durable:
			subj, err = h.e.ns.DurableLive(id)
		case room:
			subj, err = h.e.ns.Room(id)
		default:
			subj, err = h.e.ns.User(id)
		}
		if err != nil {
			return nil, nil, err
		}
		g = &group{id: id, room: room, members: make(map[*conn]bool), ready: make(chan struct{})}
		f := func(msg *nats.Msg) { h.e.deliverGroup(g, msg) }
		if durable {
			g.log = &roomLog{recovering: make(map[*conn]*recovery)}
			f = func(msg *nats.Msg) { h.e.dur.deliverLive(g, msg) }
		}
		g.sub, err = h.e.disp.subscribe(h.e.nc, subj.String(), h.e.conns.shard(id), f)
		if err != nil {
			return nil, nil, &rpc.Error{Code: envelope.CodeUnavailable, Message: "message bus unavailable"}
		}
		m[id] = g
		confirm := func(ctx context.Context) {
			// Confirms the SUB reached the server. A failure only means the
			// first publishes may miss; the subscription stays.
			_ = flush(ctx, h.e.nc)
			close(g.ready)
		}
		if !h.e.routines.Go(confirm) {
			close(g.ready) // the edge is stopping: no one waits for it
		}
	}
	g.mu.Lock()
	if was, ok := g.members[c]; ok && was {
		g.watchers--
	}
	g.members[c] = watch
	if watch {
		g.watchers++
	}
	var r *recovery
	if recover && g.log != nil && g.log.recovering[c] == nil {
		r = &recovery{}
		g.log.recovering[c] = r
	}
	g.mu.Unlock()
	return g, r, nil
}

func (h *hub) removeLocked(m map[string]*group, id string, c *conn) {
	g := m[id]
	if g == nil {
		return
	}
	g.mu.Lock()
	if g.members[c] {
		g.watchers--
	}
	delete(g.members, c)
	if g.log != nil {
		delete(g.log.recovering, c)
		delete(g.log.floor, c)
	}
	empty := len(g.members) == 0
	g.mu.Unlock()
	if empty {
		delete(m, id)
		h.e.disp.unsubscribe(g.sub)
	}
}

func (h *hub) waitReady(g *group) {
	select {
	case <-g.ready:
	case <-time.After(5 * time.Second):
	}
}

func roomPayload(room string) []byte {
	p := make([]byte, 0, len(room)+10)
	p = append(p, `{"room":"`...)
	p = append(p, room...) // ids are [A-Za-z0-9_-]: nothing to escape
	return append(p, `"}`...)
}

// entryLocked is c's presence entry; hub.mu must be held.
func (c *conn) entryLocked() *presence.Entry {
	c.presenceSeq++
	e := &presence.Entry{Conn: c.id, User: c.user, ConnectedAt: c.connectedAt, State: c.state, Seq: c.presenceSeq}
	if len(c.rooms) > 0 {
		e.Rooms = slices.Clone(c.rooms)
	}
	return e
}

// watching reports whether room has local members that want presence diffs.
func (h *hub) watching(room string) bool {
	h.mu.Lock()
	g := h.rooms[room]
	h.mu.Unlock()
	if g == nil {
		return false
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.watchers > 0
}

// roomSet is a connection's rooms, sorted: a few strings cost less memory
// than a map on every connection.
type roomSet []string

func (s roomSet) has(room string) bool {
	_, ok := slices.BinarySearch(s, room)
	return ok
}

func (s roomSet) add(room string) roomSet {
	i, ok := slices.BinarySearch(s, room)
	if ok {
		return s
	}
	return slices.Insert(s, i, room)
}

func (s roomSet) remove(room string) roomSet {
	if i, ok := slices.BinarySearch(s, room); ok {
		return slices.Delete(s, i, i+1)
	}
	return s
}
