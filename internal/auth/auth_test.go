package auth_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/natter/natter/internal/auth"
)

func TestNewHandshakeTokenSources(t *testing.T) {
	t.Parallel()
	type hdr = map[string][]string
	cases := []struct {
		name   string
		target string // request target; "/ws" if ""
		header hdr
		src    auth.TokenSources
		token  string
		from   auth.Source
	}{
		{name: "none"},
		{name: "Authorization Bearer", header: hdr{"Authorization": {"Bearer abc.def.ghi"}}, token: "abc.def.ghi", from: auth.SourceHeader},
		{name: "Authorization bearer, lower case", header: hdr{"Authorization": {"bearer abc"}}, token: "abc", from: auth.SourceHeader},
		{name: "Authorization BEARER, upper case", header: hdr{"Authorization": {"BEARER abc"}}, token: "abc", from: auth.SourceHeader},
		{name: "Authorization with extra spaces", header: hdr{"Authorization": {"Bearer   abc  "}}, token: "abc", from: auth.SourceHeader},
		{name: "Authorization Basic is no token", header: hdr{"Authorization": {"Basic dXNlcjpwdw=="}}},
		{name: "Authorization Bearer without token", header: hdr{"Authorization": {"Bearer"}}},
		{name: "Authorization Bearer with only spaces", header: hdr{"Authorization": {"Bearer    "}}},
		{name: "Authorization Bearertoken without space", header: hdr{"Authorization": {"Bearerabc"}}},
		{name: "subprotocol", header: hdr{"Sec-Websocket-Protocol": {"natter, bearer.abc.def"}}, token: "abc.def", from: auth.SourceSubprotocol},
		{name: "subprotocol first", header: hdr{"Sec-Websocket-Protocol": {"bearer.abc, natter"}}, token: "abc", from: auth.SourceSubprotocol},
		{name: "subprotocol without spaces", header: hdr{"Sec-Websocket-Protocol": {"natter,bearer.abc"}}, token: "abc", from: auth.SourceSubprotocol},
		{name: "subprotocol in a second header line", header: hdr{"Sec-Websocket-Protocol": {"natter", "bearer.abc"}}, token: "abc", from: auth.SourceSubprotocol},
		{name: "subprotocol natter only", header: hdr{"Sec-Websocket-Protocol": {"natter"}}},
		{name: "subprotocol empty token", header: hdr{"Sec-Websocket-Protocol": {"natter, bearer."}}},
		{name: "subprotocol token with a space", header: hdr{"Sec-Websocket-Protocol": {"natter, bearer.a b"}}},
		{name: "subprotocol token with a separator", header: hdr{"Sec-Websocket-Protocol": {"natter, bearer.a;b"}}},
		{name: "subprotocol Bearer. is case-sensitive", header: hdr{"Sec-Websocket-Protocol": {"natter, Bearer.abc"}}},
		{name: "bad subprotocol token, then a good one", header: hdr{"Sec-Websocket-Protocol": {"bearer.a\tb, bearer.good"}}, token: "good", from: auth.SourceSubprotocol},
		{name: "cookie", header: hdr{"Cookie": {"other=1; natter_token=abc"}}, token: "abc", from: auth.SourceCookie},
		{name: "cookie empty", header: hdr{"Cookie": {"natter_token="}}},
		{name: "cookie custom name", header: hdr{"Cookie": {"natter_token=no; sid=abc"}}, src: auth.TokenSources{Cookie: "sid"}, token: "abc", from: auth.SourceCookie},
		{name: "query", target: "/ws?token=abc", token: "abc", from: auth.SourceQuery},
		{name: "query escaped", target: "/ws?token=a%2Bb", token: "a+b", from: auth.SourceQuery},
		{name: "query custom name", target: "/ws?token=no&jwt=abc", src: auth.TokenSources{Query: "jwt"}, token: "abc", from: auth.SourceQuery},
		{name: "query empty", target: "/ws?token="},
		{name: "header before subprotocol, cookie and query", target: "/ws?token=q",
			header: hdr{"Authorization": {"Bearer h"}, "Sec-Websocket-Protocol": {"natter, bearer.s"}, "Cookie": {"natter_token=c"}},
			token:  "h", from: auth.SourceHeader},
		{name: "subprotocol before cookie and query", target: "/ws?token=q",
			header: hdr{"Sec-Websocket-Protocol": {"natter, bearer.s"}, "Cookie": {"natter_token=c"}},
			token:  "s", from: auth.SourceSubprotocol},
		{name: "cookie before query", target: "/ws?token=q", header: hdr{"Cookie": {"natter_token=c"}}, token: "c", from: auth.SourceCookie},
		{name: "empty header falls through to the cookie",
			header: hdr{"Authorization": {"Bearer "}, "Cookie": {"natter_token=c"}}, token: "c", from: auth.SourceCookie},
		{name: "Basic header falls through to the query", target: "/ws?token=q",
			header: hdr{"Authorization": {"Basic x"}}, token: "q", from: auth.SourceQuery},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target
			if target == "" {
				target = "/ws"
			}
			r := httptest.NewRequest(http.MethodGet, target, nil)
			for k, vs := range tc.header {
				for _, v := range vs {
					r.Header.Add(k, v)
				}
			}
			h := auth.NewHandshake(r, tc.src)
			if h.Token != tc.token || h.TokenFrom != tc.from {
				t.Fatalf("token %q from %q; want %q from %q", h.Token, h.TokenFrom, tc.token, tc.from)
			}
		})
	}
}

func TestNewHandshakeRequest(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodGet, "/ws/app?room=a&room=b", nil)
	r.RemoteAddr = "192.0.2.7:4711"
	r.Header.Set("X-Tenant", "acme")
	r.Header.Set("Cookie", "a=1; b=2")
	h := auth.NewHandshake(r, auth.TokenSources{})
	if h.Path != "/ws/app" || h.RemoteAddr != "192.0.2.7:4711" || h.Header.Get("X-Tenant") != "acme" {
		t.Fatalf("handshake %+v", h)
	}
	if got := h.Query["room"]; len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("query %v", h.Query)
	}
	if len(h.Cookies) != 2 || h.Cookies[0].Name != "a" || h.Cookies[1].Value != "2" {
		t.Fatalf("cookies %v", h.Cookies)
	}
	if h.Token != "" || h.TokenFrom != auth.SourceNone {
		t.Fatalf("token %q from %q", h.Token, h.TokenFrom)
	}
}

func TestRemoteIP(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"192.0.2.7:4711", "192.0.2.7"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"no-port", "no-port"},
		{"", ""},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			if got := auth.RemoteIP(tc.in); got != tc.want {
				t.Fatalf("RemoteIP(%q) = %q; want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestGrants(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		patterns []string
		room     string
		want     bool
	}{
		{"no patterns", nil, "lobby", false},
		{"exact", []string{"lobby"}, "lobby", true},
		{"exact, other room", []string{"lobby"}, "lobby2", false},
		{"star is every room", []string{"*"}, "anything-at_all", true},
		{"family", []string{"team-42-*"}, "team-42-dev", true},
		{"family, empty rest", []string{"team-42-*"}, "team-42-", true},
		{"family, other team", []string{"team-42-*"}, "team-43-dev", false},
		{"question mark is one character", []string{"r?"}, "r1", true},
		{"question mark is not two", []string{"r?"}, "r12", false},
		{"second pattern", []string{"a", "b*"}, "bee", true},
		{"malformed pattern grants nothing", []string{"["}, "[", false},
		{"case matters", []string{"Lobby"}, "lobby", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := auth.Grants(tc.patterns, tc.room); got != tc.want {
				t.Fatalf("Grants(%q, %q) = %v", tc.patterns, tc.room, got)
			}
		})
	}
}

func TestValidatePatterns(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		patterns []string
		ok       bool
	}{
		{"none", nil, true},
		{"plain and wildcards", []string{"lobby", "*", "team-*", "r?", "[a-c]x"}, true},
		{"empty", []string{""}, false},
		{"unclosed class", []string{"team-["}, false},
		{"trailing backslash", []string{`a\`}, false},
		{"slash", []string{"a/b"}, false},
		{"bad after good", []string{"ok", "["}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := auth.ValidatePatterns(tc.patterns)
			if tc.ok != (err == nil) {
				t.Fatalf("ValidatePatterns(%q) = %v", tc.patterns, err)
			}
			if err != nil && !errors.Is(err, auth.ErrInvalidConfig) {
				t.Fatalf("err = %v; want ErrInvalidConfig", err)
			}
		})
	}
}

func TestOriginsCheck(t *testing.T) {
	t.Parallel()
	allow := func(p ...string) auth.Origins { return auth.Origins{Allowed: p} }
	cases := []struct {
		name   string
		policy auth.Origins
		host   string // request Host; "edge.example.com" if ""
		origin string // "" sends none
		ok     bool
	}{
		{"no Origin passes", auth.Origins{}, "", "", true},
		{"no Origin passes an allowlist", allow("https://app.example.com"), "", "", true},
		{"same origin by default", auth.Origins{}, "", "https://edge.example.com", true},
		{"same origin, other case", auth.Origins{}, "", "https://EDGE.example.com", true},
		{"same origin with port", auth.Origins{}, "edge.example.com:8080", "http://edge.example.com:8080", true},
		{"same host, other port", auth.Origins{}, "edge.example.com:8080", "http://edge.example.com:9090", false},
		{"cross origin by default", auth.Origins{}, "", "https://evil.example", false},
		{"suffix of the host is not it", auth.Origins{}, "", "https://edge.example.com.evil.example", false},
		{"allowlist exact", allow("https://app.example.com"), "", "https://app.example.com", true},
		{"allowlist, pattern upper case", allow("https://APP.example.com"), "", "https://app.example.com", true},
		{"allowlist, origin upper case", allow("https://app.example.com"), "", "HTTPS://APP.EXAMPLE.COM", true},
		{"allowlist adds to the edge's own origin", allow("https://app.example.com"), "", "https://edge.example.com", true},
		{"allowlist, own origin with port", allow("https://app.example.com"), "edge.example.com:8080", "http://edge.example.com:8080", true},
		{"allowlist, own host with another port", allow("https://app.example.com"), "edge.example.com:8080", "http://edge.example.com:9090", false},
		{"allowlist, scheme mismatch", allow("https://app.example.com"), "", "http://app.example.com", false},
		{"allowlist, port mismatch", allow("https://app.example.com"), "", "https://app.example.com:8443", false},
		{"allowlist, other host", allow("https://app.example.com"), "", "https://app.example.com.evil.example", false},
		{"wildcard host", allow("https://*.example.com"), "", "https://a.example.com", true},
		{"wildcard host, deeper", allow("https://*.example.com"), "", "https://a.b.example.com", true},
		{"wildcard host, apex", allow("https://*.example.com"), "", "https://example.com", false},
		{"wildcard host, other domain", allow("https://*.example.com"), "", "https://example.com.evil.example", false},
		{"wildcard host, lookalike", allow("https://*.example.com"), "", "https://evilexample.com", false},
		{"wildcard host, scheme mismatch", allow("https://*.example.com"), "", "http://a.example.com", false},
		{"wildcard port", allow("http://localhost:*"), "", "http://localhost:3000", true},
		{"IPv6 origin", allow("http://[::1]:3000"), "", "http://[::1]:3000", true},
		{"IPv6 origin, other port", allow("http://[::1]:3000"), "", "http://[::1]:3001", false},
		{"question mark is literal", allow("https://a?.example.com"), "", "https://ab.example.com", false},
		{"star alone", allow("*"), "", "https://anything.example", true},
		{"star among others", allow("https://app.example.com", "*"), "", "https://x.example", true},
		{"Any", auth.Origins{Any: true}, "", "https://evil.example", true},
		{"Any, even malformed", auth.Origins{Any: true}, "", "::::", true},
		{"null origin", auth.Origins{}, "", "null", false},
		{"null origin, allowlist", allow("https://*"), "", "null", false},
		{"malformed origin", auth.Origins{}, "", "http://[::1", false},
		{"malformed origin, allowlist", allow("*.example.com"), "", "://x", false},
		{"origin without scheme", auth.Origins{}, "", "edge.example.com", false},
		{"origin with bad port", allow("https://*"), "", "https://a.example.com:port", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			r.Host = "edge.example.com"
			if tc.host != "" {
				r.Host = tc.host
			}
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			err := tc.policy.Check(r)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			wantRefusal(t, err, auth.ErrForbidden, "origin not allowed")
			if auth.Status(err) != http.StatusForbidden {
				t.Fatalf("status = %d; want 403", auth.Status(err))
			}
		})
	}
}

func TestValidateOrigins(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		patterns []string
		ok       bool
	}{
		{"none", nil, true},
		{"star", []string{"*"}, true},
		{"exact", []string{"https://app.example.com"}, true},
		{"wildcard host and port", []string{"https://*.example.com", "http://localhost:*"}, true},
		{"IPv6", []string{"http://[::1]:3000"}, true},
		{"empty", []string{""}, false},
		{"no scheme", []string{"app.example.com"}, false},
		{"wildcard without scheme", []string{"*.example.com"}, false},
		{"empty scheme", []string{"://app.example.com"}, false},
		{"no host", []string{"https://"}, false},
		{"path", []string{"https://app.example.com/"}, false},
		{"query", []string{"https://app.example.com?x"}, false},
		{"bad after good", []string{"*", "app"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := auth.ValidateOrigins(tc.patterns)
			if tc.ok != (err == nil) {
				t.Fatalf("ValidateOrigins(%q) = %v", tc.patterns, err)
			}
			if err != nil && !errors.Is(err, auth.ErrInvalidConfig) {
				t.Fatalf("err = %v; want ErrInvalidConfig", err)
			}
		})
	}
}

func TestStatusAndReason(t *testing.T) {
	t.Parallel()
	cause := errors.New("cause")
	cases := []struct {
		name   string
		err    error
		status int
		reason string
	}{
		{"unauthenticated", &auth.Error{Kind: auth.ErrUnauthenticated, Reason: "token expired", Err: cause}, 401, "token expired"},
		{"forbidden", &auth.Error{Kind: auth.ErrForbidden, Reason: "origin not allowed"}, 403, "origin not allowed"},
		{"unavailable", &auth.Error{Kind: auth.ErrUnavailable, Reason: "key set unavailable"}, 503, "key set unavailable"},
		{"wrapped refusal", fmt.Errorf("edge: %w", &auth.Error{Kind: auth.ErrForbidden, Reason: "no"}), 403, "no"},
		{"plain error fails closed", errors.New("boom"), 503, "authentication unavailable"},
		{"bare sentinel", auth.ErrUnauthenticated, 401, "authentication unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := auth.Status(tc.err); got != tc.status {
				t.Fatalf("Status = %d; want %d", got, tc.status)
			}
			if got := auth.Reason(tc.err); got != tc.reason {
				t.Fatalf("Reason = %q; want %q", got, tc.reason)
			}
		})
	}
}

func TestErrorMatching(t *testing.T) {
	t.Parallel()
	cause := errors.New("cause")
	err := error(&auth.Error{Kind: auth.ErrUnauthenticated, Reason: "invalid token", Err: cause})
	if !errors.Is(err, auth.ErrUnauthenticated) || !errors.Is(err, cause) {
		t.Fatalf("errors.Is fails on %v", err)
	}
	if errors.Is(err, auth.ErrForbidden) || errors.Is(err, auth.ErrUnavailable) {
		t.Fatalf("%v matches another kind", err)
	}
	var e *auth.Error
	if !errors.As(fmt.Errorf("wrapped: %w", err), &e) || e.Reason != "invalid token" {
		t.Fatalf("errors.As: %v", e)
	}
}
