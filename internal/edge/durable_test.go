package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// durableMesh is one NATS server, two edges with durable rooms dur-* and
// pub-dur-*, and a publisher.
type durableMesh struct {
	a, b *testenv.Edge
	aNC  *nats.Conn // edge A's connection
	pub  *worker.Publisher
	nc   *nats.Conn
}

func newDurableMesh(t testing.TB, cfg edge.Config) *durableMesh {
	t.Helper()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	cfg.Auth.DevMode = true
	if cfg.DurableRooms == nil {
		cfg.DurableRooms = edge.DefaultDurableRoomsConfig()
	}
	cfg.DurableRooms.Patterns = []string{"dur-*", "pub-dur-*"}
	cfgA, cfgB := cfg, cfg
	cfgA.NATS.Conn, cfgB.NATS.Conn = m.Connect(t), m.Connect(t)
	return &durableMesh{a: m.StartEdge(t, cfgA), b: m.StartEdge(t, cfgB), aNC: cfgA.NATS.Conn, pub: worker.NewPublisher(m.NC, envelope.DefaultNamespace), nc: m.NC}
}

// numbered is a durable room message as a test sees it.
type numbered struct {
	n     int
	pos   envelope.Position
	room  string
	extra string
}

func readNumbered(t *testing.T, env *envelope.Envelope) numbered {
	t.Helper()
	var p struct{ N int }
	if err := json.Unmarshal(env.Payload, &p); err != nil {
		t.Fatalf("payload %s: %v", env.Payload, err)
	}
	return numbered{n: p.N, pos: position(t, env), room: env.Meta.Room}
}

func position(t *testing.T, env *envelope.Envelope) envelope.Position {
	t.Helper()
	var pos envelope.Position
	off, ok := env.Meta.Extra["offset"]
	if !ok {
		t.Fatalf("%s in %s has no meta.offset: %s", env.Type, env.Meta.Room, env.Meta.Extra)
	}
	if err := json.Unmarshal(off, &pos.Offset); err != nil {
		t.Fatalf("meta.offset %s: %v", off, err)
	}
	if err := json.Unmarshal(env.Meta.Extra["epoch"], &pos.Epoch); err != nil || pos.Epoch == "" {
		t.Fatalf("meta.epoch %s: %v", env.Meta.Extra["epoch"], err)
	}
	return pos
}

// joinSince sends $join with since and returns the room messages that came
// before the $joined, and the $joined payload.
func joinSince(t *testing.T, c *wstest.Client, room string, since *envelope.Position) ([]numbered, envelope.Joined) {
	t.Helper()
	c.Send(t, envelope.TypeJoin, envelope.Meta{CorrelationID: "j-" + room}, envelope.RoomPayload{Room: room, Since: since})
	var got []numbered
	for {
		env := c.Next(t, wait)
		switch {
		case env.Type == envelope.TypeJoined && env.Meta.CorrelationID == "j-"+room:
			var j envelope.Joined
			if err := json.Unmarshal(env.Payload, &j); err != nil {
				t.Fatal(err)
			}
			return got, j
		case env.Type == "num" && env.Meta.Room == room:
			got = append(got, readNumbered(t, env))
		default:
			t.Fatalf("unexpected frame before $joined: %s %s", env.Type, env.Payload)
		}
	}
}

func publishNum(t *testing.T, pub *worker.Publisher, room string, n int) uint64 {
	t.Helper()
	env, _ := envelope.New("num", map[string]int{"n": n})
	seq, err := pub.ToDurableRoom(context.Background(), room, env)
	if err != nil {
		t.Fatalf("publish %d to %s: %v", n, room, err)
	}
	return seq
}

// checkExactlyOnce fails unless got is 0..want-1 in order, with growing
// offsets.
func checkExactlyOnce(t *testing.T, got []numbered, want int) {
	t.Helper()
	if len(got) != want {
		t.Errorf("got %d messages, want %d", len(got), want)
	}
	for i, m := range got {
		if m.n != i {
			t.Fatalf("message %d is n=%d (duplicate or gap); around it: %v", i, m.n, got[max(0, i-3):min(len(got), i+3)])
		}
		if i > 0 && m.pos.Offset <= got[i-1].pos.Offset {
			t.Fatalf("offset of message %d is %d, not after %d", i, m.pos.Offset, got[i-1].pos.Offset)
		}
	}
}

// A client leaves mid-stream and comes back through the other edge with
// since: it sees every message once, in order, across the seam.
func TestDurableResumeThroughOtherEdge(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room, total = "dur-stream", 1200
	c1 := wstest.Dial(t, m.a.URL+"?user=ann")
	if _, j := joinSince(t, c1, room, nil); !j.Durable || j.Epoch == "" || j.Recovered != nil {
		t.Fatalf("$joined of a durable room without since: %+v", j)
	}

	done := make(chan struct{})
	var pubErr error
	go func() {
		defer close(done)
		for i := range total {
			env, _ := envelope.New("num", map[string]int{"n": i})
			if _, err := m.pub.ToDurableRoom(context.Background(), room, env); err != nil {
				pubErr = err
				return
			}
			if i%3 == 0 { // another room in between: offsets are not contiguous
				other, _ := envelope.New("num", map[string]int{"n": -i})
				if _, err := m.pub.ToDurableRoom(context.Background(), "dur-noise", other); err != nil {
					pubErr = err
					return
				}
			}
			time.Sleep(2 * time.Millisecond) // paces the stream, which goes on during the outage
		}
	}()

	var got []numbered
	for len(got) < 200 {
		got = append(got, readNumbered(t, c1.AwaitType(t, "num", wait)))
	}
	c1.Close() // the frames it had not read yet are lost to it
	last := got[len(got)-1].pos
	time.Sleep(time.Second) // the outage: the stream keeps going

	c2 := wstest.Dial(t, m.b.URL+"?user=ann")
	replayed, j := joinSince(t, c2, room, &last)
	if j.Recovered == nil || !*j.Recovered {
		t.Fatalf("recovery reported incomplete: %+v", j)
	}
	if len(replayed) == 0 {
		t.Fatal("nothing replayed after a second away")
	}
	if r := replayed[len(replayed)-1].pos.Offset; j.Offset != r {
		t.Fatalf("$joined offset %d, last replayed %d", j.Offset, r)
	}
	got = append(got, replayed...)
	for got[len(got)-1].n < total-1 {
		got = append(got, readNumbered(t, c2.AwaitType(t, "num", 3*wait)))
	}
	<-done
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	checkExactlyOnce(t, got, total)
	t.Logf("%d replayed at the seam, %d before, %d live after", len(replayed), 200, total-200-len(replayed))
	if !c2.Quiet(300 * time.Millisecond) {
		t.Fatalf("a frame after the last message: %s", c2.Next(t, wait).Type)
	}
}

// Positions older than what the room keeps, or from another epoch, are
// reported as incomplete recovery; what is kept is still replayed.
func TestDurableIncompleteRecovery(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig()
	cfg.DurableRooms.RoomMaxMsgs = 5
	m := newDurableMesh(t, cfg)
	const room = "dur-small"
	c := wstest.Dial(t, m.a.URL)
	_, j := joinSince(t, c, room, nil)
	start := envelope.Position{Offset: j.Offset, Epoch: j.Epoch}
	for i := range 3 {
		publishNum(t, m.pub, room, i)
	}
	var seen []numbered
	for len(seen) < 3 {
		seen = append(seen, readNumbered(t, c.AwaitType(t, "num", wait)))
	}
	atThree := seen[2].pos

	t.Run("fewer missed than kept", func(t *testing.T) {
		c := wstest.Dial(t, m.b.URL)
		replayed, j := joinSince(t, c, room, &start)
		if j.Recovered == nil || !*j.Recovered || len(replayed) != 3 {
			t.Fatalf("recovered=%v replayed %d, want true and 3", j.Recovered, len(replayed))
		}
	})

	for i := 3; i < 13; i++ {
		publishNum(t, m.pub, room, i)
	}
	t.Run("more missed than kept", func(t *testing.T) {
		c := wstest.Dial(t, m.b.URL)
		replayed, j := joinSince(t, c, room, &atThree)
		if j.Recovered == nil || *j.Recovered {
			t.Fatalf("recovered=%v, want false", j.Recovered)
		}
		if len(replayed) != 5 || replayed[0].n != 8 || replayed[4].n != 12 {
			t.Fatalf("replayed %v, want the 5 kept (8..12)", replayed)
		}
	})
	if s := m.b.Stats(); s.RecoveryGaps != 1 || s.Recoveries != 1 {
		t.Errorf("edge B stats: %d recovered, %d gaps; want 1, 1", s.Recoveries, s.RecoveryGaps)
	}
	t.Run("other epoch", func(t *testing.T) {
		c := wstest.Dial(t, m.b.URL)
		replayed, j := joinSince(t, c, room, &envelope.Position{Offset: atThree.Offset, Epoch: "other"})
		if j.Recovered == nil || *j.Recovered || len(replayed) != 0 || j.Epoch != atThree.Epoch || j.Offset < atThree.Offset+10 {
			t.Fatalf("recovered=%v replayed %d joined %+v; want false, nothing, the current position", j.Recovered, len(replayed), j)
		}
	})
	t.Run("position from the future", func(t *testing.T) {
		c := wstest.Dial(t, m.b.URL)
		_, j := joinSince(t, c, room, &envelope.Position{Offset: 1 << 40, Epoch: atThree.Epoch})
		if j.Recovered == nil || *j.Recovered {
			t.Fatalf("recovered=%v, want false", j.Recovered)
		}
	})
	for len(seen) < 13 { // the member that stayed got everything live
		seen = append(seen, readNumbered(t, c.AwaitType(t, "num", wait)))
	}
	t.Run("nothing missed", func(t *testing.T) {
		c := wstest.Dial(t, m.b.URL)
		replayed, j := joinSince(t, c, room, &seen[12].pos)
		if j.Recovered == nil || !*j.Recovered || len(replayed) != 0 || j.Offset != seen[12].pos.Offset {
			t.Fatalf("recovered=%v replayed %d offset %d, want true, 0, %d", j.Recovered, len(replayed), j.Offset, seen[12].pos.Offset)
		}
	})
	t.Run("conservative when nothing proves continuity", func(t *testing.T) {
		// Documented: a position whose message is gone, in a room with
		// nothing kept at or before it, after the stream dropped older
		// messages, is reported incomplete, even when the room had nothing
		// to miss.
		c := wstest.Dial(t, m.b.URL)
		_, j := joinSince(t, c, "dur-empty", &start)
		if j.Recovered == nil || *j.Recovered {
			t.Fatalf("recovered=%v, want false", j.Recovered)
		}
	})
}

func history(t *testing.T, c *wstest.Client, q map[string]any) (*envelope.History, []numbered) {
	t.Helper()
	got := c.Request(t, envelope.TypeHistory, q, wait)
	if got.Type != envelope.TypeHistory {
		t.Fatalf("history %v: %s %s", q, got.Type, got.Payload)
	}
	var h envelope.History
	if err := json.Unmarshal(got.Payload, &h); err != nil {
		t.Fatal(err)
	}
	var ms []numbered
	for _, raw := range h.Messages {
		env, err := envelope.Decode(raw, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, readNumbered(t, env))
	}
	return &h, ms
}

func ns(ms []numbered) []int {
	out := make([]int, len(ms))
	for i, m := range ms {
		out[i] = m.n
	}
	return out
}

func TestDurableHistoryPaging(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Auth.PublicRooms = []string{"pub-*"}
	m := newDurableMesh(t, cfg)
	const room = "pub-dur-h"
	for i := range 25 {
		publishNum(t, m.pub, room, i)
		if i%2 == 0 {
			publishNum(t, m.pub, "dur-noise", -i)
		}
	}
	c := wstest.Dial(t, m.a.URL) // not a member: the room is public
	check := func(what string, q map[string]any, want []int, more bool) []numbered {
		t.Helper()
		h, ms := history(t, c, q)
		if fmt.Sprint(ns(ms)) != fmt.Sprint(want) || h.More != more || h.Room != q["room"] || h.Epoch == "" {
			t.Fatalf("%s: got %v more=%v, want %v more=%v", what, ns(ms), h.More, want, more)
		}
		return ms
	}
	seq := func(a, b int) []int {
		var s []int
		for i := a; i <= b; i++ {
			s = append(s, i)
		}
		return s
	}
	// Backward from the newest.
	page := check("newest 10", map[string]any{"room": room, "limit": 10}, seq(15, 24), true)
	page = check("10 before", map[string]any{"room": room, "limit": 10, "before": page[0].pos.Offset}, seq(5, 14), true)
	page = check("last page back", map[string]any{"room": room, "limit": 10, "before": page[0].pos.Offset}, seq(0, 4), false)
	check("before the oldest", map[string]any{"room": room, "before": page[0].pos.Offset}, nil, false)
	check("exactly all", map[string]any{"room": room, "limit": 25}, seq(0, 24), false)
	check("default limit", map[string]any{"room": room}, seq(0, 24), false)
	// Forward from the start.
	page = check("first 10", map[string]any{"room": room, "limit": 10, "since": 0}, seq(0, 9), true)
	page = check("next 10", map[string]any{"room": room, "limit": 10, "since": page[9].pos.Offset}, seq(10, 19), true)
	page = check("last page forward", map[string]any{"room": room, "limit": 10, "since": page[9].pos.Offset}, seq(20, 24), false)
	check("after the newest", map[string]any{"room": room, "since": page[4].pos.Offset}, nil, false)
	check("one", map[string]any{"room": room, "limit": 1, "since": page[0].pos.Offset - 1}, []int{20}, true)
	check("exactly the rest", map[string]any{"room": room, "limit": 5, "since": page[0].pos.Offset - 1}, seq(20, 24), false)
	check("empty room", map[string]any{"room": "pub-dur-empty"}, nil, false)

	for _, tc := range []struct {
		q    map[string]any
		code envelope.Code
	}{
		{map[string]any{"room": "dur-noise"}, envelope.CodePermissionDenied}, // not public, not a member
		{map[string]any{"room": "pub-lobby"}, envelope.CodeFailedPrecondition},
		{map[string]any{"room": room, "limit": 1001}, envelope.CodeInvalidArgument},
		{map[string]any{"room": room, "since": 1, "before": 5}, envelope.CodeInvalidArgument},
		{map[string]any{"room": "a.b"}, envelope.CodeInvalidArgument},
	} {
		assertRPCError(t, c.Request(t, envelope.TypeHistory, tc.q, wait), tc.code)
	}
}

// Core publishes to a durable room's out subject are captured into the
// stream and delivered with positions; positions a publisher writes into
// a non-durable room's meta are removed.
func TestDurableCaptureAndForgedPositions(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	c := wstest.Dial(t, m.a.URL)
	joinSince(t, c, "dur-core", nil)
	join(t, c, "lobby")
	for i := range 3 {
		env, _ := envelope.New("num", map[string]int{"n": i})
		if err := m.pub.ToRoom("dur-core", env); err != nil {
			t.Fatal(err)
		}
	}
	var last uint64
	for i := range 3 {
		got := readNumbered(t, c.AwaitType(t, "num", wait))
		if got.n != i || got.room != "dur-core" || got.pos.Offset <= last {
			t.Fatalf("captured message %d: %+v", i, got)
		}
		last = got.pos.Offset
	}
	if n := m.a.Stats().Captured + m.b.Stats().Captured; n != 3 {
		t.Errorf("%d captured, want 3", n)
	}
	forged := &envelope.Envelope{Type: "num", Payload: []byte(`{"n":7}`), Meta: envelope.Meta{Extra: map[string]json.RawMessage{"offset": []byte("99"), "epoch": []byte(`"x"`), "keep": []byte("1")}}}
	if err := m.pub.ToRoom("lobby", forged); err != nil {
		t.Fatal(err)
	}
	got := c.AwaitType(t, "num", wait)
	if _, ok := got.Meta.Extra["offset"]; ok || got.Meta.Extra["epoch"] != nil || string(got.Meta.Extra["keep"]) != "1" || got.Meta.Room != "lobby" {
		t.Fatalf("non-durable delivery meta: %+v", got.Meta)
	}

	// A publisher cannot store into a room that is not durable.
	env, _ := envelope.New("num", map[string]int{"n": 1})
	_, err := m.pub.ToDurableRoom(context.Background(), "lobby", env)
	var re *rpc.Error
	if !errors.As(err, &re) || re.Code != envelope.CodeFailedPrecondition {
		t.Fatalf("ToDurableRoom on a plain room: %v", err)
	}
}

// Members joined before and during a steady stream on one edge all see
// the same sequence; a member that joins with since at the same time as
// others get live messages sees no duplicate at its seam.
func TestDurableManyJoinersAtTheSeam(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room, total = "dur-seam", 400
	first := wstest.Dial(t, m.a.URL)
	_, j := joinSince(t, first, room, nil)
	start := envelope.Position{Offset: j.Offset, Epoch: j.Epoch}
	results := make([][]numbered, 4)
	// Joiner k joins once k*70 messages are published: at different
	// points of the stream.
	reached := make([]chan struct{}, len(results))
	for k := range reached {
		reached[k] = make(chan struct{})
	}
	close(reached[0])
	var wg sync.WaitGroup
	var pubErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range total {
			env, _ := envelope.New("num", map[string]int{"n": i})
			if _, pubErr = m.pub.ToDurableRoom(context.Background(), room, env); pubErr != nil {
				return
			}
			if k := (i + 1) / 70; (i+1)%70 == 0 && k < len(reached) {
				close(reached[k])
			}
			time.Sleep(time.Millisecond) // paces the stream, so that joins land in the middle of it
		}
	}()
	var jwg sync.WaitGroup
	for k := range results {
		jwg.Add(1)
		go func() {
			defer jwg.Done()
			select {
			case <-reached[k]:
			case <-time.After(wait):
				t.Errorf("joiner %d: the publisher did not get to message %d", k, k*70)
				return
			}
			c := wstest.Dial(t, m.a.URL)
			got, j := joinSince(t, c, room, &start)
			if j.Recovered == nil || !*j.Recovered {
				t.Errorf("joiner %d: recovered=%v", k, j.Recovered)
				return
			}
			for len(got) == 0 || got[len(got)-1].n < total-1 {
				got = append(got, readNumbered(t, c.AwaitType(t, "num", 3*wait)))
			}
			results[k] = got
		}()
	}
	jwg.Wait()
	wg.Wait()
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	for k, got := range results {
		t.Run(strconv.Itoa(k), func(t *testing.T) { checkExactlyOnce(t, got, total) })
	}
}

// Republished messages an edge misses (a NATS node failure, a stream leader
// change) are read from the stream when the next one shows the hole:
// members still get every message once, in order, including a member whose
// replay ended past the hole.
func TestDurableHoleFilledFromTheStream(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room = "dur-holes"
	steady := wstest.Dial(t, m.a.URL)
	_, j := joinSince(t, steady, room, nil)
	start := envelope.Position{Offset: j.Offset, Epoch: j.Epoch}
	publishNum(t, m.pub, room, 0)
	got := []numbered{readNumbered(t, steady.AwaitType(t, "num", wait))}

	edge.DropLiveRepublishes(m.a.Edge, 3)
	for i := 1; i <= 3; i++ {
		publishNum(t, m.pub, room, i) // lost on the way to edge A
	}
	// A member joining now replays 0..3 from the stream, past what the
	// room's live chain delivered on this edge.
	late := wstest.Dial(t, m.a.URL)
	lateGot, lj := joinSince(t, late, room, &start)
	if lj.Recovered == nil || !*lj.Recovered || len(lateGot) != 4 {
		t.Fatalf("late joiner: recovered=%v replayed %v", lj.Recovered, lateGot)
	}
	for i := 4; i < 8; i++ {
		publishNum(t, m.pub, room, i) // 4 shows the hole: 1..3 come from the stream first
	}
	for len(got) < 8 {
		got = append(got, readNumbered(t, steady.AwaitType(t, "num", wait)))
	}
	checkExactlyOnce(t, got, 8)
	for len(lateGot) < 8 {
		lateGot = append(lateGot, readNumbered(t, late.AwaitType(t, "num", wait)))
	}
	checkExactlyOnce(t, lateGot, 8)
	testenv.Eventually(t, wait, "1 backfill and 1 recovery in the stats", func() bool {
		s := m.a.Stats()
		return s.Backfills == 1 && s.BackfillFails == 0 && s.Recoveries == 1
	})
	for _, c := range []*wstest.Client{steady, late} {
		if !c.Quiet(200 * time.Millisecond) {
			t.Fatalf("a frame after the last: %s", c.Next(t, wait).Payload)
		}
	}
}

// The built-in chat handler stores messages of durable rooms with the
// acknowledged publish: they arrive with positions even with no edge
// capturing core publishes.
func TestDurableChatUsesTheAcknowledgedPath(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig()
	cfg.DurableRooms.NoCapture = true
	m := newDurableMesh(t, cfg)
	testenv.Worker(t, m.nc)
	alice, bob := wstest.Dial(t, m.a.URL+"?user=alice"), wstest.Dial(t, m.b.URL+"?user=bob")
	joinSince(t, alice, "dur-chat", nil)
	joinSince(t, bob, "dur-chat", nil)
	if got := alice.Request(t, "chat.send", map[string]string{"room": "dur-chat", "text": "kept"}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send: %s %s", got.Type, got.Payload)
	}
	got := bob.AwaitType(t, "chat.message", wait)
	if pos := position(t, got); pos.Offset == 0 {
		t.Fatalf("no position on %s", got.Payload)
	}
}

// A history page holds at most MaxOutboundSize bytes of messages: paging
// by bytes still visits every message once, both ways.
func TestDurableHistoryPageBytes(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.NATS.MaxOutboundSize = 1024
	m := newDurableMesh(t, cfg)
	const room, total = "dur-bytes", 60
	for i := range total {
		publishNum(t, m.pub, room, i)
	}
	c := wstest.Dial(t, m.a.URL)
	var fwd []int
	var since uint64
	for pages := 0; ; pages++ {
		h, ms := history(t, c, map[string]any{"room": room, "limit": 1000, "since": since})
		size := 0
		for _, raw := range h.Messages {
			size += len(raw)
		}
		if size > 1024 || len(ms) == 0 {
			t.Fatalf("page %d: %d messages, %d bytes", pages, len(ms), size)
		}
		fwd = append(fwd, ns(ms)...)
		since = ms[len(ms)-1].pos.Offset
		if !h.More {
			break
		}
	}
	var back []int
	var before uint64
	for {
		h, ms := history(t, c, map[string]any{"room": room, "limit": 1000, "before": before})
		back = append(ns(ms), back...)
		before = ms[0].pos.Offset
		if !h.More {
			break
		}
	}
	all := make([]int, total)
	for i := range all {
		all[i] = i
	}
	if want := fmt.Sprint(all); fmt.Sprint(fwd) != want || fmt.Sprint(back) != want {
		t.Fatalf("forward %v\nbackward %v", fwd, back)
	}
}

// A hole that cannot be filled at once (the stream electing a leader) holds
// the room's live messages back; they arrive by themselves once the stream
// answers, even when no later message comes to trigger the retry.
func TestDurableHeldRoomCatchesUpWithoutNewMessages(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room = "dur-held"
	c := wstest.Dial(t, m.a.URL)
	joinSince(t, c, room, nil)
	publishNum(t, m.pub, room, 0)
	got := []numbered{readNumbered(t, c.AwaitType(t, "num", wait))}
	edge.DropLiveRepublishes(m.a.Edge, 2)
	edge.FailBackfills(m.a.Edge, 2)
	for i := 1; i <= 4; i++ {
		publishNum(t, m.pub, room, i) // 1, 2 lost; 3 finds the hole, its backfill fails; 4 is held
	}
	for len(got) < 5 {
		got = append(got, readNumbered(t, c.AwaitType(t, "num", wait)))
	}
	checkExactlyOnce(t, got, 5)
	// Counted after the messages went out.
	testenv.Eventually(t, wait, "1 backfill and 2 failed in the stats", func() bool {
		s := m.a.Stats()
		return s.BackfillFails == 2 && s.Backfills == 1
	})
}
