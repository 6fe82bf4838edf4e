package auth

import (
	"net/http"
	"net/url"
	"path"
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
	// origin). Empty: only the edge's own origin (Origin's host equals the
	// request's Host), the rule browsers apply to most other requests.
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
	if len(o.Allowed) == 0 {
		if strings.EqualFold(u.Host, r.Host) {
			return nil
		}
		return refuse(ErrForbidden, "origin not allowed", nil)
	}
	norm := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, p := range o.Allowed {
		if p == "*" {
			return nil
		}
		if ok, _ := path.Match(strings.ToLower(p), norm); ok {
			return nil
		}
	}
	return refuse(ErrForbidden, "origin not allowed", nil)
}

// ValidateOrigins reports a malformed origin pattern.
func ValidateOrigins(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return refuse(ErrInvalidConfig, "bad origin pattern "+p, err)
		}
		if p != "*" && !strings.Contains(p, "://") {
			return refuse(ErrInvalidConfig, "origin pattern "+p+" needs a scheme, like https://example.com", nil)
		}
	}
	return nil
}
