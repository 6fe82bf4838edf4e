package e2e_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// An edge with --nats and no authentication configured refuses to start:
// anonymous access is opt-in outside single-binary mode.
func TestEdgeRefusesToStartWithoutAuth(t *testing.T) {
	srv := testenv.NATS(t)
	p := testenv.Start(t, "edge", "--nats", srv.ClientURL(), "--listen", "127.0.0.1:0")
	if code := p.Wait(t, wait); code == 0 {
		t.Fatal("edge started without authentication")
	}
	if !strings.Contains(p.Log(), "no authentication") {
		t.Fatalf("log does not say why:\n%s", p.Log())
	}
}

// The edge binary verifies tokens with the flags an operator uses: an HS256
// secret file and an ES256 public key file, with room grants, a public
// room and an origin allowlist.
func TestEdgeProcessJWT(t *testing.T) {
	srv := testenv.NATS(t)
	dir := t.TempDir()
	secret := []byte("process-test-secret-0123456789abcdef")
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "es256.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, "edge", "--nats", srv.ClientURL(), "--listen", "127.0.0.1:0",
		"--jwt-secret-file", secretFile, "--jwt-public-key", keyFile,
		"--public-rooms", "lobby", "--allowed-origins", "https://app.example.com", "--presence=false")
	m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	url := wstest.WSURL(m[1], m[2])

	sign := func(alg jwa.SignatureAlgorithm, key any, user string, rooms ...string) string {
		b := jwt.NewBuilder().Subject(user).Expiration(time.Now().Add(time.Hour))
		if rooms != nil {
			b = b.Claim("rooms", rooms)
		}
		tok, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		s, err := jwt.Sign(tok, jwt.WithKey(alg, key))
		if err != nil {
			t.Fatal(err)
		}
		return string(s)
	}
	status := func(h http.Header) int {
		code, _, _ := wstest.Handshake(t, url, h, "")
		return code
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

	if got := status(nil); got != 401 {
		t.Fatalf("no token: %d", got)
	}
	if got := status(bearer(sign(jwa.HS256(), secret, "alice"))); got != 101 {
		t.Fatalf("HS256 token: %d", got)
	}
	es := sign(jwa.ES256(), ec, "bob", "team-*")
	if got := status(bearer(es)); got != 101 {
		t.Fatalf("ES256 token: %d", got)
	}
	h := bearer(es)
	h.Set("Origin", "https://evil.example")
	if got := status(h); got != 403 {
		t.Fatalf("cross-origin: %d", got)
	}

	c, err := wstest.DialErr(url, bearer(es))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for room, want := range map[string]string{"lobby": envelope.TypeJoined, "team-9": envelope.TypeJoined, "secret": envelope.TypeRPCError} {
		if got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait); got.Type != want {
			t.Fatalf("join %s: %s %s, want %s", room, got.Type, got.Payload, want)
		}
	}
}

// The single binary with an auth flag is not in dev mode: ?user= means
// nothing and a token is needed.
func TestSingleBinaryWithAuthIsNotDevMode(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("single-binary-secret-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, "edge", "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--jwt-secret-file", secretFile)
	m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	if strings.Contains(p.Log(), "dev mode") {
		t.Fatalf("dev mode announced:\n%s", p.Log())
	}
	if _, err := wstest.DialErr(wstest.WSURL(m[1], m[2])+"?user=alice", nil); err == nil {
		t.Fatal("?user= admitted without a token")
	}
}
