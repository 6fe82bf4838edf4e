// Command edge runs a Natter edge. With no --nats it is the whole mesh in one
// binary: an embedded nats-server with JetStream, the edge, and the built-in
// worker handlers.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/pkg/envelope"
)

func main() {
	var (
		rc       edge.RunConfig
		prefix   string
		logLevel slog.Level
	)
	fs := flag.CommandLine
	fs.StringVar(&rc.Listen, "listen", ":8080", "HTTP address for WebSocket upgrades")
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
	fs.BoolVar(&rc.Edge.DevMode, "insecure-dev-users", false, "INSECURE: take the user id from ?user= even with --nats (single-binary mode always does)")
	fs.BoolVar(&rc.Edge.Presence, "presence", true, "keep presence in JetStream KV and emit lifecycle events (needs JetStream)")
	fs.DurationVar(&rc.Edge.PresenceTTL, "presence-ttl", 0, "per-connection presence TTL, whole seconds (default 15s)")
	fs.IntVar(&rc.Edge.PresenceReplicas, "presence-replicas", 1, "replicas of the presence bucket and event stream")
	fs.BoolVar(&rc.Edge.PresenceOpen, "presence-open", false, "let clients list the members of rooms they are not in")
	fs.BoolVar(&rc.Edge.Compression, "compression", false, "offer permessage-deflate")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	ns, err := envelope.NewNamespace(prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	rc.Edge.Namespace = ns
	rc.Edge.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := edge.Run(ctx, rc); err != nil {
		log.Error("edge stopped", "err", err)
		os.Exit(1)
	}
}
