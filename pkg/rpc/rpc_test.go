package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

func TestClampTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ms   int64
		want time.Duration
	}{
		{"none asked: default", 0, 10 * time.Second},
		{"negative: default", -5, 10 * time.Second},
		{"within range", 1500, 1500 * time.Millisecond},
		{"too small: minimum", 1, rpc.MinTimeout},
		{"too large: clamped", 3_600_000, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := rpc.ClampTimeout(tc.ms, 10*time.Second, 30*time.Second); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestFromError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want *rpc.Error
	}{
		{"no responders", nats.ErrNoResponders, rpc.ErrUnavailable},
		{"nats timeout", nats.ErrTimeout, rpc.ErrDeadlineExceeded},
		{"context deadline", fmt.Errorf("wrapped: %w", context.DeadlineExceeded), rpc.ErrDeadlineExceeded},
		{"cancelled", context.Canceled, rpc.ErrCanceled},
		{"closed", nats.ErrConnectionClosed, rpc.ErrUnavailable},
		{"typed", rpc.Errorf(envelope.CodeNotFound, "x"), rpc.ErrNotFound},
		{"anything else", errors.New("db password is hunter2"), rpc.ErrInternal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := rpc.FromError(tc.err)
			if !errors.Is(got, tc.want) {
				t.Fatalf("got %v, want code %s", got, tc.want.Code)
			}
		})
	}
}

func TestDecodeReply(t *testing.T) {
	t.Parallel()
	var out struct{ N int }
	if err := rpc.DecodeReply([]byte(`{"type":"r","payload":{"n":3}}`), &out); err != nil || out.N != 3 {
		t.Fatalf("reply: %v %+v", err, out)
	}
	err := rpc.DecodeReply([]byte(`{"type":"RPC_ERROR","payload":{"code":"PERMISSION_DENIED","message":"no","retryAfterMs":50}}`), nil)
	var re *rpc.Error
	if !errors.As(err, &re) || !errors.Is(err, rpc.ErrPermissionDenied) || re.RetryAfter != 50*time.Millisecond {
		t.Fatalf("error reply: %v", err)
	}
	if err := rpc.DecodeReply([]byte(`{"type":"RPC_ERROR","payload":{}}`), nil); !errors.Is(err, rpc.ErrInternal) {
		t.Fatalf("malformed error reply: %v", err)
	}
}

func ExampleError() {
	err := fmt.Errorf("loading profile: %w", rpc.Errorf(envelope.CodeNotFound, "user %s", "u1"))
	fmt.Println(errors.Is(err, rpc.ErrNotFound), errors.Is(err, rpc.ErrInternal))
	fmt.Println(rpc.FromError(err).Payload().Code)
	// Output:
	// true false
	// NOT_FOUND
}

// Ask takes a connection id, <edge>.<n>, and publishes on
// natter.out.conn.<edge>.<n>; anything else is refused before it is sent.
// A connection its edge does not hold (the edge answers UNAVAILABLE) and
// one of no edge at all (no responders) both fail at once.
func TestAskConnID(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	ns := envelope.DefaultNamespace
	seen := make(chan string, 16)
	// An edge "e1" holding one connection, "e1.c1", that answers.
	_, err := nc.Subscribe("natter.out.conn.e1.*", func(m *nats.Msg) {
		seen <- m.Subject
		if m.Subject != "natter.out.conn.e1.c1" {
			_ = m.Respond(envelope.RPCErrorFrame("", envelope.CodeUnavailable, "no such connection"))
			return
		}
		_ = m.Respond([]byte(`{"type":"here","payload":{"ok":true}}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "c1", "e1.c1.x", "e1.*", "e1.>", "*.c1", "e1..c1", "e1.c 1", ".c1"} {
		if err := rpc.Ask(t.Context(), nc, ns, bad, "q", nil, nil); !errors.Is(err, envelope.ErrInvalidID) {
			t.Errorf("Ask(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
	var out struct{ OK bool }
	if err := rpc.Ask(t.Context(), nc, ns, "e1.c1", "q", nil, &out); err != nil || !out.OK {
		t.Fatalf("Ask(e1.c1) = %v, %+v", err, out)
	}
	for _, conn := range []string{"e1.gone", "e2.c1"} {
		start := time.Now()
		if err := rpc.Ask(t.Context(), nc, ns, conn, "q", nil, nil); !errors.Is(err, rpc.ErrUnavailable) {
			t.Errorf("Ask(%s) = %v, want ErrUnavailable", conn, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Ask(%s) took %s", conn, d)
		}
	}
	// Only the two valid ids of e1 were published: none of the refused.
	for _, want := range []string{"natter.out.conn.e1.c1", "natter.out.conn.e1.gone"} {
		if got := <-seen; got != want {
			t.Fatalf("published on %s, want %s", got, want)
		}
	}
	select {
	case got := <-seen:
		t.Fatalf("also published on %s", got)
	default:
	}
}
