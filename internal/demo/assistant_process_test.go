package demo_test

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/assistant"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// TestAssistantProcesses checks the assistant where the commands register
// it: in the single binary, and in cmd/worker beside an edge on --nats.
// An answer is asked, named by assistant.current, cancelled by a reader
// (the end CANCELLED); another is being written when the process that
// writes it gets SIGTERM: it exits 0, and the answer ends UNAVAILABLE
// "the assistant stopped" (the assistant's own end at shutdown, not an
// edge's for a producer gone).
func TestAssistantProcesses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// start starts the mesh and returns the edge's WebSocket URL, the
		// process that writes the answers, and what to do after that
		// process exited (the single binary is started again on its data
		// directory: the stream is stored there).
		start func(t *testing.T) (url string, producer *testenv.Process, after func(t *testing.T))
	}{
		{"single binary", func(t *testing.T) (string, *testenv.Process, func(*testing.T)) {
			addr, data := freeAddr(t), t.TempDir()
			args := []string{"--listen", addr, "--nats-listen", "127.0.0.1:0", "--data-dir", data, "--shutdown-spread", "10ms"}
			edge := startEdgeProcess(t, args)
			return "ws://" + addr + "/ws", edge, func(t *testing.T) { startEdgeProcess(t, args) }
		}},
		{"cmd/worker", func(t *testing.T) (string, *testenv.Process, func(*testing.T)) {
			ns := testenv.NATS(t)
			addr := freeAddr(t)
			startEdgeProcess(t, []string{"--nats", ns.ClientURL(), "--insecure-dev-users", "--listen", addr, "--shutdown-spread", "10ms"})
			w := testenv.Start(t, "worker", "--nats", ns.ClientURL())
			w.WaitLog(t, `msg="worker ready"`, 60*time.Second)
			return "ws://" + addr + "/ws", w, func(*testing.T) {}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url, producer, after := tc.start(t)
			alice := dialAssistant(t, url, "alice")

			const q1 = "May I stop you?"
			id := askAssistant(t, alice, q1)
			var cur assistant.Current
			reply(t, alice.Request(t, assistant.TypeCurrent, struct{}{}, wait), assistant.TypeCurrent, &cur)
			if cur.Stream == nil || *cur.Stream != id || cur.Question != q1 {
				t.Fatalf("current %+v, want stream %s", cur, id)
			}
			joinStream(t, alice, id)
			part, _ := readStream(t, alice, id, "", 5)
			alice.Send(t, envelope.TypeStreamCancel, envelope.Meta{CorrelationID: "cancel"}, envelope.StreamQuery{Stream: id})
			rest, end := readStream(t, alice, id, "cancel", 0)
			if end == nil || end.Error == nil || end.Error.Code != envelope.CodeCanceled {
				t.Fatalf("end after the cancel: %+v, want CANCELLED", end)
			}
			if a := assistant.Answer(q1); !strings.HasPrefix(a, part+rest) || len(part+rest) >= len(a) {
				t.Fatalf("cancelled after %d bytes that are not a strict prefix of the %d of the answer", len(part+rest), len(a))
			}

			const q2 = "What happens at SIGTERM?"
			id2 := askAssistant(t, alice, q2)
			joinStream(t, alice, id2)
			readStream(t, alice, id2, "", 5) // being written
			if err := producer.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := producer.Wait(t, 30*time.Second); code != 0 {
				t.Fatalf("exit code %d after SIGTERM:\n%s", code, producer.Log())
			}
			if strings.Contains(producer.Log(), "answer not stored") {
				t.Fatalf("the answer's end was not stored:\n%s", producer.Log())
			}
			after(t)
			bob := dialAssistant(t, url, "bob")
			joinStream(t, bob, id2)
			text, end := readStream(t, bob, id2, "", 0)
			if end == nil || end.Error == nil || end.Error.Code != envelope.CodeUnavailable || end.Error.Message != "the assistant stopped" {
				t.Fatalf("end after SIGTERM: %+v, want UNAVAILABLE \"the assistant stopped\"", end)
			}
			if a := assistant.Answer(q2); !strings.HasPrefix(a, text) || len(text) >= len(a) {
				t.Fatalf("%d bytes after SIGTERM, not a strict prefix of the %d of the answer", len(text), len(a))
			}
		})
	}
}

const wait = 10 * time.Second

// dialAssistant connects as user (dev mode) and joins the assistant room.
func dialAssistant(t *testing.T, url, user string) *wstest.Client {
	t.Helper()
	c := wstest.Dial(t, url+"?user="+user)
	if got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: assistant.Room}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("join %s: %s %s", assistant.Room, got.Type, got.Payload)
	}
	return c
}

// askAssistant asks and returns the answer's stream id, from the reply,
// after the room's announcement of the same (which may come first).
func askAssistant(t *testing.T, c *wstest.Client, question string) string {
	t.Helper()
	cid := "ask " + question
	c.Send(t, assistant.TypeAsk, envelope.Meta{CorrelationID: cid}, map[string]string{"question": question})
	var r struct{ Stream string }
	var ann assistant.Announcement
	for r.Stream == "" || ann.Stream == "" {
		env := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid || e.Type == assistant.TypeAnswer })
		if env.Type == assistant.TypeAnswer {
			if err := json.Unmarshal(env.Payload, &ann); err != nil {
				t.Fatal(err)
			}
			continue
		}
		reply(t, env, assistant.TypeAsk, &r)
	}
	if ann.Stream != r.Stream || ann.Question != question {
		t.Fatalf("announced %+v, replied %s", ann, r.Stream)
	}
	return r.Stream
}

func reply(t *testing.T, env *envelope.Envelope, typ string, into any) {
	t.Helper()
	if env.Type != typ {
		t.Fatalf("got %s %s, want %s", env.Type, env.Payload, typ)
	}
	if err := json.Unmarshal(env.Payload, into); err != nil {
		t.Fatal(err)
	}
}

func joinStream(t *testing.T, c *wstest.Client, id string) {
	t.Helper()
	if got := c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: id}, wait); got.Type != envelope.TypeStreamJoined {
		t.Fatalf("join stream %s: %s %s", id, got.Type, got.Payload)
	}
}

// readStream reads a joined stream's chunks until its end, or (words > 0)
// until it has at least words words, and also awaits the answer to the
// request cid when given; the end is nil when it stopped before.
func readStream(t *testing.T, c *wstest.Client, id, cid string, words int) (string, *envelope.StreamEnd) {
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
		case env.Type == envelope.TypeStreamEnd:
			end = &envelope.StreamEnd{}
			if err := json.Unmarshal(env.Payload, end); err != nil {
				t.Fatal(err)
			}
		default:
			var chunk string
			if err := json.Unmarshal(env.Payload, &chunk); err != nil {
				t.Fatal(err)
			}
			text.WriteString(chunk)
			if words > 0 && len(strings.Fields(text.String())) >= words {
				return text.String(), nil
			}
		}
	}
	return text.String(), end
}
