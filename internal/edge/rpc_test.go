package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// rpcMesh is a mesh plus a worker of the test's own handlers.
func rpcMesh(t *testing.T, cfg edge.Config, handlers map[string]worker.Handler) *mesh {
	t.Helper()
	m := newMesh(t, cfg)
	startWorker(t, m.NC, worker.Config{Queue: "rpc-test", Logger: testenv.Logger(t)}, handlers)
	return m
}

// startWorker runs a worker of handlers on nc until the test ends.
func startWorker(t *testing.T, nc *nats.Conn, cfg worker.Config, handlers map[string]worker.Handler) {
	t.Helper()
	w, err := worker.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for typ, h := range handlers {
		if err := w.Handle(typ, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Drain(ctx)
	})
}

// nextFrame returns the client's next frame other than the edge's $connected.
func nextFrame(t *testing.T, c *wstest.Client) *envelope.Envelope {
	t.Helper()
	return c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Type != envelope.TypeConnected })
}

func TestRPCProgressInOrderBeforeReply(t *testing.T) {
	t.Parallel()
	m := rpcMesh(t, edge.DefaultConfig(), map[string]worker.Handler{
		"job.run": func(_ context.Context, msg *worker.Message) error {
			for i := range 20 {
				if err := msg.Progress(map[string]int{"step": i}); err != nil {
					return err
				}
			}
			return msg.Reply("job.done", map[string]bool{"ok": true})
		},
	})
	c := m.dial(t, "")
	c.Send(t, "job.run", envelope.Meta{CorrelationID: "j1"}, nil)
	for i := range 20 {
		got := nextFrame(t, c)
		var p struct{ Step int }
		_ = json.Unmarshal(got.Payload, &p)
		if got.Type != envelope.TypeRPCProgress || got.Meta.CorrelationID != "j1" || p.Step != i {
			t.Fatalf("frame %d: %s %s %s", i, got.Type, got.Meta.CorrelationID, got.Payload)
		}
	}
	if got := nextFrame(t, c); got.Type != "job.done" || got.Meta.CorrelationID != "j1" {
		t.Fatalf("reply: %s %s", got.Type, got.Payload)
	}

	// The same progress reaches a Go service through rpc.Call.
	var steps []int
	err := rpc.Call(t.Context(), m.NC, envelope.DefaultNamespace, "job.run", nil, nil, rpc.WithProgress(func(p json.RawMessage) {
		var s struct{ Step int }
		_ = json.Unmarshal(p, &s)
		steps = append(steps, s.Step)
	}))
	if err != nil || len(steps) != 20 || !slices.IsSorted(steps) {
		t.Fatalf("rpc.Call: %v, steps %v", err, steps)
	}
}

func TestRPCAbortCancelsHandler(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	m := rpcMesh(t, edge.DefaultConfig(), map[string]worker.Handler{
		"long.task": func(ctx context.Context, _ *worker.Message) error {
			started <- struct{}{}
			<-ctx.Done()
			ended <- ctx.Err()
			return ctx.Err()
		},
	})
	c := m.dial(t, "")
	c.Send(t, "long.task", envelope.Meta{CorrelationID: "a1", TimeoutMs: 30_000}, nil)
	<-started
	c.Send(t, envelope.TypeAbort, envelope.Meta{CorrelationID: "a1"}, nil)
	assertRPCError(t, nextFrame(t, c), envelope.CodeCanceled)
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler context ended with %v", err)
		}
	case <-time.After(wait):
		t.Fatal("the handler's context was not cancelled")
	}
	if !c.Quiet(200 * time.Millisecond) {
		t.Fatal("a second reply followed the abort")
	}

	// A Go caller that cancels its context aborts the handler the same way.
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- rpc.Call(ctx, m.NC, envelope.DefaultNamespace, "long.task", nil, nil) }()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, rpc.ErrCanceled) {
		t.Fatalf("rpc.Call after cancel: %v", err)
	}
	select {
	case <-ended:
	case <-time.After(wait):
		t.Fatal("cancel did not reach the handler")
	}
}

func TestRPCPanicIsInternalAndWorkerSurvives(t *testing.T) {
	t.Parallel()
	m := rpcMesh(t, edge.DefaultConfig(), map[string]worker.Handler{
		"boom": func(context.Context, *worker.Message) error { panic("kaboom") },
		"fine": func(_ context.Context, msg *worker.Message) error { return msg.Reply("fine", nil) },
		"coded": func(context.Context, *worker.Message) error {
			return rpc.Errorf(envelope.CodePermissionDenied, "not yours")
		},
	})
	c := m.dial(t, "")
	assertRPCError(t, c.Request(t, "boom", nil, wait), envelope.CodeInternal)
	assertRPCError(t, c.Request(t, "coded", nil, wait), envelope.CodePermissionDenied)
	if got := c.Request(t, "fine", nil, wait); got.Type != "fine" {
		t.Fatalf("after the panic: %s %s", got.Type, got.Payload)
	}
}

func TestRPCNoResponderFast(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "")
	c.Request(t, "warm.up.none", nil, wait) // first use of the connection
	var took []time.Duration
	for range 7 {
		start := time.Now()
		assertRPCError(t, c.Request(t, "nobody.home", nil, wait), envelope.CodeUnavailable)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	if med := took[len(took)/2]; med >= 50*time.Millisecond {
		t.Fatalf("median UNAVAILABLE round trip %s, want under 50ms (all: %v)", med, took)
	}
}

// A request whose correlationId is already in flight is refused with an
// ERROR that does not carry the id, so that the request in flight is not
// disturbed: the only frame with that id is the worker's reply.
func TestRPCDuplicateCorrelationID(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	m := rpcMesh(t, edge.DefaultConfig(), map[string]worker.Handler{
		"hold": func(_ context.Context, msg *worker.Message) error {
			started <- struct{}{}
			<-release
			return msg.Reply("held", map[string]int{"n": 1})
		},
	})
	c := m.dial(t, "")
	c.Send(t, "hold", envelope.Meta{CorrelationID: "dup", TimeoutMs: 30_000}, nil)
	select {
	case <-started:
	case <-time.After(wait):
		t.Fatal("the first request did not reach the worker")
	}
	c.Send(t, "hold", envelope.Meta{CorrelationID: "dup", TimeoutMs: 30_000}, nil)
	// The same id on a request the edge answers itself ($presence, here
	// with presence off) or refuses as malformed is refused the same way:
	// no frame but the worker's reply may carry it.
	c.Send(t, envelope.TypePresence, envelope.Meta{CorrelationID: "dup"}, nil)
	c.SendRaw(t, gws.OpcodeText, []byte(`{"type":"not a type","meta":{"correlationId":"dup"}}`))

	for i, code := range []envelope.Code{envelope.CodeAlreadyExists, envelope.CodeAlreadyExists, envelope.CodeInvalidArgument} {
		refusal := nextFrame(t, c)
		if refusal.Type != envelope.TypeError || refusal.Meta.CorrelationID != "" {
			t.Fatalf("refusal %d: %s with correlationId %q (%s); want ERROR without one", i, refusal.Type, refusal.Meta.CorrelationID, refusal.Payload)
		}
		var p struct {
			Code    envelope.Code
			Details struct{ CorrelationID string }
		}
		if err := json.Unmarshal(refusal.Payload, &p); err != nil || p.Code != code || p.Details.CorrelationID != "dup" {
			t.Fatalf("refusal %d payload %s (%v); want %s with details.correlationId dup", i, refusal.Payload, err, code)
		}
	}

	// The original completes normally, and nothing else carries its id:
	// the heartbeat's ack, sent after the reply, is the sentinel.
	close(release)
	if got := nextFrame(t, c); got.Type != "held" || got.Meta.CorrelationID != "dup" || string(got.Payload) != `{"n":1}` {
		t.Fatalf("reply: %s %q %s", got.Type, got.Meta.CorrelationID, got.Payload)
	}
	c.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: "sentinel"}, nil)
	for {
		got := nextFrame(t, c)
		if got.Meta.CorrelationID == "sentinel" {
			break
		}
		t.Fatalf("frame after the reply: %s %q %s", got.Type, got.Meta.CorrelationID, got.Payload)
	}
	select {
	case <-started:
		t.Fatal("the duplicate reached the worker")
	default:
	}
}

// An invalid worker reply is INTERNAL for the client; in dev mode its
// details say why, for the worker's developer; in production they do not,
// since the reason can name schemas and internals.
func TestRPCInvalidReplyReason(t *testing.T) {
	t.Parallel()
	respond := func(t *testing.T, nc *nats.Conn) {
		t.Helper()
		for typ, reply := range map[string]string{
			"bad.json":   `{"type":"x","payload":`,
			"bad.schema": `{"type":"test.reply","payload":{"text":""}}`,
		} {
			if _, err := nc.Subscribe("natter.in."+typ, func(msg *nats.Msg) { _ = msg.Respond([]byte(reply)) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	reason := func(t *testing.T, got *envelope.Envelope) (string, bool) {
		t.Helper()
		assertRPCError(t, got, envelope.CodeInternal)
		var p struct {
			Message string
			Details *struct{ Reason string }
		}
		if err := json.Unmarshal(got.Payload, &p); err != nil || p.Message != "invalid reply from worker" {
			t.Fatalf("payload %s (%v)", got.Payload, err)
		}
		if p.Details == nil {
			return "", false
		}
		return p.Details.Reason, true
	}

	t.Run("dev mode", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Schemas = loadSchemas(t, false)
		m := newMesh(t, cfg)
		respond(t, m.NC)
		c := m.dial(t, "")
		for typ, want := range map[string]string{"bad.json": "malformed JSON", "bad.schema": "text"} {
			r, ok := reason(t, c.Request(t, typ, nil, wait))
			if !ok || !strings.Contains(r, want) {
				t.Errorf("%s: details.reason %q (present %v); want it to mention %q", typ, r, ok, want)
			}
		}
	})
	t.Run("production", func(t *testing.T) {
		srv := testenv.NATS(t)
		nc := testenv.Connect(t, srv.ClientURL())
		respond(t, nc)
		cfg := edge.DefaultConfig()
		cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
		cfg.Auth.Anonymous = true
		cfg.Schemas = loadSchemas(t, false)
		e := testenv.StartEdge(t, cfg)
		c := wstest.Dial(t, e.URL)
		for _, typ := range []string{"bad.json", "bad.schema"} {
			if r, ok := reason(t, c.Request(t, typ, nil, wait)); ok {
				t.Errorf("%s: details.reason %q on a production edge", typ, r)
			}
		}
	})
}

// A service that is not the SDK answers a client's RPC by following
// docs/protocol.md alone: subscribe to natter.in.<type> in a queue group,
// answer on the reply subject with an envelope.
func TestPlainNATSServiceAnswersRPC(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	_, err := m.NC.QueueSubscribe("natter.in.calc.add", "calc", func(msg *nats.Msg) {
		var req struct {
			Payload struct{ A, B int } `json:"payload"`
		}
		if json.Unmarshal(msg.Data, &req) != nil {
			_ = msg.Respond([]byte(`{"type":"RPC_ERROR","payload":{"code":"INVALID_ARGUMENT","message":"bad"}}`))
			return
		}
		_ = msg.Respond(fmt.Appendf(nil, `{"type":"calc.sum","payload":{"sum":%d}}`, req.Payload.A+req.Payload.B))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = m.NC.Flush()
	c := m.dial(t, "")
	got := c.Request(t, "calc.add", map[string]int{"a": 2, "b": 40}, wait)
	if got.Type != "calc.sum" || string(got.Payload) != `{"sum":42}` {
		t.Fatalf("reply: %s %s (meta %+v)", got.Type, got.Payload, got.Meta)
	}
	if got.Meta.CorrelationID == "" {
		t.Fatal("the edge did not put the client's correlationId on the reply")
	}
}

// Server-to-client RPC: a service asks one connection and awaits its reply.
func TestServerToClientRPC(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "")
	id := connID(t, m.NC, c)
	ns := envelope.DefaultNamespace

	t.Run("answered", func(t *testing.T) {
		errc := make(chan error, 1)
		var out struct{ Lat, Lng float64 }
		go func() {
			errc <- rpc.Ask(t.Context(), m.NC, ns, id, "geo.where", map[string]string{"why": "map"}, &out)
		}()
		q := c.AwaitType(t, "geo.where", wait)
		if q.Meta.CorrelationID == "" {
			t.Fatal("the question has no correlationId to answer")
		}
		c.Send(t, "geo.position", envelope.Meta{CorrelationID: q.Meta.CorrelationID}, map[string]float64{"lat": 52.5, "lng": 13.4})
		if err := <-errc; err != nil || out.Lat != 52.5 || out.Lng != 13.4 {
			t.Fatalf("Ask: %v %+v", err, out)
		}
	})
	t.Run("client error", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() { errc <- rpc.Ask(t.Context(), m.NC, ns, id, "camera.open", nil, nil) }()
		q := c.AwaitType(t, "camera.open", wait)
		c.Send(t, envelope.TypeRPCError, envelope.Meta{CorrelationID: q.Meta.CorrelationID},
			envelope.ErrorPayload{Code: envelope.CodePermissionDenied, Message: "user said no"})
		if err := <-errc; !errors.Is(err, rpc.ErrPermissionDenied) {
			t.Fatalf("Ask: %v", err)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		if err := rpc.Ask(ctx, m.NC, ns, id, "ignored.question", nil, nil); !errors.Is(err, rpc.ErrDeadlineExceeded) {
			t.Fatalf("Ask: %v", err)
		}
		c.AwaitType(t, "ignored.question", wait)
	})
	t.Run("unknown connection fails at once", func(t *testing.T) {
		// Not on this edge (the edge answers), and on no edge at all (NATS
		// has no responders): both fail at once with ErrUnavailable.
		for _, conn := range []string{m.Edge.ID() + ".noSuchConnection", "noSuchEdge.1"} {
			start := time.Now()
			if err := rpc.Ask(t.Context(), m.NC, ns, conn, "hello", nil, nil); !errors.Is(err, rpc.ErrUnavailable) {
				t.Fatalf("Ask %s: %v", conn, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("Ask %s took %s", conn, d)
			}
		}
		// An id that is not <edge>.<n> is refused before anything is sent.
		if err := rpc.Ask(t.Context(), m.NC, ns, "noSuchConnection", "hello", nil, nil); !errors.Is(err, envelope.ErrInvalidID) {
			t.Fatalf("Ask of a one-token id: %v", err)
		}
	})
	t.Run("closed while waiting", func(t *testing.T) {
		other := m.dial(t, "")
		oid := connID(t, m.NC, other)
		errc := make(chan error, 1)
		go func() { errc <- rpc.Ask(t.Context(), m.NC, ns, oid, "are.you.there", nil, nil) }()
		other.AwaitType(t, "are.you.there", wait)
		start := time.Now()
		other.Close()
		if err := <-errc; !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("Ask: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %s after the close", d)
		}
		start = time.Now()
		if err := rpc.Ask(t.Context(), m.NC, ns, oid, "again", nil, nil); !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("Ask after close: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %s", d)
		}
	})
}

// No progress frame follows a call's one reply, even when the deadline
// ends the call while the worker is still sending progress.
func TestRPCNoProgressAfterReply(t *testing.T) {
	t.Parallel()
	m := rpcMesh(t, edge.DefaultConfig(), map[string]worker.Handler{
		"flood": func(ctx context.Context, msg *worker.Message) error {
			for ctx.Err() == nil {
				if msg.Progress(1) != nil {
					return nil
				}
			}
			return ctx.Err()
		},
	})
	c := m.dial(t, "")
	for i := range 30 {
		cid := fmt.Sprintf("f%d", i)
		c.Send(t, "flood", envelope.Meta{CorrelationID: cid, TimeoutMs: 30}, nil)
		for {
			got := nextFrame(t, c)
			if got.Meta.CorrelationID != cid {
				t.Fatalf("call %s: a frame of %s (%s) after its reply", cid, got.Meta.CorrelationID, got.Type)
			}
			if got.Type == envelope.TypeRPCError {
				break
			}
		}
	}
	// The last call's stragglers would show up now.
	for {
		b, ok := c.NextRaw(200 * time.Millisecond)
		if !ok {
			break
		}
		t.Fatalf("frame after the last reply: %s", b)
	}
}

// A handler that returns without a reply is acknowledged with $ws:rpc-ok,
// which no schema rejects, even in strict mode.
func TestRPCAckInStrictMode(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Schemas = loadSchemas(t, true)
	m := newMesh(t, cfg)
	c := m.dial(t, "")
	if got := c.Request(t, "chat.join", map[string]string{"room": "r"}, wait); got.Type != "chat.join" {
		t.Fatalf("join: %s %s", got.Type, got.Payload)
	}
	if got := c.Request(t, "chat.leave", map[string]string{"room": "r"}, wait); got.Type != envelope.TypeRPCOK {
		t.Fatalf("leave: %s %s", got.Type, got.Payload)
	}
}

// A client's late answer to a server request (an RPC_ERROR with the
// request's srv- id, after the edge gave up) is dropped without a reply, so
// a client that answers errors with errors cannot start a loop.
func TestLateErrorAnswerIsDropped(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "alice")
	tap, err := m.NC.SubscribeSync("natter.in.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = m.NC.Flush()
	for _, typ := range []string{envelope.TypeRPCError, envelope.TypeError} {
		c.SendRaw(t, gws.OpcodeText, []byte(`{"type":"`+typ+`","meta":{"correlationId":"srv-gone"},"payload":{"code":"UNIMPLEMENTED","message":"x"}}`))
	}
	if got := c.Request(t, envelope.TypeHeartbeat, nil, wait); got.Type != envelope.TypeHeartbeatAck {
		t.Fatalf("after the late answers: %s %s", got.Type, got.Payload)
	}
	if msg, err := tap.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("a late answer was forwarded to %s", msg.Subject)
	}
}
