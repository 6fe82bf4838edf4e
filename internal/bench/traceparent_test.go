package bench_test

import (
	"os"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/edge"
)

// TestTraceparent: with Traceparent, every fanout message and every rpc
// request reaches the edge with its own valid, sampled trace context, which
// a tracing edge continues: one delivery span per message, one receive
// span per request, each under a remote parent of a trace of its own.
func TestTraceparent(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = -1
	cfg.Tracing.Provider = tp
	e, natsURL := startEdge(t, cfg)
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"fanout", "rpc"}, NATSURL: natsURL,
		Subs: 5, Conns: 2, Rate: 50, Inflight: 2, Traceparent: true,
		Duration: 400 * time.Millisecond, Warmup: 100 * time.Millisecond, Settle: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	fan, rpc := rs[0], rs[1]
	checkLine(t, fan, "fanout", "natter", "cpu_s_per_million")
	checkLine(t, rpc, "rpc", "natter", "p99", "max_rate")
	for _, r := range rs {
		if r.Get("traceparent") != "sampled" {
			t.Errorf("no traceparent=sampled in %q", r)
		}
	}
	wantEqual(t, fan, map[string]float64{"lost": 0, "closed": 0})
	wantEqual(t, rpc, map[string]float64{"errors": 0, "lost": 0, "max_errors": 0})

	// Every message ticked during warm-up and window, every request of both
	// phases (warm-up included) and of the closed loop made a span.
	ticks := int(number(t, fan, "sent")) // the window's; warm-up adds more
	requests := int(number(t, rpc, "sent") + number(t, rpc, "max_ok"))
	deliver, receive := map[trace.TraceID]bool{}, map[trace.TraceID]bool{}
	for _, s := range exp.GetSpans() {
		var seen map[trace.TraceID]bool
		switch s.Name {
		case "natter.edge.deliver bench.tick":
			seen = deliver
		case "natter.edge.receive echo":
			seen = receive
		default:
			continue
		}
		if !s.Parent.IsRemote() || !s.Parent.IsSampled() || s.Parent.TraceID() != s.SpanContext.TraceID() {
			t.Fatalf("%s: parent %+v, want the bench's remote sampled context", s.Name, s.Parent)
		}
		if seen[s.Parent.TraceID()] {
			t.Fatalf("%s: trace id %s twice: not one per message", s.Name, s.Parent.TraceID())
		}
		seen[s.Parent.TraceID()] = true
	}
	if len(deliver) < ticks || len(receive) < requests {
		t.Fatalf("%d delivery spans for %d ticks, %d receive spans for %d requests", len(deliver), ticks, len(receive), requests)
	}
}

// TestNoTraceparent: without Traceparent nothing carries trace context, so
// a tracing edge continues none (it samples its own, parent-less traces).
func TestNoTraceparent(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = -1
	cfg.Tracing.Provider = tp
	e, natsURL := startEdge(t, cfg)
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"fanout", "rpc"}, NATSURL: natsURL,
		Subs: 2, Conns: 1, Rate: 20, Inflight: 1,
		Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Settle: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if strings.Contains(r.String(), "traceparent") {
			t.Errorf("line %q", r)
		}
	}
	receive := 0
	for _, s := range exp.GetSpans() {
		if s.Parent.IsRemote() || strings.HasPrefix(s.Name, "natter.edge.deliver bench.tick") {
			t.Fatalf("span %s with parent %+v from a bench without -traceparent", s.Name, s.Parent)
		}
		if s.Name == "natter.edge.receive echo" {
			receive++
		}
	}
	if receive == 0 { // the edge did trace: its own root spans
		t.Fatal("no receive spans")
	}
}
