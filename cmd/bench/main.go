// Command bench generates load against a running edge over loopback and
// prints one line of results per scenario.
//
//	go run ./cmd/edge &
//	go run ./cmd/bench -scenario rpc -rate 1000 -duration 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter/natter/internal/bench"
)

func main() {
	cfg := bench.Config{Out: os.Stdout}
	flag.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/ws", "edge WebSocket URL")
	flag.StringVar(&cfg.Scenario, "scenario", "rpc", "scenario: rpc")
	flag.IntVar(&cfg.Conns, "conns", 20, "connections (rate/conns must stay under the edge's --rate-limit)")
	flag.IntVar(&cfg.Rate, "rate", 1000, "requests per second, in total")
	flag.DurationVar(&cfg.Duration, "duration", 0, "measured time (default 10s)")
	flag.DurationVar(&cfg.Warmup, "warmup", 0, "unmeasured time first (default 1s)")
	flag.StringVar(&cfg.Type, "type", "echo", "request type")
	flag.IntVar(&cfg.PayloadSize, "payload-size", 64, "payload bytes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
