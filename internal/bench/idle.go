package bench

import (
	"context"
	"fmt"
	"time"
)

// runIdle connects cfg.Conns members to cfg.Room and reports the
// handshake(+join) rate and the server's RSS growth per connection.
func runIdle(ctx context.Context, cfg *Config, t *target, run int) (*Result, error) {
	if err := checkServerFiles(t.pid, cfg.Conns); err != nil {
		return nil, err
	}
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	d.wire = cfg.wire
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
	dialed, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if n := p.errs.total(); n > 0 {
		fmt.Fprintf(cfg.Log, "bench: idle: %d of %d connections failed: %s\n", n, cfg.Conns, p.errs.String())
	}
	sleepCtx(ctx, cfg.Settle)
	after, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	wall := p.last.Sub(p.first)

	var l line
	l.add("scenario", "idle")
	l.add("server", t.name)
	l.add("wire", cfg.wire)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("conns", int64(cfg.Conns))
	l.int("joined", int64(joined))
	l.int("failed", int64(p.errs.total()))
	l.int("closed", int64(p.closedByServer()))
	if joined > 0 && wall > 0 {
		l.num("handshakes_per_s", float64(joined)/wall.Seconds(), 0, "")
	} else {
		l.num("handshakes_per_s", 0, 0, "")
	}
	l.num("dial_s", wall.Seconds(), 2, "")
	l.num("rss_base_mib", float64(t.baseRSS)/1024, 1, "")
	l.num("rss_after_mib", float64(after.rssKiB)/1024, 1, "")
	perConn := 0.0
	if joined > 0 {
		perConn = float64(after.rssKiB-t.baseRSS) / float64(joined)
	}
	l.num("rss_per_conn_kib", perConn, 2, "")
	l.num("server_cpu_s", dialed.cpuSeconds()-before.cpuSeconds(), 2, "")
	l.num("server_cpu_ms_per_conn", (dialed.cpuSeconds()-before.cpuSeconds())*1000/float64(max(joined, 1)), 3, "")
	l.add("settle", cfg.Settle.String())
	return &Result{Scenario: "idle", Server: t.name, Fields: l.fields}, nil
}

// checkServerFiles refuses n connections when the server's own open-file
// limit cannot hold them.
func checkServerFiles(pid, n int) error {
	lim, err := openFileLimit(pid)
	if err != nil {
		return err
	}
	if n+serverFileMargin > lim {
		return fmt.Errorf("%w: %d connections need about %d open files in the server (pid %d), whose limit is %d", ErrInvalidConfig, n, n+serverFileMargin, pid, lim)
	}
	return nil
}

// serverFileMargin is what a server needs besides its client sockets
// (listeners, NATS, JetStream files).
const serverFileMargin = 64

// drainWait bounds the wait for messages in flight after a window.
const drainWait = 2 * time.Second
