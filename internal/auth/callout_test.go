package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
)

// calloutEnv is an embedded NATS server, the edge's connection and a
// second connection for the auth service the tests play.
type calloutEnv struct {
	edge    *nats.Conn
	service *nats.Conn
}

func newCalloutEnv(t *testing.T) *calloutEnv {
	t.Helper()
	s := testenv.NATS(t)
	return &calloutEnv{edge: testenv.Connect(t, s.ClientURL()), service: testenv.Connect(t, s.ClientURL())}
}

// respond answers requests on subject with what answer returns for the
// request's body; answer returning nil does not answer. The subscription
// is in place when respond returns.
func (e *calloutEnv) respond(t *testing.T, subject string, answer func(body []byte) []byte) {
	t.Helper()
	sub, err := e.service.Subscribe(subject, func(m *nats.Msg) {
		if out := answer(m.Data); out != nil {
			_ = m.Respond(out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := e.service.Flush(); err != nil {
		t.Fatal(err)
	}
}

// reply answers every request with the same body.
func reply(body string) func([]byte) []byte {
	return func([]byte) []byte { return []byte(body) }
}

func (e *calloutEnv) callout(timeout time.Duration) *auth.Callout {
	return &auth.Callout{NATS: e.edge, Namespace: envelope.DefaultNamespace, Edge: "edge-1", Timeout: timeout}
}

func TestCalloutAuthenticate(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	ctx := context.Background()
	expires := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	reason120 := strings.Repeat("r", 120)
	cases := []struct {
		name   string
		reply  string
		want   *auth.Identity
		kind   error
		reason string
	}{
		{name: "allow",
			reply: `{"allow":true,"user":"alice","rooms":["lobby","team-*"],"expiresAt":` + jsonInt(expires.UnixMilli()) + `}`,
			want:  &auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expires}},
		{name: "allow without expiry", reply: `{"allow":true,"user":"alice"}`, want: &auth.Identity{User: "alice"}},
		{name: "allow anonymous", reply: `{"allow":true,"anonymous":true,"rooms":["public"]}`, want: &auth.Identity{Rooms: []string{"public"}}},
		{name: "allow with unknown fields", reply: `{"allow":true,"user":"alice","extra":{"x":1}}`, want: &auth.Identity{User: "alice"}},
		{name: "deny", reply: `{"allow":false,"reason":"bad password"}`, kind: auth.ErrUnauthenticated, reason: "bad password"},
		{name: "deny forbidden", reply: `{"allow":false,"forbidden":true,"reason":"banned"}`, kind: auth.ErrForbidden, reason: "banned"},
		{name: "deny without reason", reply: `{"allow":false}`, kind: auth.ErrUnauthenticated, reason: "not authorized"},
		{name: "deny forbidden without reason", reply: `{"forbidden":true}`, kind: auth.ErrForbidden, reason: "not authorized"},
		{name: "deny with a reason of 120 bytes", reply: `{"reason":"` + reason120 + `"}`, kind: auth.ErrUnauthenticated, reason: reason120},
		{name: "deny with an overlong reason", reply: `{"reason":"` + reason120 + `x"}`, kind: auth.ErrUnauthenticated, reason: "not authorized"},
		{name: "deny with a control character in the reason", reply: `{"reason":"line\nbreak"}`, kind: auth.ErrUnauthenticated, reason: "not authorized"},
		{name: "deny with a non-ASCII reason", reply: `{"reason":"gesperrt – später"}`, kind: auth.ErrUnauthenticated, reason: "gesperrt – später"},
		{name: "null reply denies", reply: `null`, kind: auth.ErrUnauthenticated, reason: "not authorized"},
		{name: "malformed reply", reply: `{"allow":tru`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "reply not JSON", reply: `yes`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow of the wrong type", reply: `{"allow":"true","user":"alice"}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow without a user", reply: `{"allow":true}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow with an invalid user id", reply: `{"allow":true,"user":"a.b"}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow with a wildcard user id", reply: `{"allow":true,"user":">"}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow with a bad room pattern", reply: `{"allow":true,"user":"alice","rooms":["["]}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
		{name: "allow with a negative expiresAt", reply: `{"allow":true,"user":"alice","expiresAt":-1}`, kind: auth.ErrUnavailable, reason: "authentication unavailable"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Each case its own namespace, so no responder answers twice.
			ns, err := envelope.NewNamespace("t" + jsonInt(int64(i)))
			if err != nil {
				t.Fatal(err)
			}
			subj, _ := ns.Auth(envelope.AuthConnect)
			env.respond(t, subj.String(), reply(tc.reply))
			c := &auth.Callout{NATS: env.edge, Namespace: ns, Edge: "edge-1", Timeout: 5 * time.Second}
			id, err := c.Authenticate(ctx, &auth.Handshake{Token: "tok", TokenFrom: auth.SourceHeader})
			if tc.want != nil {
				wantIdentity(t, id, err, *tc.want)
				return
			}
			wantRefusal(t, err, tc.kind, tc.reason)
		})
	}
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestCalloutRequest checks the auth service gets everything the handshake
// carried.
func TestCalloutRequest(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	got := make(chan auth.ConnectRequest, 1)
	env.respond(t, "natter.auth.connect", func(body []byte) []byte {
		var req auth.ConnectRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Errorf("request body %q: %v", body, err)
		}
		got <- req
		return []byte(`{"allow":true,"user":"alice"}`)
	})

	r := httptest.NewRequest(http.MethodGet, "/ws/chat?room=a&room=b&v=2", nil)
	r.RemoteAddr = "198.51.100.9:50123"
	r.Header.Set("Authorization", "Bearer the-token")
	r.Header.Set("X-Tenant", "acme")
	r.Header.Add("Cookie", "session=s1; theme=dark")
	h := auth.NewHandshake(r, auth.TokenSources{})
	if _, err := env.callout(5*time.Second).Authenticate(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	req := <-got
	checks := []struct {
		name string
		ok   bool
	}{
		{"edge", req.Edge == "edge-1"},
		{"token", req.Token == "the-token"},
		{"token source", req.TokenSource == auth.SourceHeader},
		{"path", req.Path == "/ws/chat"},
		{"remote address", req.RemoteAddr == "198.51.100.9:50123"},
		{"query", slices.Equal(req.Query["room"], []string{"a", "b"}) && slices.Equal(req.Query["v"], []string{"2"})},
		{"header", slices.Equal(req.Headers["X-Tenant"], []string{"acme"}) && slices.Equal(req.Headers["Authorization"], []string{"Bearer the-token"})},
		{"cookies", len(req.Cookies) == 2 && req.Cookies["session"] == "s1" && req.Cookies["theme"] == "dark"},
		{"no conn or user on connect", req.Conn == "" && req.User == ""},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: request %+v", c.name, req)
		}
	}
}

func TestCalloutTimeout(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	env.respond(t, "natter.auth.connect", func([]byte) []byte { return nil }) // never answers
	const timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := env.callout(timeout).Authenticate(context.Background(), &auth.Handshake{Token: "tok"})
	elapsed := time.Since(start)
	wantRefusal(t, err, auth.ErrUnavailable, "authentication unavailable")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cause = %v; want the deadline", err)
	}
	if auth.Status(err) != http.StatusServiceUnavailable {
		t.Errorf("status = %d; want 503", auth.Status(err))
	}
	// Behaviour, not speed: it waits the timeout, and not much longer.
	if elapsed < timeout || elapsed > timeout+3*time.Second {
		t.Errorf("refused after %s; want about %s", elapsed, timeout)
	}
}

func TestCalloutCallerContext(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	env.respond(t, "natter.auth.connect", func([]byte) []byte { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := env.callout(time.Minute).Authenticate(ctx, &auth.Handshake{Token: "tok"})
	wantRefusal(t, err, auth.ErrUnavailable, "authentication unavailable")
	if ctx.Err() == nil {
		t.Fatal("returned before the caller's context ended")
	}
}

func TestCalloutNoResponders(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	start := time.Now()
	_, err := env.callout(time.Minute).Authenticate(context.Background(), &auth.Handshake{Token: "tok"})
	wantRefusal(t, err, auth.ErrUnavailable, "authentication unavailable")
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("cause = %v; want nats.ErrNoResponders", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("refused after %s: no responders must not wait for the timeout", elapsed)
	}
}

func TestCalloutFailsClosed(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	t.Run("zero namespace", func(t *testing.T) {
		c := &auth.Callout{NATS: env.edge, Edge: "edge-1"}
		_, err := c.Authenticate(context.Background(), &auth.Handshake{Token: "tok"})
		wantRefusal(t, err, auth.ErrUnavailable, "authentication unavailable")
	})
	t.Run("closed connection", func(t *testing.T) {
		s := testenv.NATS(t)
		nc := testenv.Connect(t, s.ClientURL())
		nc.Close()
		c := &auth.Callout{NATS: nc, Namespace: envelope.DefaultNamespace, Edge: "edge-1"}
		_, err := c.Authenticate(context.Background(), &auth.Handshake{Token: "tok"})
		wantRefusal(t, err, auth.ErrUnavailable, "authentication unavailable")
	})
}

func TestCalloutRefresh(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	got := make(chan auth.ConnectRequest, 10)
	// The service allows a token named after a user, as that user.
	env.respond(t, "natter.auth.refresh", func(body []byte) []byte {
		var req auth.ConnectRequest
		_ = json.Unmarshal(body, &req)
		got <- req
		if user, ok := strings.CutPrefix(req.Token, "token-of-"); ok {
			return []byte(`{"allow":true,"user":"` + user + `","rooms":["r"]}`)
		}
		return []byte(`{"allow":false,"reason":"token revoked"}`)
	})
	c := env.callout(5 * time.Second)
	cur := &auth.Identity{User: "alice"}
	ctx := context.Background()

	id, err := c.Refresh(ctx, "token-of-alice", cur)
	wantIdentity(t, id, err, auth.Identity{User: "alice", Rooms: []string{"r"}})
	req := <-got
	if req.Edge != "edge-1" || req.Token != "token-of-alice" || req.User != "alice" {
		t.Errorf("refresh request %+v", req)
	}

	_, err = c.Refresh(ctx, "token-of-bob", cur)
	wantRefusal(t, err, auth.ErrForbidden, "token is for another user")

	_, err = c.Refresh(ctx, "revoked", cur)
	wantRefusal(t, err, auth.ErrUnauthenticated, "token revoked")
}

func TestCalloutAuthorizeJoin(t *testing.T) {
	t.Parallel()
	env := newCalloutEnv(t)
	got := make(chan auth.JoinRequest, 10)
	env.respond(t, "natter.auth.join", func(body []byte) []byte {
		var req auth.JoinRequest
		_ = json.Unmarshal(body, &req)
		got <- req
		switch req.Room {
		case "open":
			return []byte(`{"allow":true}`)
		case "secret":
			return []byte(`{"allow":false,"reason":"members only"}`)
		case "silent":
			return nil
		case "garbled":
			return []byte(`{`)
		}
		return []byte(`{"allow":false}`)
	})
	c := env.callout(300 * time.Millisecond)
	ctx := context.Background()
	join := func(room string) error {
		return c.AuthorizeJoin(ctx, auth.JoinRequest{Edge: "spoofed", Conn: "c1", User: "alice", Room: room, Rooms: []string{"team-*"}})
	}

	t.Run("allow", func(t *testing.T) {
		if err := join("open"); err != nil {
			t.Fatal(err)
		}
		req := <-got
		if req.Edge != "edge-1" || req.Conn != "c1" || req.User != "alice" || req.Room != "open" || !slices.Equal(req.Rooms, []string{"team-*"}) {
			t.Fatalf("join request %+v", req)
		}
	})
	t.Run("deny with reason", func(t *testing.T) {
		wantRefusal(t, join("secret"), auth.ErrForbidden, "members only")
		<-got
	})
	t.Run("deny without reason", func(t *testing.T) {
		wantRefusal(t, join("other"), auth.ErrForbidden, "not allowed to join other")
		<-got
	})
	// The connection is authenticated: a join refused for want of an
	// answer names the join authorizer, not authentication.
	t.Run("timeout", func(t *testing.T) {
		err := join("silent")
		wantRefusal(t, err, auth.ErrUnavailable, "the join authorizer did not answer in time")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("cause = %v; want the deadline", err)
		}
		<-got
	})
	t.Run("malformed reply", func(t *testing.T) {
		wantRefusal(t, join("garbled"), auth.ErrUnavailable, "join authorizer unavailable")
		<-got
	})
	t.Run("no authorizer running", func(t *testing.T) {
		ns, err := envelope.NewNamespace("nobody")
		if err != nil {
			t.Fatal(err)
		}
		alone := &auth.Callout{NATS: env.edge, Namespace: ns, Edge: "edge-1", Timeout: 5 * time.Second}
		start := time.Now()
		err = alone.AuthorizeJoin(ctx, auth.JoinRequest{Conn: "c1", User: "alice", Room: "r"})
		wantRefusal(t, err, auth.ErrUnavailable, "no join authorizer is running: nothing answers nobody.auth.join")
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("cause = %v; want no responders", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("refused after %s; want at once", d)
		}
	})
}
