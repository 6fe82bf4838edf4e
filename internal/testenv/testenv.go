// Package testenv starts the real parts Natter's tests run against: an
// embedded nats-server on a random loopback port, NATS connections, edges
// served over loopback HTTP, and the cmd binaries built once per test run
// and source state (bincache).
// Everything started is stopped by t.Cleanup.
package testenv

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/testenv/bincache"
	"github.com/natter/natter/pkg/worker"
)

// Logger returns a logger that writes to the test log at warn and above.
// A fuzz test's logger writes to standard error instead: testing.F panics
// on a Log while its fuzz function runs, which the components' own
// goroutines cannot know (a warning from one of them killed every
// fuzzing worker after a few thousand inputs, silently: a worker's output
// is discarded).
func Logger(t testing.TB) *slog.Logger {
	var w io.Writer = tlogWriter{t}
	if _, fuzz := t.(*testing.F); fuzz {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// NATS starts an embedded nats-server with JetStream on a random loopback
// port and a temporary store.
func NATS(t testing.TB) *natsd.Server {
	t.Helper()
	s, err := natsd.Start(natsd.Config{Addr: "127.0.0.1:0", StoreDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// NATSServer starts a nats-server with opts in the test process, on a
// random loopback port (host, port, signals and logging are set here), and
// returns its client URL: for the servers NATS does not make (no
// JetStream, accounts, a deployment's configuration file).
func NATSServer(t testing.TB, opts *server.Options) string {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return ns.ClientURL()
}

// Connect opens a NATS connection to url.
func Connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Edge is an edge served over loopback.
type Edge struct {
	*edge.Edge
	Addr string // host:port
	URL  string // ws://host:port/ws
}

// StartEdge serves an edge on a random loopback port. cfg.NATS.Conn is
// required; build cfg from edge.DefaultConfig. Cleanup shuts it down and
// fails the test if that shutdown fails. Unless the test chose another
// spread, the close frames of that shutdown are spread over a
// millisecond, not the default second: no test waits for the spread.
func StartEdge(t testing.TB, cfg edge.Config) *Edge {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	if s := &cfg.WebSocket.ShutdownSpread; *s == 0 || *s == edge.DefaultConfig().WebSocket.ShutdownSpread {
		*s = time.Millisecond
	}
	e, err := edge.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(e.Path(), e)
	for _, p := range e.FallbackPaths() {
		mux.Handle(p, e)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Together: the server waits for the fallback streams, which the
		// edge's Shutdown closes.
		srvDone := make(chan struct{})
		go func() { _ = srv.Shutdown(ctx); close(srvDone) }()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("edge shutdown: %v", err)
		}
		<-srvDone
	})
	addr := ln.Addr().String()
	return &Edge{Edge: e, Addr: addr, URL: "ws://" + addr + e.Path()}
}

// Worker runs the built-in handlers in-process on nc and waits until the
// server has their subscriptions.
func Worker(t testing.TB, nc *nats.Conn) *worker.Worker {
	t.Helper()
	w, err := worker.New(nc, worker.Config{Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := chat.Register(w); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Drain(ctx)
	})
	return w
}

// StreamMsgs returns how many messages the JetStream stream holds.
func StreamMsgs(t testing.TB, nc *nats.Conn, stream string) uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return info.State.Msgs
}

// Eventually polls cond every 5ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// GoroutinesSettle waits until the goroutine count is at most base+slack,
// and fails with a dump if it does not get there within timeout.
func GoroutinesSettle(t testing.TB, base, slack int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for runtime.NumGoroutine() > base+slack {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, baseline %d (+%d slack)\n%s", runtime.NumGoroutine(), base, slack, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// built holds what this test process built: the directory of each build
// by its flags and packages, and of each binary by its name, for Start.
var built struct {
	mu    sync.Mutex
	dirs  map[string]builtDir
	names map[string]string
}

type builtDir struct {
	dir string
	err error
}

// Binaries builds cmd/edge and cmd/worker with the race detector and
// returns the directory holding them. The test processes of a run share
// one build (bincache), which is linked again only when the sources change.
func Binaries(t testing.TB) string {
	t.Helper()
	return build(t, "commands", bincache.Commands)
}

// Build builds main packages with the go build flags, as Binaries does
// cmd/edge and cmd/worker, so that Start runs them by name, and returns the
// directory holding them. A package is relative to the module root
// (./cmd/x) or the import path of a command in a module go.mod requires.
func Build(t testing.TB, flags []string, pkgs ...string) string {
	t.Helper()
	return build(t, strings.Join(flags, " ")+"\x00"+strings.Join(pkgs, " "), func(root string) (string, error) {
		return bincache.Build(root, flags, pkgs...)
	})
}

// build runs f with the module root once per key and process.
func build(t testing.TB, key string, f func(root string) (string, error)) string {
	t.Helper()
	built.mu.Lock()
	defer built.mu.Unlock()
	b, ok := built.dirs[key]
	if !ok {
		root, err := moduleRoot()
		if err == nil {
			b.dir, err = f(root)
		}
		b.err = err
		if built.dirs == nil {
			built.dirs, built.names = map[string]builtDir{}, map[string]string{}
		}
		built.dirs[key] = b
		entries, _ := os.ReadDir(b.dir)
		for _, e := range entries {
			built.names[e.Name()] = b.dir
		}
	}
	if b.err != nil {
		t.Fatalf("build: %v", b.err)
	}
	return b.dir
}

// binary returns the path of a binary of Build or Binaries by name; edge
// and worker need no Build first.
func binary(t testing.TB, name string) string {
	t.Helper()
	built.mu.Lock()
	dir, ok := built.names[name]
	built.mu.Unlock()
	if !ok {
		dir = Binaries(t)
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no binary %s: build it with testenv.Build first (%v)", name, err)
	}
	return path
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Process is a started cmd binary whose stderr is scanned for log lines.
type Process struct {
	Cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan struct{}
}

// Start runs binary name (edge, worker, or one of an earlier Build) with
// args. Cleanup kills it if it is still running.
func Start(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	return StartEnv(t, nil, name, args...)
}

// StartEnv is Start with env added to the test's environment, from which
// every OTEL_* variable is removed first: a process traces only when env
// says so.
func StartEnv(t testing.TB, env []string, name string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(binary(t, name), args...)
	cmd.Dir = t.TempDir()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.Log())
		}
	})
	return p
}

// Log returns everything the process wrote to stderr so far.
func (p *Process) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// WaitLog waits for a log line matching re and returns its submatches.
func (p *Process) WaitLog(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		if m := rx.FindStringSubmatch(p.Log()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("process exited before logging %q:\n%s", re, p.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q within %s:\n%s", re, timeout, p.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Process) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("process still running after %s", timeout)
		return -1
	}
}

// NPM runs `npm run <script>` in dir (relative to the module root), after
// `npm ci` when node_modules is missing or older than package-lock.json.
// Node and npm must be installed (.ci/run checks); a missing one fails the
// test rather than skipping it. The script's output is logged on failure.
func NPM(t testing.TB, dir, script string, timeout time.Duration) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(root, dir)
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CI=1", "NO_COLOR=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("npm %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
		}
		t.Logf("npm %s: %s", strings.Join(args, " "), lastLines(string(out), 15))
	}
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatalf("%s: %v (commit the lock file)", dir, err)
	}
	if mods, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil || mods.ModTime().Before(lock.ModTime()) {
		run("ci", "--no-audit", "--no-fund")
	}
	run("run", script)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// Secret is the HS256 secret of the tokens Token signs.
var Secret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// Token signs an HS256 token with Secret for user (no sub claim when
// empty), expiring after ttl (negative: already expired), with extra
// claims.
func Token(t testing.TB, user string, ttl time.Duration, claims map[string]any) string {
	t.Helper()
	b := jwt.NewBuilder().Expiration(time.Now().Add(ttl)).IssuedAt(time.Now())
	if user != "" {
		b = b.Subject(user)
	}
	for k, v := range claims {
		b = b.Claim(k, v)
	}
	tok, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256(), Secret))
	if err != nil {
		t.Fatal(err)
	}
	return string(signed)
}
