package e2e_test

import (
	"encoding/json"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

const wait = 10 * time.Second

// TestChatThroughWorkerProcess runs the built-in handlers in a separate
// cmd/worker process and chats through an edge on the same NATS server.
func TestChatThroughWorkerProcess(t *testing.T) {
	srv := testenv.NATS(t)
	w := testenv.Start(t, "worker", "--nats", srv.ClientURL())
	w.WaitLog(t, `msg="worker ready"`, wait)

	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.DevMode = true
	e := testenv.StartEdge(t, cfg)
	alice := wstest.Dial(t, e.URL+"?user=alice")
	bob := wstest.Dial(t, e.URL+"?user=bob")
	got := chatInLobby(t, alice, bob, "hello from alice")
	var msg struct{ Room, Text, User string }
	if err := json.Unmarshal(got.Payload, &msg); err != nil {
		t.Fatal(err)
	}
	if msg != (struct{ Room, Text, User string }{"lobby", "hello from alice", "alice"}) || got.Meta.Room != "lobby" {
		t.Fatalf("bob got %s (meta %+v)", got.Payload, got.Meta)
	}

	// The worker drains and exits cleanly on SIGTERM.
	if err := w.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.Wait(t, wait); code != 0 {
		t.Fatalf("worker exit code %d", code)
	}
	// With no worker left, a request fails fast instead of hanging.
	if got := alice.Request(t, "echo", "x", wait); got.Type != envelope.TypeRPCError {
		t.Fatalf("echo without a worker: %s %s", got.Type, got.Payload)
	}
}

// TestSingleBinarySIGTERM runs cmd/edge in single-binary mode (embedded
// NATS, built-in handlers), then stops it with SIGTERM: every socket gets
// the reconnect close code and the process exits 0.
func TestSingleBinarySIGTERM(t *testing.T) {
	p := testenv.Start(t, "edge",
		"--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--shutdown-spread", "200ms")
	m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+) nats=(\S+)`, wait)
	url := wstest.WSURL(m[1], m[2])

	clients := make([]*wstest.Client, 5)
	for i := range clients {
		clients[i] = wstest.Dial(t, url+"?user=u"+string(rune('a'+i)))
	}
	// The mesh works: an RPC through the in-process built-in worker, and a
	// plain NATS client on the embedded server reaching a user.
	if got := clients[0].Request(t, "echo", map[string]int{"n": 7}, wait); string(got.Payload) != `{"n":7}` {
		t.Fatalf("echo: %s %s", got.Type, got.Payload)
	}
	nc := testenv.Connect(t, m[3])
	if err := nc.Publish("natter.out.user.ub", []byte(`{"type":"hi"}`)); err != nil {
		t.Fatal(err)
	}
	clients[1].AwaitType(t, "hi", wait)

	// Schema discovery lists the shipped types with their JSON Schema.
	resp, err := http.Get("http://" + m[1] + "/schemas")
	if err != nil {
		t.Fatal(err)
	}
	var listing struct {
		Types []struct {
			Type, Direction string
			Schema          map[string]any
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&listing)
	resp.Body.Close()
	found := false
	for _, ti := range listing.Types {
		found = found || (ti.Type == "chat.send" && ti.Direction == "client" && ti.Schema["type"] == "object")
	}
	if err != nil || !found {
		t.Fatalf("/schemas: %v, %+v", err, listing)
	}
	// The shipped schemas are enforced: an empty chat text is refused.
	got := clients[2].Request(t, "chat.send", map[string]string{"room": "r", "text": ""}, wait)
	if got.Type != envelope.TypeRPCError {
		t.Fatalf("invalid chat.send: %s %s", got.Type, got.Payload)
	}

	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if code := c.WaitClose(t, wait); code != uint16(envelope.CloseShutdown) {
			t.Fatalf("client %d: close code %d, want %d", i, code, envelope.CloseShutdown)
		}
	}
	if code := p.Wait(t, wait); code != 0 {
		t.Fatalf("edge exit code %d\n%s", code, p.Log())
	}
}

// chatInLobby joins alice and bob to lobby through the chat worker
// (chat.join), has alice say text (chat.send), and returns the
// chat.message bob receives.
func chatInLobby(t *testing.T, alice, bob *wstest.Client, text string) *envelope.Envelope {
	t.Helper()
	for _, c := range []*wstest.Client{alice, bob} {
		if got := c.Request(t, "chat.join", map[string]string{"room": "lobby"}, wait); got.Type != "chat.join" {
			t.Fatalf("chat.join: %s %s", got.Type, got.Payload)
		}
	}
	if got := alice.Request(t, "chat.send", map[string]string{"room": "lobby", "text": text}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send: %s %s", got.Type, got.Payload)
	}
	return bob.AwaitType(t, "chat.message", wait)
}
