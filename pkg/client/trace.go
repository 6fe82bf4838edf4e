package client

import (
	"context"
	"encoding/json"
	"errors"
	"maps"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

// The client's spans (docs/design/tracing.md): natter.send <type>
// (producer) per SendContext and SendDurable, natter.rpc <type> (client)
// per Call, children of the caller's active span. The span's context goes
// to the edge in meta.traceparent and meta.tracestate, from where it
// travels in the NATS headers to the workers.

// startSpan starts the span of an application message of type typ.
func (c *Client) startSpan(ctx context.Context, name, typ string, kind trace.SpanKind) (context.Context, trace.Span) {
	ctx, span := c.tracer.Start(ctx, name+" "+typ, trace.WithSpanKind(kind))
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "natter"), attribute.String("natter.type", typ))
	}
	return ctx, span
}

// endSpan ends span, failed with err's code when err is set.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		var re *rpc.Error
		if errors.As(err, &re) {
			span.SetAttributes(attribute.String("natter.error.code", string(re.Code)))
		}
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// withTrace puts the span context of ctx into meta, unless meta already
// carries a traceparent (the application's own).
func withTrace(ctx context.Context, meta *envelope.Meta) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return
	}
	if _, ok := meta.Extra[tracing.MetaTraceparent]; ok {
		return
	}
	tp, ts := tracing.Format(sc)
	// A copy: the caller's map (a Meta it may reuse, or share between
	// goroutines) is never written to.
	extra := make(map[string]json.RawMessage, len(meta.Extra)+2)
	maps.Copy(extra, meta.Extra)
	meta.Extra = extra
	meta.Extra[tracing.MetaTraceparent] = mustMarshal(tp)
	if ts != "" {
		meta.Extra[tracing.MetaTracestate] = mustMarshal(ts)
	}
}
