package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// A $history page reads from JetStream about what it returns, not the
// room's retained history: with 200 messages of 32 KiB in the room, a page
// of one message reads less than 4 pages' worth on the edge's NATS
// connection, forward and backward, from either end or the middle.
func TestDurableHistoryReadsOnlyThePage(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room, total = "dur-big", 200
	pad := strings.Repeat("x", 32<<10)
	offs := make([]uint64, total)
	for i := range total {
		env, _ := envelope.New("num", map[string]any{"n": i, "pad": pad})
		seq, err := m.pub.ToDurableRoom(context.Background(), room, env)
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		offs[i] = seq
		if i%4 == 0 { // other rooms in between: offsets are not contiguous
			publishNum(t, m.pub, "dur-noise", -i)
		}
	}
	c := wstest.Dial(t, m.a.URL)
	for _, tc := range []struct {
		name        string
		q           map[string]any
		first, last int // the page's first and last n
		more        bool
	}{
		{"newest", map[string]any{"limit": 1}, total - 1, total - 1, true},
		{"one before the middle", map[string]any{"limit": 1, "before": offs[100]}, 99, 99, true},
		{"the oldest, backward", map[string]any{"limit": 1, "before": offs[1]}, 0, 0, false},
		{"the oldest, forward", map[string]any{"limit": 1, "since": 0}, 0, 0, true},
		{"one after the middle", map[string]any{"limit": 1, "since": offs[100]}, 101, 101, true},
		{"the newest, forward", map[string]any{"limit": 1, "since": offs[total-2]}, total - 1, total - 1, false},
		// Cut by the page's byte bound (1 MiB): about 31 messages.
		{"a full page backward", map[string]any{"limit": 1000, "before": offs[150]}, -1, 149, true},
		{"a full page forward", map[string]any{"limit": 1000, "since": offs[20]}, 21, -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.q["room"] = room
			before := m.aNC.Stats().InBytes
			got := c.Request(t, envelope.TypeHistory, tc.q, wait)
			read := m.aNC.Stats().InBytes - before
			if got.Type != envelope.TypeHistory {
				t.Fatalf("%s %s", got.Type, got.Payload)
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
			if len(ms) == 0 {
				t.Fatalf("empty page, more=%v", h.More)
			}
			for i := 1; i < len(ms); i++ {
				if ms[i].n != ms[i-1].n+1 {
					t.Fatalf("page %v is not contiguous", ns(ms))
				}
			}
			first, last := ms[0].n, ms[len(ms)-1].n
			if tc.first >= 0 && first != tc.first || tc.last >= 0 && last != tc.last || h.More != tc.more {
				t.Fatalf("page %d..%d more=%v, want %d..%d more=%v", first, last, h.More, tc.first, tc.last, tc.more)
			}
			page := uint64(len(got.Payload))
			t.Logf("%d messages, %d bytes; read %d bytes from NATS (%.2f pages)", len(ms), page, read, float64(read)/float64(page))
			if read >= 4*page {
				t.Fatalf("read %d bytes from NATS for a page of %d bytes (%d messages): more than 4 pages' worth", read, page, len(ms))
			}
		})
	}
}

// Every position a client can send gets a documented answer: any offset
// from 0 to 2^64-1 is a page (empty past the end forward, the newest past
// the end backward); anything else is INVALID_ARGUMENT.
func TestDurableHistoryHostilePositions(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room = "dur-h"
	offs := make([]uint64, 5)
	for i := range offs {
		offs[i] = publishNum(t, m.pub, room, i)
		publishNum(t, m.pub, "dur-noise", -i)
	}
	all := []int{0, 1, 2, 3, 4}
	c := wstest.Dial(t, m.a.URL)
	for _, tc := range []struct {
		name  string
		q     string // the payload's fields after "room"
		want  []int
		more  bool
		code  envelope.Code // an error instead of a page
		extra string
	}{
		{name: "since 2^64-1", q: `"since":18446744073709551615`},
		{name: "since 2^64-2", q: `"since":18446744073709551614`},
		{name: "since 2^63", q: `"since":9223372036854775808`},
		{name: "since 2^63-1", q: `"since":9223372036854775807`},
		{name: "since the newest", q: fmt.Sprintf(`"since":%d`, offs[4])},
		{name: "since 0", q: `"since":0`, want: all},
		{name: "since the oldest", q: fmt.Sprintf(`"since":%d`, offs[0]), want: all[1:]},
		{name: "since null is no since", q: `"since":null`, want: all},
		{name: "since 0 limit 1", q: `"since":0,"limit":1`, want: []int{0}, more: true},
		{name: "since the newest limit 1", q: fmt.Sprintf(`"since":%d,"limit":1`, offs[3]), want: []int{4}},
		{name: "before 2^64-1", q: `"before":18446744073709551615`, want: all},
		{name: "before 2^63", q: `"before":9223372036854775808`, want: all},
		{name: "before 2^64-1 limit 1", q: `"before":18446744073709551615,"limit":1`, want: []int{4}, more: true},
		{name: "before 0 is the newest", q: `"before":0`, want: all},
		{name: "before 1", q: `"before":1`},
		{name: "before the oldest", q: fmt.Sprintf(`"before":%d`, offs[0])},
		{name: "before the second", q: fmt.Sprintf(`"before":%d,"limit":1`, offs[1]), want: []int{0}},
		{name: "limit 0 is the default", q: `"limit":0`, want: all},
		{name: "limit 1000", q: `"limit":1000`, want: all},
		{name: "negative since", q: `"since":-1`, code: envelope.CodeInvalidArgument},
		{name: "fractional since", q: `"since":1.5`, code: envelope.CodeInvalidArgument},
		{name: "since with a point", q: `"since":1.0`, code: envelope.CodeInvalidArgument},
		{name: "since with an exponent", q: `"since":1e3`, code: envelope.CodeInvalidArgument},
		{name: "since 2^64", q: `"since":18446744073709551616`, code: envelope.CodeInvalidArgument},
		{name: "since as a string", q: `"since":"1"`, code: envelope.CodeInvalidArgument},
		{name: "negative before", q: `"before":-1`, code: envelope.CodeInvalidArgument},
		{name: "fractional before", q: `"before":0.5`, code: envelope.CodeInvalidArgument},
		{name: "before 2^64", q: `"before":18446744073709551616`, code: envelope.CodeInvalidArgument},
		{name: "negative limit", q: `"limit":-1`, code: envelope.CodeInvalidArgument},
		{name: "fractional limit", q: `"limit":1.5`, code: envelope.CodeInvalidArgument},
		{name: "limit 1001", q: `"limit":1001`, code: envelope.CodeInvalidArgument},
		{name: "limit 2^63", q: `"limit":9223372036854775808`, code: envelope.CodeInvalidArgument},
		{name: "limit 2^64-1", q: `"limit":18446744073709551615`, code: envelope.CodeInvalidArgument},
		{name: "limit 1e400", q: `"limit":1e400`, code: envelope.CodeInvalidArgument},
		{name: "since and before", q: `"since":1,"before":5`, code: envelope.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := json.RawMessage(`{"room":"` + room + `",` + tc.q + `}`)
			got := c.Request(t, envelope.TypeHistory, q, wait)
			if tc.code != "" {
				assertRPCError(t, got, tc.code)
				return
			}
			if got.Type != envelope.TypeHistory {
				t.Fatalf("%s %s", got.Type, got.Payload)
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
			if fmt.Sprint(ns(ms)) != fmt.Sprint(tc.want) || h.More != tc.more || h.Messages == nil {
				t.Fatalf("got %v more=%v, want %v more=%v", ns(ms), h.More, tc.want, tc.more)
			}
		})
	}
}

// $joined of a durable room with nothing stored carries the end of history
// (the stream's last sequence, 0 for a stream that never stored a message)
// and the epoch: a client that leaves and re-joins from that position gets
// every message stored in between, recovered, even after the stream
// dropped older messages of other rooms.
func TestDurableJoinEmptyRoomOffset(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		maxMsgs int64 // the stream's; 0: unlimited
		noise   int   // messages stored in another room first
	}{
		{name: "stream never stored anything"},
		{name: "stream holds other rooms", noise: 3},
		{name: "stream dropped older messages", maxMsgs: 20, noise: 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := edge.DefaultConfig()
			cfg.DurableRooms = edge.DefaultDurableRoomsConfig()
			cfg.DurableRooms.MaxMsgs = tc.maxMsgs
			m := newDurableMesh(t, cfg)
			var end uint64
			for i := range tc.noise {
				end = publishNum(t, m.pub, "dur-other", i)
			}
			const room = "dur-fresh"
			c := wstest.Dial(t, m.a.URL)
			got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
			if got.Type != envelope.TypeJoined {
				t.Fatalf("$join: %s %s", got.Type, got.Payload)
			}
			var fields map[string]json.RawMessage
			var j envelope.Joined
			if err := json.Unmarshal(got.Payload, &fields); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(got.Payload, &j); err != nil {
				t.Fatal(err)
			}
			if _, ok := fields["offset"]; !ok || j.Offset != end || j.Epoch == "" || !j.Durable || j.Recovered != nil {
				t.Fatalf("$joined %s; want durable, epoch, offset %d, no recovered", got.Payload, end)
			}
			if left := c.Request(t, envelope.TypeLeave, envelope.RoomPayload{Room: room}, wait); left.Type != envelope.TypeLeft {
				t.Fatalf("$leave: %s %s", left.Type, left.Payload)
			}
			var last uint64
			for i := range 5 {
				last = publishNum(t, m.pub, room, i)
			}
			replayed, rj := joinSince(t, c, room, &envelope.Position{Offset: j.Offset, Epoch: j.Epoch})
			checkExactlyOnce(t, replayed, 5)
			if rj.Recovered == nil || !*rj.Recovered || rj.Offset != last || rj.Epoch != j.Epoch {
				t.Fatalf("re-join from %d: %+v; want recovered at %d", j.Offset, rj, last)
			}
		})
	}
}

// Stored messages the edge does not deliver (here one that is not an
// envelope) are skipped by a page and do not count toward its limit, in
// both directions; a page is never empty while more says there is another.
func TestDurableHistorySkipsUndeliverable(t *testing.T) {
	t.Parallel()
	m := newDurableMesh(t, edge.DefaultConfig())
	const room = "dur-junk"
	offs := []uint64{publishNum(t, m.pub, room, 0), publishNum(t, m.pub, room, 1)}
	subj, err := envelope.DefaultNamespace.DurableRoom(room)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(m.nc)
	if err != nil {
		t.Fatal(err)
	}
	junk, err := js.Publish(context.Background(), subj.String(), []byte("not an envelope"))
	if err != nil {
		t.Fatal(err)
	}
	offs = append(offs, publishNum(t, m.pub, room, 2), publishNum(t, m.pub, room, 3))
	c := wstest.Dial(t, m.a.URL)
	for _, tc := range []struct {
		name string
		q    map[string]any
		want []int
		more bool
	}{
		{"newest 3", map[string]any{"limit": 3}, []int{1, 2, 3}, true},
		{"2 before the one after it", map[string]any{"limit": 2, "before": offs[2]}, []int{0, 1}, false},
		{"1 before it", map[string]any{"limit": 1, "before": junk.Sequence}, []int{1}, true},
		{"first 3", map[string]any{"limit": 3, "since": 0}, []int{0, 1, 2}, true},
		{"2 after the one before it", map[string]any{"limit": 2, "since": offs[1]}, []int{2, 3}, false},
		{"1 after it", map[string]any{"limit": 1, "since": junk.Sequence}, []int{2}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.q["room"] = room
			h, ms := history(t, c, tc.q)
			if fmt.Sprint(ns(ms)) != fmt.Sprint(tc.want) || h.More != tc.more {
				t.Fatalf("got %v more=%v, want %v more=%v", ns(ms), h.More, tc.want, tc.more)
			}
		})
	}
}
