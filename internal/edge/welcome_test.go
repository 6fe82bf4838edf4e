package edge_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/pkg/envelope"
)

// The first frame of every connection is $connected with the connection's
// id (the one natter.out.conn.<id> reaches and workers see in Natter-Conn)
// and its user, even when the client sends at once.
func TestWelcomeFirstFrame(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	for _, user := range []string{"alice", ""} {
		t.Run("user="+user, func(t *testing.T) {
			c := m.dial(t, user)
			c.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: "hb"}, nil)
			first, before := c.Welcome(t, wait)
			if before != 0 || !first.Meta.IsZero() {
				t.Fatalf("$connected after %d frames, meta %+v; want it first, without meta", before, first.Meta)
			}
			var p map[string]string
			if err := json.Unmarshal(first.Payload, &p); err != nil {
				t.Fatalf("payload %s: %v", first.Payload, err)
			}
			id := p["connectionId"]
			if envelope.ValidateConnID(id) != nil || !strings.HasPrefix(id, m.Edge.ID()+".") {
				t.Fatalf("connectionId %q is not a connection id of edge %s", id, m.Edge.ID())
			}
			if u, ok := p["user"]; u != user || ok != (user != "") {
				t.Fatalf("payload %s; want user %q", first.Payload, user)
			}
			if got := c.Next(t, wait); got.Type != envelope.TypeHeartbeatAck {
				t.Fatalf("second frame: %s %s", got.Type, got.Payload)
			}

			// The id is the one services use: the publish reaches this client.
			if err := m.NC.Publish("natter.out.conn."+id, []byte(`{"type":"for.you","payload":{"n":7}}`)); err != nil {
				t.Fatal(err)
			}
			if got := c.Next(t, wait); got.Type != "for.you" || string(got.Payload) != `{"n":7}` {
				t.Fatalf("after a publish to natter.out.conn.%s: %s %s", id, got.Type, got.Payload)
			}
			if h := connID(t, m.NC, c); h != id {
				t.Fatalf("Natter-Conn %q, $connected said %q", h, id)
			}
		})
	}
}
