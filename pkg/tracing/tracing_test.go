package tracing

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, tp, ts string
		ok           bool
		state        string
	}{
		{"valid", valid, "", true, ""},
		{"with state", valid, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", true, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{"state too long", valid, "a=" + strings.Repeat("b", MaxTracestate), true, ""},
		{"state invalid", valid, "not a list", true, ""},
		{"empty", "", "", false, ""},
		{"upper case", strings.ToUpper(valid), "", false, ""},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "", false, ""},
		{"zero span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "", false, ""},
		{"version ff", "ff" + valid[2:], "", false, ""},
		{"version 00 too long", valid + "-00", "", false, ""},
		{"short", valid[:54], "", false, ""},
		{"later version with more fields", "01" + valid[2:] + "-what", "", true, ""},
		{"too long", "01" + valid[2:] + "-" + strings.Repeat("x", MaxTraceparent), "", false, ""},
		{"not hex", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := Parse(tc.tp, tc.ts)
			if sc.IsValid() != tc.ok {
				t.Fatalf("Parse(%q) valid = %v, want %v", tc.tp, sc.IsValid(), tc.ok)
			}
			if got := sc.TraceState().String(); got != tc.state {
				t.Fatalf("tracestate %q, want %q", got, tc.state)
			}
			if tc.ok && !sc.IsRemote() {
				t.Fatal("a parsed context must be remote")
			}
		})
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	t.Parallel()
	sc := Parse(valid, "rojo=00f067aa0ba902b7")
	h := nats.Header{}
	InjectContext(sc, h)
	if h.Get(HeaderTraceparent) != valid || h.Get(HeaderTracestate) != "rojo=00f067aa0ba902b7" {
		t.Fatalf("headers %v", h)
	}
	if got := FromHeader(h); !got.Equal(sc) {
		t.Fatalf("FromHeader = %v, want %v", got, sc)
	}
	// Plain NATS clients may write the lower-case names.
	lower := nats.Header{"traceparent": []string{valid}}
	if got := FromHeader(lower); got.TraceID() != sc.TraceID() || !HasContext(lower) {
		t.Fatalf("lower-case header not read: %v", got)
	}
	if FromHeader(nil).IsValid() || HasContext(nats.Header{"Other": []string{"x"}}) {
		t.Fatal("no context expected")
	}
	tp, ts := Format(sc)
	if tp != valid || ts != "rojo=00f067aa0ba902b7" {
		t.Fatalf("Format = %q %q", tp, ts)
	}
	if tp, ts := Format(trace.SpanContext{}); tp != "" || ts != "" {
		t.Fatal("an invalid context formats as nothing")
	}
	h = nats.Header{}
	Inject(context.Background(), h)
	if len(h) != 0 {
		t.Fatalf("no context, no headers: %v", h)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(valid, "rojo=00f067aa0ba902b7")
	f.Add("01"+valid[2:]+"-x", "")
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", "")
	f.Add("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "")
	f.Fuzz(func(t *testing.T, tp, ts string) {
		sc := Parse(tp, ts)
		// The fast path agrees with OpenTelemetry's propagator.
		if len(tp) <= MaxTraceparent && len(ts) <= MaxTracestate {
			c := propagation.MapCarrier{MetaTraceparent: tp}
			if ts != "" {
				c[MetaTracestate] = ts
			}
			if want := trace.SpanContextFromContext(w3c.Extract(context.Background(), c)); !sc.Equal(want) {
				t.Fatalf("Parse(%q, %q) = %v, the propagator says %v", tp, ts, sc, want)
			}
		}
		if !sc.IsValid() {
			return
		}
		// What is accepted formats back as a version 00 value that parses
		// to the same context.
		out, outState := Format(sc)
		if len(out) != 55 || !Parse(out, outState).Equal(sc) {
			t.Fatalf("Parse(%q, %q) = %v does not round-trip (%q %q)", tp, ts, sc, out, outState)
		}
	})
}
