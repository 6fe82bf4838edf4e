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

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("edge: invalid config")

// Config configures an Edge. Zero fields take the defaults given.
type Config struct {
	// NATS is the connection the edge publishes and subscribes on. Required.
	// The edge does not close or drain it; its owner does.
	NATS *nats.Conn
	// Namespace is the subject namespace. Default envelope.DefaultNamespace.
	Namespace envelope.Namespace
	// EdgeID identifies this edge in NATS headers. Default: a random NUID.
	EdgeID string
	// Path is the WebSocket upgrade path. Default "/ws".
	Path string
	// MaxMessageSize bounds one inbound frame, in bytes; larger frames close
	// the connection with 1009. Default 64 KiB, range 256 B..16 MiB.
	MaxMessageSize int
	// MaxOutboundSize bounds one envelope published toward clients, in
	// bytes; larger ones are dropped. Default 1 MiB.
	MaxOutboundSize int
	// WriteQueueBytes bounds the bytes queued for one connection; a client
	// that lets more pile up is closed with 4001. Default 1 MiB, min 4 KiB.
	WriteQueueBytes int
	// WriteTimeout bounds one write to a socket. Default 10s.
	WriteTimeout time.Duration
	// PingInterval is how long a connection may be silent before the edge
	// pings it. Default 25s.
	PingInterval time.Duration
	// PongTimeout is how long after a ping the edge waits for any frame
	// before it closes the peer as dead. Default 20s.
	PongTimeout time.Duration
	// IdleTimeout closes connections that sent no message (pongs do not
	// count) for this long, with 4002. Default 0: off.
	IdleTimeout time.Duration
	// RPCTimeout is the deadline of a request without meta.timeoutMs.
	// Default rpc.DefaultTimeout.
	RPCTimeout time.Duration
	// RPCMaxTimeout clamps meta.timeoutMs. Default rpc.MaxTimeout.
	RPCMaxTimeout time.Duration
	// MaxInflightRPC bounds requests in flight per connection; more get
	// RESOURCE_EXHAUSTED. Default 64.
	MaxInflightRPC int
	// MaxRoomsPerConn bounds the rooms one connection is in; more get
	// RESOURCE_EXHAUSTED. Default 128.
	MaxRoomsPerConn int
	// RateLimit bounds the messages a connection may send, per second, on
	// average; more get ERROR RESOURCE_EXHAUSTED with retryAfterMs and are
	// dropped. Default 100; negative: unlimited.
	RateLimit float64
	// RateBurst is how many messages a connection may send at once above
	// RateLimit. Default 2*RateLimit.
	RateBurst int
	// ReadBufferSize is each connection's read buffer, in bytes. Larger
	// frames are still read whole; the buffer only sets how much one read
	// takes. It is held for the connection's life, so it is a large part
	// of an idle connection's memory. Default 1024.
	ReadBufferSize int
	// Compression offers permessage-deflate (without context takeover).
	// Default off.
	Compression bool
	// DevMode allows the insecure ?user=<id> query parameter, and implies
	// Anonymous, every room public (unless PublicRooms) and any origin
	// (unless AllowedOrigins). Run turns it on in single-binary mode
	// without authentication, and cmd/edge with --insecure-dev-users;
	// never expose a dev-mode edge (Run listens on loopback by default).
	DevMode bool
	// UserParam is the dev-mode query parameter carrying a user id.
	// Default "user".
	UserParam string
	// ShutdownSpread spreads the close frames of Shutdown over this window,
	// so clients do not reconnect all at once. Default 1s.
	ShutdownSpread time.Duration
	// Presence keeps every connection in the natter_presence KV bucket and
	// emits lifecycle events. Needs JetStream. Default off.
	Presence bool
	// PresenceTTL is the TTL of the edge's presence lease, refreshed every
	// TTL/3; connection keys have none (docs/design/presence.md). Default
	// 15s.
	PresenceTTL time.Duration
	// PresenceReplicas is the replication of the bucket and event stream.
	// Default 1; 3 on a 3-node cluster.
	PresenceReplicas int
	// DurableRooms are the patterns of durable rooms (see auth.Grants for
	// the syntax): their messages are kept in the <prefix>_rooms stream,
	// deliveries carry meta.offset and meta.epoch, and a $join with since
	// replays what a client missed. None by default.
	DurableRooms []string
	// DurableMaxAge bounds how long a durable message is kept. Default 24h.
	DurableMaxAge time.Duration
	// DurableRoomMaxMsgs bounds the messages kept per durable room. Default
	// 1,000; negative is unlimited.
	DurableRoomMaxMsgs int64
	// DurableMaxMsgs and DurableMaxBytes bound the whole stream. Defaults
	// unlimited and 1 GiB; negative is unlimited.
	DurableMaxMsgs  int64
	DurableMaxBytes int64
	// DurableReplicas is the stream's replication. Default 1.
	DurableReplicas int
	// DurableNoCapture keeps this edge from capturing: storing core
	// publishes to natter.out.room.<durable room> in the stream, which one
	// edge at a time does, the holder of a lease.
	DurableNoCapture bool
	// DurableTypes are the patterns of durable message types (the syntax
	// of DurableRooms, on types): a client message of such a type is
	// stored in the work-queue stream <prefix>_work as
	// <prefix>.work.<type> until a worker acknowledges it, instead of
	// being published on <prefix>.in.<type>. None by default.
	DurableTypes []string
	// DurableWorkMaxAge bounds how long an unhandled durable message is
	// kept. Default 0: until a worker acknowledges it.
	DurableWorkMaxAge time.Duration
	// DurableWorkMaxBytes bounds the work stream; when it is full, new
	// durable messages are refused with RESOURCE_EXHAUSTED, never
	// dropped. Default 1 GiB.
	DurableWorkMaxBytes int64
	// DurableDedupeWindow is how long the work stream remembers an
	// idempotency key. Default 10m; at most DurableWorkMaxAge when that
	// is set.
	DurableDedupeWindow time.Duration
	// PresenceOpen lets clients query any room's members with $presence;
	// by default only rooms they are in (PERMISSION_DENIED otherwise).
	PresenceOpen bool
	// Auth authenticates handshakes and token refreshes: a JWT verifier or
	// an auth callout. Default nil: only Anonymous (or DevMode) connections.
	Auth auth.Authenticator
	// Anonymous admits connections without credentials, with no user id.
	// With Auth set, it applies to handshakes that carry no token and that
	// Auth refuses as unauthenticated. DevMode implies it. Default off: New
	// refuses a config with neither Auth nor Anonymous nor DevMode.
	Anonymous bool
	// TokenSources names the cookie and query parameter tokens come in.
	TokenSources auth.TokenSources
	// AuthTimeout bounds authenticating one handshake or refresh. Default 5s.
	AuthTimeout time.Duration
	// RefreshWindow is how long before its token expires a connection gets
	// $auth.expiring. Default 30s.
	RefreshWindow time.Duration
	// PublicRooms are room patterns (see auth.Grants) any connection may
	// join; other rooms need a grant of the connection's token, or
	// JoinAuthorizer's consent. Default: none; "*" in DevMode.
	PublicRooms []string
	// JoinAuthorizer, when set, decides client $joins that neither a grant
	// nor PublicRooms allows (natter.auth.join). Server-side joins never
	// ask.
	JoinAuthorizer JoinAuthorizer
	// AllowedOrigins are browser origins allowed to connect in addition to
	// the edge's own, which always is (see auth.Origins). Default: none,
	// only the edge's own origin; any in DevMode.
	AllowedOrigins []string
	// UserRateLimit bounds the messages all connections of one user on this
	// edge may send per second together. Default 0: off.
	UserRateLimit float64
	// UserRateBurst is the user's burst above UserRateLimit. Default
	// 2*UserRateLimit.
	UserRateBurst int
	// MaxConnsPerUser bounds a user's connections on this edge (and, with
	// presence, in the cluster as presence sees it); more are refused with
	// HTTP 429. Default 0: unlimited.
	MaxConnsPerUser int
	// MaxConnsPerIP bounds the connections from one client IP on this edge;
	// more are refused with HTTP 429. Default 0: unlimited.
	MaxConnsPerIP int
	// HandshakeRate bounds the handshakes per second one client IP may
	// start; more are refused with HTTP 429 and Retry-After. Default 0: off.
	HandshakeRate float64
	// HandshakeBurst is the burst above HandshakeRate. Default
	// 2*HandshakeRate.
	HandshakeBurst int
	// ClientIPHeader names a header a trusted proxy sets to the client's
	// address (X-Forwarded-For: its last address is taken). Default: the
	// TCP peer address. Set it only behind a proxy that overwrites it.
	ClientIPHeader string
	// Schemas validates payloads by type and direction. Default nil: no
	// validation.
	Schemas *schema.Registry
	// Logger receives connection-level events. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the edge's Prometheus metrics. Default nil: none.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() error {
	if c.NATS == nil {
		return fmt.Errorf("%w: NATS is required", ErrInvalidConfig)
	}
	if c.Namespace == (envelope.Namespace{}) {
		c.Namespace = envelope.DefaultNamespace
	}
	if c.EdgeID == "" {
		c.EdgeID = nuid.Next()
	}
	if err := envelope.ValidateID(c.EdgeID); err != nil {
		return fmt.Errorf("%w: EdgeID: %v", ErrInvalidConfig, err)
	}
	if c.Path == "" {
		c.Path = "/ws"
	}
	if !strings.HasPrefix(c.Path, "/") {
		return fmt.Errorf("%w: Path %q must start with /", ErrInvalidConfig, c.Path)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&c.MaxMessageSize, envelope.DefaultMaxSize)
	defInt(&c.MaxOutboundSize, 1<<20)
	defInt(&c.WriteQueueBytes, 1<<20)
	defInt(&c.MaxInflightRPC, 64)
	defInt(&c.MaxRoomsPerConn, 128)
	defInt(&c.ReadBufferSize, 1024)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.PingInterval, 25*time.Second)
	def(&c.PongTimeout, 20*time.Second)
	def(&c.RPCTimeout, rpc.DefaultTimeout)
	def(&c.RPCMaxTimeout, rpc.MaxTimeout)
	def(&c.ShutdownSpread, time.Second)
	if c.RateLimit == 0 {
		c.RateLimit = 100
	}
	if c.RateBurst == 0 {
		c.RateBurst = max(int(2*c.RateLimit), 1)
	}
	if c.UserRateLimit > 0 && c.UserRateBurst == 0 {
		c.UserRateBurst = max(int(2*c.UserRateLimit), 1)
	}
	if c.HandshakeRate > 0 && c.HandshakeBurst == 0 {
		c.HandshakeBurst = max(int(2*c.HandshakeRate), 1)
	}
	def(&c.AuthTimeout, 5*time.Second)
	def(&c.RefreshWindow, 30*time.Second)
	if c.DevMode {
		c.Anonymous = true
		if c.PublicRooms == nil {
			c.PublicRooms = []string{"*"}
		}
	}
	if c.Auth == nil && !c.Anonymous {
		return fmt.Errorf("%w: no authentication: set Auth (JWT or callout) or allow Anonymous", ErrInvalidConfig)
	}
	if err := auth.ValidatePatterns(c.DurableRooms); err != nil {
		return fmt.Errorf("%w: DurableRooms: %v", ErrInvalidConfig, err)
	}
	def(&c.DurableMaxAge, 24*time.Hour)
	if c.DurableRoomMaxMsgs == 0 {
		c.DurableRoomMaxMsgs = 1000
	}
	if c.DurableMaxMsgs == 0 {
		c.DurableMaxMsgs = -1
	}
	if c.DurableMaxBytes == 0 {
		c.DurableMaxBytes = 1 << 30
	}
	defInt(&c.DurableReplicas, 1)
	if err := auth.ValidatePatterns(c.DurableTypes); err != nil {
		return fmt.Errorf("%w: DurableTypes: %v", ErrInvalidConfig, err)
	}
	if c.DurableWorkMaxAge < 0 {
		return fmt.Errorf("%w: DurableWorkMaxAge %v is negative", ErrInvalidConfig, c.DurableWorkMaxAge)
	}
	if c.DurableWorkMaxBytes == 0 {
		c.DurableWorkMaxBytes = 1 << 30
	}
	if c.DurableDedupeWindow < 0 {
		return fmt.Errorf("%w: DurableDedupeWindow %v is negative", ErrInvalidConfig, c.DurableDedupeWindow)
	}
	def(&c.DurableDedupeWindow, 10*time.Minute)
	if c.DurableWorkMaxAge > 0 {
		c.DurableDedupeWindow = min(c.DurableDedupeWindow, c.DurableWorkMaxAge)
	}
	if err := auth.ValidatePatterns(c.PublicRooms); err != nil {
		return fmt.Errorf("%w: PublicRooms: %v", ErrInvalidConfig, err)
	}
	if err := auth.ValidateOrigins(c.AllowedOrigins); err != nil {
		return fmt.Errorf("%w: AllowedOrigins: %v", ErrInvalidConfig, err)
	}
	if c.UserParam == "" {
		c.UserParam = "user"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.MaxMessageSize < 256 || c.MaxMessageSize > 16<<20:
		return fmt.Errorf("%w: MaxMessageSize %d out of 256..16MiB", ErrInvalidConfig, c.MaxMessageSize)
	case c.WriteQueueBytes < 4096:
		return fmt.Errorf("%w: WriteQueueBytes %d below 4KiB", ErrInvalidConfig, c.WriteQueueBytes)
	case c.MaxInflightRPC < 1, c.MaxRoomsPerConn < 1, c.ReadBufferSize < 512, c.MaxOutboundSize < 256:
		return fmt.Errorf("%w: limits must be positive (read buffer >= 512)", ErrInvalidConfig)
	case c.MaxConnsPerUser < 0, c.MaxConnsPerIP < 0, c.HandshakeRate < 0, c.UserRateLimit < 0:
		return fmt.Errorf("%w: connection limits must not be negative", ErrInvalidConfig)
	case c.WriteTimeout < 0, c.PingInterval < 0, c.PongTimeout < 0, c.IdleTimeout < 0, c.ShutdownSpread < 0:
		return fmt.Errorf("%w: durations must not be negative", ErrInvalidConfig)
	}
	return nil
}
