package presencekv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// ErrInvalidConfig wraps configuration errors.
var ErrInvalidConfig = errors.New("presencekv: invalid config")

// DefaultTTL is the lease TTL when Config.TTL is zero.
const DefaultTTL = 15 * time.Second

// Config configures a Service.
type Config struct {
	NATS      *nats.Conn
	Namespace envelope.Namespace
	// Edge is the id of the edge whose connections this service writes:
	// one NATS token (envelope.ValidateID). Its lease is the key
	// edge.<Edge>. Ids must be unique among running edges; an edge that
	// starts removes the keys a previous edge of the same id left.
	Edge string
	// TTL is the TTL of the edge's lease, refreshed every TTL/3: the other
	// edges remove this edge's connections within about a TTL of its
	// death. It is also how long a removed connection's delete marker
	// stays before it is purged. Every edge of a cluster should use the
	// same TTL (the bucket's marker TTL is the last started edge's).
	// Default 15s, range 1s..5m, whole seconds.
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

// KV header values the watchers read (nats.go keeps its own unexported).
const (
	kvOperation = "KV-Operation"
	kvDel       = "DEL"
	kvPurge     = "PURGE"
)

// eventQueue is how many derived events wait for the publisher before the
// watcher waits instead (a variable for the tests).
var eventQueue = 65536

// Service is one edge's presence.
type Service struct {
	cfg    Config
	js     jetstream.JetStream // KV writes
	evjs   jetstream.JetStream // event publishes, so they never wait behind KV writes
	events chan presence.Event // derived events, published by one goroutine
	kv     jetstream.KeyValue
	prefix string // "$KV.<bucket>." for raw publishes
	warn   *rate.Limiter

	ownMu sync.Mutex
	own   map[string]*ownEntry // this edge's connections

	dirtyMu sync.Mutex
	dirty   map[string]struct{} // own keys whose last write failed
	dirtyAt time.Time           // when the oldest of them failed

	kick chan struct{} // wakes the keeper
	// lapsed is the revision of the latest change that showed the lease
	// lapsed (its removal, or the removal of a connection we hold); while
	// it is above leaseSeq, the revision of the lease's last write, the
	// keeper takes the lease again and rewrites every own key. Changes
	// stored before that write are covered by the rewrite that follows it.
	lapsed   atomic.Uint64
	leaseSeq atomic.Uint64
	// backup is how long an edge that is not the first to remove a dead
	// edge's keys waits before it removes what is left (nanoseconds).
	backup    atomic.Int64
	conflicts atomic.Int64 // removals refused because the key changed
	slowApply atomic.Int64 // the watcher sleeps this long per change (tests: a lagging watcher)
	queueFull atomic.Int64 // events that found the event queue full and waited

	// The keeper's own state (Start's before the keeper runs).
	leaseRev uint64    // revision of the last lease write, 0 when unknown
	leaseAt  time.Time // when the last lease write that was stored was sent
	leaseTry time.Time // when the last lease write was attempted
	sweptAt  time.Time // when the last sweep ran

	mu    sync.RWMutex // the mirror
	conns map[string]*record
	users map[string][]string // user -> connection ids, sorted
	rooms roomIndex
	edges map[string]*edgeState // every edge with a lease or connections
	tombs map[string]*tomb      // connection id -> delete marker not yet purged

	diffMu  sync.Mutex
	pending map[string]*Diff
	diffDue chan struct{} // a batch was started: flush it DiffInterval later

	querySub *nats.Subscription
	// loops owns the watcher, the event publisher and the diff flusher;
	// keeper the keeper, which Stop ends before the lease goes (and the
	// tests' Pause replaces).
	loops    routine.Group
	keeper   *routine.Group
	stopping atomic.Bool
	// progress wakes Stop, once stopping is set, when the watcher applied
	// a change or the publisher took an event.
	progress chan struct{}
	stopOnce sync.Once
}

// Start ensures the bucket and the event stream, loads the mirror, removes
// the keys a previous edge of the same id left, takes the lease and starts
// the watcher, the keeper and the query responder. Setting up retries
// passing failures until ctx ends (then the error wraps
// context.Cause(ctx)); without JetStream it fails at once with an error
// wrapping natsopt.ErrNoJetStream. ctx bounds only the set-up.
func Start(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.NATS == nil {
		return nil, fmt.Errorf("%w: NATS is required", ErrInvalidConfig)
	}
	if err := envelope.ValidateID(cfg.Edge); err != nil {
		return nil, fmt.Errorf("%w: Edge: %v", ErrInvalidConfig, err)
	}
	if cfg.Namespace == (envelope.Namespace{}) {
		cfg.Namespace = envelope.DefaultNamespace
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
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
	name := strings.ReplaceAll(cfg.Namespace.Prefix(), ".", "_")
	bucket := name + "_presence"
	s := &Service{
		cfg:      cfg,
		events:   make(chan presence.Event, eventQueue),
		prefix:   "$KV." + bucket + ".",
		warn:     rate.NewLimiter(1, 5), // one line per failed write is too many
		own:      make(map[string]*ownEntry),
		dirty:    make(map[string]struct{}),
		kick:     make(chan struct{}, 1),
		conns:    make(map[string]*record),
		users:    make(map[string][]string),
		rooms:    make(roomIndex),
		edges:    make(map[string]*edgeState),
		tombs:    make(map[string]*tomb),
		pending:  make(map[string]*Diff),
		diffDue:  make(chan struct{}, 1),
		progress: make(chan struct{}, 1),
		keeper:   new(routine.Group),
	}
	s.backup.Store(int64(cfg.TTL / 3))
	newJS := func(onErr jetstream.MsgErrHandler) (jetstream.JetStream, error) {
		return jetstream.New(cfg.NATS, jetstream.WithPublishAsyncMaxPending(65536),
			// An ack that never comes (no stream leader) becomes an error
			// too, releases its slot and, for own writes, a retry.
			jetstream.WithPublishAsyncTimeout(s.ackWait()),
			jetstream.WithPublishAsyncErrHandler(onErr))
	}
	var err error
	if s.js, err = newJS(s.writeFailed); err != nil {
		return nil, err
	}
	if s.evjs, err = newJS(func(_ jetstream.JetStream, m *nats.Msg, err error) { s.warnf("presence: publish failed", m, err) }); err != nil {
		return nil, err
	}
	err = natsopt.Retry(ctx, cfg.Logger, "presence", func(ctx context.Context) (err error) {
		s.kv, err = s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Natter presence: edge.<id>, one lease per edge; conn.<id>, one key per connection",
			// Some history, so that an edge whose watcher lags still sees every
			// write of a connection (a create and the join right after it) and
			// derives the same events as the others. A removed connection's
			// writes are purged a TTL after its removal.
			History:  10,
			Storage:  jetstream.FileStorage,
			Replicas: cfg.Replicas,
			// Expiries of leases reach the watchers as purge markers, which
			// live a TTL. (With history, the server raises every message's
			// TTL to at least the marker TTL, so the two are the same.)
			LimitMarkerTTL: cfg.TTL,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("presence: bucket %s: %w", bucket, err)
	}
	pfx := cfg.Namespace.Prefix()
	if err := natsopt.Retry(ctx, cfg.Logger, "presence", func(ctx context.Context) error {
		_, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
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
	// The watch is the watcher goroutine's: it ends with the loops. Its
	// consumer's creation is retried like the other steps: a busy
	// cluster (the reconnect of a dead edge's connections) makes one
	// attempt time out, which ended the edge's start.
	var w jetstream.KeyWatcher
	if err := natsopt.Retry(ctx, cfg.Logger, "presence", func(context.Context) (err error) {
		w, err = s.kv.WatchAll(s.loops.Context())
		return err
	}); err != nil {
		s.loops.Stop()
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
			s.loops.Stop()
			return nil, fmt.Errorf("presence: initial load: %w", context.Cause(ctx))
		}
	}
	// This edge has no connection yet: keys that name it are a previous
	// edge's of the same id (restarted before its lease expired).
	s.removeStale()
	// The lease before any connection key: the other edges remove keys
	// whose edge holds none.
	if err := natsopt.Retry(ctx, cfg.Logger, "presence", func(ctx context.Context) error {
		return s.writeLease(ctx, false)
	}); err != nil {
		_ = w.Stop()
		s.loops.Stop()
		return nil, fmt.Errorf("presence: lease: %w", err)
	}
	s.loops.Go(s.publishEvents)
	s.loops.Go(func(ctx context.Context) { s.watch(ctx, w) })
	s.loops.Go(s.flushLoop)
	s.keeper.Go(s.keep)
	s.querySub, err = cfg.NATS.QueueSubscribe(presence.Subject(cfg.Namespace), name+"-presence", s.onQuery)
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// ackWait bounds the wait for one write's acknowledgement.
func (s *Service) ackWait() time.Duration { return min(s.cfg.TTL/3, 5*time.Second) }

// Stop removes this edge's remaining connection keys, waits (at most 3s)
// until they are stored, the watcher has seen them go and their events
// are published (so that the last edge to stop still reports its users
// offline), then removes the lease and stops. It is idempotent.
func (s *Service) Stop() {
	s.stopOnce.Do(s.stop)
}

func (s *Service) stop() {
	if s.querySub != nil {
		_ = s.querySub.Unsubscribe()
	}
	s.stopping.Store(true)
	s.ownMu.Lock()
	for id := range s.own {
		delete(s.own, id)
		s.del(id)
	}
	s.ownMu.Unlock()
	deadline := time.Now().Add(3 * time.Second)
	select {
	case <-s.js.PublishAsyncComplete():
	case <-time.After(time.Until(deadline)):
	}
	// The keeper still retries failed writes meanwhile. The watcher and
	// the event publisher signal each step they make (progressed).
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
wait:
	for s.mirrorHasOwn() || len(s.events) > 0 {
		select {
		case <-s.progress:
		case <-t.C:
			break wait
		}
	}
	s.stopKeeper()
	// The lease goes after the connections, so that no edge removes them
	// a second time; an edge left alone purges what no one else will.
	s.dropLease(deadline)
	select {
	case <-s.evjs.PublishAsyncComplete():
	case <-time.After(time.Until(deadline)):
	}
	s.stopLoops()
	// The publishers' reply subscriptions go with the service (the NATS
	// connection is its owner's); a write still unanswered fails.
	s.js.CleanupPublisher()
	s.evjs.CleanupPublisher()
}

// stopKeeper ends the keeper and waits for it.
func (s *Service) stopKeeper() {
	s.keeper.Stop()
	_ = s.keeper.Wait(context.Background())
}

// stopLoops ends the watcher, the event publisher and the diff flusher,
// and waits for them.
func (s *Service) stopLoops() {
	s.loops.Stop()
	_ = s.loops.Wait(context.Background())
}

// progressed wakes a Stop waiting for the watcher and the event
// publisher; before Stop it costs one atomic load.
func (s *Service) progressed() {
	if !s.stopping.Load() {
		return
	}
	select {
	case s.progress <- struct{}{}:
	default:
	}
}

// mirrorHasOwn reports whether the mirror still holds a connection of this
// edge.
func (s *Service) mirrorHasOwn() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.edges[s.cfg.Edge]
	return st != nil && st.conns > 0
}

// TTL is the lease TTL.
func (s *Service) TTL() time.Duration { return s.cfg.TTL }

// Set writes one of this edge's connections, creating it. It does not wait
// for the server: presence follows the connection, never blocks it.
func (s *Service) Set(e presence.Entry) { s.write(e, true) }

// Update rewrites a connection Set created, and does nothing once it was
// removed: a late join or state change cannot bring a closed connection
// back. e.Seq orders the updates of one connection: one older than the
// last written is dropped, so that updates built in one order and
// delivered in another cannot leave a stale entry.
func (s *Service) Update(e presence.Entry) { s.write(e, false) }

// Remove deletes one of this edge's connections.
func (s *Service) Remove(conn string) {
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	if _, ok := s.own[conn]; !ok {
		return
	}
	delete(s.own, conn)
	s.del(conn)
}

type ownEntry struct {
	e   *presence.Entry
	seq uint64
}

// write publishes under ownMu, so that the server sees Set, Update, the
// keeper's rewrites and Remove for one connection in the order they
// happened here.
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
	o := &ownEntry{e: &e, seq: seq}
	s.own[e.Conn] = o
	s.put(o.e)
}

// put publishes e, without a TTL; ownMu is held.
func (s *Service) put(e *presence.Entry) {
	b, _ := json.Marshal(e)
	m := nats.NewMsg(s.prefix + "conn." + e.Conn)
	m.Data = b
	s.publishOwn(m, e.Conn)
}

// del publishes a delete marker for conn; ownMu is held. No rollup: the
// connection's earlier writes stay for the watchers that lag, and are
// purged a TTL later (see sweep).
func (s *Service) del(conn string) {
	m := nats.NewMsg(s.prefix + "conn." + conn)
	m.Header.Set(kvOperation, kvDel)
	s.publishOwn(m, conn)
}

// publishOwn publishes a write of own connection id; ownMu is held.
//
// While the NATS connection is down it publishes nothing and leaves the
// key to the keeper, which writes it as it is once connected again.
// nats.go would buffer the write and send it after the reconnect however
// stale it is by then, with every retry of it: a connection that came and
// went during a partition, or whose key the other edges removed
// meanwhile, would read as its user coming online and going offline
// again, after the fact.
func (s *Service) publishOwn(m *nats.Msg, id string) {
	if !s.cfg.NATS.IsConnected() {
		s.markDirty(id)
		return
	}
	if _, err := s.js.PublishMsgAsync(m); err != nil {
		s.writeFailed(s.js, m, err)
	}
}

// writeFailed handles a failed KV write (an error, no acknowledgement in
// time, a reconnect).
//
// A removal (the only writes that expect a revision) refused because the
// key changed since the mirror saw it is the expected outcome of a race
// (another edge removed it first, or its edge wrote it again) and is only
// counted; other failed removals are tried again by the next sweep, from
// the mirror.
//
// A failed write of this edge's own connection marks the connection for
// the keeper to write again as it is then: connection keys are not
// refreshed, so a lost write would stay lost.
func (s *Service) writeFailed(_ jetstream.JetStream, m *nats.Msg, err error) {
	if m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "" {
		if wrongLastSeq(err) {
			s.conflicts.Add(1)
			s.refused(m)
			return
		}
		s.warnf("presence: removal failed", m, err)
		return
	}
	s.warnf("presence: write failed; retrying", m, err)
	if id, ok := strings.CutPrefix(m.Subject, s.prefix+"conn."); ok {
		s.markDirty(id)
	}
}

// refused records that removal m was refused because its key changed
// since the revision the mirror holds: the key was removed by another
// edge, purged, or written again, and the watcher will show which. Until
// then the sweep does not send it again: a watcher that lags under load
// would otherwise have every edge resend every refused removal each
// round, which adds to the load that makes it lag.
func (s *Service) refused(m *nats.Msg) {
	id, ok := strings.CutPrefix(m.Subject, s.prefix+"conn.")
	if !ok {
		return
	}
	rev, err := strconv.ParseUint(m.Header.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Header.Get(kvOperation) == kvPurge {
		if tb := s.tombs[id]; tb != nil && tb.rev == rev {
			delete(s.tombs, id) // purged already, or written again
		}
		return
	}
	if r := s.conns[id]; r != nil && r.rev == rev {
		r.refused = true
	}
}

// markDirty leaves own key id to the keeper, to be written again as it is
// then.
func (s *Service) markDirty(id string) {
	s.dirtyMu.Lock()
	if len(s.dirty) == 0 {
		s.dirtyAt = time.Now()
	}
	s.dirty[id] = struct{}{}
	s.dirtyMu.Unlock()
	s.wake()
}

func (s *Service) warnf(msg string, m *nats.Msg, err error) {
	if s.warn.Allow() {
		s.cfg.Logger.Warn(msg, "subject", m.Subject, "err", err)
	}
}

// wrongLastSeq reports whether err is JetStream's refusal of a write whose
// expected last revision of the key was not the key's.
func wrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// wake asks the keeper for a round.
func (s *Service) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
