// Package auth decides who a WebSocket connection is and what it may join:
// JWT verification (HS256, RS256, ES256, EdDSA, JWKS), an auth callout over
// NATS, room grants, and the origin allowlist.
//
// A refusal is an *Error whose Kind is one of the sentinels; the edge maps
// ErrUnauthenticated to HTTP 401, ErrForbidden to 403 and ErrUnavailable to
// 503, with the Error's Reason as the only text the client sees.
package auth

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

// Sentinels for refusals; match with errors.Is.
var (
	ErrUnauthenticated = errors.New("auth: unauthenticated") // missing or bad credentials
	ErrForbidden       = errors.New("auth: forbidden")       // valid credentials, not allowed
	ErrUnavailable     = errors.New("auth: unavailable")     // the deciding service did not answer: fail closed
	ErrInvalidConfig   = errors.New("auth: invalid config")
	// ErrNoToken is the cause of a refusal for carrying no credentials at
	// all: the one refusal an edge that also admits anonymous connections
	// turns into an anonymous admission.
	ErrNoToken = errors.New("auth: no token")
)

// Error is a refusal: a Kind (one of the sentinels), a short Reason safe to
// show the client, and the cause, kept for logs only.
type Error struct {
	Kind   error
	Reason string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Kind.Error() + ": " + e.Reason + ": " + e.Err.Error()
	}
	return e.Kind.Error() + ": " + e.Reason
}

// Is matches the Kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func refuse(kind error, reason string, cause error) *Error {
	return &Error{Kind: kind, Reason: reason, Err: cause}
}

// Status is the HTTP status of a refusal: 401, 403, or 503 (anything that is
// not an *Error is 503 as well: fail closed).
func Status(err error) int {
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	default:
		return http.StatusServiceUnavailable
	}
}

// Reason is the text of a refusal that may be shown to the client.
func Reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return "authentication unavailable"
}

// Identity is an authenticated connection: its user, the rooms it may join
// and when its credentials expire.
type Identity struct {
	// User is the user id ("" for an anonymous connection).
	User string
	// Rooms are patterns of the rooms the connection may join (see Grants).
	Rooms []string
	// Expires is when the credentials expire; zero is never.
	Expires time.Time
}

// Grants reports whether any of patterns matches room. A pattern is a room
// id in which '*' matches any run of characters and '?' one character
// ("*" is every room, "team-42-*" a family); room ids never contain '/'.
func Grants(patterns []string, room string) bool {
	for _, p := range patterns {
		if ok, err := path.Match(p, room); ok && err == nil {
			return true
		}
	}
	return false
}

// ValidatePatterns reports a malformed pattern.
func ValidatePatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || p == "" || strings.Contains(p, "/") {
			return refuse(ErrInvalidConfig, "bad room pattern "+p, err)
		}
	}
	return nil
}

// Handshake is what an authenticator sees of a WebSocket upgrade request.
type Handshake struct {
	Token      string // the bearer token, from wherever it came ("" if none)
	TokenFrom  Source // where it came from
	Header     http.Header
	Query      url.Values
	Cookies    []*http.Cookie
	Path       string
	RemoteAddr string
}

// Authenticator decides a handshake, and a token refresh on a live
// connection.
type Authenticator interface {
	// Authenticate returns the identity of a handshake, or a refusal.
	Authenticate(ctx context.Context, h *Handshake) (*Identity, error)
	// Refresh checks a new token for a live connection of cur. The user must
	// stay the same.
	Refresh(ctx context.Context, token string, cur *Identity) (*Identity, error)
}

// Source is where a token was found.
type Source string

// Token sources, in the order they are looked at.
const (
	SourceNone        Source = ""
	SourceHeader      Source = "header"      // Authorization: Bearer <token>
	SourceSubprotocol Source = "subprotocol" // Sec-WebSocket-Protocol: natter, bearer.<token>
	SourceCookie      Source = "cookie"      // Cookie: <name>=<token>
	SourceQuery       Source = "query"       // ?<name>=<token>
)

// Subprotocol is the WebSocket subprotocol the edge selects; a client that
// passes its token as a subprotocol must offer it too, because a browser
// fails a handshake whose answer names none of the offered protocols.
const Subprotocol = "natter"

// SubprotocolPrefix precedes a token offered as a subprotocol.
const SubprotocolPrefix = "bearer."

// TokenSources configures where tokens are looked for.
type TokenSources struct {
	// Cookie is the cookie name. Default "natter_token".
	Cookie string
	// Query is the query parameter. Default "token".
	Query string
}

// DefaultTokenSources returns the names NewHandshake uses for empty fields.
func DefaultTokenSources() TokenSources {
	return TokenSources{Cookie: "natter_token", Query: "token"}
}

// NewHandshake reads a request into a Handshake, with the token taken from,
// in this order: the Authorization header, the Sec-WebSocket-Protocol
// header, the cookie, the query parameter. An empty value does not count as
// a token, and neither does a subprotocol that is not an RFC 6455 token
// (ASCII without spaces or separators): a browser never sends one.
func NewHandshake(r *http.Request, src TokenSources) *Handshake {
	h := &Handshake{
		Header:     r.Header,
		Query:      r.URL.Query(),
		Cookies:    r.Cookies(),
		Path:       r.URL.Path,
		RemoteAddr: r.RemoteAddr,
	}
	def := DefaultTokenSources()
	src.Cookie = cmp.Or(src.Cookie, def.Cookie)
	src.Query = cmp.Or(src.Query, def.Query)
	if v := r.Header.Get("Authorization"); v != "" {
		if scheme, tok, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				h.Token, h.TokenFrom = tok, SourceHeader
				return h
			}
		}
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), SubprotocolPrefix); ok && isToken(tok) {
				h.Token, h.TokenFrom = tok, SourceSubprotocol
				return h
			}
		}
	}
	for _, c := range h.Cookies {
		if c.Name == src.Cookie && c.Value != "" {
			h.Token, h.TokenFrom = c.Value, SourceCookie
			return h
		}
	}
	if tok := h.Query.Get(src.Query); tok != "" {
		h.Token, h.TokenFrom = tok, SourceQuery
	}
	return h
}

// isToken reports whether s is a non-empty RFC 7230 token, what RFC 6455
// allows a subprotocol to be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// RemoteIP is the host part of a RemoteAddr.
func RemoteIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}
