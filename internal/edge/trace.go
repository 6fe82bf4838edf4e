package edge

import (
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
	ctx  context.Context // the receive span's, or the client's context; nil: none
	span trace.Span      // the receive span; nil when tracing is off
}

// traceIn reads the client's trace context from env's meta and starts
// the receive span. It returns the envelope to forward: data as it came
// when the client sent no trace keys, or valid ones that say what the
// headers will say; otherwise data re-encoded without them, so that an
// invalid value is never forwarded and the body never contradicts the
// headers (which carry the edge's span when it records one).
func (e *Edge) traceIn(env *envelope.Envelope, data []byte) (inTrace, []byte) {
	var sc trace.SpanContext
	strip := false
	if len(env.Meta.Extra) > 0 {
		rawTP, hasTP := env.Meta.Extra[tracing.MetaTraceparent]
		rawTS, hasTS := env.Meta.Extra[tracing.MetaTracestate]
		if hasTP || hasTS {
			tp, ts := metaString(rawTP, tracing.MaxTraceparent), metaString(rawTS, tracing.MaxTracestate)
			if hasTP {
				sc = tracing.Parse(tp, ts)
			}
			// Kept only in the form the header takes: version 00, and the
			// tracestate as parsed.
			strip = !sc.IsValid() || len(tp) != 55 || tp[:2] != "00" || hasTS && (ts == "" || sc.TraceState().String() != ts)
		}
	}
	var t inTrace
	if sc.IsValid() {
		t.ctx = trace.ContextWithRemoteSpanContext(context.Background(), sc)
	}
	if e.tracer != nil {
		if t.ctx == nil {
			t.ctx = context.Background()
		}
		t.ctx, t.span = e.tracer.Start(t.ctx, "natter.edge.receive "+env.Type, trace.WithSpanKind(trace.SpanKindServer))
		if t.span.IsRecording() {
			t.span.SetAttributes(attribute.String("messaging.system", "natter"), attribute.String("natter.type", env.Type))
			strip = strip || sc.IsValid()
		}
	}
	if strip {
		delete(env.Meta.Extra, tracing.MetaTraceparent)
		delete(env.Meta.Extra, tracing.MetaTracestate)
		if b, err := envelope.Encode(env); err == nil {
			data = b
		}
	}
	return t, data
}

// metaString is the string a meta value holds, or "" when it is not a
// JSON string of at most max bytes.
func metaString(raw json.RawMessage, max int) string {
	if len(raw) < 2 || len(raw) > 2*max+2 || raw[0] != '"' {
		return ""
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

// child starts a span under t's receive span when that one is recording,
// and returns nil otherwise.
func (e *Edge) child(t inTrace, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if !t.recording() {
		return t.ctx, nil
	}
	return e.tracer.Start(t.ctx, name, trace.WithSpanKind(kind))
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
// recording) and writes its context, or the client's, into hdr. A sampled
// message also asks nats-server for its hop-by-hop trace, when the
// operator named a destination. The span is nil when none was started.
func (e *Edge) traceOut(t inTrace, name string, kind trace.SpanKind, hdr nats.Header) trace.Span {
	if t.ctx == nil {
		return nil
	}
	ctx, span := e.child(t, name, kind)
	tracing.Inject(ctx, hdr)
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
