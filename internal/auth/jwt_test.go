package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/testenv"
)

// testKeys holds one signing key of each type the verifiers trust, and a
// second one of each type that they do not.
type testKeys struct {
	hs, hs2   []byte
	rsa, rsa2 *rsa.PrivateKey
	ec, ec2   *ecdsa.PrivateKey
	ed, ed2   ed25519.PrivateKey
}

// keys are generated once per test binary: RSA generation is slow under
// -race, and every test and fuzz target uses the same ones.
var keys = sync.OnceValue(func() *testKeys {
	k := &testKeys{hs: make([]byte, 32), hs2: make([]byte, 32)}
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	_, err := rand.Read(k.hs)
	must(err)
	_, err = rand.Read(k.hs2)
	must(err)
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.ed2, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
})

// claims are a token's claims; times are time.Time.
type claims map[string]any

// with returns a copy of c with the claims of kv (name, value, ...) set, or
// removed when the value is nil.
func (c claims) with(kv ...any) claims {
	out := make(claims, len(c))
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
			continue
		}
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// expiry is the exp of the valid tokens, whole seconds as JWT carries it.
var expiry = time.Now().Add(time.Hour).Truncate(time.Second)

// validClaims are claims every verifier of these tests accepts.
func validClaims(user string) claims {
	return claims{"sub": user, "exp": expiry, "rooms": []any{"lobby", "team-*"}}
}

// sign signs c with jwx; kid, unless "", is set in the protected header.
func sign(t testing.TB, alg jwa.SignatureAlgorithm, key any, kid string, c claims) string {
	t.Helper()
	tok := jwt.New()
	for k, v := range c {
		if err := tok.Set(k, v); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	var sub []jwt.Option
	if kid != "" {
		h := jws.NewHeaders()
		if err := h.Set(jws.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
		sub = append(sub, jws.WithProtectedHeaders(h))
	}
	b, err := jwt.Sign(tok, jwt.WithKey(alg, key, sub...))
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return string(b)
}

// segment is the base64url JSON of v, a compact JWS segment.
func segment(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// jsonClaims turns times into NumericDates, as a JWT carries them.
func jsonClaims(c claims) map[string]any {
	out := make(map[string]any, len(c))
	for k, v := range c {
		if tm, ok := v.(time.Time); ok {
			v = tm.Unix()
		}
		out[k] = v
	}
	return out
}

// handMade builds a compact token by hand: header and claims as given, and
// the signature sig computes over the signing input (none: empty).
func handMade(t testing.TB, header map[string]any, c claims, sig func(input string) []byte) string {
	t.Helper()
	input := segment(t, header) + "." + segment(t, jsonClaims(c))
	var s []byte
	if sig != nil {
		s = sig(input)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(s)
}

// handMadeRaw is handMade with a payload of any bytes.
func handMadeRaw(t testing.TB, header map[string]any, payload []byte, sig func(input string) []byte) string {
	t.Helper()
	input := segment(t, header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	return input + "." + base64.RawURLEncoding.EncodeToString(sig(input))
}

// hmacWith signs with HMAC-SHA256 under secret: HS256 whatever the header
// says.
func hmacWith(secret []byte) func(string) []byte {
	return func(input string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(input))
		return m.Sum(nil)
	}
}

// publicBytes are the encodings of an RSA public key an attacker would try
// as an HMAC secret: PKIX PEM, PKCS#1 PEM and PKIX DER.
func publicBytes(t testing.TB, pub *rsa.PublicKey) map[string][]byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"PKIX PEM":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"PKCS1 PEM": pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(pub)}),
		"PKIX DER":  der,
	}
}

// tamper replaces the payload of a compact token, keeping its header and
// signature.
func tamper(t testing.TB, token string, c claims) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact token: %q", token)
	}
	return parts[0] + "." + segment(t, jsonClaims(c)) + "." + parts[2]
}

func newJWT(t testing.TB, cfg auth.JWTConfig) *auth.JWT {
	t.Helper()
	v, err := auth.NewJWT(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewJWT: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// wantRefusal checks err is a refusal of kind with reason.
func wantRefusal(t testing.TB, err error, kind error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want %v (%q)", kind, reason)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("err = %v; want %v", err, kind)
	}
	if got := auth.Reason(err); got != reason {
		t.Fatalf("reason = %q; want %q (err %v)", got, reason, err)
	}
}

func wantIdentity(t testing.TB, got *auth.Identity, err error, want auth.Identity) {
	t.Helper()
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	if got.User != want.User || !slices.Equal(got.Rooms, want.Rooms) || !got.Expires.Equal(want.Expires) {
		t.Fatalf("identity = %+v; want %+v", *got, want)
	}
}

func TestNewJWTConfig(t *testing.T) {
	t.Parallel()
	k := keys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  auth.JWTConfig
		ok   bool
	}{
		{"no key source", auth.JWTConfig{}, false},
		{"secret shorter than 32 bytes", auth.JWTConfig{HMACSecret: make([]byte, 31)}, false},
		{"secret of 32 bytes", auth.JWTConfig{HMACSecret: k.hs}, true},
		{"RSA 1024", auth.JWTConfig{PublicKeys: []crypto.PublicKey{&small.PublicKey}}, false},
		{"RSA 2048", auth.JWTConfig{PublicKeys: []crypto.PublicKey{&k.rsa.PublicKey}}, true},
		{"P-384", auth.JWTConfig{PublicKeys: []crypto.PublicKey{&p384.PublicKey}}, false},
		{"private key instead of public", auth.JWTConfig{PublicKeys: []crypto.PublicKey{k.rsa}}, false},
		{"Ed25519", auth.JWTConfig{PublicKeys: []crypto.PublicKey{k.ed.Public()}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := auth.NewJWT(context.Background(), tc.cfg)
			if tc.ok {
				if err != nil {
					t.Fatalf("NewJWT: %v", err)
				}
				v.Close()
				return
			}
			if !errors.Is(err, auth.ErrInvalidConfig) {
				t.Fatalf("err = %v; want ErrInvalidConfig", err)
			}
		})
	}
}

func TestJWTVerify(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	all := newJWT(t, auth.JWTConfig{
		HMACSecret: k.hs,
		PublicKeys: []crypto.PublicKey{&k.rsa.PublicKey, &k.ec.PublicKey, k.ed.Public()},
	})
	rsaOnly := newJWT(t, auth.JWTConfig{PublicKeys: []crypto.PublicKey{&k.rsa.PublicKey}})
	hsOnly := newJWT(t, auth.JWTConfig{HMACSecret: k.hs})
	issAud := newJWT(t, auth.JWTConfig{HMACSecret: k.hs, Issuer: "https://issuer.example", Audience: "natter"})
	custom := newJWT(t, auth.JWTConfig{HMACSecret: k.hs, UserClaim: "uid", RoomsClaim: "grants"})

	valid := validClaims("alice")
	alice := auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expiry}
	hs := func(c claims) string { return sign(t, jwa.HS256(), k.hs, "", c) }
	now := time.Now()

	type tcase struct {
		name   string
		v      *auth.JWT
		token  string
		want   *auth.Identity // nil: refused
		kind   error
		reason string
	}
	ok := func(name string, v *auth.JWT, token string, want auth.Identity) tcase {
		return tcase{name: name, v: v, token: token, want: &want}
	}
	no := func(name string, v *auth.JWT, token string, reason string) tcase {
		return tcase{name: name, v: v, token: token, kind: auth.ErrUnauthenticated, reason: reason}
	}
	cases := []tcase{
		ok("HS256", all, hs(valid), alice),
		ok("RS256", all, sign(t, jwa.RS256(), k.rsa, "", valid), alice),
		ok("ES256", all, sign(t, jwa.ES256(), k.ec, "", valid), alice),
		ok("EdDSA", all, sign(t, jwa.EdDSA(), k.ed, "", valid), alice),
		ok("RS256 to an RSA-only verifier", rsaOnly, sign(t, jwa.RS256(), k.rsa, "", valid), alice),
		ok("HS256 to an HS-only verifier", hsOnly, hs(valid), alice),
		ok("no rooms claim", all, hs(valid.with("rooms", nil)), auth.Identity{User: "alice", Expires: expiry}),
		ok("empty rooms claim", all, hs(valid.with("rooms", []any{})), auth.Identity{User: "alice", Expires: expiry}),
		ok("user id of 128 characters", all, hs(valid.with("sub", strings.Repeat("u", 128))),
			auth.Identity{User: strings.Repeat("u", 128), Rooms: alice.Rooms, Expires: expiry}),

		// Time.
		no("expired", all, hs(valid.with("exp", now.Add(-time.Minute))), "token expired"),
		ok("expired within leeway", all, hs(valid.with("exp", now.Add(-2*time.Second).Truncate(time.Second))),
			auth.Identity{User: "alice", Rooms: alice.Rooms, Expires: now.Add(-2 * time.Second).Truncate(time.Second)}),
		no("not yet valid", all, hs(valid.with("nbf", now.Add(time.Minute))), "invalid token"),
		ok("not yet valid within leeway", all, hs(valid.with("nbf", now.Add(2*time.Second))), alice),
		no("issued in the future", all, hs(valid.with("iat", now.Add(time.Minute))), "invalid token"),

		// Signatures.
		no("HS256 by another secret", all, sign(t, jwa.HS256(), k.hs2, "", valid), "invalid token"),
		no("RS256 by another key", all, sign(t, jwa.RS256(), k.rsa2, "", valid), "invalid token"),
		no("ES256 by another key", all, sign(t, jwa.ES256(), k.ec2, "", valid), "invalid token"),
		no("EdDSA by another key", all, sign(t, jwa.EdDSA(), k.ed2, "", valid), "invalid token"),
		no("HS256 payload tampered", all, tamper(t, hs(valid), validClaims("mallory")), "invalid token"),
		no("RS256 payload tampered", all, tamper(t, sign(t, jwa.RS256(), k.rsa, "", valid), validClaims("mallory")), "invalid token"),
		no("ES256 payload tampered", rsaOnly, tamper(t, sign(t, jwa.ES256(), k.ec, "", valid), validClaims("mallory")), "invalid token"),
		no("signature stripped", all, strings.Join(strings.Split(hs(valid), ".")[:2], ".")+".", "invalid token"),

		// Algorithms.
		no("alg none, hand-made", all, handMade(t, map[string]any{"alg": "none", "typ": "JWT"}, valid, nil), "invalid token"),
		no("alg none, hand-made, HS-only verifier", hsOnly, handMade(t, map[string]any{"alg": "none", "typ": "JWT"}, valid, nil), "invalid token"),
		no("alg none, hand-made, RSA-only verifier", rsaOnly, handMade(t, map[string]any{"alg": "none", "typ": "JWT"}, valid, nil), "invalid token"),
		no("alg None, hand-made", all, handMade(t, map[string]any{"alg": "None"}, valid, nil), "invalid token"),
		no("alg none, jwx WithInsecureNoSignature", all, unsigned(t, valid), "invalid token"),
		no("no alg in the header", all, handMade(t, map[string]any{"typ": "JWT"}, valid, hmacWith(k.hs)), "invalid token"),
		no("RS256 to an HS-only verifier", hsOnly, sign(t, jwa.RS256(), k.rsa, "", valid), "invalid token"),
		no("ES256 to an RSA-only verifier", rsaOnly, sign(t, jwa.ES256(), k.ec, "", valid), "invalid token"),
		no("EdDSA to an RSA-only verifier", rsaOnly, sign(t, jwa.EdDSA(), k.ed, "", valid), "invalid token"),
		no("HS256 to an RSA-only verifier", rsaOnly, hs(valid), "invalid token"),
		// The header names an algorithm other than the one the signature
		// was made with; the verifier must not use its own guess instead.
		no("header alg none, valid HS256 signature", all, handMade(t, map[string]any{"alg": "none"}, valid, hmacWith(k.hs)), "invalid token"),
		no("header alg HS512, HS256 signature", all, handMade(t, map[string]any{"alg": "HS512"}, valid, hmacWith(k.hs)), "invalid token"),
		no("header alg RS256, HS256 signature", all, handMade(t, map[string]any{"alg": "RS256"}, valid, hmacWith(k.hs)), "invalid token"),
		no("header alg HS512, HS256 signature, HS-only verifier", hsOnly, handMade(t, map[string]any{"alg": "HS512"}, valid, hmacWith(k.hs)), "invalid token"),

		// Signed by the secret, but not a plain JWT.
		no("payload a nested unsigned token", all, handMadeRaw(t, map[string]any{"alg": "HS256", "cty": "JWT"},
			[]byte(unsigned(t, validClaims("mallory"))), hmacWith(k.hs)), "invalid token"),
		no("payload a JWS JSON serialization of an unsigned token", all, handMadeRaw(t, map[string]any{"alg": "HS256"},
			[]byte(jsonSerialized(t, unsigned(t, validClaims("mallory")))), hmacWith(k.hs)), "token lacks a required claim"),
		no("payload not JSON", all, handMadeRaw(t, map[string]any{"alg": "HS256"}, []byte("hello"), hmacWith(k.hs)), "invalid token"),
		no("payload a JSON array", all, handMadeRaw(t, map[string]any{"alg": "HS256"}, []byte(`["sub"]`), hmacWith(k.hs)), "invalid token"),
		no("unknown crit extension", all, handMade(t, map[string]any{"alg": "HS256", "crit": []string{"x-natter"}, "x-natter": 1}, valid, hmacWith(k.hs)), "invalid token"),
		no("b64 false", all, handMade(t, map[string]any{"alg": "HS256", "crit": []string{"b64"}, "b64": false}, valid, hmacWith(k.hs)), "invalid token"),

		// Claims.
		no("no exp", all, hs(valid.with("exp", nil)), "token lacks a required claim"),
		no("no sub", all, hs(valid.with("sub", nil)), "token lacks a required claim"),
		no("sub not a string", all, handMade(t, map[string]any{"alg": "HS256"}, valid.with("sub", 42), hmacWith(k.hs)), "invalid token"),
		no("sub a.b", all, hs(valid.with("sub", "a.b")), "invalid user id in token"),
		no("sub *", all, hs(valid.with("sub", "*")), "invalid user id in token"),
		no("sub >", all, hs(valid.with("sub", ">")), "invalid user id in token"),
		no("sub empty", all, hs(valid.with("sub", "")), "invalid user id in token"),
		no("sub with a space", all, hs(valid.with("sub", "a b")), "invalid user id in token"),
		no("sub of 200 characters", all, hs(valid.with("sub", strings.Repeat("u", 200))), "invalid user id in token"),
		no("rooms a string", all, hs(valid.with("rooms", "lobby")), "invalid rooms claim"),
		no("rooms an object", all, hs(valid.with("rooms", map[string]any{"lobby": true})), "invalid rooms claim"),
		no("rooms with a number", all, hs(valid.with("rooms", []any{"lobby", 7})), "invalid rooms claim"),
		no("rooms with null", all, hs(valid.with("rooms", []any{"lobby", nil})), "invalid rooms claim"),
		no("rooms with a bad pattern", all, hs(valid.with("rooms", []any{"team-["})), "invalid rooms claim"),
		no("rooms with an empty pattern", all, hs(valid.with("rooms", []any{""})), "invalid rooms claim"),
		no("rooms with a slash", all, hs(valid.with("rooms", []any{"a/b"})), "invalid rooms claim"),

		// Custom claims.
		ok("custom user and rooms claims", custom, hs(valid.with("uid", "bob", "grants", []any{"r1"})),
			auth.Identity{User: "bob", Rooms: []string{"r1"}, Expires: expiry}),
		no("custom user claim absent", custom, hs(valid), "token lacks a required claim"),
		no("custom user claim invalid", custom, hs(valid.with("uid", "b*b")), "invalid user id in token"),

		// Issuer and audience.
		ok("issuer and audience match", issAud, hs(valid.with("iss", "https://issuer.example", "aud", []string{"natter"})), alice),
		ok("audience among others", issAud, hs(valid.with("iss", "https://issuer.example", "aud", []string{"other", "natter"})), alice),
		no("issuer mismatch", issAud, hs(valid.with("iss", "https://evil.example", "aud", []string{"natter"})), "invalid token"),
		no("issuer missing", issAud, hs(valid.with("aud", []string{"natter"})), "token lacks a required claim"),
		no("audience mismatch", issAud, hs(valid.with("iss", "https://issuer.example", "aud", []string{"other"})), "invalid token"),
		no("audience missing", issAud, hs(valid.with("iss", "https://issuer.example")), "token lacks a required claim"),

		// Shape.
		no("empty", all, "", "invalid token"),
		no("garbage", all, "not a token", "invalid token"),
		no("two segments", all, "a.b", "invalid token"),
		no("JSON serialization", all, jsonSerialized(t, hs(valid)), "invalid token"),
		no("signature padded", all, hs(valid)+"=", "invalid token"),
		no("signature in the standard alphabet", all, stdAlphabet(t, func(i int) string { return hs(valid.with("jti", fmt.Sprint(i))) }), "invalid token"),
		no("signature with non-zero trailing bits", all, flipTrailingBit(hs(valid)), "invalid token"),
		no("line break in the signature", all, insertAt(hs(valid), len(hs(valid))-5, "\n"), "invalid token"),
		no("leading space", all, " "+hs(valid), "invalid token"),
		no("trailing newline", all, hs(valid)+"\n", "invalid token"),
		no("four segments", all, hs(valid)+".e30", "invalid token"),
		no("oversized", all, hs(valid.with("pad", strings.Repeat("x", auth.MaxTokenSize))), "invalid token"),
	}
	// The classic algorithm confusion: HS256 with the RSA public key as the
	// secret, to a verifier that holds only that public key, and to one that
	// holds it and a secret.
	for enc, b := range publicBytes(t, &k.rsa.PublicKey) {
		tok := handMade(t, map[string]any{"alg": "HS256", "typ": "JWT"}, valid, hmacWith(b))
		cases = append(cases,
			no("HS256 with the RSA public key as secret ("+enc+"), RSA-only verifier", rsaOnly, tok, "invalid token"),
			no("HS256 with the RSA public key as secret ("+enc+"), all keys", all, tok, "invalid token"))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.v.Verify(ctx, tc.token)
			if tc.want != nil {
				wantIdentity(t, id, err, *tc.want)
				return
			}
			wantRefusal(t, err, tc.kind, tc.reason)
			if id != nil {
				t.Fatalf("refusal with an identity %+v", id)
			}
		})
	}
}

// stdAlphabet returns the first token make(i) makes whose signature has a
// '-' or '_', with the signature in the standard base64 alphabet instead.
func stdAlphabet(t testing.TB, make func(i int) string) string {
	t.Helper()
	for i := range 1000 {
		tok := make(i)
		dot := strings.LastIndexByte(tok, '.')
		if sig := tok[dot+1:]; strings.ContainsAny(sig, "-_") {
			return tok[:dot+1] + strings.NewReplacer("-", "+", "_", "/").Replace(sig)
		}
	}
	t.Fatal("no signature with - or _ in 1000 tokens")
	return ""
}

// flipTrailingBit changes the last character of a token whose last segment
// has unused bits (43 characters for the 32 bytes of HS256) so that it
// decodes to the same bytes unless decoded strictly.
func flipTrailingBit(tok string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	return tok[:len(tok)-1] + string(alphabet[last^1])
}

func insertAt(s string, i int, ins string) string { return s[:i] + ins + s[i:] }

// unsigned is a token jwx makes with alg none.
func unsigned(t testing.TB, c claims) string {
	t.Helper()
	tok := jwt.New()
	for k, v := range c {
		if err := tok.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	b, err := jwt.Sign(tok, jwt.WithInsecureNoSignature())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), ".") {
		t.Fatalf("WithInsecureNoSignature made %q, not an unsigned compact token", b)
	}
	return string(b)
}

// jsonSerialized is the flattened JWS JSON serialization of a compact token.
func jsonSerialized(t testing.TB, compact string) string {
	t.Helper()
	p := strings.Split(compact, ".")
	b, err := json.Marshal(map[string]string{"protected": p[0], "payload": p[1], "signature": p[2]})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestJWTAuthenticate(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newJWT(t, auth.JWTConfig{HMACSecret: k.hs})
	ctx := context.Background()
	tok := sign(t, jwa.HS256(), k.hs, "", validClaims("alice"))

	id, err := v.Authenticate(ctx, &auth.Handshake{Token: tok, TokenFrom: auth.SourceHeader})
	wantIdentity(t, id, err, auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expiry})

	_, err = v.Authenticate(ctx, &auth.Handshake{})
	wantRefusal(t, err, auth.ErrUnauthenticated, "missing token")
	if auth.Status(err) != http.StatusUnauthorized {
		t.Fatalf("status = %d", auth.Status(err))
	}

	_, err = v.Authenticate(ctx, &auth.Handshake{Token: "x.y.z", TokenFrom: auth.SourceQuery})
	wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
}

func TestJWTRefresh(t *testing.T) {
	t.Parallel()
	k := keys()
	v := newJWT(t, auth.JWTConfig{HMACSecret: k.hs})
	ctx := context.Background()
	cur := &auth.Identity{User: "alice", Rooms: []string{"lobby"}, Expires: time.Now().Add(time.Minute)}
	later := time.Now().Add(2 * time.Hour).Truncate(time.Second)

	cases := []struct {
		name   string
		token  string
		want   *auth.Identity
		kind   error
		reason string
	}{
		{name: "same user, later expiry, new rooms",
			token: sign(t, jwa.HS256(), k.hs, "", claims{"sub": "alice", "exp": later, "rooms": []any{"lobby", "b"}}),
			want:  &auth.Identity{User: "alice", Rooms: []string{"lobby", "b"}, Expires: later}},
		{name: "another user", token: sign(t, jwa.HS256(), k.hs, "", validClaims("bob")),
			kind: auth.ErrForbidden, reason: "token is for another user"},
		{name: "expired", token: sign(t, jwa.HS256(), k.hs, "", validClaims("alice").with("exp", time.Now().Add(-time.Hour))),
			kind: auth.ErrUnauthenticated, reason: "token expired"},
		{name: "bad signature", token: sign(t, jwa.HS256(), k.hs2, "", validClaims("alice")),
			kind: auth.ErrUnauthenticated, reason: "invalid token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Refresh(ctx, tc.token, cur)
			if tc.want != nil {
				wantIdentity(t, id, err, *tc.want)
				return
			}
			wantRefusal(t, err, tc.kind, tc.reason)
			if tc.kind == auth.ErrForbidden && auth.Status(err) != http.StatusForbidden {
				t.Fatalf("status = %d; want 403", auth.Status(err))
			}
		})
	}
}

// jwksServer serves a JWK set that a test can replace, or fail with 503.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	down    bool
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, down := s.body, s.down
		s.mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// serve makes the server serve the public keys of keys, by kid; alg is set
// when algs has an entry for the kid.
func (s *jwksServer) serve(t *testing.T, keys map[string]crypto.PublicKey, algs map[string]jwa.SignatureAlgorithm) {
	t.Helper()
	set := jwk.NewSet()
	for kid, pub := range keys {
		key, err := jwk.Import(pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := key.Set(jwk.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
		if alg, ok := algs[kid]; ok {
			if err := key.Set(jwk.AlgorithmKey, alg); err != nil {
				t.Fatal(err)
			}
		}
		if err := set.AddKey(key); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body, s.down = b, false
	s.mu.Unlock()
}

func (s *jwksServer) setDown() {
	s.mu.Lock()
	s.down = true
	s.mu.Unlock()
}

// TestJWKSRotation walks a key rotation step by step; each step depends on
// the one before.
func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{"k1": &k.rsa.PublicKey},
		map[string]jwa.SignatureAlgorithm{"k1": jwa.RS256()})
	v := newJWT(t, auth.JWTConfig{JWKSURL: srv.URL, JWKSMinRefresh: time.Millisecond})
	alice := auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expiry}
	k1 := sign(t, jwa.RS256(), k.rsa, "k1", validClaims("alice"))
	k2 := sign(t, jwa.ES256(), k.ec, "k2", validClaims("alice"))
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches after NewJWT = %d; want 1", n)
	}

	t.Run("k1 verifies", func(t *testing.T) {
		id, err := v.Verify(ctx, k1)
		wantIdentity(t, id, err, alice)
	})
	t.Run("known kid does not refetch", func(t *testing.T) {
		if n := srv.fetches.Load(); n != 1 {
			t.Fatalf("fetches = %d; want 1", n)
		}
	})
	t.Run("k1 token without kid verifies", func(t *testing.T) {
		id, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa, "", validClaims("alice")))
		wantIdentity(t, id, err, alice)
	})
	t.Run("k1 token under another kid is refused", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh
		_, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa, "k9", validClaims("alice")))
		wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
	})

	// Rotate: the server now serves only k2.
	srv.serve(t, map[string]crypto.PublicKey{"k2": &k.ec.PublicKey},
		map[string]jwa.SignatureAlgorithm{"k2": jwa.ES256()})
	t.Run("removed k1 still verifies until the set is refreshed", func(t *testing.T) {
		// The verifier cannot know k1 is gone before it fetches again: at
		// the regular refresh (JWKSRefresh) or when a token names a kid
		// it does not hold.
		id, err := v.Verify(ctx, k1)
		wantIdentity(t, id, err, alice)
	})
	t.Run("k2 verifies without restart", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
		before := srv.fetches.Load()
		id, err := v.Verify(ctx, k2)
		wantIdentity(t, id, err, alice)
		if n := srv.fetches.Load(); n != before+1 {
			t.Fatalf("fetches = %d; want %d: the unknown kid refreshes once", n, before+1)
		}
	})
	t.Run("k1 is refused after the refresh", func(t *testing.T) {
		_, err := v.Verify(ctx, k1)
		wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
	})

	// The JWKS server goes down.
	srv.setDown()
	t.Run("known kid verifies while the server is down", func(t *testing.T) {
		id, err := v.Verify(ctx, k2)
		wantIdentity(t, id, err, alice)
	})
	t.Run("unknown kid while the server is down", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
		_, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa2, "k3", validClaims("alice")))
		wantRefusal(t, err, auth.ErrUnavailable, "key set unavailable")
		if auth.Status(err) != http.StatusServiceUnavailable {
			t.Fatalf("status = %d; want 503", auth.Status(err))
		}
	})

	// It comes back with k3.
	srv.serve(t, map[string]crypto.PublicKey{"k2": &k.ec.PublicKey, "k3": &k.rsa2.PublicKey}, nil)
	t.Run("k3 verifies once the server is back", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
		id, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa2, "k3", validClaims("alice")))
		wantIdentity(t, id, err, alice)
	})
}

func TestJWKSRefreshRateLimit(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{"k1": &k.rsa.PublicKey}, nil)
	v := newJWT(t, auth.JWTConfig{JWKSURL: srv.URL, JWKSMinRefresh: time.Hour})
	tok := sign(t, jwa.RS256(), k.rsa2, "unknown", validClaims("alice"))
	for range 20 {
		_, err := v.Verify(ctx, tok)
		wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches = %d; unknown kids within JWKSMinRefresh must not refetch", n)
	}
}

// TestJWKSAlgorithm checks what a key of the set verifies: what it declares,
// or, without alg, what its type implies, and never HMAC with its public
// bytes.
func TestJWKSAlgorithm(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{
		"rsa": &k.rsa.PublicKey, "ec": &k.ec.PublicKey, "ed": k.ed.Public(), "ps": &k.rsa2.PublicKey,
	}, map[string]jwa.SignatureAlgorithm{"ps": jwa.PS256()})
	v := newJWT(t, auth.JWTConfig{JWKSURL: srv.URL, JWKSMinRefresh: time.Hour})
	alice := auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expiry}
	valid := validClaims("alice")

	type tcase struct {
		name  string
		token string
		ok    bool
	}
	cases := []tcase{
		{"RS256 by an RSA key without alg", sign(t, jwa.RS256(), k.rsa, "rsa", valid), true},
		{"ES256 by a P-256 key without alg", sign(t, jwa.ES256(), k.ec, "ec", valid), true},
		{"EdDSA by an Ed25519 key without alg", sign(t, jwa.EdDSA(), k.ed, "ed", valid), true},
		{"PS256 by a key that declares PS256", sign(t, jwa.PS256(), k.rsa2, "ps", valid), true},
		{"RS256 by a key that declares PS256", sign(t, jwa.RS256(), k.rsa2, "ps", valid), false},
		{"RS256 under the kid of an EC key", sign(t, jwa.RS256(), k.rsa, "ec", valid), false},
		{"alg none under an RSA kid", handMade(t, map[string]any{"alg": "none", "kid": "rsa"}, valid, nil), false},
	}
	for enc, b := range publicBytes(t, &k.rsa.PublicKey) {
		cases = append(cases,
			tcase{"HS256 with the public key (" + enc + ") under its kid", handMade(t, map[string]any{"alg": "HS256", "kid": "rsa"}, valid, hmacWith(b)), false},
			tcase{"HS256 with the public key (" + enc + ") without kid", handMade(t, map[string]any{"alg": "HS256"}, valid, hmacWith(b)), false})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(ctx, tc.token)
			if tc.ok {
				wantIdentity(t, id, err, alice)
				return
			}
			wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
		})
	}
}

// TestNewJWTFetchFails checks NewJWT reports a failed first fetch at once,
// not when ctx ends.
func TestNewJWTFetchFails(t *testing.T) {
	t.Parallel()
	down := newJWKSServer(t)
	down.setDown()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("not a key set"))
	}))
	t.Cleanup(garbage.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	cases := []struct{ name, url string }{
		{"server answers 503", down.URL},
		{"server answers garbage", garbage.URL},
		{"nothing listens", closed.URL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			v, err := auth.NewJWT(ctx, auth.JWTConfig{JWKSURL: tc.url})
			if err == nil {
				v.Close()
				t.Fatal("NewJWT succeeded without a key set")
			}
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Fatalf("NewJWT waited for ctx: %v", err)
			}
			t.Log(err)
		})
	}
}

// TestJWKSConcurrentRotation checks that tokens of a new key arriving
// together all wait for the one fetch their key id causes, and none is
// refused while it is in flight.
func TestJWKSConcurrentRotation(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{"k1": &k.rsa.PublicKey}, nil)
	v := newJWT(t, auth.JWTConfig{JWKSURL: srv.URL, JWKSMinRefresh: time.Millisecond})
	srv.serve(t, map[string]crypto.PublicKey{"k2": &k.ec.PublicKey}, nil)
	time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
	tok := sign(t, jwa.ES256(), k.ec, "k2", validClaims("alice"))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			if _, err := v.Verify(ctx, tok); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("refused during rotation: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("fetches = %d; want 2 (start, one refresh)", n)
	}
}

// TestJWTCloseStopsGoroutines checks Close waits for the JWKS refresher.
func TestJWTCloseStopsGoroutines(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{"k1": &k.rsa.PublicKey}, nil)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	base := runtime.NumGoroutine()
	v, err := auth.NewJWT(context.Background(), auth.JWTConfig{JWKSURL: srv.URL, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), sign(t, jwa.RS256(), k.rsa, "k1", validClaims("alice"))); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v.Close() // idempotent
	testenv.GoroutinesSettle(t, base, 0, 5*time.Second)
}

// TestJWKSDownWithConfiguredKeys checks that configured keys keep working
// while the JWKS cannot be fetched, and that HS256 tokens never cause a
// fetch.
func TestJWKSDownWithConfiguredKeys(t *testing.T) {
	t.Parallel()
	k := keys()
	ctx := context.Background()
	srv := newJWKSServer(t)
	srv.serve(t, map[string]crypto.PublicKey{"k1": &k.ec.PublicKey}, nil)
	v := newJWT(t, auth.JWTConfig{
		HMACSecret: k.hs, PublicKeys: []crypto.PublicKey{&k.rsa.PublicKey},
		JWKSURL: srv.URL, JWKSMinRefresh: time.Millisecond,
	})
	alice := auth.Identity{User: "alice", Rooms: []string{"lobby", "team-*"}, Expires: expiry}
	valid := validClaims("alice")
	srv.setDown()
	time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test

	t.Run("HS256 with an unknown kid", func(t *testing.T) {
		before := srv.fetches.Load()
		id, err := v.Verify(ctx, sign(t, jwa.HS256(), k.hs, "x", valid))
		wantIdentity(t, id, err, alice)
		if n := srv.fetches.Load(); n != before {
			t.Fatalf("an HS256 token fetched the JWKS (%d -> %d)", before, n)
		}
	})
	t.Run("RS256 by the configured key, unknown kid", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
		id, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa, "x", valid))
		wantIdentity(t, id, err, alice)
	})
	t.Run("RS256 by another key, unknown kid", func(t *testing.T) {
		time.Sleep(2 * time.Millisecond) // past JWKSMinRefresh: the interval under test
		_, err := v.Verify(ctx, sign(t, jwa.RS256(), k.rsa2, "x", valid))
		wantRefusal(t, err, auth.ErrUnavailable, "key set unavailable")
	})
	t.Run("ES256 by the cached key", func(t *testing.T) {
		id, err := v.Verify(ctx, sign(t, jwa.ES256(), k.ec, "k1", valid))
		wantIdentity(t, id, err, alice)
	})
	t.Run("HS256 by another secret", func(t *testing.T) {
		_, err := v.Verify(ctx, sign(t, jwa.HS256(), k.hs2, "x", valid))
		wantRefusal(t, err, auth.ErrUnauthenticated, "invalid token")
	})
}
