package auth

import (
	"context"
	"encoding/json"
	"errors"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
)

// DefaultCalloutTimeout bounds one callout request when Callout.Timeout is
// zero.
const DefaultCalloutTimeout = 2 * time.Second

// ConnectRequest is the body of a <prefix>.auth.connect request: everything
// the handshake carried, so that an auth service in any language can decide
// it. Refresh requests (<prefix>.auth.refresh) carry Edge, Token and User
// (not Conn: Authenticator.Refresh is not given the connection id).
type ConnectRequest struct {
	Edge        string              `json:"edge"`
	Conn        string              `json:"conn,omitempty"` // reserved for refresh; not sent yet
	User        string              `json:"user,omitempty"` // refresh only: the connection's user
	Token       string              `json:"token,omitempty"`
	TokenSource Source              `json:"tokenSource,omitempty"`
	Path        string              `json:"path,omitempty"`
	RemoteAddr  string              `json:"remoteAddr,omitempty"`
	Query       map[string][]string `json:"query,omitempty"`
	Headers     map[string][]string `json:"headers,omitempty"`
	Cookies     map[string]string   `json:"cookies,omitempty"`
}

// ConnectReply is an auth service's answer to a connect or refresh request.
type ConnectReply struct {
	Allow bool `json:"allow"`
	// User is the user id (required when allowed; empty is anonymous only
	// if the service says so with Anonymous).
	User      string `json:"user,omitempty"`
	Anonymous bool   `json:"anonymous,omitempty"`
	// Rooms are the room patterns the connection may join.
	Rooms []string `json:"rooms,omitempty"`
	// ExpiresAt is when the connection must have refreshed, Unix ms; 0 is
	// never. A negative value is an error.
	ExpiresAt int64 `json:"expiresAt,omitempty"`
	// Reason is shown to a refused client: at most 120 bytes of printable
	// UTF-8, or the client sees a generic reason instead.
	Reason string `json:"reason,omitempty"`
	// Forbidden refuses with 403 instead of 401.
	Forbidden bool `json:"forbidden,omitempty"`
}

// JoinRequest is the body of a <prefix>.auth.join request.
type JoinRequest struct {
	Edge  string   `json:"edge"`
	Conn  string   `json:"conn"`
	User  string   `json:"user,omitempty"`
	Room  string   `json:"room"`
	Rooms []string `json:"grants,omitempty"` // the connection's room patterns
}

// JoinReply is the answer to a join request.
type JoinReply struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason,omitempty"`
}

// Callout asks an auth service over NATS request/reply. It is an
// Authenticator and a join authorizer. No answer within Timeout (or no
// responder at all) refuses with ErrUnavailable: it fails closed.
type Callout struct {
	NATS      *nats.Conn
	Namespace envelope.Namespace
	Edge      string
	// Timeout bounds one request. Default DefaultCalloutTimeout.
	Timeout time.Duration
}

// Authenticate asks <prefix>.auth.connect.
func (c *Callout) Authenticate(ctx context.Context, h *Handshake) (*Identity, error) {
	req := ConnectRequest{
		Edge: c.Edge, Token: h.Token, TokenSource: h.TokenFrom, Path: h.Path,
		RemoteAddr: h.RemoteAddr, Query: h.Query, Headers: h.Header,
	}
	if len(h.Cookies) > 0 {
		req.Cookies = make(map[string]string, len(h.Cookies))
		for _, ck := range h.Cookies {
			req.Cookies[ck.Name] = ck.Value
		}
	}
	return c.connect(ctx, envelope.AuthConnect, &req)
}

// Refresh asks <prefix>.auth.refresh; the user must stay the same.
func (c *Callout) Refresh(ctx context.Context, token string, cur *Identity) (*Identity, error) {
	id, err := c.connect(ctx, envelope.AuthRefresh, &ConnectRequest{Edge: c.Edge, Token: token, User: cur.User})
	if err != nil {
		return nil, err
	}
	if id.User != cur.User {
		return nil, refuse(ErrForbidden, "token is for another user", nil)
	}
	return id, nil
}

func (c *Callout) connect(ctx context.Context, op string, req *ConnectRequest) (*Identity, error) {
	var rep ConnectReply
	if err := c.ask(ctx, op, req, &rep); err != nil {
		return nil, err
	}
	if !rep.Allow {
		kind := ErrUnauthenticated
		if rep.Forbidden {
			kind = ErrForbidden
		}
		return nil, refuse(kind, clientReason(rep.Reason, "not authorized"), nil)
	}
	id := &Identity{User: rep.User, Rooms: rep.Rooms}
	if rep.ExpiresAt > 0 {
		id.Expires = time.UnixMilli(rep.ExpiresAt)
	}
	switch {
	case rep.ExpiresAt < 0:
		return nil, refuse(ErrUnavailable, "authentication unavailable", errors.New("auth callout returned a negative expiresAt"))
	case rep.User == "" && !rep.Anonymous:
		return nil, refuse(ErrUnavailable, "authentication unavailable", errors.New("auth callout allowed without a user"))
	case rep.User != "" && envelope.ValidateID(rep.User) != nil:
		return nil, refuse(ErrUnavailable, "authentication unavailable", errors.New("auth callout returned an invalid user id"))
	}
	if err := ValidatePatterns(id.Rooms); err != nil {
		return nil, refuse(ErrUnavailable, "authentication unavailable", err)
	}
	return id, nil
}

// AuthorizeJoin asks <prefix>.auth.join whether a client may join room.
// A denial is ErrForbidden; no usable answer is ErrUnavailable, with a
// reason that names the join authorizer (the connection itself is
// authenticated already).
func (c *Callout) AuthorizeJoin(ctx context.Context, req JoinRequest) error {
	req.Edge = c.Edge
	var rep JoinReply
	if err := c.ask(ctx, envelope.AuthJoin, &req, &rep); err != nil {
		reason := "join authorizer unavailable"
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			subj, _ := c.Namespace.Auth(envelope.AuthJoin) // ask built it: valid
			reason = "no join authorizer is running: nothing answers " + subj.String()
		case errors.Is(err, context.DeadlineExceeded):
			reason = "the join authorizer did not answer in time"
		}
		return refuse(ErrUnavailable, reason, err)
	}
	if !rep.Allow {
		return refuse(ErrForbidden, clientReason(rep.Reason, "not allowed to join "+req.Room), nil)
	}
	return nil
}

// maxReason bounds the reason an auth service gives, in bytes: it must fit
// a WebSocket close frame (123 bytes).
const maxReason = 120

// clientReason is reason if it is fit to show a client: 1 to maxReason
// bytes of printable UTF-8 (a close frame's reason must be UTF-8). Else it
// is fallback.
func clientReason(reason, fallback string) string {
	if reason == "" || len(reason) > maxReason || !utf8.ValidString(reason) {
		return fallback
	}
	for _, r := range reason {
		if !unicode.IsPrint(r) {
			return fallback
		}
	}
	return reason
}

func (c *Callout) ask(ctx context.Context, op string, req, rep any) error {
	subj, err := c.Namespace.Auth(op)
	if err != nil {
		return refuse(ErrUnavailable, "authentication unavailable", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return refuse(ErrUnavailable, "authentication unavailable", err)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCalloutTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := c.NATS.RequestWithContext(ctx, subj.String(), body)
	if err != nil {
		return refuse(ErrUnavailable, "authentication unavailable", err)
	}
	if err := json.Unmarshal(msg.Data, rep); err != nil {
		return refuse(ErrUnavailable, "authentication unavailable", err)
	}
	return nil
}
