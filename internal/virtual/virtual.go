package virtual

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("virtual: invalid config")

// Defaults of Config.
const (
	// DefaultRoomSize sets the default Rooms: Conns/DefaultRoomSize,
	// rounded up.
	DefaultRoomSize = 100
	// DefaultWorkers is the default Workers.
	DefaultWorkers = 8
	// MaxConns bounds Conns.
	MaxConns = 10_000_000
)

// Config shapes a Set. Connection i of the population (i counts from
// First) is user virtual-<i mod Users>, joins room virtual-<i mod Rooms>
// and comes from address 198.18.0.0 + i mod 2^17 (the benchmarking range of
// RFC 2544, one address per connection, so that per-IP limits see
// distinct clients).
type Config struct {
	// Conns is how many connections to open and hold. Required, 1 to
	// MaxConns.
	Conns int
	// Users is the size of the user population. Default Conns: one
	// connection per user.
	Users int
	// Rooms is the number of rooms. Default Conns/DefaultRoomSize,
	// rounded up.
	Rooms int
	// First is the index of the first connection. Default 0. Edges of one
	// cluster given consecutive ranges (the second edge's First is the
	// first's Conns) spread the users and rooms over the edges as one
	// population.
	First int
	// OpenRate bounds the connections opened per second until Conns are
	// open. Default 0: as fast as Workers open them.
	OpenRate float64
	// Delay is how long to wait before opening. Default 0.
	Delay time.Duration
	// Churn is how many connections are replaced per second once all
	// Conns are held: the oldest held connection closes (the client's
	// close frame, 1001) and a new one opens with the next index. So the
	// edge sees Churn connects and Churn disconnects a second, and still
	// holds Conns. Default 0: no churn.
	Churn float64
	// ChurnAfter is how long after all Conns are held churn begins.
	// Default 0.
	ChurnAfter time.Duration
	// ChurnStart, when set, holds the churn (after ChurnAfter) until it
	// receives: cmd/edge's --virtual-churn-on-signal passes SIGUSR1, so that
	// a script starts the churn of several edges at one moment. Default
	// nil: none.
	ChurnStart <-chan os.Signal
	// PresenceDiffs joins rooms with "presence": true, so that every
	// connection receives its room's $presence.diff frames.
	PresenceDiffs bool
	// Workers is how many goroutines open connections (each handshake runs
	// synchronously through Handler up to the upgrade). Default
	// DefaultWorkers.
	Workers int

	// Handler is the edge: its ServeHTTP upgrades the connections.
	// Required. The edge must take the user from UserParam (dev mode).
	Handler http.Handler
	// Path is the edge's upgrade path. Default "/ws".
	Path string
	// UserParam is the edge's dev-mode query parameter of the user id.
	// Default "user".
	UserParam string
	// Logger receives the start, progress and held lines. Default
	// slog.Default().
	Logger *slog.Logger
	// Registerer receives the natter_virtual_* metrics. Default nil: none.
	Registerer prometheus.Registerer
}

// Validate checks the shape of cfg (not Handler, which Start needs).
func (cfg *Config) Validate() error {
	switch {
	case cfg.Conns < 1 || cfg.Conns > MaxConns:
		return fmt.Errorf("%w: Conns %d out of 1..%d", ErrInvalidConfig, cfg.Conns, MaxConns)
	case cfg.Users < 0, cfg.Rooms < 0, cfg.First < 0, cfg.Workers < 0:
		return fmt.Errorf("%w: Users, Rooms, First and Workers must not be negative", ErrInvalidConfig)
	case cfg.OpenRate < 0, cfg.Churn < 0, cfg.Delay < 0, cfg.ChurnAfter < 0:
		return fmt.Errorf("%w: rates and durations must not be negative", ErrInvalidConfig)
	}
	return nil
}

func (cfg *Config) setDefaults() error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Handler == nil {
		return fmt.Errorf("%w: Handler is required", ErrInvalidConfig)
	}
	if cfg.Users == 0 {
		cfg.Users = cfg.Conns
	}
	if cfg.Rooms == 0 {
		cfg.Rooms = (cfg.Conns + DefaultRoomSize - 1) / DefaultRoomSize
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Path == "" {
		cfg.Path = "/ws"
	}
	if cfg.UserParam == "" {
		cfg.UserParam = "user"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

// Set is a population of virtual connections held by one edge. Start
// opens it; the edge closes its connections like any other (its Shutdown
// closes them with 4000); Stop ends the opening and the churn.
type Set struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the opener and the churn workers
	ready  chan struct{}
	next   atomic.Int64 // the index of the next connection to open

	// Counters; see Stats.
	attempts, opened, failed, joinRefused, lostOpen, joined, held atomic.Int64
	closedByEdge, closedByClient, churned                         atomic.Int64
	frames, bytes, messages, system, pongs                        atomic.Int64
	joinNanos                                                     atomic.Int64 // sum of handshake-to-$joined times
	probes, probed, probeNanos                                    atomic.Int64 // presence probes started, ended, their times' sum
	joinSeconds, presenceSeconds                                  prometheus.Histogram

	failLog *rate.Limiter

	mu   sync.Mutex
	fifo []*sink // upgraded connections, oldest first, for churn; closed ones are skipped
	head int
}

// Start validates cfg and starts opening its connections in the
// background; Ready reports when all are held. ctx ends the opening and
// the churn, as Stop does.
func Start(ctx context.Context, cfg Config) (*Set, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Set{cfg: cfg, ready: make(chan struct{}), failLog: rate.NewLimiter(0.2, 1)}
	s.next.Store(int64(cfg.First))
	if cfg.Registerer != nil {
		s.joinSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "natter_virtual_join_seconds",
			Help:    "Time from a virtual connection's handshake to its $joined.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		})
		s.presenceSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "natter_virtual_presence_seconds",
			Help:    "Time from a churned-in virtual connection's handshake to its own join in its room's $presence.diff: KV write, replication, watch, mirror, diff batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		})
		if err := errors.Join(cfg.Registerer.Register(collector{s}), cfg.Registerer.Register(s.joinSeconds),
			cfg.Registerer.Register(s.presenceSeconds)); err != nil {
			return nil, fmt.Errorf("virtual: register metrics: %w", err)
		}
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	cfg.Logger.Warn("VIRTUAL CONNECTIONS: this edge opens in-memory connections (not TCP) through its own handshake path, for load tests only",
		"conns", cfg.Conns, "users", cfg.Users, "rooms", cfg.Rooms, "first", cfg.First, "openRate", cfg.OpenRate,
		"churn", cfg.Churn, "churnAfter", cfg.ChurnAfter, "presenceDiffs", cfg.PresenceDiffs)
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// Ready is closed once every one of Conns connections was either held
// (joined) or failed.
func (s *Set) Ready() <-chan struct{} { return s.ready }

// Stop ends the opening and the churn and waits for them. The connections
// stay open: the edge closes them. It is idempotent.
func (s *Set) Stop() {
	s.cancel()
	s.wg.Wait()
}

// run opens the connections, waits until they are settled, then churns.
func (s *Set) run() {
	defer s.wg.Done()
	if !sleep(s.ctx, s.cfg.Delay) {
		return
	}
	start := time.Now()
	var lim *rate.Limiter
	if s.cfg.OpenRate > 0 {
		lim = rate.NewLimiter(rate.Limit(s.cfg.OpenRate), max(1, int(s.cfg.OpenRate/10)))
	}
	end := int64(s.cfg.First + s.cfg.Conns)
	var workers sync.WaitGroup
	for range s.cfg.Workers {
		workers.Go(func() {
			for s.ctx.Err() == nil {
				i := s.next.Add(1) - 1
				if i >= end {
					s.next.Store(end)
					return
				}
				if lim != nil && lim.Wait(s.ctx) != nil {
					return
				}
				s.open(i, false)
			}
		})
	}
	workers.Wait()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for s.settled() < int64(s.cfg.Conns) {
		select {
		case <-s.ctx.Done():
			return
		case <-progress.C:
			st := s.Stats()
			s.cfg.Logger.Info("virtual connections opening", "held", st.Held, "opened", st.Opened, "failed", st.Failed, "joinRefused", st.JoinRefused, "target", s.cfg.Conns)
		case <-poll.C:
		}
	}
	took := time.Since(start)
	st := s.Stats()
	s.cfg.Logger.Warn(fmt.Sprintf("edge holds %d VIRTUAL connections (in-memory, not TCP)", st.Held),
		"held", st.Held, "failed", st.Failed, "joinRefused", st.JoinRefused, "lost", s.lostOpen.Load(),
		"seconds", took.Seconds(), "perSecond", float64(s.cfg.Conns)/took.Seconds())
	close(s.ready)
	if s.cfg.Churn <= 0 || !sleep(s.ctx, s.cfg.ChurnAfter) {
		return
	}
	if s.cfg.ChurnStart != nil {
		s.cfg.Logger.Info("virtual churn waits for its start signal", "perSecond", s.cfg.Churn)
		select {
		case <-s.ctx.Done():
			return
		case <-s.cfg.ChurnStart:
		}
	}
	s.cfg.Logger.Info("virtual churn started", "perSecond", s.cfg.Churn)
	churn := rate.NewLimiter(rate.Limit(s.cfg.Churn), max(1, int(s.cfg.Churn/10)))
	for range s.cfg.Workers {
		s.wg.Go(func() {
			for churn.Wait(s.ctx) == nil {
				// One out, one in: the population stays Conns whatever
				// the edge's pace (a connection not joined yet may go).
				old := s.oldest()
				if old == nil {
					continue // every connection is gone
				}
				old.hangUp()
				s.churned.Add(1)
				s.open(s.next.Add(1)-1, s.cfg.PresenceDiffs)
			}
		})
	}
}

// settled counts the connections of the first Conns that were held or
// failed.
func (s *Set) settled() int64 {
	return s.joined.Load() + s.failed.Load() + s.joinRefused.Load() + s.lostOpen.Load()
}

// open opens connection i through the handler; timed, it times its
// presence (see probe).
func (s *Set) open(i int64, timed bool) {
	s.attempts.Add(1)
	room := "virtual-" + strconv.FormatInt(i%int64(s.cfg.Rooms), 10)
	join := `{"type":"$join","meta":{"correlationId":"j"},"payload":{"room":"` + room + `"}}`
	if s.cfg.PresenceDiffs {
		join = `{"type":"$join","meta":{"correlationId":"j"},"payload":{"room":"` + room + `","presence":true}}`
	}
	c := newSink(s, clientFrame(opText, []byte(join)))
	if timed {
		c.probe = &probe{}
		s.probes.Add(1)
	}
	w := &hijacker{conn: c}
	s.cfg.Handler.ServeHTTP(w, s.request(i))
	c.wmu.Lock()
	upgraded := c.upgraded
	c.wmu.Unlock()
	if w.status != 0 || !upgraded {
		s.failed.Add(1)
		if s.failLog.Allow() {
			s.cfg.Logger.Warn("virtual connection refused", "status", w.status, "failed", s.failed.Load())
		}
		return
	}
	s.opened.Add(1)
	s.mu.Lock()
	s.fifo = append(s.fifo, c)
	s.mu.Unlock()
}

// wsKey is a valid Sec-WebSocket-Key (RFC 6455's sample): the edge checks
// its form, and every virtual handshake may use the same.
const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

// request is connection i's handshake, as net/http would hand it over.
func (s *Set) request(i int64) *http.Request {
	user := "virtual-" + strconv.FormatInt(i%int64(s.cfg.Users), 10)
	u := &url.URL{Path: s.cfg.Path, RawQuery: url.QueryEscape(s.cfg.UserParam) + "=" + user}
	h := http.Header{}
	h.Set("Upgrade", "websocket")
	h.Set("Connection", "Upgrade")
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Key", wsKey)
	ip := 198<<24 | 18<<16 | uint32(i%(1<<17))
	return &http.Request{
		Method: http.MethodGet, URL: u, RequestURI: u.RequestURI(),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: "virtual",
		RemoteAddr: fmt.Sprintf("%d.%d.%d.%d:1", ip>>24, ip>>16&0xFF, ip>>8&0xFF, ip&0xFF),
	}
}

// joinedConn records c's $joined.
func (s *Set) joinedConn(c *sink) {
	s.joined.Add(1)
	s.held.Add(1)
	d := time.Now().UnixNano() - c.startedAt
	s.joinNanos.Add(d)
	if s.joinSeconds != nil {
		s.joinSeconds.Observe(float64(d) / 1e9)
	}
}

// presenceSeen records a probe's time.
func (s *Set) presenceSeen(d int64) {
	s.probed.Add(1)
	s.probeNanos.Add(d)
	if s.presenceSeconds != nil {
		s.presenceSeconds.Observe(float64(d) / 1e9)
	}
}

// closedConn records the close of c, which was in state prev.
func (s *Set) closedConn(c *sink, prev int32) {
	if prev != stateOpen && prev != stateHeld {
		return // a handshake that failed: counted by open
	}
	if prev == stateHeld {
		s.held.Add(-1)
	}
	switch {
	case c.hangingUp.Load():
		s.closedByClient.Add(1)
	case prev == stateOpen:
		s.lostOpen.Add(1) // closed by the edge before its $joined
		s.closedByEdge.Add(1)
	default:
		s.closedByEdge.Add(1)
	}
}

// oldest takes the oldest open connection off the queue, or nil.
func (s *Set) oldest() *sink {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.head < len(s.fifo) {
		c := s.fifo[s.head]
		s.fifo[s.head] = nil
		s.head++
		if s.head > 1024 && s.head*2 > len(s.fifo) {
			s.fifo = append(s.fifo[:0:0], s.fifo[s.head:]...)
			s.head = 0
		}
		if st := c.state.Load(); (st == stateOpen || st == stateHeld) && !c.hangingUp.Load() {
			return c
		}
	}
	return nil
}

// Stats is a snapshot of a Set's counters.
type Stats struct {
	Target         int64 // Config.Conns
	Opened         int64 // handshakes upgraded
	Held           int64 // joined and open now
	Failed         int64 // handshakes refused or failed
	JoinRefused    int64 // $join answered with $error (the client then closed)
	ClosedByEdge   int64 // connections the edge closed (its shutdown, a dead peer, a slow consumer...)
	ClosedByClient int64 // connections the client closed: churn, or a refused join
	Churned        int64 // replacements made by churn
	Frames         int64 // frames the edge wrote to virtual connections, pings and closes included
	Bytes          int64 // bytes the edge wrote to them, the handshake responses included
	Messages       int64 // text frames that are not system ($...) envelopes: room and user messages
	System         int64 // text frames of system types: $connected, $presence.diff, ... ($joined excluded)
	Pongs          int64 // pings answered
	// JoinMean is the mean time from a handshake to its $joined.
	JoinMean time.Duration
	// PresenceProbes counts the churned-in connections that look for their
	// own join in their room's $presence.diff (with PresenceDiffs);
	// PresenceSeen those that saw it, PresenceMean their mean time from
	// the handshake.
	PresenceProbes, PresenceSeen int64
	PresenceMean                 time.Duration
}

// Stats returns the current counters.
func (s *Set) Stats() Stats {
	st := Stats{
		Target: int64(s.cfg.Conns), Opened: s.opened.Load(), Held: s.held.Load(), Failed: s.failed.Load(),
		JoinRefused: s.joinRefused.Load(), ClosedByEdge: s.closedByEdge.Load(), ClosedByClient: s.closedByClient.Load(),
		Churned: s.churned.Load(), Frames: s.frames.Load(), Bytes: s.bytes.Load(), Messages: s.messages.Load(),
		System: s.system.Load(), Pongs: s.pongs.Load(),
	}
	if n := s.joined.Load(); n > 0 {
		st.JoinMean = time.Duration(s.joinNanos.Load() / n)
	}
	st.PresenceProbes, st.PresenceSeen = s.probes.Load(), s.probed.Load()
	if st.PresenceSeen > 0 {
		st.PresenceMean = time.Duration(s.probeNanos.Load() / st.PresenceSeen)
	}
	return st
}

// sleep waits d or until ctx ends, and reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// collector exports Stats at scrape time. No label comes from a user or
// room.
type collector struct{ s *Set }

var statDescs = []struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(Stats) int64
}{
	{prometheus.NewDesc("natter_virtual_connections", "VIRTUAL (in-memory, not TCP) connections held now: joined and open. natter_edge_connections counts them too.", nil, nil), prometheus.GaugeValue, func(s Stats) int64 { return s.Held }},
	{prometheus.NewDesc("natter_virtual_connections_target", "Virtual connections to hold (--virtual-conns).", nil, nil), prometheus.GaugeValue, func(s Stats) int64 { return s.Target }},
	{prometheus.NewDesc("natter_virtual_opened_total", "Virtual handshakes upgraded.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Opened }},
	{prometheus.NewDesc("natter_virtual_failed_total", "Virtual handshakes refused or failed.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Failed }},
	{prometheus.NewDesc("natter_virtual_join_refused_total", "Virtual joins answered with $error.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.JoinRefused }},
	{prometheus.NewDesc("natter_virtual_closed_by_edge_total", "Virtual connections the edge closed.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.ClosedByEdge }},
	{prometheus.NewDesc("natter_virtual_closed_by_client_total", "Virtual connections the client closed (close frame): churn, or a refused join.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.ClosedByClient }},
	{prometheus.NewDesc("natter_virtual_churned_total", "Virtual connections replaced by churn.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Churned }},
	{prometheus.NewDesc("natter_virtual_frames_received_total", "Frames the edge wrote to virtual connections.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Frames }},
	{prometheus.NewDesc("natter_virtual_bytes_received_total", "Bytes the edge wrote to virtual connections.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Bytes }},
	{prometheus.NewDesc("natter_virtual_messages_received_total", "Non-system text frames virtual connections received.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Messages }},
	{prometheus.NewDesc("natter_virtual_system_received_total", "System text frames ($connected, $presence.diff, ...) virtual connections received.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.System }},
	{prometheus.NewDesc("natter_virtual_presence_probes_total", "Churned-in virtual connections looking for their own join in a $presence.diff.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.PresenceProbes }},
	{prometheus.NewDesc("natter_virtual_pongs_total", "Pings of the edge answered by virtual connections.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Pongs }},
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range statDescs {
		ch <- d.desc
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	for _, d := range statDescs {
		ch <- prometheus.MustNewConstMetric(d.desc, d.kind, float64(d.value(st)))
	}
}
