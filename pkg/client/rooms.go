package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
)

// JoinOption tunes one Join.
type JoinOption func(*joinOptions)

type joinOptions struct {
	presence bool
	since    *Position
}

// WithPresence asks for the room's $presence.diff frames (see OnPresence).
func WithPresence() JoinOption {
	return func(o *joinOptions) { o.presence = true }
}

// joinPayload is the payload of $join.
type joinPayload struct {
	Room     string    `json:"room"`
	Presence bool      `json:"presence,omitempty"`
	Since    *Position `json:"since,omitempty"`
}

// system sends a system request and returns its reply, or the reply's
// error as *rpc.Error. op, if not nil, makes it a room operation.
func (c *Client) system(ctx context.Context, typ string, payload any, want string, op *roomOp) (*envelope.Envelope, error) {
	env, err := c.request(ctx, typ, payload, &callOpts{}, op)
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

// roomOp is a Join, a Leave or a background re-join, tracked so that the
// remembered rooms follow the last call made for each room.
type roomOp struct {
	kind     uint8 // opJoin, opLeave, opRejoin
	room     string
	presence bool
	// since is the position a join of a durable room starts from; its
	// outcome is reported to Options.OnRecovery.
	since *Position
	seq   uint64 // set when queued, for opJoin and opLeave
}

const (
	opJoin uint8 = iota + 1
	opLeave
	opRejoin
)

// errRoomSettled: a background re-join was not sent, because the room is
// no longer remembered or a Join or Leave of it is in flight.
var errRoomSettled = errors.New("client: room settled by a newer call")

// beginRoomOpLocked runs with c.mu held, right before op's frame is queued,
// so that the order of the calls is the order of their frames. It reports
// false when the frame must not be sent.
func (c *Client) beginRoomOpLocked(op *roomOp) bool {
	switch op.kind {
	case opRejoin:
		_, ok := c.rooms[op.room]
		return ok && c.roomOps[op.room] == 0
	case opLeave:
		delete(c.rooms, op.room)
		delete(c.positions, op.room)
	}
	c.roomSeq++
	op.seq = c.roomSeq
	c.roomOps[op.room] = op.seq
	return true
}

// settleRoomOpLocked runs with c.mu held when op's reply arrives, before
// any later frame is read: a Join that is still the last call for its
// room records it. A Leave's reply forgets the room's position, whatever
// call came after it: frames of a later Join come after this reply. It
// returns the Recovery to report for a join from a position.
func (c *Client) settleRoomOpLocked(op *roomOp, reply *envelope.Envelope) *Recovery {
	var rec *Recovery
	switch {
	case reply.Type == envelope.TypeJoined && op.kind != opLeave:
		rec = c.joinedLocked(op, reply)
	case reply.Type == envelope.TypeLeft && op.kind == opLeave:
		delete(c.positions, op.room)
	}
	if op.seq == 0 || c.roomOps[op.room] != op.seq {
		return rec
	}
	delete(c.roomOps, op.room)
	if op.kind == opJoin && reply.Type == envelope.TypeJoined {
		c.rooms[op.room] = op.presence
	}
	return rec
}

// endRoomOp forgets op when its call ended without a reply.
func (c *Client) endRoomOp(op *roomOp) {
	if op == nil || op.seq == 0 {
		return
	}
	c.mu.Lock()
	if c.roomOps[op.room] == op.seq {
		delete(c.roomOps, op.room)
		if op.kind == opLeave {
			// Deliveries that came while the Leave was in flight.
			delete(c.positions, op.room)
		}
	}
	c.mu.Unlock()
}

// serverMembership follows a $joined or $left without a correlation id: a
// worker or service joined or removed the connection (natter.ctl). A
// server join is remembered (re-joined after a reconnect, keeping the
// room's presence choice if it was remembered already), a server leave
// forgets the room. While a Join or Leave of the room is in flight, its
// answer comes later and decides.
func (c *Client) serverMembership(env *envelope.Envelope) {
	var p envelope.RoomPayload
	_ = json.Unmarshal(env.Payload, &p)
	room := p.Room
	if room == "" {
		room = env.Meta.Room
	}
	if envelope.ValidateID(room) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.roomOps[room] != 0 {
		return
	}
	if env.Type == envelope.TypeJoined {
		if _, ok := c.rooms[room]; !ok {
			c.rooms[room] = false
		}
		c.serverJoinedLocked(room, env)
		return
	}
	delete(c.rooms, room)
	delete(c.positions, room)
}

// Join joins room with $join and returns once the edge acknowledged it: a
// message published to the room after that reaches the client. The client
// remembers the room and joins it again after every reconnect, before any
// buffered send is written. A refusal (PERMISSION_DENIED, ...) is an
// *rpc.Error.
//
// Join and Leave of the same room may race: the remembered rooms follow
// the call made last (the one whose frame was queued last), whatever order
// their answers come in.
//
// For a durable room the client keeps the last Position it saw, and
// re-joins from it after a reconnect; WithSince joins from a position
// given. See Options.OnRecovery.
func (c *Client) Join(ctx context.Context, room string, opts ...JoinOption) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	var o joinOptions
	for _, f := range opts {
		f(&o)
	}
	p := joinPayload{Room: room, Presence: o.presence, Since: o.since}
	_, err := c.system(ctx, envelope.TypeJoin, p, envelope.TypeJoined, &roomOp{kind: opJoin, room: room, presence: o.presence, since: o.since})
	return err
}

// Leave leaves room and forgets it at once, so it is not re-joined, and
// forgets its Position (read it first to join again WithSince later).
func (c *Client) Leave(ctx context.Context, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	_, err := c.system(ctx, envelope.TypeLeave, envelope.RoomPayload{Room: room}, envelope.TypeLeft, &roomOp{kind: opLeave, room: room})
	if errors.Is(err, ErrClosed) {
		c.mu.Lock()
		delete(c.rooms, room)
		delete(c.positions, room)
		c.mu.Unlock()
	}
	return err
}

// Rooms returns the rooms the client re-joins after reconnects: those it
// joined, and those a worker or service joined it to (a $joined without a
// correlation id), minus those left or removed by the server since, and
// those whose re-join was refused for good.
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
	env, err := c.system(ctx, envelope.TypePresence, presence.Query{Room: room, Cursor: cursor, Limit: limit}, envelope.TypePresence, nil)
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
	env, err := c.system(ctx, envelope.TypePresence, presence.Query{User: user}, envelope.TypePresence, nil)
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
	if _, err := c.system(ctx, envelope.TypePresenceState, map[string]json.RawMessage{"state": raw}, envelope.TypePresenceState, nil); err != nil {
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
// PERMISSION_DENIED, and the old token stays).
//
// The client does this by itself when the edge sends $auth.expiring, and
// retries a failed refresh with backoff until the token expires (each
// failure goes to Options.OnError). If the edge still closes with 4100,
// a client with Options.Token reconnects with a fresh token, once per
// expiry: if the edge refuses that handshake with 401, the client closes
// (CloseInfo 4100 with the *HandshakeError).
func (c *Client) RefreshToken(ctx context.Context) error {
	if c.opts.Token == nil {
		return ErrNoToken
	}
	tok, err := c.opts.Token(ctx)
	if err != nil {
		return fmt.Errorf("client: token: %w", err)
	}
	_, err = c.system(ctx, envelope.TypeAuthRefresh, map[string]string{"token": tok}, envelope.TypeAuthRefreshed, nil)
	return err
}

// autoRefresh answers $auth.expiring on s: it refreshes the token, with
// retries and backoff until the token expires at exp or s ends.
func (c *Client) autoRefresh(s *session, exp time.Time) {
	defer c.wg.Done()
	defer c.refreshing.Store(false)
	for n := 0; ; n++ {
		deadline := time.Now().Add(c.opts.RPCTimeout)
		if exp.Before(deadline) {
			deadline = exp
		}
		ctx, cancel := context.WithDeadline(s.ctx, deadline)
		err := c.RefreshToken(ctx)
		cancel()
		if err == nil || s.ctx.Err() != nil {
			return
		}
		wait := max(c.backoff.Delay(n), retryAfter(err))
		final := !time.Now().Add(wait).Before(exp)
		if final {
			c.log.Warn("client: token refresh failed; the edge closes the connection when the token expires", "err", err)
		} else {
			c.log.Warn("client: token refresh failed; retrying", "err", err, "in", wait)
		}
		c.report(&BackgroundError{Op: OpRefresh, Final: final, Err: err})
		if final || !sleepCtx(s.ctx, wait) {
			return
		}
	}
}
