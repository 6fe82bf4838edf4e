package edge

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/presencekv"
	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/wire"
)

// Edge holds WebSocket connections and bridges them to NATS. It is an
// http.Handler for its upgrade path. Create it with New, stop it with
// Shutdown.
//
// The package doc gives its goroutines and lock order.
type Edge struct {
	cfg      Config
	nc       *nats.Conn
	ns       envelope.Namespace
	upgrader *gws.Upgrader
	// upgraderProto selects the "natter" subprotocol, for clients that
	// offer subprotocols (a token as bearer.<token> among them).
	upgraderProto *gws.Upgrader
	// upgraderBinary selects "natter.protobuf": binary frames of
	// natter.v1.Envelope (docs/protocol.md, "Binary wire").
	upgraderBinary *gws.Upgrader
	// codec converts envelopes for natter.protobuf connections, through
	// the schemas.
	codec     wire.Codec
	origins   auth.Origins
	adm       admission
	hub       *hub
	conns     registry
	ids       connIDs // connection ids, <edge>.<n>
	allSub    *nats.Subscription
	httpSub   *nats.Subscription    // <prefix>.http.<edge>: fallback POSTs other edges forward
	connSubs  [2]*nats.Subscription // out.conn.<edge>.* and ctl.conn.<edge>.*: every connection's (subscribeConns)
	rpc       *rpcMux
	presence  *presencekv.Service // nil when off
	dur       *durable            // nil without durable rooms
	work      *work               // nil without durable types
	streams   *streams            // nil when response streams are off
	stats     counters
	writers   *writerPool
	disp      *dispatcher
	nextShard atomic.Uint32
	// rpcLatency observes client RPCs from forward to reply; nil without
	// Config.Registerer.
	rpcLatency prometheus.Histogram
	logLimit   *rate.Limiter // sampled warnings on the message path
	// tracer makes the edge's spans (trace.go); nil when tracing is off.
	tracer trace.Tracer

	// Lifecycle: see Shutdown and the package doc.
	//
	// handshakes counts the ServeHTTP calls in progress; Shutdown stops it
	// first, so that no handshake starts after, and waits for it.
	// routines owns every other goroutine of the edge: the ticker, read
	// loops, connection writers, control runners and the confirmations of
	// new subscriptions. Shutdown stops it once the connections are gone.
	handshakes routine.Group
	routines   routine.Group
	draining   atomic.Bool // Drain: refuse new handshakes, keep the open ones
	// shutdown starts the teardown once; stopped is closed when it is
	// done, and every Shutdown call waits for it.
	shutdown sync.Once
	stopped  chan struct{}
	// gaveUp ends when a Shutdown's ctx ended first: lingering closes end
	// at once, the spread of closes hurries, and the teardown's waits end.
	gaveUp context.Context
	giveUp context.CancelFunc
}

// New builds an edge and subscribes it to the everyone subject and to the
// two wildcards that address its connections (<prefix>.out.conn.<edge>.*
// and <prefix>.ctl.conn.<edge>.*: a connection costs no subscription). It
// accepts connections as soon as it is served. A config New refuses
// wraps ErrInvalidConfig.
//
// ctx bounds the set-up, not the edge's life. Setting up what needs
// JetStream (presence, durable rooms, durable messages) retries passing
// failures (a cluster electing its leaders) until ctx ends: give ctx a
// deadline to bound it, and cancel it to end it at once, with
// context.CancelCauseFunc to give the reason. Errors no retry can mend
// end New at once, and their message says what to change on the server:
// a server or account without JetStream (the error wraps
// natsopt.ErrNoJetStream). NATS reports a permission violation (a NATS
// user that may not use the JetStream API) to the connection's error
// handler, not to the request, which only times out: that handler should
// cancel ctx with the violation as its cause (internal/app does); New's
// error then names the permission to grant.
func New(ctx context.Context, cfg Config) (*Edge, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("edge: set-up interrupted: %w", context.Cause(ctx))
	}
	e := &Edge{
		cfg:      cfg,
		nc:       cfg.NATS.Conn,
		ns:       cfg.NATS.Namespace,
		stopped:  make(chan struct{}),
		logLimit: rate.NewLimiter(1, 1),
		tracer:   tracing.Tracer(cfg.Tracing.Provider),
	}
	e.gaveUp, e.giveUp = context.WithCancel(context.Background())
	e.conns.init()
	e.ids.init(cfg.EdgeID)
	e.hub = newHub(e)
	e.adm.init()
	if cfg.Registerer != nil {
		if err := e.registerMetrics(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	ws := cfg.WebSocket
	e.origins = auth.Origins{Allowed: cfg.Auth.AllowedOrigins, Any: cfg.Auth.DevMode && len(cfg.Auth.AllowedOrigins) == 0}
	opts := func(protocols []string) *gws.ServerOption {
		return &gws.ServerOption{
			ReadMaxPayloadSize: ws.MaxMessageSize,
			ReadBufferSize:     ws.ReadBufferSize,
			CheckUtf8Enabled:   false, // handler.OnMessage checks text frames
			// No Recovery: a panic in the read loop, gws's own or in a
			// callback, reaches conn.readLoop, which closes only that
			// connection.
			Logger:       gwsLogger{cfg.Logger},
			NewSession:   func() gws.SessionStorage { return new(slot) },
			SubProtocols: protocols,
			PermessageDeflate: gws.PermessageDeflate{
				Enabled:               ws.Compression,
				ServerContextTakeover: false,
				ClientContextTakeover: false,
			},
		}
	}
	// gws fails a handshake offering none of SubProtocols, so clients that
	// offer no subprotocol at all go through an upgrader without them.
	e.upgrader = gws.NewUpgrader(&handler{e: e}, opts(nil))
	e.upgraderProto = gws.NewUpgrader(&handler{e: e}, opts([]string{auth.Subprotocol}))
	e.upgraderBinary = gws.NewUpgrader(&handler{e: e}, opts([]string{wire.Protobuf}))
	if cfg.Schemas != nil {
		e.codec.Types = cfg.Schemas
	}
	sub, err := e.nc.Subscribe(e.ns.All().String(), e.deliverAll)
	if err != nil {
		return nil, fmt.Errorf("edge: subscribe all: %w", err)
	}
	e.allSub = sub
	if e.rpc, err = newRPCMux(e); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("edge: subscribe inbox: %w", err)
	}
	// undo stops what started before a later part failed.
	undo := func() {
		_ = sub.Unsubscribe()
		_ = e.rpc.sub.Unsubscribe()
		if e.presence != nil {
			e.presence.Stop()
		}
		if e.dur != nil {
			e.dur.stop()
		}
	}
	if p := cfg.Presence; p != nil {
		e.presence, err = presencekv.Start(ctx, presencekv.Config{
			NATS: e.nc, Namespace: e.ns, Edge: cfg.EdgeID, TTL: p.TTL,
			Replicas: p.Replicas, Logger: cfg.Logger,
			Diff:       func(room string, d *presencekv.Diff) { e.deliverDiff(room, d) },
			Interested: e.hub.watching,
		})
		if err != nil {
			undo()
			return nil, e.setupFailed(ctx, "presence", err)
		}
	}
	if cfg.DurableRooms != nil {
		if e.dur, err = startDurable(ctx, e); err != nil {
			undo()
			return nil, e.setupFailed(ctx, "durable rooms", err)
		}
	}
	if cfg.Streams != nil {
		if e.streams, err = startStreams(ctx, e); err != nil {
			undo()
			return nil, e.setupFailed(ctx, "response streams", err)
		}
	}
	if cfg.DurableMessages != nil {
		if e.work, err = startWork(ctx, e); err != nil {
			undo()
			return nil, e.setupFailed(ctx, "durable messages", err)
		}
	}
	e.writers = newWriterPool()
	e.disp = newDispatcher()
	undoAll := func() {
		e.disp.close()
		e.writers.close()
		if e.work != nil {
			e.work.stop(ctx)
		}
		undo()
	}
	if err := e.subscribeConns(); err != nil {
		undoAll()
		return nil, fmt.Errorf("edge: subscribe connections: %w", err)
	}
	httpSubj, err := e.ns.HTTP(cfg.EdgeID)
	if err == nil {
		e.httpSub, err = e.nc.Subscribe(httpSubj.String(), e.onForwardedPost)
	}
	if err != nil {
		for _, s := range e.connSubs {
			e.disp.unsubscribe(s)
		}
		undoAll()
		return nil, fmt.Errorf("edge: subscribe fallback posts: %w", err)
	}
	// The edge serves once New returns, so its subscriptions must be on the
	// server by then: nats.go sends them in the background, and a message
	// to a new connection that came first would be lost.
	if err := flush(ctx, e.nc); err != nil {
		if ctx.Err() != nil {
			for _, s := range e.connSubs {
				e.disp.unsubscribe(s)
			}
			_ = e.httpSub.Unsubscribe()
			undoAll()
			return nil, fmt.Errorf("edge: set-up interrupted: %w", context.Cause(ctx))
		}
		// Disconnected: nats.go sends the subscriptions again when it
		// reconnects.
		cfg.Logger.Warn("edge: NATS has not confirmed the edge's subscriptions", "err", err)
	}
	e.routines.Go(e.tick)
	return e, nil
}

// flushWait bounds flush: a round trip that takes longer means the
// connection is down, whatever is left of the caller's set-up time.
const flushWait = 5 * time.Second

// flush waits until the server has processed all nc sent so far, at most
// flushWait or until ctx ends (the caller tells the two apart by ctx.Err).
func flush(ctx context.Context, nc *nats.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, flushWait)
	defer cancel()
	return nc.FlushWithContext(ctx)
}

// setupFailed is New's error when setting up feature (what needs
// JetStream) failed: it says what to change on the NATS server for the
// errors no retry mends, and that ctx ended otherwise.
func (e *Edge) setupFailed(ctx context.Context, feature string, err error) error {
	if errors.Is(err, natsopt.ErrNoJetStream) {
		fix := "the NATS server does not run JetStream: start it with -js (nats-server -js) or a jetstream block in its configuration"
		if errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			fix = "the edge's NATS account has no JetStream: enable JetStream for the account in the server's configuration (jetstream: enabled in its accounts block)"
		}
		return fmt.Errorf("edge: %s needs JetStream, and %s: %w", feature, fix, err)
	}
	if errors.Is(err, natsopt.ErrRefused) {
		return fmt.Errorf("edge: %s: the NATS server refused its stream; check the %s flags (replicas at most the number of JetStream servers, limits within the server's and account's): %w", feature, feature, err)
	}
	perm := context.Cause(ctx)
	if !errors.Is(perm, nats.ErrPermissionViolation) {
		// Only the owner's error handler hears of a violation: when it did
		// not end ctx, the connection may still remember it.
		perm = e.nc.LastError()
	}
	if errors.Is(perm, nats.ErrPermissionViolation) {
		if !errors.Is(err, perm) {
			err = fmt.Errorf("%w (%w)", err, perm)
		}
		return fmt.Errorf("edge: %s: NATS denied a permission: allow the edge's NATS user the JetStream API ($JS.API.>) and the subjects of its role (deploy/nats): %w", feature, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("edge: set-up of %s interrupted: %w", feature, err)
	}
	return fmt.Errorf("edge: set up %s: %w", feature, err)
}

// setPresence rewrites a registered connection's presence entry, when
// presence is on; it never recreates a removed one.
func (e *Edge) setPresence(entry *presence.Entry) {
	if e.presence != nil && entry != nil {
		e.presence.Update(*entry)
	}
}

// ID returns the edge id carried in the Natter-Edge header.
func (e *Edge) ID() string { return e.cfg.EdgeID }

// Path returns the WebSocket upgrade path.
func (e *Edge) Path() string { return e.cfg.WebSocket.Path }

// FallbackPaths returns the paths of the fallback transports, under Path:
// the event stream and its POSTs. A mux routes them to the edge too.
func (e *Edge) FallbackPaths() []string {
	base := strings.TrimSuffix(e.cfg.WebSocket.Path, "/")
	return []string{base + ssePath, base + sendPath}
}

// subPath is what r's path adds to Path: "/sse", "/send", or not one of
// those for the WebSocket handshake.
func (e *Edge) subPath(r *http.Request) string {
	return strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(e.cfg.WebSocket.Path, "/"))
}

// ServeHTTP upgrades a request to a WebSocket connection, or serves a
// fallback transport under the same path: <path>/sse, the event stream,
// and <path>/send, its POSTs (fallback.go).
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serve := e.handshake
	switch e.subPath(r) {
	case ssePath:
		if r.Method == http.MethodOptions {
			e.servePreflight(w, r)
			return
		}
		serve = e.serveSSE
	case sendPath:
		// The connections a draining edge holds still send.
		if !e.handshakes.Do(func(context.Context) { e.servePost(w, r) }) {
			http.Error(w, "edge is shutting down", http.StatusServiceUnavailable)
		}
		return
	}
	// Every handshake counts in handshakes before Shutdown can start
	// waiting for them, and none starts after it began. A fallback
	// stream lives in it: Shutdown closes it with the other connections,
	// then waits for it.
	if e.draining.Load() || !e.handshakes.Do(func(context.Context) { serve(w, r) }) {
		e.refuse(w, e.transportOf(r), refusedDraining, http.StatusServiceUnavailable, "edge is shutting down", time.Second)
	}
}

// handshake is ServeHTTP once the edge admitted it: checks, upgrade,
// registration, and the read loop's start.
func (e *Edge) handshake(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	ip := e.clientIP(r)
	tr := e.transportOf(r)
	if wait, ok := e.allowHandshake(ip, now); !ok {
		e.refuse(w, tr, refusedRate, http.StatusTooManyRequests, "too many handshakes", wait)
		return
	}
	if herr := checkHandshake(r); herr != nil {
		if herr.status == http.StatusUpgradeRequired || herr.status == http.StatusBadRequest {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		e.refuse(w, tr, refusedBadRequest, herr.status, herr.reason, 0)
		return
	}
	if err := e.origins.Check(r); err != nil {
		e.refuse(w, tr, refusedOrigin, auth.Status(err), auth.Reason(err), 0)
		return
	}
	id, err := e.authenticate(r)
	if err != nil {
		e.cfg.Logger.Debug("edge: handshake refused", "remote", r.RemoteAddr, "err", err)
		e.refuse(w, tr, authRefusal(err), auth.Status(err), auth.Reason(err), 0)
		return
	}
	release, reason := e.reserve(ip, id.User)
	if release == nil {
		e.refuse(w, tr, refusedLimit, http.StatusTooManyRequests, reason, 0)
		return
	}
	socket, wc, binary, err := e.upgrade(w, r)
	if err != nil {
		release()
		e.cfg.Logger.Debug("edge: upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	c := newWSConn(e, socket, wc, binary, e.ids.next(), id, release)
	socket.Session().Store(sessionKey, c)
	if err := c.register(); err != nil {
		release()
		e.cfg.Logger.Warn("edge: register connection", "err", err)
		_ = socket.WriteClose(uint16(envelope.CloseInternal), []byte("internal error"))
		wc.linger()
		return
	}
	c.setIdentity(id)
	if e.handshakes.Stopped() {
		// Shutdown began after this handshake was admitted and may have
		// listed the connections before this one was added.
		c.closeWith(envelope.CloseShutdown, "edge shutting down", false)
	}
	if !e.routines.Go(func(context.Context) { c.readLoop() }) {
		// Shutdown gave up waiting for this handshake and stopped the
		// edge's goroutines: nothing will read the socket.
		wc.abort()
		c.unregister()
	}
}

// readLoop runs gws's read loop for c and then lets the socket linger
// until its close frame is read (wireConn.linger). A panic anywhere in it,
// in gws's parsing or in the edge's callbacks, ends only this connection:
// it is logged with its stack, counted, and the client gets 1011.
func (c *conn) readLoop() {
	defer func() {
		if v := recover(); v != nil {
			c.panicked(v)
			<-c.wire.closing // the close frame is written, or the edge gave up on it
			c.unregister()   // gws's read loop ended without OnClose
		}
		c.wire.linger()
	}()
	c.socket.ReadLoop()
}

// panicked deals with a panic in work for c, recovered by its caller: it
// is logged with its stack and counted, and c alone is closed with 1011.
func (c *conn) panicked(v any) {
	c.e.stats.panics.Add(1)
	c.e.cfg.Logger.Error("edge: panic handling a connection's frames; closing it with 1011",
		"conn", c.id, "transport", transportNames[c.transport], "panic", v, "stack", string(debug.Stack()))
	c.closeWith(envelope.CloseServerError, "internal error", true)
}

// Drain makes the edge refuse new handshakes with 503 and Retry-After,
// while the connections it holds stay open. The edge's process calls it
// when readiness starts failing, before the drain delay, so that a client
// routed here in that window goes to another edge at once instead of being
// accepted and then closed with 4000.
func (e *Edge) Drain() { e.draining.Store(true) }

// Shutdown stops the edge, in order: it refuses new handshakes (503),
// closes every socket with 4000 (reconnect) spread over
// Config.WebSocket.ShutdownSpread, waits for the handshakes in progress and
// the connections to go, then stops its goroutines, subscriptions, durable
// rooms, durable messages and presence, and waits for them. It returns nil
// once all that is done. When ctx ends first, it closes the sockets still
// open at once, without lingering, and returns ctx's error; the rest goes
// on without the caller. It leaves the NATS connection to its owner.
//
// It is idempotent: the first call starts the shutdown, and every call,
// concurrent or later, waits for that one shutdown (or for its own ctx)
// and returns nil once it is done.
func (e *Edge) Shutdown(ctx context.Context) error {
	e.shutdown.Do(func() {
		e.handshakes.Stop() // no handshake starts from here on
		go e.teardown()     // every Shutdown call waits for it (stopped)
	})
	select {
	case <-e.stopped:
		return nil
	default:
	}
	select {
	case <-e.stopped:
		return nil
	case <-ctx.Done():
		e.abandon()
		return ctx.Err()
	}
}

// teardown is the shutdown that Shutdown starts once; it closes stopped
// when it is done. Its waits end early once a Shutdown's ctx ended
// (gaveUp), except the last: the edge's goroutines, which end soon once
// their sockets are closed.
func (e *Edge) teardown() {
	defer close(e.stopped)
	all := e.conns.snapshot()
	var step time.Duration
	if len(all) > 1 {
		step = e.cfg.WebSocket.ShutdownSpread / time.Duration(len(all))
	}
	for i, c := range all {
		if i > 0 && step > 0 {
			select {
			case <-time.After(step):
			case <-e.gaveUp.Done():
			}
		}
		c.closeWith(envelope.CloseShutdown, "edge shutting down", false)
	}
	// A handshake admitted before handshakes stopped registers its
	// connection and closes it (it sees the edge stopping), or fails.
	_ = e.handshakes.Wait(e.gaveUp)
	_ = e.conns.waitEmpty(e.gaveUp)
	e.routines.Stop() // the ticker ends, and no goroutine starts from here on
	_ = e.allSub.Unsubscribe()
	_ = e.httpSub.Unsubscribe()
	for _, s := range e.connSubs {
		e.disp.unsubscribe(s)
	}
	_ = e.rpc.sub.Unsubscribe()
	// The read loops end before the services they write to stop: when a
	// Shutdown gave up, connections were aborted rather than gone, and
	// their unregister still removes presence keys and leaves rooms.
	_ = e.routines.Wait(context.Background())
	if e.dur != nil {
		e.dur.stop()
	}
	if e.work != nil {
		e.work.stop(e.gaveUp)
	}
	if e.presence != nil {
		e.presence.Stop()
	}
	e.disp.close()
	e.writers.close()
}

// abandon gives up on the connections still open, when a Shutdown's ctx
// ended before they went: lingering closes end, and their sockets close at
// once.
func (e *Edge) abandon() {
	e.giveUp()
	for _, c := range e.conns.snapshot() {
		c.sock.abort()
	}
}

// tick pings silent connections and closes dead and idle ones. One
// goroutine per edge scans all connections, instead of a timer per socket.
// A connection silent for PingInterval is pinged; one that then stays
// silent for PongTimeout after the ping is closed with 4002. Both happen
// within a quarter of the shorter period of their due time.
func (e *Edge) tick(ctx context.Context) {
	period := min(e.cfg.WebSocket.PingInterval, e.cfg.WebSocket.PongTimeout) / 4
	if e.cfg.WebSocket.IdleTimeout > 0 {
		period = min(period, e.cfg.WebSocket.IdleTimeout/4)
	}
	period = max(period, 25*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := now.UnixNano()
			e.sweepHandshakes(now)
			e.conns.each(func(c *conn) {
				last, sent := c.lastRead.Load(), c.pingSent.Load()
				switch {
				case sent > last && time.Duration(n-sent) > e.cfg.WebSocket.PongTimeout:
					e.cfg.Logger.Debug("edge: dead peer", "conn", c.id)
					if c.wire != nil {
						c.wire.noLinger.Store(true) // a dead peer reads nothing
					}
					c.closeWith(envelope.CloseIdle, "no pong", true)
				case e.cfg.WebSocket.IdleTimeout > 0 && time.Duration(n-c.lastData.Load()) > e.cfg.WebSocket.IdleTimeout:
					c.closeWith(envelope.CloseIdle, "idle timeout", false)
				case sent <= last && time.Duration(n-last) > e.cfg.WebSocket.PingInterval:
					c.ping(n)
				}
			})
		}
	}
}

// Stats is a snapshot of the edge's counters.
type Stats struct {
	Connections        int64 // open now
	Accepted           int64 // since start
	FramesIn           int64 // client frames read
	FramesOut          int64 // frames written to sockets
	Published          int64 // client messages published to NATS
	OutboundDropped    int64 // envelopes from NATS dropped: malformed or breaking their schema
	InboundInvalid     int64 // client messages rejected by their schema
	SlowConsumerCloses int64 // connections closed with 4001
	RPCs               int64 // requests forwarded
	BytesIn            int64 // payload bytes of client frames read
	BytesOut           int64 // bytes written to sockets, frame headers and pings included
	Refused            int64 // handshakes refused: auth, origin, limits
	// RefusedBy splits Refused by reason (the label values of
	// natter_edge_handshakes_refused_total).
	RefusedBy   map[string]int64
	Panics      int64 // connections closed with 1011 after a panic in their read loop
	RateLimited int64 // client messages refused by a rate limit
	// Durable rooms.
	Recoveries      int64 // joins from a position answered recovered
	RecoveryGaps    int64 // joins from a position answered recovered false
	RecoveryRetries int64 // joins from a position failed UNAVAILABLE (history unreadable)
	Backfills       int64 // holes in a room's live chain filled from the stream
	BackfillFails   int64 // attempts to fill one that failed
	Captured        int64 // core publishes to durable rooms stored by this edge
	// Durable types.
	WorkStored     int64 // client messages of durable types stored in the work stream (duplicates included)
	WorkDuplicates int64 // of those, resends the stream recognized by their idempotency key
	WorkRefused    int64 // client messages of durable types the stream did not store
	// Response streams.
	StreamJoins  int64 // $stream.join answered $stream.joined
	StreamsEnded int64 // streams this edge ended for a producer that was gone
	// ProtobufEncodes counts deliveries encoded for natter.protobuf
	// connections: once per message, however many such sockets it reaches.
	ProtobufEncodes int64
	// Transports splits connections by how clients came: "websocket",
	// "websocket_protobuf", "sse".
	Transports map[string]TransportStats
}

// TransportStats counts one transport's connections.
type TransportStats struct {
	Open     int64 // open now
	Accepted int64 // since start
	Refused  int64 // handshakes (or streams) refused
}

type counters struct {
	connections, accepted, framesIn, framesOut, published, dropped, invalidIn, slow, rpcs, refused, rateLimited, bytesIn, bytesOut atomic.Int64
	recovered, gaps, recoveryRetries, backfills, backfillFails, captured                                                           atomic.Int64
	workStored, workDuplicates, workRefused                                                                                        atomic.Int64
	refusedBy                                                                                                                      [numRefusals]atomic.Int64
	panics                                                                                                                         atomic.Int64
	streamJoins, streamsEnded                                                                                                      atomic.Int64
	protobufEncodes                                                                                                                atomic.Int64
	transports                                                                                                                     [numTransports]transportCounters
}

// transportCounters counts one transport's connections.
type transportCounters struct {
	open, accepted, refused atomic.Int64
}

// Stats returns the current counters.
func (e *Edge) Stats() Stats {
	s := &e.stats
	return Stats{
		Connections: s.connections.Load(), Accepted: s.accepted.Load(),
		FramesIn: s.framesIn.Load(), FramesOut: s.framesOut.Load(),
		Published: s.published.Load(), OutboundDropped: s.dropped.Load(), InboundInvalid: s.invalidIn.Load(),
		SlowConsumerCloses: s.slow.Load(), RPCs: s.rpcs.Load(),
		Refused: s.refused.Load(), RateLimited: s.rateLimited.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(),
		Recoveries: s.recovered.Load(), RecoveryGaps: s.gaps.Load(), RecoveryRetries: s.recoveryRetries.Load(),
		Backfills: s.backfills.Load(), BackfillFails: s.backfillFails.Load(), Captured: s.captured.Load(),
		WorkStored: s.workStored.Load(), WorkDuplicates: s.workDuplicates.Load(), WorkRefused: s.workRefused.Load(),
		ProtobufEncodes: s.protobufEncodes.Load(),
		StreamJoins:     s.streamJoins.Load(), StreamsEnded: s.streamsEnded.Load(),
		Transports: s.byTransport(),
		RefusedBy:  s.refusals(), Panics: s.panics.Load(),
	}
}

func (s *counters) byTransport() map[string]TransportStats {
	m := make(map[string]TransportStats, numTransports)
	for i := range s.transports {
		t := &s.transports[i]
		m[transportNames[i]] = TransportStats{Open: t.open.Load(), Accepted: t.accepted.Load(), Refused: t.refused.Load()}
	}
	return m
}

func (s *counters) refusals() map[string]int64 {
	m := make(map[string]int64, numRefusals)
	for i := range s.refusedBy {
		m[refusalNames[i]] = s.refusedBy[i].Load()
	}
	return m
}

// registry is the edge's set of connections, sharded to keep the handshake
// path off one lock.
type registry struct {
	seed   maphash.Seed
	shards [64]struct {
		mu sync.Mutex
		m  map[string]*conn
	}
	n       atomic.Int64  // connections held, changed under their shard's lock
	emptied chan struct{} // a token each time n falls to zero (waitEmpty)
}

func (r *registry) init() {
	r.seed = maphash.MakeSeed()
	r.emptied = make(chan struct{}, 1)
	for i := range r.shards {
		r.shards[i].m = make(map[string]*conn)
	}
}

func (r *registry) shard(id string) int {
	return int(maphash.String(r.seed, id) % uint64(len(r.shards)))
}

func (r *registry) add(c *conn) {
	s := &r.shards[r.shard(c.id)]
	s.mu.Lock()
	if _, ok := s.m[c.id]; !ok {
		r.n.Add(1)
	}
	s.m[c.id] = c
	s.mu.Unlock()
}

// get returns the connection with id, or nil.
func (r *registry) get(id string) *conn {
	s := &r.shards[r.shard(id)]
	s.mu.Lock()
	c := s.m[id]
	s.mu.Unlock()
	return c
}

func (r *registry) remove(c *conn) {
	s := &r.shards[r.shard(c.id)]
	s.mu.Lock()
	_, ok := s.m[c.id]
	delete(s.m, c.id)
	last := ok && r.n.Add(-1) == 0
	s.mu.Unlock()
	if last {
		select {
		case r.emptied <- struct{}{}:
		default: // a token waits already
		}
	}
}

// waitEmpty waits until the registry holds no connection, or ctx ends.
func (r *registry) waitEmpty(ctx context.Context) error {
	for r.n.Load() > 0 {
		select {
		case <-r.emptied:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (r *registry) each(f func(*conn)) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for _, c := range s.m {
			f(c)
		}
		s.mu.Unlock()
	}
}

func (r *registry) snapshot() []*conn {
	var out []*conn
	r.each(func(c *conn) { out = append(out, c) })
	return out
}

type gwsLogger struct{ l *slog.Logger }

func (g gwsLogger) Error(v ...any) { g.l.Error("gws", "err", fmt.Sprint(v...)) }

// slot is a one-value gws.SessionStorage: the edge only stores its conn
// there, and gws's default map costs memory on every connection.
type slot struct {
	mu sync.Mutex
	v  any
}

func (s *slot) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v == nil {
		return 0
	}
	return 1
}

func (s *slot) Load(string) (any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v, s.v != nil
}

func (s *slot) Delete(string) {
	s.mu.Lock()
	s.v = nil
	s.mu.Unlock()
}

func (s *slot) Store(_ string, v any) {
	s.mu.Lock()
	s.v = v
	s.mu.Unlock()
}

func (s *slot) Range(f func(string, any) bool) {
	if v, ok := s.Load(""); ok {
		f(sessionKey, v)
	}
}
