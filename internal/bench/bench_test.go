package bench_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/testenv"
)

// TestMain lets the test binary serve as the floor server child, as
// cmd/bench does: "<test binary> -serve-floor 127.0.0.1:0", and as an
// external NATS server: "<test binary> -serve-nats <store dir>".
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "-serve-floor" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := bench.ServeFloor(ctx, os.Args[2], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "-serve-nats" {
		serveNATS(os.Args[2])
		return
	}
	os.Exit(m.Run())
}

// natsReadyPrefix starts the line a -serve-nats child prints with its URL.
const natsReadyPrefix = "nats listening on "

// serveNATS runs an embedded nats-server with JetStream in storeDir on a
// free loopback port until SIGTERM or SIGKILL.
func serveNATS(storeDir string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := natsd.Start(natsd.Config{Addr: "127.0.0.1:0", StoreDir: storeDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(natsReadyPrefix + s.ClientURL())
	<-ctx.Done()
	s.Shutdown()
}

// startNATSProcess runs this test binary as an external NATS server (a
// child process, killed at cleanup) and returns its URL and pid.
func startNATSProcess(t *testing.T) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-serve-nats", t.TempDir())
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	ready := make(chan string, 1)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), natsReadyPrefix); ok {
				ready <- u
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	select {
	case u := <-ready:
		return u, cmd.Process.Pid
	case <-done:
		t.Fatal("NATS child exited before listening")
	case <-time.After(10 * time.Second):
		t.Fatal("NATS child did not listen within 10s")
	}
	return "", 0
}

// fieldRE is one key=value field; values have no spaces.
var fieldRE = regexp.MustCompile(`^[a-z0-9_]+=[^ =]+$`)

// checkLine fails unless line is "scenario=<scenario> server=<server> ..."
// made of key=value fields, and every key in numeric has a number.
func checkLine(t *testing.T, r *bench.Result, scenario, server string, numeric ...string) {
	t.Helper()
	line := r.String()
	t.Log(line)
	if !strings.HasPrefix(line, "scenario="+scenario+" server="+server+" ") {
		t.Fatalf("line: %q", line)
	}
	for f := range strings.FieldsSeq(line) {
		if !fieldRE.MatchString(f) {
			t.Fatalf("field %q in line %q", f, line)
		}
	}
	for _, k := range numeric {
		if _, ok := r.Number(k); !ok {
			t.Fatalf("%s is not a number in %q", k, line)
		}
	}
}

func number(t *testing.T, r *bench.Result, key string) float64 {
	t.Helper()
	v, ok := r.Number(key)
	if !ok {
		t.Fatalf("no number %s in %q", key, r)
	}
	return v
}

// wantEqual checks integer fields.
func wantEqual(t *testing.T, r *bench.Result, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if got := number(t, r, k); got != w {
			t.Errorf("%s = %v, want %v in %q", k, got, w, r)
		}
	}
}

func wantPositive(t *testing.T, r *bench.Result, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if v := number(t, r, k); v <= 0 {
			t.Errorf("%s = %v, want > 0 in %q", k, v, r)
		}
	}
}

// startEdge starts a mesh (testenv.NewMesh) whose in-process edge lets
// anyone in (anonymous); the edge shares this process, so the tests pass
// os.Getpid() as the server's pid. It returns the edge and the NATS URL.
func startEdge(t *testing.T, cfg edge.Config) (*testenv.Edge, string) {
	t.Helper()
	m := testenv.NewMesh(t, testenv.MeshOptions{Edge: anyone(cfg)})
	return m.Edge, m.URL
}

// startEdgeOn starts the built-in worker and an in-process edge that lets
// anyone in on the NATS server at natsURL, which may be another process.
func startEdgeOn(t *testing.T, natsURL string, cfg edge.Config) *testenv.Edge {
	t.Helper()
	testenv.Worker(t, testenv.Connect(t, natsURL))
	cfg.NATS.Conn = testenv.Connect(t, natsURL)
	return testenv.StartEdge(t, *anyone(cfg))
}

func anyone(cfg edge.Config) *edge.Config {
	cfg.Auth.Anonymous = true
	cfg.Auth.PublicRooms = []string{"*"}
	return &cfg
}

func TestRPCScenario(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = -1
	e, _ := startEdge(t, cfg)
	var out strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"rpc"}, Conns: 4, Rate: 200,
		Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || out.String() != rs[0].String()+"\n" {
		t.Fatalf("results %v, output %q", rs, out.String())
	}
	r := rs[0]
	checkLine(t, r, "rpc", "natter", "p50", "p99", "max_rate", "max_p50", "max_server_cpu_pct")
	sent := number(t, r, "sent")
	if sent < 50 {
		t.Fatalf("sent %v", sent)
	}
	wantEqual(t, r, map[string]float64{"ok": sent, "errors": 0, "lost": 0, "max_errors": 0})
	wantPositive(t, r, "max_rate", "max_ok", "p50", "max_p50")
	if p50, p99 := r.Percentile(50), r.Percentile(99); p50 <= 0 || p99 < p50 {
		t.Fatalf("percentiles p50 %s p99 %s", p50, p99)
	}
}

// TestRPCRateLimited: the closed loop against an edge with its default
// per-connection rate limit reports the refusals as max_errors.
func TestRPCRateLimited(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = 20
	cfg.Limits.MessageBurst = 1
	e, _ := startEdge(t, cfg)
	var log strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"rpc"}, Conns: 2, Rate: 10,
		Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Log: &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	wantPositive(t, rs[0], "max_errors")
	if !strings.Contains(log.String(), "--rate-limit") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestIdleScenario(t *testing.T) {
	e, _ := startEdge(t, edge.DefaultConfig()) // handshakes: 50/s per IP, bursts of 100
	base := runtime.NumGoroutine()
	var out strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"idle"}, Conns: 50, Runs: 2,
		Settle: 100 * time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || strings.Count(out.String(), "\n") != 3 {
		t.Fatalf("want 2 runs and a median, got %q", out.String())
	}
	for i, r := range rs[:2] {
		checkLine(t, r, "idle", "natter", "rss_per_conn_kib", "rss_base_mib", "rss_after_mib", "server_cpu_s")
		wantEqual(t, r, map[string]float64{"run": float64(i + 1), "conns": 50, "joined": 50, "failed": 0, "closed": 0})
		wantPositive(t, r, "handshakes_per_s", "dial_s", "rss_base_mib", "rss_after_mib")
	}
	m := rs[2]
	if m.Get("run") != "median" || m.Get("runs") != "2" || m.Get("joined") != "50" {
		t.Fatalf("median line %q", m)
	}
	// Every connection was closed: the edge lets them go.
	testenv.Eventually(t, 5*time.Second, "edge connections closed", func() bool { return e.Stats().Connections == 0 })
	testenv.GoroutinesSettle(t, base, 5, 5*time.Second)
}

// TestIdleFailuresCounted: handshakes the edge refuses are counted, not
// retried, and their kind is logged.
func TestIdleFailuresCounted(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.Limits.HandshakeRate = 1
	cfg.Limits.HandshakeBurst = 5
	e, _ := startEdge(t, cfg)
	var log strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"idle"}, Conns: 20, SourceAddrs: 1,
		Settle: 10 * time.Millisecond, Log: &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	joined, failed := number(t, r, "joined"), number(t, r, "failed")
	if joined < 5 || failed < 1 || joined+failed != 20 {
		t.Fatalf("line %q", r)
	}
	if !strings.Contains(log.String(), "HTTP 429") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestFanoutScenario(t *testing.T) {
	e, natsURL := startEdge(t, edge.DefaultConfig())
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"fanout"}, NATSURL: natsURL,
		Subs: 20, Rate: 50, Duration: time.Second, Warmup: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	checkLine(t, r, "fanout", "natter", "p50", "p99", "max", "pub_lag_max", "server_cpu_s", "server_cpu_pct", "cpu_s_per_million", "bench_cpu_s")
	// Delivered in time or late (a loaded machine), but never lost.
	wantEqual(t, r, map[string]float64{"subs": 20, "sent": 50, "expected": 1000, "lost": 0, "closed": 0})
	if d, l := number(t, r, "delivered"), number(t, r, "late"); d+l != 1000 || d == 0 {
		t.Fatalf("delivered %v + late %v", d, l)
	}
	wantPositive(t, r, "deliveries_per_s", "p50", "p99", "max")
	if len(r.Latencies) != 1000 || r.Latencies[0] <= 0 {
		t.Fatalf("%d latencies, first %v", len(r.Latencies), r.Latencies)
	}
}

// TestFloor runs idle and fanout against the floor server as a child
// process (this test binary) and against the edge alike.
func TestFloor(t *testing.T) {
	e, natsURL := startEdge(t, edge.DefaultConfig())
	var out strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), NATSURL: natsURL,
		Scenarios: []string{"idle", "fanout"}, Servers: []string{"natter", "floor"},
		FloorCommand: []string{os.Args[0], "-serve-floor", "127.0.0.1:0"},
		Conns:        30, Subs: 10, Rate: 50, Duration: time.Second, Warmup: 200 * time.Millisecond,
		Settle: 100 * time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("output %q", out.String())
	}
	for i, want := range []struct{ scenario, server string }{{"idle", "natter"}, {"idle", "floor"}, {"fanout", "natter"}, {"fanout", "floor"}} {
		r := rs[i]
		if r.Scenario != want.scenario || r.Server != want.server {
			t.Fatalf("result %d is %s/%s, want %s/%s", i, r.Scenario, r.Server, want.scenario, want.server)
		}
		if want.scenario == "idle" {
			checkLine(t, r, "idle", want.server, "rss_per_conn_kib", "server_cpu_s")
			wantEqual(t, r, map[string]float64{"joined": 30, "failed": 0, "closed": 0})
			wantPositive(t, r, "handshakes_per_s", "rss_after_mib")
		} else {
			checkLine(t, r, "fanout", want.server, "p50", "p99", "cpu_s_per_million")
			wantEqual(t, r, map[string]float64{"subs": 10, "expected": 500, "lost": 0, "closed": 0})
			if d, l := number(t, r, "delivered"), number(t, r, "late"); d+l != 500 || d == 0 {
				t.Fatalf("delivered %v + late %v", d, l)
			}
			wantPositive(t, r, "p50", "max")
		}
	}
	// The floor's RSS is its own process's, not this one's.
	if rs[0].Get("rss_after_mib") == rs[1].Get("rss_after_mib") && rs[0].Get("rss_base_mib") == rs[1].Get("rss_base_mib") {
		t.Fatalf("floor and natter have the same RSS: %q / %q", rs[0], rs[1])
	}
}

func TestConfigErrors(t *testing.T) {
	floorCmd := []string{os.Args[0], "-serve-floor", "127.0.0.1:0"}
	tests := []struct {
		name string
		cfg  bench.Config
	}{
		{"unknown scenario", bench.Config{Scenarios: []string{"nope"}}},
		{"unknown server", bench.Config{Servers: []string{"nope"}}},
		{"floor has no rpc", bench.Config{Scenarios: []string{"rpc"}, Servers: []string{"floor"}, FloorCommand: floorCmd}},
		{"floor without command", bench.Config{Scenarios: []string{"idle"}, Servers: []string{"floor"}}},
		{"more connections than files", bench.Config{Scenarios: []string{"idle"}, Conns: 1 << 30}},
		{"rate under conns", bench.Config{Scenarios: []string{"rpc"}, Conns: 10, Rate: 5}},
		{"source addresses need a loopback IP", bench.Config{URL: "ws://localhost:1/ws", Scenarios: []string{"idle"}, Pid: os.Getpid(), Conns: 1}},
		{"inflight over the edge's cap", bench.Config{Inflight: 65}},
		{"floor has no idlecost", bench.Config{Scenarios: []string{"idlecost"}, Servers: []string{"floor"}, FloorCommand: floorCmd}},
		{"negative hold", bench.Config{Scenarios: []string{"idlecost"}, Hold: -time.Second}},
		{"NATS pid not a pid", bench.Config{Scenarios: []string{"idlecost"}, NATSPids: []int{0}}},
		{"NATS pid is the edge's", bench.Config{Scenarios: []string{"idlecost"}, Pid: os.Getpid(), NATSPids: []int{os.Getpid()}, Conns: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bench.Run(t.Context(), tt.cfg)
			if !errors.Is(err, bench.ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestNoServer: without a process on the URL's port the bench fails
// instead of printing zero figures.
func TestNoServer(t *testing.T) {
	_, err := bench.Run(t.Context(), bench.Config{URL: "ws://127.0.0.1:1/ws", Scenarios: []string{"idle"}})
	if !errors.Is(err, bench.ErrNoProcess) {
		t.Fatalf("err %v, want ErrNoProcess", err)
	}
}

// TestIdleCostScenario holds joined connections on a real edge and checks
// the line: CPU of the edge (and of an external NATS), RSS per connection
// and the JetStream writes of the hold, per stream. A stream of the
// test's, written at a steady rate through the whole run, shows that
// writes during the hold are counted. The edge's own writes depend on its
// presence design: the test reports them and checks only that they are
// counted per stream and add up.
func TestIdleCostScenario(t *testing.T) {
	tests := []struct {
		name      string
		presence  bool
		childNATS bool // NATS in a child process, its pid in NATSPids
		runs      int
		hold      time.Duration
	}{
		{"presence off, NATS in this process", false, false, 2, 2 * time.Second},
		// With today's presence (keys rewritten every TTL/3) a 3 s TTL
		// and a 4 s hold write every connection's key several times.
		{"presence on, external NATS", true, true, 1, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var natsURL string
			var natsPids []int
			if tt.childNATS {
				u, pid := startNATSProcess(t)
				natsURL, natsPids = u, []int{pid}
			} else {
				natsURL = testenv.NATS(t).ClientURL()
			}
			cfg := edge.DefaultConfig()
			cfg.Presence.TTL = 3 * time.Second
			if !tt.presence {
				cfg.Presence = nil
			}
			e := startEdgeOn(t, natsURL, cfg)
			published := publishSteadily(t, natsURL, "bench_test", 20*time.Millisecond)

			var out strings.Builder
			rs, err := bench.Run(t.Context(), bench.Config{
				URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"idlecost"}, Conns: 50, Runs: tt.runs,
				Hold: tt.hold, Settle: 200 * time.Millisecond, NATSURL: natsURL, NATSPids: natsPids, Out: &out,
			})
			if err != nil {
				t.Fatal(err)
			}
			sent := published()
			if want := tt.runs + min(tt.runs-1, 1); len(rs) != want || strings.Count(out.String(), "\n") != want {
				t.Fatalf("want %d runs and a median if more than 1, got %q", tt.runs, out.String())
			}
			for _, r := range rs[:tt.runs] {
				checkLine(t, r, "idlecost", "natter", "handshakes_per_s", "rss_base_mib", "rss_joined_mib", "rss_after_mib",
					"rss_per_conn_joined_kib", "rss_per_conn_kib", "server_cpu_s", "server_cpu_pct", "js_streams", "js_writes",
					"js_writes_per_s", "js_writes_bench_test", "bench_cpu_s")
				wantEqual(t, r, map[string]float64{"conns": 50, "joined": 50, "failed": 0, "closed": 0})
				wantPositive(t, r, "handshakes_per_s", "rss_after_mib", "js_streams")
				if h := r.Get("hold"); h != tt.hold.String() {
					t.Errorf("hold %q, want %s", h, tt.hold)
				}
				for _, k := range []string{"server_cpu_s", "server_cpu_pct", "bench_cpu_s"} {
					if v := number(t, r, k); v < 0 {
						t.Errorf("%s = %v < 0", k, v)
					}
				}
				// The test's stream: written about 100 times in a 2 s hold.
				if n := number(t, r, "js_writes_bench_test"); n < 10 || n > float64(sent) {
					t.Errorf("js_writes_bench_test = %v, want 10..%d (published in the whole run)", n, sent)
				}
				// Every stream has its field, and they add up.
				var sum float64
				streams := 0
				for _, f := range r.Fields {
					if k, ok := strings.CutPrefix(f.Key, "js_writes_"); ok && k != "per_s" {
						sum += number(t, r, f.Key)
						streams++
					}
				}
				if js := number(t, r, "js_writes"); sum != js || float64(streams) != number(t, r, "js_streams") {
					t.Errorf("js_writes %v, per stream %v in %d fields, js_streams %v", js, sum, streams, number(t, r, "js_streams"))
				}
				_, presenceField := r.Number("js_writes_kv_natter_presence")
				if presenceField != tt.presence {
					t.Errorf("js_writes_kv_natter_presence in the line: %v, presence %v", presenceField, tt.presence)
				}
				if tt.presence {
					// Today's figure, for the record; the presence
					// rewrite (issue 16) brings it down to O(edges).
					t.Logf("presence writes in a %s hold of 50 connections: %s to KV_natter_presence, %s to natter_events",
						tt.hold, r.Get("js_writes_kv_natter_presence"), r.Get("js_writes_natter_events"))
				}
				if tt.childNATS {
					wantEqual(t, r, map[string]float64{"nats_servers": 1})
					for _, k := range []string{"nats_cpu_s", "nats_cpu_pct", "nats_cpu_pct_max"} {
						if v := number(t, r, k); v < 0 {
							t.Errorf("%s = %v < 0", k, v)
						}
					}
				} else if r.Get("nats_cpu_s") != "" {
					t.Errorf("nats_cpu_s without NATS pids: %q", r)
				}
			}
			if tt.runs > 1 {
				if m := rs[tt.runs]; m.Get("run") != "median" || m.Get("joined") != "50" || m.Get("hold") != tt.hold.String() {
					t.Fatalf("median line %q", m)
				}
			}
			testenv.Eventually(t, 5*time.Second, "edge connections closed", func() bool { return e.Stats().Connections == 0 })
		})
	}
}

// publishSteadily creates stream name (subject name) and publishes to it
// every interval until the test ends; the returned func stops the
// publisher and returns how many messages it published.
func publishSteadily(t *testing.T, natsURL, name string, interval time.Duration) func() int {
	t.Helper()
	js, err := jetstream.New(testenv.Connect(t, natsURL))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: name, Subjects: []string{name}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			if _, err := js.Publish(ctx, name, []byte("x")); err == nil {
				n.Add(1)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	stop := func() int {
		cancel()
		<-done
		return int(n.Load())
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestMedian(t *testing.T) {
	mk := func(run, p50, rate string) *bench.Result {
		return &bench.Result{Scenario: "fanout", Server: "natter", Fields: []bench.Field{
			{"scenario", "fanout"}, {"server", "natter"}, {"run", run}, {"rate", "100/s"},
			{"p50", p50}, {"deliveries_per_s", rate}, {"note", "x" + run},
		}}
	}
	m := bench.Median([]*bench.Result{mk("1", "3.000ms", "100"), mk("2", "1.500ms", "90"), mk("3", "2.250ms", "95")})
	want := "scenario=fanout server=natter run=median runs=3 rate=100/s p50=2.250ms deliveries_per_s=95 note=mixed"
	if m.String() != want {
		t.Fatalf("median\n got %q\nwant %q", m, want)
	}
	m = bench.Median([]*bench.Result{mk("1", "1.000ms", "100"), mk("2", "2.000ms", "91")})
	if m.Get("p50") != "1.500ms" || m.Get("deliveries_per_s") != "95.5" {
		t.Fatalf("even median %q", m)
	}
}

func TestParseResult(t *testing.T) {
	tests := []struct {
		name, line string
		ok         bool
	}{
		{"as written", "scenario=idlecost server=natter conns=10 js_writes_kv_natter_presence=3", true},
		{"script fields first", "run=2 presence=false scenario=idle server=floor rss_per_conn_kib=9.5", true},
		{"no server", "scenario=idle conns=10", false},
		{"no scenario", "server=natter conns=10", false},
		{"not key=value", "scenario=idle server=natter oops", false},
		{"empty value", "scenario=idle server=natter conns=", false},
		{"empty key", "scenario=idle server=natter =3", false},
		{"key twice", "scenario=idle server=natter conns=1 conns=2", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := bench.ParseResult(tt.line)
			if (err == nil) != tt.ok {
				t.Fatalf("err %v, want ok %v", err, tt.ok)
			}
			if tt.ok && r.String() != tt.line {
				t.Fatalf("round trip %q, want %q", r, tt.line)
			}
		})
	}
	r, _ := bench.ParseResult("run=1 scenario=idlecost server=natter x=1")
	if r.Scenario != "idlecost" || r.Server != "natter" {
		t.Fatalf("scenario %q server %q", r.Scenario, r.Server)
	}
}

// TestMedianLines: lines of separate runs, as scripts/bench.sh collects
// them, give one median line per scenario and server.
func TestMedianLines(t *testing.T) {
	in := `# 2026-12-07 a comment
run=1 presence=true scenario=idlecost server=natter hold=1m0s server_cpu_pct=9.10 js_writes=120000
run=2 presence=true scenario=idlecost server=natter hold=1m0s server_cpu_pct=8.50 js_writes=120010

run=1 scenario=idle server=floor rss_per_conn_kib=9.00
run=3 presence=true scenario=idlecost server=natter hold=1m0s server_cpu_pct=10.00 js_writes=119990
run=median runs=3 presence=true scenario=idlecost server=natter hold=1m0s server_cpu_pct=1.00 js_writes=1
`
	var out strings.Builder
	if err := bench.MedianLines(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := "run=median runs=3 presence=true scenario=idlecost server=natter hold=1m0s server_cpu_pct=9.10 js_writes=120000\n" +
		"run=median runs=1 scenario=idle server=floor rss_per_conn_kib=9.00\n"
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
	if err := bench.MedianLines(strings.NewReader("scenario=idle\n"), &out); err == nil {
		t.Fatal("a line without server: no error")
	}
}

// TestFallbackMembers: with -wire sse the idle and fanout members are
// fallback streams (GET /ws/sse?room=), measured like WebSocket ones, and
// closing them lets the edge's connections go.
func TestFallbackMembers(t *testing.T) {
	e, natsURL := startEdge(t, edge.DefaultConfig())
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"idle", "fanout"}, NATSURL: natsURL, Wires: []string{bench.WireSSE},
		Conns: 20, Subs: 10, Rate: 50, Duration: time.Second, Warmup: 200 * time.Millisecond, Settle: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	idle, fan := rs[0], rs[1]
	checkLine(t, idle, "idle", "natter", "rss_per_conn_kib")
	wantEqual(t, idle, map[string]float64{"conns": 20, "joined": 20, "failed": 0, "closed": 0})
	if idle.Get("wire") != "sse" || fan.Get("wire") != "sse" {
		t.Fatalf("wire= %q, %q", idle.Get("wire"), fan.Get("wire"))
	}
	wantEqual(t, fan, map[string]float64{"subs": 10, "sent": 50, "expected": 500, "lost": 0, "closed": 0})
	if d, l := number(t, fan, "delivered"), number(t, fan, "late"); d+l != 500 || d == 0 {
		t.Fatalf("delivered %v + late %v", d, l)
	}
	testenv.Eventually(t, 5*time.Second, "edge connections closed", func() bool { return e.Stats().Connections == 0 })
	if st := e.Stats().Transports["sse"]; st.Accepted != 30 {
		t.Errorf("sse connections accepted: %d; want 30", st.Accepted)
	}
}
