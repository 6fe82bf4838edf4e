package client_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/worker"
)

// TestClientSpans: Call and SendContext make natter.rpc and natter.send
// spans under the application's span, and the edge and the worker
// continue them: app → natter.rpc → edge receive → edge rpc → worker
// handle, one trace. Each process would have a provider of its own; here
// they share one exporter.
func TestClientSpans(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	m := newMesh(t)
	cfg := m.devEdge(t)
	cfg.Tracing.Provider = tp
	url := m.StartEdge(t, cfg).URL
	w, err := worker.New(m.Connect(t), worker.Config{Queue: "trace", Logger: testenv.Logger(t), TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan trace.SpanContext, 1)
	_ = w.Handle("trace.echo", func(ctx context.Context, msg *worker.Message) error {
		return msg.Reply("trace.echoed", nil)
	})
	_ = w.Handle("trace.note", func(ctx context.Context, msg *worker.Message) error {
		handled <- trace.SpanContextFromContext(ctx)
		return nil
	})
	if err := w.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Drain(context.Background()) })

	c := dial(t, url, client.Options{TracerProvider: tp})
	ctx, app := tp.Tracer("app").Start(context.Background(), "app.click")
	var reply envelope.Envelope
	if err := c.Call(ctx, "trace.echo", nil, &reply); err != nil {
		t.Fatal(err)
	}
	if err := c.SendContext(ctx, "trace.note", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	var noted trace.SpanContext
	select {
	case noted = <-handled:
	case <-time.After(wait):
		t.Fatal("trace.note not handled")
	}
	app.End()

	want := app.SpanContext().TraceID()
	parent := map[string]string{
		"natter.rpc trace.echo":           "app.click",
		"natter.edge.receive trace.echo":  "natter.rpc trace.echo",
		"natter.edge.rpc trace.echo":      "natter.edge.receive trace.echo",
		"natter.worker.handle trace.echo": "natter.edge.rpc trace.echo",
		"natter.send trace.note":          "app.click",
		"natter.edge.receive trace.note":  "natter.send trace.note",
		"natter.edge.publish trace.note":  "natter.edge.receive trace.note",
		"natter.worker.handle trace.note": "natter.edge.publish trace.note",
	}
	// The spans end on their own: the edge ends natter.edge.rpc after it
	// has written the reply the client already holds, so wait for every
	// span named above, not for a count of them.
	byName := map[string]tracetest.SpanStub{}
	complete := func() bool {
		for child := range parent {
			if _, ok := byName[child]; !ok {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(wait)
	for !complete() && time.Now().Before(deadline) {
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID() == want {
				byName[s.Name] = s
			}
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a deadline loop
	}
	for child, p := range parent {
		cs, ok := byName[child]
		if !ok {
			t.Errorf("no span %s in the trace (have %d spans)", child, len(byName))
			continue
		}
		if cs.Parent.SpanID() != byName[p].SpanContext.SpanID() {
			t.Errorf("%s's parent is not %s", child, p)
		}
	}
	if byName["natter.rpc trace.echo"].SpanKind != trace.SpanKindClient || byName["natter.send trace.note"].SpanKind != trace.SpanKindProducer {
		t.Error("client span kinds: rpc must be client, send producer")
	}
	if noted.TraceID() != want {
		t.Errorf("the handler's context is in trace %s, want %s", noted.TraceID(), want)
	}
	// The reply carries the handler's context.
	var tp2 string
	_ = json.Unmarshal(reply.Meta.Extra[tracing.MetaTraceparent], &tp2)
	if sc := tracing.Parse(tp2, ""); sc.SpanID() != byName["natter.worker.handle trace.echo"].SpanContext.SpanID() {
		t.Errorf("reply meta.traceparent %q is not the handler's span", tp2)
	}
}
