package client_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

var testSecret = testenv.Secret

// signToken signs an HS256 token for user, valid for ttl.
func signToken(t testing.TB, user string, ttl time.Duration) string {
	t.Helper()
	return testenv.Token(t, user, ttl, nil)
}

// startJWTEdge serves an edge that is not in dev mode and verifies HS256
// tokens.
func (m *mesh) startJWTEdge(t *testing.T, refreshWindow time.Duration) string {
	t.Helper()
	v, err := auth.NewJWT(context.Background(), auth.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, m.URL)
	cfg.Auth.Authenticator = v
	cfg.Auth.RefreshWindow = refreshWindow
	return testenv.StartEdge(t, cfg).URL
}

// tokenSource hands out fresh tokens for user and counts the calls.
type tokenSource struct {
	t     testing.TB
	mu    sync.Mutex
	user  string
	calls atomic.Int32
}

func (s *tokenSource) token(ctx context.Context) (string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return signToken(s.t, s.user, time.Hour), nil
}

func (s *tokenSource) setUser(u string) {
	s.mu.Lock()
	s.user = u
	s.mu.Unlock()
}

// user asks the service which user the edge forwarded for c.
func (m *mesh) user(t *testing.T, c *client.Client) string {
	t.Helper()
	in := m.inbox(t, "whoami")
	if err := c.Send("whoami", nil); err != nil {
		t.Fatal(err)
	}
	_, msg := nextEnv(t, in)
	return msg.Header.Get(envelope.HeaderUser)
}

func TestTokenOnEveryConnect(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.startJWTEdge(t, 0)
	src := &tokenSource{t: t, user: "alice"}
	st := newStates()
	c := dial(t, url, client.Options{Token: src.token, OnState: st.record})
	if got := m.user(t, c); got != "alice" || src.calls.Load() != 1 {
		t.Fatalf("user %q after %d token calls", got, src.calls.Load())
	}

	// A reconnect asks for a token again: here one for another user.
	src.setUser("carol")
	m.ctl(t, m.connID(t, c), envelope.Control{Op: envelope.OpClose, Code: envelope.CloseServer})
	st.await(t, client.StateReconnecting)
	st.await(t, client.StateOpen)
	if got := m.user(t, c); got != "carol" || src.calls.Load() != 2 {
		t.Fatalf("user %q after %d token calls", got, src.calls.Load())
	}

	ctx := context.Background()
	if err := c.RefreshToken(ctx); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("%d token calls after a refresh", n)
	}
	src.setUser("mallory")
	if err := c.RefreshToken(ctx); !errors.Is(err, rpc.ErrPermissionDenied) {
		t.Fatalf("refresh for another user: %v", err)
	}

	// Without a token the edge refuses the handshake; Dial says so at once.
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	_, err := client.Dial(dctx, url, client.Options{Logger: testenv.Logger(t)})
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || he.Body != "missing token" {
		t.Fatalf("dial without a token: %v", err)
	}
}

func TestRefreshOnExpiring(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	// Tokens last an hour and the edge warns an hour minus a second before
	// they expire, so $auth.expiring comes within about a second.
	url := m.startJWTEdge(t, time.Hour-time.Second)
	src := &tokenSource{t: t, user: "alice"}
	c := dial(t, url, client.Options{Token: src.token})
	all := collect(c, "*")
	for seen := map[string]bool{}; !seen[envelope.TypeAuthExpiring] || !seen[envelope.TypeAuthRefreshed]; {
		seen[all.next(t).Type] = true
	}
	if n := src.calls.Load(); n < 2 {
		t.Fatalf("%d token calls", n)
	}
	if s := c.State(); s != client.StateOpen {
		t.Fatalf("state %s", s)
	}
}
