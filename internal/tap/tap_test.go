package tap_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/tap"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

const wait = 10 * time.Second

func TestSubjects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  tap.Config
		want []string
	}{
		{"everything", tap.Config{}, []string{"natter.ctl.conn.*.*", "natter.durable.live.*", "natter.in.>", "natter.out.>"}},
		{"in only", tap.Config{Direction: "in"}, []string{"natter.in.>"}},
		{"out only", tap.Config{Direction: "out"}, []string{"natter.ctl.conn.*.*", "natter.durable.live.*", "natter.out.>"}},
		{"one room", tap.Config{Rooms: []string{"general"}}, []string{"natter.durable.live.general", "natter.out.room.general"}},
		{"room glob", tap.Config{Rooms: []string{"gen*", "general"}}, []string{"natter.durable.live.*", "natter.out.room.*"}},
		{"type glob in", tap.Config{Types: []string{"chat.*"}, Direction: "in"}, []string{"natter.in.chat.>"}},
		{"type literal and glob", tap.Config{Types: []string{"chat.send", "ch*"}, Direction: "in"}, []string{"natter.in.>"}},
		{"user", tap.Config{Users: []string{"alice"}}, []string{"natter.in.>", "natter.out.user.alice"}},
		{"user typed", tap.Config{Users: []string{"alice"}, Types: []string{"chat.*"}}, []string{"natter.in.chat.>", "natter.out.user.alice"}},
		{"conn out", tap.Config{Conns: []string{"e1.7"}, Direction: "out"}, []string{"natter.ctl.conn.e1.7", "natter.out.conn.e1.7"}},
		{"room and events", tap.Config{Rooms: []string{"r"}, Events: true, Namespace: ns(t, "acme.rt")}, []string{"acme.rt.durable.live.r", "acme.rt.evt.>", "acme.rt.out.room.r"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := tap.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := tp.Subjects(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("subjects %q, want %q", got, tc.want)
			}
		})
	}
}

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]tap.Config{
		"direction": {Direction: "sideways"},
		"room glob": {Rooms: []string{"[a"}},
		"empty":     {Types: []string{""}},
	} {
		if _, err := tap.New(cfg); !errors.Is(err, tap.ErrInvalidConfig) {
			t.Errorf("%s: err %v, want ErrInvalidConfig", name, err)
		}
	}
}

func ns(t *testing.T, prefix string) envelope.Namespace {
	t.Helper()
	n, err := envelope.NewNamespace(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// lines is an io.Writer that keeps what the tap wrote.
type lines struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.b.String(), "\n"), "\n")
}

// grep returns the lines containing s.
func (l *lines) grep(s string) []string {
	var out []string
	for _, line := range l.all() {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// startTap runs a tap with cfg on nc until the test ends, then waits until
// it shows a sentinel envelope of type ready published to subject: its
// subscriptions are in place.
func startTap(t *testing.T, nc, pub *nats.Conn, cfg tap.Config, subject, ready string) *lines {
	t.Helper()
	tp, err := tap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := &lines{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := tp.Run(ctx, nc, out)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	env, _ := envelope.New(ready, nil)
	b, _ := envelope.Encode(env)
	testenv.Eventually(t, wait, "the tap shows "+ready, func() bool {
		_ = pub.Publish(subject, b)
		_ = pub.Flush()
		time.Sleep(20 * time.Millisecond)
		return len(out.grep("type="+ready)) > 0 || len(out.grep(`"type":"`+ready+`"`)) > 0
	})
	return out
}

// TestTapLive runs taps against a mesh with WebSocket clients chatting in
// two rooms.
func TestTapLive(t *testing.T) {
	t.Parallel()
	m := testenv.NewMesh(t, testenv.MeshOptions{})
	alice := wstest.Dial(t, m.Edge.URL+"?user=alice")
	bob := wstest.Dial(t, m.Edge.URL+"?user=bob")
	carol := wstest.Dial(t, m.Edge.URL+"?user=carol")
	dave := wstest.Dial(t, m.Edge.URL+"?user=dave")
	for c, room := range map[*wstest.Client]string{alice: "general", bob: "general", carol: "other", dave: "other"} {
		if got := c.Request(t, "chat.join", map[string]string{"room": room}, wait); got.Type != "chat.join" {
			t.Fatalf("chat.join: %s %s", got.Type, got.Payload)
		}
	}
	// say sends text to room from c and waits for its delivery to to.
	say := func(t *testing.T, c, to *wstest.Client, room, text string) {
		t.Helper()
		if got := c.Request(t, "chat.send", map[string]string{"room": room, "text": text}, wait); got.Type != "chat.sent" {
			t.Fatalf("chat.send: %s %s", got.Type, got.Payload)
		}
		to.Await(t, wait, func(e *envelope.Envelope) bool {
			return e.Type == "chat.message" && strings.Contains(string(e.Payload), text)
		})
	}

	t.Run("room, redacted", func(t *testing.T) {
		out := startTap(t, m.Connect(t), m.NC, tap.Config{Rooms: []string{"general"}}, "natter.out.room.general", "tap.ready1")
		say(t, carol, dave, "other", "elsewhere-1")
		say(t, alice, bob, "general", "secret-1")
		testenv.Eventually(t, wait, "the chat message", func() bool {
			return len(out.grep("out room:general type=chat.message")) > 0
		})
		line := out.grep("type=chat.message")[0]
		if !strings.Contains(line, "payload=<redacted ") || strings.Contains(line, "secret-1") {
			t.Fatalf("payload not redacted: %s", line)
		}
		// The other room's message was published before, by the same
		// worker connection: it would have arrived first.
		if got := out.grep("other"); len(got) > 0 {
			t.Fatalf("another room shown: %q", got)
		}
		if got := out.grep("in "); len(got) > 0 {
			t.Fatalf("inbound shown with a room filter: %q", got)
		}
	})

	t.Run("payloads", func(t *testing.T) {
		out := startTap(t, m.Connect(t), m.NC, tap.Config{Rooms: []string{"gen*"}, Payloads: true, MaxPayload: 40}, "natter.out.room.general", "tap.ready2")
		say(t, alice, bob, "general", "shown-2")
		testenv.Eventually(t, wait, "the chat message", func() bool {
			return len(out.grep("shown-2")) > 0
		})
		if line := out.grep("shown-2")[0]; !strings.Contains(line, "truncated") || !strings.Contains(line, `"text":"shown-2"`) {
			t.Fatalf("payload: %s", line)
		}
		// Undecodable bodies are shown with their size.
		_ = m.NC.Publish("natter.out.room.general", []byte("not json"))
		testenv.Eventually(t, wait, "the undecodable body", func() bool {
			return len(out.grep("size=8 undecodable")) > 0
		})
	})

	t.Run("json, user and type", func(t *testing.T) {
		out := startTap(t, m.Connect(t), m.NC, tap.Config{Users: []string{"alice"}, Types: []string{"chat.*"}, JSON: true, Payloads: true}, "natter.out.user.alice", "chat.ready3")
		say(t, bob, alice, "general", "from-bob-3")
		say(t, alice, bob, "general", "from-alice-3")
		var in *tap.Record
		testenv.Eventually(t, wait, "alice's chat.send", func() bool {
			for _, line := range out.all() {
				var r tap.Record
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("not JSON: %s: %v", line, err)
				}
				if r.User != "alice" {
					t.Fatalf("a record of another user: %s", line)
				}
				if r.Direction == "in" && r.Type == "chat.send" {
					in = &r
				}
			}
			return in != nil
		})
		if !in.Request || in.Conn == "" || in.Edge == "" || in.Subject != "natter.in.chat.send" || !strings.Contains(string(in.Payload), "from-alice-3") {
			t.Fatalf("record %+v", in)
		}
		if got := out.grep("from-bob-3"); len(got) > 0 {
			t.Fatalf("bob's message shown: %q", got)
		}
	})

	t.Run("count", func(t *testing.T) {
		tp, err := tap.New(tap.Config{Rooms: []string{"general"}, Count: 1})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		out := &lines{}
		go func() {
			_, err := tp.Run(t.Context(), m.Connect(t), out)
			done <- err
		}()
		env, _ := envelope.New("tap.count", nil)
		b, _ := envelope.Encode(env)
		for {
			_ = m.NC.Publish("natter.out.room.general", b)
			select {
			case err := <-done:
				if err != nil || len(out.grep("type=tap.count")) != 1 {
					t.Fatalf("Run: %v, output %q", err, out.all())
				}
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
}
