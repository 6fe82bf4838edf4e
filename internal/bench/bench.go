package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// ErrInvalidConfig wraps configuration errors.
var ErrInvalidConfig = errors.New("bench: invalid config")

// Scenario and server names.
const (
	ScenarioIdle     = "idle"
	ScenarioFanout   = "fanout"
	ScenarioRPC      = "rpc"
	ScenarioIdleCost = "idlecost"
	// ScenarioWireBytes measures the bytes per delivery on each wire.
	ScenarioWireBytes = "wirebytes"
	ServerNatter      = "natter"
	ServerFloor       = "floor"
)

// What a fanout message carries (Config.FanoutPayload).
const (
	FanoutTick      = "tick"
	FanoutDashboard = "dashboard"
)

// Config configures a run. Zero values take the defaults given.
type Config struct {
	URL       string   // edge WebSocket URL; default ws://127.0.0.1:8080/ws
	Scenarios []string // idle, idlecost, fanout, rpc, run in the order given; default rpc
	// Servers to load, each with the same scenarios and flags: natter (the
	// edge at URL) and floor (a floor server child, see ServeFloor);
	// default natter. The floor has no RPC and no NATS (no idlecost).
	Servers []string
	// Wires the members of idle, idlecost and fanout speak, each run as a
	// server would be: json (subprotocol natter) and protobuf
	// (natter.protobuf); default json. rpc speaks JSON; wirebytes
	// compares both by itself. The floor speaks JSON only.
	Wires []string
	// wire is the wire of the run at hand.
	wire string
	// Pid is the edge's process id, whose RSS and CPU are read from /proc.
	// 0: the process listening on URL's port.
	Pid int
	// FloorCommand runs a floor server on a free loopback port and prints
	// its ready line (cmd/bench runs itself with -serve-floor 127.0.0.1:0).
	// Needed for the floor server.
	FloorCommand []string
	Runs         int // runs of each scenario and server; a median line follows when > 1; default 1

	// Connections.
	SourceAddrs     int // loopback source addresses 127.0.0.1..N; default 4
	DialConcurrency int // handshakes in flight; default 64
	Room            string
	// Conns is the idle and idlecost scenarios' connection count (default
	// 1000) and the rpc scenario's (default 20; keep Rate/Conns under the
	// edge's --rate-limit). 0 takes the scenario's default.
	Conns int
	Subs  int // fanout subscribers; default 100
	// Rate is requests per second in total for rpc (default 1000) and
	// messages per second for fanout (default 100). 0 takes the
	// scenario's default.
	Rate        int
	Duration    time.Duration // measured time; default 10s
	Warmup      time.Duration // unmeasured time before; default 1s
	Settle      time.Duration // idle, idlecost: wait after the last join before reading RSS or holding, and between runs; default 2s
	Hold        time.Duration // idlecost: how long the joined connections are held idle and measured; default 60s
	Type        string        // rpc request type; default "echo"
	Messages    int           // wirebytes: messages of each kind; default 100
	Inflight    int           // rpc closed loop: requests in flight per connection; default 4
	PayloadSize int           // bytes of padding in each request or tick; default 64
	// FanoutPayload is what a fanout tick carries besides t and n: "tick",
	// PayloadSize bytes of padding (bench.tick, the default), or
	// "dashboard", about 1 KB of a dashboard refresh (bench.dashtick; the
	// natter server only).
	FanoutPayload string
	// Traceparent gives every fanout message (a Traceparent NATS header)
	// and every rpc request (meta.traceparent) its own random W3C trace
	// context with the sampled flag, as a client or service that traces
	// every message sends: what the edge propagates, and continues when
	// it traces. Off (the default) nothing carries trace context.
	Traceparent bool
	// NATSURL is the edge's NATS: fanout publishes there and idlecost reads
	// the JetStream streams' states there. Default nats://127.0.0.1:4222,
	// a single-binary edge's default --nats-listen.
	NATSURL string
	// NATSPids are the process ids of external NATS servers (an edge run
	// with --nats) whose CPU idlecost reports besides the edge's. None for
	// a single-binary edge, whose process holds its NATS.
	NATSPids []int
	Prefix   string // NATS subject prefix; default natter

	Out io.Writer // result lines; default io.Discard
	Log io.Writer // diagnostics; default io.Discard
}

func (c *Config) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.URL == "" {
		c.URL = "ws://127.0.0.1:8080/ws"
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = []string{ScenarioRPC}
	}
	if len(c.Servers) == 0 {
		c.Servers = []string{ServerNatter}
	}
	if len(c.Wires) == 0 {
		c.Wires = []string{WireJSON}
	}
	def(&c.Messages, 100)
	switch c.FanoutPayload {
	case "":
		c.FanoutPayload = FanoutTick
	case FanoutTick:
	case FanoutDashboard:
		if slices.Contains(c.Servers, ServerFloor) {
			return fmt.Errorf("%w: the floor server sends ticks with padding only: run -fanout-payload dashboard against natter only", ErrInvalidConfig)
		}
	default:
		return fmt.Errorf("%w: unknown fanout payload %q (have: tick, dashboard)", ErrInvalidConfig, c.FanoutPayload)
	}
	for _, w := range c.Wires {
		switch w {
		case WireJSON:
		case WireProtobuf, WireSSE:
			if slices.Contains(c.Servers, ServerFloor) {
				return fmt.Errorf("%w: the floor server speaks JSON over WebSocket only: run -wire %s against natter only", ErrInvalidConfig, w)
			}
		default:
			return fmt.Errorf("%w: unknown wire %q (have: json, protobuf, sse)", ErrInvalidConfig, w)
		}
	}
	def(&c.Runs, 1)
	def(&c.SourceAddrs, 4)
	def(&c.DialConcurrency, 64)
	def(&c.Subs, 100)
	def(&c.Inflight, 4)
	def(&c.PayloadSize, 64)
	if c.Room == "" {
		c.Room = "bench"
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = time.Second
	}
	if c.Settle == 0 {
		c.Settle = 2 * time.Second
	}
	if c.Hold == 0 {
		c.Hold = 60 * time.Second
	}
	if c.Type == "" {
		c.Type = "echo"
	}
	if c.NATSURL == "" {
		c.NATSURL = "nats://127.0.0.1:4222"
	}
	if c.Prefix == "" {
		c.Prefix = "natter"
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	for _, s := range c.Scenarios {
		switch s {
		case ScenarioIdle, ScenarioIdleCost, ScenarioFanout, ScenarioRPC, ScenarioWireBytes:
		default:
			return fmt.Errorf("%w: unknown scenario %q (have: idle, idlecost, fanout, rpc, wirebytes)", ErrInvalidConfig, s)
		}
	}
	for _, s := range c.Servers {
		switch s {
		case ServerNatter:
		case ServerFloor:
			if slices.Contains(c.Scenarios, ScenarioRPC) {
				return fmt.Errorf("%w: the floor server has no RPC: run rpc against natter only", ErrInvalidConfig)
			}
			if slices.Contains(c.Scenarios, ScenarioIdleCost) || slices.Contains(c.Scenarios, ScenarioWireBytes) {
				return fmt.Errorf("%w: the floor server has no NATS and no binary wire: run idlecost and wirebytes against natter only", ErrInvalidConfig)
			}
			if len(c.FloorCommand) == 0 {
				return fmt.Errorf("%w: the floor server needs FloorCommand", ErrInvalidConfig)
			}
		default:
			return fmt.Errorf("%w: unknown server %q (have: natter, floor)", ErrInvalidConfig, s)
		}
	}
	switch {
	case c.Runs < 1, c.SourceAddrs < 1, c.DialConcurrency < 1, c.Subs < 1, c.Inflight < 1, c.PayloadSize < 0, c.Messages < 1:
		return fmt.Errorf("%w: runs, source-addrs, dial-concurrency, subs, inflight and messages must be >= 1, payload-size >= 0", ErrInvalidConfig)
	case c.Conns < 0, c.Rate < 0, c.Duration < 0, c.Warmup < 0, c.Settle < 0, c.Hold < 0:
		return fmt.Errorf("%w: negative conns, rate or durations", ErrInvalidConfig)
	case c.Inflight > 64:
		return fmt.Errorf("%w: the edge allows 64 RPCs in flight per connection", ErrInvalidConfig)
	}
	for _, pid := range c.NATSPids {
		if pid < 1 {
			return fmt.Errorf("%w: NATS pid %d", ErrInvalidConfig, pid)
		}
	}
	return nil
}

// forScenario returns cfg with the scenario's defaults for Conns and Rate.
func (c Config) forScenario(s string) (*Config, error) {
	switch s {
	case ScenarioIdle, ScenarioIdleCost:
		if c.Conns == 0 {
			c.Conns = 1000
		}
	case ScenarioRPC:
		if c.Conns == 0 {
			c.Conns = 20
		}
		if c.Rate == 0 {
			c.Rate = 1000
		}
		if c.Rate < c.Conns {
			return nil, fmt.Errorf("%w: rpc needs rate >= conns", ErrInvalidConfig)
		}
	case ScenarioFanout, ScenarioWireBytes:
		if c.Rate == 0 {
			c.Rate = 100
		}
	}
	return &c, nil
}

// clientConns is how many sockets scenario s opens in this process.
func (c *Config) clientConns(s string) int {
	switch s {
	case ScenarioFanout:
		return c.Subs
	case ScenarioWireBytes:
		return 3
	}
	return c.Conns
}

// clientFileMargin is what this process needs besides its client sockets.
const clientFileMargin = 64

// target is a server under load.
type target struct {
	name    string
	url     string
	pid     int
	baseRSS int64 // KiB, before its first idle run
	floor   *floorProc
}

func (t *target) publisher(cfg *Config) (publisher, error) {
	if t.floor != nil {
		return &floorPublisher{addr: t.floor.addr, room: cfg.Room}, nil
	}
	return newNATSPublisher(cfg)
}

// Run runs every scenario against every server, cfg.Runs times each, and
// writes one line per run to cfg.Out, plus a median line per scenario and
// server when cfg.Runs > 1. It returns the results in the order written.
func Run(ctx context.Context, cfg Config) ([]*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	limit, err := RaiseFileLimit()
	if err != nil {
		return nil, err
	}
	for _, s := range cfg.Scenarios {
		sc, err := cfg.forScenario(s)
		if err != nil {
			return nil, err
		}
		if n := sc.clientConns(s); n+clientFileMargin > limit {
			return nil, fmt.Errorf("%w: %d connections need about %d open files, but this process may open %d (the hard limit; see ulimit -Hn)", ErrInvalidConfig, n, n+clientFileMargin, limit)
		}
	}
	targets := make([]*target, 0, len(cfg.Servers))
	defer func() {
		for _, t := range targets {
			if t.floor != nil {
				t.floor.stop()
			}
		}
	}()
	for _, name := range cfg.Servers {
		t, err := newTarget(ctx, &cfg, name)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	var out []*Result
	for _, s := range cfg.Scenarios {
		sc, _ := cfg.forScenario(s)
		wires := cfg.Wires
		if s == ScenarioRPC || s == ScenarioWireBytes {
			wires = []string{WireJSON} // rpc: JSON only; wirebytes: both wires in each run
		}
		for _, t := range targets {
			for _, w := range wires {
				sc.wire = w
				var runs []*Result
				for run := 1; run <= cfg.Runs; run++ {
					if len(out) > 0 && !sleepCtx(ctx, cfg.Settle) {
						return out, ctx.Err()
					}
					r, err := runOne(ctx, sc, s, t, run)
					if err != nil {
						return out, fmt.Errorf("%s against %s (wire %s): %w", s, t.name, w, err)
					}
					fmt.Fprintln(cfg.Out, r)
					runs = append(runs, r)
					out = append(out, r)
				}
				if len(runs) > 1 {
					m := Median(runs)
					fmt.Fprintln(cfg.Out, m)
					out = append(out, m)
				}
			}
		}
	}
	return out, nil
}

func runOne(ctx context.Context, cfg *Config, scenario string, t *target, run int) (*Result, error) {
	// The process may have gone since the last run.
	if _, err := sampleProc(t.pid); err != nil {
		return nil, err
	}
	switch scenario {
	case ScenarioIdle:
		return runIdle(ctx, cfg, t, run)
	case ScenarioIdleCost:
		return runIdleCost(ctx, cfg, t, run)
	case ScenarioFanout:
		return runFanout(ctx, cfg, t, run)
	case ScenarioWireBytes:
		return runWireBytes(ctx, cfg, t, run)
	default:
		return runRPC(ctx, cfg, t, run)
	}
}

func newTarget(ctx context.Context, cfg *Config, name string) (*target, error) {
	if name == ServerFloor {
		p, err := startFloor(ctx, cfg.FloorCommand, cfg.Log)
		if err != nil {
			return nil, err
		}
		return &target{name: name, url: "ws://" + p.addr + "/ws", pid: p.pid(), floor: p}, nil
	}
	t := &target{name: name, url: cfg.URL, pid: cfg.Pid}
	if t.pid == 0 {
		u, err := url.Parse(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("%w: url: %v", ErrInvalidConfig, err)
		}
		port, err := strconv.Atoi(u.Port())
		if u.Port() == "" {
			port, err = 80, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: url %q: port: %v", ErrInvalidConfig, cfg.URL, err)
		}
		if t.pid, err = listenerPid(port); err != nil {
			return nil, fmt.Errorf("%w (is the edge running at %s?)", err, cfg.URL)
		}
	}
	if _, err := sampleProc(t.pid); err != nil {
		return nil, err
	}
	return t, nil
}
