package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

const wait = 5 * time.Second

// mesh is testenv's mesh: one embedded NATS server, the built-in handlers
// in-process, a plain NATS connection (NC) and one edge in dev mode.
type mesh struct{ *testenv.Mesh }

func newMesh(t *testing.T, cfg edge.Config) *mesh {
	t.Helper()
	cfg.Auth.DevMode = true
	return &mesh{testenv.NewMesh(t, testenv.MeshOptions{Edge: &cfg})}
}

func (m *mesh) dial(t *testing.T, user string) *wstest.Client {
	t.Helper()
	if user == "" {
		return wstest.Dial(t, m.Edge.URL)
	}
	return wstest.Dial(t, m.Edge.URL+"?user="+user)
}

func join(t *testing.T, c *wstest.Client, room string) {
	t.Helper()
	got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
	if got.Type != envelope.TypeJoined || got.Meta.Room != room {
		t.Fatalf("join %s: got %s %s", room, got.Type, got.Payload)
	}
}

func TestEchoRPC(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "alice")
	got := c.Request(t, "echo", map[string]string{"hello": "world"}, wait)
	if got.Type != "echo" || string(got.Payload) != `{"hello":"world"}` {
		t.Fatalf("echo reply: %s %s", got.Type, got.Payload)
	}
}

func TestRPCNoResponderAndTimeout(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "")

	t.Run("no responder", func(t *testing.T) {
		start := time.Now()
		got := c.Request(t, "nobody.listens", nil, wait)
		assertRPCError(t, got, envelope.CodeUnavailable)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("UNAVAILABLE took %s; want it at once", d)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		// A worker that takes the request and never answers.
		w, err := worker.New(m.NC, worker.Config{Queue: "slow"})
		if err != nil {
			t.Fatal(err)
		}
		block := make(chan struct{})
		defer close(block)
		if err := w.Handle("slow.op", func(_ context.Context, _ *worker.Message) error { <-block; return nil }); err != nil {
			t.Fatal(err)
		}
		_ = m.NC.Flush()
		c.Send(t, "slow.op", envelope.Meta{CorrelationID: "t1", TimeoutMs: 200}, nil)
		got := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "t1" })
		assertRPCError(t, got, envelope.CodeDeadlineExceeded)
		if !c.Quiet(300 * time.Millisecond) {
			t.Fatal("a second reply arrived after the timeout")
		}
	})
}

func assertRPCError(t *testing.T, got *envelope.Envelope, code envelope.Code) {
	t.Helper()
	if got.Type != envelope.TypeRPCError {
		t.Fatalf("want RPC_ERROR %s, got %s %s", code, got.Type, got.Payload)
	}
	var p envelope.ErrorPayload
	if err := json.Unmarshal(got.Payload, &p); err != nil || p.Code != code {
		t.Fatalf("want code %s, got %s (%v)", code, got.Payload, err)
	}
}

func TestPlainNATSPublish(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	a1, a2 := m.dial(t, "alice"), m.dial(t, "alice")
	b := m.dial(t, "bob")
	join(t, a1, "general")
	join(t, b, "general")

	pub := func(subj, body string) {
		t.Helper()
		if err := m.NC.Publish(subj, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("room", func(t *testing.T) {
		pub("natter.out.room.general", `{"type":"news","payload":{"n":1}}`)
		for _, c := range []*wstest.Client{a1, b} {
			got := c.AwaitType(t, "news", wait)
			if got.Meta.Room != "general" || string(got.Payload) != `{"n":1}` {
				t.Fatalf("room delivery: %+v %s", got.Meta, got.Payload)
			}
		}
		if !a2.Quiet(200 * time.Millisecond) {
			t.Fatal("a non-member got a room message")
		}
	})
	t.Run("user on two connections", func(t *testing.T) {
		pub("natter.out.user.alice", `{"type":"dm","payload":"hi"}`)
		a1.AwaitType(t, "dm", wait)
		a2.AwaitType(t, "dm", wait)
		if !b.Quiet(200 * time.Millisecond) {
			t.Fatal("bob got alice's message")
		}
	})
	t.Run("one connection", func(t *testing.T) {
		// The connection id is what workers see in the Natter-Conn header.
		sub, err := m.NC.SubscribeSync("natter.in.whoami")
		if err != nil {
			t.Fatal(err)
		}
		_ = m.NC.Flush()
		a2.Send(t, "whoami", envelope.Meta{}, nil)
		msg, err := sub.NextMsg(wait)
		if err != nil {
			t.Fatal(err)
		}
		id := msg.Header.Get(envelope.HeaderConn)
		if msg.Header.Get(envelope.HeaderUser) != "alice" || id == "" {
			t.Fatalf("identity headers: %v", msg.Header)
		}
		pub("natter.out.conn."+id, `{"type":"only-you"}`)
		a2.AwaitType(t, "only-you", wait)
		if !a1.Quiet(200 * time.Millisecond) {
			t.Fatal("the other connection got a per-connection message")
		}
	})
	t.Run("invalid envelope dropped", func(t *testing.T) {
		before := m.Edge.Stats().OutboundDropped
		pub("natter.out.room.general", `{"type":"a.*"}`)
		pub("natter.out.room.general", `not json`)
		testenv.Eventually(t, wait, "drops counted", func() bool { return m.Edge.Stats().OutboundDropped == before+2 })
		if !b.Quiet(100 * time.Millisecond) {
			t.Fatal("an invalid envelope reached a client")
		}
	})
}

func TestChatExcludesSender(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	alice, bob := m.dial(t, "alice"), m.dial(t, "bob")
	join(t, alice, "lobby")
	if got := bob.Request(t, "chat.join", map[string]string{"room": "lobby"}, wait); got.Type != "chat.join" {
		t.Fatalf("chat.join reply: %s %s", got.Type, got.Payload)
	}
	if got := alice.Request(t, "chat.send", map[string]string{"room": "lobby", "text": "hi bob"}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send reply: %s %s", got.Type, got.Payload)
	}
	got := bob.AwaitType(t, "chat.message", wait)
	var msg struct{ Room, Text, User string }
	_ = json.Unmarshal(got.Payload, &msg)
	if msg.Text != "hi bob" || msg.User != "alice" || msg.Room != "lobby" {
		t.Fatalf("chat.message: %s", got.Payload)
	}
	if !alice.Quiet(300 * time.Millisecond) {
		t.Fatal("the sender got its own message")
	}
}

func TestTwoEdgesOneRoom(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.DevMode = true
	e1 := testenv.StartEdge(t, cfg)
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	e2 := testenv.StartEdge(t, cfg)
	c1, c2 := wstest.Dial(t, e1.URL), wstest.Dial(t, e2.URL)
	join(t, c1, "r")
	join(t, c2, "r")
	pub := worker.NewPublisher(testenv.Connect(t, srv.ClientURL()), envelope.DefaultNamespace)
	env, _ := envelope.New("hello", map[string]int{"x": 1})
	if err := pub.ToRoom("r", env); err != nil {
		t.Fatal(err)
	}
	c1.AwaitType(t, "hello", wait)
	c2.AwaitType(t, "hello", wait)
}

func TestSlowReaderClosedFastReadersServed(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.WriteQueueBytes = 256 << 10
	cfg.WebSocket.WriteTimeout = 20 * time.Second
	m := newMesh(t, cfg)
	slow := wstest.DialRaw(t, m.Edge.URL, 64<<10)
	if err := slow.WriteText([]byte(`{"type":"$join","payload":{"room":"firehose"}}`)); err != nil {
		t.Fatal(err)
	}
	fast := []*wstest.Client{m.dial(t, ""), m.dial(t, "")}
	for _, c := range fast {
		join(t, c, "firehose")
	}
	testenv.Eventually(t, wait, "three connections", func() bool { return m.Edge.Stats().Connections == 3 })
	// The slow client's $join is in once its ack went out; it never reads it.
	testenv.Eventually(t, wait, "slow client joined", func() bool { return m.Edge.Stats().FramesOut >= 6 }) // 3 $connected, 3 $joined

	payload := `{"type":"tick","payload":"` + strings.Repeat("x", 4000) + `"}`
	// 12 MB: far more than the slow socket's kernel buffers (4 MB at most
	// here) plus its 256 KiB queue. The publisher waits for the readers that
	// do read after each batch of 20 (80 KB), so they never fall 256 KiB
	// behind however slow the machine is; the slow reader falls behind for good.
	const n, batch = 3000, 20
	for sent := 0; sent < n; sent += batch {
		for range batch {
			if err := m.NC.Publish("natter.out.room.firehose", []byte(payload)); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range fast {
			for range batch {
				if got := c.AwaitType(t, "tick", wait); got == nil {
					t.Fatalf("fast reader %d stalled after %d", i, sent)
				}
			}
		}
	}
	for i, c := range fast {
		if c.Closed() {
			t.Fatalf("fast reader %d was closed", i)
		}
	}
	testenv.Eventually(t, wait, "slow consumer closed", func() bool { return m.Edge.Stats().SlowConsumerCloses == 1 })
	// Reading now lets the stalled write finish; the close frame follows it.
	code, _, err := slow.ReadUntilClose(wait)
	if code != uint16(envelope.CloseSlowConsumer) {
		t.Fatalf("slow reader close code %d (err %v), want %d", code, err, envelope.CloseSlowConsumer)
	}
}

func TestHeartbeatAndSystemTypes(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "")
	if got := c.Request(t, envelope.TypeHeartbeat, nil, wait); got.Type != envelope.TypeHeartbeatAck {
		t.Fatalf("heartbeat: %s", got.Type)
	}
	got := c.Request(t, envelope.TypeLeave, envelope.RoomPayload{Room: "nowhere"}, wait)
	if got.Type != envelope.TypeLeft {
		t.Fatalf("leave: %s", got.Type)
	}
}

func TestControlSubject(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "carol")
	sub, _ := m.NC.SubscribeSync("natter.in.hello")
	_ = m.NC.Flush()
	c.Send(t, "hello", envelope.Meta{}, nil)
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatal(err)
	}
	id := msg.Header.Get(envelope.HeaderConn)
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	ctx := t.Context()
	if err := pub.Join(ctx, id, "vip"); err != nil {
		t.Fatal(err)
	}
	c.AwaitType(t, envelope.TypeJoined, wait)
	env, _ := envelope.New("vip.news", nil)
	_ = pub.ToRoom("vip", env)
	c.AwaitType(t, "vip.news", wait)
	if err := pub.Leave(ctx, id, "vip"); err != nil {
		t.Fatal(err)
	}
	// Not on this edge (the edge answers), on no edge (no responders):
	// NOT_FOUND either way; not a connection id: refused before sending.
	for _, conn := range []string{m.Edge.ID() + ".nosuchconn", "nosuchedge.1"} {
		if err := pub.Join(ctx, conn, "vip"); !errors.Is(err, rpc.ErrNotFound) {
			t.Fatalf("join unknown conn %s: %v", conn, err)
		}
	}
	if err := pub.Join(ctx, "nosuchconn", "vip"); !errors.Is(err, envelope.ErrInvalidID) {
		t.Fatalf("join with a one-token id: %v", err)
	}
	if err := pub.Close(ctx, id, envelope.CloseKicked, "bye"); err != nil {
		t.Fatal(err)
	}
	if code := c.WaitClose(t, wait); code != uint16(envelope.CloseKicked) {
		t.Fatalf("close code %d", code)
	}
}

// A backlog far larger than the socket buffers, queued while the client
// does not read, arrives whole and in order once it reads: the writer pool's
// non-blocking writev takes what fits, and the connection's own writer
// finishes the partly written frame and the rest before handing the
// connection back. Pings sent meanwhile must not land inside a frame.
func TestBacklogPastSocketBuffersArrivesInOrder(t *testing.T) {
	cfg := edge.DefaultConfig()
	cfg.WebSocket.WriteQueueBytes = 64 << 20
	cfg.WebSocket.PingInterval = 50 * time.Millisecond
	cfg.WebSocket.PongTimeout = time.Minute
	m := newMesh(t, cfg)
	c := wstest.DialRaw(t, m.Edge.URL, 16<<10)
	if err := c.WriteText([]byte(`{"type":"$join","payload":{"room":"backlog"}}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "joined", func() bool { return m.Edge.Stats().FramesOut >= 2 }) // $connected, $joined
	const n = 400                                                                               // 400 x ~30 KB = 12 MB, past any loopback socket buffer
	pad := strings.Repeat("y", 30000)
	for i := range n {
		if err := m.NC.Publish("natter.out.room.backlog", []byte(`{"type":"seq","payload":{"i":`+strconv.Itoa(i)+`,"pad":"`+pad+`"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the pool hits a full socket; pings queue up
	_ = c.SetReadDeadline(time.Now().Add(wait))
	next := 0
	for next < n {
		op, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("after %d frames: %v", next, err)
		}
		if op != 0x1 {
			if op != 0x9 {
				t.Fatalf("after %d frames: opcode %#x", next, op)
			}
			continue // a ping, between frames
		}
		env, err := envelope.Decode(p, 1<<20)
		if err != nil {
			t.Fatalf("frame %d: %v", next, err)
		}
		if env.Type == envelope.TypeJoined || env.Type == envelope.TypeConnected {
			continue
		}
		want := `{"i":` + strconv.Itoa(next) + `,"pad":"` + pad + `"}`
		if string(env.Payload) != want {
			t.Fatalf("frame %d: got %.40s...", next, env.Payload)
		}
		next++
	}
}
