package assistant_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/natter/natter/internal/assistant"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

const wait = 10 * time.Second

// mesh is an embedded NATS server, an edge in dev mode (response streams
// on by default) and a worker running the assistant only.
type mesh struct {
	*testenv.Mesh
	asst *assistant.Assistant
}

func newMesh(t *testing.T, cfg assistant.Config) *mesh {
	t.Helper()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoWorker: true})
	w, err := worker.New(m.Connect(t), worker.Config{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	a, err := assistant.Register(w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Drain(ctx); err != nil {
			t.Errorf("worker drain: %v", err)
		}
		if err := a.Close(ctx); err != nil {
			t.Errorf("assistant close: %v", err)
		}
	})
	return &mesh{Mesh: m, asst: a}
}

// dial connects as user; in is true when it joins the assistant room.
func (m *mesh) dial(t *testing.T, user string, in bool) *wstest.Client {
	t.Helper()
	c := wstest.Dial(t, m.Edge.URL+"?user="+user)
	if in {
		got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: assistant.Room}, wait)
		if got.Type != envelope.TypeJoined {
			t.Fatalf("join %s: %s %s", assistant.Room, got.Type, got.Payload)
		}
	}
	return c
}

// ask sends assistant.ask and returns the stream id of the reply, after
// checking the room's announcement, which the asker gets too (before or
// after the reply).
func ask(t *testing.T, c *wstest.Client, question string) string {
	t.Helper()
	c.Send(t, assistant.TypeAsk, envelope.Meta{CorrelationID: "ask-" + question[:min(len(question), 8)]}, map[string]string{"question": question})
	var reply, ann *envelope.Envelope
	for reply == nil || ann == nil {
		env := c.Await(t, wait, func(e *envelope.Envelope) bool {
			return e.Meta.CorrelationID != "" || e.Type == assistant.TypeAnswer
		})
		if env.Meta.CorrelationID != "" {
			if env.Type != assistant.TypeAsk {
				t.Fatalf("ask: %s %s", env.Type, env.Payload)
			}
			reply = env
		} else {
			ann = env
		}
	}
	var r struct{ Stream string }
	if err := json.Unmarshal(reply.Payload, &r); err != nil || r.Stream == "" {
		t.Fatalf("ask reply %s: %v", reply.Payload, err)
	}
	checkAnnouncement(t, ann, r.Stream, question)
	return r.Stream
}

func checkAnnouncement(t *testing.T, env *envelope.Envelope, stream, question string) {
	t.Helper()
	var a assistant.Announcement
	if err := json.Unmarshal(env.Payload, &a); err != nil {
		t.Fatal(err)
	}
	if want := (assistant.Announcement{Stream: stream, Question: question, User: "alice"}); a != want {
		t.Fatalf("announcement %+v, want %+v", a, want)
	}
}

// read joins stream id from offset 0 and reads it to its end, or until
// stop says so after a chunk; it returns the text and the end (nil when
// stopped).
func read(t *testing.T, c *wstest.Client, id string, stop func(text string) bool) (string, *envelope.StreamEnd) {
	t.Helper()
	if got := c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: id}, wait); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("join stream: %s %s", got.Type, got.Payload)
	}
	var text strings.Builder
	for {
		env := c.Await(t, wait, func(e *envelope.Envelope) bool {
			return (e.Type == envelope.TypeStreamChunk || e.Type == envelope.TypeStreamEnd) && string(e.Meta.Extra["stream"]) == `"`+id+`"`
		})
		if env.Type == envelope.TypeStreamEnd {
			var end envelope.StreamEnd
			if err := json.Unmarshal(env.Payload, &end); err != nil {
				t.Fatal(err)
			}
			return text.String(), &end
		}
		var chunk string
		if err := json.Unmarshal(env.Payload, &chunk); err != nil {
			t.Fatal(err)
		}
		text.WriteString(chunk)
		if stop != nil && stop(text.String()) {
			return text.String(), nil
		}
	}
}

func current(t *testing.T, c *wstest.Client) assistant.Current {
	t.Helper()
	got := c.Request(t, assistant.TypeCurrent, struct{}{}, wait)
	if got.Type != assistant.TypeCurrent {
		t.Fatalf("current: %s %s", got.Type, got.Payload)
	}
	var cur assistant.Current
	if err := json.Unmarshal(got.Payload, &cur); err != nil {
		t.Fatal(err)
	}
	return cur
}

func rpcError(t *testing.T, env *envelope.Envelope) envelope.Code {
	t.Helper()
	if env.Type != envelope.TypeRPCError {
		t.Fatalf("got %s %s, want RPC_ERROR", env.Type, env.Payload)
	}
	var p envelope.ErrorPayload
	if err := json.Unmarshal(env.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p.Code
}

// TestAskStreamsAnswer: a question's answer reaches, whole and once, the
// asker, the asker's other tab and another member, each told by the
// room's announcement; assistant.current names it, before and after its
// end.
func TestAskStreamsAnswer(t *testing.T) {
	t.Parallel()
	m := newMesh(t, assistant.Config{WordDelay: time.Millisecond})
	alice := m.dial(t, "alice", true)
	other := m.dial(t, "alice", true)
	bob := m.dial(t, "bob", true)
	if cur := current(t, bob); cur.Stream != nil {
		t.Fatalf("current before any question: %+v", cur)
	}
	const q = "Why do streams survive a reload?"
	id := ask(t, alice, q)
	for _, c := range []*wstest.Client{other, bob} {
		checkAnnouncement(t, c.AwaitType(t, assistant.TypeAnswer, wait), id, q)
	}
	cur := current(t, bob)
	if cur.Stream == nil || *cur.Stream != id || cur.Question != q || cur.User != "alice" {
		t.Fatalf("current %+v, want stream %s", cur, id)
	}
	want := assistant.Answer(q)
	for name, c := range map[string]*wstest.Client{"asker": alice, "asker's other tab": other, "bob": bob} {
		text, end := read(t, c, id, nil)
		if end.Status != "done" {
			t.Errorf("%s: end %+v, want done", name, end)
		}
		if text != want {
			t.Errorf("%s: read %d bytes, want the %d of Answer", name, len(text), len(want))
		}
	}
	if cur := current(t, alice); cur.Stream == nil || *cur.Stream != id {
		t.Fatalf("current after the end: %+v, want stream %s", cur, id)
	}
}

// TestRefusals: only members ask and look, and questions are bounded.
func TestRefusals(t *testing.T) {
	t.Parallel()
	m := newMesh(t, assistant.Config{WordDelay: time.Millisecond})
	member := m.dial(t, "alice", true)
	outsider := m.dial(t, "mallory", false)
	for _, tc := range []struct {
		name    string
		c       *wstest.Client
		typ     string
		payload any
		want    envelope.Code
	}{
		{"ask outside the room", outsider, assistant.TypeAsk, map[string]string{"question": "hi"}, envelope.CodePermissionDenied},
		{"current outside the room", outsider, assistant.TypeCurrent, struct{}{}, envelope.CodePermissionDenied},
		{"empty question", member, assistant.TypeAsk, map[string]string{"question": ""}, envelope.CodeInvalidArgument},
		{"only spaces", member, assistant.TypeAsk, map[string]string{"question": " \n\t"}, envelope.CodeInvalidArgument},
		{"too long", member, assistant.TypeAsk, map[string]string{"question": strings.Repeat("é", assistant.MaxQuestionLen/2+1)}, envelope.CodeInvalidArgument},
		{"no payload", member, assistant.TypeAsk, nil, envelope.CodeInvalidArgument},
		{"question not a string", member, assistant.TypeAsk, map[string]int{"question": 1}, envelope.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rpcError(t, tc.c.Request(t, tc.typ, tc.payload, wait)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	// The longest question is fine.
	ask(t, member, strings.Repeat("é", assistant.MaxQuestionLen/2))
}

// TestCancel: a reader's $stream.cancel stops the answer: every reader
// gets what was written and the end CANCELLED, and the writer is gone
// (the one answer MaxAnswers allows can be asked again).
func TestCancel(t *testing.T) {
	t.Parallel()
	m := newMesh(t, assistant.Config{WordDelay: 20 * time.Millisecond, MaxAnswers: 1})
	alice := m.dial(t, "alice", true)
	bob := m.dial(t, "bob", true)
	const q = "Can I stop you?"
	id := ask(t, alice, q)
	bob.AwaitType(t, assistant.TypeAnswer, wait)
	if got := rpcError(t, alice.Request(t, assistant.TypeAsk, map[string]string{"question": "and another?"}, wait)); got != envelope.CodeResourceExhausted {
		t.Fatalf("a second answer beyond MaxAnswers: %s, want RESOURCE_EXHAUSTED", got)
	}
	if got := bob.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: id}, wait); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("bob joins: %s %s", got.Type, got.Payload)
	}
	part, _ := read(t, alice, id, func(text string) bool { return len(strings.Fields(text)) >= 10 })
	// Not Request: it would drop the chunks that come before the answer.
	alice.Send(t, envelope.TypeStreamCancel, envelope.Meta{CorrelationID: "cancel"}, envelope.StreamQuery{Stream: id})
	rest, end := readRest(t, alice, id, "cancel")
	all, bobEnd := readRest(t, bob, id, "")
	want := assistant.Answer(q)
	for name, e := range map[string]*envelope.StreamEnd{"alice": end, "bob": bobEnd} {
		if e.Status != "error" || e.Error == nil || e.Error.Code != envelope.CodeCanceled {
			t.Errorf("%s: end %+v, want CANCELLED", name, e)
		}
	}
	if part+rest != all || !strings.HasPrefix(want, all) || len(all) >= len(want) {
		t.Fatalf("alice read %d+%d bytes, bob %d: want the same, a strict prefix of the %d of the answer", len(part), len(rest), len(all), len(want))
	}
	// The writer has released its slot.
	testenv.Eventually(t, wait, "the cancelled answer's slot", func() bool {
		return alice.Request(t, assistant.TypeAsk, map[string]string{"question": "again?"}, wait).Type == assistant.TypeAsk
	})
}

// readRest reads the rest of a stream already joined, to its end, and
// the answer to the request cid when there is one ($stream.cancelled).
func readRest(t *testing.T, c *wstest.Client, id, cid string) (string, *envelope.StreamEnd) {
	t.Helper()
	var text strings.Builder
	var end *envelope.StreamEnd
	for end == nil || cid != "" {
		env := c.Await(t, wait, func(e *envelope.Envelope) bool {
			return (e.Type == envelope.TypeStreamChunk || e.Type == envelope.TypeStreamEnd) && string(e.Meta.Extra["stream"]) == `"`+id+`"` ||
				cid != "" && e.Meta.CorrelationID == cid
		})
		switch {
		case env.Meta.CorrelationID != "":
			if env.Type != envelope.TypeStreamCancelled {
				t.Fatalf("cancel: %s %s", env.Type, env.Payload)
			}
			cid = ""
			continue
		case env.Type == envelope.TypeStreamEnd:
			end = &envelope.StreamEnd{}
			if err := json.Unmarshal(env.Payload, end); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var chunk string
		if err := json.Unmarshal(env.Payload, &chunk); err != nil {
			t.Fatal(err)
		}
		text.WriteString(chunk)
	}
	return text.String(), end
}

// TestClose: closing the assistant ends the answers being written with
// UNAVAILABLE, waits for their writers, and refuses later questions.
func TestClose(t *testing.T) {
	t.Parallel()
	m := newMesh(t, assistant.Config{WordDelay: 50 * time.Millisecond})
	alice := m.dial(t, "alice", true)
	base := runtime.NumGoroutine()
	id := ask(t, alice, "Will you stop?")
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := m.asst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	text, end := read(t, alice, id, nil)
	if end.Status != "error" || end.Error == nil || end.Error.Code != envelope.CodeUnavailable {
		t.Fatalf("end %+v after %d bytes, want UNAVAILABLE", end, len(text))
	}
	if got := rpcError(t, alice.Request(t, assistant.TypeAsk, map[string]string{"question": "still there?"}, wait)); got != envelope.CodeUnavailable {
		t.Fatalf("ask after Close: %s, want UNAVAILABLE", got)
	}
	testenv.GoroutinesSettle(t, base, 2, wait)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  assistant.Config
	}{
		{"negative delay", assistant.Config{WordDelay: -time.Millisecond}},
		{"delay too long", assistant.Config{WordDelay: time.Minute}},
		{"negative MaxAnswers", assistant.Config{MaxAnswers: -1}},
		{"too many answers", assistant.Config{MaxAnswers: 1025}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := worker.New(testenv.Connect(t, testenv.NATS(t).ClientURL()), worker.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := assistant.Register(w, tc.cfg); !errors.Is(err, assistant.ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestAnswer(t *testing.T) {
	t.Parallel()
	for _, q := range []string{"hi", "What is a response stream?", "naïve “quotes”\nand lines", strings.Repeat("x ", 250)} {
		a := assistant.Answer(q)
		if a != assistant.Answer(q) {
			t.Fatalf("%q: two different answers", q)
		}
		if a != strings.Join(assistant.Words(q), "") {
			t.Fatalf("%q: Answer is not Words joined", q)
		}
		if n := len(strings.Fields(a)); n < 240 || n > 600 {
			t.Errorf("%q: %d words, want a few hundred", q, n)
		}
		if !utf8.ValidString(a) || !strings.HasSuffix(a, "the end.") {
			t.Errorf("%q: answer ends %q", q, a[max(0, len(a)-20):])
		}
	}
	if assistant.Answer("one") == assistant.Answer("two") {
		t.Error("two questions, one answer")
	}
}

func FuzzWords(f *testing.F) {
	f.Add("hi")
	f.Add("naïve\n“x”")
	f.Fuzz(func(t *testing.T, q string) {
		words := assistant.Words(q)
		for i, w := range words {
			if w == "" || strings.TrimSpace(w) == "" {
				t.Fatalf("piece %d is %q", i, w)
			}
		}
		if utf8.ValidString(q) && !utf8.ValidString(strings.Join(words, "")) {
			t.Fatal("invalid UTF-8 from a valid question")
		}
	})
}
