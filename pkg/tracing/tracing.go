// Package tracing carries W3C trace context through Natter: in a client
// frame's meta.traceparent and meta.tracestate, and in the standard
// Traceparent and Tracestate headers of NATS messages
// (docs/design/tracing.md). Parsing is OpenTelemetry's own W3C
// propagator; this package adds the carriers and the size rules.
package tracing

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The NATS headers and meta keys of trace context.
const (
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
	MetaTraceparent   = "traceparent"
	MetaTracestate    = "tracestate"
	// HeaderNATSTraceDest asks nats-server for its hop-by-hop trace of a
	// message (ADR-41), published to the header's subject.
	HeaderNATSTraceDest = "Nats-Trace-Dest"
)

// Size bounds: a longer value is ignored. A traceparent of version 00 is
// 55 characters; later versions may append fields.
const (
	MaxTraceparent = 256
	MaxTracestate  = 512
)

// ScopeName is the instrumentation scope of Natter's spans.
const ScopeName = "github.com/natter/natter"

var w3c = propagation.TraceContext{}

// Header adapts NATS headers to OpenTelemetry's carrier. It writes the
// canonical Traceparent and Tracestate and reads them, or, as plain NATS
// clients may send them, traceparent and tracestate (nats.go's headers
// are case-sensitive).
type Header nats.Header

var canonical = map[string]string{MetaTraceparent: HeaderTraceparent, MetaTracestate: HeaderTracestate}

// Get returns the first value of key.
func (h Header) Get(key string) string {
	if c, ok := canonical[key]; ok {
		if v := h[c]; len(v) > 0 {
			return v[0]
		}
	}
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set sets key to value, under its canonical name.
func (h Header) Set(key, value string) {
	if c, ok := canonical[key]; ok {
		key = c
	}
	h[key] = []string{value}
}

// Keys lists the header names.
func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// FromHeader returns the span context h carries, or an invalid one. It
// costs one map lookup when h has none.
func FromHeader(h nats.Header) trace.SpanContext {
	tp := traceparent(h)
	if tp == "" {
		return trace.SpanContext{}
	}
	return Parse(tp, Header(h).Get(MetaTracestate))
}

// HasContext reports whether h carries a traceparent, without parsing it.
func HasContext(h nats.Header) bool { return traceparent(h) != "" }

// traceparent is h's Traceparent (or traceparent) value: two map lookups
// at most, none for a message without headers.
func traceparent(h nats.Header) string {
	if len(h) == 0 {
		return ""
	}
	if v := h[HeaderTraceparent]; len(v) > 0 {
		return v[0]
	}
	if v := h[MetaTraceparent]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Parse returns the span context of a traceparent and a tracestate, or an
// invalid one when traceparent is not a valid W3C value within
// MaxTraceparent. A tracestate that is too long or invalid is dropped on
// its own.
func Parse(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" || len(traceparent) > MaxTraceparent {
		return trace.SpanContext{}
	}
	if len(tracestate) > MaxTracestate {
		tracestate = ""
	}
	c := propagation.MapCarrier{MetaTraceparent: traceparent}
	if tracestate != "" {
		c[MetaTracestate] = tracestate
	}
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), c))
}

// Format returns the traceparent and tracestate of sc; both are empty when
// sc is invalid.
func Format(sc trace.SpanContext) (traceparent, tracestate string) {
	if !sc.IsValid() {
		return "", ""
	}
	c := propagation.MapCarrier{}
	w3c.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	return c[MetaTraceparent], c[MetaTracestate]
}

// Inject writes the span context of ctx into h, if it has a valid one.
func Inject(ctx context.Context, h nats.Header) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		w3c.Inject(ctx, Header(h))
	}
}

// InjectContext writes sc into h, if it is valid.
func InjectContext(sc trace.SpanContext, h nats.Header) {
	if sc.IsValid() {
		w3c.Inject(trace.ContextWithSpanContext(context.Background(), sc), Header(h))
	}
}

// Tracer returns Natter's tracer of tp, or nil when tp is nil: callers
// check for nil and make no spans.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(ScopeName)
}
