package client_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// An edge that accepts every connection and closes it at once must not get
// reconnects at the initial backoff forever: only a connection that stayed
// open resets the backoff.
func TestBackoffGrowsWhenConnectionsDropAtOnce(t *testing.T) {
	t.Parallel()
	f := startFakeEdge(t, func(_ int, ws *gws.Conn) {
		_ = ws.WriteClose(uint16(envelope.CloseInternal), []byte("boom"))
	}, nil)
	c, err := client.New(f.URL, client.Options{
		Reconnect: &client.Backoff{Initial: 50 * time.Millisecond, Max: 2 * time.Second},
		Logger:    testenv.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the window whose connections are counted: the behaviour under test
	_ = c.Close()
	// With the bound doubling from 50ms to 2s the expected number of
	// connections in 3s is about 8; without growth (waits of 0-50ms) it is
	// over 100.
	if n := f.conns.Load(); n > 20 {
		t.Fatalf("%d connections in 3s: the backoff did not grow", n)
	}
}

// errorLog collects OnError's errors.
type errorLog struct {
	mu   sync.Mutex
	errs []*client.BackgroundError
}

func (l *errorLog) record(err error) {
	var be *client.BackgroundError
	if !errors.As(err, &be) {
		panic("OnError with " + err.Error())
	}
	l.mu.Lock()
	l.errs = append(l.errs, be)
	l.mu.Unlock()
}

func (l *errorLog) list() []*client.BackgroundError {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// After a reconnect, a re-join refused for good forgets the room; rate
// limits (honouring retryAfterMs), UNAVAILABLE and DEADLINE_EXCEEDED are
// retried; every failure reaches OnError.
func TestRejoinRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	tries := map[string][]time.Time{} // on connection 2, per room
	f := startFakeEdge(t, nil, func(n int, ws *gws.Conn, env *envelope.Envelope) {
		if env.Type != envelope.TypeJoin {
			return
		}
		room := roomOf(env)
		if n == 1 {
			answer(ws, env, envelope.TypeJoined, envelope.RoomPayload{Room: room})
			return
		}
		mu.Lock()
		tries[room] = append(tries[room], time.Now())
		k := len(tries[room])
		mu.Unlock()
		switch {
		case room == "limited" && k == 1:
			answerError(ws, env, envelope.CodeResourceExhausted, 400)
		case room == "flaky" && k == 1:
			answerError(ws, env, envelope.CodeUnavailable, 0)
		case room == "slow" && k == 1:
			answerError(ws, env, envelope.CodeDeadlineExceeded, 0)
		case room == "denied":
			answerError(ws, env, envelope.CodePermissionDenied, 0)
		case room == "gone":
			answerError(ws, env, envelope.CodeNotFound, 0)
		default:
			answer(ws, env, envelope.TypeJoined, envelope.RoomPayload{Room: room})
		}
	})
	var errs errorLog
	st := newStates()
	c := dial(t, f.URL, client.Options{OnState: st.record, OnError: errs.record})
	ctx := context.Background()
	rooms := []string{"limited", "flaky", "slow", "denied", "gone", "fine"}
	for _, r := range rooms {
		if err := c.Join(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	first := f.live[0]
	f.mu.Unlock()
	_ = first.WriteClose(uint16(envelope.CloseServer), nil)
	st.await(t, client.StateReconnecting)
	st.await(t, client.StateOpen)

	testenv.Eventually(t, wait, "the retried rooms to be joined", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(tries["limited"]) >= 2 && len(tries["flaky"]) >= 2 && len(tries["slow"]) >= 2
	})
	got := c.Rooms()
	slices.Sort(got)
	if want := []string{"fine", "flaky", "limited", "slow"}; !slices.Equal(got, want) {
		t.Fatalf("rooms %v, want %v", got, want)
	}
	mu.Lock()
	if d := tries["limited"][1].Sub(tries["limited"][0]); d < 400*time.Millisecond {
		t.Errorf("rate-limited re-join retried after %s, before its retryAfterMs 400", d)
	}
	if n := len(tries["denied"]); n != 1 {
		t.Errorf("denied room tried %d times", n)
	}
	mu.Unlock()

	testenv.Eventually(t, wait, "five errors reported", func() bool { return len(errs.list()) >= 5 })
	byRoom := map[string]*client.BackgroundError{}
	for _, e := range errs.list() {
		if e.Op != client.OpRejoin {
			t.Fatalf("error %v", e)
		}
		byRoom[e.Room] = e
	}
	for room, want := range map[string]struct {
		code  *rpc.Error
		final bool
	}{
		"limited": {rpc.ErrResourceExhausted, false},
		"flaky":   {rpc.ErrUnavailable, false},
		"slow":    {rpc.ErrDeadlineExceeded, false},
		"denied":  {rpc.ErrPermissionDenied, true},
		"gone":    {rpc.ErrNotFound, true},
	} {
		e := byRoom[room]
		if e == nil || !errors.Is(e, want.code) || e.Final != want.final {
			t.Errorf("room %s: error %v, want %s final=%v", room, e, want.code.Code, want.final)
		}
	}
}

// A Join and a Leave of the same room made concurrently: the remembered
// rooms follow the call made last, whatever order the answers come in.
func TestJoinLeaveRace(t *testing.T) {
	t.Parallel()
	type held struct {
		ws  *gws.Conn
		env *envelope.Envelope
	}
	joins := make(chan held, 4)
	f := startFakeEdge(t, nil, func(_ int, ws *gws.Conn, env *envelope.Envelope) {
		switch env.Type {
		case envelope.TypeJoin:
			joins <- held{ws, env} // answered by the test
		case envelope.TypeLeave:
			answer(ws, env, envelope.TypeLeft, envelope.RoomPayload{Room: roomOf(env)})
		}
	})
	c := dial(t, f.URL, client.Options{})
	ctx := context.Background()

	// Join, then Leave while the join's answer is held back: the answer
	// to the Join arrives after the Leave finished.
	joined := make(chan error, 1)
	go func() { joined <- c.Join(ctx, "r") }()
	j := <-joins
	if err := c.Leave(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	answer(j.ws, j.env, envelope.TypeJoined, envelope.RoomPayload{Room: "r"})
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if got := c.Rooms(); len(got) != 0 {
		t.Fatalf("rooms %v after Join then Leave", got)
	}

	// Leave, then Join: the room is remembered.
	go func() { joined <- c.Join(ctx, "s") }()
	j = <-joins
	answer(j.ws, j.env, envelope.TypeJoined, envelope.RoomPayload{Room: "s"})
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	go func() { joined <- c.Join(ctx, "s") }()
	j = <-joins
	answer(j.ws, j.env, envelope.TypeJoined, envelope.RoomPayload{Room: "s"})
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if got := c.Rooms(); !slices.Equal(got, []string{"s"}) {
		t.Fatalf("rooms %v after Leave then Join", got)
	}
}
