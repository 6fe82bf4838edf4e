// Package bench generates load against a running edge over loopback and
// prints one line of results per scenario. cmd/bench is its command.
//
// Scenario rpc: Conns connections send request envelopes of Type at a
// steady total Rate (open loop: sends follow the schedule whatever the
// replies do) for Duration, and the line gives the round-trip latency
// percentiles from send to reply.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/pkg/envelope"
)

// ErrInvalidConfig wraps configuration errors.
var ErrInvalidConfig = errors.New("bench: invalid config")

// Config configures a run.
type Config struct {
	URL         string        // edge WebSocket URL, e.g. ws://127.0.0.1:8080/ws
	Scenario    string        // "rpc"
	Conns       int           // connections; default 20 (keep Rate/Conns under the edge's per-connection rate limit)
	Rate        int           // requests per second in total; default 1000
	Duration    time.Duration // measured time; default 10s
	Warmup      time.Duration // unmeasured time before; default 1s
	Type        string        // request type; default "echo"
	PayloadSize int           // bytes of payload text; default 64
	Out         io.Writer     // where the result line goes
}

// Result is one scenario's outcome.
type Result struct {
	Sent, OK, Errors, Lost int
	Latencies              []time.Duration // sorted
}

// Percentile returns the p-th percentile (0..100) of the latencies.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies)-1) * p / 100)
	return r.Latencies[i]
}

// Run runs the scenario and writes its line to cfg.Out.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Conns == 0 {
		cfg.Conns = 20
	}
	if cfg.Rate == 0 {
		cfg.Rate = 1000
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Warmup == 0 {
		cfg.Warmup = time.Second
	}
	if cfg.Type == "" {
		cfg.Type = "echo"
	}
	if cfg.PayloadSize == 0 {
		cfg.PayloadSize = 64
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Scenario != "rpc" {
		return nil, fmt.Errorf("%w: unknown scenario %q (have: rpc)", ErrInvalidConfig, cfg.Scenario)
	}
	if cfg.Conns < 1 || cfg.Rate < 1 || cfg.Rate < cfg.Conns {
		return nil, fmt.Errorf("%w: need conns >= 1 and rate >= conns", ErrInvalidConfig)
	}
	return runRPC(ctx, cfg)
}

type rpcClient struct {
	conn    *gws.Conn
	mu      sync.Mutex
	sent    map[string]time.Time
	measure atomic.Bool
	res     *collector
}

type collector struct {
	mu   sync.Mutex
	lat  []time.Duration
	ok   int
	errs int
}

func (c *rpcClient) OnOpen(*gws.Conn)             {}
func (c *rpcClient) OnClose(*gws.Conn, error)     {}
func (c *rpcClient) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *rpcClient) OnPong(*gws.Conn, []byte)     {}
func (c *rpcClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	now := time.Now()
	var env envelope.Envelope
	err := envelope.DecodeInto(&env, m.Bytes(), 1<<20)
	m.Close()
	if err != nil {
		return
	}
	c.mu.Lock()
	t0, ok := c.sent[env.Meta.CorrelationID]
	delete(c.sent, env.Meta.CorrelationID)
	c.mu.Unlock()
	if !ok || !strings.HasPrefix(env.Meta.CorrelationID, "m") {
		return // warm-up or unknown
	}
	c.res.mu.Lock()
	if env.Type == envelope.TypeRPCError {
		c.res.errs++
	} else {
		c.res.ok++
		c.res.lat = append(c.res.lat, now.Sub(t0))
	}
	c.res.mu.Unlock()
}

func runRPC(ctx context.Context, cfg Config) (*Result, error) {
	res := &collector{}
	clients := make([]*rpcClient, cfg.Conns)
	for i := range clients {
		c := &rpcClient{sent: make(map[string]time.Time), res: res}
		conn, _, err := gws.NewClient(c, &gws.ClientOption{Addr: cfg.URL})
		if err != nil {
			return nil, fmt.Errorf("bench: dial %s: %w", cfg.URL, err)
		}
		_ = conn.SetDeadline(time.Time{})
		c.conn = conn
		clients[i] = c
		go conn.ReadLoop()
	}
	defer func() {
		for _, c := range clients {
			_ = c.conn.WriteClose(1000, nil)
		}
	}()
	payload := strconv.Quote(strings.Repeat("x", cfg.PayloadSize))
	interval := time.Second * time.Duration(cfg.Conns) / time.Duration(cfg.Rate)
	var sent atomic.Int64
	run := func(prefix string, d time.Duration) {
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Stagger the connections over one interval.
				next := time.Now().Add(interval * time.Duration(i) / time.Duration(len(clients)))
				for n := 0; ctx.Err() == nil; n++ {
					time.Sleep(time.Until(next))
					if time.Now().After(end) {
						return
					}
					cid := fmt.Sprintf("%s%d-%d", prefix, i, n)
					frame := `{"type":"` + cfg.Type + `","meta":{"correlationId":"` + cid + `"},"payload":` + payload + `}`
					c.mu.Lock()
					c.sent[cid] = time.Now()
					c.mu.Unlock()
					if prefix == "m" {
						sent.Add(1)
					}
					if err := c.conn.WriteString(frame); err != nil {
						return
					}
					next = next.Add(interval)
				}
			}()
		}
		wg.Wait()
	}
	run("w", cfg.Warmup)
	run("m", cfg.Duration)
	// Let replies in flight arrive.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		res.mu.Lock()
		done := res.ok+res.errs >= int(sent.Load())
		res.mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.mu.Lock()
	r := &Result{Sent: int(sent.Load()), OK: res.ok, Errors: res.errs, Latencies: slices.Clone(res.lat)}
	res.mu.Unlock()
	r.Lost = r.Sent - r.OK - r.Errors
	slices.Sort(r.Latencies)
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 3, 64) }
	fmt.Fprintf(cfg.Out, "scenario=rpc type=%s conns=%d rate=%d/s duration=%s sent=%d ok=%d errors=%d lost=%d p50=%sms p90=%sms p99=%sms max=%sms\n",
		cfg.Type, cfg.Conns, cfg.Rate, cfg.Duration, r.Sent, r.OK, r.Errors, r.Lost,
		ms(r.Percentile(50)), ms(r.Percentile(90)), ms(r.Percentile(99)), ms(r.Percentile(100)))
	return r, nil
}
