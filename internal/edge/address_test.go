package edge_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
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

// Messages to one connection reach its edge through the edge's two
// wildcards (natter.out.conn.<edge>.*, natter.ctl.conn.<edge>.*): a
// connection costs no NATS subscription, on the edge or on the server.
// The counts with 1 and with 200 connections are the same, and stay so
// after they close.
func TestConnectionCostsNoSubscription(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = nc
	cfg.Auth.DevMode = true
	cfg.Limits.HandshakeRate = 0 // loosens production: one client IP opens 200 connections at once
	// Presence off: its JetStream publishers subscribe to their replies
	// lazily, on the first write, which would blur the counts.
	cfg.Presence = nil
	e := testenv.StartEdge(t, cfg)
	svc := testenv.Connect(t, srv.ClientURL())
	counts := func() (edgeSubs int, serverSubs uint32) {
		t.Helper()
		if err := nc.Flush(); err != nil { // the server has every SUB and UNSUB sent so far
			t.Fatal(err)
		}
		return nc.NumSubscriptions(), srv.NATS().NumSubscriptions()
	}

	first := wstest.Dial(t, e.URL)
	firstID := first.ConnID(t)
	edge1, server1 := counts()

	const n = 200
	clients := make([]*wstest.Client, n-1)
	ids := make(map[string]bool, n)
	ids[firstID] = true
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i] = wstest.Dial(t, e.URL) })
	}
	wg.Wait()
	for _, c := range clients {
		ids[c.ConnID(t)] = true
	}
	if len(ids) != n {
		t.Fatalf("%d distinct ids for %d connections", len(ids), n)
	}
	if edgeN, serverN := counts(); edgeN != edge1 || serverN != server1 {
		t.Fatalf("subscriptions with 1 connection: edge %d, server %d; with %d: edge %d, server %d", edge1, server1, n, edgeN, serverN)
	}
	// Every one of them is reachable, the first and the last.
	for _, c := range []*wstest.Client{first, clients[len(clients)-1]} {
		id := c.ConnID(t)
		if err := svc.Publish("natter.out.conn."+id, []byte(`{"type":"hello.you","payload":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
		if got := c.AwaitType(t, "hello.you", wait); string(got.Payload) != `"`+id+`"` {
			t.Fatalf("%s got %s", id, got.Payload)
		}
	}
	for _, c := range clients {
		c.Close()
	}
	testenv.Eventually(t, wait, "199 connections gone", func() bool { return e.Stats().Connections == 1 })
	if edgeN, serverN := counts(); edgeN != edge1 || serverN != server1 {
		t.Fatalf("subscriptions after the close: edge %d, server %d; want %d, %d", edgeN, serverN, edge1, server1)
	}
}

// A connection id is <edge>.<n>: its first token is the edge's id, and
// the whole of it is what $connected, the Natter-Conn header and presence
// carry.
func TestConnectionIDCarriesItsEdge(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Presence.TTL = 2 * time.Second
	m := newMesh(t, cfg)
	c := m.dial(t, "alice")
	id := c.ConnID(t)
	if err := envelope.ValidateConnID(id); err != nil {
		t.Fatal(err)
	}
	if edgeID, _, _ := strings.Cut(id, "."); edgeID != m.Edge.ID() {
		t.Fatalf("connection id %q on edge %q", id, m.Edge.ID())
	}
	if h := connID(t, m.NC, c); h != id {
		t.Fatalf("Natter-Conn %q, $connected %q", h, id)
	}
	testenv.Eventually(t, wait, "the presence entry", func() bool {
		msg, err := m.NC.Request("natter.presence.query", []byte(`{"conn":"`+id+`"}`), wait)
		if err != nil {
			return false
		}
		var r struct{ Conn *struct{ Conn, User string } }
		return json.Unmarshal(msg.Data, &r) == nil && r.Conn != nil && r.Conn.Conn == id && r.Conn.User == "alice"
	})
}

// What is addressed to a connection that is not, or no longer, on the
// edge whose id it carries is dropped; a request for it is answered at
// once, as NATS's "no responders" did when every connection had its own
// subscription: UNAVAILABLE for a question to the client (rpc.Ask),
// NOT_FOUND for a control request. A connection id of an edge that does
// not exist still gets no responders.
func TestAddressedToAbsentConnection(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c := m.dial(t, "")
	id := c.ConnID(t)
	gone := m.dial(t, "")
	goneID := gone.ConnID(t)
	gone.Close()
	testenv.Eventually(t, wait, "the closed connection gone", func() bool { return m.Edge.Stats().Connections == 1 })
	absent := []string{m.Edge.ID() + ".nosuch", goneID}

	for _, conn := range absent {
		start := time.Now()
		msg, err := m.NC.Request("natter.out.conn."+conn, []byte(`{"type":"are.you.there"}`), wait)
		if err != nil {
			t.Fatalf("request to %s: %v", conn, err)
		}
		if err := rpc.DecodeReply(msg.Data, nil); !errors.Is(err, rpc.ErrUnavailable) {
			t.Fatalf("request to %s: %v (%s)", conn, err, msg.Data)
		}
		msg, err = m.NC.Request("natter.ctl.conn."+conn, []byte(`{"op":"close"}`), wait)
		if err != nil {
			t.Fatalf("control request to %s: %v", conn, err)
		}
		var rep envelope.ControlReply
		if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.OK || rep.Error == nil || rep.Error.Code != envelope.CodeNotFound {
			t.Fatalf("control request to %s: %s", conn, msg.Data)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("answers for %s took %s", conn, d)
		}
	}
	for _, subj := range []string{"natter.out.conn.nosuchedge.1", "natter.ctl.conn.nosuchedge.1"} {
		if _, err := m.NC.Request(subj, []byte(`{"op":"close"}`), wait); !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("request to %s: %v", subj, err)
		}
	}

	// Publishes to them reach nobody: the sentinel sent to the live
	// connection after them is the next thing it gets.
	for _, conn := range absent {
		_ = m.NC.Publish("natter.out.conn."+conn, []byte(`{"type":"lost"}`))
		_ = m.NC.Publish("natter.ctl.conn."+conn, []byte(`{"op":"close"}`))
	}
	_ = m.NC.Publish("natter.out.conn."+id, []byte(`{"type":"sentinel"}`))
	if got := c.Next(t, wait); got.Type != "sentinel" {
		t.Fatalf("got %s %s before the sentinel", got.Type, got.Payload)
	}
}

// What a service sends one connection, on natter.out.conn and
// natter.ctl.conn, acts in the order it was sent, with other connections'
// messages interleaved: every message before a close arrives before it.
func TestPerConnectionOrder(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	a, b := m.dial(t, ""), m.dial(t, "")
	aID, bID := a.ConnID(t), b.ConnID(t)
	const n = 300
	for i := range n {
		for _, id := range []string{aID, bID} {
			if err := m.NC.Publish("natter.out.conn."+id, []byte(`{"type":"seq","payload":`+strconv.Itoa(i)+`}`)); err != nil {
				t.Fatal(err)
			}
		}
		if i == n/2 {
			_ = m.NC.Publish("natter.ctl.conn."+aID, []byte(`{"op":"join","room":"mid"}`))
		}
	}
	_ = m.NC.Publish("natter.ctl.conn."+aID, []byte(`{"op":"close","code":4003}`))
	joined := false
	for i := 0; i < n; {
		got := a.Next(t, wait)
		if got.Type == envelope.TypeJoined && !joined && i > n/2 {
			joined = true // the join acts after the message before it
			continue
		}
		if got.Type != "seq" || string(got.Payload) != strconv.Itoa(i) {
			t.Fatalf("a: message %d is %s %s", i, got.Type, got.Payload)
		}
		i++
	}
	if !joined {
		if got := a.Next(t, wait); got.Type != envelope.TypeJoined {
			t.Fatalf("a: %s %s; want the $joined of the server-side join", got.Type, got.Payload)
		}
	}
	if code := a.WaitClose(t, wait); code != 4003 {
		t.Fatalf("a closed with %d", code)
	}
	for i := range n {
		if got := b.Next(t, wait); got.Type != "seq" || string(got.Payload) != strconv.Itoa(i) {
			t.Fatalf("b: message %d is %s %s", i, got.Type, got.Payload)
		}
	}
}

// Natter-Exclude names connections by their whole ids; the excluded member
// of a room does not get the message, the others do. Entries that are not
// connection ids exclude nobody.
func TestExcludeConnections(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	a, b := m.dial(t, ""), m.dial(t, "")
	join(t, a, "ex")
	join(t, b, "ex")
	aID, bID := a.ConnID(t), b.ConnID(t)
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	env, _ := envelope.New("news", nil)
	if err := pub.ToRoom("ex", env, aID); err != nil {
		t.Fatal(err)
	}
	if got := b.Next(t, wait); got.Type != "news" {
		t.Fatalf("b got %s", got.Type)
	}
	msg := nats.NewMsg("natter.out.room.ex")
	msg.Data = []byte(`{"type":"raw"}`)
	msg.Header.Set(envelope.HeaderExclude, "garbage,"+bID+",*,"+m.Edge.ID())
	if err := m.NC.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	if got := a.Next(t, wait); got.Type != "raw" {
		t.Fatalf("a got %s first; want raw (news excluded it)", got.Type)
	}
	sentinel, _ := envelope.New("sentinel", nil)
	for _, id := range []string{aID, bID} {
		if err := pub.ToConn(id, sentinel); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]*wstest.Client{"a": a, "b": b} {
		if got := c.Next(t, wait); got.Type != "sentinel" {
			t.Fatalf("%s got %s before the sentinel", name, got.Type)
		}
	}
	// The publisher refuses an id that is not a connection id.
	if err := pub.ToRoom("ex", env, strings.ReplaceAll(aID, ".", "")); !errors.Is(err, envelope.ErrInvalidID) {
		t.Fatalf("exclude of a one-token id: %v", err)
	}
}
