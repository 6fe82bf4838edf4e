package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/wire"
)

// Errors of this package. Failures of RPCs are *rpc.Error values; some of
// them also match these sentinels (a Call on a closed client matches both
// ErrClosed and rpc UNAVAILABLE).
var (
	// ErrBufferFull: Options.BufferSize frames already wait to be written.
	ErrBufferFull = errors.New("client: send buffer full")
	// ErrClosed: the client was closed, or stopped on a terminal close code.
	ErrClosed = errors.New("client: closed")
	// ErrTooLarge: the encoded frame exceeds Options.MaxMessageSize; the
	// edge would close the connection with 1009.
	ErrTooLarge = errors.New("client: frame larger than MaxMessageSize")
	// ErrInvalidOptions wraps every error of New's validation.
	ErrInvalidOptions = errors.New("client: invalid options")
)

// HandshakeError is an edge's HTTP refusal of the WebSocket upgrade (401
// missing or invalid token, 403 origin or forbidden, 429 too many, 503
// authentication unavailable, ...).
type HandshakeError struct {
	StatusCode int
	Body       string // the edge's short reason
}

// Error returns "client: handshake refused: <status> <body>".
func (e *HandshakeError) Error() string {
	return "client: handshake refused: " + strconv.Itoa(e.StatusCode) + " " + e.Body
}

// permanent reports whether retrying the same handshake right away cannot
// help: a 4xx other than 408 and 429.
func (e *HandshakeError) permanent() bool {
	return e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != http.StatusRequestTimeout && e.StatusCode != http.StatusTooManyRequests
}

// State is where a client is in its life.
type State uint8

// The states, in the order a client goes through them. Reconnecting and
// Open alternate until the client is closed.
const (
	// StateConnecting: the first connection is being made.
	StateConnecting State = iota
	// StateOpen: connected (the edge's $connected told the connection's
	// id, see ConnID), rooms re-joined and state restored; sends are
	// written as they come.
	StateOpen
	// StateReconnecting: the connection dropped with a code that asks for a
	// reconnect (or with 4100, token expired, when Options.Token can give
	// a fresh token); the client waits its backoff and dials again. Sends
	// are buffered.
	StateReconnecting
	// StateClosed: Close was called, the edge closed with a terminal code,
	// or reconnecting is disabled. Final.
	StateClosed
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateOpen:
		return "open"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// CloseInfo tells why a connection ended. Code is the edge's close code, or
// 1000 for Close, or 1006 (abnormal) when no close frame arrived; Err is the
// error behind an abnormal end or a failed connection attempt.
type CloseInfo struct {
	Code   envelope.CloseCode
	Reason string
	Err    error
}

// CloseAbnormal is the code given to a connection that ended without a
// close frame, as browsers do.
const CloseAbnormal envelope.CloseCode = 1006

// Defaults of Options.
const (
	DefaultBufferSize       = 1000
	DefaultRPCTimeout       = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultKeepAlive        = 25 * time.Second
	// DefaultSendRate is the edge's default rate limit per connection
	// (--rate-limit 100). DefaultSendBurst is half the edge's burst (200):
	// the edge's bucket starts when the first message is read, so frames
	// of a burst that arrive late and together would exceed an equal
	// burst; the margin absorbs up to a second of such delay.
	DefaultSendRate  = 100
	DefaultSendBurst = 100
)

// Fixed bounds.
const (
	// MaxInbound bounds the frames waiting for callbacks.
	MaxInbound = 1024
	// MaxServerRequests bounds the server-to-client requests handled at
	// once (the edge asks at most 64 at a time); more are answered with
	// RESOURCE_EXHAUSTED.
	MaxServerRequests = 64
	// maxReadSize bounds one inbound frame; the edge's own outbound limit
	// is 1 MiB by default.
	maxReadSize = 16 << 20
	// ctrlQueue bounds the aborts and answers waiting for the writer of
	// one connection.
	ctrlQueue = 128
	// stableAfter: a connection open this long resets the backoff, so an
	// edge that accepts and then drops every connection is still backed
	// off (as the TypeScript client does).
	stableAfter = 5 * time.Second
	// defaultRefreshWindow is how long an automatic refresh is retried
	// when $auth.expiring carries no expiresAt (the edge's default
	// --refresh-window).
	defaultRefreshWindow = 30 * time.Second
)

// Options configure a Client. Zero fields take the defaults given.
type Options struct {
	// Token returns the bearer token, sent as "Authorization: Bearer
	// <token>". It is called before every connection attempt and by
	// RefreshToken (also on $auth.expiring), so it can hand out fresh
	// tokens; it must honour ctx and must not call Close. With Token set,
	// a close with 4100 (token expired) reconnects with a fresh token
	// instead of closing the client (see RefreshToken). Default nil: no
	// token. See StaticToken.
	Token func(ctx context.Context) (string, error)
	// User is the insecure dev-mode identity, sent as ?user=<id>. Edges not
	// in dev mode ignore it. Default "".
	User string
	// Header holds extra handshake headers (Origin, cookies, ...).
	Header http.Header
	// Reconnect paces reconnects. Default nil: {Initial 250ms, Max 10s,
	// Factor 2} with full jitter; set Disabled to turn reconnecting off.
	Reconnect *Backoff
	// BufferSize bounds the frames waiting to be written, while connected
	// and while not; Send beyond it returns ErrBufferFull. Default 1000.
	BufferSize int
	// RPCTimeout is the deadline of a Call (and of Join, Leave, presence
	// and refresh requests) whose ctx has none or a later one, and of
	// Handle handlers when the edge gives none. Default 10s.
	RPCTimeout time.Duration
	// HandshakeTimeout bounds one connection attempt: token, dial, TLS and
	// upgrade; and then the wait for the edge's first frame, $connected,
	// after which an edge that sent none is used without a ConnID.
	// Default 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds writing one frame; a connection that cannot take
	// a frame for this long is dropped and reconnected. Default 10s.
	WriteTimeout time.Duration
	// KeepAlive: after this long without any frame from the edge the
	// client pings it, and after twice this long it drops the connection
	// as dead and reconnects. Default 25s; negative: off.
	KeepAlive time.Duration
	// MaxMessageSize bounds one outbound frame, in bytes; larger sends fail
	// with ErrTooLarge instead of making the edge close with 1009. On the
	// protobuf wire it bounds the binary frame, and its JSON form to 4
	// times it, as the edge does. Default envelope.DefaultMaxSize (the
	// edge's default).
	MaxMessageSize int
	// SendRate paces the messages the client writes (sends, requests,
	// re-joins, answers, aborts, heartbeats), in messages per second, so
	// that the flush of a full send buffer after a reconnect, or any burst
	// of sends, stays within the edge's per-connection rate limit instead
	// of being dropped with RESOURCE_EXHAUSTED. Each connection starts
	// with a full bucket of SendBurst. Default 0: the edge's default rate,
	// 100/s, with bursts of 100 (DefaultSendBurst); negative: no pacing.
	// Set it to the edge's --rate-limit when that differs.
	SendRate float64
	// SendBurst is the burst above SendRate; keep it below the edge's
	// burst. Default 0: DefaultSendBurst with the default SendRate, else
	// SendRate (at least 1).
	SendBurst int
	// Heartbeat, when positive, sends __heartbeat while the connection is
	// open, so that at most Heartbeat passes between two messages the
	// client writes (it is sent only when nothing else was written for
	// Heartbeat/2). Edges running with --idle-timeout close connections
	// that send no message for that long (4002), and WebSocket pings do
	// not count there: set Heartbeat below the edge's idle timeout. The
	// edge's __heartbeat_ack frames reach On handlers. Default 0 (or
	// negative): off.
	Heartbeat time.Duration
	// OnState is called on every state change, from the callback
	// goroutine: Connecting and Open with a zero CloseInfo, Reconnecting
	// with why the connection dropped, Closed with why the client stopped.
	OnState func(State, CloseInfo)
	// OnError is called, from the callback goroutine, with the failures
	// of what the client does by itself: re-joining rooms and restoring
	// the presence state after a reconnect, and refreshing the token on
	// $auth.expiring. The error is a *BackgroundError. Default nil: they
	// are only logged.
	OnError func(error)
	// OnRecovery is called, from the callback goroutine, after every join
	// of a durable room from a position: the client's own re-joins after
	// a reconnect (from the room's last Position) and Joins WithSince. It
	// comes after the callbacks of the replayed messages and before those
	// of the messages that follow; Recovery.Recovered false is a gap, and
	// the application should refetch the room's state. Default nil.
	OnRecovery func(Recovery)
	// Logger receives reconnects and failed re-joins. Default
	// slog.Default().
	Logger *slog.Logger
	// Wire is the subprotocol the client offers and speaks: WireJSON,
	// text frames (default ""), or WireProtobuf, binary frames, which
	// needs an edge that speaks natter.protobuf (an older edge refuses the
	// handshake with 400). The application API is the same on both.
	Wire Wire
	// Schemas are the payload schemas of the protobuf wire: the same
	// .proto files the edge loads (LoadSchemas). Default nil: the schemas
	// shipped with Natter, compiled by New. Unused on the JSON wire.
	Schemas wire.Types
	// TracerProvider makes a span per SendContext, SendDurable and Call,
	// whose context the frame carries in meta.traceparent
	// (docs/design/tracing.md). Default: OpenTelemetry's global provider,
	// which makes none until the application sets one.
	TracerProvider trace.TracerProvider
}

// Operations of a BackgroundError.
const (
	// OpRejoin: re-joining a remembered room after a reconnect.
	OpRejoin = "rejoin"
	// OpRestoreState: re-sending the presence state after a reconnect.
	OpRestoreState = "restore-state"
	// OpRefresh: the automatic token refresh on $auth.expiring.
	OpRefresh = "refresh"
)

// BackgroundError is a failure of something the client did by itself,
// handed to Options.OnError.
//
// A re-join refused with PERMISSION_DENIED, INVALID_ARGUMENT or NOT_FOUND
// forgets the room (Final); any other failure (RESOURCE_EXHAUSTED,
// UNAVAILABLE, DEADLINE_EXCEEDED, ...) keeps it and retries with backoff,
// no sooner than the error's RetryAfter, until it succeeds, the room is
// left, or the connection ends (the next connection re-joins it again). A
// failed refresh is retried with backoff until the token expires (Final on
// the last attempt); the edge then closes with 4100 and the client
// reconnects with a fresh token.
type BackgroundError struct {
	Op    string // OpRejoin, OpRestoreState or OpRefresh
	Room  string // the room, for OpRejoin
	Final bool   // the client gave up: the room is forgotten, the refresh stopped
	Err   error  // usually an *rpc.Error
}

// Error describes the failure.
func (e *BackgroundError) Error() string {
	s := "client: " + e.Op
	if e.Room != "" {
		s += " " + e.Room
	}
	if e.Final {
		s += " (gave up)"
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns Err.
func (e *BackgroundError) Unwrap() error { return e.Err }

// StaticToken returns a token function that always returns tok.
func StaticToken(tok string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return tok, nil }
}

// Client is a connection to a Natter edge that reconnects by itself. Create
// it with Dial or New; it is safe for concurrent use.
type Client struct {
	url     string
	opts    Options
	tracer  trace.Tracer
	codec   *wire.Codec // nil on the JSON wire
	backoff Backoff
	log     *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
	opened chan struct{} // closed at the first Open
	// attempts carries the latest failed connection attempt before the
	// first Open, for Dial.
	attempts chan error

	queue      chan *outItem // frames waiting to be written, bounded
	events     eventQueue
	dispatched chan struct{} // closed when the callback goroutine returns
	sem        chan struct{} // server-to-client requests running
	// wg counts the client's background goroutines: automatic refreshes
	// and re-join retries.
	wg sync.WaitGroup

	// mu guards the fields below. Lock order: mu, then hmu is never taken
	// while mu is held and the other way round.
	mu      sync.Mutex
	state   State
	pending map[string]*call
	rooms   map[string]bool // remembered joins: room -> presence diffs
	// roomOps holds, per room, the sequence number of the latest Join or
	// Leave not finished yet; a Join only records its room when it is
	// still the latest call for it, and server-driven $joined/$left are
	// ignored while a call is in flight (its answer comes after them).
	roomOps map[string]uint64
	roomSeq uint64
	// positions holds the last position seen per durable room, for the
	// rooms remembered or being joined (see Position).
	positions map[string]Position
	pstate    json.RawMessage    // remembered $presence.state, nil: none
	streams   map[string]*Stream // response streams read, by id
	connID    string             // the current connection's id, from its $connected; "" if none
	info      CloseInfo          // why the client closed
	seq       uint64

	hmu       sync.RWMutex
	handlers  map[string][]*handler
	presences map[string][]*presenceHandler
	servers   map[string]HandlerFunc

	held       *outItem // a frame taken from queue but not written; run goroutine only
	refreshing atomic.Bool
	closeOnce  sync.Once
}

// outItem is one frame waiting to be written; call is set for requests.
// A request's frame is encoded when it is written (env, deadline), so that
// its meta.timeoutMs is what is left of the caller's deadline then.
type outItem struct {
	frame    []byte
	call     *call
	env      *envelope.Envelope
	deadline time.Time
}

// Dial connects to an edge's WebSocket URL (ws:// or wss://) and returns
// once the first connection is open, or with an error when ctx ends first,
// when the edge refuses the handshake for good (an HTTP 4xx other than 408
// and 429, as a *HandshakeError), or when reconnecting is disabled and the
// first attempt fails. Later drops are reconnected automatically; a refused
// handshake on a reconnect is retried with backoff (Options.Token is asked
// again each time), as browsers do, except a 401 right after a close with
// 4100 (token expired), which closes the client.
func Dial(ctx context.Context, rawURL string, opts Options) (*Client, error) {
	c, err := New(rawURL, opts)
	if err != nil {
		return nil, err
	}
	var last error
	for {
		select {
		case <-c.opened:
			return c, nil
		case err := <-c.attempts:
			last = err
			var he *HandshakeError
			if errors.As(err, &he) && he.permanent() {
				_ = c.Close()
				return nil, err
			}
		case <-c.done:
			info := c.closeInfo()
			if info.Err != nil {
				return nil, fmt.Errorf("%w: %w", ErrClosed, info.Err)
			}
			return nil, fmt.Errorf("%w: close code %d %s", ErrClosed, info.Code, info.Reason)
		case <-ctx.Done():
			_ = c.Close()
			if last != nil {
				return nil, fmt.Errorf("client: dial: %w (last attempt: %v)", ctx.Err(), last)
			}
			return nil, fmt.Errorf("client: dial: %w", ctx.Err())
		}
	}
}

// New returns a client that connects to rawURL in the background and keeps
// reconnecting; Send, Call and Join made before the connection is open are
// buffered. It fails only on invalid options.
func New(rawURL string, opts Options) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: url: %v", ErrInvalidOptions, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("%w: url scheme must be ws or wss, not %q", ErrInvalidOptions, u.Scheme)
	}
	if opts.User != "" {
		q := u.Query()
		q.Set("user", opts.User)
		u.RawQuery = q.Encode()
	}
	switch {
	case opts.BufferSize < 0, opts.RPCTimeout < 0, opts.HandshakeTimeout < 0, opts.WriteTimeout < 0, opts.MaxMessageSize < 0, opts.SendBurst < 0:
		return nil, fmt.Errorf("%w: sizes and durations must not be negative", ErrInvalidOptions)
	case math.IsNaN(opts.SendRate) || math.IsInf(opts.SendRate, 0):
		return nil, fmt.Errorf("%w: SendRate must be a number", ErrInvalidOptions)
	}
	switch {
	case opts.SendRate == 0:
		opts.SendRate = DefaultSendRate
		if opts.SendBurst == 0 {
			opts.SendBurst = DefaultSendBurst
		}
	case opts.SendRate > 0 && opts.SendBurst == 0:
		opts.SendBurst = max(int(opts.SendRate), 1)
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.RPCTimeout == 0 {
		opts.RPCTimeout = DefaultRPCTimeout
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = envelope.DefaultMaxSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.TracerProvider == nil {
		opts.TracerProvider = otel.GetTracerProvider()
	}
	var codec *wire.Codec
	switch opts.Wire {
	case "", WireJSON:
		opts.Wire = WireJSON
	case WireProtobuf:
		if opts.Schemas == nil {
			if opts.Schemas, err = LoadSchemas(); err != nil {
				return nil, err
			}
		}
		codec = &wire.Codec{Types: opts.Schemas}
	default:
		return nil, fmt.Errorf("%w: Wire must be %q or %q, not %q", ErrInvalidOptions, WireJSON, WireProtobuf, opts.Wire)
	}
	var b Backoff
	if opts.Reconnect != nil {
		b = *opts.Reconnect
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		url:        u.String(),
		opts:       opts,
		tracer:     tracing.Tracer(opts.TracerProvider),
		codec:      codec,
		backoff:    b.withDefaults(),
		log:        opts.Logger,
		ctx:        ctx,
		cancel:     cancel,
		done:       make(chan struct{}),
		opened:     make(chan struct{}),
		attempts:   make(chan error, 1),
		queue:      make(chan *outItem, opts.BufferSize),
		dispatched: make(chan struct{}),
		sem:        make(chan struct{}, MaxServerRequests),
		pending:    make(map[string]*call),
		rooms:      make(map[string]bool),
		roomOps:    make(map[string]uint64),
		positions:  make(map[string]Position),
		handlers:   make(map[string][]*handler),
		presences:  make(map[string][]*presenceHandler),
		servers:    make(map[string]HandlerFunc),
	}
	c.events.init()
	c.events.pushState(StateConnecting, CloseInfo{})
	go c.dispatch()
	go c.run()
	return c, nil
}

// State returns the client's current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// ConnID returns the id the edge gave the current connection, in its first
// frame ($connected), whole: <edge>.<n>, the edge's id and the
// connection's on it (envelope.ValidateConnID). Services reach this client
// at natter.out.conn.<id> (rpc.Ask, worker.Publisher.ToConn) and see it in
// the Natter-Conn header of what it sends. It is known once the client is
// Open (when Dial returns, say), "" while it is not connected, and new
// after every reconnect; On(envelope.TypeConnected, f) sees each new one.
func (c *Client) ConnID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connID
}

func (c *Client) closeInfo() CloseInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Close closes the connection with 1000 and stops reconnecting. Calls in
// flight and buffered frames fail (ErrClosed, rpc UNAVAILABLE). It is
// idempotent and returns nil.
//
// Close waits for the client's goroutines: the connection's reader and
// writer, re-join retries, the automatic token refresh (Options.Token must
// honour its ctx and must not call Close), and the callback goroutine,
// which delivers the remaining state changes, Closed last. It does not
// wait for user code that is running when it is called (Close may be
// called from there): a callback running then finishes on its own and the
// callback goroutine ends after it; Handle handlers running then have
// their ctx cancelled, finish on their own, and their answers are dropped.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.events.stop() // no frame callback starts after this
		c.cancel()
	})
	// A callback running now may be the caller: the callback goroutine
	// cannot be waited for then.
	waitCallbacks := !c.events.inCallback()
	<-c.done
	c.wg.Wait()
	if waitCallbacks {
		<-c.dispatched
	}
	return nil
}

// Done is closed once the client is closed, by Close or a terminal close
// code.
func (c *Client) Done() <-chan struct{} { return c.done }

// Send writes a fire-and-forget message of type typ with payload encoded as
// JSON (a json.RawMessage as is; nil leaves it out), and meta if given.
// While the client is not open the frame is buffered and written, in
// order, after the next connection's re-joins. It fails with ErrBufferFull
// when Options.BufferSize frames wait, ErrTooLarge, ErrClosed, or an
// envelope error for an invalid type or payload.
func (c *Client) Send(typ string, payload any, meta ...envelope.Meta) error {
	return c.SendContext(context.Background(), typ, payload, meta...)
}

// SendContext is Send in the trace of ctx: its span (natter.send <type>)
// is a child of ctx's, and the frame carries its context to the edge and
// the workers.
func (c *Client) SendContext(ctx context.Context, typ string, payload any, meta ...envelope.Meta) (err error) {
	env, err := envelope.New(typ, payload)
	if err != nil {
		return err
	}
	if err := envelope.ValidateType(typ); err != nil {
		return err
	}
	if len(meta) > 0 {
		env.Meta = meta[0]
	}
	if !envelope.IsSystemType(typ) {
		var span trace.Span
		ctx, span = c.startSpan(ctx, "natter.send", typ, trace.SpanKindProducer)
		defer func() { endSpan(span, err) }()
		withTrace(ctx, &env.Meta)
	}
	frame, err := envelope.Encode(env)
	if err != nil {
		return err
	}
	if err := c.checkSize(frame); err != nil {
		return err
	}
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	select {
	case c.queue <- &outItem{frame: frame}:
		return nil
	default:
		return ErrBufferFull
	}
}

// checkSize fails a frame the edge would refuse for its size: larger than
// MaxMessageSize (1009), or on the protobuf wire a binary frame larger
// than it, or one whose JSON form (what the edge converts it to) is larger
// than 4 times it (docs/protocol.md, "Binary wire"). A binary frame is at
// most about four times its JSON form (a repeated double: "0," against 8
// bytes), so only frames over a quarter of the limit are converted to be
// measured.
func (c *Client) checkSize(frame []byte) error {
	if c.codec == nil {
		if len(frame) > c.opts.MaxMessageSize {
			return ErrTooLarge
		}
		return nil
	}
	if len(frame) > 4*c.opts.MaxMessageSize {
		return ErrTooLarge
	}
	if len(frame) <= c.opts.MaxMessageSize/4 {
		return nil
	}
	n, err := c.protoSize(frame)
	if err != nil {
		return err
	}
	if n > c.opts.MaxMessageSize {
		return ErrTooLarge
	}
	return nil
}

// run connects, serves each connection until it ends, and reconnects with
// backoff until Close or a terminal close code. It owns the writes.
func (c *Client) run() {
	defer close(c.done)
	attempt := 0
	everOpen := false
	// afterExpiry: the last connection was closed with 4100 and the
	// client reconnects once with a fresh token; a 401 then is final.
	afterExpiry := false
	var last CloseInfo
	for {
		s, err := c.connect()
		if err != nil {
			if c.ctx.Err() != nil {
				break
			}
			var he *HandshakeError
			if afterExpiry && errors.As(err, &he) && he.StatusCode == http.StatusUnauthorized {
				c.log.Warn("client: the edge refused the fresh token after 4100; closing", "err", err)
				last = CloseInfo{Code: envelope.CloseUnauthorized, Reason: last.Reason, Err: err}
				break
			}
			if !afterExpiry {
				last = CloseInfo{Code: CloseAbnormal, Err: err}
			}
			if !everOpen {
				select {
				case <-c.attempts:
				default:
				}
				c.attempts <- err
			}
			c.log.Debug("client: connection attempt failed", "attempt", attempt, "err", err)
			if c.backoff.Disabled || !c.sleep(c.backoff.Delay(attempt)) {
				break
			}
			attempt++
			continue
		}
		info, openedAt := c.serve(s)
		c.failSession(s)
		last = info
		opened := !openedAt.IsZero()
		if opened {
			everOpen = true
			// Only a connection that lasted starts the backoff over: an
			// edge that accepts and then drops every connection (4004,
			// 4001, ...) still gets backed off.
			if time.Since(openedAt) >= stableAfter {
				attempt = 0
			}
		}
		if c.ctx.Err() != nil || c.backoff.Disabled {
			break
		}
		if !info.Code.Reconnect() {
			// 4100: the token expired. With a token function the client
			// reconnects with a fresh token, once per expiry: not again
			// when the connection made for it never opened.
			if info.Code != envelope.CloseUnauthorized || c.opts.Token == nil || (afterExpiry && !opened) {
				break
			}
			afterExpiry = true
		} else {
			afterExpiry = false
		}
		c.log.Info("client: connection lost, reconnecting", "code", int(info.Code), "reason", info.Reason, "err", info.Err)
		c.setState(StateReconnecting, info)
		if !c.sleep(c.backoff.Delay(attempt)) {
			break
		}
		attempt++
	}
	if c.ctx.Err() != nil {
		last = CloseInfo{Code: envelope.CloseNormal}
	}
	c.cancel()
	c.mu.Lock()
	c.state = StateClosed
	c.info = last
	pending := c.pending
	c.pending = map[string]*call{}
	c.mu.Unlock()
	for _, cl := range pending {
		cl.fail(closedError())
	}
	c.events.pushState(StateClosed, last)
	c.events.close()
}

// sleep waits d, or less when the client closes; it reports whether the
// client is still running.
func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// sleepCtx waits d, or less when ctx ends; it reports whether ctx is
// still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// report logs nothing itself; it hands a background failure to OnError.
func (c *Client) report(err *BackgroundError) {
	if c.opts.OnError != nil {
		c.events.pushError(err)
	}
}

// reportRecovery logs a gap and hands the outcome of a join from a
// position to OnRecovery. It runs on the read goroutine, so that the
// report is queued between the replayed messages and the later ones.
func (c *Client) reportRecovery(rec *Recovery) {
	if !rec.Recovered {
		c.log.Info("client: durable room joined with a gap", "room", rec.Room, "since", rec.Since.Offset, "epoch", rec.Since.Epoch, "rejoin", rec.Rejoin)
	}
	if c.opts.OnRecovery != nil {
		c.events.pushRecovery(rec)
	}
}

func (c *Client) setState(s State, info CloseInfo) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
	c.events.pushState(s, info)
}

func closedError() error {
	return fmt.Errorf("%w: %w", ErrClosed, &rpc.Error{Code: envelope.CodeUnavailable, Message: "client closed"})
}
