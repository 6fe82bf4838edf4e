package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// streamMesh is one NATS server, one edge in dev mode with response
// streams (a short idle check), and a publisher.
type streamMesh struct {
	*mesh
	pub *worker.Publisher
}

func newStreamMesh(t *testing.T) *streamMesh {
	t.Helper()
	cfg := edge.Config{Streams: &edge.StreamsConfig{IdleCheck: 200 * time.Millisecond}}
	m := newMesh(t, cfg)
	return &streamMesh{mesh: m, pub: worker.NewPublisher(m.NC, envelope.DefaultNamespace)}
}

// streamRead is what a client got of a stream: the text, the frames it
// came in, the last offset and the end.
type streamRead struct {
	text   strings.Builder
	frames int
	offset int64
	end    *envelope.StreamEnd
}

// joinStream joins stream id from offset and returns the $stream.joined
// frame, or the error frame.
func joinStream(t *testing.T, c *wstest.Client, id string, offset int64) *envelope.Envelope {
	t.Helper()
	return c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: id, Offset: offset}, wait)
}

// readStream reads stream id's frames until its end, or until stop says
// so after a chunk.
func readStream(t *testing.T, c *wstest.Client, id string, stop func(*streamRead) bool) *streamRead {
	t.Helper()
	r := &streamRead{}
	for {
		env := c.Await(t, 10*time.Second, func(e *envelope.Envelope) bool {
			return (e.Type == envelope.TypeStreamChunk || e.Type == envelope.TypeStreamEnd) && string(e.Meta.Extra["stream"]) == `"`+id+`"`
		})
		var off int64
		if err := json.Unmarshal(env.Meta.Extra["offset"], &off); err != nil {
			t.Fatalf("%s without meta.offset: %s", env.Type, env.Meta.Extra)
		}
		if env.Type == envelope.TypeStreamEnd {
			r.end = &envelope.StreamEnd{}
			if err := json.Unmarshal(env.Payload, r.end); err != nil {
				t.Fatal(err)
			}
			if r.frames > 0 && off != r.offset {
				t.Fatalf("end at offset %d after chunks up to %d", off, r.offset)
			}
			r.offset = off
			return r
		}
		var text string
		if err := json.Unmarshal(env.Payload, &text); err != nil {
			t.Fatalf("chunk payload %s: %v", env.Payload, err)
		}
		r.text.WriteString(text)
		r.frames++
		if off <= r.offset || r.offset != 0 && off-r.offset != int64(len(text)) {
			t.Fatalf("chunk of %d bytes at offset %d after %d", len(text), off, r.offset)
		}
		r.offset = off
		if stop != nil && stop(r) {
			return r
		}
	}
}

func word(i int) string { return fmt.Sprintf("w%d·é ", i) } // multi-byte on purpose

// TestStreamJoinResumeRollup: a reader that joins mid-stream gets
// everything from the start, a second one that leaves and re-joins from
// its offset gets exactly the rest, both see the end, and the stream holds
// one message after it.
func TestStreamJoinResumeRollup(t *testing.T) {
	m := newStreamMesh(t)
	ctx := context.Background()
	s, err := m.pub.OpenStream(ctx, worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	write := func(from, to int) {
		for i := from; i < to; i++ {
			want.WriteString(word(i))
			if _, err := s.WriteString(word(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 50)
	a := m.dial(t, "alice")
	if got := joinStream(t, a, s.ID(), 0); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("join: %s %s", got.Type, got.Payload)
	}
	b := m.dial(t, "alice")
	joinStream(t, b, s.ID(), 0)
	first := readStream(t, b, s.ID(), func(r *streamRead) bool { return r.text.Len() > 100 })
	b.Request(t, envelope.TypeStreamLeave, envelope.StreamQuery{Stream: s.ID()}, wait)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 50; i < 300; i++ {
			want.WriteString(word(i))
			_, _ = s.WriteString(word(i))
			if i%50 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	<-done
	b2 := m.dial(t, "alice")
	joinStream(t, b2, s.ID(), first.offset)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	all := readStream(t, a, s.ID(), nil)
	rest := readStream(t, b2, s.ID(), nil)
	if all.text.String() != want.String() {
		t.Fatalf("joined at 0: %d bytes, want %d", all.text.Len(), want.Len())
	}
	if got := first.text.String() + rest.text.String(); got != want.String() {
		t.Fatalf("left at %d and re-joined: %d bytes, want %d (gap or duplicate at the seam)", first.offset, len(got), want.Len())
	}
	for _, r := range []*streamRead{all, rest} {
		if r.end.Status != envelope.StreamDone {
			t.Fatalf("end %+v", r.end)
		}
	}
	// Rolled up: one message holds the whole text.
	js, _ := jetstream.New(m.NC)
	st, err := js.Stream(ctx, envelope.DefaultNamespace.StreamsStream())
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := envelope.DefaultNamespace.Stream(s.ID())
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subj.String()))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[subj.String()]; n != 1 {
		t.Fatalf("after the end the stream holds %d messages, want 1 (the rollup)", n)
	}
	// A join after the end reads the rollup: one chunk, then the end.
	late := m.dial(t, "alice")
	joinStream(t, late, s.ID(), 0)
	r := readStream(t, late, s.ID(), nil)
	if r.text.String() != want.String() || r.frames != 1 || r.end.Status != envelope.StreamDone {
		t.Fatalf("join after the end: %d bytes in %d frames, end %+v", r.text.Len(), r.frames, r.end)
	}
	// A join from inside a character starts at the next one.
	mid := m.dial(t, "alice")
	cut := strings.Index(want.String(), "é") + 1
	joinStream(t, mid, s.ID(), int64(cut))
	r = readStream(t, mid, s.ID(), nil)
	if r.text.String() != want.String()[cut+1:] {
		t.Fatalf("join at %d (inside é): got %q...", cut, r.text.String()[:10])
	}
}

// TestStreamCoalescesBacklog: 2,000 chunks stored before the join arrive
// whole, in far fewer frames than chunks (at most 64 KiB each).
func TestStreamCoalescesBacklog(t *testing.T) {
	m := newStreamMesh(t)
	js, _ := jetstream.New(m.NC)
	subj := "natter.stream.backlog"
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: subj, Header: nats.Header{"Natter-Stream": {"open"}, "Natter-Stream-User": {"alice"}}}); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range 2000 {
		want.WriteString(word(i))
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: subj, Header: nats.Header{"Natter-Stream": {"chunk"}}, Data: []byte(word(i))}); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	c := m.dial(t, "alice")
	joinStream(t, c, "backlog", 0)
	r := readStream(t, c, "backlog", func(r *streamRead) bool { return r.text.Len() >= want.Len() })
	if r.text.String() != want.String() {
		t.Fatalf("%d bytes, want %d", r.text.Len(), want.Len())
	}
	if r.frames >= 2000 {
		t.Fatalf("2000 stored chunks in %d frames: not coalesced", r.frames)
	}
	t.Logf("2000 stored chunks, %d bytes, in %d frames", want.Len(), r.frames)
}

// TestStreamAuthorization: another user, a connection that is not the
// stream's, and a non-member of the stream's room are refused; a member
// reads it; unknown streams are NOT_FOUND.
func TestStreamAuthorization(t *testing.T) {
	m := newStreamMesh(t)
	ctx := context.Background()
	byUser, _ := m.pub.OpenStream(ctx, worker.StreamTo{User: "alice"})
	byRoom, _ := m.pub.OpenStream(ctx, worker.StreamTo{Room: "team"})
	bob := m.dial(t, "bob")
	alice := m.dial(t, "alice")
	byConn, err := m.pub.OpenStream(ctx, worker.StreamTo{Conn: alice.ConnID(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*worker.StreamWriter{byUser, byRoom, byConn} {
		defer s.Close()
		assertRPCError(t, joinStream(t, bob, s.ID(), 0), envelope.CodePermissionDenied)
		assertRPCError(t, bob.Request(t, envelope.TypeStreamCancel, envelope.StreamQuery{Stream: s.ID()}, wait), envelope.CodePermissionDenied)
	}
	assertRPCError(t, joinStream(t, bob, "nope", 0), envelope.CodeNotFound)
	assertRPCError(t, joinStream(t, bob, "bad.id", 0), envelope.CodeInvalidArgument)
	join(t, bob, "team")
	if got := joinStream(t, bob, byRoom.ID(), 0); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("member of the room: %s %s", got.Type, got.Payload)
	}
	assertRPCError(t, joinStream(t, bob, byRoom.ID(), 0), envelope.CodeAlreadyExists)
	if got := joinStream(t, alice, byConn.ID(), 0); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("the stream's connection: %s %s", got.Type, got.Payload)
	}
	for _, s := range []*worker.StreamWriter{byUser} {
		if got := joinStream(t, alice, s.ID(), 0); got.Type != envelope.TypeStreamJoined {
			t.Fatalf("the stream's user: %s %s", got.Type, got.Payload)
		}
	}
}

// TestStreamCancel: a reader's $stream.cancel cancels the writer's
// context, and the end the writer then writes is CANCELLED.
func TestStreamCancel(t *testing.T) {
	m := newStreamMesh(t)
	s, _ := m.pub.OpenStream(context.Background(), worker.StreamTo{User: "alice"})
	_, _ = s.WriteString("partial ")
	c := m.dial(t, "alice")
	joinStream(t, c, s.ID(), 0)
	readStream(t, c, s.ID(), func(r *streamRead) bool { return r.text.Len() > 0 })
	if got := c.Request(t, envelope.TypeStreamCancel, envelope.StreamQuery{Stream: s.ID()}, wait); got.Type != envelope.TypeStreamCancelled {
		t.Fatalf("cancel: %s %s", got.Type, got.Payload)
	}
	select {
	case <-s.Context().Done():
	case <-time.After(wait):
		t.Fatal("the writer's context was not cancelled")
	}
	var re *rpc.Error
	if cause := context.Cause(s.Context()); !errors.As(cause, &re) || re.Code != envelope.CodeCanceled {
		t.Fatalf("cause %v", cause)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := readStream(t, c, s.ID(), nil)
	if r.end.Status != envelope.StreamError || r.end.Error.Code != envelope.CodeCanceled {
		t.Fatalf("end %+v %+v", r.end, r.end.Error)
	}
}

// TestStreamProducerGone: a producer whose NATS connection dies mid-stream
// (as a killed process's does) leaves readers an UNAVAILABLE end with the
// text it stored, not a hang; a cancel of a stream without a producer ends
// it CANCELLED.
func TestStreamProducerGone(t *testing.T) {
	m := newStreamMesh(t)
	for _, cancel := range []bool{false, true} {
		nc := testenv.Connect(t, m.URL)
		s, err := worker.NewPublisher(nc, envelope.DefaultNamespace).OpenStream(context.Background(), worker.StreamTo{User: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.WriteString("before the crash")
		c := m.dial(t, "alice")
		code := envelope.CodeUnavailable
		if cancel {
			// Nobody reads it: the cancel finds no producer and ends it.
			waitStored(t, m.NC, s.ID(), 2) // the open and the chunk
			nc.Close()
			code = envelope.CodeCanceled
			if got := c.Request(t, envelope.TypeStreamCancel, envelope.StreamQuery{Stream: s.ID()}, wait); got.Type != envelope.TypeStreamCancelled {
				t.Fatalf("cancel: %s %s", got.Type, got.Payload)
			}
			joinStream(t, c, s.ID(), 0)
		} else {
			joinStream(t, c, s.ID(), 0)
			readStream(t, c, s.ID(), func(r *streamRead) bool { return r.text.Len() == len("before the crash") })
			nc.Close()
		}
		r := readStream(t, c, s.ID(), nil)
		if r.end.Status != envelope.StreamError || r.end.Error.Code != code || r.offset != int64(len("before the crash")) {
			t.Fatalf("end %+v %+v at %d", r.end, r.end.Error, r.offset)
		}
	}
}

// TestStreamCancelsShareOneEnd: many cancels at once of a stream whose
// producer is gone each get their answer, and share one read of the text
// and one rollup instead of one each.
func TestStreamCancelsShareOneEnd(t *testing.T) {
	m := newStreamMesh(t)
	nc := testenv.Connect(t, m.URL)
	s, err := worker.NewPublisher(nc, envelope.DefaultNamespace).OpenStream(context.Background(), worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Repeat("a long answer ", 20_000) // up to 280 kB to read for the end
	_, _ = s.WriteString(text)
	waitStored(t, m.NC, s.ID(), 2)
	nc.Close()
	const n = 20
	conns := make([]*wstest.Client, n)
	for i := range conns {
		conns[i] = m.dial(t, "alice")
	}
	before := edge.StreamEndRuns(m.Edge.Edge)
	for i, c := range conns {
		c.Send(t, envelope.TypeStreamCancel, envelope.Meta{CorrelationID: fmt.Sprintf("c%d", i)}, envelope.StreamQuery{Stream: s.ID()})
	}
	for i, c := range conns {
		got := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == fmt.Sprintf("c%d", i) })
		if got.Type != envelope.TypeStreamCancelled {
			t.Fatalf("cancel %d: %s %s", i, got.Type, got.Payload)
		}
	}
	if runs := edge.StreamEndRuns(m.Edge.Edge) - before; runs > 3 {
		t.Fatalf("%d cancels read the stream to end it %d times", n, runs)
	}
	c := conns[0]
	joinStream(t, c, s.ID(), 0)
	r := readStream(t, c, s.ID(), nil)
	// What was stored before the producer's connection closed.
	if r.end.Error == nil || r.end.Error.Code != envelope.CodeCanceled || r.text.Len() == 0 || !strings.HasPrefix(text, r.text.String()) {
		t.Fatalf("end %+v %+v after %d bytes", r.end, r.end.Error, r.text.Len())
	}
}

// TestStreamPlainNATSProducer writes a stream with nothing but NATS
// publishes, following docs/protocol.md.
func TestStreamPlainNATSProducer(t *testing.T) {
	m := newStreamMesh(t)
	ctx := context.Background()
	js, _ := jetstream.New(m.NC)
	sub, err := m.NC.Subscribe("natter.ctl.stream.plain1", func(msg *nats.Msg) { _ = msg.Respond([]byte(`{"ok":true}`)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	pub := func(h nats.Header, body string) uint64 {
		t.Helper()
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: "natter.stream.plain1", Header: h, Data: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	pub(nats.Header{"Natter-Stream": {"open"}, "Natter-Stream-User": {"alice"}, "Nats-Expected-Last-Subject-Sequence": {"0"}}, "")
	c := m.dial(t, "alice")
	joinStream(t, c, "plain1", 0)
	var last uint64
	for i := range 3 {
		last = pub(nats.Header{"Natter-Stream": {"chunk"}, "Nats-Msg-Id": {fmt.Sprintf("plain1.%d", i+1)}}, word(i))
	}
	pub(nats.Header{"Natter-Stream": {"done"}, "Natter-Stream-User": {"alice"}, "Nats-Rollup": {"sub"},
		"Nats-Expected-Last-Subject-Sequence": {fmt.Sprint(last)}}, word(0)+word(1)+word(2))
	r := readStream(t, c, "plain1", nil)
	if r.text.String() != word(0)+word(1)+word(2) || r.end.Status != envelope.StreamDone {
		t.Fatalf("%q %+v", r.text.String(), r.end)
	}
}

// waitStored waits until stream id holds n messages.
func waitStored(t *testing.T, nc *nats.Conn, id string, n uint64) {
	t.Helper()
	js, _ := jetstream.New(nc)
	subj, _ := envelope.DefaultNamespace.Stream(id)
	deadline := time.Now().Add(wait)
	for {
		st, err := js.Stream(context.Background(), envelope.DefaultNamespace.StreamsStream())
		if err == nil {
			info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subj.String()))
			if err == nil && info.State.Subjects[subj.String()] >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: fewer than %d messages stored", id, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStreamOnProtobuf: a natter.protobuf client joins and reads a stream
// like a JSON one.
func TestStreamOnProtobuf(t *testing.T) {
	m, reg := protobufMesh(t)
	s, err := worker.NewPublisher(m.NC, envelope.DefaultNamespace).OpenStream(context.Background(), worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = s.WriteString(word(1))
	_, _ = s.WriteString(word(2))
	_ = s.Close()
	c := dialProtobuf(t, m, "alice", reg)
	if got := joinStream(t, c, s.ID(), 0); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("join: %s %s", got.Type, got.Payload)
	}
	r := readStream(t, c, s.ID(), nil)
	if r.text.String() != word(1)+word(2) || r.end.Status != envelope.StreamDone {
		t.Fatalf("%q %+v", r.text.String(), r.end)
	}
}

// TestStreamHostileRequests: malformed, oversized and repeated stream
// requests get their documented errors and cost only their connection.
func TestStreamHostileRequests(t *testing.T) {
	m := newStreamMesh(t)
	ctx := context.Background()
	c := m.dial(t, "alice")
	for _, p := range []any{
		map[string]any{"stream": "s", "offset": -1},
		map[string]any{"stream": "", "offset": 0},
		map[string]any{"stream": strings.Repeat("x", 129)},
		map[string]any{"stream": "a.b"},
		map[string]any{"stream": 5},
		"not an object",
		map[string]any{"stream": "s", "offset": 1e30},
	} {
		assertRPCError(t, c.Request(t, envelope.TypeStreamJoin, p, wait), envelope.CodeInvalidArgument)
	}
	assertRPCError(t, c.Request(t, envelope.TypeStreamCancel, map[string]any{"stream": "s", "offset": 3}, wait), envelope.CodeInvalidArgument)
	c.Send(t, envelope.TypeStreamJoin, envelope.Meta{}, envelope.StreamQuery{Stream: "s"})
	if got := c.AwaitType(t, envelope.TypeError, wait); !strings.Contains(string(got.Payload), "INVALID_ARGUMENT") {
		t.Fatalf("join without correlationId: %s", got.Payload)
	}
	if got := c.Request(t, envelope.TypeStreamLeave, envelope.StreamQuery{Stream: "never"}, wait); got.Type != envelope.TypeStreamLeft {
		t.Fatalf("leave of a stream not joined: %s %s", got.Type, got.Payload)
	}
	assertRPCError(t, c.Request(t, envelope.TypeStreamCancel, envelope.StreamQuery{Stream: "never"}, wait), envelope.CodeNotFound)
	// At most 16 joined at once.
	var open []*worker.StreamWriter
	for range envelope.MaxStreamJoins + 1 {
		s, err := m.pub.OpenStream(ctx, worker.StreamTo{User: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		open = append(open, s)
	}
	for i, s := range open {
		got := joinStream(t, c, s.ID(), 0)
		if i < envelope.MaxStreamJoins && got.Type != envelope.TypeStreamJoined {
			t.Fatalf("join %d: %s %s", i, got.Type, got.Payload)
		}
		if i == envelope.MaxStreamJoins {
			assertRPCError(t, got, envelope.CodeResourceExhausted)
		}
	}
	// Another connection is unaffected.
	other := m.dial(t, "alice")
	if got := joinStream(t, other, open[0].ID(), 0); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("another connection: %s %s", got.Type, got.Payload)
	}
	if c.Closed() {
		t.Fatal("the hostile connection was closed")
	}
}

// TestStreamNothingAfterLeft: once $stream.left is sent, no frame of that
// stream follows, however fast the producer writes; a join again reads
// from the offset given.
func TestStreamNothingAfterLeft(t *testing.T) {
	m := newStreamMesh(t)
	s, err := m.pub.OpenStream(context.Background(), worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = s.WriteString(word(i))
			time.Sleep(time.Millisecond)
		}
	}()
	c := m.dial(t, "alice")
	for range 20 {
		joinStream(t, c, s.ID(), 0)
		readStream(t, c, s.ID(), func(r *streamRead) bool { return true })
		if got := c.Request(t, envelope.TypeStreamLeave, envelope.StreamQuery{Stream: s.ID()}, wait); got.Type != envelope.TypeStreamLeft {
			t.Fatalf("leave: %s %s", got.Type, got.Payload)
		}
		// Frames queued before the $stream.left were consumed by Request;
		// none may come after it.
		deadline := time.Now().Add(30 * time.Millisecond)
		for time.Now().Before(deadline) {
			b, ok := c.NextRaw(time.Until(deadline))
			if !ok {
				break
			}
			if strings.Contains(string(b), `"$stream.`) {
				t.Fatalf("after $stream.left: %s", b)
			}
		}
	}
}

// TestStreamLiveHoleFilled: live messages the edge lost (a republish
// lost, a live queue full) are read from the stream: the reader gets the
// whole text once, in order. The producer stores chunks only (no copies
// before the store), so only the catch-up can fill the hole.
func TestStreamLiveHoleFilled(t *testing.T) {
	m := newStreamMesh(t)
	js, _ := jetstream.New(m.NC)
	ctx := context.Background()
	subj := "natter.stream.hole"
	pub := func(h nats.Header, body string) {
		t.Helper()
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	pub(nats.Header{"Natter-Stream": {"open"}, "Natter-Stream-User": {"alice"}}, "")
	c := m.dial(t, "alice")
	joinStream(t, c, "hole", 0)
	var want strings.Builder
	for i := range 5 {
		want.WriteString(word(i))
		pub(nats.Header{"Natter-Stream": {"chunk"}}, word(i))
	}
	readStream(t, c, "hole", func(r *streamRead) bool { return r.text.Len() >= want.Len() })
	edge.DropLiveStreamMessages(m.Edge.Edge, 3)
	rest := want.Len()
	for i := 5; i < 40; i++ {
		want.WriteString(word(i))
		pub(nats.Header{"Natter-Stream": {"chunk"}}, word(i))
	}
	// Before the end (whose rollup would bring the whole text anyway).
	r := readStream(t, c, "hole", func(r *streamRead) bool { return r.text.Len() >= want.Len()-rest })
	if got := r.text.String(); got != want.String()[rest:] {
		t.Fatalf("after the hole: %q, want %q", got, want.String()[rest:])
	}
}

// TestStreamJoinSeeksOffset: a join from an offset starts at the chunk
// that holds it when chunks say where they start (Natter-Stream-Offset),
// without reading the text before it. Chunk 0 here is two bytes longer
// than the offsets say: a read from the start would be two bytes off.
func TestStreamJoinSeeksOffset(t *testing.T) {
	m := newStreamMesh(t)
	js, _ := jetstream.New(m.NC)
	subj := "natter.stream.seek"
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: subj, Header: nats.Header{"Natter-Stream": {"open"}, "Natter-Stream-User": {"alice"}}}); err != nil {
		t.Fatal(err)
	}
	chunk := func(i int) string { return fmt.Sprintf("c%04d ", i) }
	for i := range 1000 {
		text := chunk(i)
		if i == 0 {
			text = "XX" + text
		}
		h := nats.Header{"Natter-Stream": {"chunk"}, "Natter-Stream-Offset": {fmt.Sprint(6 * i)}}
		if _, err := js.PublishMsgAsync(&nats.Msg{Subject: subj, Header: h, Data: []byte(text)}); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	for _, at := range []int{1, 400, 999} {
		c := m.dial(t, "alice")
		joinStream(t, c, "seek", int64(6*at+2))
		var want strings.Builder
		for i := at; i < 1000; i++ {
			want.WriteString(chunk(i))
		}
		r := readStream(t, c, "seek", func(r *streamRead) bool { return r.text.Len() >= want.Len()-2 })
		if got := r.text.String(); got != want.String()[2:] {
			t.Fatalf("from the offset of chunk %d + 2: %q..., want %q...", at, got[:min(12, len(got))], want.String()[2:14])
		}
	}
}
