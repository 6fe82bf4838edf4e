package bench

import (
	"testing"

	"github.com/natter/natter/pkg/tracing"
)

func TestAppendTraceparent(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tp := newTraceparent()
		if len(tp) != traceparentLen {
			t.Fatalf("%q: %d bytes, want %d", tp, len(tp), traceparentLen)
		}
		sc := tracing.Parse(tp, "")
		if !sc.IsValid() || !sc.IsSampled() {
			t.Fatalf("%q: valid %v, sampled %v", tp, sc.IsValid(), sc.IsSampled())
		}
		if seen[sc.TraceID().String()] {
			t.Fatalf("trace id %s twice", sc.TraceID())
		}
		seen[sc.TraceID().String()] = true
	}
}

func TestAppendRPCFrame(t *testing.T) {
	// Untraced: the frame the rpc scenario has always sent.
	if got, want := string(appendRPCFrame(nil, "echo", "m1-2", false, `"xx"`)), `{"type":"echo","meta":{"correlationId":"m1-2"},"payload":"xx"}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	got := string(appendRPCFrame(nil, "echo", "c3", true, `"xx"`))
	const head, tail = `{"type":"echo","meta":{"correlationId":"c3","traceparent":"`, `"},"payload":"xx"}`
	if len(got) != len(head)+traceparentLen+len(tail) || got[:len(head)] != head || got[len(got)-len(tail):] != tail {
		t.Fatalf("traced frame %s", got)
	}
	if sc := tracing.Parse(got[len(head):len(head)+traceparentLen], ""); !sc.IsValid() || !sc.IsSampled() {
		t.Fatalf("traceparent of %s", got)
	}
}
