package client_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
)

// ConnID is the id a real edge reaches the client by: known when Dial
// returns, "" while the client is away, and a new one after a reconnect.
func TestConnID(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.devEdge(t))
	st := newStates()
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record})

	id := c.ConnID()
	if id == "" || id != m.connID(t, c) {
		t.Fatalf("ConnID %q after Dial; Natter-Conn %q", id, m.connID(t, c))
	}
	if err := envelope.ValidateConnID(id); err != nil {
		t.Fatalf("ConnID: %v", err)
	}
	direct := collect(c, "direct")
	if err := m.NC.Publish("natter.out.conn."+id, []byte(`{"type":"direct","payload":{"n":1}}`)); err != nil {
		t.Fatal(err)
	}
	if got := direct.next(t); string(got.Payload) != `{"n":1}` {
		t.Fatalf("direct: %s", got.Payload)
	}
	// Callbacks run in frame order: the first $connected's are done.
	told := collect(c, envelope.TypeConnected)

	first.stop()
	st.await(t, client.StateReconnecting)
	if got := c.ConnID(); got != "" {
		t.Fatalf("ConnID %q while reconnecting", got)
	}
	serveEdgeAt(t, addr, m.devEdge(t))
	st.await(t, client.StateOpen)
	again := c.ConnID()
	if again == "" || again == id || again != m.connID(t, c) {
		t.Fatalf("ConnID after the reconnect %q (before %q)", again, id)
	}
	var p struct{ ConnectionID, User string }
	if got := told.next(t); json.Unmarshal(got.Payload, &p) != nil || p.ConnectionID != again || p.User != "alice" {
		t.Fatalf("$connected seen by On: %s", got.Payload)
	}
}

// The client is Open only once the edge's $connected told it its id; an
// edge that never sends one gets the connection after HandshakeTimeout,
// without an id.
func TestConnIDOpensOnWelcome(t *testing.T) {
	t.Parallel()
	t.Run("waits for $connected", func(t *testing.T) {
		opened := make(chan *gws.Conn, 1)
		f := startFakeEdge(t, func(_ int, ws *gws.Conn) { opened <- ws }, nil)
		f.silent.Store(true)
		st := newStates()
		c, err := client.New(f.URL, client.Options{Logger: testenv.Logger(t), Reconnect: fastBackoff, OnState: st.record})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		stateAtProbe := make(chan client.State, 1)
		c.On("probe", func(*envelope.Envelope) { stateAtProbe <- c.State() })
		ws := <-opened
		_ = ws.WriteMessage(gws.OpcodeText, []byte(`{"type":"probe"}`))
		if st := <-stateAtProbe; st != client.StateConnecting {
			t.Fatalf("state %s before $connected; want connecting", st)
		}
		if id := c.ConnID(); id != "" {
			t.Fatalf("ConnID %q before $connected", id)
		}
		_ = ws.WriteMessage(gws.OpcodeText, []byte(`{"type":"$connected","payload":{"connectionId":"w-1"}}`))
		st.await(t, client.StateOpen)
		if id := c.ConnID(); id != "w-1" {
			t.Fatalf("ConnID %q; want w-1", id)
		}
	})
	t.Run("an edge without it", func(t *testing.T) {
		f := startFakeEdge(t, nil, nil)
		f.silent.Store(true)
		start := time.Now()
		c := dial(t, f.URL, client.Options{HandshakeTimeout: 200 * time.Millisecond})
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("open after %s, before HandshakeTimeout", d)
		}
		if id := c.ConnID(); id != "" {
			t.Fatalf("ConnID %q", id)
		}
	})
}
