package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/natter/natter/pkg/envelope"
)

// typeHistory is the request, and its answer, that reads a durable room's
// history.
const typeHistory = "$history"

// Position is a place in a durable room's history: the offset of a message
// in the edge's stream and the epoch (the stream's incarnation) it belongs
// to. Offsets grow within a room but are not contiguous; positions of
// different epochs do not compare. Applications treat positions as opaque
// beyond "a larger offset of the same epoch is later".
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// Recovery is the outcome of joining a durable room from a position: a
// re-join after a reconnect, or a Join WithSince. It is handed to
// Options.OnRecovery.
type Recovery struct {
	Room string
	// Recovered: every message after Since was replayed; the replayed
	// messages reached the On handlers before this report. False is a
	// gap: the position was older than the retained history, the history
	// was reset (a new epoch), the replay failed, or the room is not (or
	// no longer) durable. Messages may be missing, and the application
	// should refetch the room's state (History gives the newest messages).
	Recovered bool
	// Since is the position the join started from.
	Since Position
	// Position is where the room continues from: the last message
	// delivered, or the end of the room's history. Zero when the room is
	// not durable.
	Position Position
	// Rejoin is true for the client's own re-join after a reconnect,
	// false for a Join WithSince.
	Rejoin bool
}

// WithSince joins a durable room from pos (usually a Position saved
// earlier): the edge replays the retained messages after pos, in order and
// before it acknowledges the join, and then goes on with live messages
// without a gap or a duplicate between the two. The outcome is reported to
// Options.OnRecovery. On a room that is not durable the edge ignores pos.
func WithSince(pos Position) JoinOption {
	return func(o *joinOptions) { o.since = &pos }
}

// Position returns the last position the client saw in durable room: the
// largest offset among the messages delivered to it and the positions its
// joins were acknowledged with, in the epoch of the last join. It reports false
// when there is none: the room is not durable, not joined, or was left.
// After a reconnect the client re-joins the room from this position.
func (c *Client) Position(room string) (Position, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.positions[room]
	return p, ok
}

// HistoryQuery selects one page of a durable room's history. Offsets are
// Position.Offset values.
type HistoryQuery struct {
	// Limit is the number of messages, 1 to 1000; 0: the edge's default
	// (100).
	Limit int
	// Since, when set, asks for the first Limit messages after this
	// offset (0: from the oldest kept); page forward with Since set to
	// the last message's offset.
	Since *uint64
	// Before, without Since, asks for the last Limit messages before this
	// offset; page backward with Before set to the first message's offset.
	// Zero: the newest messages.
	Before uint64
}

// HistoryPage is one page of a durable room's history, oldest first. Each
// message carries meta.room, meta.offset and meta.epoch (see
// OffsetOf).
type HistoryPage struct {
	Room     string               `json:"room"`
	Epoch    string               `json:"epoch"`
	Messages []*envelope.Envelope `json:"messages"`
	// More says whether another page exists in the direction asked for.
	More bool `json:"more"`
}

// History reads one page of durable room's history with $history. The
// client must be a member of the room or allowed to join it
// (PERMISSION_DENIED otherwise); a room that is not durable gives
// FAILED_PRECONDITION, an edge without durable rooms UNIMPLEMENTED, as
// *rpc.Error. Reading history does not move the room's Position.
func (c *Client) History(ctx context.Context, room string, q HistoryQuery) (*HistoryPage, error) {
	if err := envelope.ValidateID(room); err != nil {
		return nil, err
	}
	req := struct {
		Room   string  `json:"room"`
		Limit  int     `json:"limit,omitempty"`
		Since  *uint64 `json:"since,omitempty"`
		Before uint64  `json:"before,omitempty"`
	}{room, q.Limit, q.Since, q.Before}
	env, err := c.system(ctx, typeHistory, req, typeHistory, nil)
	if err != nil {
		return nil, err
	}
	var page HistoryPage
	if err := json.Unmarshal(env.Payload, &page); err != nil {
		return nil, fmt.Errorf("client: decode history page: %w", err)
	}
	return &page, nil
}

// OffsetOf returns the position a message of a durable room carries
// (meta.offset and meta.epoch); it reports false when it carries none.
func OffsetOf(env *envelope.Envelope) (Position, bool) {
	raw, ok := env.Meta.Extra["offset"]
	if !ok {
		return Position{}, false
	}
	off, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return Position{}, false
	}
	p := Position{Offset: off}
	if raw, ok := env.Meta.Extra["epoch"]; ok {
		if err := json.Unmarshal(raw, &p.Epoch); err != nil {
			return Position{}, false
		}
	}
	return p, true
}

// joinedPayload is the payload of $joined; durable rooms add their
// position, and recovered when the join had since.
type joinedPayload struct {
	Room      string `json:"room"`
	Durable   bool   `json:"durable"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
}

// advanceLocked moves room's position forward to p: to a larger offset of
// the same epoch, or, when newEpoch, to another epoch. Only a $joined
// brings a new epoch: a delivery of another epoch means the history was
// reset without the client being told, so the position stays, and the
// next re-join from it reports the gap. c.mu is held.
func (c *Client) advanceLocked(room string, p Position, newEpoch bool) {
	cur, ok := c.positions[room]
	if ok && (cur.Epoch == p.Epoch && cur.Offset >= p.Offset || cur.Epoch != p.Epoch && !newEpoch) {
		return
	}
	c.positions[room] = p
}

// trackDelivery advances the position of a delivery's durable room. It
// runs on the read goroutine, before the frame is queued for callbacks.
// Deliveries of rooms neither remembered nor being joined or left are
// ignored, so that a late one cannot bring back a forgotten position.
func (c *Client) trackDelivery(env *envelope.Envelope) {
	room := env.Meta.Room
	if room == "" {
		return
	}
	p, ok := OffsetOf(env)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.rooms[room]; !ok && c.roomOps[room] == 0 {
		return
	}
	c.advanceLocked(room, p, false)
}

// joinedLocked follows the $joined answering op: a durable room's
// position advances, a room that is not durable has none. It returns the
// Recovery to report when op joined from a position. c.mu is held; it
// runs on the read goroutine, after the replayed messages were queued.
func (c *Client) joinedLocked(op *roomOp, env *envelope.Envelope) *Recovery {
	var p joinedPayload
	_ = json.Unmarshal(env.Payload, &p)
	var rec *Recovery
	if op.since != nil {
		rec = &Recovery{Room: op.room, Since: *op.since, Rejoin: op.kind == opRejoin}
	}
	if !p.Durable {
		delete(c.positions, op.room)
		return rec
	}
	c.advanceLocked(op.room, Position{Offset: p.Offset, Epoch: p.Epoch}, true)
	if rec != nil {
		// Absent recovered with since given: the edge could not say
		// everything was replayed, so it is a gap.
		rec.Recovered = p.Recovered != nil && *p.Recovered
		rec.Position = c.positions[op.room]
	}
	return rec
}

// serverJoinedLocked takes the position of a $joined without a correlation
// id (a worker or service joined the connection to a durable room).
func (c *Client) serverJoinedLocked(room string, env *envelope.Envelope) {
	var p joinedPayload
	if json.Unmarshal(env.Payload, &p) == nil && p.Durable {
		c.advanceLocked(room, Position{Offset: p.Offset, Epoch: p.Epoch}, true)
	}
}
