package worker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

func TestHandlerReplies(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	w, err := worker.New(testenv.Connect(t, srv.ClientURL()), worker.Config{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	handlers := map[string]worker.Handler{
		"t.ok": func(_ context.Context, m *worker.Message) error {
			var in struct{ N int }
			if err := m.Bind(&in); err != nil {
				return err
			}
			return m.Reply("t.ok", map[string]int{"n": in.N * 2})
		},
		"t.ack": func(context.Context, *worker.Message) error { return nil },
		"t.notfound": func(context.Context, *worker.Message) error {
			return rpc.Errorf(envelope.CodeNotFound, "no such thing")
		},
		"t.plain": func(context.Context, *worker.Message) error { return errors.New("secret internals") },
		"t.panic": func(context.Context, *worker.Message) error { panic("boom") },
		"t.slow": func(ctx context.Context, _ *worker.Message) error {
			<-ctx.Done() // the deadline from meta.timeoutMs reaches the handler
			return ctx.Err()
		},
	}
	for typ, h := range handlers {
		if err := w.Handle(typ, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	nc := testenv.Connect(t, srv.ClientURL())
	ns := envelope.DefaultNamespace
	ctx := t.Context()

	var out struct{ N int }
	if err := rpc.Call(ctx, nc, ns, "t.ok", map[string]int{"n": 21}, &out); err != nil || out.N != 42 {
		t.Fatalf("t.ok: %v %+v", err, out)
	}
	if err := rpc.Call(ctx, nc, ns, "t.ack", nil, nil); err != nil {
		t.Fatalf("t.ack: %v", err)
	}
	tests := []struct {
		typ     string
		payload any
		want    error
	}{
		{"t.ok", nil, rpc.ErrInvalidArgument}, // Bind without a payload
		{"t.notfound", nil, rpc.ErrNotFound},
		{"t.plain", nil, rpc.ErrInternal},
		{"t.panic", nil, rpc.ErrInternal},
		{"t.nobody", nil, rpc.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.typ, func(t *testing.T) {
			err := rpc.Call(ctx, nc, ns, tc.typ, tc.payload, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var re *rpc.Error
			if errors.As(err, &re) && re.Message == "secret internals" {
				t.Fatal("a plain error's text leaked to the caller")
			}
		})
	}
	t.Run("deadline", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := rpc.Call(cctx, nc, ns, "t.slow", nil, nil); !errors.Is(err, rpc.ErrDeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
	// The worker survived the panic.
	if err := rpc.Call(ctx, nc, ns, "t.ack", nil, nil); err != nil {
		t.Fatalf("after panic: %v", err)
	}
}

func TestDrainWaitsForInflight(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	w, err := worker.New(testenv.Connect(t, srv.ClientURL()), worker.Config{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var started, finished atomic.Int32
	release := make(chan struct{})
	if err := w.Handle("t.work", func(context.Context, *worker.Message) error {
		started.Add(1)
		<-release
		finished.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush(t.Context())
	nc := testenv.Connect(t, srv.ClientURL())
	for range 3 {
		_ = nc.Publish("natter.in.t.work", []byte(`{"type":"t.work"}`))
	}
	testenv.Eventually(t, 5*time.Second, "handlers started", func() bool { return started.Load() == 3 })
	drained := make(chan error, 1)
	go func() { drained <- w.Drain(context.Background()) }()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned with handlers in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-drained; err != nil || finished.Load() != 3 {
		t.Fatalf("drain: %v, finished %d", err, finished.Load())
	}
}

func TestTypedHandler(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	w, err := worker.New(testenv.Connect(t, srv.ClientURL()), worker.Config{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	type sumReq struct{ A, B int }
	type sumResp struct {
		Sum int `json:"sum"`
	}
	if err := w.Handle("math.sum", worker.Typed("math.result", func(_ context.Context, _ *worker.Message, r sumReq) (sumResp, error) {
		if r.A < 0 {
			return sumResp{}, rpc.Errorf(envelope.CodeInvalidArgument, "a must not be negative")
		}
		return sumResp{Sum: r.A + r.B}, nil
	})); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush(t.Context())
	nc := testenv.Connect(t, srv.ClientURL())
	var out sumResp
	if err := rpc.Call(t.Context(), nc, envelope.DefaultNamespace, "math.sum", sumReq{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("sum: %v %+v", err, out)
	}
	if err := rpc.Call(t.Context(), nc, envelope.DefaultNamespace, "math.sum", sumReq{A: -1}, &out); !errors.Is(err, rpc.ErrInvalidArgument) {
		t.Fatalf("typed error: %v", err)
	}
	if err := rpc.Call(t.Context(), nc, envelope.DefaultNamespace, "math.sum", "not an object", &out); !errors.Is(err, rpc.ErrInvalidArgument) {
		t.Fatalf("bad payload: %v", err)
	}
}
