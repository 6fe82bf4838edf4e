package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/testenv/jaeger"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/worker"
)

// provider exports the test's own spans (a client application, a
// service) to Jaeger as service name, the way a real application would.
func provider(t *testing.T, j *jaeger.Jaeger, name string) *sdktrace.TracerProvider {
	t.Helper()
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(j.OTLPHTTPEndpoint()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// spanNamed returns the span of spans named name, failing with the tree.
func spanNamed(t *testing.T, spans []jaeger.Span, name string) jaeger.Span {
	t.Helper()
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no span %q in the trace:\n%s", name, jaeger.Tree(spans))
	return jaeger.Span{}
}

// has reports whether spans hold every name.
func has(names ...string) func([]jaeger.Span) bool {
	return func(spans []jaeger.Span) bool {
		for _, n := range names {
			found := false
			for _, s := range spans {
				found = found || s.Name == n
			}
			if !found {
				return false
			}
		}
		return true
	}
}

// chain checks that each span is the child of the next one, and of which
// service each is.
func chain(t *testing.T, spans []jaeger.Span, links ...[2]string) {
	t.Helper()
	for _, l := range links {
		s := spanNamed(t, spans, l[0])
		svc, name, _ := strings.Cut(l[1], "/")
		if s.Service != svc {
			t.Errorf("%s is of service %q, want %q", l[0], s.Service, svc)
		}
		if name == "" {
			continue
		}
		p := spanNamed(t, spans, name)
		if s.ParentSpanID != p.SpanID {
			t.Errorf("%s's parent is %s, want %s:\n%s", l[0], s.ParentSpanID, name, jaeger.Tree(spans))
		}
	}
}

// TestTracesEndToEnd runs a real edge and worker process that export to
// a real Jaeger over OTLP, with the test as the client application and as
// a service, and reads every trace back from Jaeger's query API.
func TestTracesEndToEnd(t *testing.T) {
	t.Parallel()
	j := jaeger.Start(t)
	srv := testenv.NATS(t)
	url := srv.ClientURL()
	edgeArgs := []string{"--nats", url, "--listen", "127.0.0.1:0", "--insecure-dev-users", "--shutdown-spread", "10ms",
		"--durable-rooms", "trace-*", "--durable-types", "trace.job", "--nats-trace-dest", "natter.test.hops"}
	edgeProc := testenv.StartEnv(t, append(j.Env(), "OTEL_TRACES_SAMPLER=parentbased_always_on"), "edge", edgeArgs...)
	m := edgeProc.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	wsURL := wstest.WSURL(m[1], m[2])
	workerProc := testenv.StartEnv(t, j.Env(), "worker", "--nats", url)
	workerProc.WaitLog(t, `msg="worker ready"`, wait)

	app := provider(t, j, "natter-test-client").Tracer("app")
	svc := provider(t, j, "natter-test-service").Tracer("service")
	c := dialClient(t, wsURL, client.Options{User: "alice", TracerProvider: provider(t, j, "natter-test-client")})
	nc := testenv.Connect(t, url)

	t.Run("rpc from a client", func(t *testing.T) {
		ctx, span := app.Start(context.Background(), "app.ping")
		var reply envelope.Envelope
		if err := c.Call(ctx, "ping", nil, &reply); err != nil {
			t.Fatal(err)
		}
		span.End()
		spans := j.WaitTrace(t, span.SpanContext().TraceID().String(),
			has("natter.rpc ping", "natter.edge.receive ping", "natter.edge.validate ping", "natter.edge.rpc ping", "natter.worker.handle ping"))
		chain(t, spans,
			[2]string{"natter.rpc ping", "natter-test-client/app.ping"},
			[2]string{"natter.edge.receive ping", "natter-edge/natter.rpc ping"},
			[2]string{"natter.edge.validate ping", "natter-edge/natter.edge.receive ping"},
			[2]string{"natter.edge.rpc ping", "natter-edge/natter.edge.receive ping"},
			[2]string{"natter.worker.handle ping", "natter-worker/natter.edge.rpc ping"},
		)
		if k := spanNamed(t, spans, "natter.worker.handle ping").Kind; k != "server" {
			t.Errorf("worker span kind %q, want server", k)
		}
	})

	t.Run("service publish with Traceparent reaches the client", func(t *testing.T) {
		got := make(chan *envelope.Envelope, 1)
		defer c.On("trace.pushed", func(e *envelope.Envelope) { got <- e })()
		ctx, span := svc.Start(context.Background(), "service.push", trace.WithSpanKind(trace.SpanKindProducer))
		// What `nats pub -H "Traceparent:..."` sends: a plain core publish.
		msg := nats.NewMsg("natter.out.conn." + c.ConnID())
		msg.Data = []byte(`{"type":"trace.pushed","payload":{"n":1}}`)
		tracing.Inject(ctx, msg.Header)
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
		span.End()
		var env *envelope.Envelope
		select {
		case env = <-got:
		case <-time.After(wait):
			t.Fatal("no trace.pushed")
		}
		tid := span.SpanContext().TraceID().String()
		if sc := metaContext(env); sc.TraceID().String() != tid {
			t.Errorf("delivery meta.traceparent is in trace %s, want the service's %s", sc.TraceID(), tid)
		}
		spans := j.WaitTrace(t, tid, has("natter.edge.deliver trace.pushed"))
		chain(t, spans, [2]string{"natter.edge.deliver trace.pushed", "natter-edge/service.push"})
	})

	t.Run("server-to-client rpc", func(t *testing.T) {
		c.Handle("trace.ask", func(ctx context.Context, env *envelope.Envelope) (any, error) {
			return map[string]bool{"ok": true}, nil
		})
		ctx, span := svc.Start(context.Background(), "service.ask", trace.WithSpanKind(trace.SpanKindClient))
		msg := nats.NewMsg("natter.out.conn." + c.ConnID())
		msg.Data = []byte(`{"type":"trace.ask","payload":{}}`)
		tracing.Inject(ctx, msg.Header)
		reply, err := nc.RequestMsg(msg, wait)
		if err != nil {
			t.Fatal(err)
		}
		span.End()
		if !strings.Contains(string(reply.Data), `"ok":true`) {
			t.Fatalf("answer %s", reply.Data)
		}
		spans := j.WaitTrace(t, span.SpanContext().TraceID().String(), has("natter.edge.deliver trace.ask", "natter.handle trace.ask"))
		chain(t, spans,
			[2]string{"natter.edge.deliver trace.ask", "natter-edge/service.ask"},
			[2]string{"natter.handle trace.ask", "natter-test-client/natter.edge.deliver trace.ask"},
		)
	})

	t.Run("durable message", func(t *testing.T) {
		w, err := worker.New(testenv.Connect(t, url), worker.Config{Queue: "trace-jobs", Logger: testenv.Logger(t),
			TracerProvider: provider(t, j, "natter-test-worker")})
		if err != nil {
			t.Fatal(err)
		}
		handled := make(chan struct{}, 1)
		hctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := w.HandleDurable(hctx, "trace.job", func(ctx context.Context, msg *worker.Message) error {
			handled <- struct{}{}
			return nil
		}, worker.DurableOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = w.Drain(context.Background()) }()
		ctx, span := app.Start(context.Background(), "app.job")
		if _, err := c.SendDurable(ctx, "trace.job", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
		span.End()
		select {
		case <-handled:
		case <-time.After(wait):
			t.Fatal("durable message not handled")
		}
		spans := j.WaitTrace(t, span.SpanContext().TraceID().String(), has("natter.send trace.job", "natter.edge.publish trace.job", "natter.worker.handle trace.job"))
		chain(t, spans,
			[2]string{"natter.send trace.job", "natter-test-client/app.job"},
			[2]string{"natter.edge.receive trace.job", "natter-edge/natter.send trace.job"},
			[2]string{"natter.edge.publish trace.job", "natter-edge/natter.edge.receive trace.job"},
			[2]string{"natter.worker.handle trace.job", "natter-test-worker/natter.edge.publish trace.job"},
		)
	})

	t.Run("durable room", func(t *testing.T) {
		ctx, span := svc.Start(context.Background(), "service.announce", trace.WithSpanKind(trace.SpanKindProducer))
		pub := worker.NewPublisher(nc, envelope.DefaultNamespace)
		if _, err := pub.ToDurableRoom(ctx, "trace-room", &envelope.Envelope{Type: "trace.news", Payload: json.RawMessage(`{"n":1}`)}); err != nil {
			t.Fatal(err)
		}
		span.End()
		tid := span.SpanContext().TraceID().String()
		// Read back from history: the stored context.
		hctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		page, err := c.History(hctx, "trace-room", client.HistoryQuery{})
		if err != nil || len(page.Messages) != 1 {
			t.Fatalf("history: %v %v", page, err)
		}
		if sc := metaContext(page.Messages[0]); sc.TraceID().String() != tid || sc.SpanID() != span.SpanContext().SpanID() {
			t.Errorf("history meta.traceparent %v, want the publisher's span %s", sc, span.SpanContext().SpanID())
		}
		got := make(chan *envelope.Envelope, 1)
		defer c.On("trace.news", func(e *envelope.Envelope) { got <- e })()
		if err := c.Join(hctx, "trace-room"); err != nil {
			t.Fatal(err)
		}
		// Delivered live to a member: the edge's delivery span.
		ctx, live := svc.Start(context.Background(), "service.announce-live", trace.WithSpanKind(trace.SpanKindProducer))
		if _, err := pub.ToDurableRoom(ctx, "trace-room", &envelope.Envelope{Type: "trace.news", Payload: json.RawMessage(`{"n":2}`)}); err != nil {
			t.Fatal(err)
		}
		live.End()
		select {
		case env := <-got:
			if sc := metaContext(env); sc.TraceID() != live.SpanContext().TraceID() {
				t.Errorf("live meta.traceparent %v, want trace %s", sc, live.SpanContext().TraceID())
			}
		case <-time.After(wait):
			t.Fatal("no live trace.news")
		}
		spans := j.WaitTrace(t, live.SpanContext().TraceID().String(), has("natter.edge.deliver"))
		chain(t, spans, [2]string{"natter.edge.deliver", "natter-edge/service.announce-live"})
	})

	t.Run("nats hops of a sampled message", func(t *testing.T) {
		hops, err := nc.SubscribeSync("natter.test.hops")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = hops.Unsubscribe() }()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		ctx, span := app.Start(context.Background(), "app.echo")
		if err := c.Call(ctx, "echo", map[string]string{"text": "hi"}, nil); err != nil {
			t.Fatal(err)
		}
		span.End()
		tid := span.SpanContext().TraceID().String()
		deadline := time.Now().Add(wait)
		for {
			ev, err := hops.NextMsg(time.Until(deadline))
			if err != nil {
				t.Fatalf("no nats-server trace event of trace %s: %v", tid, err)
			}
			if strings.Contains(string(ev.Data), tid) && strings.Contains(string(ev.Data), `"natter.in.echo"`) {
				break
			}
		}
	})
}

// TestTracingOffExportsNothing: with tracing off (no OTEL_* variables) a
// client's sampled context makes no edge span, however it asks, and still
// travels on: the worker, which traces, continues the client's span
// directly.
func TestTracingOffExportsNothing(t *testing.T) {
	t.Parallel()
	j := jaeger.Start(t)
	srv := testenv.NATS(t)
	url := srv.ClientURL()
	edgeProc := testenv.StartEnv(t, nil, "edge", "--nats", url, "--listen", "127.0.0.1:0", "--insecure-dev-users", "--shutdown-spread", "10ms", "--nats-trace-dest", "natter.test.hops")
	m := edgeProc.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	workerProc := testenv.StartEnv(t, j.Env(), "worker", "--nats", url)
	workerProc.WaitLog(t, `msg="worker ready"`, wait)
	nc := testenv.Connect(t, url)
	hops, err := nc.SubscribeSync("natter.test.hops")
	if err != nil {
		t.Fatal(err)
	}

	tp := provider(t, j, "natter-test-client")
	c := dialClient(t, wstest.WSURL(m[1], m[2]), client.Options{User: "bob", TracerProvider: tp})
	ctx, span := tp.Tracer("app").Start(context.Background(), "app.ping")
	if err := c.Call(ctx, "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	span.End()
	spans := j.WaitTrace(t, span.SpanContext().TraceID().String(), has("natter.rpc ping", "natter.worker.handle ping"))
	chain(t, spans, [2]string{"natter.worker.handle ping", "natter-worker/natter.rpc ping"})
	// The worker's span is exported after the edge would have exported
	// its own: give the edge's batch (if it had one) a second more.
	time.Sleep(time.Second) // the window in which a wrongly made edge span would arrive
	for _, s := range j.WaitTrace(t, span.SpanContext().TraceID().String(), has("natter.worker.handle ping")) {
		if s.Service == "natter-edge" {
			t.Errorf("the edge exported %s with tracing off", s.Name)
		}
	}
	if ev, err := hops.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("nats-server traced a message with tracing off: %s", ev.Data)
	}
}

// metaContext is the span context of a delivery's meta.traceparent.
func metaContext(env *envelope.Envelope) trace.SpanContext {
	var tp, ts string
	_ = json.Unmarshal(env.Meta.Extra[tracing.MetaTraceparent], &tp)
	_ = json.Unmarshal(env.Meta.Extra[tracing.MetaTracestate], &ts)
	return tracing.Parse(tp, ts)
}

// dialClient connects a Go client and closes it at cleanup.
func dialClient(t *testing.T, url string, opts client.Options) *client.Client {
	t.Helper()
	opts.Logger = testenv.Logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(fmt.Errorf("dial %s: %w", url, err))
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
