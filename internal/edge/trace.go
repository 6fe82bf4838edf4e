package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

// Trace context through the edge (docs/design/tracing.md): a client's
// meta.traceparent becomes the Traceparent header of what the edge
// publishes, and a Traceparent header of what it delivers becomes the
// client's meta.traceparent. With Config.Tracing.Provider the edge also
// makes spans; without, it only propagates, at the cost of a map lookup
// per message.

// inTrace is the trace of one client message on its way in. The zero
// value is no trace: the client sent no valid context and tracing is off.
type inTrace struct {
	ctx    context.Context   // the receive span's, or the client's context; nil: none
	span   trace.Span        // the receive span; nil when tracing is off
	client trace.SpanContext // the client's own context; invalid: it sent none
	// tp and ts are the client's traceparent and tracestate as it sent
	// them, set when they are valid and in the headers' form: copied into
	// the headers as they are when the edge records no span.
	tp, ts string
}

// traceIn reads the client's trace context from env's meta and starts
// the receive span. It returns the envelope to forward: data as it came
// when the client sent no trace keys, or valid ones that say what the
// headers will say; otherwise data re-encoded without them, so that an
// invalid value is never forwarded and the body never contradicts the
// headers (which carry the edge's span when it records one).
func (e *Edge) traceIn(env *envelope.Envelope, data []byte) (inTrace, []byte) {
	var sc trace.SpanContext
	var tp, ts string
	strip := false
	if len(env.Meta.Extra) > 0 {
		rawTP, hasTP := env.Meta.Extra[tracing.MetaTraceparent]
		rawTS, hasTS := env.Meta.Extra[tracing.MetaTracestate]
		if hasTP || hasTS {
			tp, ts = metaString(rawTP, tracing.MaxTraceparent), metaString(rawTS, tracing.MaxTracestate)
			if hasTP {
				sc = tracing.Parse(tp, ts)
			}
			// Kept only in the form the header takes (version 00, the
			// tracestate as parsed), and only when the frame holds each key
			// once, unescaped: a parser that keeps the first of two, or
			// reads an escaped key apart, must see the same value.
			strip = !sc.IsValid() || len(tp) != 55 || tp[:2] != "00" || !rawIs(data, tracing.MetaTraceparent, tp) ||
				hasTS && (ts == "" || sc.TraceState().String() != ts || !rawIs(data, tracing.MetaTracestate, ts))
		}
	}
	var t inTrace
	if sc.IsValid() {
		t.ctx = background // with tracing off, only a marker: no context is made
		t.client = sc
		if !strip {
			t.tp, t.ts = tp, ts
		}
	}
	if e.tracer != nil {
		t.ctx = context.Background()
		if sc.IsValid() {
			t.ctx = trace.ContextWithRemoteSpanContext(t.ctx, sc)
		}
		t.ctx, t.span = e.tracer.Start(t.ctx, "natter.edge.receive "+env.Type, trace.WithSpanKind(trace.SpanKindServer))
		if t.span.IsRecording() {
			t.span.SetAttributes(attribute.String("messaging.system", "natter"), attribute.String("natter.type", env.Type))
			strip = strip || sc.IsValid()
		}
	}
	if strip {
		t.tp, t.ts = "", ""
		delete(env.Meta.Extra, tracing.MetaTraceparent)
		delete(env.Meta.Extra, tracing.MetaTracestate)
		if b, err := envelope.Encode(env); err == nil {
			data = b
		}
	}
	return t, data
}

// rawIs reports whether the JSON frame data names key exactly once,
// unescaped, with the plain string value want right after it. It scans
// the frame, so it runs only for frames that carry trace keys.
func rawIs(data []byte, key, want string) bool {
	k := `"` + key + `"`
	i := bytes.Index(data, []byte(k))
	if i < 0 || bytes.Contains(data[i+len(k):], []byte(k)) {
		return false
	}
	rest := bytes.TrimLeft(data[i+len(k):], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return false
	}
	rest = bytes.TrimLeft(rest[1:], " \t\r\n")
	return len(rest) > len(want)+1 && rest[0] == '"' && string(rest[1:len(want)+1]) == want && rest[len(want)+1] == '"'
}

// background marks an inTrace that has the client's context but no span.
var background = context.Background()

// metaString is the string a meta value holds, or "" when it is not a
// JSON string of at most max bytes.
func metaString(raw json.RawMessage, max int) string {
	if len(raw) < 2 || len(raw) > 2*max+2 || raw[0] != '"' {
		return ""
	}
	if len(raw)-2 <= max && raw[len(raw)-1] == '"' && bytes.IndexByte(raw[1:len(raw)-1], '\\') < 0 {
		return string(raw[1 : len(raw)-1]) // no escapes: the bytes between the quotes (valid JSON, so no quote among them)
	}
	var s string
	if json.Unmarshal(raw, &s) != nil || len(s) > max {
		return ""
	}
	return s
}

// recording reports whether t's spans are kept: only then are child spans
// worth making.
func (t inTrace) recording() bool { return t.span != nil && t.span.IsRecording() }

// child starts the span op+" "+typ under t's receive span when that one
// is recording, and returns nil otherwise. Its name is made only then: an
// untraced frame allocates nothing here.
func (e *Edge) child(t inTrace, op, typ string, kind trace.SpanKind) (context.Context, trace.Span) {
	if !t.recording() {
		return t.ctx, nil
	}
	return e.tracer.Start(t.ctx, op+" "+typ, trace.WithSpanKind(kind))
}

// end ends the receive span.
func (t inTrace) end() {
	if t.span != nil {
		t.span.End()
	}
}

// failed marks span as failed with p's code and message.
func failed(span trace.Span, p *envelope.ErrorPayload) {
	if span != nil && span.IsRecording() {
		span.SetAttributes(attribute.String("natter.error.code", string(p.Code)))
		span.SetStatus(codes.Error, p.Message)
	}
}

// traceOut starts the publish or RPC span of a client message (when t is
// recording) and writes its context into hdr; unrecorded, the client's
// context (unsampled when the edge's sampler decided so), or else the
// edge's unsampled root. A sampled
// message also asks nats-server for its hop-by-hop trace, when the
// operator named a destination. The span is nil when none was started.
func (e *Edge) traceOut(t inTrace, op, typ string, kind trace.SpanKind, hdr nats.Header) trace.Span {
	if t.ctx == nil {
		return nil
	}
	ctx, span := e.child(t, op, typ, kind)
	switch {
	case span != nil:
		tracing.Inject(ctx, hdr)
	case !t.client.IsValid():
		// The edge's own unsampled root: downstream samples none either.
		tracing.Inject(ctx, hdr)
	case e.tracer != nil:
		// Not recorded by the edge's sampler: the client's span stays the
		// parent, with the edge's decision (unsampled) for the rest.
		tracing.InjectContext(t.client.WithTraceFlags(t.client.TraceFlags().WithSampled(false)), hdr)
	case t.tp != "":
		// Tracing off: the client's own values go on as they came, the
		// ones the forwarded body names too.
		hdr[tracing.HeaderTraceparent] = []string{t.tp}
		if t.ts != "" {
			hdr[tracing.HeaderTracestate] = []string{t.ts}
		}
	default:
		tracing.InjectContext(t.client, hdr)
	}
	if d := e.cfg.Tracing.NATSTraceDest; d != "" && trace.SpanContextFromContext(ctx).IsSampled() && e.tracer != nil {
		hdr[tracing.HeaderNATSTraceDest] = []string{d}
	}
	return span
}

// endSpan ends span, if there is one.
func endSpan(span trace.Span) {
	if span != nil {
		span.End()
	}
}

// traceDeliver starts the delivery span of a message toward clients that
// carries trace context in h, and returns the context the clients get in
// meta: the span's, or h's when tracing is off. Both are zero when h has
// none.
func (e *Edge) traceDeliver(h nats.Header, typ string) (trace.SpanContext, trace.Span) {
	sc := tracing.FromHeader(h)
	if !sc.IsValid() || e.tracer == nil {
		return sc, nil
	}
	name := "natter.edge.deliver"
	if typ != "" {
		name += " " + typ
	}
	_, span := e.tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), sc),
		name, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "natter"))
		if typ != "" {
			span.SetAttributes(attribute.String("natter.type", typ))
		}
	}
	return span.SpanContext(), span
}

// setMetaTrace puts sc into env's meta.traceparent and meta.tracestate.
func setMetaTrace(env *envelope.Envelope, sc trace.SpanContext) {
	tp, ts := tracing.Format(sc)
	if tp == "" {
		return
	}
	if env.Meta.Extra == nil {
		env.Meta.Extra = make(map[string]json.RawMessage, 2)
	}
	env.Meta.Extra[tracing.MetaTraceparent] = strconv.AppendQuote(nil, tp)
	if ts != "" {
		env.Meta.Extra[tracing.MetaTracestate] = strconv.AppendQuote(nil, ts)
	} else {
		delete(env.Meta.Extra, tracing.MetaTracestate)
	}
}
