package e2e_test

import (
	"encoding/json"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// startEdge runs a cmd/edge process against url with dev users and the
// given presence TTL, and returns it with its WebSocket URL.
func startEdge(t *testing.T, url, ttl string) (*testenv.Process, string) {
	t.Helper()
	p := testenv.Start(t, "edge", "--nats", url, "--listen", "127.0.0.1:0",
		"--insecure-dev-users", "--presence-ttl", ttl, "--shutdown-spread", "10ms")
	m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	return p, wstest.WSURL(m[1], m[2])
}

type eventLog struct {
	mu  sync.Mutex
	all []presence.Event
}

func watchEvents(t *testing.T, nc *nats.Conn) *eventLog {
	t.Helper()
	l := &eventLog{}
	if _, err := nc.Subscribe("natter.evt.*", func(m *nats.Msg) {
		var e presence.Event
		if json.Unmarshal(m.Data, &e) == nil {
			l.mu.Lock()
			l.all = append(l.all, e)
			l.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *eventLog) count(name, user string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.all {
		if e.Event == name && (user == "" || e.User == user) {
			n++
		}
	}
	return n
}

// isOnline asks like a service in any language would: a plain NATS request
// with a JSON body on the documented subject, and a JSON reply.
func isOnline(t *testing.T, nc *nats.Conn, user string) bool {
	t.Helper()
	msg, err := nc.Request("natter.presence.query", []byte(`{"user":"`+user+`"}`), wait)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct {
		User struct {
			Online      bool              `json:"online"`
			Connections []json.RawMessage `json:"connections"`
		} `json:"user"`
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		t.Fatalf("reply %s: %v", msg.Data, err)
	}
	return reply.User.Online
}

func TestPresenceAcrossEdgeProcesses(t *testing.T) {
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	events := watchEvents(t, nc)
	_, url1 := startEdge(t, srv.ClientURL(), "2s")
	_, url2 := startEdge(t, srv.ClientURL(), "2s")

	// One user, one connection on each edge, both in room "r".
	a1 := wstest.Dial(t, url1+"?user=alice")
	a2 := wstest.Dial(t, url2+"?user=alice")
	b := wstest.Dial(t, url2+"?user=bob")
	for _, c := range []*wstest.Client{a1, a2} {
		if got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "r"}, wait); got.Type != envelope.TypeJoined {
			t.Fatalf("join: %s", got.Type)
		}
	}
	testenv.Eventually(t, wait, "three connects", func() bool { return events.count("connect", "") == 3 })
	testenv.Eventually(t, wait, "room listing", func() bool {
		page, err := presence.Room(t.Context(), nc, envelope.DefaultNamespace, "r", "", 10)
		return err == nil && page.Count == 2 && len(page.Members) == 2 &&
			page.Members[0].User == "alice" && page.Members[1].User == "alice"
	})
	if !isOnline(t, nc, "alice") || isOnline(t, nc, "carol") {
		t.Fatal("plain NATS query: alice should be online, carol not")
	}

	// A client may list only rooms it is in.
	got := b.Request(t, envelope.TypePresence, map[string]string{"room": "r"}, wait)
	if got.Type != envelope.TypeRPCError {
		t.Fatalf("bob listed a room he is not in: %s %s", got.Type, got.Payload)
	}
	var ep envelope.ErrorPayload
	_ = json.Unmarshal(got.Payload, &ep)
	if ep.Code != envelope.CodePermissionDenied {
		t.Fatalf("code %s", ep.Code)
	}
	got = a1.Request(t, envelope.TypePresence, map[string]string{"room": "r"}, wait)
	var page presence.RoomPage
	if err := json.Unmarshal(got.Payload, &page); err != nil || got.Type != envelope.TypePresence || page.Count != 2 {
		t.Fatalf("member's $presence: %s %s", got.Type, got.Payload)
	}

	// Closing one tab: alice stays online.
	a1.Close()
	testenv.Eventually(t, wait, "a1 disconnect", func() bool { return events.count("disconnect", "alice") == 1 })
	// A window for a wrong offline from either edge process: no sentinel
	// orders the event publishes of two processes.
	time.Sleep(300 * time.Millisecond)
	if n := events.count("offline", "alice"); n != 0 {
		t.Fatalf("offline while a tab is open: %d", n)
	}
	if !isOnline(t, nc, "alice") {
		t.Fatal("alice offline with a tab open")
	}
	a2.Close()
	testenv.Eventually(t, wait, "alice offline", func() bool { return events.count("offline", "alice") == 1 })
	time.Sleep(500 * time.Millisecond) // time for a duplicate from the other edge
	if on, off := events.count("online", "alice"), events.count("offline", "alice"); on != 1 || off != 1 {
		t.Fatalf("alice online %d, offline %d; want exactly 1 and 1", on, off)
	}
	if j, l := events.count("join", "alice"), events.count("leave", "alice"); j != 2 || l != 2 {
		t.Fatalf("joins %d leaves %d", j, l)
	}
}

func TestPresenceAfterSIGKILL(t *testing.T) {
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	events := watchEvents(t, nc)
	const ttl = 3 * time.Second
	doomed, url1 := startEdge(t, srv.ClientURL(), "3s")
	_, url2 := startEdge(t, srv.ClientURL(), "3s")

	dave := wstest.Dial(t, url1+"?user=dave")
	watcher := wstest.Dial(t, url2+"?user=erin")
	if got := dave.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "ops"}, wait); got.Type != envelope.TypeJoined {
		t.Fatal(got.Type)
	}
	if got := watcher.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "ops", Presence: true}, wait); got.Type != envelope.TypeJoined {
		t.Fatal(got.Type)
	}
	testenv.Eventually(t, wait, "dave online", func() bool { return events.count("online", "dave") == 1 })

	if err := doomed.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testenv.Eventually(t, ttl+5*time.Second, "dave offline by expiry", func() bool { return events.count("offline", "dave") == 1 })
	took := time.Since(killed)
	t.Logf("offline %s after SIGKILL (TTL %s)", took, ttl)
	if took > ttl+2*time.Second {
		t.Fatalf("offline took %s; TTL is %s", took, ttl)
	}
	if isOnline(t, nc, "dave") {
		t.Fatal("dave still online")
	}
	page, err := presence.Room(t.Context(), nc, envelope.DefaultNamespace, "ops", "", 10)
	if err != nil || page.Count != 1 || page.Members[0].User != "erin" {
		t.Fatalf("room after the crash: %+v %v", page, err)
	}
	// The member who opted in saw dave leave.
	diff := watcher.Await(t, wait, func(e *envelope.Envelope) bool {
		return e.Type == envelope.TypePresenceDiff && json.Valid(e.Payload) && containsLeave(e.Payload, "dave")
	})
	if diff.Meta.Room != "ops" {
		t.Fatalf("diff room %q", diff.Meta.Room)
	}
	time.Sleep(500 * time.Millisecond) // a window for a duplicate from the surviving edge process (see above)
	if n := events.count("offline", "dave"); n != 1 {
		t.Fatalf("offline %d times", n)
	}
}

func containsLeave(payload []byte, user string) bool {
	var d struct {
		Leaves []presence.Member `json:"leaves"`
	}
	_ = json.Unmarshal(payload, &d)
	for _, m := range d.Leaves {
		if m.User == user {
			return true
		}
	}
	return false
}
