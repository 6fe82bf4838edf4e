package auth

import (
	"net/http"
	"net/url"
	"strings"
)

// Origins is the browser origin policy of an edge. Browsers send Origin on
// every WebSocket handshake and attach cookies whatever the page, so without
// a check any site could open a connection with a user's cookie
// (cross-site WebSocket hijacking). Requests without Origin are not from a
// browser and pass.
type Origins struct {
	// Allowed are origin patterns such as "https://app.example.com" or
	// "https://*.example.com" ('*' matches within the host; "*" alone is any
	// origin; every other character is literal, so "http://[::1]:3000"
	// works), allowed in addition to the edge's own origin (Origin's host
	// equals the request's Host), which is always allowed: a page served
	// by the edge's own host cannot hijack anything, and the same-origin
	// rule is the one browsers apply to most other requests. Empty: only
	// the edge's own origin.
	Allowed []string
	// Any allows every origin (dev mode).
	Any bool
}

// Check refuses a request whose Origin the policy does not allow, with
// ErrForbidden.
func (o Origins) Check(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" || o.Any {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return refuse(ErrForbidden, "origin not allowed", err)
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	norm := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, p := range o.Allowed {
		if p == "*" || matchOrigin(strings.ToLower(p), norm) {
			return nil
		}
	}
	return refuse(ErrForbidden, "origin not allowed", nil)
}

// matchOrigin reports whether origin matches pattern, in which '*' matches
// any run of characters but '/' and every other character itself.
// (path.Match would read "[::1]" as a character class.)
func matchOrigin(pattern, origin string) bool {
	star, next := -1, 0 // after a '*': where it is in pattern, where its match ends in origin
	p, o := 0, 0
	for o < len(origin) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, next = p, o
			p++
		case p < len(pattern) && pattern[p] == origin[o]:
			p++
			o++
		case star >= 0 && origin[next] != '/':
			// Let the last '*' take one more character and try again.
			next++
			p, o = star+1, next
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// ValidateOrigins reports a malformed origin pattern: one that is neither
// "*" nor a scheme, "://" and a host (with an optional port), without path.
func ValidateOrigins(patterns []string) error {
	for _, p := range patterns {
		if p == "*" {
			continue
		}
		scheme, host, ok := strings.Cut(p, "://")
		if !ok || scheme == "" {
			return refuse(ErrInvalidConfig, "origin pattern "+p+" needs a scheme, like https://example.com", nil)
		}
		if host == "" || strings.ContainsAny(host, "/?#") || strings.ContainsAny(scheme, "/?#") {
			return refuse(ErrInvalidConfig, "bad origin pattern "+p, nil)
		}
	}
	return nil
}
