package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

// The types of the fanout scenario's messages: a tick with padding, or
// with a dashboard refresh (FanoutPayload "dashboard").
const (
	tickType     = "bench.tick"
	dashTickType = "bench.dashtick"
)

// appendTick appends a tick payload: its send time t (unix ns) and
// sequence number n first, so that members find them cheaply, then pad.
func appendTick(b []byte, t, n int64, pad string) []byte {
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, t, 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"pad":"`...)
	b = append(b, pad...)
	return append(b, `"}`...)
}

// appendDashTick appends a bench.dashtick payload: t and n first, as in a
// tick, then the dashboard.
func appendDashTick(b []byte, t, n int64, panel []byte) []byte {
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, t, 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"panel":`...)
	b = append(b, panel...)
	return append(b, '}')
}

// pace calls send for n = 0..count-1, send n being due at start +
// n/rate: an open loop that catches up at once when late. It returns how
// far behind schedule a send started, at most.
func pace(ctx context.Context, start time.Time, rate int, count int64, send func(n int64, due time.Time) error) (time.Duration, error) {
	var lag time.Duration
	for n := range count {
		due := start.Add(time.Duration(n * int64(time.Second) / int64(rate)))
		if d := time.Until(due); d > 0 {
			if !sleepCtx(ctx, d) {
				return lag, ctx.Err()
			}
		} else {
			lag = max(lag, -d)
		}
		if err := send(n, due); err != nil {
			return lag, err
		}
	}
	return lag, nil
}

// publisher sends the ticks of a fanout run to the room.
type publisher interface {
	// publish sends count ticks of pad bytes of padding at rate from start
	// and returns the largest lag behind schedule.
	publish(ctx context.Context, start time.Time, rate int, count int64, pad int) (time.Duration, error)
	Close()
}

// natsPublisher publishes envelopes on the room's NATS subject, as any
// service does; the edge adds meta.room.
type natsPublisher struct {
	nc      *nats.Conn
	subject string
	panel   []byte // with FanoutPayload "dashboard": the dashboard's JSON
	traced  bool   // each message gets its own Traceparent header
}

func newNATSPublisher(cfg *Config) (*natsPublisher, error) {
	ns, err := envelope.NewNamespace(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	subject, err := ns.Room(cfg.Room)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("natter-bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("bench: connect NATS %s: %w", cfg.NATSURL, err)
	}
	p := &natsPublisher{nc: nc, subject: string(subject), traced: cfg.Traceparent}
	if cfg.FanoutPayload == FanoutDashboard {
		p.panel = dashboardPayload(15, -1)
	}
	return p, nil
}

func (p *natsPublisher) Close() { p.nc.Close() }

func (p *natsPublisher) publish(ctx context.Context, start time.Time, rate int, count int64, pad int) (time.Duration, error) {
	padding := strings.Repeat("x", pad)
	prefix := `{"type":"` + tickType + `","payload":`
	if p.panel != nil {
		prefix = `{"type":"` + dashTickType + `","payload":`
	}
	buf := make([]byte, 0, len(prefix)+pad+len(p.panel)+64)
	lag, err := pace(ctx, start, rate, count, func(n int64, _ time.Time) error {
		b := append(buf[:0], prefix...)
		if p.panel != nil {
			b = appendDashTick(b, time.Now().UnixNano(), n, p.panel)
		} else {
			b = appendTick(b, time.Now().UnixNano(), n, padding)
		}
		b = append(b, '}')
		if p.traced {
			h := nats.Header{tracing.HeaderTraceparent: []string{newTraceparent()}}
			return p.nc.PublishMsg(&nats.Msg{Subject: p.subject, Header: h, Data: b}) // copies
		}
		return p.nc.Publish(p.subject, b) // copies b into its buffer
	})
	if err != nil {
		return lag, fmt.Errorf("bench: publish: %w", err)
	}
	if err := p.nc.FlushTimeout(5 * time.Second); err != nil {
		return lag, fmt.Errorf("bench: publish: flush: %w", err)
	}
	return lag, nil
}

// floorPublisher asks the floor server to generate the ticks itself.
type floorPublisher struct {
	addr, room string
}

func (p *floorPublisher) Close() {}

func (p *floorPublisher) publish(ctx context.Context, start time.Time, rate int, count int64, pad int) (time.Duration, error) {
	q := url.Values{}
	q.Set("start", strconv.FormatInt(start.UnixNano(), 10))
	q.Set("rate", strconv.Itoa(rate))
	q.Set("count", strconv.FormatInt(count, 10))
	q.Set("pad", strconv.Itoa(pad))
	q.Set("room", p.room)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.addr+"/publish?"+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	// The floor generates the ticks itself and may fall behind; it has
	// until the late deliveries would stop being counted, and a margin.
	bound := time.Until(start) + time.Duration(count)*time.Second/time.Duration(rate) + drainWait + lateWait + 10*time.Second
	c := &http.Client{Timeout: bound}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			return 0, fmt.Errorf("bench: floor publish did not finish within %s (the floor cannot keep up with this load): %w", bound.Round(time.Second), err)
		}
		return 0, fmt.Errorf("bench: floor publish: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bench: floor publish: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var r publishReply
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("bench: floor publish: %w", err)
	}
	if r.Sent != count {
		return 0, fmt.Errorf("bench: floor publish: sent %d of %d", r.Sent, count)
	}
	return time.Duration(r.LagMaxNs), nil
}

// lateWait bounds the time spent counting late deliveries after the drain.
const lateWait = 20 * time.Second

// publishReply is the floor server's answer to POST /publish.
type publishReply struct {
	Sent     int64 `json:"sent"`
	LagMaxNs int64 `json:"lagMaxNs"`
}

// runFanout joins cfg.Subs members to cfg.Room, publishes cfg.Rate ticks
// per second for Warmup+Duration, and measures the ticks of the window.
func runFanout(ctx context.Context, cfg *Config, t *target, run int) (*Result, error) {
	if err := checkServerFiles(t.pid, cfg.Subs); err != nil {
		return nil, err
	}
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	d.wire = cfg.wire
	pub, err := t.publisher(cfg)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	warm := int64(cfg.Warmup.Seconds() * float64(cfg.Rate))
	measured := int64(cfg.Duration.Seconds() * float64(cfg.Rate))
	if measured < 1 {
		return nil, fmt.Errorf("%w: rate x duration gives no message to measure", ErrInvalidConfig)
	}
	p := dialMembers(ctx, d, cfg.Subs, cfg.DialConcurrency, cfg.Room, warm, warm+measured)
	defer p.close()
	if n := p.errs.total(); n > 0 {
		return nil, fmt.Errorf("bench: fanout: %d of %d subscribers failed: %s", n, cfg.Subs, p.errs.String())
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	type pubResult struct {
		lag time.Duration
		err error
	}
	start := time.Now().Add(100 * time.Millisecond)
	done := make(chan pubResult, 1)
	var pr *pubResult // the publisher's result, once in
	pctx, cancelPub := context.WithCancel(ctx)
	go func() {
		lag, err := pub.publish(pctx, start, cfg.Rate, warm+measured, cfg.PayloadSize)
		done <- pubResult{lag, err}
	}()
	defer func() {
		// On early returns, stop the publisher and wait for it.
		cancelPub()
		if pr == nil {
			<-done
		}
	}()
	if !sleepCtx(ctx, time.Until(start.Add(cfg.Warmup))) {
		return nil, ctx.Err()
	}
	s0, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	b0 := selfCPUSeconds()
	w0 := time.Now()
	expected := int64(len(p.members)) * measured
	got := func() int64 {
		var n int64
		for _, m := range p.members {
			n += m.got.Load()
		}
		return n
	}
	// The window ends at the last expected delivery, or drainWait after
	// the last tick was due, whether or not the publisher has caught up.
	poll := func() error {
		if pr == nil {
			select {
			case r := <-done:
				pr = &r
			default:
			}
		}
		if pr != nil && pr.err != nil {
			return pr.err
		}
		return ctx.Err()
	}
	for deadline := start.Add(cfg.Warmup + cfg.Duration + drainWait); got() < expected && time.Now().Before(deadline); {
		if err := poll(); err != nil {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	s1, err := sampleProc(t.pid)
	b1 := selfCPUSeconds()
	wall := time.Since(w0)
	if err != nil {
		return nil, err
	}
	delivered := got()
	// An overloaded server may still be delivering: those messages are
	// late, not lost. Count them while they keep coming.
	progress, last := time.Now(), delivered
	for deadline := progress.Add(lateWait); last < expected && time.Since(progress) < time.Second && time.Now().Before(deadline); {
		if err := poll(); err != nil {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
		if n := got(); n != last {
			progress, last = time.Now(), n
		}
	}
	if pr == nil {
		r := <-done // bounded: see the publishers
		pr = &r
	}
	if pr.err != nil {
		return nil, pr.err
	}
	closed := p.closedByServer()
	p.close() // the read loops have ended: their latencies can be read
	lat := make([]time.Duration, 0, expected)
	for _, m := range p.members {
		lat = append(lat, m.lat...)
	}
	slices.Sort(lat)
	late := int64(len(lat)) - delivered
	serverCPU := s1.cpuSeconds() - s0.cpuSeconds()

	var l line
	l.add("scenario", "fanout")
	l.add("server", t.name)
	l.add("wire", cfg.wire)
	if cfg.Traceparent {
		l.add("traceparent", "sampled")
	}
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("subs", int64(len(p.members)))
	l.add("rate", strconv.Itoa(cfg.Rate)+"/s")
	l.add("duration", cfg.Duration.String())
	if cfg.FanoutPayload == FanoutDashboard {
		l.add("kind", FanoutDashboard)
	} else {
		l.int("payload", int64(cfg.PayloadSize))
	}
	l.int("sent", measured)
	l.int("expected", expected)
	l.int("delivered", delivered)
	l.int("late", late)
	l.int("lost", expected-delivered-late)
	l.int("closed", int64(closed))
	l.num("deliveries_per_s", float64(delivered)/cfg.Duration.Seconds(), 0, "")
	l.ms("p50", percentile(lat, 50))
	l.ms("p99", percentile(lat, 99))
	l.ms("max", percentile(lat, 100))
	l.ms("pub_lag_max", pr.lag)
	l.num("server_cpu_s", serverCPU, 2, "")
	l.num("server_cpu_pct", serverCPU/wall.Seconds()*100, 0, "")
	if delivered > 0 {
		l.num("cpu_s_per_million", serverCPU/float64(delivered)*1e6, 2, "")
	} else {
		l.add("cpu_s_per_million", "NaN")
	}
	l.num("bench_cpu_s", b1-b0, 2, "")
	return &Result{Scenario: "fanout", Server: t.name, Fields: l.fields, Latencies: lat}, nil
}
