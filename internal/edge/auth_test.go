package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

var testSecret = testenv.Secret

// token signs an HS256 token with testSecret (testenv.Token).
func token(t testing.TB, user string, ttl time.Duration, claims map[string]any) string {
	t.Helper()
	return testenv.Token(t, user, ttl, claims)
}

// authMesh is an embedded NATS server, an edge that is not in dev mode, and
// a worker whose "whoami" request answers the identity the edge forwarded.
type authMesh struct{ *testenv.Mesh }

func newAuthMesh(t *testing.T, cfg edge.Config) *authMesh {
	t.Helper()
	if cfg.Auth.Authenticator == nil && !cfg.Auth.Anonymous {
		v, err := auth.NewJWT(context.Background(), auth.JWTConfig{HMACSecret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Auth.Authenticator = v
	}
	m := testenv.NewMesh(t, testenv.MeshOptions{Edge: &cfg})
	if err := m.Worker.Handle("whoami", func(_ context.Context, m *worker.Message) error {
		return m.Reply("whoami", map[string]string{"user": m.User, "conn": m.Conn})
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.Worker.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &authMesh{m}
}

// dialAs connects with a bearer token in the Authorization header.
func (m *authMesh) dialAs(t *testing.T, tok string) *wstest.Client {
	t.Helper()
	c, err := wstest.DialErr(m.Edge.URL, http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func whoami(t *testing.T, c *wstest.Client) string {
	t.Helper()
	got := c.Request(t, "whoami", nil, wait)
	var p struct{ User string }
	if err := json.Unmarshal(got.Payload, &p); err != nil || got.Type != "whoami" {
		t.Fatalf("whoami: %s %s", got.Type, got.Payload)
	}
	return p.User
}

func TestHandshakeAuthentication(t *testing.T) {
	t.Parallel()
	m := newAuthMesh(t, edge.DefaultConfig())
	good := token(t, "alice", time.Hour, nil)
	other, err := jwt.NewBuilder().Subject("alice").Expiration(time.Now().Add(time.Hour)).Build()
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := jwt.Sign(other, jwt.WithKey(jwa.HS256(), []byte("another-secret-another-secret-another")))

	cases := []struct {
		name   string
		url    string
		hdr    http.Header
		status int
		body   string
	}{
		{"authorization header", m.Edge.URL, http.Header{"Authorization": {"Bearer " + good}}, 101, ""},
		{"lower-case scheme", m.Edge.URL, http.Header{"Authorization": {"bearer " + good}}, 101, ""},
		{"query parameter", m.Edge.URL + "?token=" + good, nil, 101, ""},
		{"cookie", m.Edge.URL, http.Header{"Cookie": {"natter_token=" + good}}, 101, ""},
		{"subprotocol", m.Edge.URL, http.Header{"Sec-Websocket-Protocol": {"natter, bearer." + good}}, 101, ""},
		{"missing token", m.Edge.URL, nil, 401, "missing token"},
		{"dev user parameter ignored", m.Edge.URL + "?user=alice", nil, 401, "missing token"},
		{"garbage", m.Edge.URL, http.Header{"Authorization": {"Bearer not.a.token"}}, 401, "invalid token"},
		{"wrong signature", m.Edge.URL, http.Header{"Authorization": {"Bearer " + string(forged)}}, 401, "invalid token"},
		{"expired", m.Edge.URL, http.Header{"Authorization": {"Bearer " + token(t, "alice", -time.Minute, nil)}}, 401, "token expired"},
		{"no subject", m.Edge.URL, http.Header{"Authorization": {"Bearer " + token(t, "", time.Hour, nil)}}, 401, "token lacks a required claim"},
		{"subject hits other subjects", m.Edge.URL, http.Header{"Authorization": {"Bearer " + token(t, "bob.>", time.Hour, nil)}}, 401, "invalid user id in token"},
		{"subprotocol without natter", m.Edge.URL, http.Header{"Sec-Websocket-Protocol": {"bearer." + good}}, 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body, h := wstest.Handshake(t, tc.url, tc.hdr, "")
			if status != tc.status {
				t.Fatalf("status %d (%q), want %d", status, body, tc.status)
			}
			if tc.body != "" && body != tc.body {
				t.Fatalf("body %q, want %q", body, tc.body)
			}
			if status == 401 && h.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
			if status == 101 && tc.hdr.Get("Sec-Websocket-Protocol") != "" && h.Get("Sec-Websocket-Protocol") != "natter" {
				t.Fatalf("selected subprotocol %q, want natter", h.Get("Sec-Websocket-Protocol"))
			}
		})
	}

	t.Run("identity reaches workers", func(t *testing.T) {
		if got := whoami(t, m.dialAs(t, good)); got != "alice" {
			t.Fatalf("user %q, want alice", got)
		}
	})
	// Every refusal above was counted: seven 401s and the subprotocol
	// mismatch's 400.
	if n := m.Edge.Stats().Refused; n != 8 {
		t.Fatalf("refused %d handshakes, want 8", n)
	}
	if by := m.Edge.Stats().RefusedBy; by["unauthenticated"] != 7 || by["bad_handshake"] != 1 {
		t.Fatalf("refused by reason %v, want 7 unauthenticated and 1 bad_handshake", by)
	}
}

func TestAnonymous(t *testing.T) {
	t.Parallel()
	v, err := auth.NewJWT(context.Background(), auth.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.DefaultConfig()
	cfg.Auth.Authenticator = v
	cfg.Auth.Anonymous = true
	cfg.Auth.PublicRooms = []string{"lobby"}
	m := newAuthMesh(t, cfg)
	anon, err := wstest.DialErr(m.Edge.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if got := whoami(t, anon); got != "" {
		t.Fatalf("anonymous user %q", got)
	}
	join(t, anon, "lobby")
	// A bad token is not silently downgraded to anonymous.
	if status, _, _ := wstest.Handshake(t, m.Edge.URL, http.Header{"Authorization": {"Bearer nope"}}, ""); status != 401 {
		t.Fatalf("bad token with anonymous on: %d, want 401", status)
	}
	cfg = edge.DefaultConfig()
	cfg.NATS.Conn = m.NC
	if _, err := edge.New(t.Context(), cfg); err == nil {
		t.Fatal("an edge with neither Auth nor Anonymous started")
	}
}

func TestAuthCallout(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	responder := testenv.Connect(t, srv.ClientURL())
	got := make(chan auth.ConnectRequest, 16)
	sub, err := responder.Subscribe("natter.auth.connect", func(msg *nats.Msg) {
		var req auth.ConnectRequest
		_ = json.Unmarshal(msg.Data, &req)
		got <- req
		var rep auth.ConnectReply
		switch req.Token {
		case "good":
			rep = auth.ConnectReply{Allow: true, User: "carol", Rooms: []string{"team-*"}}
		case "banned":
			rep = auth.ConnectReply{Allow: false, Forbidden: true, Reason: "account suspended"}
		case "slow":
			return // never answers
		default:
			rep = auth.ConnectReply{Allow: false, Reason: "unknown session"}
		}
		b, _ := json.Marshal(rep)
		_ = msg.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = responder.Flush()
	nc := testenv.Connect(t, srv.ClientURL())
	callout := &auth.Callout{NATS: nc, Namespace: envelope.DefaultNamespace, Edge: "e1", Timeout: 300 * time.Millisecond}
	w := testenv.Worker(t, testenv.Connect(t, srv.ClientURL()))
	_ = w.Handle("whoami", func(_ context.Context, m *worker.Message) error {
		return m.Reply("whoami", map[string]string{"user": m.User})
	})
	_ = w.Flush(context.Background())
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = nc
	cfg.Auth.Authenticator = callout
	cfg.EdgeID = "e1"
	e := testenv.StartEdge(t, cfg)

	t.Run("allow", func(t *testing.T) {
		c, err := wstest.DialErr(e.URL+"?session=1", http.Header{"Authorization": {"Bearer good"}, "Cookie": {"sid=abc"}, "X-Custom": {"v"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := <-got
		if req.Token != "good" || req.TokenSource != auth.SourceHeader || req.Cookies["sid"] != "abc" ||
			req.Headers["X-Custom"][0] != "v" || req.Query["session"][0] != "1" || req.Path != "/ws" ||
			req.RemoteAddr == "" || req.Edge != "e1" {
			t.Fatalf("callout request: %+v", req)
		}
		if u := whoami(t, c); u != "carol" {
			t.Fatalf("user %q, want carol", u)
		}
		join(t, c, "team-7")
	})
	t.Run("deny", func(t *testing.T) {
		status, body, _ := wstest.Handshake(t, e.URL, http.Header{"Authorization": {"Bearer stolen"}}, "")
		<-got
		if status != 401 || body != "unknown session" {
			t.Fatalf("deny: %d %q", status, body)
		}
		status, body, _ = wstest.Handshake(t, e.URL, http.Header{"Authorization": {"Bearer banned"}}, "")
		<-got
		if status != 403 || body != "account suspended" {
			t.Fatalf("forbidden: %d %q", status, body)
		}
	})
	t.Run("timeout fails closed", func(t *testing.T) {
		start := time.Now()
		status, body, _ := wstest.Handshake(t, e.URL, http.Header{"Authorization": {"Bearer slow"}}, "")
		<-got
		if status != 503 || body != "authentication unavailable" {
			t.Fatalf("timeout: %d %q", status, body)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("timeout took %s, callout timeout is 300ms", d)
		}
	})
	t.Run("no responder fails closed", func(t *testing.T) {
		_ = sub.Unsubscribe()
		_ = responder.Flush()
		status, _, _ := wstest.Handshake(t, e.URL, http.Header{"Authorization": {"Bearer good"}}, "")
		if status != 503 {
			t.Fatalf("no responder: %d, want 503", status)
		}
	})
	// The refusals above by reason, as natter_edge_handshakes_refused_total
	// labels them: the 403 and the two 503s.
	if by := e.Stats().RefusedBy; by["forbidden"] != 1 || by["auth_unavailable"] != 2 {
		t.Fatalf("refused by reason %v, want 1 forbidden and 2 auth_unavailable", by)
	}
}

func TestOriginPolicy(t *testing.T) {
	t.Parallel()
	tok := token(t, "alice", time.Hour, nil)
	bearer := func(origin string) http.Header {
		h := http.Header{"Authorization": {"Bearer " + tok}}
		if origin != "" {
			h.Set("Origin", origin)
		}
		return h
	}
	t.Run("allowlist", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.AllowedOrigins = []string{"https://app.example.com", "https://*.example.org"}
		m := newAuthMesh(t, cfg)
		for _, tc := range []struct {
			origin string
			status int
		}{
			{"https://app.example.com", 101},
			{"https://eu.example.org", 101},
			{"https://evil.example", 403},
			{"http://app.example.com", 403}, // scheme matters
			{"null", 403},
			{"", 101}, // not a browser
		} {
			if status, body, _ := wstest.Handshake(t, m.Edge.URL, bearer(tc.origin), ""); status != tc.status {
				t.Errorf("origin %q: %d %q, want %d", tc.origin, status, body, tc.status)
			}
		}
		if n := m.Edge.Stats().RefusedBy["origin"]; n != 3 {
			t.Errorf("%d refusals counted as origin, want 3", n)
		}
	})
	t.Run("same origin by default", func(t *testing.T) {
		m := newAuthMesh(t, edge.DefaultConfig())
		if status, _, _ := wstest.Handshake(t, m.Edge.URL, bearer("http://"+m.Edge.Addr), ""); status != 101 {
			t.Fatalf("same origin: %d", status)
		}
		// A cookie-carrying cross-site page is the hijacking case.
		h := http.Header{"Cookie": {"natter_token=" + tok}, "Origin": {"https://evil.example"}}
		if status, body, _ := wstest.Handshake(t, m.Edge.URL, h, ""); status != 403 || body != "origin not allowed" {
			t.Fatalf("cross origin: %d %q", status, body)
		}
	})
}

func TestJoinAuthorization(t *testing.T) {
	t.Parallel()
	tm := testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true, NoWorker: true})
	authz := tm.Connect(t)
	if _, err := authz.Subscribe("natter.auth.join", func(msg *nats.Msg) {
		var req auth.JoinRequest
		_ = json.Unmarshal(msg.Data, &req)
		if strings.HasPrefix(req.Room, "slow") {
			return
		}
		b, _ := json.Marshal(auth.JoinReply{Allow: strings.HasPrefix(req.Room, "vip-") && req.User == "alice", Reason: "vip rooms are for alice"})
		_ = msg.Respond(b)
	}); err != nil {
		t.Fatal(err)
	}
	_ = authz.Flush()
	nc := tm.Connect(t)
	v, _ := auth.NewJWT(context.Background(), auth.JWTConfig{HMACSecret: testSecret})
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = nc
	cfg.Auth.Authenticator = v
	cfg.Auth.PublicRooms = []string{"lobby"}
	cfg.Auth.JoinAuthorizer = &auth.Callout{NATS: nc, Namespace: envelope.DefaultNamespace, Timeout: 300 * time.Millisecond}
	tm.Edge = tm.StartEdge(t, cfg)
	m := &authMesh{tm}
	alice := m.dialAs(t, token(t, "alice", time.Hour, map[string]any{"rooms": []string{"team-*"}}))
	bob := m.dialAs(t, token(t, "bob", time.Hour, nil))

	denied := func(c *wstest.Client, room string, code envelope.Code) {
		t.Helper()
		got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
		var p envelope.ErrorPayload
		_ = json.Unmarshal(got.Payload, &p)
		if got.Type != envelope.TypeRPCError || p.Code != code {
			t.Fatalf("join %s: %s %s, want %s", room, got.Type, got.Payload, code)
		}
	}
	join(t, alice, "team-1")   // token grant
	join(t, alice, "lobby")    // public room
	join(t, bob, "lobby")      // public room
	join(t, alice, "vip-gold") // the authorizer says yes
	denied(bob, "team-1", envelope.CodePermissionDenied)
	denied(bob, "vip-gold", envelope.CodePermissionDenied)
	denied(alice, "slow-room", envelope.CodeUnavailable) // no answer: fail closed

	// Server-side joins need no grant.
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn := connID(t, m.NC, bob)
	if err := pub.Join(ctx, conn, "team-1"); err != nil {
		t.Fatalf("server-side join: %v", err)
	}
	bob.AwaitType(t, envelope.TypeJoined, wait)
	if err := pub.ToRoom("team-1", &envelope.Envelope{Type: "news", Payload: json.RawMessage(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	bob.AwaitType(t, "news", wait)
	alice.AwaitType(t, "news", wait)
}

func TestTokenRefreshAndExpiry(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Auth.RefreshWindow = 2 * time.Second
	m := newAuthMesh(t, cfg)
	short := token(t, "alice", 3*time.Second, nil)
	refreshed := m.dialAs(t, short)
	lapsed := m.dialAs(t, short)

	exp := refreshed.AwaitType(t, envelope.TypeAuthExpiring, wait)
	var ep struct{ ExpiresAt int64 }
	if err := json.Unmarshal(exp.Payload, &ep); err != nil || ep.ExpiresAt == 0 {
		t.Fatalf("$auth.expiring payload %s", exp.Payload)
	}
	refresh := func(tok string) *envelope.Envelope {
		return refreshed.Request(t, envelope.TypeAuthRefresh, map[string]string{"token": tok}, wait)
	}
	if got := refresh(token(t, "bob", time.Hour, nil)); got.Type != envelope.TypeRPCError || !strings.Contains(string(got.Payload), "PERMISSION_DENIED") {
		t.Fatalf("refresh as another user: %s %s", got.Type, got.Payload)
	}
	if got := refresh("garbage"); got.Type != envelope.TypeRPCError || !strings.Contains(string(got.Payload), "UNAUTHENTICATED") {
		t.Fatalf("refresh with garbage: %s %s", got.Type, got.Payload)
	}
	if got := refresh(token(t, "alice", time.Hour, nil)); got.Type != envelope.TypeAuthRefreshed {
		t.Fatalf("refresh: %s %s", got.Type, got.Payload)
	}

	if code := lapsed.WaitClose(t, 6*time.Second); code != uint16(envelope.CloseUnauthorized) {
		t.Fatalf("unrefreshed connection closed with %d, want %d", code, envelope.CloseUnauthorized)
	}
	if refreshed.Closed() {
		t.Fatal("the refreshed connection was closed")
	}
	if got := whoami(t, refreshed); got != "alice" {
		t.Fatalf("after refresh: %q", got)
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	t.Run("per user", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Limits.MaxConnsPerUser = 2
		m := newAuthMesh(t, cfg)
		a := token(t, "alice", time.Hour, nil)
		first := m.dialAs(t, a)
		m.dialAs(t, a)
		status, body, _ := wstest.Handshake(t, m.Edge.URL, http.Header{"Authorization": {"Bearer " + a}}, "")
		if status != 429 || body != "too many connections for this user" {
			t.Fatalf("third connection: %d %q", status, body)
		}
		if n := m.Edge.Stats().RefusedBy["connection_limit"]; n != 1 {
			t.Fatalf("%d refusals counted as connection_limit, want 1", n)
		}
		whoami(t, m.dialAs(t, token(t, "bob", time.Hour, nil))) // others unaffected
		first.Close()
		testenv.Eventually(t, wait, "the slot freed", func() bool {
			status, _, _ := wstest.Handshake(t, m.Edge.URL, http.Header{"Authorization": {"Bearer " + a}}, "")
			return status == 101
		})
	})
	t.Run("per IP", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.Anonymous = true
		cfg.Auth.Authenticator = nil
		cfg.Limits.MaxConnsPerIP = 2
		m := newAuthMesh(t, cfg)
		for range 2 {
			if _, err := wstest.DialErr(m.Edge.URL, nil); err != nil {
				t.Fatal(err)
			}
		}
		if status, body, _ := wstest.Handshake(t, m.Edge.URL, nil, "127.0.0.1"); status != 429 || body != "too many connections from this address" {
			t.Fatalf("third from 127.0.0.1: %d %q", status, body)
		}
		if status, _, _ := wstest.Handshake(t, m.Edge.URL, nil, "127.0.0.2"); status != 101 {
			t.Fatalf("from 127.0.0.2: %d", status)
		}
	})
	t.Run("client IP from a trusted proxy header", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.Anonymous = true
		cfg.Limits.MaxConnsPerIP = 1
		cfg.Limits.ClientIPHeader = "X-Forwarded-For"
		m := newAuthMesh(t, cfg)
		c, err := wstest.DialErr(m.Edge.URL, http.Header{"X-Forwarded-For": {"203.0.113.9, 10.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The proxy appends the address it saw: the last one counts.
		if status, _, _ := wstest.Handshake(t, m.Edge.URL, http.Header{"X-Forwarded-For": {"10.0.0.1"}}, ""); status != 429 {
			t.Fatalf("second from 10.0.0.1: %d, want 429", status)
		}
		if status, _, _ := wstest.Handshake(t, m.Edge.URL, http.Header{"X-Forwarded-For": {"10.0.0.1, 10.0.0.2"}}, ""); status != 101 {
			t.Fatalf("from 10.0.0.2: %d, want 101", status)
		}
	})
	t.Run("handshake rate per IP", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.Anonymous = true
		cfg.Limits.HandshakeRate = 0.5
		cfg.Limits.HandshakeBurst = 2
		m := newAuthMesh(t, cfg)
		var statuses []int
		var retry string
		for range 4 {
			status, _, h := wstest.Handshake(t, m.Edge.URL, nil, "127.0.0.3")
			statuses = append(statuses, status)
			if status == 429 {
				retry = h.Get("Retry-After")
			}
		}
		if fmt.Sprint(statuses) != "[101 101 429 429]" || retry == "" {
			t.Fatalf("statuses %v, Retry-After %q", statuses, retry)
		}
		if n := m.Edge.Stats().RefusedBy["handshake_rate"]; n != 2 {
			t.Fatalf("%d refusals counted as handshake_rate, want 2", n)
		}
		if status, _, _ := wstest.Handshake(t, m.Edge.URL, nil, "127.0.0.4"); status != 101 {
			t.Fatalf("another address: %d", status)
		}
	})
	t.Run("rooms per connection", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.Auth.Anonymous = true
		cfg.Auth.PublicRooms = []string{"*"}
		cfg.Limits.MaxRoomsPerConn = 2
		m := newAuthMesh(t, cfg)
		c, _ := wstest.DialErr(m.Edge.URL, nil)
		defer c.Close()
		join(t, c, "r1")
		join(t, c, "r2")
		got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "r3"}, wait)
		if got.Type != envelope.TypeRPCError || !strings.Contains(string(got.Payload), "RESOURCE_EXHAUSTED") {
			t.Fatalf("third room: %s %s", got.Type, got.Payload)
		}
		join(t, c, "r1") // rejoining is not a new room
		other, _ := wstest.DialErr(m.Edge.URL, nil)
		defer other.Close()
		join(t, other, "r3")
	})
}

func TestUserRateLimit(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Limits.MessageRate = 1000
	cfg.Limits.UserMessageRate = 5
	cfg.Limits.UserMessageBurst = 5
	m := newAuthMesh(t, cfg)
	a := token(t, "alice", time.Hour, nil)
	a1, a2 := m.dialAs(t, a), m.dialAs(t, a)
	bob := m.dialAs(t, token(t, "bob", time.Hour, nil))
	// Alice sends 12 over two connections; bob sends 5, within his own
	// user's burst.
	for i := range 6 {
		a1.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: fmt.Sprint("a1-", i)}, nil)
		a2.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: fmt.Sprint("a2-", i)}, nil)
		if i < 5 {
			bob.Send(t, envelope.TypeHeartbeat, envelope.Meta{CorrelationID: fmt.Sprint("b-", i)}, nil)
		}
	}
	count := func(c *wstest.Client, n int) (acks, limited int) {
		for range n {
			got := c.Next(t, wait)
			switch got.Type {
			case envelope.TypeHeartbeatAck:
				acks++
			case envelope.TypeRPCError:
				var p envelope.ErrorPayload
				_ = json.Unmarshal(got.Payload, &p)
				if p.Code != envelope.CodeResourceExhausted || p.RetryAfterMs <= 0 || p.Message != "user rate limit exceeded" {
					t.Fatalf("limited: %s", got.Payload)
				}
				limited++
			}
		}
		return acks, limited
	}
	a1acks, a1lim := count(a1, 6)
	a2acks, a2lim := count(a2, 6)
	if a1acks+a2acks > 7 || a1lim+a2lim < 5 {
		t.Fatalf("alice: %d+%d acks, %d+%d limited; want at most burst+1 acks in all", a1acks, a2acks, a1lim, a2lim)
	}
	if acks, limited := count(bob, 5); acks != 5 || limited != 0 {
		t.Fatalf("bob: %d acks, %d limited; want all through", acks, limited)
	}
}

// A handler that joins or posts for a client applies the client's rights:
// the built-in chat.join goes through JoinAsClient and chat.send through
// RequireMember, so neither opens a way around $join's authorization.
func TestHandlersKeepRoomRights(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Auth.PublicRooms = []string{"lobby"}
	m := newAuthMesh(t, cfg)
	mallory := m.dialAs(t, token(t, "mallory", time.Hour, nil))
	alice := m.dialAs(t, token(t, "alice", time.Hour, map[string]any{"rooms": []string{"secret"}}))
	join(t, alice, "secret")

	denied := func(typ string, payload any) {
		t.Helper()
		got := mallory.Request(t, typ, payload, wait)
		assertErrorFrame(t, got, envelope.TypeRPCError, envelope.CodePermissionDenied, got.Meta.CorrelationID)
	}
	denied("chat.join", map[string]string{"room": "secret"})
	denied("chat.send", map[string]string{"room": "secret", "text": "let me in"})
	if got := mallory.Request(t, "chat.join", map[string]string{"room": "lobby"}, wait); got.Type != "chat.join" {
		t.Fatalf("chat.join of a public room: %s %s", got.Type, got.Payload)
	}
	if !alice.Quiet(300 * time.Millisecond) {
		t.Fatal("alice got something from mallory's attempts")
	}
	// Alice, a member, posts.
	if got := alice.Request(t, "chat.send", map[string]string{"room": "secret", "text": "hi"}, wait); got.Type != "chat.sent" {
		t.Fatalf("member chat.send: %s %s", got.Type, got.Payload)
	}
}

// With Anonymous on, only a handshake with no credentials at all becomes
// anonymous: an auth callout's refusal (of a session cookie, say) stands.
func TestCalloutRefusalIsNotAnonymous(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	responder := testenv.Connect(t, srv.ClientURL())
	if _, err := responder.Subscribe("natter.auth.connect", func(msg *nats.Msg) {
		_ = msg.Respond([]byte(`{"allow":false,"reason":"banned"}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = responder.Flush()
	nc := testenv.Connect(t, srv.ClientURL())
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = nc
	cfg.Auth.Anonymous = true
	cfg.Auth.Authenticator = &auth.Callout{NATS: nc, Namespace: envelope.DefaultNamespace, Timeout: time.Second}
	e := testenv.StartEdge(t, cfg)
	for _, h := range []http.Header{nil, {"Cookie": {"sid=abc"}}} {
		if status, body, _ := wstest.Handshake(t, e.URL, h, ""); status != 401 || body != "banned" {
			t.Fatalf("headers %v: %d %q, want 401 banned", h, status, body)
		}
	}
}
