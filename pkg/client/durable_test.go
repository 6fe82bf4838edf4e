package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// joinRequest is what the fake edges read from a $join.
type joinRequest struct {
	Room     string           `json:"room"`
	Presence bool             `json:"presence"`
	Since    *client.Position `json:"since"`
}

func joinOf(t *testing.T, env *envelope.Envelope) joinRequest {
	var j joinRequest
	if err := json.Unmarshal(env.Payload, &j); err != nil {
		t.Errorf("join payload %s: %v", env.Payload, err)
	}
	return j
}

// durableJoined is the $joined of a durable room.
type durableJoined struct {
	Room      string `json:"room"`
	Durable   bool   `json:"durable"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// writeDurable writes a chat.msg of a durable room at offset (text "m<offset>").
func writeDurable(ws *gws.Conn, room string, offset uint64, epoch string) {
	env, _ := envelope.New("chat.msg", "m"+strconv.FormatUint(offset, 10))
	env.Meta.Room = room
	env.Meta.Extra = map[string]json.RawMessage{
		"offset": json.RawMessage(strconv.FormatUint(offset, 10)),
		"epoch":  json.RawMessage(strconv.Quote(epoch)),
	}
	b, _ := envelope.Encode(env)
	_ = ws.WriteMessage(gws.OpcodeText, b)
}

// timeline records, in callback order, the chat.msg texts and the
// recovery reports a client receives.
type timeline struct {
	ch   chan string
	mu   sync.Mutex
	recs []client.Recovery
}

func newTimeline(c *client.Client) *timeline {
	tl := &timeline{ch: make(chan string, 256)}
	if c != nil {
		tl.watch(c)
	}
	return tl
}

func (tl *timeline) watch(c *client.Client) {
	c.On("chat.msg", func(env *envelope.Envelope) {
		var s string
		_ = json.Unmarshal(env.Payload, &s)
		tl.ch <- s
	})
}

func (tl *timeline) recovery(r client.Recovery) {
	tl.mu.Lock()
	tl.recs = append(tl.recs, r)
	tl.mu.Unlock()
	tl.ch <- fmt.Sprintf("recovery %s %v", r.Room, r.Recovered)
}

func (tl *timeline) last() client.Recovery {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.recs[len(tl.recs)-1]
}

// expect reads the next entries and compares them with want.
func (tl *timeline) expect(t *testing.T, want ...string) {
	t.Helper()
	for i, w := range want {
		select {
		case got := <-tl.ch:
			if got != w {
				t.Fatalf("entry %d: %q, want %q (all: %q)", i, got, w, want)
			}
		case <-time.After(wait):
			t.Fatalf("entry %d: nothing within %s, want %q", i, wait, w)
		}
	}
}

func (tl *timeline) expectNothing(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case got := <-tl.ch:
		t.Fatalf("unexpected %q", got)
	case <-time.After(d):
	}
}

// The client tracks the last position of a durable room from $joined and
// from deliveries (only forward), re-joins from it after a reconnect, and
// reports recovery and gaps after the replayed messages. A room that is
// not durable is re-joined without since and reports nothing.
func TestDurableRejoinFromPosition(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	joins := map[int][]joinRequest{} // by connection
	f := startFakeEdge(t, nil, func(n int, ws *gws.Conn, env *envelope.Envelope) {
		if env.Type != envelope.TypeJoin {
			return
		}
		j := joinOf(t, env)
		mu.Lock()
		joins[n] = append(joins[n], j)
		mu.Unlock()
		if j.Room != "dur-a" {
			answer(ws, env, envelope.TypeJoined, envelope.RoomPayload{Room: j.Room})
			return
		}
		switch n {
		case 1:
			answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 10, Epoch: "e1"})
			// 11 comes late: the position does not go back. A
			// delivery of another epoch does not move it either: only
			// a $joined announces a new epoch.
			for _, off := range []uint64{12, 11, 15} {
				writeDurable(ws, j.Room, off, "e1")
			}
			writeDurable(ws, j.Room, 99, "e9")
		case 2:
			// Replayed before $joined.
			writeDurable(ws, j.Room, 16, "e1")
			writeDurable(ws, j.Room, 18, "e1")
			answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 18, Epoch: "e1", Recovered: ptr(true)})
		default:
			// The history was reset: nothing replayed, a new epoch.
			answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 3, Epoch: "e2", Recovered: ptr(false)})
		}
	})
	tl := newTimeline(nil)
	st := newStates()
	c := dial(t, f.URL, client.Options{OnState: st.record, OnRecovery: tl.recovery})
	tl.watch(c)
	ctx := context.Background()
	for _, room := range []string{"dur-a", "plain"} {
		if err := c.Join(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	tl.expect(t, "m12", "m11", "m15", "m99")
	if p, ok := c.Position("dur-a"); !ok || p != (client.Position{Offset: 15, Epoch: "e1"}) {
		t.Fatalf("position %+v %v, want 15 e1", p, ok)
	}
	if p, ok := c.Position("plain"); ok {
		t.Fatalf("room that is not durable has position %+v", p)
	}

	drop := func(n int) {
		t.Helper()
		f.mu.Lock()
		ws := f.live[n-1]
		f.mu.Unlock()
		_ = ws.WriteClose(uint16(envelope.CloseServer), nil)
		st.await(t, client.StateReconnecting)
		st.await(t, client.StateOpen)
	}
	drop(1)
	tl.expect(t, "m16", "m18", "recovery dur-a true")
	if got, want := tl.last(), (client.Recovery{
		Room: "dur-a", Recovered: true, Rejoin: true,
		Since:    client.Position{Offset: 15, Epoch: "e1"},
		Position: client.Position{Offset: 18, Epoch: "e1"},
	}); got != want {
		t.Fatalf("recovery %+v, want %+v", got, want)
	}

	drop(2)
	tl.expect(t, "recovery dur-a false")
	if got, want := tl.last(), (client.Recovery{
		Room: "dur-a", Recovered: false, Rejoin: true,
		Since:    client.Position{Offset: 18, Epoch: "e1"},
		Position: client.Position{Offset: 3, Epoch: "e2"},
	}); got != want {
		t.Fatalf("gap %+v, want %+v", got, want)
	}
	if p, _ := c.Position("dur-a"); p != (client.Position{Offset: 3, Epoch: "e2"}) {
		t.Fatalf("position after the reset %+v, want 3 e2", p)
	}
	tl.expectNothing(t, 100*time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	for n, wantSince := range map[int]*client.Position{
		1: nil,
		2: {Offset: 15, Epoch: "e1"},
		3: {Offset: 18, Epoch: "e1"},
	} {
		for _, j := range joins[n] {
			switch {
			case j.Room == "plain" && j.Since != nil:
				t.Errorf("connection %d: room that is not durable joined with since %+v", n, *j.Since)
			case j.Room == "dur-a" && (j.Since == nil) != (wantSince == nil):
				t.Errorf("connection %d: since %v, want %v", n, j.Since, wantSince)
			case j.Room == "dur-a" && j.Since != nil && *j.Since != *wantSince:
				t.Errorf("connection %d: since %+v, want %+v", n, *j.Since, *wantSince)
			}
		}
		if len(joins[n]) != 2 {
			t.Errorf("connection %d: %d joins, want 2", n, len(joins[n]))
		}
	}
}

// Join WithSince sends the position and reports the outcome (Rejoin
// false); a room the edge says is not durable is a gap and has no
// position; Leave forgets the position.
func TestJoinWithSince(t *testing.T) {
	t.Parallel()
	sinces := make(chan *client.Position, 8)
	f := startFakeEdge(t, nil, func(_ int, ws *gws.Conn, env *envelope.Envelope) {
		switch env.Type {
		case envelope.TypeJoin:
			j := joinOf(t, env)
			sinces <- j.Since
			if j.Room == "plain" {
				answer(ws, env, envelope.TypeJoined, envelope.RoomPayload{Room: j.Room})
				return
			}
			writeDurable(ws, j.Room, 7, "e1")
			answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 7, Epoch: "e1", Recovered: ptr(true)})
		case envelope.TypeLeave:
			writeDurable(ws, roomOf(env), 9, "e1") // in flight when the leave is handled
			answer(ws, env, envelope.TypeLeft, envelope.RoomPayload{Room: roomOf(env)})
		}
	})
	tl := newTimeline(nil)
	c := dial(t, f.URL, client.Options{OnRecovery: tl.recovery})
	tl.watch(c)
	ctx := context.Background()

	if err := c.Join(ctx, "dur-b", client.WithSince(client.Position{Offset: 5, Epoch: "e1"})); err != nil {
		t.Fatal(err)
	}
	if s := <-sinces; s == nil || *s != (client.Position{Offset: 5, Epoch: "e1"}) {
		t.Fatalf("since %v, want 5 e1", s)
	}
	tl.expect(t, "m7", "recovery dur-b true")
	if got := tl.last(); got.Rejoin || got.Position != (client.Position{Offset: 7, Epoch: "e1"}) {
		t.Fatalf("recovery %+v", got)
	}

	if err := c.Join(ctx, "plain", client.WithSince(client.Position{Offset: 5, Epoch: "e1"})); err != nil {
		t.Fatal(err)
	}
	<-sinces
	tl.expect(t, "recovery plain false")
	if got := tl.last(); got.Position != (client.Position{}) {
		t.Fatalf("recovery of a room that is not durable %+v", got)
	}
	if _, ok := c.Position("plain"); ok {
		t.Fatal("room that is not durable has a position")
	}

	if err := c.Leave(ctx, "dur-b"); err != nil {
		t.Fatal(err)
	}
	tl.expect(t, "m9")
	if p, ok := c.Position("dur-b"); ok {
		t.Fatalf("position %+v after Leave", p)
	}

	// A Join without since reports nothing.
	if err := c.Join(ctx, "dur-c"); err != nil {
		t.Fatal(err)
	}
	if s := <-sinces; s != nil {
		t.Fatalf("join without since sent %+v", *s)
	}
	tl.expect(t, "m7")
	tl.expectNothing(t, 100*time.Millisecond)
}

// History sends the query (zero fields left out) and decodes the page;
// the edge's refusals are *rpc.Error.
func TestHistoryRequest(t *testing.T) {
	t.Parallel()
	reqs := make(chan map[string]any, 4)
	f := startFakeEdge(t, nil, func(_ int, ws *gws.Conn, env *envelope.Envelope) {
		if env.Type != "$history" {
			return
		}
		var q map[string]any
		_ = json.Unmarshal(env.Payload, &q)
		reqs <- q
		if q["room"] == "plain" {
			answerError(ws, env, envelope.CodeFailedPrecondition, 0)
			return
		}
		msg := json.RawMessage(`{"type":"chat.msg","meta":{"room":"dur-a","offset":41,"epoch":"e1"},"payload":"m41"}`)
		answer(ws, env, "$history", map[string]any{"room": "dur-a", "epoch": "e1", "messages": []json.RawMessage{msg}, "more": true})
	})
	c := dial(t, f.URL, client.Options{Logger: testenv.Logger(t)})
	ctx := context.Background()

	page, err := c.History(ctx, "dur-a", client.HistoryQuery{Limit: 1, Before: 42})
	if err != nil {
		t.Fatal(err)
	}
	if q := <-reqs; fmt.Sprint(q) != fmt.Sprint(map[string]any{"room": "dur-a", "limit": 1.0, "before": 42.0}) {
		t.Fatalf("request %v", q)
	}
	if page.Room != "dur-a" || page.Epoch != "e1" || !page.More || len(page.Messages) != 1 {
		t.Fatalf("page %+v", page)
	}
	if p, ok := client.OffsetOf(page.Messages[0]); !ok || p != (client.Position{Offset: 41, Epoch: "e1"}) {
		t.Fatalf("message position %+v %v", p, ok)
	}

	_, err = c.History(ctx, "plain", client.HistoryQuery{Since: ptr[uint64](3)})
	if want := (&rpc.Error{Code: envelope.CodeFailedPrecondition}); !errors.Is(err, want) {
		t.Fatalf("history of a room that is not durable: %v, want FAILED_PRECONDITION", err)
	}
	if q := <-reqs; fmt.Sprint(q) != fmt.Sprint(map[string]any{"room": "plain", "since": 3.0}) {
		t.Fatalf("request %v", q)
	}
	if _, err := c.History(ctx, "bad room", client.HistoryQuery{}); err == nil {
		t.Fatal("History accepted an invalid room id")
	}
}

func TestOffsetOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		meta string
		want client.Position
		ok   bool
	}{
		{name: "offset and epoch", meta: `{"room":"r","offset":18446744073709551615,"epoch":"e\u00e9"}`, want: client.Position{Offset: 1<<64 - 1, Epoch: "eé"}, ok: true},
		{name: "offset only", meta: `{"room":"r","offset":3}`, want: client.Position{Offset: 3}, ok: true},
		{name: "none", meta: `{"room":"r"}`},
		{name: "offset a string", meta: `{"offset":"3","epoch":"e"}`},
		{name: "negative offset", meta: `{"offset":-1,"epoch":"e"}`},
		{name: "fractional offset", meta: `{"offset":1.5,"epoch":"e"}`},
		{name: "epoch a number", meta: `{"offset":1,"epoch":2}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, err := envelope.Decode([]byte(`{"type":"a","meta":`+tc.meta+`}`), 0)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := client.OffsetOf(env)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("OffsetOf = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// A re-join that fails and is retried in the background still starts from
// the room's position, and reports its outcome once.
func TestDurableRejoinRetryKeepsSince(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var sinces []*client.Position // on connection 2
	f := startFakeEdge(t, nil, func(n int, ws *gws.Conn, env *envelope.Envelope) {
		if env.Type != envelope.TypeJoin {
			return
		}
		j := joinOf(t, env)
		if n == 1 {
			answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 4, Epoch: "e1"})
			return
		}
		mu.Lock()
		sinces = append(sinces, j.Since)
		k := len(sinces)
		mu.Unlock()
		if k == 1 {
			answerError(ws, env, envelope.CodeUnavailable, 0)
			return
		}
		answer(ws, env, envelope.TypeJoined, durableJoined{Room: j.Room, Durable: true, Offset: 4, Epoch: "e1", Recovered: ptr(true)})
	})
	tl := newTimeline(nil)
	st := newStates()
	c := dial(t, f.URL, client.Options{OnState: st.record, OnRecovery: tl.recovery, OnError: func(error) {}})
	if err := c.Join(context.Background(), "dur-r"); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	first := f.live[0]
	f.mu.Unlock()
	_ = first.WriteClose(uint16(envelope.CloseServer), nil)
	st.await(t, client.StateReconnecting)
	tl.expect(t, "recovery dur-r true")
	tl.expectNothing(t, 100*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(sinces) != 2 {
		t.Fatalf("%d re-joins, want 2", len(sinces))
	}
	for i, s := range sinces {
		if s == nil || *s != (client.Position{Offset: 4, Epoch: "e1"}) {
			t.Errorf("re-join %d: since %v, want 4 e1", i, s)
		}
	}
}
