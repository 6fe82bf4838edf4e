package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/presencekv"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("edge: invalid config")

// Config configures an Edge. It is grouped by concern; a nil group
// (Presence, DurableRooms, DurableMessages) turns its feature off.
//
// DefaultConfig is the one source of defaults: the production-safe values
// cmd/edge's flags start from and the tests build on. New takes a zero
// field as "the default" (DefaultConfig's value) unless its comment says
// what zero means instead (for limits, mostly "off"), so a Config written
// from scratch gets the same sizes and timeouts as DefaultConfig, but not
// its limits nor presence: start from DefaultConfig.
type Config struct {
	// NATS is the edge's side toward NATS. NATS.Conn is required.
	NATS NATSConfig
	// EdgeID identifies this edge in NATS headers, subjects and connection
	// ids: 1-128 characters of [A-Za-z0-9_-]. Default: a random NUID.
	EdgeID string
	// WebSocket configures the sockets: upgrade path, frame and buffer
	// sizes, write queue, liveness and compression.
	WebSocket WebSocketConfig
	// Auth decides who may connect and join what.
	Auth AuthConfig
	// Limits bound what one connection, user or client IP may do.
	Limits LimitsConfig
	// Presence keeps every connection in the <prefix>_presence KV bucket
	// and emits lifecycle events. Needs JetStream. nil: off (DefaultConfig
	// turns it on).
	Presence *PresenceConfig
	// DurableRooms keeps the history of some rooms in JetStream. Needs
	// JetStream. nil: off (the default).
	DurableRooms *DurableRoomsConfig
	// DurableMessages stores client messages of some types in a JetStream
	// work queue until a worker acknowledges them. Needs JetStream. nil:
	// off (the default).
	DurableMessages *DurableMessagesConfig
	// Streams lets clients read response streams from the
	// <prefix>_streams stream (docs/design/streams.md). Needs JetStream.
	// nil: off (DefaultConfig turns it on).
	Streams *StreamsConfig
	// Schemas validates payloads by type and direction. Default nil: no
	// validation.
	Schemas *schema.Registry
	// Tracing makes spans of client messages and deliveries
	// (docs/design/tracing.md). Trace context that clients and services
	// send is propagated either way.
	Tracing TracingConfig
	// Logger receives connection-level events. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the edge's Prometheus metrics. Default nil: none.
	Registerer prometheus.Registerer
}

// TracingConfig turns on the edge's spans.
type TracingConfig struct {
	// Provider makes the spans. nil (the default): none, and no cost on
	// the message path beyond propagating a client's valid context.
	Provider trace.TracerProvider
	// NATSTraceDest, when set, asks nats-server for its hop-by-hop trace
	// (ADR-41, the Nats-Trace-Dest header) of every message whose span is
	// sampled, published to this subject.
	NATSTraceDest string
}

// NATSConfig is the edge's side toward NATS: the connection and subject
// namespace, what it accepts from NATS and how long it waits for replies.
type NATSConfig struct {
	// Conn is the connection the edge publishes and subscribes on.
	// Required. The edge does not close or drain it; its owner does, and
	// its owner's error handler is where NATS reports permission
	// violations (see New).
	Conn *nats.Conn
	// Namespace is the subject namespace. Default envelope.DefaultNamespace
	// (prefix "natter").
	Namespace envelope.Namespace
	// MaxOutboundSize bounds one envelope published toward clients (and a
	// durable room's message), in bytes; larger ones are dropped. Default
	// 1 MiB; at least 256 B.
	MaxOutboundSize int
	// RPCTimeout is the deadline of a client request without
	// meta.timeoutMs. Default rpc.DefaultTimeout (10s); positive.
	RPCTimeout time.Duration
	// RPCMaxTimeout clamps meta.timeoutMs. Default rpc.MaxTimeout (60s);
	// positive.
	RPCMaxTimeout time.Duration
}

// WebSocketConfig configures the sockets.
type WebSocketConfig struct {
	// Path is the WebSocket upgrade path; it starts with "/". Default "/ws".
	Path string
	// MaxMessageSize bounds one inbound frame, in bytes; larger frames close
	// the connection with 1009. Default envelope.DefaultMaxSize (64 KiB);
	// range 256 B..16 MiB.
	MaxMessageSize int
	// ReadBufferSize is each connection's read buffer, in bytes. Larger
	// frames are still read whole; the buffer only sets how much one read
	// takes. It is held for the connection's life, so it is a large part
	// of an idle connection's memory. Default 1024; at least 512.
	ReadBufferSize int
	// WriteQueueBytes bounds the bytes queued for one connection; a client
	// that lets more pile up is closed with 4001. Default 1 MiB; at least
	// 4 KiB.
	WriteQueueBytes int
	// WriteTimeout bounds one write to a socket. Default 10s; not
	// negative.
	WriteTimeout time.Duration
	// PingInterval is how long a connection may be silent before the edge
	// pings it. Default 25s; not negative.
	PingInterval time.Duration
	// PongTimeout is how long after a ping the edge waits for any frame
	// before it closes the peer as dead (4002). Default 20s; not negative.
	PongTimeout time.Duration
	// IdleTimeout closes connections that sent no message (pongs do not
	// count) for this long, with 4002. Default 0: off.
	IdleTimeout time.Duration
	// Compression offers permessage-deflate (without context takeover).
	// Default false.
	Compression bool
	// ShutdownSpread spreads the close frames of Shutdown over this window,
	// so clients do not reconnect all at once. Default 1s; not negative.
	ShutdownSpread time.Duration
}

// AuthConfig decides who may connect and join what. New refuses a config
// with neither Authenticator nor Anonymous nor DevMode.
type AuthConfig struct {
	// Authenticator authenticates handshakes and token refreshes: a JWT
	// verifier or an auth callout. Default nil: only Anonymous (or
	// DevMode) connections.
	Authenticator auth.Authenticator
	// Anonymous admits connections without credentials, with no user id.
	// With Authenticator set, it applies to handshakes that carry no token
	// and that Authenticator refuses as unauthenticated. DevMode implies
	// it. Default false.
	Anonymous bool
	// DevMode allows the insecure ?<UserParam>=<id> query parameter, and
	// implies Anonymous, every room public (unless PublicRooms) and any
	// origin (unless AllowedOrigins). For development only; never expose
	// a dev-mode edge. Default false.
	DevMode bool
	// UserParam is the dev-mode query parameter carrying a user id.
	// Default "user".
	UserParam string
	// TokenSources names the cookie and query parameter tokens come in.
	// Default: cookie "natter_token", query parameter "token".
	TokenSources auth.TokenSources
	// Timeout bounds authenticating one handshake, refresh or join
	// callout. Default 5s; positive.
	Timeout time.Duration
	// RefreshWindow is how long before its token expires a connection gets
	// $auth.expiring. Default 30s; positive.
	RefreshWindow time.Duration
	// PublicRooms are room patterns (see auth.Grants) any connection may
	// join; other rooms need a grant of the connection's token, or
	// JoinAuthorizer's consent. Default: none; "*" in DevMode.
	PublicRooms []string
	// JoinAuthorizer, when set, decides client $joins that neither a grant
	// nor PublicRooms allows (natter.auth.join). Server-side joins never
	// ask. Default nil: such joins are refused.
	JoinAuthorizer JoinAuthorizer
	// AllowedOrigins are browser origins allowed to connect in addition to
	// the edge's own, which always is (see auth.Origins). Default: none,
	// only the edge's own origin; any in DevMode.
	AllowedOrigins []string
}

// LimitsConfig bounds what one connection, user or client IP may do. Where
// zero means "off", DefaultConfig still sets a production limit.
type LimitsConfig struct {
	// MessageRate bounds the messages a connection may send, per second,
	// on average; more get ERROR RESOURCE_EXHAUSTED with retryAfterMs and
	// are dropped. Default 100; negative: unlimited.
	MessageRate float64
	// MessageBurst is how many messages a connection may send at once
	// above MessageRate. Default 0: twice MessageRate.
	MessageBurst int
	// UserMessageRate bounds the messages all connections of one user on
	// this edge may send per second together. 0: off; DefaultConfig 200.
	UserMessageRate float64
	// UserMessageBurst is the user's burst above UserMessageRate. Default
	// 0: twice UserMessageRate.
	UserMessageBurst int
	// MaxConnsPerUser bounds a user's connections on this edge (and, with
	// presence, in the cluster as presence sees it); more are refused with
	// HTTP 429. 0: unlimited; DefaultConfig 32.
	MaxConnsPerUser int
	// MaxConnsPerIP bounds the connections from one client IP on this edge;
	// more are refused with HTTP 429. 0: unlimited (the default).
	MaxConnsPerIP int
	// HandshakeRate bounds the handshakes per second one client IP may
	// start; more are refused with HTTP 429 and Retry-After. 0: off;
	// DefaultConfig 50.
	HandshakeRate float64
	// HandshakeBurst is the burst above HandshakeRate. Default 0: twice
	// HandshakeRate.
	HandshakeBurst int
	// MaxRoomsPerConn bounds the rooms one connection is in; more get
	// RESOURCE_EXHAUSTED. Default 128; positive.
	MaxRoomsPerConn int
	// MaxInflightRPC bounds requests in flight per connection; more get
	// RESOURCE_EXHAUSTED. Default 64; positive.
	MaxInflightRPC int
	// ClientIPHeader names a header a trusted proxy sets to the client's
	// address (X-Forwarded-For: its last address is taken), for the
	// per-IP limits. Default "": the TCP peer address. Set it only behind
	// a proxy that overwrites it.
	ClientIPHeader string
}

// PresenceConfig configures presence (docs/design/presence.md).
type PresenceConfig struct {
	// TTL is the TTL of the edge's presence lease, refreshed every TTL/3;
	// connection keys have none. After a crash, the edge's users go
	// offline within about this. Default 15s; whole seconds in 1s..5m.
	TTL time.Duration
	// Replicas is the replication of the bucket and event stream. Default
	// 1; 3 on a 3-node cluster.
	Replicas int
	// Open lets clients query any room's members with $presence. Default
	// false: only rooms they are in (PERMISSION_DENIED otherwise).
	Open bool
}

// DurableRoomsConfig configures durable rooms (docs/design/durable-rooms.md):
// their messages are kept in the <prefix>_rooms stream, deliveries carry
// meta.offset and meta.epoch, and a $join with since replays what a client
// missed.
type DurableRoomsConfig struct {
	// Patterns are the patterns of durable rooms (see auth.Grants for the
	// syntax). Required: at least one.
	Patterns []string
	// MaxAge bounds how long a durable message is kept. Default 24h;
	// positive.
	MaxAge time.Duration
	// RoomMaxMsgs bounds the messages kept per durable room. Default 1,000;
	// negative: unlimited.
	RoomMaxMsgs int64
	// MaxMsgs bounds the messages of the whole stream. Default 0:
	// unlimited (stored as -1).
	MaxMsgs int64
	// MaxBytes bounds the bytes of the whole stream. Default 1 GiB;
	// negative: unlimited.
	MaxBytes int64
	// Replicas is the stream's replication. Default 1.
	Replicas int
	// NoCapture keeps this edge from capturing: storing core publishes to
	// <prefix>.out.room.<durable room> in the stream, which one edge at a
	// time does, the holder of a lease. Default false.
	NoCapture bool
}

// StreamsConfig configures response streams (docs/protocol.md, "Response
// streams"): producers write them to the <prefix>_streams stream, which
// the edge creates, and clients read them with $stream.join.
type StreamsConfig struct {
	// MaxAge bounds how long a stream is kept. Default 24h; positive.
	MaxAge time.Duration
	// MaxBytes bounds the bytes of all streams; the oldest messages go
	// first. Default 1 GiB; negative: unlimited.
	MaxBytes int64
	// Replicas is the stream's replication. Default 1.
	Replicas int
	// IdleCheck is how long a joined stream may stay silent before the
	// edge asks whether its producer is still there (and ends the stream
	// UNAVAILABLE when it is not). Default 2s.
	IdleCheck time.Duration
}

// DefaultStreamsConfig returns the defaults of StreamsConfig.
func DefaultStreamsConfig() *StreamsConfig {
	return &StreamsConfig{MaxAge: 24 * time.Hour, MaxBytes: 1 << 30, Replicas: 1, IdleCheck: 2 * time.Second}
}

// DurableMessagesConfig configures durable message types
// (docs/design/durable-messages.md): a client message of such a type is
// stored in the work-queue stream <prefix>_work as <prefix>.work.<type>
// until a worker acknowledges it, instead of being published on
// <prefix>.in.<type>.
type DurableMessagesConfig struct {
	// Types are the patterns of durable message types (the syntax of
	// DurableRoomsConfig.Patterns, on types). Required: at least one.
	Types []string
	// MaxAge bounds how long an unhandled durable message is kept.
	// Default 0: until a worker acknowledges it; not negative.
	MaxAge time.Duration
	// MaxBytes bounds the work stream; when it is full, new durable
	// messages are refused with RESOURCE_EXHAUSTED, never dropped.
	// Default 1 GiB; negative: unlimited.
	MaxBytes int64
	// DedupeWindow is how long the work stream remembers an idempotency
	// key. Default 10m; not negative; at most MaxAge when that is set.
	DedupeWindow time.Duration
	// Replicas is the stream's replication. Default 1.
	Replicas int
}

// DefaultConfig returns the production-safe defaults, which cmd/edge's
// flags show and start from: presence on, per-connection and per-user
// message rates, a per-user connection cap and a per-IP handshake rate,
// durable rooms and messages off. It has no NATS connection and no
// authentication: set NATS.Conn, and Auth.Authenticator or Auth.Anonymous.
func DefaultConfig() Config {
	return Config{
		NATS: NATSConfig{
			Namespace:       envelope.DefaultNamespace,
			MaxOutboundSize: 1 << 20,
			RPCTimeout:      rpc.DefaultTimeout,
			RPCMaxTimeout:   rpc.MaxTimeout,
		},
		WebSocket: WebSocketConfig{
			Path:            "/ws",
			MaxMessageSize:  envelope.DefaultMaxSize,
			ReadBufferSize:  1024,
			WriteQueueBytes: 1 << 20,
			WriteTimeout:    10 * time.Second,
			PingInterval:    25 * time.Second,
			PongTimeout:     20 * time.Second,
			ShutdownSpread:  time.Second,
		},
		Auth: AuthConfig{
			UserParam:     "user",
			TokenSources:  auth.DefaultTokenSources(),
			Timeout:       5 * time.Second,
			RefreshWindow: 30 * time.Second,
		},
		Limits: LimitsConfig{
			MessageRate:     100,
			UserMessageRate: 200,
			MaxConnsPerUser: 32,
			HandshakeRate:   50,
			MaxRoomsPerConn: 128,
			MaxInflightRPC:  64,
		},
		Presence: DefaultPresenceConfig(),
		Streams:  DefaultStreamsConfig(),
	}
}

// DefaultPresenceConfig returns the defaults of PresenceConfig.
func DefaultPresenceConfig() *PresenceConfig {
	return &PresenceConfig{TTL: presencekv.DefaultTTL, Replicas: 1}
}

// DefaultDurableRoomsConfig returns the defaults of DurableRoomsConfig,
// with the given room patterns.
func DefaultDurableRoomsConfig(patterns ...string) *DurableRoomsConfig {
	return &DurableRoomsConfig{
		Patterns:    patterns,
		MaxAge:      24 * time.Hour,
		RoomMaxMsgs: 1000,
		MaxMsgs:     -1,
		MaxBytes:    1 << 30,
		Replicas:    1,
	}
}

// DefaultDurableMessagesConfig returns the defaults of
// DurableMessagesConfig, with the given type patterns.
func DefaultDurableMessagesConfig(types ...string) *DurableMessagesConfig {
	return &DurableMessagesConfig{
		Types:        types,
		MaxBytes:     1 << 30,
		DedupeWindow: 10 * time.Minute,
		Replicas:     1,
	}
}

// orDefault sets *v to d when it is zero.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// setDefaults fills the zero fields that mean "the default" from
// DefaultConfig and checks every field's range. It copies the groups it
// fills, so that the caller's Config is never written to.
func (c *Config) setDefaults() error {
	d := DefaultConfig()
	if c.NATS.Conn == nil {
		return fmt.Errorf("%w: NATS.Conn is required", ErrInvalidConfig)
	}
	orDefault(&c.NATS.Namespace, d.NATS.Namespace)
	orDefault(&c.NATS.MaxOutboundSize, d.NATS.MaxOutboundSize)
	orDefault(&c.NATS.RPCTimeout, d.NATS.RPCTimeout)
	orDefault(&c.NATS.RPCMaxTimeout, d.NATS.RPCMaxTimeout)
	if c.EdgeID == "" {
		c.EdgeID = nuid.Next()
	}
	if err := envelope.ValidateID(c.EdgeID); err != nil {
		return fmt.Errorf("%w: EdgeID: %v", ErrInvalidConfig, err)
	}
	if d := c.Tracing.NATSTraceDest; d != "" && (strings.ContainsAny(d, "*> \t\r\n") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..")) {
		return fmt.Errorf("%w: Tracing.NATSTraceDest %q is not a literal NATS subject", ErrInvalidConfig, d)
	}

	ws, dws := &c.WebSocket, d.WebSocket
	orDefault(&ws.Path, dws.Path)
	orDefault(&ws.MaxMessageSize, dws.MaxMessageSize)
	orDefault(&ws.ReadBufferSize, dws.ReadBufferSize)
	orDefault(&ws.WriteQueueBytes, dws.WriteQueueBytes)
	orDefault(&ws.WriteTimeout, dws.WriteTimeout)
	orDefault(&ws.PingInterval, dws.PingInterval)
	orDefault(&ws.PongTimeout, dws.PongTimeout)
	orDefault(&ws.ShutdownSpread, dws.ShutdownSpread)

	a, da := &c.Auth, d.Auth
	orDefault(&a.UserParam, da.UserParam)
	orDefault(&a.TokenSources.Cookie, da.TokenSources.Cookie)
	orDefault(&a.TokenSources.Query, da.TokenSources.Query)
	orDefault(&a.Timeout, da.Timeout)
	orDefault(&a.RefreshWindow, da.RefreshWindow)
	if a.DevMode {
		a.Anonymous = true
		if a.PublicRooms == nil {
			a.PublicRooms = []string{"*"}
		}
	}

	l, dl := &c.Limits, d.Limits
	orDefault(&l.MessageRate, dl.MessageRate)
	orDefault(&l.MaxRoomsPerConn, dl.MaxRoomsPerConn)
	orDefault(&l.MaxInflightRPC, dl.MaxInflightRPC)
	if l.MessageBurst == 0 {
		l.MessageBurst = max(int(2*l.MessageRate), 1)
	}
	if l.UserMessageRate > 0 && l.UserMessageBurst == 0 {
		l.UserMessageBurst = max(int(2*l.UserMessageRate), 1)
	}
	if l.HandshakeRate > 0 && l.HandshakeBurst == 0 {
		l.HandshakeBurst = max(int(2*l.HandshakeRate), 1)
	}

	if c.Presence != nil {
		p, dp := *c.Presence, DefaultPresenceConfig()
		orDefault(&p.TTL, dp.TTL)
		orDefault(&p.Replicas, dp.Replicas)
		c.Presence = &p
	}
	if c.DurableRooms != nil {
		r, dr := *c.DurableRooms, DefaultDurableRoomsConfig()
		orDefault(&r.MaxAge, dr.MaxAge)
		orDefault(&r.RoomMaxMsgs, dr.RoomMaxMsgs)
		orDefault(&r.MaxMsgs, dr.MaxMsgs)
		orDefault(&r.MaxBytes, dr.MaxBytes)
		orDefault(&r.Replicas, dr.Replicas)
		c.DurableRooms = &r
	}
	if c.Streams != nil {
		st, ds := *c.Streams, DefaultStreamsConfig()
		orDefault(&st.MaxAge, ds.MaxAge)
		orDefault(&st.MaxBytes, ds.MaxBytes)
		orDefault(&st.Replicas, ds.Replicas)
		orDefault(&st.IdleCheck, ds.IdleCheck)
		c.Streams = &st
	}
	if c.DurableMessages != nil {
		m, dm := *c.DurableMessages, DefaultDurableMessagesConfig()
		orDefault(&m.MaxBytes, dm.MaxBytes)
		orDefault(&m.Replicas, dm.Replicas)
		orDefault(&m.DedupeWindow, dm.DedupeWindow)
		if m.MaxAge > 0 {
			m.DedupeWindow = min(m.DedupeWindow, m.MaxAge)
		}
		c.DurableMessages = &m
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c.validate()
}

// validate checks the ranges of a Config whose defaults are set.
func (c *Config) validate() error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	ws, a, l := &c.WebSocket, &c.Auth, &c.Limits
	switch {
	case !strings.HasPrefix(ws.Path, "/"):
		return invalid("WebSocket.Path %q must start with /", ws.Path)
	case ws.MaxMessageSize < 256 || ws.MaxMessageSize > 16<<20:
		return invalid("WebSocket.MaxMessageSize %d out of 256..16MiB", ws.MaxMessageSize)
	case ws.WriteQueueBytes < 4096:
		return invalid("WebSocket.WriteQueueBytes %d below 4KiB", ws.WriteQueueBytes)
	case ws.ReadBufferSize < 512:
		return invalid("WebSocket.ReadBufferSize %d below 512", ws.ReadBufferSize)
	case ws.WriteTimeout < 0, ws.PingInterval < 0, ws.PongTimeout < 0, ws.IdleTimeout < 0, ws.ShutdownSpread < 0:
		return invalid("WebSocket durations must not be negative")
	case c.NATS.MaxOutboundSize < 256:
		return invalid("NATS.MaxOutboundSize %d below 256", c.NATS.MaxOutboundSize)
	case c.NATS.RPCTimeout < 0, c.NATS.RPCMaxTimeout < 0:
		return invalid("NATS RPC timeouts must not be negative")
	case a.Authenticator == nil && !a.Anonymous:
		return invalid("no authentication: set Auth.Authenticator (JWT or callout) or allow Auth.Anonymous")
	case a.Timeout < 0, a.RefreshWindow < 0:
		return invalid("Auth durations must not be negative")
	case l.MaxInflightRPC < 1, l.MaxRoomsPerConn < 1:
		return invalid("Limits.MaxInflightRPC and Limits.MaxRoomsPerConn must be positive")
	case l.MaxConnsPerUser < 0, l.MaxConnsPerIP < 0, l.HandshakeRate < 0, l.UserMessageRate < 0,
		l.MessageBurst < 0, l.UserMessageBurst < 0, l.HandshakeBurst < 0:
		return invalid("connection limits must not be negative")
	}
	if err := auth.ValidatePatterns(a.PublicRooms); err != nil {
		return invalid("Auth.PublicRooms: %v", err)
	}
	if err := auth.ValidateOrigins(a.AllowedOrigins); err != nil {
		return invalid("Auth.AllowedOrigins: %v", err)
	}
	if p := c.Presence; p != nil {
		if p.TTL < time.Second || p.TTL > 5*time.Minute || p.TTL%time.Second != 0 {
			return invalid("Presence.TTL %v must be whole seconds in 1s..5m", p.TTL)
		}
		if p.Replicas < 1 {
			return invalid("Presence.Replicas %d must be positive", p.Replicas)
		}
	}
	if r := c.DurableRooms; r != nil {
		if len(r.Patterns) == 0 {
			return invalid("DurableRooms.Patterns is empty (leave DurableRooms nil for no durable rooms)")
		}
		if err := auth.ValidatePatterns(r.Patterns); err != nil {
			return invalid("DurableRooms.Patterns: %v", err)
		}
		if r.MaxAge < 0 || r.Replicas < 1 {
			return invalid("DurableRooms.MaxAge %v must be positive and DurableRooms.Replicas %d positive", r.MaxAge, r.Replicas)
		}
	}
	if st := c.Streams; st != nil && (st.MaxAge < 0 || st.Replicas < 1 || st.IdleCheck < 0) {
		return invalid("Streams.MaxAge %v and Streams.IdleCheck %v must be positive and Streams.Replicas %d positive", st.MaxAge, st.IdleCheck, st.Replicas)
	}
	if m := c.DurableMessages; m != nil {
		if len(m.Types) == 0 {
			return invalid("DurableMessages.Types is empty (leave DurableMessages nil for no durable types)")
		}
		if err := auth.ValidatePatterns(m.Types); err != nil {
			return invalid("DurableMessages.Types: %v", err)
		}
		if m.MaxAge < 0 {
			return invalid("DurableMessages.MaxAge %v is negative", m.MaxAge)
		}
		if m.DedupeWindow < 0 {
			return invalid("DurableMessages.DedupeWindow %v is negative", m.DedupeWindow)
		}
		if m.Replicas < 1 {
			return invalid("DurableMessages.Replicas %d must be positive", m.Replicas)
		}
	}
	return nil
}
