package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
)

func TestSendJoinAndReceive(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})
	news := collect(c, "news")
	all := collect(c, "*")

	in := m.inbox(t, "note.add")
	if err := c.Send("note.add", map[string]string{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	env, msg := nextEnv(t, in)
	if string(env.Payload) != `{"text":"hi"}` || msg.Header.Get(envelope.HeaderUser) != "alice" {
		t.Fatalf("got %s from %q", env.Payload, msg.Header.Get(envelope.HeaderUser))
	}

	ctx := context.Background()
	if err := c.Join(ctx, "general"); err != nil {
		t.Fatal(err)
	}
	if got := c.Rooms(); !slices.Equal(got, []string{"general"}) {
		t.Fatalf("rooms %v", got)
	}
	if err := m.NC.Publish("natter.out.room.general", []byte(`{"type":"news","payload":{"n":1}}`)); err != nil {
		t.Fatal(err)
	}
	got := news.next(t)
	if got.Meta.Room != "general" || string(got.Payload) != `{"n":1}` {
		t.Fatalf("got %+v", got)
	}
	// "*" sees the reply to the join (consumed by Join) and the news.
	for seen := map[string]bool{}; !seen["news"] || !seen[envelope.TypeJoined]; {
		seen[all.next(t).Type] = true
	}

	if err := c.Leave(ctx, "general"); err != nil {
		t.Fatal(err)
	}
	if len(c.Rooms()) != 0 {
		t.Fatalf("rooms after leave: %v", c.Rooms())
	}
	if err := c.Join(ctx, "bad room"); !errors.Is(err, envelope.ErrInvalidID) {
		t.Fatalf("join of an invalid id: %v", err)
	}
}

func TestBufferBeforeOpen(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	st := newStates()
	c, err := client.New("ws://"+addr+"/ws", client.Options{
		User: "alice", BufferSize: 3, Reconnect: fastBackoff, OnState: st.record, Logger: testenv.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	in := m.inbox(t, "buf.msg")
	for i := range 3 {
		if err := c.Send("buf.msg", i); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if err := c.Send("buf.msg", 3); !errors.Is(err, client.ErrBufferFull) {
		t.Fatalf("send past the buffer: %v", err)
	}
	if s := c.State(); s != client.StateConnecting {
		t.Fatalf("state %s before any edge listens", s)
	}
	serveEdgeAt(t, addr, m.devEdge(t))
	st.await(t, client.StateOpen)
	for i := range 3 {
		env, _ := nextEnv(t, in)
		if string(env.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: %s", i, env.Payload)
		}
	}
}

func TestReconnectAfterEdgeRestart(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.devEdge(t))
	st := newStates()
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record})
	st.await(t, client.StateOpen)
	news := collect(c, "news")
	ctx := context.Background()
	if err := c.Join(ctx, "general"); err != nil {
		t.Fatal(err)
	}

	first.stop()
	e := st.await(t, client.StateReconnecting)
	if e.Info.Code != envelope.CloseShutdown {
		t.Fatalf("reconnecting after %+v, want 4000", e.Info)
	}
	// Sent while reconnecting: chat.send only passes the worker's
	// membership check if the room was re-joined before it was written.
	// The worker handles messages concurrently, so the room sees them in
	// any order; the order they were written in shows on natter.in.
	out, err := m.NC.SubscribeSync("natter.out.room.general")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Unsubscribe()
	in := m.inbox(t, "chat.send")
	for i := range 3 {
		if err := c.Send("chat.send", map[string]string{"room": "general", "text": fmt.Sprint("m", i)}); err != nil {
			t.Fatal(err)
		}
	}
	serveEdgeAt(t, addr, m.devEdge(t))
	st.await(t, client.StateOpen)
	var texts []string
	for i := range 3 {
		env, _ := nextEnv(t, in)
		if want := fmt.Sprintf(`{"room":"general","text":"m%d"}`, i); string(env.Payload) != want {
			t.Fatalf("sent %d: %s, want %s", i, env.Payload, want)
		}
		env, _ = nextEnv(t, out)
		var p struct{ Text string }
		_ = json.Unmarshal(env.Payload, &p)
		if env.Type != "chat.message" {
			t.Fatalf("room message %d: %s %s", i, env.Type, env.Payload)
		}
		texts = append(texts, p.Text)
	}
	if slices.Sort(texts); !slices.Equal(texts, []string{"m0", "m1", "m2"}) {
		t.Fatalf("room messages %v", texts)
	}
	// The re-join reaches the new edge: a room publish arrives.
	if err := m.NC.Publish("natter.out.room.general", []byte(`{"type":"news","payload":"after"}`)); err != nil {
		t.Fatal(err)
	}
	if got := news.next(t); string(got.Payload) != `"after"` {
		t.Fatalf("got %s", got.Payload)
	}
	if got, want := st.seen(), []client.State{client.StateConnecting, client.StateOpen, client.StateReconnecting, client.StateOpen}; !slices.Equal(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
}

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.startEdge(t)
	cases := []struct {
		name      string
		code      envelope.CloseCode
		reconnect bool
	}{
		{"closed by the server reconnects", envelope.CloseServer, true},
		{"internal error reconnects", envelope.CloseInternal, true},
		{"kicked stays closed", envelope.CloseKicked, false},
		{"forbidden stays closed", envelope.CloseForbidden, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := newStates()
			c := dial(t, url, client.Options{User: "alice", OnState: st.record})
			st.await(t, client.StateOpen)
			m.ctl(t, m.connID(t, c), envelope.Control{Op: envelope.OpClose, Code: tc.code, Reason: "bye"})
			if tc.reconnect {
				e := st.await(t, client.StateReconnecting)
				if e.Info.Code != tc.code || e.Info.Reason != "bye" {
					t.Fatalf("reconnecting after %+v", e.Info)
				}
				st.await(t, client.StateOpen)
				if err := c.Call(context.Background(), "echo", 1, nil); err != nil {
					t.Fatalf("call after reconnect: %v", err)
				}
				return
			}
			e := st.await(t, client.StateClosed)
			if e.Info.Code != tc.code || e.Info.Reason != "bye" {
				t.Fatalf("closed with %+v", e.Info)
			}
			select {
			case <-c.Done():
			case <-time.After(wait):
				t.Fatal("Done not closed")
			}
			if err := c.Send("x", nil); !errors.Is(err, client.ErrClosed) {
				t.Fatalf("send after close: %v", err)
			}
			if err := c.Call(context.Background(), "echo", 1, nil); !errors.Is(err, client.ErrClosed) || !errors.Is(err, rpc.ErrUnavailable) {
				t.Fatalf("call after close: %v", err)
			}
			if got := st.seen(); slices.Contains(got, client.StateReconnecting) {
				t.Fatalf("states %v", got)
			}
		})
	}
}

func TestCall(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})
	ctx := context.Background()

	var out map[string]string
	if err := c.Call(ctx, "echo", map[string]string{"hello": "world"}, &out); err != nil || out["hello"] != "world" {
		t.Fatalf("echo: %v %v", out, err)
	}
	var env envelope.Envelope
	if err := c.Call(ctx, "ping", nil, &env); err != nil || env.Type != "pong" {
		t.Fatalf("ping: %+v %v", env, err)
	}

	cases := []struct {
		name string
		typ  string
		req  any
		want *rpc.Error
	}{
		{"handler error code", "chat.send", map[string]string{"room": "general", "text": ""}, rpc.ErrInvalidArgument},
		{"no worker", "nobody.listens", nil, rpc.ErrUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Call(ctx, tc.typ, tc.req, nil)
			var re *rpc.Error
			if !errors.Is(err, tc.want) || !errors.As(err, &re) {
				t.Fatalf("got %v, want %s", err, tc.want.Code)
			}
		})
	}
	if err := c.Call(ctx, "$join", nil, nil); err == nil {
		t.Fatal("Call of a system type passed")
	}
	if err := c.Call(ctx, "a..b", nil, nil); !errors.Is(err, envelope.ErrInvalidType) {
		t.Fatalf("invalid type: %v", err)
	}
}

// silent subscribes a service to typ in a queue group and never answers.
func (m *mesh) silent(t *testing.T, typ string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 16)
	sub, err := m.NC.ChanQueueSubscribe("natter.in."+typ, "natter-workers", ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestCallTimeout(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	m.silent(t, "slow")
	c := dial(t, m.startEdge(t), client.Options{User: "alice", RPCTimeout: 300 * time.Millisecond})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Call(ctx, "slow", nil, nil); !errors.Is(err, rpc.ErrDeadlineExceeded) {
		t.Fatalf("ctx deadline: %v", err)
	}
	start := time.Now()
	if err := c.Call(context.Background(), "slow", nil, nil); !errors.Is(err, rpc.ErrDeadlineExceeded) {
		t.Fatalf("RPCTimeout: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("RPCTimeout took %s", d)
	}
}

func TestCallAbort(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	reqs := m.silent(t, "slow")
	aborts, err := m.NC.SubscribeSync("natter.ctl.abort")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Call(ctx, "slow", nil, nil) }()
	var req *nats.Msg
	select {
	case req = <-reqs:
	case <-time.After(wait):
		t.Fatal("request did not reach the service")
	}
	cancel()
	if err := <-errc; !errors.Is(err, rpc.ErrCanceled) {
		t.Fatalf("got %v, want CANCELLED", err)
	}
	msg, err := aborts.NextMsg(wait)
	if err != nil {
		t.Fatalf("no abort: %v", err)
	}
	if string(msg.Data) != req.Reply {
		t.Fatalf("abort of %q, want %q", msg.Data, req.Reply)
	}
}

func TestCallProgress(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	sub, err := m.NC.QueueSubscribe("natter.in.job", "natter-workers", func(msg *nats.Msg) {
		for i := range 5 {
			p := nats.NewMsg(msg.Reply)
			p.Header.Set(envelope.HeaderProgress, "1")
			p.Data = fmt.Appendf(nil, `{"type":"$ws:rpc-progress","payload":%d}`, i)
			_ = m.NC.PublishMsg(p)
		}
		_ = msg.Respond([]byte(`{"type":"job.done","payload":"ok"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})

	var seen []string
	var out string
	err = c.Call(context.Background(), "job", nil, &out, client.WithProgress(func(p json.RawMessage) {
		seen = append(seen, string(p))
	}))
	if err != nil || out != "ok" {
		t.Fatalf("call: %q %v", out, err)
	}
	if want := []string{"0", "1", "2", "3", "4"}; !slices.Equal(seen, want) {
		t.Fatalf("progress %v, want %v", seen, want)
	}
}

func TestCallFailsWhenConnectionDrops(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	reqs := m.silent(t, "slow")
	st := newStates()
	c := dial(t, m.startEdge(t), client.Options{User: "alice", OnState: st.record})
	conn := m.connID(t, c)

	errc := make(chan error, 1)
	go func() { errc <- c.Call(context.Background(), "slow", nil, nil) }()
	select {
	case <-reqs:
	case <-time.After(wait):
		t.Fatal("request did not reach the service")
	}
	m.ctl(t, conn, envelope.Control{Op: envelope.OpClose, Code: envelope.CloseServer})
	select {
	case err := <-errc:
		if !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("got %v, want UNAVAILABLE", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("call did not fail when the connection dropped")
	}
	st.await(t, client.StateOpen)
}

func TestHandleServerRequest(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})
	c.Handle("geo.where", func(ctx context.Context, env *envelope.Envelope) (any, error) {
		var q struct{ Precise bool }
		if err := json.Unmarshal(env.Payload, &q); err != nil {
			return nil, rpc.Errorf(envelope.CodeInvalidArgument, "bad question")
		}
		if !q.Precise {
			return nil, rpc.Errorf(envelope.CodeNotFound, "no fix")
		}
		return map[string]float64{"lat": 52.5}, nil
	})
	c.Handle("geo.panic", func(context.Context, *envelope.Envelope) (any, error) { panic("boom") })
	conn := m.connID(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	var pos struct{ Lat float64 }
	if err := rpc.Ask(ctx, m.NC, envelope.DefaultNamespace, conn, "geo.where", map[string]bool{"precise": true}, &pos); err != nil || pos.Lat != 52.5 {
		t.Fatalf("ask: %+v %v", pos, err)
	}
	cases := []struct {
		name    string
		typ     string
		payload any
		want    *rpc.Error
	}{
		{"handler error", "geo.where", map[string]bool{"precise": false}, rpc.ErrNotFound},
		{"handler panic", "geo.panic", nil, rpc.ErrInternal},
		{"no handler", "geo.unknown", nil, &rpc.Error{Code: envelope.CodeUnimplemented}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := rpc.Ask(ctx, m.NC, envelope.DefaultNamespace, conn, tc.typ, tc.payload, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %s", err, tc.want.Code)
			}
		})
	}
}

func TestPresence(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.startEdge(t)
	ctx := context.Background()
	alice := dial(t, url, client.Options{User: "alice"})
	diffs := make(chan client.PresenceDiff, 64)
	alice.OnPresence("lobby", func(d client.PresenceDiff) { diffs <- d })
	if err := alice.Join(ctx, "lobby", client.WithPresence()); err != nil {
		t.Fatal(err)
	}
	bob := dial(t, url, client.Options{User: "bob"})
	if err := bob.Join(ctx, "lobby"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetState(ctx, map[string]bool{"typing": true}); err != nil {
		t.Fatal(err)
	}
	// Diffs are batched: wait until bob appears, then with his state.
	awaitDiff := func(what string, ok func(client.PresenceDiff) bool) {
		t.Helper()
		timeout := time.After(wait)
		for {
			select {
			case d := <-diffs:
				if d.Room != "lobby" {
					t.Fatalf("diff of room %q", d.Room)
				}
				if ok(d) {
					return
				}
			case <-timeout:
				t.Fatalf("no diff with %s", what)
			}
		}
	}
	hasBob := func(ms []presence.Member, state string) bool {
		return slices.ContainsFunc(ms, func(m presence.Member) bool {
			return m.User == "bob" && (state == "" || string(m.State) == state)
		})
	}
	awaitDiff("bob's state", func(d client.PresenceDiff) bool {
		return hasBob(d.Joins, `{"typing":true}`) || hasBob(d.States, `{"typing":true}`)
	})

	page, err := alice.PresenceRoom(ctx, "lobby", "", 10)
	if err != nil || page.Count != 2 || len(page.Members) != 2 {
		t.Fatalf("room page: %+v %v", page, err)
	}
	info, err := alice.PresenceUser(ctx, "bob")
	if err != nil || !info.Online || info.User != "bob" {
		t.Fatalf("user: %+v %v", info, err)
	}
	if _, err := bob.PresenceRoom(ctx, "elsewhere", "", 0); !errors.Is(err, rpc.ErrPermissionDenied) {
		t.Fatalf("room not joined: %v", err)
	}
	if err := bob.SetState(ctx, string(make([]byte, 300))); !errors.Is(err, rpc.ErrResourceExhausted) {
		t.Fatalf("large state: %v", err)
	}

	_ = bob.Close()
	awaitDiff("bob leaving", func(d client.PresenceDiff) bool { return hasBob(d.Leaves, "") })
}

func TestCloseStopsEverything(t *testing.T) {
	m := newMesh(t)
	url := m.startEdge(t)
	reqs := m.silent(t, "slow")
	// Warm up: the edge's presence machinery starts goroutines of its own
	// with the first connection.
	warm := dial(t, url, client.Options{User: "warm"})
	if err := warm.Join(context.Background(), "general", client.WithPresence()); err != nil {
		t.Fatal(err)
	}
	_ = warm.Close()
	base := runtime.NumGoroutine()

	c := dial(t, url, client.Options{User: "alice", RPCTimeout: time.Minute})
	ctx := context.Background()
	if err := c.Join(ctx, "general", client.WithPresence()); err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	c.On("news", func(*envelope.Envelope) { <-block })
	asked := make(chan struct{})
	c.Handle("q", func(ctx context.Context, _ *envelope.Envelope) (any, error) {
		close(asked)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	conn := m.connID(t, c)
	go func() { _ = rpc.Ask(ctx, m.NC, envelope.DefaultNamespace, conn, "q", nil, nil) }()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Call(ctx, "slow", nil, nil)
		}()
	}
	for range 3 {
		_ = m.NC.Publish("natter.out.room.general", []byte(`{"type":"news"}`))
	}
	for range 3 {
		select {
		case <-reqs:
		case <-time.After(wait):
			t.Fatal("calls did not reach the service")
		}
	}
	select {
	case <-asked:
	case <-time.After(wait):
		t.Fatal("the question did not reach the handler")
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Close() // idempotent
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("call at close: %v", err)
		}
	}
	if s := c.State(); s != client.StateClosed {
		t.Fatalf("state %s", s)
	}
	close(block)
	testenv.Eventually(t, wait, "the client's goroutines to end", func() bool { return clientGoroutines() == 0 })
	testenv.GoroutinesSettle(t, base, 3, 10*time.Second)
}

// clientGoroutines counts the goroutines running or started by this
// package's code.
func clientGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "natter/pkg/client.") {
			n++
		}
	}
	return n
}

func TestDialRefused(t *testing.T) {
	m := newMesh(t)
	url := m.startEdge(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := client.Dial(ctx, url, client.Options{User: "bad user!"})
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("got %v, want a 401 HandshakeError", err)
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := client.Dial(ctx2, "ws://"+freeAddr(t)+"/ws", client.Options{Reconnect: fastBackoff}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial of nothing: %v", err)
	}
	if _, err := client.Dial(ctx, "ws://"+freeAddr(t)+"/ws", client.Options{Reconnect: &client.Backoff{Disabled: true}}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("dial of nothing without reconnects: %v", err)
	}
	if _, err := client.New("http://x/ws", client.Options{}); !errors.Is(err, client.ErrInvalidOptions) {
		t.Fatalf("http url: %v", err)
	}
}
