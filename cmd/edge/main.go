// Command edge runs a Natter edge. With no --nats it is the whole mesh in one
// binary: an embedded nats-server with JetStream, the edge, and the built-in
// worker handlers.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/config"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/ops"
	"github.com/natter/natter/internal/virtual"
	"github.com/natter/natter/pkg/envelope"
)

func main() {
	var (
		rc         edge.RunConfig
		vc         virtual.Config
		prefix     string
		logLevel   slog.Level
		natsFlags  natsopt.Options
		secretFile string
		logFormat  string
	)
	fs := flag.NewFlagSet("edge", flag.ExitOnError)
	config.Register(fs, "edge")
	fs.StringVar(&rc.Listen, "listen", "", "HTTP address for WebSocket upgrades (default "+edge.DefaultListen+"; "+edge.DefaultDevListen+", loopback only, in dev mode: single-binary mode without auth flags, or --insecure-dev-users)")
	fs.StringVar(&rc.Edge.Path, "path", "/ws", "WebSocket upgrade path")
	fs.StringVar(&rc.NATSURL, "nats", "", "NATS server URLs, comma-separated; empty runs single-binary mode with an embedded server")
	fs.StringVar(&rc.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS client address (single-binary mode)")
	fs.StringVar(&rc.DataDir, "data-dir", "natter-data", "embedded JetStream data directory (single-binary mode)")
	fs.StringVar(&prefix, "prefix", envelope.DefaultPrefix, "NATS subject prefix")
	fs.StringVar(&rc.Edge.EdgeID, "edge-id", "", "edge id in NATS headers (default random)")
	fs.IntVar(&rc.Edge.MaxMessageSize, "max-message-size", envelope.DefaultMaxSize, "largest inbound frame in bytes; larger closes with 1009")
	fs.IntVar(&rc.Edge.WriteQueueBytes, "write-queue-bytes", 1<<20, "bytes queued per connection before it is closed as a slow consumer (4001)")
	fs.DurationVar(&rc.Edge.WriteTimeout, "write-timeout", 0, "deadline of one socket write (default 10s)")
	fs.DurationVar(&rc.Edge.PingInterval, "ping-interval", 0, "ping a connection silent this long (default 25s)")
	fs.DurationVar(&rc.Edge.PongTimeout, "pong-timeout", 0, "close a pinged connection silent this much longer (default 20s)")
	fs.DurationVar(&rc.Edge.IdleTimeout, "idle-timeout", 0, "close connections that send no message this long, with 4002 (0: off)")
	fs.DurationVar(&rc.Edge.RPCTimeout, "rpc-timeout", 0, "RPC deadline without meta.timeoutMs (default 10s)")
	fs.DurationVar(&rc.Edge.RPCMaxTimeout, "rpc-max-timeout", 0, "largest meta.timeoutMs granted (default 60s)")
	fs.DurationVar(&rc.Edge.ShutdownSpread, "shutdown-spread", 0, "spread shutdown close frames over this window (default 1s)")
	fs.DurationVar(&rc.ShutdownTimeout, "shutdown-timeout", 0, "bound on the whole shutdown (default 10s)")
	fs.Float64Var(&rc.Edge.RateLimit, "rate-limit", 100, "messages per second a connection may send on average (negative: unlimited)")
	fs.IntVar(&rc.Edge.RateBurst, "rate-burst", 0, "messages a connection may send at once above the rate (default 2x rate)")
	fs.Func("schemas", "directory of .proto files to load besides the shipped ones (repeatable)", func(v string) error {
		rc.SchemaDirs = append(rc.SchemaDirs, v)
		return nil
	})
	fs.BoolVar(&rc.StrictTypes, "strict-types", false, "reject message types that have no schema")
	fs.BoolVar(&rc.Edge.DevMode, "insecure-dev-users", false, "INSECURE dev mode with --nats, as single-binary mode without auth flags, for local set-ups of several processes: the user id comes from ?user=, anonymous connections are admitted, every room is public (unless --public-rooms), any origin may connect (unless --allowed-origins), the demo page is served at /, and the default --listen is loopback")
	fs.BoolVar(&rc.Edge.Presence, "presence", true, "keep presence in JetStream KV and emit lifecycle events (needs JetStream)")
	fs.DurationVar(&rc.Edge.PresenceTTL, "presence-ttl", 0, "TTL of the edge's presence lease, whole seconds (default 15s): after a crash its users go offline within this plus a few seconds; connection keys have none (docs/design/presence.md)")
	fs.IntVar(&rc.Edge.PresenceReplicas, "presence-replicas", 1, "replicas of the presence bucket and event stream")
	fs.Func("durable-rooms", "comma-separated patterns of durable rooms: history in JetStream, positions on deliveries, recovery on $join with since (default none)", func(v string) error {
		rc.Edge.DurableRooms = append(rc.Edge.DurableRooms, splitList(v)...)
		return nil
	})
	fs.DurationVar(&rc.Edge.DurableMaxAge, "durable-max-age", 0, "how long durable room messages are kept (default 24h)")
	fs.Int64Var(&rc.Edge.DurableRoomMaxMsgs, "durable-room-max-msgs", 0, "messages kept per durable room (default 1000, -1 unlimited)")
	fs.Int64Var(&rc.Edge.DurableMaxMsgs, "durable-max-msgs", 0, "messages kept in all durable rooms together (default unlimited)")
	fs.Int64Var(&rc.Edge.DurableMaxBytes, "durable-max-bytes", 0, "bytes kept in all durable rooms together (default 1 GiB, -1 unlimited)")
	fs.IntVar(&rc.Edge.DurableReplicas, "durable-replicas", 1, "replicas of the durable rooms stream and the durable messages work queue")
	fs.BoolVar(&rc.Edge.DurableNoCapture, "durable-no-capture", false, "do not store core publishes to natter.out.room.<durable room> from this edge (another edge that holds the capture lease does)")
	fs.Func("durable-types", "comma-separated patterns of durable message types: stored in the JetStream work queue natter_work until a worker acknowledges them, deduplicated by meta.idempotencyKey (default none)", func(v string) error {
		rc.Edge.DurableTypes = append(rc.Edge.DurableTypes, splitList(v)...)
		return nil
	})
	fs.DurationVar(&rc.Edge.DurableWorkMaxAge, "durable-work-max-age", 0, "how long an unhandled durable message is kept (default 0: until handled)")
	fs.Int64Var(&rc.Edge.DurableWorkMaxBytes, "durable-work-max-bytes", 0, "bytes of unhandled durable messages kept; when full, new ones get RESOURCE_EXHAUSTED (default 1 GiB, -1 unlimited)")
	fs.DurationVar(&rc.Edge.DurableDedupeWindow, "durable-dedupe-window", 0, "how long an idempotency key of a durable message is remembered (default 10m)")
	fs.BoolVar(&rc.Edge.PresenceOpen, "presence-open", false, "let clients list the members of rooms they are not in")
	fs.BoolVar(&rc.Edge.Compression, "compression", false, "offer permessage-deflate")
	fs.IntVar(&rc.Edge.ReadBufferSize, "read-buffer-size", 1024, "bytes of each connection's read buffer (larger frames are still read whole)")
	fs.IntVar(&rc.Edge.MaxRoomsPerConn, "max-rooms", 128, "rooms one connection may be in; more joins get RESOURCE_EXHAUSTED")

	// Authentication and authorization.
	fs.StringVar(&secretFile, "jwt-secret-file", "", "file holding the HS256 secret (or env NATTER_JWT_SECRET)")
	fs.Func("jwt-public-key", "PEM file of public keys verifying RS256, ES256 or EdDSA tokens (repeatable)", func(v string) error {
		keys, err := auth.LoadPublicKeys(v)
		rc.JWT.PublicKeys = append(rc.JWT.PublicKeys, keys...)
		return err
	})
	fs.StringVar(&rc.JWT.JWKSURL, "jwks-url", "", "JWKS URL of token signing keys, refreshed on unknown key ids")
	fs.DurationVar(&rc.JWT.JWKSRefresh, "jwks-refresh", 0, "regular JWKS refresh (default 15m)")
	fs.StringVar(&rc.JWT.Issuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&rc.JWT.Audience, "jwt-audience", "", "required aud claim")
	fs.StringVar(&rc.JWT.UserClaim, "jwt-user-claim", "sub", "claim holding the user id")
	fs.StringVar(&rc.JWT.RoomsClaim, "jwt-rooms-claim", "rooms", "claim holding the room patterns the token grants")
	fs.BoolVar(&rc.AuthCallout, "auth-callout", false, "ask an auth service over NATS (natter.auth.connect/refresh) instead of verifying JWTs")
	fs.BoolVar(&rc.JoinCallout, "join-callout", false, "ask natter.auth.join about joins no grant or public room allows")
	fs.DurationVar(&rc.CalloutTimeout, "callout-timeout", 0, "bound on one callout; no answer refuses (default 2s)")
	fs.BoolVar(&rc.Edge.Anonymous, "anonymous", false, "admit connections without a token, with no user id (always on in single-binary mode)")
	fs.StringVar(&rc.Edge.TokenSources.Cookie, "token-cookie", "natter_token", "cookie carrying the token")
	fs.StringVar(&rc.Edge.TokenSources.Query, "token-query", "token", "query parameter carrying the token")
	fs.DurationVar(&rc.Edge.RefreshWindow, "refresh-window", 0, "send $auth.expiring this long before a token expires (default 30s)")
	fs.Func("public-rooms", "comma-separated room patterns any connection may join (default none; * in single-binary mode)", func(v string) error {
		rc.Edge.PublicRooms = append(rc.Edge.PublicRooms, splitList(v)...)
		return nil
	})
	fs.Func("allowed-origins", "comma-separated browser origins allowed to connect, like https://app.example.com or https://*.example.com in addition to the edge's own origin, which is always allowed (default: only it; any in single-binary mode)", func(v string) error {
		rc.Edge.AllowedOrigins = append(rc.Edge.AllowedOrigins, splitList(v)...)
		return nil
	})

	// Limits.
	fs.Float64Var(&rc.Edge.UserRateLimit, "user-rate-limit", 200, "messages per second all of a user's connections on this edge may send together (0: off)")
	fs.IntVar(&rc.Edge.UserRateBurst, "user-rate-burst", 0, "burst above the user rate (default 2x)")
	fs.IntVar(&rc.Edge.MaxConnsPerUser, "max-conns-per-user", 32, "connections per user (0: unlimited); more get HTTP 429")
	fs.IntVar(&rc.Edge.MaxConnsPerIP, "max-conns-per-ip", 0, "connections per client IP on this edge (0: unlimited); more get HTTP 429")
	fs.Float64Var(&rc.Edge.HandshakeRate, "handshake-rate", 50, "handshakes per second per client IP (0: off); more get HTTP 429")
	fs.IntVar(&rc.Edge.HandshakeBurst, "handshake-burst", 0, "burst above the handshake rate (default 2x)")
	fs.DurationVar(&rc.HandshakeTimeout, "handshake-timeout", 0, "bound on reading a handshake's headers, against slowloris (default 10s)")
	fs.IntVar(&rc.MaxHeaderBytes, "max-header-bytes", 0, "largest handshake request headers; more get 431 (default 32768)")
	fs.StringVar(&rc.Edge.ClientIPHeader, "client-ip-header", "", "header a trusted proxy sets to the client address, like X-Forwarded-For (last address taken)")
	natsFlags.Register(fs)

	// Operations.
	fs.BoolVar(&rc.Pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on the admin listener (keep it private)")
	fs.StringVar(&rc.AdminListen, "admin-listen", "", "admin address serving /healthz, /readyz and /metrics, like :9090 (default: none)")
	fs.DurationVar(&rc.DrainDelay, "drain-delay", 0, "at SIGTERM, fail readiness this long before closing sockets, so load balancers stop routing first")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")

	// Load tests only: VIRTUAL connections (internal/virtual, docs/scale.md).
	fs.IntVar(&vc.Conns, "virtual-conns", 0, "LOAD TESTS ONLY: open and hold this many VIRTUAL connections (in-memory, not TCP) through the edge's own handshake, presence and rooms, once it serves; needs dev mode (docs/scale.md)")
	fs.IntVar(&vc.Users, "virtual-users", 0, "virtual connection i is user virtual-<i mod this> (default --virtual-conns)")
	fs.IntVar(&vc.Rooms, "virtual-rooms", 0, "virtual connection i joins room virtual-<i mod this> (default --virtual-conns/100)")
	fs.IntVar(&vc.First, "virtual-first", 0, "index i of this edge's first virtual connection: give each edge of a cluster its own range")
	fs.Float64Var(&vc.OpenRate, "virtual-rate", 0, "virtual connections opened per second (0: as fast as they open)")
	fs.DurationVar(&vc.Delay, "virtual-delay", 0, "wait this long before opening virtual connections")
	fs.Float64Var(&vc.Churn, "virtual-churn", 0, "once all are held, replace this many virtual connections per second: the oldest closes (1001), a new one opens (0: off)")
	fs.DurationVar(&vc.ChurnAfter, "virtual-churn-after", 0, "start the churn this long after all virtual connections are held")
	churnOnSignal := fs.Bool("virtual-churn-on-signal", false, "then wait for SIGUSR1 to start the churn")
	fs.BoolVar(&vc.PresenceDiffs, "virtual-presence-diffs", true, "virtual connections join with presence: true and receive their room's $presence.diff")
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	log, err := ops.NewLogger(logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ns, err := envelope.NewNamespace(prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	rc.Edge.Namespace = ns
	if vc.Conns != 0 {
		if *churnOnSignal {
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			vc.ChurnStart = usr1
		}
		rc.Virtual = &vc
	}
	rc.Edge.Logger = log
	if rc.NATSOptions, err = natsFlags.NATS(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if os.Getenv("NATTER_JWT_SECRET") != "" && secretFile != "" {
		fmt.Fprintln(os.Stderr, "both NATTER_JWT_SECRET and --jwt-secret-file are set: choose one")
		os.Exit(2)
	}
	if secret := os.Getenv("NATTER_JWT_SECRET"); secret != "" {
		rc.JWT.HMACSecret = []byte(secret)
	} else if secretFile != "" {
		b, err := os.ReadFile(secretFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		rc.JWT.HMACSecret = bytes.TrimSpace(b)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal starts the drain, a second one kills at once.
	context.AfterFunc(ctx, stop)
	if err := edge.Run(ctx, rc); err != nil {
		log.Error("edge stopped", "err", err)
		os.Exit(1)
	}
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(v string) []string {
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
