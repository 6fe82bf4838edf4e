package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
)

// JoinOption tunes one Join.
type JoinOption func(*envelope.RoomPayload)

// WithPresence asks for the room's $presence.diff frames (see OnPresence).
func WithPresence() JoinOption {
	return func(p *envelope.RoomPayload) { p.Presence = true }
}

// system sends a system request and returns its reply, or the reply's
// error as *rpc.Error.
func (c *Client) system(ctx context.Context, typ string, payload any, want string) (*envelope.Envelope, error) {
	env, err := c.request(ctx, typ, payload, nil)
	if err != nil {
		return nil, err
	}
	if err := replyError(env); err != nil {
		return nil, err
	}
	if env.Type != want {
		return nil, &rpc.Error{Code: envelope.CodeInternal, Message: fmt.Sprintf("unexpected reply %s to %s", env.Type, typ)}
	}
	return env, nil
}

// Join joins room with $join and returns once the edge acknowledged it: a
// message published to the room after that reaches the client. The client
// remembers the room and joins it again after every reconnect, before any
// buffered send is written. A refusal (PERMISSION_DENIED, ...) is an
// *rpc.Error.
func (c *Client) Join(ctx context.Context, room string, opts ...JoinOption) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	p := envelope.RoomPayload{Room: room}
	for _, f := range opts {
		f(&p)
	}
	if _, err := c.system(ctx, envelope.TypeJoin, p, envelope.TypeJoined); err != nil {
		return err
	}
	c.mu.Lock()
	c.rooms[room] = p.Presence
	c.mu.Unlock()
	return nil
}

// Leave leaves room and forgets it, so it is not re-joined.
func (c *Client) Leave(ctx context.Context, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.rooms, room)
	c.mu.Unlock()
	_, err := c.system(ctx, envelope.TypeLeave, envelope.RoomPayload{Room: room}, envelope.TypeLeft)
	return err
}

// Rooms returns the rooms the client joined and re-joins after reconnects.
func (c *Client) Rooms() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.rooms))
	for r := range c.rooms {
		out = append(out, r)
	}
	return out
}

// PresenceRoom returns one page of room's members (the client must be in
// the room unless the edge runs with presence open: PERMISSION_DENIED).
// Pass the page's Next as cursor for the following one; limit 0 is the
// edge's default (100), at most 1000.
func (c *Client) PresenceRoom(ctx context.Context, room, cursor string, limit int) (*presence.RoomPage, error) {
	env, err := c.system(ctx, envelope.TypePresence, presence.Query{Room: room, Cursor: cursor, Limit: limit}, envelope.TypePresence)
	if err != nil {
		return nil, err
	}
	var page presence.RoomPage
	if err := json.Unmarshal(env.Payload, &page); err != nil {
		return nil, fmt.Errorf("client: decode presence page: %w", err)
	}
	return &page, nil
}

// PresenceUser tells whether user is online; the connections are listed
// only for the client's own user (or with presence open).
func (c *Client) PresenceUser(ctx context.Context, user string) (*presence.UserInfo, error) {
	env, err := c.system(ctx, envelope.TypePresence, presence.Query{User: user}, envelope.TypePresence)
	if err != nil {
		return nil, err
	}
	var info presence.UserInfo
	if err := json.Unmarshal(env.Payload, &info); err != nil {
		return nil, fmt.Errorf("client: decode presence user: %w", err)
	}
	return &info, nil
}

// SetState sets the connection's presence state (any JSON value of at most
// presence.MaxStateSize bytes; nil clears it) with $presence.state. Once
// the edge acknowledged it, the client re-sends it after every reconnect.
func (c *Client) SetState(ctx context.Context, state any) error {
	raw := json.RawMessage("null")
	if state != nil {
		var err error
		if raw, err = json.Marshal(state); err != nil {
			return fmt.Errorf("client: encode state: %w", err)
		}
	}
	if len(raw) > presence.MaxStateSize {
		return &rpc.Error{Code: envelope.CodeResourceExhausted, Message: fmt.Sprintf("state is larger than %d bytes", presence.MaxStateSize)}
	}
	if _, err := c.system(ctx, envelope.TypePresenceState, map[string]json.RawMessage{"state": raw}, envelope.TypePresenceState); err != nil {
		return err
	}
	c.mu.Lock()
	if string(raw) == "null" {
		c.pstate = nil
	} else {
		c.pstate = raw
	}
	c.mu.Unlock()
	return nil
}

// ErrNoToken: RefreshToken needs Options.Token.
var ErrNoToken = errors.New("client: no Token function in Options")

// RefreshToken gets a fresh token from Options.Token and hands it to the
// live connection with $auth.refresh; the edge checks it like a handshake
// token and it must be for the same user (else UNAUTHENTICATED or
// PERMISSION_DENIED, and the old token stays). The client does this by
// itself when the edge sends $auth.expiring.
func (c *Client) RefreshToken(ctx context.Context) error {
	if c.opts.Token == nil {
		return ErrNoToken
	}
	tok, err := c.opts.Token(ctx)
	if err != nil {
		return fmt.Errorf("client: token: %w", err)
	}
	_, err = c.system(ctx, envelope.TypeAuthRefresh, map[string]string{"token": tok}, envelope.TypeAuthRefreshed)
	return err
}

// autoRefresh answers $auth.expiring.
func (c *Client) autoRefresh() {
	defer c.refreshing.Store(false)
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.RPCTimeout)
	defer cancel()
	if err := c.RefreshToken(ctx); err != nil && c.ctx.Err() == nil {
		c.log.Warn("client: token refresh failed; the edge closes the connection when the token expires", "err", err)
	}
}
