package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/worker"
)

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
	sampledParent = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// traceMeta is a frame's meta with trace context, as a client sends it.
func traceMeta(cid string, kv ...string) envelope.Meta {
	m := envelope.Meta{CorrelationID: cid, Extra: map[string]json.RawMessage{}}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Extra[kv[i]] = json.RawMessage(kv[i+1])
	}
	return m
}

func quoted(s string) string { b, _ := json.Marshal(s); return string(b) }

// TestTraceContextPropagatedWithTracingOff: without a tracer provider the
// edge makes no spans but carries a client's valid context into the NATS
// headers. The body keeps trace keys only when they are valid and say
// what the headers say; anything else is removed, never forwarded.
func TestTraceContextPropagatedWithTracingOff(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	sub, err := m.NC.SubscribeSync("natter.in.note.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := m.dial(t, "alice")
	for _, tc := range []struct {
		name       string
		meta       []string
		wantParent string
		wantState  string
		bodyKeeps  bool
	}{
		{"valid with state", []string{"traceparent", quoted(sampledParent), "tracestate", quoted("rojo=00f067aa0ba902b7")}, sampledParent, "rojo=00f067aa0ba902b7", true},
		{"valid, unsampled", []string{"traceparent", quoted("00-" + clientTraceID + "-" + clientSpanID + "-00")}, "00-" + clientTraceID + "-" + clientSpanID + "-00", "", true},
		{"later version, read as 00", []string{"traceparent", quoted("01" + sampledParent[2:] + "-later")}, sampledParent, "", false},
		{"state without parent", []string{"tracestate", quoted("rojo=1")}, "", "", false},
		{"upper case", []string{"traceparent", quoted(strings.ToUpper(sampledParent))}, "", "", false},
		{"zero trace id", []string{"traceparent", quoted("00-00000000000000000000000000000000-" + clientSpanID + "-01")}, "", "", false},
		{"not a string", []string{"traceparent", `{"x":1}`}, "", "", false},
		{"a number", []string{"traceparent", `12`}, "", "", false},
		{"oversized", []string{"traceparent", quoted("01" + sampledParent[2:] + "-" + strings.Repeat("a", 400))}, "", "", false},
		{"oversized state dropped alone", []string{"traceparent", quoted(sampledParent), "tracestate", quoted("a=" + strings.Repeat("b", 600))}, sampledParent, "", false},
		{"invalid state dropped alone", []string{"traceparent", quoted(sampledParent), "tracestate", quoted("no list")}, sampledParent, "", false},
		{"state not a string", []string{"traceparent", quoted(sampledParent), "tracestate", `["a=1"]`}, sampledParent, "", false},
	} {
		c.Send(t, "note.add", traceMeta("", append(tc.meta, "keep", `"me"`)...), map[string]string{"case": tc.name})
		msg, err := sub.NextMsg(wait)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := msg.Header.Get(tracing.HeaderTraceparent); got != tc.wantParent {
			t.Errorf("%s: Traceparent %q, want %q", tc.name, got, tc.wantParent)
		}
		if got := msg.Header.Get(tracing.HeaderTracestate); got != tc.wantState {
			t.Errorf("%s: Tracestate %q, want %q", tc.name, got, tc.wantState)
		}
		if msg.Header.Get(tracing.HeaderNATSTraceDest) != "" {
			t.Errorf("%s: Nats-Trace-Dest set with tracing off", tc.name)
		}
		env, err := envelope.Decode(msg.Data, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		_, tp := env.Meta.Extra["traceparent"]
		_, ts := env.Meta.Extra["tracestate"]
		switch {
		case !tc.bodyKeeps && (tp || ts):
			t.Errorf("%s: body still carries trace keys: %s", tc.name, msg.Data)
		case tc.bodyKeeps && (metaTrace(env) != tc.wantParent || tc.wantState != "" && !ts):
			t.Errorf("%s: body lost its valid trace keys: %s", tc.name, msg.Data)
		}
		if string(env.Meta.Extra["keep"]) != `"me"` {
			t.Errorf("%s: other meta keys must stay: %s", tc.name, msg.Data)
		}
	}
	// Keys written twice or escaped: JSON parsers differ on which value
	// wins, so the body keeps neither; the header has the one the edge read.
	for _, raw := range []string{
		`{"type":"note.add","meta":{"traceparent":"` + strings.Repeat("x", 200) + `","trace\u0070arent":"` + sampledParent + `","keep":"me"}}`,
		`{"type":"note.add","meta":{"trace\u0070arent":"` + sampledParent + `","keep":"me"}}`,
		`{"type":"note.add","meta":{"traceparent":"` + sampledParent + `","traceparent":"` + sampledParent + `","keep":"me"}}`,
	} {
		c.SendRaw(t, gws.OpcodeText, []byte(raw))
		msg, err := sub.NextMsg(wait)
		if err != nil {
			t.Fatal(err)
		}
		if got := msg.Header.Get(tracing.HeaderTraceparent); got != sampledParent {
			t.Errorf("%s: Traceparent %q", raw, got)
		}
		if bytes.Contains(msg.Data, []byte("trace")) || !bytes.Contains(msg.Data, []byte(`"keep":"me"`)) {
			t.Errorf("%s: forwarded as %s", raw, msg.Data)
		}
	}
	// A frame without trace context is forwarded as it came: no headers,
	// no re-encoding.
	c.Send(t, "note.add", envelope.Meta{}, map[string]int{"n": 1})
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatal(err)
	}
	if tracing.HasContext(msg.Header) {
		t.Fatalf("headers %v", msg.Header)
	}
}

// tracedMesh is a mesh whose edge and worker record their spans.
func tracedMesh(t *testing.T, sampler sdktrace.Sampler, cfg edge.Config, handlers map[string]worker.Handler) (*mesh, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sampler))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	cfg.Tracing.Provider = tp
	m := newMesh(t, cfg)
	startWorker(t, m.NC, worker.Config{Queue: "trace-test", Logger: testenv.Logger(t), TracerProvider: tp}, handlers)
	return m, exp
}

// spansOf waits until exp holds want spans of traceID and returns them by name.
func spansOf(t *testing.T, exp *tracetest.InMemoryExporter, traceID string, want ...string) map[string]tracetest.SpanStub {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := map[string]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID().String() == traceID {
				got[s.Name] = s
			}
		}
		missing := ""
		for _, n := range want {
			if _, ok := got[n]; !ok {
				missing = n
			}
		}
		if missing == "" {
			return got
		}
		if time.Now().After(deadline) {
			names := []string{}
			for n := range got {
				names = append(names, n)
			}
			t.Fatalf("no span %q in trace %s; have %v", missing, traceID, names)
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a deadline loop
	}
}

func childOf(t *testing.T, spans map[string]tracetest.SpanStub, child, parent string) {
	t.Helper()
	if got, want := spans[child].Parent.SpanID(), spans[parent].SpanContext.SpanID(); got != want {
		t.Errorf("%s's parent is %s, want %s (%s)", child, got, parent, want)
	}
}

// TestTraceSpansOfRPC: one RPC from a client that sends its context makes
// the edge's receive, validate and rpc spans and the worker's handler span
// in one trace, in that parent/child order; the reply carries the
// handler's context back to the client, and what the handler publishes is
// delivered with the delivery span's context.
func TestTraceSpansOfRPC(t *testing.T) {
	t.Parallel()
	m, exp := tracedMesh(t, sdktrace.AlwaysSample(), edge.DefaultConfig(), map[string]worker.Handler{
		"calc.add": func(ctx context.Context, msg *worker.Message) error {
			// The edge recorded spans: the body must not carry the
			// client's context, which the headers replaced.
			if _, ok := msg.Envelope.Meta.Extra["traceparent"]; ok {
				return rpc.Errorf(envelope.CodeInternal, "body carries meta.traceparent beside the edge's span")
			}
			if err := msg.Publisher().ToConn(msg.Conn, &envelope.Envelope{Type: "calc.note", Payload: json.RawMessage(`{"n":1}`)}); err != nil {
				return err
			}
			return msg.Reply("calc.sum", map[string]int{"sum": 3})
		},
		"calc.fail": func(ctx context.Context, msg *worker.Message) error {
			return rpc.Errorf(envelope.CodeNotFound, "no such thing")
		},
	})
	c := m.dial(t, "alice")
	c.Send(t, "calc.add", traceMeta("r1", "traceparent", quoted(sampledParent), "tracestate", quoted("rojo=1")), map[string]int{"a": 1})
	var note, reply *envelope.Envelope
	for note == nil || reply == nil {
		got := nextFrame(t, c)
		switch got.Type {
		case "calc.note":
			note = got
		case "calc.sum":
			reply = got
		default:
			t.Fatalf("unexpected %s %s", got.Type, got.Payload)
		}
	}
	spans := spansOf(t, exp, clientTraceID, "natter.edge.receive calc.add", "natter.edge.validate calc.add",
		"natter.edge.rpc calc.add", "natter.worker.handle calc.add", "natter.edge.deliver calc.note")
	if p := spans["natter.edge.receive calc.add"].Parent; p.SpanID().String() != clientSpanID || !p.IsRemote() {
		t.Errorf("receive's parent is %v, want the client's span %s", p.SpanID(), clientSpanID)
	}
	childOf(t, spans, "natter.edge.validate calc.add", "natter.edge.receive calc.add")
	childOf(t, spans, "natter.edge.rpc calc.add", "natter.edge.receive calc.add")
	childOf(t, spans, "natter.worker.handle calc.add", "natter.edge.rpc calc.add")
	childOf(t, spans, "natter.edge.deliver calc.note", "natter.worker.handle calc.add")
	for name, kind := range map[string]trace.SpanKind{
		"natter.edge.receive calc.add": trace.SpanKindServer, "natter.edge.rpc calc.add": trace.SpanKindClient,
		"natter.worker.handle calc.add": trace.SpanKindServer, "natter.edge.deliver calc.note": trace.SpanKindConsumer,
	} {
		if spans[name].SpanKind != kind {
			t.Errorf("%s is %v, want %v", name, spans[name].SpanKind, kind)
		}
	}
	if ts := spans["natter.worker.handle calc.add"].SpanContext.TraceState().String(); ts != "rojo=1" {
		t.Errorf("tracestate %q did not reach the worker", ts)
	}
	handle := spans["natter.worker.handle calc.add"].SpanContext
	if got := metaTrace(reply); got != "00-"+clientTraceID+"-"+handle.SpanID().String()+"-01" {
		t.Errorf("reply meta.traceparent %q, want the handler's span %s", got, handle.SpanID())
	}
	deliver := spans["natter.edge.deliver calc.note"].SpanContext
	if got := metaTrace(note); got != "00-"+clientTraceID+"-"+deliver.SpanID().String()+"-01" {
		t.Errorf("delivery meta.traceparent %q, want the delivery span %s", got, deliver.SpanID())
	}

	// A failed RPC: the edge's rpc span and the handler's end in error.
	const failTrace = "11111111111111111111111111111111"
	c.Send(t, "calc.fail", traceMeta("r2", "traceparent", quoted("00-"+failTrace+"-"+clientSpanID+"-01")), nil)
	if got := nextFrame(t, c); got.Type != envelope.TypeRPCError {
		t.Fatalf("got %s", got.Type)
	}
	spans = spansOf(t, exp, failTrace, "natter.edge.rpc calc.fail", "natter.worker.handle calc.fail")
	for _, n := range []string{"natter.edge.rpc calc.fail", "natter.worker.handle calc.fail"} {
		if s := spans[n]; s.Status.Code.String() != "Error" {
			t.Errorf("%s status %v, want Error", n, s.Status)
		}
	}
}

func metaTrace(env *envelope.Envelope) string {
	var s string
	_ = json.Unmarshal(env.Meta.Extra["traceparent"], &s)
	return s
}

// TestTraceSampling: the operator's sampler decides. With a ratio of 0
// that ignores the client's flag, a client's sampled context makes no
// span, and the context still travels (unsampled, so the worker makes
// none either); with parent-based sampling a frame without context starts
// a trace of the edge's own.
func TestTraceSampling(t *testing.T) {
	t.Parallel()
	t.Run("never", func(t *testing.T) {
		t.Parallel()
		cfg := edge.DefaultConfig()
		cfg.Tracing.NATSTraceDest = "natter.test.nats-trace"
		m, exp := tracedMesh(t, sdktrace.TraceIDRatioBased(0), cfg, map[string]worker.Handler{
			"calc.add": func(ctx context.Context, msg *worker.Message) error { return msg.Reply("calc.sum", nil) },
		})
		sub, err := m.NC.SubscribeSync("natter.in.calc.add")
		if err != nil {
			t.Fatal(err)
		}
		c := m.dial(t, "")
		c.Send(t, "calc.add", traceMeta("r1", "traceparent", quoted(sampledParent)), nil)
		if got := nextFrame(t, c); got.Type != "calc.sum" {
			t.Fatalf("got %s", got.Type)
		}
		msg, err := sub.NextMsg(wait)
		if err != nil {
			t.Fatal(err)
		}
		sc := tracing.FromHeader(msg.Header)
		if sc.TraceID().String() != clientTraceID || sc.SpanID().String() != clientSpanID || sc.IsSampled() {
			t.Errorf("header context %v: want the client's span, unsampled", sc)
		}
		if msg.Header.Get(tracing.HeaderNATSTraceDest) != "" {
			t.Error("Nats-Trace-Dest on an unsampled message")
		}
		if n := len(exp.GetSpans()); n != 0 {
			t.Errorf("%d spans recorded with a sampler that samples none", n)
		}
	})
	t.Run("root", func(t *testing.T) {
		t.Parallel()
		m, exp := tracedMesh(t, sdktrace.ParentBased(sdktrace.AlwaysSample()), edge.DefaultConfig(), map[string]worker.Handler{
			"calc.add": func(ctx context.Context, msg *worker.Message) error { return msg.Reply("calc.sum", nil) },
		})
		c := m.dial(t, "")
		c.Send(t, "calc.add", envelope.Meta{CorrelationID: "r1"}, nil)
		reply := nextFrame(t, c)
		sc := tracing.Parse(metaTrace(reply), "")
		if !sc.IsValid() {
			t.Fatalf("reply without trace context: %v", reply.Meta)
		}
		spans := spansOf(t, exp, sc.TraceID().String(), "natter.edge.receive calc.add", "natter.worker.handle calc.add")
		if spans["natter.edge.receive calc.add"].Parent.IsValid() {
			t.Error("the edge's root span has a parent")
		}
	})
}

// TestNATSMessageTrace: a sampled message carries Nats-Trace-Dest, and
// nats-server publishes its hop-by-hop trace (ADR-41) there: the ingress
// of the client's message and its egress to the worker, with the
// message's Traceparent in the traced headers.
func TestNATSMessageTrace(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Tracing.NATSTraceDest = "natter.test.nats-trace"
	m, _ := tracedMesh(t, sdktrace.AlwaysSample(), cfg, map[string]worker.Handler{
		"calc.add": func(ctx context.Context, msg *worker.Message) error { return msg.Reply("calc.sum", nil) },
	})
	events, err := m.NC.SubscribeSync(cfg.Tracing.NATSTraceDest)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := m.dial(t, "")
	c.Send(t, "calc.add", traceMeta("r1", "traceparent", quoted(sampledParent)), nil)
	if got := nextFrame(t, c); got.Type != "calc.sum" {
		t.Fatalf("got %s", got.Type)
	}
	ev, err := events.NextMsg(wait)
	if err != nil {
		t.Fatalf("no trace event from nats-server: %v", err)
	}
	var e struct {
		Request struct {
			Header map[string][]string `json:"header"`
		} `json:"request"`
		Events []struct {
			Type    string `json:"type"`
			Subject string `json:"subj"`
			Name    string `json:"name"`
		} `json:"events"`
	}
	if err := json.Unmarshal(ev.Data, &e); err != nil {
		t.Fatalf("trace event %s: %v", ev.Data, err)
	}
	var ingress, egress bool
	for _, x := range e.Events {
		ingress = ingress || x.Type == "in" && x.Subject == "natter.in.calc.add"
		egress = egress || x.Type == "eg"
	}
	if !ingress || !egress {
		t.Errorf("trace event without the ingress of natter.in.calc.add and an egress: %s", ev.Data)
	}
	if tp := nats.Header(e.Request.Header).Get(tracing.HeaderTraceparent); !strings.Contains(tp, clientTraceID) {
		t.Errorf("traced message's Traceparent %q is not the client's trace", tp)
	}
}

// TestTraceContextOnProtobufWire: on natter.protobuf the trace keys travel
// in Meta.extra, both ways.
func TestTraceContextOnProtobufWire(t *testing.T) {
	t.Parallel()
	m, reg := protobufMesh(t)
	sub, err := m.NC.SubscribeSync("natter.in.note.add")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := dialProtobuf(t, m, "carol", reg)
	c.Send(t, "note.add", traceMeta("", "traceparent", quoted(sampledParent)), map[string]int{"n": 1})
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get(tracing.HeaderTraceparent); got != sampledParent {
		t.Fatalf("Traceparent %q from a protobuf client", got)
	}
	// And toward it: a service's Traceparent reaches the protobuf client.
	out := nats.NewMsg("natter.out.conn." + c.ConnID(t))
	out.Data = []byte(`{"type":"note.pushed","payload":{"n":2}}`)
	out.Header.Set(tracing.HeaderTraceparent, sampledParent)
	if err := m.NC.PublishMsg(out); err != nil {
		t.Fatal(err)
	}
	got := c.AwaitType(t, "note.pushed", wait)
	if metaTrace(got) != sampledParent {
		t.Fatalf("protobuf delivery meta %v", got.Meta)
	}
}
