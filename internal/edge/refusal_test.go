package edge_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// A $join refusal says what would allow the join: with no join authorizer
// the ways to grant the room, with one that is not running that it is not.
// Neither is about authentication: the connection is authenticated.
func TestJoinRefusalMessage(t *testing.T) {
	t.Parallel()
	refusal := func(t *testing.T, c *wstest.Client, room string) envelope.ErrorPayload {
		t.Helper()
		got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
		var p envelope.ErrorPayload
		if got.Type != envelope.TypeRPCError || json.Unmarshal(got.Payload, &p) != nil {
			t.Fatalf("join %s: %s %s", room, got.Type, got.Payload)
		}
		return p
	}
	t.Run("no join authorizer", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.PublicRooms = []string{"lobby"}
		m := newMesh(t, cfg)
		c := m.dial(t, "alice")
		join(t, c, "lobby")
		p := refusal(t, c, "secret-7")
		want := "no grant allows joining room secret-7: add it to the token's rooms claim, to --public-rooms, or run a join authorizer (--join-callout)"
		if p.Code != envelope.CodePermissionDenied || p.Message != want {
			t.Fatalf("refusal %s %q; want %s %q", p.Code, p.Message, envelope.CodePermissionDenied, want)
		}
	})
	t.Run("join authorizer not running", func(t *testing.T) {
		srv := testenv.NATS(t)
		nc := testenv.Connect(t, srv.ClientURL())
		cfg := edge.DefaultConfig()
		cfg.NATS.Conn = nc
		cfg.Auth.DevMode = true
		cfg.Auth.PublicRooms = []string{"lobby"}
		cfg.Auth.JoinAuthorizer = &auth.Callout{NATS: nc, Namespace: envelope.DefaultNamespace, Timeout: 5 * time.Second}
		e := testenv.StartEdge(t, cfg)
		c := wstest.Dial(t, e.URL+"?user=alice")
		start := time.Now()
		p := refusal(t, c, "secret-7")
		want := "no join authorizer is running: nothing answers natter.auth.join"
		if p.Code != envelope.CodeUnavailable || p.Message != want {
			t.Fatalf("refusal %s %q; want %s %q", p.Code, p.Message, envelope.CodeUnavailable, want)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("refused after %s; want at once, not at the callout timeout", d)
		}
	})
}

// --allowed-origins adds to the edge's own origin, which a real browser
// handshake from a page of the edge's host may always use.
func TestAllowedOriginsAddToOwnOrigin(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.Anonymous = true
	cfg.Auth.AllowedOrigins = []string{"https://app.example.com"}
	e := testenv.StartEdge(t, cfg)
	for _, tc := range []struct {
		origin string
		status int
	}{
		{"http://" + e.Addr, http.StatusSwitchingProtocols},        // the edge's own
		{"https://app.example.com", http.StatusSwitchingProtocols}, // listed
		{"https://evil.example", http.StatusForbidden},
	} {
		if status, body, _ := wstest.Handshake(t, e.URL, http.Header{"Origin": {tc.origin}}, ""); status != tc.status {
			t.Errorf("Origin %s: %d %q; want %d", tc.origin, status, body, tc.status)
		}
	}
}
