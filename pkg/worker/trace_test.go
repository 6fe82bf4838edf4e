package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/worker"
)

// TestHandlerTraceContext: a handler runs in the trace of the message's
// Traceparent header, and what it publishes carries it on: under its own
// span with a recording provider (the reply's meta then names that span),
// under the caller's span with the no-op one, which makes no span.
func TestHandlerTraceContext(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	caller := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	exp := tracetest.NewInMemoryExporter()
	for _, tc := range []struct {
		name string
		tp   trace.TracerProvider
	}{
		{"recording", sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))},
		{"no-op", noop.NewTracerProvider()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ := "t.trace." + map[bool]string{true: "rec", false: "noop"}[tc.name == "recording"]
			w, err := worker.New(testenv.Connect(t, srv.ClientURL()), worker.Config{Logger: testenv.Logger(t), TracerProvider: tc.tp, Queue: typ})
			if err != nil {
				t.Fatal(err)
			}
			seen := make(chan trace.SpanContext, 1)
			_ = w.Handle(typ, func(ctx context.Context, m *worker.Message) error {
				seen <- trace.SpanContextFromContext(ctx)
				if err := m.Publisher().ToRoom("trace-room", &envelope.Envelope{Type: "t.note"}); err != nil {
					return err
				}
				return m.Reply(typ, nil)
			})
			if err := w.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = w.Drain(context.Background()) }()
			nc := testenv.Connect(t, srv.ClientURL())
			notes, err := nc.SubscribeSync("natter.out.room.trace-room")
			if err != nil {
				t.Fatal(err)
			}
			ctx, span := caller.Tracer("t").Start(context.Background(), "caller")
			req := nats.NewMsg("natter.in." + typ)
			req.Data = []byte(`{"type":"` + typ + `","meta":{"correlationId":"c1"}}`)
			tracing.Inject(ctx, req.Header)
			res, err := nc.RequestMsg(req, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			reply, err := envelope.Decode(res.Data, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			span.End()
			var handler trace.SpanContext
			select {
			case handler = <-seen:
			case <-time.After(5 * time.Second):
				t.Fatal("not handled")
			}
			if handler.TraceID() != span.SpanContext().TraceID() {
				t.Fatalf("handler in trace %s, want %s", handler.TraceID(), span.SpanContext().TraceID())
			}
			note, err := notes.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			published := tracing.FromHeader(note.Header)
			replyTP := reply.Meta.Extra[tracing.MetaTraceparent]
			switch tc.name {
			case "recording":
				if handler.SpanID() == span.SpanContext().SpanID() || published.SpanID() != handler.SpanID() {
					t.Fatalf("publish under %s, want the handler's own span %s", published.SpanID(), handler.SpanID())
				}
				if len(replyTP) == 0 {
					t.Fatal("the reply does not carry the handler's span")
				}
			case "no-op":
				if handler.SpanID() != span.SpanContext().SpanID() || published.SpanID() != span.SpanContext().SpanID() {
					t.Fatalf("no-op: handler %s, publish %s, want the caller's span %s", handler.SpanID(), published.SpanID(), span.SpanContext().SpanID())
				}
				if len(replyTP) != 0 {
					t.Fatalf("no-op: the reply carries %s", replyTP)
				}
			}
		})
	}
	if len(exp.GetSpans()) != 1 {
		t.Fatalf("%d worker spans recorded, want the recording one only", len(exp.GetSpans()))
	}
}
