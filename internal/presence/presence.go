// Package presence keeps Natter's presence in JetStream KV and derives the
// lifecycle events from it.
//
// Every edge writes one key per connection of its own, conn.<id>, with a
// per-key TTL it refreshes every TTL/3; an edge that dies stops refreshing
// and its keys expire. Every edge also watches the whole bucket and keeps a
// copy of it in memory (the mirror), from which it answers queries and
// derives events and room diffs.
//
// Exactly-once online/offline: all mirrors see the bucket's changes in the
// same order (a KV bucket is one stream), so from the same change every
// edge derives the same events. Each edge publishes them to
// <prefix>.evtq.<event> with a Nats-Msg-Id made of the change's revision;
// the stream <prefix>_events drops the duplicates and republishes the one
// stored copy to <prefix>.evt.<event>. So an event is delivered once
// whatever the number of edges, including an offline caused by an expiry.
//
// Concurrency: Service methods are safe for concurrent use. The mirror is
// updated by one goroutine (the watcher); readers take its RWMutex.
package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// ErrInvalidConfig wraps configuration errors.
var ErrInvalidConfig = errors.New("presence: invalid config")

// Config configures a Service.
type Config struct {
	NATS      *nats.Conn
	Namespace envelope.Namespace
	// Edge is the id of the edge whose connections this service writes.
	Edge string
	// TTL is how long a connection's key lives without a refresh. Default
	// 15s, range 1s..5m (whole seconds).
	TTL time.Duration
	// Replicas of the bucket and the event stream. Default 1.
	Replicas int
	// DiffInterval batches room diffs for local members. Default 50ms.
	DiffInterval time.Duration
	// Diff, when set, receives each room's batched changes, for the edge to
	// send to its local members that opted in. Called from one goroutine.
	Diff func(room string, d *Diff)
	// Interested tells whether the edge has local members of room that
	// want diffs; rooms without are not batched.
	Interested func(room string) bool
	Logger     *slog.Logger
}

// Diff is the batched change of one room's members.
type Diff struct {
	Room   string            `json:"room"`
	Joins  []presence.Member `json:"joins,omitempty"`
	Leaves []presence.Member `json:"leaves,omitempty"`
	States []presence.Member `json:"states,omitempty"`
}

// Service is one edge's presence.
type Service struct {
	cfg    Config
	js     jetstream.JetStream // KV writes
	evjs   jetstream.JetStream // event publishes, so they never wait behind KV writes
	events chan presence.Event // derived events, published by one goroutine
	kv     jetstream.KeyValue
	prefix string // "$KV.<bucket>." for raw publishes

	ownMu sync.Mutex
	own   map[string]ownEntry // this edge's connections

	mu    sync.RWMutex // the mirror
	conns map[string]*presence.Entry
	users map[string]map[string]struct{}
	rooms map[string][]string // room -> member connection ids, sorted

	diffMu  sync.Mutex
	pending map[string]*Diff

	querySub *nats.Subscription
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// Start ensures the bucket and the event stream, loads the mirror and
// starts the watcher, the refresher and the query responder. Setting up
// retries passing failures until ctx ends (then the error wraps
// context.Cause(ctx)); without JetStream it fails at once with an error
// wrapping natsopt.ErrNoJetStream. ctx bounds only the set-up.
func Start(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.NATS == nil {
		return nil, fmt.Errorf("%w: NATS is required", ErrInvalidConfig)
	}
	if cfg.Namespace == (envelope.Namespace{}) {
		cfg.Namespace = envelope.DefaultNamespace
	}
	if cfg.TTL == 0 {
		cfg.TTL = 15 * time.Second
	}
	if cfg.TTL < time.Second || cfg.TTL > 5*time.Minute || cfg.TTL%time.Second != 0 {
		return nil, fmt.Errorf("%w: TTL %s must be whole seconds in 1s..5m", ErrInvalidConfig, cfg.TTL)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.DiffInterval == 0 {
		cfg.DiffInterval = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interested == nil {
		cfg.Interested = func(string) bool { return false }
	}
	// A failed write (no stream leader for a while, after a node died)
	// asks the refresher to rewrite the keys soon, rather than a third of a
	// TTL later: keys must not expire while their connections live.
	retrySoon := make(chan struct{}, 1)
	warn := rate.NewLimiter(1, 5) // one line per failed write is too many
	newJS := func(onErr func()) (jetstream.JetStream, error) {
		return jetstream.New(cfg.NATS, jetstream.WithPublishAsyncMaxPending(65536),
			// An ack that never comes (no stream leader) becomes an error
			// too, releases its slot and triggers the early retry.
			jetstream.WithPublishAsyncTimeout(min(cfg.TTL/3, 5*time.Second)),
			jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
				if warn.Allow() {
					cfg.Logger.Warn("presence: publish failed", "subject", m.Subject, "err", err)
				}
				if onErr != nil {
					onErr()
				}
			}))
	}
	js, err := newJS(func() {
		select {
		case retrySoon <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	evjs, err := newJS(nil)
	if err != nil {
		return nil, err
	}
	name := strings.ReplaceAll(cfg.Namespace.Prefix(), ".", "_")
	bucket := name + "_presence"
	var kv jetstream.KeyValue
	err = natsopt.Retry(ctx, cfg.Logger, "presence", func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Natter presence: one key per connection, conn.<id>",
			// Some history, so that an edge whose watcher lags still sees every
			// write of a connection (a create and the join right after it) and
			// derives the same events as the others. Every write carries the TTL,
			// so history does not pile up.
			History:  10,
			Storage:  jetstream.FileStorage,
			Replicas: cfg.Replicas,
			// With history, the server raises every message's TTL to at least
			// the marker TTL, so the two are the same.
			LimitMarkerTTL: cfg.TTL,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("presence: bucket %s: %w", bucket, err)
	}
	pfx := cfg.Namespace.Prefix()
	if err := natsopt.Retry(ctx, cfg.Logger, "presence", func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        name + "_events",
			Description: "Natter lifecycle events, deduplicated across edges and republished to " + pfx + ".evt.>",
			Subjects:    []string{pfx + ".evtq.>"},
			Storage:     jetstream.MemoryStorage,
			Replicas:    cfg.Replicas,
			MaxAge:      5 * time.Minute,
			MaxMsgs:     100_000,
			MaxBytes:    64 << 20,
			Duplicates:  2 * time.Minute,
			RePublish:   &jetstream.RePublish{Source: pfx + ".evtq.>", Destination: pfx + ".evt.>"},
		})
		return err
	}); err != nil {
		return nil, fmt.Errorf("presence: event stream: %w", err)
	}
	s := &Service{
		cfg:     cfg,
		js:      js,
		evjs:    evjs,
		events:  make(chan presence.Event, 65536),
		kv:      kv,
		prefix:  "$KV." + bucket + ".",
		own:     make(map[string]ownEntry),
		conns:   make(map[string]*presence.Entry),
		users:   make(map[string]map[string]struct{}),
		rooms:   make(map[string][]string),
		pending: make(map[string]*Diff),
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	w, err := kv.Watch(wctx, "conn.*")
	if err != nil {
		cancel()
		return nil, fmt.Errorf("presence: watch: %w", err)
	}
	// The initial values load the mirror without events.
load:
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				break load
			}
			s.apply(e, false)
		case <-ctx.Done():
			_ = w.Stop()
			cancel()
			return nil, fmt.Errorf("presence: initial load: %w", context.Cause(ctx))
		}
	}
	s.wg.Add(4)
	go func() { defer s.wg.Done(); s.publishEvents(wctx) }()
	go func() { defer s.wg.Done(); s.watch(wctx, w) }()
	// Refresh each TTL/3, so keys outlive two missed refreshes and die
	// within one TTL of the edge, and a second after a failed write.
	go func() { defer s.wg.Done(); every(wctx, cfg.TTL/3, retrySoon, s.refresh) }()
	go func() { defer s.wg.Done(); every(wctx, cfg.DiffInterval, nil, s.flushDiffs) }()
	s.querySub, err = cfg.NATS.QueueSubscribe(presence.Subject(cfg.Namespace), name+"-presence", s.onQuery)
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop stops the watcher, the refresher and the responder. The keys of the
// edge's connections stay until they expire or are removed.
//
// Before stopping it waits (at most 3s) until its writes are stored, the
// watcher has seen this edge's removed connections go, and their events
// are published: the last edge to stop still reports its users offline.
func (s *Service) Stop() {
	if s.querySub != nil {
		_ = s.querySub.Unsubscribe()
	}
	deadline := time.Now().Add(3 * time.Second)
	select {
	case <-s.js.PublishAsyncComplete():
	case <-time.After(time.Until(deadline)):
	}
	for time.Now().Before(deadline) && (s.mirrorHasEdge() || len(s.events) > 0) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-s.evjs.PublishAsyncComplete():
	case <-time.After(time.Until(deadline)):
	}
	s.cancel()
	s.wg.Wait()
}

// mirrorHasEdge reports whether the copy still holds a connection of this
// edge that the edge no longer has.
func (s *Service) mirrorHasEdge() bool {
	s.ownMu.Lock()
	own := len(s.own)
	s.ownMu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, e := range s.conns {
		if e.Edge == s.cfg.Edge {
			n++
		}
	}
	return n > own
}

// TTL is the per-key TTL.
func (s *Service) TTL() time.Duration { return s.cfg.TTL }

// Set writes one of this edge's connections, creating it. It does not wait
// for the server: presence follows the connection, never blocks it.
func (s *Service) Set(e presence.Entry) { s.write(e, true) }

// Update rewrites a connection Set created, and does nothing once it was
// removed: a late join or state change cannot bring a closed connection
// back. e.Seq orders the updates of one connection: one older than the
// last written is dropped, so updates built in one order and delivered in
// another cannot leave a stale entry.
func (s *Service) Update(e presence.Entry) { s.write(e, false) }

type ownEntry struct {
	e   *presence.Entry
	seq uint64
}

// write publishes under ownMu, so that the server sees Set, Update, the
// refresher and Remove for one connection in the order they happened here.
func (s *Service) write(e presence.Entry, create bool) {
	seq := e.Seq
	e.Edge = s.cfg.Edge
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	old, ok := s.own[e.Conn]
	if !ok && !create {
		return
	}
	if ok && seq < old.seq {
		return
	}
	if ok && e.ConnectedAt == 0 {
		e.ConnectedAt = old.e.ConnectedAt
	}
	if e.ConnectedAt == 0 {
		e.ConnectedAt = time.Now().UnixMilli()
	}
	s.own[e.Conn] = ownEntry{e: &e, seq: seq}
	s.put(&e)
}

// Remove deletes one of this edge's connections.
func (s *Service) Remove(conn string) {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	delete(s.own, conn)
	// Without a rollup, the connection's earlier writes stay until they
	// expire, so a lagging watcher still sees them. The marker expires
	// after a TTL like every write.
	m := nats.NewMsg(s.prefix + "conn." + conn)
	// PURGE without a rollup: a marker that the server does not follow
	// with a marker of its own when it expires.
	m.Header.Set("KV-Operation", "PURGE")
	if _, err := s.js.PublishMsgAsync(m, jetstream.WithMsgTTL(s.cfg.TTL)); err != nil {
		s.cfg.Logger.Warn("presence: remove", "conn", conn, "err", err)
	}
}

// put publishes e; ownMu is held.
func (s *Service) put(e *presence.Entry) {
	b, _ := json.Marshal(e)
	if _, err := s.js.PublishAsync(s.prefix+"conn."+e.Conn, b, jetstream.WithMsgTTL(s.cfg.TTL)); err != nil {
		s.cfg.Logger.Warn("presence: put", "conn", e.Conn, "err", err)
	}
}

// every calls f every d until ctx ends, and a second after each signal on
// soon (nil: none).
func every(ctx context.Context, d time.Duration, soon <-chan struct{}, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-soon: // a nil channel never fires
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			t.Reset(d) // no regular round right behind the early one
		}
		f()
	}
}

// refresh rewrites every own key.
func (s *Service) refresh() {
	s.ownMu.Lock()
	own := make([]ownEntry, 0, len(s.own))
	for _, o := range s.own {
		own = append(own, o)
	}
	s.ownMu.Unlock()
	// One entry at a time under ownMu, and only if it is still the current
	// one: no refresh follows a Remove or undoes an Update, and connects
	// never wait for a whole refresh round.
	for _, o := range own {
		s.ownMu.Lock()
		if cur, ok := s.own[o.e.Conn]; ok && cur.e == o.e {
			s.put(o.e)
		}
		s.ownMu.Unlock()
	}
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
			if w, err = s.kv.Watch(ctx, "conn.*"); err != nil {
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
	s.conns = make(map[string]*presence.Entry)
	s.users = make(map[string]map[string]struct{})
	s.rooms = make(map[string][]string)
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return
			}
			s.apply(e, false)
		}
	}
}

// apply updates the mirror with one change and, when live, derives its
// events and room diffs. Only the watcher goroutine calls it.
func (s *Service) apply(kve jetstream.KeyValueEntry, live bool) {
	id := strings.TrimPrefix(kve.Key(), "conn.")
	rev := kve.Revision()
	var next *presence.Entry
	if kve.Operation() == jetstream.KeyValuePut {
		next = new(presence.Entry)
		if err := json.Unmarshal(kve.Value(), next); err != nil || next.Conn != id {
			return
		}
	}
	s.mu.Lock()
	prev := s.conns[id]
	var events []presence.Event
	ev := func(name, room string, e *presence.Entry) {
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
			delSorted(s.rooms, r, id)
		}
		if prev.User != "" {
			delSet(s.users, prev.User, id)
		}
	}
	if next != nil {
		s.conns[id] = next
		for _, r := range next.Rooms {
			addSorted(s.rooms, r, id)
		}
		if next.User != "" {
			addSet(s.users, next.User, id)
		}
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
	for _, e := range events {
		s.publish(e)
	}
	// Within one batch each connection ends up in the list of its last
	// change, so a quick leave and rejoin reads as what it ended as.
	for _, r := range joins {
		s.addDiff(r, func(d *Diff) {
			d.Leaves = without(d.Leaves, id)
			d.Joins = append(without(d.Joins, id), member(next))
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
				d.Joins[i] = member(next)
				return
			}
			d.States = append(without(d.States, id), member(next))
		})
	}
}

func without(ms []presence.Member, conn string) []presence.Member {
	return slices.DeleteFunc(ms, func(m presence.Member) bool { return m.Conn == conn })
}

// publish queues an event; the watcher never waits on the server. A full
// queue drops the event here: the other edges publish it too.
func (s *Service) publish(e presence.Event) {
	select {
	case s.events <- e:
	default:
		s.cfg.Logger.Warn("presence: event queue full, dropped", "event", e.Event, "conn", e.Conn)
	}
}

func (s *Service) publishEvents(ctx context.Context) {
	for {
		select {
		case e := <-s.events:
			b, _ := json.Marshal(e)
			id := strconv.FormatUint(e.Revision, 10) + "." + e.Event + "." + e.Room
			subj := s.cfg.Namespace.Prefix() + ".evtq." + e.Event
			if _, err := s.evjs.PublishAsync(subj, b, jetstream.WithMsgID(id)); err != nil {
				s.cfg.Logger.Warn("presence: event", "event", e.Event, "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

func (s *Service) addDiff(room string, f func(*Diff)) {
	if s.cfg.Diff == nil || !s.cfg.Interested(room) {
		return
	}
	s.diffMu.Lock()
	d := s.pending[room]
	if d == nil {
		d = &Diff{Room: room}
		s.pending[room] = d
	}
	f(d)
	s.diffMu.Unlock()
}

// flushDiffs hands each room's batched changes to the edge.
func (s *Service) flushDiffs() {
	s.diffMu.Lock()
	if len(s.pending) == 0 {
		s.diffMu.Unlock()
		return
	}
	batch := s.pending
	s.pending = make(map[string]*Diff)
	s.diffMu.Unlock()
	for room, d := range batch {
		s.cfg.Diff(room, d)
	}
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

func addSet(m map[string]map[string]struct{}, k, v string) {
	set := m[k]
	if set == nil {
		set = make(map[string]struct{})
		m[k] = set
	}
	set[v] = struct{}{}
}

// addSorted and delSorted keep each room's members sorted, so a page is a
// binary search and a slice, however large the room.
func addSorted(m map[string][]string, k, v string) {
	ids := m[k]
	if i, found := slices.BinarySearch(ids, v); !found {
		m[k] = slices.Insert(ids, i, v)
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

func delSet(m map[string]map[string]struct{}, k, v string) {
	if set := m[k]; set != nil {
		delete(set, v)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// User answers "is user online, and where".
func (s *Service) User(user string) *presence.UserInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	info := &presence.UserInfo{User: user, Connections: []presence.Entry{}}
	for id := range s.users[user] {
		info.Connections = append(info.Connections, *s.conns[id])
	}
	slices.SortFunc(info.Connections, func(a, b presence.Entry) int { return cmp.Compare(a.Conn, b.Conn) })
	info.Online = len(info.Connections) > 0
	return info
}

// Conn returns one connection's entry.
func (s *Service) Conn(id string) (presence.Entry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.conns[id]
	if !ok {
		return presence.Entry{}, false
	}
	return *e, true
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
	ids := s.rooms[room]
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
		page.Members = append(page.Members, member(s.conns[id]))
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
