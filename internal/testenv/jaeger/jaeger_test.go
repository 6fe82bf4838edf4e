package jaeger_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/natter/natter/internal/testenv/jaeger"
)

// TestJaegerReceivesAndAnswers exports a parent and a child span over OTLP
// HTTP and reads them back from the query API, with their services and
// their parent/child link.
func TestJaegerReceivesAndAnswers(t *testing.T) {
	t.Parallel()
	j := jaeger.Start(t)
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(j.OTLPHTTPEndpoint()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "jaeger-self-test"))))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, parent := tp.Tracer("t").Start(context.Background(), "parent")
	_, child := tp.Tracer("t").Start(ctx, "child")
	child.End()
	parent.End()

	id := parent.SpanContext().TraceID().String()
	spans := j.WaitTrace(t, id, func(s []jaeger.Span) bool { return len(s) == 2 })
	var p, c jaeger.Span
	for _, s := range spans {
		switch s.Name {
		case "parent":
			p = s
		case "child":
			c = s
		}
	}
	if p.SpanID != parent.SpanContext().SpanID().String() || c.ParentSpanID != p.SpanID || c.Service != "jaeger-self-test" {
		t.Fatalf("read back:\n%s", jaeger.Tree(spans))
	}
	if got := jaeger.Parent(spans, c); got == nil || got.Name != "parent" {
		t.Fatalf("Parent(child) = %v", got)
	}
	// A trace it never received is empty, not an error.
	if s, err := j.Trace(context.Background(), "0123456789abcdef0123456789abcdef"); err != nil || len(s) != 0 {
		t.Fatalf("unknown trace: %v %v", s, err)
	}
}
