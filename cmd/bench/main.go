// Command bench generates load against a running edge over loopback and
// prints one line of results per scenario and run (key=value fields), and a
// median line per scenario when -runs is more than 1. See package
// internal/bench for what each scenario measures and every field.
//
// Build both binaries and start a single-binary edge with the limits that
// would otherwise refuse the load: the per-IP handshake rate (50/s by
// default; 0 turns it off) and, for the rpc closed loop, the per-connection
// message rate (100/s by default; negative turns it off):
//
//	go build -o /tmp/natter-edge ./cmd/edge && go build -o /tmp/natter-bench ./cmd/bench
//	/tmp/natter-edge --listen 127.0.0.1:8080 --data-dir "$(mktemp -d)" \
//	    --handshake-rate 0 --rate-limit -1 --log-level warn &
//
// The edge's process is found by its listening port (or -pid). Then:
//
//	/tmp/natter-bench -scenario idle -conns 10000
//	/tmp/natter-bench -scenario fanout -subs 1000 -rate 100 -duration 10s
//	/tmp/natter-bench -scenario rpc -conns 20 -rate 1000 -inflight 4
//	/tmp/natter-bench -scenario idle,fanout -server natter,floor -runs 3 -subs 1000 -rate 100
//	/tmp/natter-bench -scenario idlecost -conns 10000 -hold 60s -runs 3
//
// idlecost holds the joined connections idle and reports the edge's CPU
// during the hold, its RSS per connection after it and the JetStream
// messages written during it, read over -nats (the edge's NATS). Presence
// is the edge's: start it with --presence=false to measure without. For an
// edge on an external NATS (--nats), -nats points at that NATS and
// -nats-pids lists its servers' pids, whose CPU is reported too:
//
//	/tmp/natter-bench -scenario idlecost -conns 10000 -nats nats://127.0.0.1:4222 \
//	    -nats-pids "$(pgrep -d, -x nats-server)"
//
// Runs against a fresh edge each are separate bench processes; -median
// reads their lines on stdin and prints the median line (scripts/bench.sh
// does this for idle and idlecost).
//
// The binary wire (subprotocol natter.protobuf) is measured with the
// bench's own schemas loaded by the edge, so that its message types
// (bench.tick, bench.dashboard) travel as protobuf:
//
//	/tmp/natter-edge --listen 127.0.0.1:8080 --data-dir "$(mktemp -d)" \
//	    --handshake-rate 0 --rate-limit -1 --log-level warn --schemas internal/bench/schemas &
//	/tmp/natter-bench -scenario wirebytes
//	/tmp/natter-bench -scenario fanout -wire json,protobuf -subs 1000 -rate 100 -runs 3
//
// The fallback transport is measured with members that are event streams
// (GET /ws/sse?room=) instead of WebSockets, for fanout latency and the
// memory of idle sessions:
//
//	/tmp/natter-bench -scenario fanout -wire json,sse -subs 100 -rate 50 -runs 3
//	/tmp/natter-bench -scenario idle -wire json,sse -conns 2000 -runs 3
//
// Tracing's cost is measured with trace context on every message
// (-traceparent) against edges started with and without the OTEL_*
// variables (docs/benchmarks.md, "Issue 19: tracing cost"):
//
//	/tmp/natter-bench -scenario fanout,rpc -traceparent -subs 1000 -rate 100
//
// Response streams (docs/benchmarks.md, "Issue 20: response streams"):
// streams runs -streams concurrent streams written with the Go SDK's
// StreamWriter at -chunk-rate chunks per second each, every stream read by
// a connection of its own user (?user=u<i>, dev mode); resume joins one
// stream again and again from an offset with -behind chunks stored after
// it while it is being written. They run against natter only, after the
// other scenarios:
//
//	/tmp/natter-bench -scenario streams -streams 1000 -chunk-rate 50 -runs 3
//	/tmp/natter-bench -scenario resume -behind 10000 -joins 200 -runs 3
//
// -server floor runs the same load against the floor: a bare gws broadcast
// server with no broker and no envelope work, started by the bench as a
// child process (this binary with -serve-floor) so that its RSS and CPU
// are read the same way as the edge's. The floor has no RPC.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/config"
)

func main() {
	cfg := bench.Config{Out: os.Stdout, Log: os.Stderr}
	var sl bench.StreamLoad
	var scenarios, servers, wires string
	var median bool
	flag.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/ws", "edge WebSocket URL")
	flag.StringVar(&scenarios, "scenario", "rpc", "comma-separated scenarios: idle, idlecost, fanout, rpc, wirebytes, streams, resume (streams and resume run after the others)")
	flag.StringVar(&wires, "wire", "json", "comma-separated wires the idle, idlecost and fanout members speak, each run in turn: json (subprotocol natter), protobuf (natter.protobuf), sse (the fallback transport: GET <path>/sse?room=)")
	flag.IntVar(&cfg.Messages, "messages", 100, "wirebytes: messages of each payload kind")
	flag.StringVar(&cfg.FanoutPayload, "fanout-payload", "tick", "fanout: what each message carries besides its time and number: tick (-payload-size bytes of padding), dashboard (about 1 KB of a dashboard refresh, bench.dashtick)")
	flag.BoolVar(&cfg.Traceparent, "traceparent", false, "fanout and rpc: give every message its own random sampled W3C trace context (fanout: a Traceparent NATS header; rpc: meta.traceparent), as a client or service that traces everything would")
	flag.StringVar(&servers, "server", "natter", "comma-separated servers to load alike: natter (the edge at -url), floor (a bare gws broadcast server child)")
	flag.IntVar(&cfg.Pid, "pid", 0, "the edge's pid (default: the process listening on -url's port)")
	flag.IntVar(&cfg.Runs, "runs", 1, "runs of each scenario and server; more than 1 adds a median line")
	flag.IntVar(&cfg.Conns, "conns", 0, "connections: idle and idlecost (default 1000), rpc (default 20; rate/conns must stay under the edge's --rate-limit)")
	flag.IntVar(&cfg.Subs, "subs", 100, "fanout subscribers")
	flag.IntVar(&cfg.Rate, "rate", 0, "rpc: requests per second in total (default 1000); fanout: messages per second (default 100)")
	flag.DurationVar(&cfg.Duration, "duration", 0, "measured time (default 10s)")
	flag.DurationVar(&cfg.Warmup, "warmup", 0, "unmeasured time first (default 1s)")
	flag.DurationVar(&cfg.Settle, "settle", 0, "idle: wait before reading RSS; idlecost: wait before the hold; also the pause between runs (default 2s)")
	flag.DurationVar(&cfg.Hold, "hold", 0, "idlecost: how long the joined connections are held idle and measured (default 60s)")
	flag.StringVar(&cfg.Room, "room", "bench", "room joined by idle, idlecost and fanout connections")
	flag.IntVar(&cfg.SourceAddrs, "source-addrs", 4, "spread connections over loopback source addresses 127.0.0.1..N")
	flag.IntVar(&cfg.DialConcurrency, "dial-concurrency", 64, "handshakes (with their $join) in flight")
	flag.StringVar(&cfg.Type, "type", "echo", "rpc request type")
	flag.IntVar(&cfg.Inflight, "inflight", 4, "rpc closed loop: requests in flight per connection")
	flag.IntVar(&cfg.PayloadSize, "payload-size", 64, "padding bytes in each request or fanout message")
	flag.StringVar(&cfg.NATSURL, "nats", "nats://127.0.0.1:4222", "the edge's NATS URL (a single-binary edge's --nats-listen): fanout publishes there, idlecost reads JetStream streams there")
	flag.Func("nats-pids", "idlecost: comma-separated pids of external NATS servers whose CPU is reported too (an edge run with --nats; none for a single-binary edge)", func(v string) error {
		for _, p := range config.SplitList(v) {
			pid, err := strconv.Atoi(p)
			if err != nil || pid < 1 {
				return fmt.Errorf("not a pid: %q", p)
			}
			cfg.NATSPids = append(cfg.NATSPids, pid)
		}
		return nil
	})
	flag.StringVar(&cfg.Prefix, "prefix", "natter", "NATS subject prefix (the edge's --prefix)")
	flag.IntVar(&sl.Streams, "streams", 0, "streams: concurrent response streams, each read by a connection of its own user (default 1000)")
	flag.IntVar(&sl.ChunkRate, "chunk-rate", 0, "streams: chunks per second written to each stream; resume: to the stream while it is joined (default 50)")
	flag.BoolVar(&sl.NoReaders, "no-readers", false, "streams: join no reader: what the producers and JetStream cost alone")
	flag.IntVar(&sl.ChunkSize, "chunk-size", 0, "streams, resume: bytes per chunk, at least 30 (default 32)")
	flag.IntVar(&sl.Behind, "behind", 0, "resume: chunks stored after the offset each join starts from (default 10000)")
	flag.IntVar(&sl.Read, "read", 0, "resume: chunks stored before the first join's offset, what the reader had read before its reload (default 0; the stream grows while joined, so later joins start later)")
	flag.IntVar(&sl.Joins, "joins", 0, "resume: joins measured, each on a new connection (default 200)")
	flag.BoolVar(&median, "median", false, "run nothing: read result lines on stdin (runs made by separate bench processes) and print the median line of each scenario and server")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Hidden, not a flag of -help: the bench runs itself this way as the
	// floor server child.
	if len(os.Args) == 3 && os.Args[1] == "-serve-floor" {
		if err := bench.ServeFloor(ctx, os.Args[2], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	flag.Parse()
	if median {
		if err := bench.MedianLines(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var streamScenarios []string
	for _, s := range config.SplitList(scenarios) {
		if bench.IsStreamScenario(s) {
			streamScenarios = append(streamScenarios, s)
		} else {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	cfg.Servers = config.SplitList(servers)
	cfg.Wires = config.SplitList(wires)
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg.FloorCommand = []string{exe, "-serve-floor", "127.0.0.1:0"}
	if len(cfg.Scenarios) > 0 || len(streamScenarios) == 0 {
		if _, err := bench.Run(ctx, cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if len(streamScenarios) > 0 {
		if _, err := bench.RunStreamScenarios(ctx, cfg, sl, streamScenarios); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
