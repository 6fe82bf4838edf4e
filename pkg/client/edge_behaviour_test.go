package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// Sends buffered while disconnected are flushed within the edge's default
// rate limit (100/s, bursts of 200): none is dropped with
// RESOURCE_EXHAUSTED.
func TestFlushPacedToRateLimit(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	st := newStates()
	c, err := client.New("ws://"+addr+"/ws", client.Options{User: "alice", Reconnect: fastBackoff, OnState: st.record, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	errs := collect(c, envelope.TypeError)
	in := m.inbox(t, "bulk.msg")
	const n = 300
	for i := range n {
		if err := c.Send("bulk.msg", i); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	serveEdgeAt(t, addr, m.devEdge(t))
	st.await(t, client.StateOpen)
	for i := range n {
		env, _ := nextEnv(t, in)
		if string(env.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: %s", i, env.Payload)
		}
	}
	select {
	case e := <-errs:
		t.Fatalf("the edge answered %s", e.Payload)
	default:
	}
	// 200 at once, then 100/s.
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("%d messages flushed in %s: not paced", n, d)
	}
}

// $auth.expiring: a failed refresh is retried with backoff until it works.
func TestRefreshRetriedAfterFailure(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.startJWTEdge(t, 10*time.Second)
	var calls atomic.Int32
	token := func(ctx context.Context) (string, error) {
		switch calls.Add(1) {
		case 1: // the handshake: expires within the refresh window
			return signToken(t, "alice", 3*time.Second), nil
		case 2, 3:
			return "", errors.New("token service down")
		}
		return signToken(t, "alice", time.Hour), nil
	}
	var errs errorLog
	st := newStates()
	c := dial(t, url, client.Options{Token: token, OnState: st.record, OnError: errs.record})
	all := collect(c, "*") // $auth.refreshed is a reply: only "*" sees it
	for all.next(t).Type != envelope.TypeAuthRefreshed {
	}
	if n := calls.Load(); n != 4 {
		t.Fatalf("%d token calls", n)
	}
	got := errs.list()
	if len(got) != 2 || got[0].Op != client.OpRefresh || got[0].Final {
		t.Fatalf("errors %v", got)
	}
	time.Sleep(3 * time.Second) // past the first token's expiry
	if seen := st.seen(); !slices.Equal(seen, []client.State{client.StateConnecting, client.StateOpen}) {
		t.Fatalf("states %v", seen)
	}
}

// When the token expires without a refresh (4100), a client with a token
// function reconnects with a fresh token; a 401 on that handshake closes it.
func TestReconnectAfterTokenExpiry(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.startJWTEdge(t, 10*time.Second)
	for _, refused := range []bool{false, true} {
		t.Run(fmt.Sprint("fresh token refused=", refused), func(t *testing.T) {
			var handshakes atomic.Int32
			token := func(ctx context.Context) (string, error) {
				// A handshake's ctx ends after HandshakeTimeout (10s), a
				// refresh's after at most RPCTimeout (3s here).
				if d, ok := ctx.Deadline(); ok && time.Until(d) < 5*time.Second {
					// Refreshes fail: a token for someone else.
					return signToken(t, "mallory", time.Hour), nil
				}
				if handshakes.Add(1) == 1 {
					return signToken(t, "alice", 2*time.Second), nil
				}
				if refused {
					return "not a token", nil
				}
				return signToken(t, "alice", time.Hour), nil
			}
			st := newStates()
			c := dial(t, url, client.Options{Token: token, OnState: st.record, RPCTimeout: 3 * time.Second})
			if refused {
				e := st.await(t, client.StateClosed)
				var he *client.HandshakeError
				if e.Info.Code != envelope.CloseUnauthorized || !errors.As(e.Info.Err, &he) || he.StatusCode != 401 {
					t.Fatalf("closed with %+v", e.Info)
				}
				if n := handshakes.Load(); n != 2 {
					t.Fatalf("%d handshakes", n)
				}
				return
			}
			e := st.await(t, client.StateReconnecting)
			if e.Info.Code != envelope.CloseUnauthorized {
				t.Fatalf("reconnecting after %+v", e.Info)
			}
			st.await(t, client.StateOpen)
			if got := m.user(t, c); got != "alice" {
				t.Fatalf("user %q", got)
			}
		})
	}
}

// A worker's join of a connection (ctl) is remembered and re-joined after a
// reconnect; a worker's leave forgets the room.
func TestServerMembership(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	st := newStates()
	c := dial(t, m.startEdge(t), client.Options{User: "alice", OnState: st.record})
	st.await(t, client.StateOpen)
	news := collect(c, "news")
	conn := m.connID(t, c)
	m.ctl(t, conn, envelope.Control{Op: envelope.OpJoin, Room: "ops"})
	testenv.Eventually(t, wait, "the server join to be remembered", func() bool { return slices.Equal(c.Rooms(), []string{"ops"}) })

	m.ctl(t, conn, envelope.Control{Op: envelope.OpClose, Code: envelope.CloseServer})
	st.await(t, client.StateReconnecting)
	st.await(t, client.StateOpen)
	if err := m.NC.Publish("natter.out.room.ops", []byte(`{"type":"news","payload":"again"}`)); err != nil {
		t.Fatal(err)
	}
	if got := news.next(t); string(got.Payload) != `"again"` {
		t.Fatalf("got %s", got.Payload)
	}

	m.ctl(t, m.connID(t, c), envelope.Control{Op: envelope.OpLeave, Room: "ops"})
	testenv.Eventually(t, wait, "the server leave to be remembered", func() bool { return len(c.Rooms()) == 0 })
}

// Options.Heartbeat keeps a connection open under the edge's idle timeout,
// which WebSocket pings do not satisfy.
func TestHeartbeatKeepsIdleConnectionOpen(t *testing.T) {
	m := newMesh(t)
	cfg := m.devEdge(t)
	cfg.WebSocket.IdleTimeout = 600 * time.Millisecond
	url := testenv.StartEdge(t, cfg).URL
	for _, hb := range []time.Duration{0, 200 * time.Millisecond} {
		t.Run(fmt.Sprint("heartbeat=", hb), func(t *testing.T) {
			st := newStates()
			dial(t, url, client.Options{User: "alice", OnState: st.record, Heartbeat: hb, KeepAlive: 100 * time.Millisecond})
			st.await(t, client.StateOpen)
			time.Sleep(2 * time.Second) // idle for more than three idle timeouts: the behaviour under test
			dropped := slices.Contains(st.seen(), client.StateReconnecting)
			if hb == 0 && !dropped {
				t.Fatal("without heartbeats the idle timeout did not close the connection: the test proves nothing")
			}
			if hb > 0 && dropped {
				t.Fatalf("states %v with heartbeats", st.seen())
			}
		})
	}
}

// Close waits until the callback goroutine delivered the Closed state.
func TestCloseWaitsForCallbacks(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	var closedSeen atomic.Bool
	c := dial(t, m.startEdge(t), client.Options{User: "alice", OnState: func(s client.State, _ client.CloseInfo) {
		if s == client.StateClosed {
			time.Sleep(200 * time.Millisecond) // a slow callback, which Close must wait for
			closedSeen.Store(true)
		}
	}})
	_ = c.Close()
	if !closedSeen.Load() {
		t.Fatal("Close returned before the Closed state was delivered")
	}

	// Close from a callback does not wait for itself.
	done := make(chan struct{})
	var cc atomic.Pointer[client.Client]
	c2 := dial(t, m.startEdge(t), client.Options{User: "bob"})
	cc.Store(c2)
	c2.On("bye", func(*envelope.Envelope) {
		_ = cc.Load().Close()
		close(done)
	})
	if err := c2.Join(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	_ = m.NC.Publish("natter.out.room.r", []byte(`{"type":"bye"}`))
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Close from a callback did not return")
	}
}

// A call that waited in the send buffer tells the edge the time left of
// its deadline, not the deadline it had when it was queued.
func TestCallTimeoutComputedWhenWritten(t *testing.T) {
	m := newMesh(t)
	reqs := m.silent(t, "slow")
	addr := freeAddr(t)
	st := newStates()
	c, err := client.New("ws://"+addr+"/ws", client.Options{User: "alice", Reconnect: fastBackoff, OnState: st.record, RPCTimeout: 3 * time.Second, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	errc := make(chan error, 1)
	go func() { errc <- c.Call(context.Background(), "slow", nil, nil) }()
	time.Sleep(time.Second) // the call waits a second in the send buffer: the time its deadline must lose
	serveEdgeAt(t, addr, m.devEdge(t))
	select {
	case msg := <-reqs:
		var env envelope.Envelope
		if err := json.Unmarshal(msg.Data, &env); err != nil {
			t.Fatal(err)
		}
		if env.Meta.TimeoutMs > 2100 || env.Meta.TimeoutMs < 1 {
			t.Fatalf("meta.timeoutMs %d after a second in the buffer, want at most 2000 or so", env.Meta.TimeoutMs)
		}
	case <-time.After(wait):
		t.Fatal("request did not reach the service")
	}
	if err := <-errc; !errors.Is(err, rpc.ErrDeadlineExceeded) {
		t.Fatalf("call: %v", err)
	}
}
