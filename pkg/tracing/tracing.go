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
	if sc, ok := parse00(traceparent); ok {
		// The common form, without the propagator's carrier and context
		// allocations; FuzzParse checks that both agree on every input.
		if tracestate != "" {
			if ts, err := trace.ParseTraceState(tracestate); err == nil {
				sc = sc.WithTraceState(ts)
			}
		}
		return sc
	}
	c := propagation.MapCarrier{MetaTraceparent: traceparent}
	if tracestate != "" {
		c[MetaTracestate] = tracestate
	}
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), c))
}

// parse00 reads a version 00 traceparent, the form every current
// implementation sends: "00-" 32 lower-case hex digits "-" 16 "-" 2,
// neither id all zeros. It reports false for anything else, which Parse
// then leaves to the propagator.
func parse00(v string) (trace.SpanContext, bool) {
	if len(v) != 55 || v[0] != '0' || v[1] != '0' || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return trace.SpanContext{}, false
	}
	var cfg trace.SpanContextConfig
	var flags [1]byte
	if !lowerHex(cfg.TraceID[:], v[3:35]) || !lowerHex(cfg.SpanID[:], v[36:52]) || !lowerHex(flags[:], v[53:55]) {
		return trace.SpanContext{}, false
	}
	if flags[0] > 3 {
		return trace.SpanContext{}, false // bits W3C has not defined: as the propagator says
	}
	cfg.TraceFlags = trace.TraceFlags(flags[0]) // sampled, and level 2's random
	cfg.Remote = true
	sc := trace.NewSpanContext(cfg)
	return sc, sc.IsValid()
}

// lowerHex decodes s, lower-case hex digits only, into dst.
func lowerHex(dst []byte, s string) bool {
	for i := range dst {
		hi, lo := unhex(s[2*i]), unhex(s[2*i+1])
		if hi > 15 || lo > 15 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return 255
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
