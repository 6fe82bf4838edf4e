package bench

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/pkg/envelope"
)

// rpcClient is one connection of the rpc scenario. The fixed-rate phase
// tracks requests by correlation id in sent; the closed-loop phase keeps
// one request in flight per slot, with ids "c<slot>".
type rpcClient struct {
	conn *gws.Conn
	mu   sync.Mutex
	sent map[string]time.Time
	res  *collector

	loop  atomic.Pointer[closedLoop]
	slots []atomic.Int64 // closed loop: send time of each slot's request, unix ns
	// Closed-loop outcomes inside the window; guarded by mu.
	loopOK, loopErrs int
	loopLat          []time.Duration
}

type collector struct {
	mu   sync.Mutex
	lat  []time.Duration
	ok   int
	errs int
}

// closedLoop is the closed-loop phase: immutable once published, except
// stop.
type closedLoop struct {
	frames        [][]byte // request frame of each slot; nil when traced
	traced        bool     // each request gets its own meta.traceparent
	typ, payload  string   // what traced requests are made of
	winLo, winHi  int64    // unix ns: replies arriving in [winLo, winHi) count
	stop          atomic.Bool
	inflightEnded atomic.Int64 // slots that stopped sending
	totalSlots    int64
}

var (
	loopIDKey = []byte(`"correlationId":"c`)
	rpcErrKey = []byte(`"type":"RPC_ERROR"`)
)

func (c *rpcClient) OnOpen(*gws.Conn)             {}
func (c *rpcClient) OnClose(*gws.Conn, error)     {}
func (c *rpcClient) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *rpcClient) OnPong(*gws.Conn, []byte)     {}
func (c *rpcClient) OnMessage(_ *gws.Conn, m *gws.Message) {
	now := time.Now()
	b := m.Bytes()
	if i := bytes.Index(b, loopIDKey); i >= 0 {
		slot, _, ok := leadingInt(b[i+len(loopIDKey):])
		isErr := bytes.Contains(b, rpcErrKey)
		m.Close()
		if l := c.loop.Load(); ok && l != nil && int(slot) < len(c.slots) {
			c.loopReply(l, int(slot), now, isErr)
		}
		return
	}
	var env envelope.Envelope
	err := envelope.DecodeInto(&env, b, 1<<20)
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

// loopReply counts a closed-loop reply and sends the slot's next request,
// from the read loop: the next request leaves as soon as the reply is in.
func (c *rpcClient) loopReply(l *closedLoop, slot int, now time.Time, isErr bool) {
	ns := now.UnixNano()
	if ns >= l.winLo && ns < l.winHi {
		c.mu.Lock()
		if isErr {
			c.loopErrs++
		} else {
			c.loopOK++
			c.loopLat = append(c.loopLat, time.Duration(ns-c.slots[slot].Load()))
		}
		c.mu.Unlock()
	}
	if l.stop.Load() {
		l.inflightEnded.Add(1)
		return
	}
	c.slots[slot].Store(time.Now().UnixNano())
	if err := c.conn.WriteMessage(gws.OpcodeText, l.frame(slot)); err != nil {
		l.inflightEnded.Add(1)
	}
}

// frame returns the next request of slot: the slot's fixed frame, or a
// new one with its own trace context when traced.
func (l *closedLoop) frame(slot int) []byte {
	if !l.traced {
		return l.frames[slot]
	}
	return appendRPCFrame(nil, l.typ, "c"+strconv.Itoa(slot), true, l.payload)
}

func runRPC(ctx context.Context, cfg *Config, t *target, run int) (*Result, error) {
	if err := checkServerFiles(t.pid, cfg.Conns); err != nil {
		return nil, err
	}
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	res := &collector{}
	clients := make([]*rpcClient, 0, cfg.Conns)
	var loops sync.WaitGroup
	defer func() {
		for _, c := range clients {
			_ = c.conn.WriteClose(1000, nil)
		}
		waitBounded(&loops, closeWait)
	}()
	for i := range cfg.Conns {
		c := &rpcClient{sent: make(map[string]time.Time), res: res, slots: make([]atomic.Int64, cfg.Inflight)}
		conn, err := d.dial(i, c, &loops, nil)
		if err != nil {
			return nil, fmt.Errorf("bench: rpc: dial %s: %s", t.url, errorKind(err))
		}
		c.conn = conn
		clients = append(clients, c)
	}
	payload := strconv.Quote(strings.Repeat("x", cfg.PayloadSize))
	interval := time.Second * time.Duration(cfg.Conns) / time.Duration(cfg.Rate)
	var sent atomic.Int64
	fixed := func(prefix string, d time.Duration) {
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for i, c := range clients {
			wg.Go(func() {
				// Stagger the connections over one interval.
				next := time.Now().Add(interval * time.Duration(i) / time.Duration(len(clients)))
				for n := 0; ctx.Err() == nil; n++ {
					time.Sleep(time.Until(next))
					if time.Now().After(end) {
						return
					}
					cid := fmt.Sprintf("%s%d-%d", prefix, i, n)
					frame := string(appendRPCFrame(nil, cfg.Type, cid, cfg.Traceparent, payload))
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
			})
		}
		wg.Wait()
	}
	fixed("w", cfg.Warmup)
	fixed("m", cfg.Duration)
	// Let replies in flight arrive.
	deadline := time.Now().Add(drainWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		res.mu.Lock()
		done := res.ok+res.errs >= int(sent.Load())
		res.mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.mu.Lock()
	lat := slices.Clone(res.lat)
	ok, errs := res.ok, res.errs
	res.mu.Unlock()
	slices.Sort(lat)
	lost := int(sent.Load()) - ok - errs

	mx, err := runClosedLoop(ctx, cfg, t, clients, payload)
	if err != nil {
		return nil, err
	}

	var l line
	l.add("scenario", "rpc")
	l.add("server", t.name)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.add("type", cfg.Type)
	if cfg.Traceparent {
		l.add("traceparent", "sampled")
	}
	l.int("conns", int64(cfg.Conns))
	l.add("rate", strconv.Itoa(cfg.Rate)+"/s")
	l.add("duration", cfg.Duration.String())
	l.int("sent", sent.Load())
	l.int("ok", int64(ok))
	l.int("errors", int64(errs))
	l.int("lost", int64(lost))
	l.ms("p50", percentile(lat, 50))
	l.ms("p90", percentile(lat, 90))
	l.ms("p99", percentile(lat, 99))
	l.ms("max", percentile(lat, 100))
	l.int("inflight", int64(cfg.Inflight))
	l.num("max_rate", float64(mx.ok)/cfg.Duration.Seconds(), 0, "/s")
	l.int("max_ok", int64(mx.ok))
	l.int("max_errors", int64(mx.errs))
	l.ms("max_p50", percentile(mx.lat, 50))
	l.ms("max_p99", percentile(mx.lat, 99))
	l.num("max_server_cpu_pct", mx.serverCPU/mx.wall.Seconds()*100, 0, "")
	l.num("max_bench_cpu_pct", mx.benchCPU/mx.wall.Seconds()*100, 0, "")
	if mx.errs > 0 {
		fmt.Fprintf(cfg.Log, "bench: rpc: %d errors in the closed loop; RESOURCE_EXHAUSTED means the edge's --rate-limit (default 100/s per connection) capped it: run the edge with --rate-limit -1\n", mx.errs)
	}
	return &Result{Scenario: "rpc", Server: t.name, Fields: l.fields, Latencies: lat}, nil
}

type loopOutcome struct {
	ok, errs            int
	lat                 []time.Duration // sorted
	serverCPU, benchCPU float64
	wall                time.Duration
}

// runClosedLoop keeps cfg.Inflight requests in flight on every connection,
// each sent as soon as the previous reply arrives, and counts the replies
// that arrive in the measured window after the warm-up.
func runClosedLoop(ctx context.Context, cfg *Config, t *target, clients []*rpcClient, payload string) (*loopOutcome, error) {
	start := time.Now()
	l := &closedLoop{
		winLo:      start.Add(cfg.Warmup).UnixNano(),
		winHi:      start.Add(cfg.Warmup + cfg.Duration).UnixNano(),
		totalSlots: int64(len(clients) * cfg.Inflight),
		traced:     cfg.Traceparent,
		typ:        cfg.Type,
		payload:    payload,
	}
	if !l.traced {
		for s := range cfg.Inflight {
			l.frames = append(l.frames, appendRPCFrame(nil, cfg.Type, "c"+strconv.Itoa(s), false, payload))
		}
	}
	for _, c := range clients {
		c.loop.Store(l)
	}
	for _, c := range clients {
		for s := range cfg.Inflight {
			c.slots[s].Store(time.Now().UnixNano())
			if err := c.conn.WriteMessage(gws.OpcodeText, l.frame(s)); err != nil {
				l.inflightEnded.Add(1)
			}
		}
	}
	if !sleepCtx(ctx, time.Until(time.Unix(0, l.winLo))) {
		l.stop.Store(true)
		return nil, ctx.Err()
	}
	s0, err := sampleProc(t.pid)
	if err != nil {
		l.stop.Store(true)
		return nil, err
	}
	b0 := selfCPUSeconds()
	w0 := time.Now()
	sleepCtx(ctx, time.Until(time.Unix(0, l.winHi)))
	s1, err := sampleProc(t.pid)
	b1 := selfCPUSeconds()
	wall := time.Since(w0)
	l.stop.Store(true)
	if err != nil {
		return nil, err
	}
	// Let the requests in flight end, so the connections are quiet.
	deadline := time.Now().Add(drainWait)
	for l.inflightEnded.Load() < l.totalSlots && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	out := &loopOutcome{serverCPU: s1.cpuSeconds() - s0.cpuSeconds(), benchCPU: b1 - b0, wall: wall}
	for _, c := range clients {
		c.mu.Lock()
		out.ok += c.loopOK
		out.errs += c.loopErrs
		out.lat = append(out.lat, c.loopLat...)
		c.mu.Unlock()
	}
	slices.Sort(out.lat)
	return out, ctx.Err()
}

// sleepCtx sleeps for d or until ctx ends; it reports whether ctx is
// still alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
