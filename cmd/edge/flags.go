package main

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter/natter/internal/app"
	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/config"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/ops"
	"github.com/natter/natter/internal/virtual"
	"github.com/natter/natter/pkg/envelope"
)

// parseFlags reads the edge's configuration from args, the NATTER_*
// environment and the --config file (internal/config). Every default comes
// from app.DefaultConfig, and so from edge.DefaultConfig: the flags do
// not restate them. It exits on --help and on a malformed flag.
func parseFlags(args []string) (app.Config, error) {
	rc := app.DefaultConfig()
	e := &rc.Edge
	var (
		vc         virtual.Config
		prefix     = e.NATS.Namespace.Prefix()
		logLevel   slog.Level
		natsFlags  natsopt.Options
		secretFile string
		logFormat  string
		// The optional groups: their fields' flags fill these defaults,
		// and the group is on when its switch (or pattern list) says so.
		presence   = e.Presence != nil
		pres       = edge.DefaultPresenceConfig()
		rooms      = edge.DefaultDurableRoomsConfig()
		msgs       = edge.DefaultDurableMessagesConfig()
		streamsOn  = e.Streams != nil
		streams    = edge.DefaultStreamsConfig()
		replicas   = rooms.Replicas
		ws, a, lim = &e.WebSocket, &e.Auth, &e.Limits
	)
	fs := flag.NewFlagSet("edge", flag.ExitOnError)
	config.Register(fs, "edge")
	fs.StringVar(&rc.Listen, "listen", rc.Listen, "HTTP address for WebSocket upgrades (default "+app.DefaultListen+"; "+app.DefaultDevListen+", loopback only, in dev mode: single-binary mode without auth flags, or --insecure-dev-users)")
	fs.StringVar(&ws.Path, "path", ws.Path, "WebSocket upgrade path")
	fs.StringVar(&rc.NATSURL, "nats", rc.NATSURL, "NATS server URLs, comma-separated; empty runs single-binary mode with an embedded server")
	fs.StringVar(&rc.NATSListen, "nats-listen", rc.NATSListen, "embedded NATS client address (single-binary mode)")
	fs.StringVar(&rc.DataDir, "data-dir", rc.DataDir, "embedded JetStream data directory (single-binary mode)")
	fs.StringVar(&prefix, "prefix", prefix, "NATS subject prefix")
	fs.StringVar(&e.EdgeID, "edge-id", e.EdgeID, "edge id in NATS headers (default random)")
	fs.StringVar(&e.Tracing.NATSTraceDest, "nats-trace-dest", e.Tracing.NATSTraceDest, "with tracing on (the OTEL_* variables), ask nats-server for its hop-by-hop trace of every sampled message, published to this subject (Nats-Trace-Dest)")
	fs.IntVar(&ws.MaxMessageSize, "max-message-size", ws.MaxMessageSize, "largest inbound frame in bytes; larger closes with 1009")
	fs.IntVar(&ws.WriteQueueBytes, "write-queue-bytes", ws.WriteQueueBytes, "bytes queued per connection before it is closed as a slow consumer (4001)")
	fs.DurationVar(&ws.WriteTimeout, "write-timeout", ws.WriteTimeout, "deadline of one socket write")
	fs.DurationVar(&ws.PingInterval, "ping-interval", ws.PingInterval, "ping a connection silent this long")
	fs.DurationVar(&ws.PongTimeout, "pong-timeout", ws.PongTimeout, "close a pinged connection silent this much longer")
	fs.DurationVar(&ws.IdleTimeout, "idle-timeout", ws.IdleTimeout, "close connections that send no message this long, with 4002 (0: off)")
	fs.DurationVar(&e.NATS.RPCTimeout, "rpc-timeout", e.NATS.RPCTimeout, "RPC deadline without meta.timeoutMs")
	fs.DurationVar(&e.NATS.RPCMaxTimeout, "rpc-max-timeout", e.NATS.RPCMaxTimeout, "largest meta.timeoutMs granted")
	fs.DurationVar(&ws.ShutdownSpread, "shutdown-spread", ws.ShutdownSpread, "spread shutdown close frames over this window")
	fs.DurationVar(&rc.ShutdownTimeout, "shutdown-timeout", rc.ShutdownTimeout, "bound on the whole shutdown")
	fs.DurationVar(&rc.SetupTimeout, "setup-timeout", rc.SetupTimeout, "bound on the set-up before the edge serves (JWKS, JetStream streams and buckets); a signal ends it at once, and so do errors no wait can mend (no JetStream, a permission denied)")
	fs.Float64Var(&lim.MessageRate, "rate-limit", lim.MessageRate, "messages per second a connection may send on average (negative: unlimited)")
	fs.IntVar(&lim.MessageBurst, "rate-burst", lim.MessageBurst, "messages a connection may send at once above the rate (0: 2x rate)")
	fs.Func("schemas", "directory of .proto files to load besides the shipped ones (repeatable)", func(v string) error {
		rc.SchemaDirs = append(rc.SchemaDirs, v)
		return nil
	})
	fs.BoolVar(&rc.StrictTypes, "strict-types", rc.StrictTypes, "reject message types that have no schema")
	fs.BoolVar(&a.DevMode, "insecure-dev-users", a.DevMode, "INSECURE dev mode with --nats, as single-binary mode without auth flags, for local set-ups of several processes: the user id comes from ?user=, anonymous connections are admitted, every room is public (unless --public-rooms), any origin may connect (unless --allowed-origins), the demo page is served at /, and the default --listen is loopback")
	fs.BoolVar(&presence, "presence", presence, "keep presence in JetStream KV and emit lifecycle events (needs JetStream)")
	fs.DurationVar(&pres.TTL, "presence-ttl", pres.TTL, "TTL of the edge's presence lease, whole seconds: after a crash its users go offline within this plus a few seconds; connection keys have none (docs/design/presence.md)")
	fs.IntVar(&pres.Replicas, "presence-replicas", pres.Replicas, "replicas of the presence bucket and event stream")
	fs.BoolVar(&pres.Open, "presence-open", pres.Open, "let clients list the members of rooms they are not in")
	fs.Func("durable-rooms", "comma-separated patterns of durable rooms: history in JetStream, positions on deliveries, recovery on $join with since (default none)", func(v string) error {
		rooms.Patterns = append(rooms.Patterns, config.SplitList(v)...)
		return nil
	})
	fs.DurationVar(&rooms.MaxAge, "durable-max-age", rooms.MaxAge, "how long durable room messages are kept")
	fs.Int64Var(&rooms.RoomMaxMsgs, "durable-room-max-msgs", rooms.RoomMaxMsgs, "messages kept per durable room (-1: unlimited)")
	fs.Int64Var(&rooms.MaxMsgs, "durable-max-msgs", rooms.MaxMsgs, "messages kept in all durable rooms together (-1: unlimited)")
	fs.Int64Var(&rooms.MaxBytes, "durable-max-bytes", rooms.MaxBytes, "bytes kept in all durable rooms together (-1: unlimited)")
	fs.IntVar(&replicas, "durable-replicas", replicas, "replicas of the durable rooms stream, the durable messages work queue and the response streams stream")
	fs.BoolVar(&rooms.NoCapture, "durable-no-capture", rooms.NoCapture, "do not store core publishes to natter.out.room.<durable room> from this edge (another edge that holds the capture lease does)")
	fs.Func("durable-types", "comma-separated patterns of durable message types: stored in the JetStream work queue natter_work until a worker acknowledges them, deduplicated by meta.idempotencyKey (default none)", func(v string) error {
		msgs.Types = append(msgs.Types, config.SplitList(v)...)
		return nil
	})
	fs.DurationVar(&msgs.MaxAge, "durable-work-max-age", msgs.MaxAge, "how long an unhandled durable message is kept (0: until handled)")
	fs.Int64Var(&msgs.MaxBytes, "durable-work-max-bytes", msgs.MaxBytes, "bytes of unhandled durable messages kept; when full, new ones get RESOURCE_EXHAUSTED (-1: unlimited)")
	fs.DurationVar(&msgs.DedupeWindow, "durable-dedupe-window", msgs.DedupeWindow, "how long an idempotency key of a durable message is remembered")
	fs.BoolVar(&streamsOn, "streams", streamsOn, "serve response streams: producers write natter.stream.<id> in the JetStream stream natter_streams, clients read with $stream.join (needs JetStream)")
	fs.DurationVar(&streams.MaxAge, "stream-max-age", streams.MaxAge, "how long a response stream is kept")
	fs.Int64Var(&streams.MaxBytes, "stream-max-bytes", streams.MaxBytes, "bytes kept in all response streams together, oldest dropped first (-1: unlimited)")
	fs.DurationVar(&streams.IdleCheck, "stream-idle-check", streams.IdleCheck, "ask the producer of a joined stream silent this long whether it is there; end the stream UNAVAILABLE when it is not")
	fs.BoolVar(&ws.Compression, "compression", ws.Compression, "offer permessage-deflate")
	fs.IntVar(&ws.ReadBufferSize, "read-buffer-size", ws.ReadBufferSize, "bytes of each connection's read buffer (larger frames are still read whole)")
	fs.IntVar(&lim.MaxRoomsPerConn, "max-rooms", lim.MaxRoomsPerConn, "rooms one connection may be in; more joins get RESOURCE_EXHAUSTED")

	// Authentication and authorization.
	fs.StringVar(&secretFile, "jwt-secret-file", "", "file holding the HS256 secret (or env NATTER_JWT_SECRET)")
	fs.Func("jwt-public-key", "PEM file of public keys verifying RS256, ES256 or EdDSA tokens (repeatable)", func(v string) error {
		keys, err := auth.LoadPublicKeys(v)
		rc.JWT.PublicKeys = append(rc.JWT.PublicKeys, keys...)
		return err
	})
	fs.StringVar(&rc.JWT.JWKSURL, "jwks-url", rc.JWT.JWKSURL, "JWKS URL of token signing keys, refreshed on unknown key ids")
	fs.DurationVar(&rc.JWT.JWKSRefresh, "jwks-refresh", rc.JWT.JWKSRefresh, "regular JWKS refresh")
	fs.StringVar(&rc.JWT.Issuer, "jwt-issuer", rc.JWT.Issuer, "required iss claim")
	fs.StringVar(&rc.JWT.Audience, "jwt-audience", rc.JWT.Audience, "required aud claim")
	fs.StringVar(&rc.JWT.UserClaim, "jwt-user-claim", rc.JWT.UserClaim, "claim holding the user id")
	fs.StringVar(&rc.JWT.RoomsClaim, "jwt-rooms-claim", rc.JWT.RoomsClaim, "claim holding the room patterns the token grants")
	fs.BoolVar(&rc.AuthCallout, "auth-callout", rc.AuthCallout, "ask an auth service over NATS (natter.auth.connect/refresh) instead of verifying JWTs")
	fs.BoolVar(&rc.JoinCallout, "join-callout", rc.JoinCallout, "ask natter.auth.join about joins no grant or public room allows")
	fs.DurationVar(&rc.CalloutTimeout, "callout-timeout", rc.CalloutTimeout, "bound on one callout; no answer refuses")
	fs.BoolVar(&a.Anonymous, "anonymous", a.Anonymous, "admit connections without a token, with no user id (always on in single-binary mode)")
	fs.StringVar(&a.TokenSources.Cookie, "token-cookie", a.TokenSources.Cookie, "cookie carrying the token")
	fs.StringVar(&a.TokenSources.Query, "token-query", a.TokenSources.Query, "query parameter carrying the token")
	fs.DurationVar(&a.RefreshWindow, "refresh-window", a.RefreshWindow, "send $auth.expiring this long before a token expires")
	fs.Func("public-rooms", "comma-separated room patterns any connection may join (default none; * in single-binary mode)", func(v string) error {
		a.PublicRooms = append(a.PublicRooms, config.SplitList(v)...)
		return nil
	})
	fs.Func("allowed-origins", "comma-separated browser origins allowed to connect, like https://app.example.com or https://*.example.com in addition to the edge's own origin, which is always allowed (default: only it; any in single-binary mode)", func(v string) error {
		a.AllowedOrigins = append(a.AllowedOrigins, config.SplitList(v)...)
		return nil
	})

	// Limits.
	fs.Float64Var(&lim.UserMessageRate, "user-rate-limit", lim.UserMessageRate, "messages per second all of a user's connections on this edge may send together (0: off)")
	fs.IntVar(&lim.UserMessageBurst, "user-rate-burst", lim.UserMessageBurst, "burst above the user rate (0: 2x)")
	fs.IntVar(&lim.MaxConnsPerUser, "max-conns-per-user", lim.MaxConnsPerUser, "connections per user (0: unlimited); more get HTTP 429")
	fs.IntVar(&lim.MaxConnsPerIP, "max-conns-per-ip", lim.MaxConnsPerIP, "connections per client IP on this edge (0: unlimited); more get HTTP 429")
	fs.Float64Var(&lim.HandshakeRate, "handshake-rate", lim.HandshakeRate, "handshakes per second per client IP (0: off); more get HTTP 429")
	fs.IntVar(&lim.HandshakeBurst, "handshake-burst", lim.HandshakeBurst, "burst above the handshake rate (0: 2x)")
	fs.DurationVar(&rc.HandshakeTimeout, "handshake-timeout", rc.HandshakeTimeout, "bound on reading a handshake's headers, against slowloris")
	fs.IntVar(&rc.MaxHeaderBytes, "max-header-bytes", rc.MaxHeaderBytes, "largest handshake request headers; more get 431")
	fs.StringVar(&lim.ClientIPHeader, "client-ip-header", lim.ClientIPHeader, "header a trusted proxy sets to the client address, like X-Forwarded-For (last address taken)")
	natsFlags.Register(fs)

	// Operations.
	fs.BoolVar(&rc.Pprof, "pprof", rc.Pprof, "serve Go profiles under /debug/pprof/ on the admin listener (keep it private)")
	fs.StringVar(&rc.AdminListen, "admin-listen", rc.AdminListen, "admin address serving /healthz, /readyz and /metrics, like :9090 (default: none)")
	fs.DurationVar(&rc.DrainDelay, "drain-delay", rc.DrainDelay, "at SIGTERM, fail readiness this long before closing sockets, so load balancers stop routing first")
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
	if err := config.Parse(fs, args); err != nil {
		return rc, err
	}

	log, err := ops.NewLogger(logFormat, logLevel)
	if err != nil {
		return rc, err
	}
	e.Logger = log
	if e.NATS.Namespace, err = envelope.NewNamespace(prefix); err != nil {
		return rc, err
	}
	e.Presence = nil
	if presence {
		e.Presence = pres
	}
	rooms.Replicas, msgs.Replicas, streams.Replicas = replicas, replicas, replicas
	e.Streams = nil
	if streamsOn {
		e.Streams = streams
	}
	if len(rooms.Patterns) > 0 {
		e.DurableRooms = rooms
	}
	if len(msgs.Types) > 0 {
		e.DurableMessages = msgs
	}
	if vc.Conns != 0 {
		if *churnOnSignal {
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			vc.ChurnStart = usr1
		}
		rc.Virtual = &vc
	}
	if rc.NATSOptions, err = natsFlags.NATS(); err != nil {
		return rc, err
	}
	secret := os.Getenv("NATTER_JWT_SECRET")
	switch {
	case secret != "" && secretFile != "":
		return rc, errors.New("both NATTER_JWT_SECRET and --jwt-secret-file are set: choose one")
	case secret != "":
		rc.JWT.HMACSecret = []byte(secret)
	case secretFile != "":
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return rc, err
		}
		rc.JWT.HMACSecret = bytes.TrimSpace(b)
	}
	return rc, nil
}
