// Package jaeger runs a real OTLP receiver for tests: Jaeger's all-in-one
// (v1.75.0, built from tools/jaeger, a module of its own), with in-memory
// storage, OTLP over HTTP and gRPC, and its query API, all on free
// loopback ports. Tests export spans to it and read whole traces back.
//
// The binary is installed the way helm is (.ci/run does it):
//
//	cd tools/jaeger && GOWORK=off go build -o "$HOME/go/bin/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
package jaeger

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Version is the Jaeger the tests run.
const Version = "v1.75.0"

// Install is the command that installs it.
const Install = `cd tools/jaeger && GOWORK=off go build -o "$HOME/go/bin/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger`

// Jaeger is a running all-in-one.
type Jaeger struct {
	otlpHTTP, otlpGRPC, query string // host:port
}

// config is the all-in-one configuration: the OTLP receivers (the HTTP one
// with CORS open to any origin, for browser pages), a short batch, memory
// storage, and the query service; no metrics endpoint, so that parallel
// instances do not share a port.
const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
    traces:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: %[1]s
    grpc:
      endpoint: %[2]s
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[3]s
      http:
        endpoint: %[4]s
        cors:
          allowed_origins: ["*"]
processors:
  batch:
    timeout: 50ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// binary finds the jaeger command: in $HOME/go/bin, where .ci/run
// installs the right version, then on PATH.
func binary(t testing.TB) string {
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "jaeger")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("jaeger"); err == nil {
		return p
	}
	t.Fatalf("jaeger %s not found on PATH or in $HOME/go/bin; install it from the repository root with\n\t%s\n(.ci/run does)", Version, Install)
	return ""
}

// freePorts returns n loopback addresses nothing listens on yet.
func freePorts(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return addrs
}

// logBuffer is the process's output, for failures.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start runs Jaeger until the test ends and returns once it accepts OTLP
// and answers queries. Its output is logged when the test fails.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := binary(t)
	ports := freePorts(t, 4)
	j := &Jaeger{query: ports[0], otlpGRPC: ports[2], otlpHTTP: ports[3]}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, ports[0], ports[1], ports[2], ports[3]), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config=file:"+cfg)
	cmd.Dir = dir
	// Jaeger traces itself to localhost:4317 unless told not to.
	cmd.Env = append(os.Environ(), "OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none")
	var out logBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("jaeger output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Ready when both the OTLP HTTP receiver and the query API answer.
		q, qerr := http.Get("http://" + j.query + "/api/services")
		r, rerr := http.Post(j.OTLPHTTPEndpoint()+"/v1/traces", "application/json", strings.NewReader("{}"))
		if qerr == nil {
			_ = q.Body.Close()
		}
		if rerr == nil {
			_ = r.Body.Close()
		}
		if qerr == nil && rerr == nil && q.StatusCode == http.StatusOK && r.StatusCode == http.StatusOK {
			return j
		}
		select {
		case <-exited:
			t.Fatal("jaeger exited at start (its output follows)")
		case <-time.After(50 * time.Millisecond): // poll interval, with the deadline below
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger did not answer on %s and %s within 30s (query: %v, otlp: %v):\n%s", j.query, j.otlpHTTP, qerr, rerr, out.String())
		}
	}
}

// OTLPHTTPEndpoint is the base URL of the OTLP HTTP receiver
// (http://127.0.0.1:port; traces go to /v1/traces).
func (j *Jaeger) OTLPHTTPEndpoint() string { return "http://" + j.otlpHTTP }

// OTLPGRPCEndpoint is the OTLP gRPC receiver's host:port.
func (j *Jaeger) OTLPGRPCEndpoint() string { return j.otlpGRPC }

// QueryURL is the base URL of the query API.
func (j *Jaeger) QueryURL() string { return "http://" + j.query }

// Env is what a child process needs in its environment to export its
// spans here over OTLP HTTP, flushing batches every 100 ms.
func (j *Jaeger) Env() []string {
	return []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPHTTPEndpoint(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
}

// Span is one span as the query API returns it.
type Span struct {
	TraceID, SpanID, ParentSpanID string
	Name, Service, Kind           string // Kind: server, client, producer, consumer, internal
	Tags                          map[string]string
	Start                         time.Time
	Duration                      time.Duration
}

// apiTrace is the query API's JSON of one trace.
type apiTrace struct {
	Data []struct {
		TraceID string `json:"traceID"`
		Spans   []struct {
			TraceID       string `json:"traceID"`
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
			StartTime int64 `json:"startTime"` // µs
			Duration  int64 `json:"duration"`  // µs
			Tags      []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"tags"`
			ProcessID string `json:"processID"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// Trace returns the spans Jaeger holds of traceID (32 hex digits); none
// while it has none.
func (j *Jaeger) Trace(ctx context.Context, traceID string) ([]Span, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL()+"/api/traces/"+traceID, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/traces/%s: %s", traceID, resp.Status)
	}
	var tr apiTrace
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return nil, err
	}
	var spans []Span
	for _, d := range tr.Data {
		for _, s := range d.Spans {
			sp := Span{TraceID: s.TraceID, SpanID: s.SpanID, Name: s.OperationName, Service: d.Processes[s.ProcessID].ServiceName,
				Tags: map[string]string{}, Start: time.UnixMicro(s.StartTime), Duration: time.Duration(s.Duration) * time.Microsecond}
			for _, r := range s.References {
				if r.RefType == "CHILD_OF" {
					sp.ParentSpanID = r.SpanID
				}
			}
			for _, tag := range s.Tags {
				sp.Tags[tag.Key] = fmt.Sprint(tag.Value)
			}
			sp.Kind = sp.Tags["span.kind"]
			if sp.Kind == "" {
				sp.Kind = "internal"
			}
			spans = append(spans, sp)
		}
	}
	return spans, nil
}

// WaitTrace polls the trace of traceID until want accepts its spans, and
// fails the test with what Jaeger holds after 15 seconds.
func (j *Jaeger) WaitTrace(t testing.TB, traceID string, want func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var spans []Span
	var err error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		spans, err = j.Trace(ctx, traceID)
		cancel()
		if err == nil && want(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger is not as the test waits for after 15s (err %v); it holds:\n%s", traceID, err, Tree(spans))
			return nil
		}
		time.Sleep(100 * time.Millisecond) // poll interval, with the deadline above
	}
}

// Tree renders spans as their parent/child tree, for failure messages.
func Tree(spans []Span) string {
	if len(spans) == 0 {
		return "  (no spans)\n"
	}
	byID := map[string]bool{}
	children := map[string][]Span{}
	for _, s := range spans {
		byID[s.SpanID] = true
	}
	var roots []Span
	for _, s := range spans {
		if s.ParentSpanID == "" || !byID[s.ParentSpanID] {
			roots = append(roots, s)
		} else {
			children[s.ParentSpanID] = append(children[s.ParentSpanID], s)
		}
	}
	var b strings.Builder
	var walk func(s Span, depth int)
	walk = func(s Span, depth int) {
		parent := ""
		if s.ParentSpanID != "" && !byID[s.ParentSpanID] {
			parent = " (parent " + s.ParentSpanID + " not in the trace)"
		}
		fmt.Fprintf(&b, "%s- %s [%s, %s] %s%s\n", strings.Repeat("  ", depth+1), s.Name, s.Service, s.Kind, s.SpanID, parent)
		kids := children[s.SpanID]
		sort.Slice(kids, func(a, c int) bool { return kids[a].Start.Before(kids[c].Start) })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	sort.Slice(roots, func(a, c int) bool { return roots[a].Start.Before(roots[c].Start) })
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

// Parent returns the span of spans that is child's parent, or nil.
func Parent(spans []Span, child Span) *Span {
	for i := range spans {
		if spans[i].SpanID == child.ParentSpanID {
			return &spans[i]
		}
	}
	return nil
}
