package e2e_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/testenv/jaeger"
	"github.com/natter/natter/internal/wstest"
)

// TestBrowserTrace: an RPC from the TypeScript client in Chromium, through
// a real edge process and a real worker process, makes one trace in a real
// Jaeger, in which the page's own span is the parent of the client's, the
// client's of the edge's, and the edge's of the worker's. The page
// (browser-trace/page.js, run by browser-trace/trace.mjs) traces with the
// OpenTelemetry web SDK, exports over OTLP/HTTP from the browser, and hands
// the client the @opentelemetry/api module as options.otel.
func TestBrowserTrace(t *testing.T) {
	t.Parallel()
	dir := browserTraceDir(t)
	j := jaeger.Start(t)
	srv := testenv.NATS(t)
	url := srv.ClientURL()
	// Dev mode admits any browser origin (the page's is a port of its own).
	edgeProc := testenv.StartEnv(t, j.Env(), "edge", "--nats", url, "--listen", "127.0.0.1:0", "--insecure-dev-users", "--shutdown-spread", "10ms")
	m := edgeProc.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	workerProc := testenv.StartEnv(t, j.Env(), "worker", "--nats", url)
	workerProc.WaitLog(t, `msg="worker ready"`, wait)

	res := runBrowserTrace(t, dir, "--edge", wstest.WSURL(m[1], m[2]), "--otlp", j.OTLPHTTPEndpoint(), "--user", "alice", "--type", "ping")
	spans := j.WaitTrace(t, res.TraceID, has("browser.click", "natter.rpc ping", "natter.edge.receive ping",
		"natter.edge.validate ping", "natter.edge.rpc ping", "natter.worker.handle ping"))
	defer func() {
		if t.Failed() {
			t.Logf("trace %s:\n%s", res.TraceID, jaeger.Tree(spans))
		}
	}()
	click := spanNamed(t, spans, "browser.click")
	if click.SpanID != res.SpanID || click.ParentSpanID != "" || click.Service != "natter-browser" {
		t.Errorf("browser.click is %s of %q under %q, want the page's root span %s of natter-browser", click.SpanID, click.Service, click.ParentSpanID, res.SpanID)
	}
	chain(t, spans,
		[2]string{"natter.rpc ping", "natter-browser/browser.click"},
		[2]string{"natter.edge.receive ping", "natter-edge/natter.rpc ping"},
		[2]string{"natter.edge.validate ping", "natter-edge/natter.edge.receive ping"},
		[2]string{"natter.edge.rpc ping", "natter-edge/natter.edge.receive ping"},
		[2]string{"natter.worker.handle ping", "natter-worker/natter.edge.rpc ping"},
	)
	for name, kind := range map[string]string{
		"browser.click":             "internal",
		"natter.rpc ping":           "client",
		"natter.edge.receive ping":  "server",
		"natter.edge.rpc ping":      "client",
		"natter.worker.handle ping": "server",
	} {
		if k := spanNamed(t, spans, name).Kind; k != kind {
			t.Errorf("%s is of kind %q, want %s", name, k, kind)
		}
	}
	for _, s := range spans {
		if s.TraceID != res.TraceID {
			t.Errorf("%s is in trace %s, want %s", s.Name, s.TraceID, res.TraceID)
		}
	}
}

// browserTrace is what trace.mjs prints: the page's trace and span, the
// reply, the results of the page's exports, and how long each step took
// (ms since the script started).
type browserTrace struct {
	TraceID    string          `json:"traceId"`
	SpanID     string          `json:"spanId"`
	Reply      json.RawMessage `json:"reply"`
	Exports    []browserExport `json:"exports"`
	PageErrors []string        `json:"pageErrors"`
	Timings    map[string]int  `json:"timings"`
	Error      string          `json:"error"`
}

// browserExport is one OTLP export of the page; code 0 is success.
type browserExport struct {
	Spans int    `json:"spans"`
	Code  int    `json:"code"`
	Error string `json:"error"`
}

// browserTraceDir is browser-trace, with its node_modules installed (npm
// ci when they are missing or older than the lock file), once Chromium,
// Node and npm are known to be there.
func browserTraceDir(t *testing.T) string {
	t.Helper()
	chromium := cmp.Or(os.Getenv("CHROMIUM"), "/usr/bin/chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the browser trace test needs Debian's Chromium at %s: apt-get install chromium (.ci/run does)", chromium)
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the browser trace test needs Node 20+ and npm: apt-get install nodejs npm (.ci/run does): %v", err)
		}
	}
	dir, err := filepath.Abs("browser-trace")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if mods, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil || mods.ModTime().Before(lock.ModTime()) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CI=1", "NO_COLOR=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}

// runBrowserTrace runs trace.mjs in dir with args and returns what it
// printed; a failed run, a page error or a failed export fails the test
// with the script's log.
func runBrowserTrace(t *testing.T, dir string, args ...string) browserTrace {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"trace.mjs"}, args...)...)
	cmd.Dir = dir
	// SIGTERM first: playwright then closes Chromium rather than leave it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var res browserTrace
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || runErr != nil || res.Error != "" {
		t.Fatalf("node trace.mjs: %v %v %s\nstdout:\n%s\nstderr:\n%s", runErr, err, res.Error, stdout.String(), stderr.String())
	}
	t.Logf("browser trace %s (ms since start: %v), reply %s, exports %+v", res.TraceID, res.Timings, res.Reply, res.Exports)
	if len(res.PageErrors) > 0 {
		t.Errorf("page errors: %s\nstderr:\n%s", strings.Join(res.PageErrors, "\n"), stderr.String())
	}
	if len(res.Exports) == 0 {
		t.Errorf("the page exported nothing\nstderr:\n%s", stderr.String())
	}
	for _, e := range res.Exports {
		if e.Code != 0 {
			t.Errorf("the page's export of %d spans to Jaeger failed: %s\nstderr:\n%s", e.Spans, e.Error, stderr.String())
		}
	}
	if len(res.TraceID) != 32 || len(res.SpanID) != 16 {
		t.Fatalf("trace.mjs printed trace %q span %q", res.TraceID, res.SpanID)
	}
	return res
}
