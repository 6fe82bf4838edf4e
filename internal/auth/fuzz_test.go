package auth_test

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v3/jwa"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
)

// fuzzRSAKey and fuzzSecret are fixed, unlike the keys of the other tests,
// so that a corpus entry means the same in every run. They sign nothing
// but test tokens.
const fuzzRSAKey = `-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDCaG3jQR9rdkUR
Wf+lNMQCYgel1QTX4Xiy7hO2w6H4OOuQdUjqQn6NQc2k4aIvW7gqz9XTzoq+r4Gy
lteNYOMulAz1wCrfMlc9RA2Fm64kY8r0hVKX+UQl0SIsvs6CmGNbV515U41AWZdi
DjZFea6BMo6SlLMBmXzHKfIWVR8qPf/zhLr6SjCnIZfR8lr5e3p+J3qGfuVvGUMt
dUd0D8aJ4vLTfquKY6Mqenh4oh0xaTdAbOPo8bcO1KuoXx6GroLKNkI5XN5rmal7
v9rOE+m4BMSrPOKnoOmkX7Fmo6B+fGgMdIJ6utugC0zsc4iVFZvzdAv13mev7vhJ
HevCQ4ZFAgMBAAECggEAARXRSZU5Xj65kNdYKL1c9hxaY7ZkF42ZAF3K0OFX60fr
srdbEsbKSzJvf9RsKTEEZ4LG0VHM0eJ0hFK4vXQA7+1UsUfdc/J24SkyNGZ66v5+
ncqvAgHau7za4LuoNwzqCliP1tHW97jsrFf6MYjdMomSGSEl9mQHKE+NPvmfiHtY
vqdxVlu6+xLpls1lJZPhEk4+VWJAk7AKEUmesgKD5SXRy0r8G0iSye8wleiaehQp
P2D0fRN5IHlaa6z73KLC5NcWyvNehWNL9vqddRCT/3wAEqiVlMv0Zmv8xv9STR/M
gxRxJCafagdM48lXzP7NiTZaYhAGJSZlHnrBGwCxIQKBgQD98pzBs+dnIf38z05M
0w7ChzT7vehsluJl3Xf/8uKKduAbQb8el7w7As+x4t9tdjopOFnEowezSpi41hw2
Oh1e7wr8Ms2z803pzef7oqdz7mpuOKJBR2m0SKeGAMyJtEst+cZCdFt3ruo05cVO
Mh8dfK+jwh9o16v67o0vEJeFZQKBgQDD+qLc3gLPcilL2dv1zgvTNJNr8bO/CY+y
w6b3c1ouXNgqbYgNxR+OOQRYv+Zj/4Ektsbkyi3gXsyV+MyK5KVxrk0SLxhvAmck
dUAJgaDNd8vKIWrlHOsZbC3HwbGaILecum6buT8TlitwzYDbkjw9uch1lp69pUM7
FXkwIhvfYQKBgQCD9ncPEXXGWhuqK+/8bBDXdXtK9jy5cQ7k8FlTX9vpKCz8/QVb
2G2wHJ3hSovgTfebQ/UiAbYWrUT/iAPRChIJKx8CP0Q1ptFuFdnfIX7y94nHDRcD
5SBA1yB2uiOPy2jl0037aou9fd+m7V/CarlQkWKULmQ0Dx8Hnr8vHegfIQKBgFyl
sjSD6AQ1zfwDxA6SF9kC8+aF3xmi5YH3KIm2yJ0+WxrDqRwJYn+TyNBD+CCx+1Vl
6uTiB4oYhtMnSVsn+Gajpd/Az+Y61pPPsjRMSb6YsYie/6/MWgAsuf/DO7jHWsYH
BJ8tlfomdebf39jtavkrSO7+A5FX/U6DOkVc+pxBAoGAAT/d9mKJ5kKK3vPBYjpU
ryy1a3W/501Ol3dLXrjN6mSR5P7+Fsn8lLxKVnRgjCwJ/A35GJIZxRA80Z9KpXE7
iqhnxQAvn4W8kEgB8xLo86t0WFD/ZcDRUt0PemPNHMnIj+CRX9EyqtNIGbjKu8Hb
mpU70c9LiMIjTPBQHB8W9J0=
-----END PRIVATE KEY-----`

var fuzzSecret = []byte("natter fuzz secret, 32 bytes or more")

func fuzzKeys(f *testing.F) *rsa.PrivateKey {
	f.Helper()
	b, _ := pem.Decode([]byte(fuzzRSAKey))
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	return k.(*rsa.PrivateKey)
}

// FuzzVerify feeds arbitrary tokens to a verifier holding an HS256 secret
// and an RSA key. It must never panic, refuse with anything but an
// ErrUnauthenticated refusal, or accept a token that an independent check
// (strict base64url, the header's alg, crypto/hmac or crypto/rsa over the
// exact signing input) does not find signed by one of the keys; what it
// accepts must carry the user of its payload, a valid id.
func FuzzVerify(f *testing.F) {
	priv := fuzzKeys(f)
	v, err := auth.NewJWT(context.Background(), auth.JWTConfig{
		HMACSecret: fuzzSecret,
		PublicKeys: []crypto.PublicKey{&priv.PublicKey},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(v.Close)

	// Far-future expiry: the corpus stays valid.
	valid := claims{"sub": "alice", "exp": time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), "rooms": []any{"lobby", "team-*"}}
	hs := sign(f, jwa.HS256(), fuzzSecret, "", valid)
	rs := sign(f, jwa.RS256(), priv, "k1", valid)
	seeds := []string{
		hs, rs,
		sign(f, jwa.HS256(), fuzzSecret, "", valid.with("sub", "a.b")),
		sign(f, jwa.HS256(), fuzzSecret, "", valid.with("rooms", "lobby")),
		sign(f, jwa.HS256(), fuzzSecret, "", valid.with("exp", nil)),
		handMade(f, map[string]any{"alg": "none", "typ": "JWT"}, valid, nil),
		unsigned(f, valid),
		handMade(f, map[string]any{"alg": "none"}, valid, hmacWith(fuzzSecret)),
		handMade(f, map[string]any{"alg": "HS512"}, valid, hmacWith(fuzzSecret)),
		handMade(f, map[string]any{"alg": "RS256"}, valid, hmacWith(fuzzSecret)),
		handMade(f, map[string]any{"alg": "HS256", "crit": []string{"x"}, "x": 1}, valid, hmacWith(fuzzSecret)),
		handMadeRaw(f, map[string]any{"alg": "HS256", "cty": "JWT"}, []byte(unsigned(f, valid)), hmacWith(fuzzSecret)),
		tamper(f, hs, valid.with("sub", "mallory")),
		hs + "=", hs + "\n", " " + hs, jsonSerialized(f, hs),
		"", ".", "..", "...", "e30.e30.", "a.b.c",
	}
	for _, b := range publicBytes(f, &priv.PublicKey) {
		seeds = append(seeds, handMade(f, map[string]any{"alg": "HS256"}, valid, hmacWith(b)))
	}
	for _, tok := range []string{hs, rs} {
		for _, n := range []int{1, 10, len(tok) / 2, strings.IndexByte(tok, '.'), strings.LastIndexByte(tok, '.'), len(tok) - 1} {
			seeds = append(seeds, tok[:n])
		}
	}
	for _, s := range seeds {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err != nil {
			var e *auth.Error
			if !errors.As(err, &e) || !errors.Is(err, auth.ErrUnauthenticated) || e.Reason == "" || id != nil {
				t.Fatalf("refusal %v (identity %v) is not an ErrUnauthenticated refusal", err, id)
			}
			return
		}
		user, why := signedBy(token, &priv.PublicKey)
		if why != "" {
			t.Fatalf("accepted %q: %s", token, why)
		}
		if id.User != user || envelope.ValidateID(id.User) != nil {
			t.Fatalf("accepted %q as user %q; payload says %q", token, id.User, user)
		}
		if err := auth.ValidatePatterns(id.Rooms); err != nil {
			t.Fatalf("accepted %q with rooms %q: %v", token, id.Rooms, err)
		}
	})
}

// signedBy checks on its own, without jwx, that token is a compact JWS
// signed with HS256 by fuzzSecret or RS256 by pub, and returns the sub of
// its payload; why says what is wrong otherwise.
func signedBy(token string, pub *rsa.PublicKey) (user, why string) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", "not three segments"
	}
	var seg [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return "", "segment " + p + " is not canonical base64url"
		}
		seg[i] = b
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(seg[0], &hdr); err != nil {
		return "", "header: " + err.Error()
	}
	input := []byte(parts[0] + "." + parts[1])
	switch hdr.Alg {
	case "HS256":
		m := hmac.New(sha256.New, fuzzSecret)
		m.Write(input)
		if !hmac.Equal(m.Sum(nil), seg[2]) {
			return "", "HS256 signature does not verify"
		}
	case "RS256":
		sum := sha256.Sum256(input)
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], seg[2]); err != nil {
			return "", "RS256 signature does not verify"
		}
	default:
		return "", "header alg " + hdr.Alg
	}
	var c struct {
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(seg[1], &c); err != nil {
		return "", "payload: " + err.Error()
	}
	return c.Sub, ""
}

// FuzzNewHandshake feeds arbitrary Authorization, Sec-WebSocket-Protocol,
// Cookie and query values to NewHandshake. It must never panic; a token is
// found exactly when a source is named; and each source's token is what
// that source holds: a subprotocol token in particular is never empty and
// never holds whitespace, a comma or another separator.
func FuzzNewHandshake(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "", "", "")
	f.Add("bearer  x ", "natter, bearer.t", "natter_token=c", "token=q")
	f.Add("Basic dXNlcjpwdw==", "natter, bearer.a b", "", "")
	f.Add("", "bearer.a,b", "natter_token=", "token=")
	f.Add("", "natter, bearer.", "a=1; natter_token=x y", "token=%20q&token=r")
	f.Add("", "bearer.\t, bearer.ok", "", "")
	f.Add("", "", "natter_token=\"quoted\"", "token=a%2Cb")
	f.Add("Bearer", "Bearer.x", "NATTER_TOKEN=x", "TOKEN=x")
	f.Fuzz(func(t *testing.T, authorization, protocol, cookie, query string) {
		r := &http.Request{
			Method:     http.MethodGet,
			URL:        &url.URL{Path: "/ws", RawQuery: query},
			Header:     http.Header{},
			RemoteAddr: "192.0.2.1:1234",
		}
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		if protocol != "" {
			r.Header.Set("Sec-WebSocket-Protocol", protocol)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		h := auth.NewHandshake(r, auth.TokenSources{})
		if (h.Token == "") != (h.TokenFrom == auth.SourceNone) {
			t.Fatalf("token %q from %q", h.Token, h.TokenFrom)
		}
		var bearer string // the Authorization header's token, if it has one
		if scheme, rest, ok := strings.Cut(authorization, " "); ok && strings.EqualFold(scheme, "bearer") {
			bearer = strings.TrimSpace(rest)
		}
		var cookieTok string // the first non-empty natter_token cookie
		for _, c := range r.Cookies() {
			if c.Name == "natter_token" && c.Value != "" {
				cookieTok = c.Value
				break
			}
		}
		if bearer != "" && h.TokenFrom != auth.SourceHeader {
			t.Fatalf("Authorization %q holds %q, but the token %q came from %q", authorization, bearer, h.Token, h.TokenFrom)
		}
		switch h.TokenFrom {
		case auth.SourceNone:
			if cookieTok != "" || r.URL.Query().Get("token") != "" {
				t.Fatalf("no token found, but cookie %q, query %q", cookie, query)
			}
		case auth.SourceHeader:
			if h.Token != bearer {
				t.Fatalf("header token %q from Authorization %q", h.Token, authorization)
			}
		case auth.SourceSubprotocol:
			if strings.ContainsFunc(h.Token, func(r rune) bool {
				return unicode.IsSpace(r) || r == ',' || r >= utf8.RuneSelf || strings.ContainsRune("()<>@;:\\\"/[]?={}", r)
			}) {
				t.Fatalf("subprotocol token %q from %q", h.Token, protocol)
			}
			if !strings.Contains(protocol, auth.SubprotocolPrefix+h.Token) {
				t.Fatalf("subprotocol token %q not in %q", h.Token, protocol)
			}
		case auth.SourceCookie:
			if h.Token != cookieTok {
				t.Fatalf("cookie token %q; the cookie holds %q", h.Token, cookieTok)
			}
		case auth.SourceQuery:
			if cookieTok != "" {
				t.Fatalf("query token %q, but cookie %q holds %q", h.Token, cookie, cookieTok)
			}
			if got := r.URL.Query().Get("token"); got != h.Token {
				t.Fatalf("query token %q; query says %q", h.Token, got)
			}
		default:
			t.Fatalf("unknown source %q", h.TokenFrom)
		}
	})
}

// FuzzOriginsCheck compares Origins.Check with one allowed pattern against
// a regular expression in which '*' is [^/]* and all else literal, or the
// edge's own origin (the request's Host), which is always allowed.
func FuzzOriginsCheck(f *testing.F) {
	f.Add("https://*.example.com", "https://a.example.com")
	f.Add("https://*.example.com", "https://example.com.evil.example")
	f.Add("http://[::1]:3000", "http://[::1]:3000")
	f.Add("http://localhost:*", "http://localhost:3000")
	f.Add("*", "null")
	f.Add("https://a*b*c.example", "https://aXbYbZc.example")
	f.Add("HTTPS://APP.example.com", "https://app.EXAMPLE.com")
	f.Fuzz(func(t *testing.T, pattern, origin string) {
		if origin == "" || !utf8.ValidString(pattern) || !utf8.ValidString(origin) {
			return
		}
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/ws"}, Host: "edge.example", Header: http.Header{}}
		r.Header.Set("Origin", origin)
		got := auth.Origins{Allowed: []string{pattern}}.Check(r) == nil

		want := false
		if u, err := url.Parse(origin); err == nil && u.Host != "" {
			norm := strings.ToLower(u.Scheme + "://" + u.Host)
			re := "^" + strings.ReplaceAll(regexp.QuoteMeta(strings.ToLower(pattern)), `\*`, `[^/]*`) + "$"
			want = pattern == "*" || regexp.MustCompile("(?s)"+re).MatchString(norm) || strings.EqualFold(u.Host, r.Host)
		}
		if got != want {
			t.Fatalf("Check(Allowed: %q, Origin: %q) allowed = %v; want %v", pattern, origin, got, want)
		}
	})
}
