package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// durableEdge is devEdge with the rooms "dur-*" durable, keeping maxMsgs
// messages per room (0: the edge's default).
func (m *mesh) durableEdge(t *testing.T, maxMsgs int64) edge.Config {
	cfg := m.devEdge(t)
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig("dur-*")
	if maxMsgs != 0 {
		cfg.DurableRooms.RoomMaxMsgs = maxMsgs
	}
	return cfg
}

// publishDurable stores chat.msg "m<n>" in a durable room and returns its
// offset.
func publishDurable(ctx context.Context, pub *worker.Publisher, room string, n int) (uint64, error) {
	env, err := envelope.New("chat.msg", "m"+strconv.Itoa(n))
	if err != nil {
		return 0, err
	}
	return pub.ToDurableRoom(ctx, room, env)
}

// msgNumber returns n of a timeline entry "m<n>", or -1 for a recovery.
func msgNumber(t *testing.T, entry string) int {
	t.Helper()
	if strings.HasPrefix(entry, "recovery ") {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimPrefix(entry, "m"))
	if err != nil {
		t.Fatalf("entry %q", entry)
	}
	return n
}

// A client whose edge goes away while messages keep coming into a durable
// room reconnects to the edge that takes its place, re-joins from its last
// position and gets every message exactly once and in order, with a
// recovery reported between the replayed and the live ones.
func TestDurableRecoveryAcrossEdgeRestart(t *testing.T) {
	const room, total = "dur-stream", 400
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.durableEdge(t, 0))
	st := newStates()
	tl := newTimeline(nil)
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record, OnRecovery: tl.recovery})
	tl.watch(c)
	if err := c.Join(context.Background(), room); err != nil {
		t.Fatal(err)
	}

	// A steady stream, 100 messages a second, owned by the test.
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	ctx, cancel := context.WithCancel(context.Background())
	var published atomic.Int64
	pubErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range total {
			if _, err := publishDurable(ctx, pub, room, i); err != nil {
				pubErr <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			published.Add(1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	next := func() string {
		t.Helper()
		select {
		case e := <-tl.ch:
			return e
		case err := <-pubErr:
			t.Fatal(err)
		case <-time.After(wait):
			t.Fatalf("nothing within %s (published %d)", wait, published.Load())
		}
		return ""
	}
	want := 0
	for want < 50 {
		if n := msgNumber(t, next()); n != want {
			t.Fatalf("got m%d, want m%d", n, want)
		}
		want++
	}
	before, _ := c.Position(room)

	first.stop()
	st.await(t, client.StateReconnecting)
	// The outage: the stream goes on for 100 messages.
	testenv.Eventually(t, wait, "100 messages published during the outage", func() bool { return published.Load() >= int64(want)+100 })
	missed := published.Load() - int64(want)
	serveEdgeAt(t, addr, m.durableEdge(t, 0))
	st.await(t, client.StateOpen)

	recoveries := 0
	for want < total {
		e := next()
		n := msgNumber(t, e)
		if n < 0 {
			recoveries++
			if e != "recovery "+room+" true" {
				t.Fatalf("%s after m%d", e, want-1)
			}
			continue
		}
		if n != want {
			t.Fatalf("got m%d, want m%d (a message lost or repeated)", n, want)
		}
		want++
	}
	if recoveries != 1 {
		t.Fatalf("%d recoveries reported, want 1", recoveries)
	}
	if missed < 50 {
		t.Fatalf("only %d messages published during the outage: nothing to recover", missed)
	}
	rec := tl.last()
	if !rec.Recovered || !rec.Rejoin || rec.Since != before || rec.Position.Epoch != before.Epoch || rec.Position.Offset <= before.Offset {
		t.Fatalf("recovery %+v, from %+v", rec, before)
	}
	if p, _ := c.Position(room); p.Offset <= rec.Position.Offset {
		t.Fatalf("position %+v did not advance past the recovery %+v", p, rec.Position)
	}
	tl.expectNothing(t, 200*time.Millisecond)
}

// A client that missed more messages than the room keeps is told it has a
// gap; what is kept is still replayed, in order, before the report.
func TestDurableGapWhenPositionTooOld(t *testing.T) {
	const room = "dur-gap"
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.durableEdge(t, 5))
	st := newStates()
	tl := newTimeline(nil)
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record, OnRecovery: tl.recovery})
	tl.watch(c)
	ctx := context.Background()
	if err := c.Join(ctx, room); err != nil {
		t.Fatal(err)
	}
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	for i := range 2 {
		if _, err := publishDurable(ctx, pub, room, i); err != nil {
			t.Fatal(err)
		}
	}
	tl.expect(t, "m0", "m1")
	before, _ := c.Position(room)

	first.stop()
	st.await(t, client.StateReconnecting)
	var last uint64
	for i := 2; i < 12; i++ { // 10 missed, 5 kept
		var err error
		if last, err = publishDurable(ctx, pub, room, i); err != nil {
			t.Fatal(err)
		}
	}
	serveEdgeAt(t, addr, m.durableEdge(t, 5))
	st.await(t, client.StateOpen)

	tl.expect(t, "m7", "m8", "m9", "m10", "m11", "recovery "+room+" false")
	rec := tl.last()
	if rec.Recovered || !rec.Rejoin || rec.Since != before || rec.Position.Offset != last {
		t.Fatalf("recovery %+v, from %+v, last offset %d", rec, before, last)
	}
	if p, _ := c.Position(room); p != rec.Position {
		t.Fatalf("position %+v, want %+v", p, rec.Position)
	}
}

// History pages backward from the newest and forward from the oldest;
// a Join WithSince a message's position replays what follows it.
func TestDurableHistoryPaging(t *testing.T) {
	t.Parallel()
	const room = "dur-hist"
	m := newMesh(t)
	url := testenv.StartEdge(t, m.durableEdge(t, 0)).URL
	tl := newTimeline(nil)
	c := dial(t, url, client.Options{User: "alice", OnRecovery: tl.recovery})
	tl.watch(c)
	ctx := context.Background()
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	for i := range 25 {
		if _, err := publishDurable(ctx, pub, room, i); err != nil {
			t.Fatal(err)
		}
	}

	page := func(q client.HistoryQuery) ([]int, []client.Position, bool) {
		t.Helper()
		p, err := c.History(ctx, room, q)
		if err != nil {
			t.Fatalf("history %+v: %v", q, err)
		}
		var ns []int
		var pos []client.Position
		for _, env := range p.Messages {
			var s string
			if err := json.Unmarshal(env.Payload, &s); err != nil {
				t.Fatal(err)
			}
			ns = append(ns, msgNumber(t, s))
			at, ok := client.OffsetOf(env)
			if !ok || at.Epoch != p.Epoch || env.Meta.Room != room {
				t.Fatalf("message %s: meta %+v, page epoch %q", s, env.Meta, p.Epoch)
			}
			pos = append(pos, at)
		}
		return ns, pos, p.More
	}
	check := func(what string, got []int, more bool, from, to int, wantMore bool) {
		t.Helper()
		if len(got) != to-from || more != wantMore {
			t.Fatalf("%s: %v more=%v, want m%d..m%d more=%v", what, got, more, from, to-1, wantMore)
		}
		for i, n := range got {
			if n != from+i {
				t.Fatalf("%s: %v, want m%d..m%d", what, got, from, to-1)
			}
		}
	}

	got, pos, more := page(client.HistoryQuery{Limit: 10})
	check("newest", got, more, 15, 25, true)
	got, pos, more = page(client.HistoryQuery{Limit: 10, Before: pos[0].Offset})
	check("backward", got, more, 5, 15, true)
	got, _, more = page(client.HistoryQuery{Limit: 10, Before: pos[0].Offset})
	check("backward to the oldest", got, more, 0, 5, false)

	got, pos, more = page(client.HistoryQuery{Limit: 10, Since: new(uint64)})
	check("oldest", got, more, 0, 10, true)
	got, pos, more = page(client.HistoryQuery{Limit: 10, Since: &pos[len(pos)-1].Offset})
	check("forward", got, more, 10, 20, true)
	from := pos[len(pos)-1] // m19
	got, _, more = page(client.HistoryQuery{Limit: 10, Since: &from.Offset})
	check("forward to the newest", got, more, 20, 25, false)
	if _, ok := c.Position(room); ok {
		t.Fatal("History moved the room's position")
	}

	if err := c.Join(ctx, room, client.WithSince(from)); err != nil {
		t.Fatal(err)
	}
	tl.expect(t, "m20", "m21", "m22", "m23", "m24", "recovery "+room+" true")
	if rec := tl.last(); rec.Rejoin || rec.Since != from {
		t.Fatalf("recovery %+v", rec)
	}

	_, err := c.History(ctx, "plain", client.HistoryQuery{})
	if want := (&rpc.Error{Code: envelope.CodeFailedPrecondition}); !errors.Is(err, want) {
		t.Fatalf("history of a room that is not durable: %v, want FAILED_PRECONDITION", err)
	}
}
