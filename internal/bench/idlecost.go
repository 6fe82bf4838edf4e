package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// runIdleCost joins cfg.Conns members to cfg.Room, waits cfg.Settle, holds
// them idle for cfg.Hold and reports what the hold cost: the edge's (and
// the NATS servers') CPU, the JetStream messages written, and the edge's
// RSS per connection after it.
func runIdleCost(ctx context.Context, cfg *Config, t *target, run int) (*Result, error) {
	if err := checkServerFiles(t.pid, cfg.Conns); err != nil {
		return nil, err
	}
	for _, pid := range cfg.NATSPids {
		if pid == t.pid {
			return nil, fmt.Errorf("%w: NATS pid %d is the edge's (a single-binary edge's CPU already includes its NATS): drop it from -nats-pids", ErrInvalidConfig, pid)
		}
		if _, err := sampleProc(pid); err != nil {
			return nil, fmt.Errorf("NATS server (-nats-pids): %w", err)
		}
	}
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	d.wire = cfg.wire
	sr, err := newStreamReader(cfg.NATSURL)
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	// Fail before dialling when the streams cannot be read.
	if _, err := sr.lastSeqs(ctx); err != nil && !errors.Is(err, errNoJetStream) {
		return nil, err
	}
	if run == 1 && len(cfg.NATSPids) == 0 {
		if pid, ok := otherNATSProcess(cfg.NATSURL, t.pid); ok {
			fmt.Fprintf(cfg.Log, "bench: idlecost: NATS at %s is process %d, not the edge (%d): pass -nats-pids to report its CPU\n", cfg.NATSURL, pid, t.pid)
		}
	}

	before, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	if t.baseRSS == 0 {
		t.baseRSS = before.rssKiB
	}
	p := dialMembers(ctx, d, cfg.Conns, cfg.DialConcurrency, cfg.Room, 0, 0)
	defer p.close()
	joined := len(p.members)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if n := p.errs.total(); n > 0 {
		fmt.Fprintf(cfg.Log, "bench: idlecost: %d of %d connections failed: %s\n", n, cfg.Conns, p.errs.String())
	}
	wall := p.last.Sub(p.first)
	if !sleepCtx(ctx, cfg.Settle) {
		return nil, ctx.Err()
	}

	// The hold: streams read first and last, so that their window covers
	// the CPU window.
	seq0, err := sr.lastSeqs(ctx)
	if err != nil && !errors.Is(err, errNoJetStream) {
		return nil, err
	}
	if err != nil {
		fmt.Fprintf(cfg.Log, "bench: idlecost: %v: js_writes is 0\n", err)
	}
	s0, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	n0, err := sampleProcs(cfg.NATSPids)
	if err != nil {
		return nil, err
	}
	b0, w0 := selfCPUSeconds(), time.Now()
	if !sleepCtx(ctx, cfg.Hold) {
		return nil, ctx.Err()
	}
	s1, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	n1, err := sampleProcs(cfg.NATSPids)
	if err != nil {
		return nil, err
	}
	b1, held := selfCPUSeconds(), time.Since(w0)
	seq1, err := sr.lastSeqs(ctx)
	if err != nil && !errors.Is(err, errNoJetStream) {
		return nil, err
	}
	closed := p.closedByServer()
	counts, writes, gone := streamWrites(seq0, seq1)
	if len(gone) > 0 {
		fmt.Fprintf(cfg.Log, "bench: idlecost: streams deleted during the hold, not counted: %s\n", strings.Join(gone, ", "))
	}

	var l line
	l.add("scenario", ScenarioIdleCost)
	l.add("server", t.name)
	l.add("wire", cfg.wire)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("conns", int64(cfg.Conns))
	l.int("joined", int64(joined))
	l.int("failed", int64(p.errs.total()))
	l.int("closed", int64(closed))
	if joined > 0 && wall > 0 {
		l.num("handshakes_per_s", float64(joined)/wall.Seconds(), 0, "")
	} else {
		l.num("handshakes_per_s", 0, 0, "")
	}
	l.num("dial_s", wall.Seconds(), 2, "")
	l.add("hold", cfg.Hold.String())
	l.num("rss_base_mib", float64(t.baseRSS)/1024, 1, "")
	l.num("rss_joined_mib", float64(s0.rssKiB)/1024, 1, "")
	l.num("rss_after_mib", float64(s1.rssKiB)/1024, 1, "")
	perConn := func(s procSample) float64 {
		if joined == 0 {
			return 0
		}
		return float64(s.rssKiB-t.baseRSS) / float64(joined)
	}
	l.num("rss_per_conn_joined_kib", perConn(s0), 2, "")
	l.num("rss_per_conn_kib", perConn(s1), 2, "")
	cpu := s1.cpuSeconds() - s0.cpuSeconds()
	l.num("server_cpu_s", cpu, 2, "")
	l.num("server_cpu_pct", cpu/held.Seconds()*100, 2, "")
	if len(cfg.NATSPids) > 0 {
		var sum, busiest float64
		for i := range n0 {
			c := n1[i].cpuSeconds() - n0[i].cpuSeconds()
			sum += c
			busiest = max(busiest, c)
		}
		l.int("nats_servers", int64(len(cfg.NATSPids)))
		l.num("nats_cpu_s", sum, 2, "")
		l.num("nats_cpu_pct", sum/held.Seconds()*100, 2, "")
		l.num("nats_cpu_pct_max", busiest/held.Seconds()*100, 2, "")
	}
	l.int("js_streams", int64(len(seq1)))
	l.int("js_writes", int64(writes))
	l.num("js_writes_per_s", float64(writes)/held.Seconds(), 1, "")
	for _, m := range streamFields(&l, counts) {
		fmt.Fprintf(cfg.Log, "bench: idlecost: streams counted together as %s\n", m)
	}
	l.num("bench_cpu_s", b1-b0, 2, "")
	l.add("settle", cfg.Settle.String())
	return &Result{Scenario: ScenarioIdleCost, Server: t.name, Fields: l.fields}, nil
}

// sampleProcs samples every pid.
func sampleProcs(pids []int) ([]procSample, error) {
	out := make([]procSample, len(pids))
	for i, pid := range pids {
		s, err := sampleProc(pid)
		if err != nil {
			return nil, fmt.Errorf("NATS server (-nats-pids): %w", err)
		}
		out[i] = s
	}
	return out, nil
}

// otherNATSProcess returns the process listening on the port of the first
// URL in natsURL when it is not the edge's: an external NATS server whose
// CPU the run would leave out.
func otherNATSProcess(natsURL string, edgePid int) (int, bool) {
	first, _, _ := strings.Cut(natsURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return 0, false
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return 0, false
	}
	pid, err := listenerPid(port)
	if err != nil || pid == edgePid {
		return 0, false
	}
	return pid, true
}
