package envelope

import (
	"encoding/json"
	"fmt"
)

// Control is the JSON body of a message on <prefix>.ctl.conn.<id>. Any
// service may send one; the edge that holds the connection acts on it and,
// when the message has a reply subject, answers with a ControlReply.
//
//	{"op":"join","room":"general"}
//	{"op":"join","room":"general","asClient":true}
//	{"op":"leave","room":"general"}
//	{"op":"member","room":"general"}
//	{"op":"close","code":4003,"reason":"bye"}
type Control struct {
	Op   string `json:"op"`
	Room string `json:"room,omitempty"`
	// AsClient makes a join subject to the client's own room authorization
	// (token grants, public rooms, the join authorizer), for handlers that
	// join a client to a room it asked for: PERMISSION_DENIED otherwise.
	AsClient bool      `json:"asClient,omitempty"`
	Code     CloseCode `json:"code,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// Control operations.
const (
	OpJoin  = "join"
	OpLeave = "leave"
	OpClose = "close"
	// OpMember succeeds when the connection is in Room, and fails with
	// PERMISSION_DENIED when it is not: handlers that post to a room on a
	// client's behalf check this first.
	OpMember = "member"
)

// ControlReply answers a Control request.
type ControlReply struct {
	OK    bool          `json:"ok"`
	Error *ErrorPayload `json:"error,omitempty"`
}

// RoomPayload is the payload of $join, $leave, $joined and $left.
// Presence, on $join, asks for $presence.diff frames of the room. Since, on
// $join of a durable room, is the last position the client saw: the edge
// replays what it missed.
type RoomPayload struct {
	Room     string    `json:"room"`
	Presence bool      `json:"presence,omitempty"`
	Since    *Position `json:"since,omitempty"`
}

// Position is a place in a durable room's history: the stream sequence of
// a message (meta.offset) and the history's epoch (meta.epoch), which
// changes when history is reset.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// Joined is the payload of $joined. Durable rooms set Durable and the
// position to continue from; Recovered answers a $join with since: true
// when every message after it was replayed, false when recovery is
// incomplete and the application should refetch its state.
type Joined struct {
	Room      string `json:"room"`
	Durable   bool   `json:"durable,omitempty"`
	Offset    uint64 `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Recovered *bool  `json:"recovered,omitempty"`
}

// HistoryQuery is the payload of $history: the first Limit messages after
// Since (0: from the oldest kept), or else the last Limit messages before
// Before (the newest when zero).
type HistoryQuery struct {
	Room   string  `json:"room"`
	Limit  int     `json:"limit,omitempty"`
	Since  *uint64 `json:"since,omitempty"`
	Before uint64  `json:"before,omitempty"`
}

// History answers $history: messages oldest first, each with meta.room,
// meta.offset and meta.epoch; More tells whether another page exists in
// the direction asked.
type History struct {
	Room     string            `json:"room"`
	Epoch    string            `json:"epoch"`
	Messages []json.RawMessage `json:"messages"`
	More     bool              `json:"more"`
}

// Accepted is the payload of $ws:accepted, the answer to a request of a
// durable type: Seq is its place in the work stream, and Duplicate says
// that a message with the same meta.idempotencyKey from the same user was
// already stored within the dedupe window, so this one was not.
type Accepted struct {
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// MetaIdempotencyKey is the meta key of a durable message's idempotency
// key: the work stream stores one message per key and user within its
// dedupe window.
const MetaIdempotencyKey = "idempotencyKey"

// MaxIdempotencyKey bounds an idempotency key, in bytes.
const MaxIdempotencyKey = 128

// IdempotencyKey returns m's meta.idempotencyKey: "" when there is none,
// and an error unless it is a string of 1 to MaxIdempotencyKey printable
// ASCII characters.
func (m *Meta) IdempotencyKey() (string, error) {
	raw, ok := m.Extra[MetaIdempotencyKey]
	if !ok {
		return "", nil
	}
	var key string
	if err := json.Unmarshal(raw, &key); err != nil || key == "" || len(key) > MaxIdempotencyKey {
		return "", fmt.Errorf("%w: meta.idempotencyKey must be a string of 1-%d characters", ErrInvalidMeta, MaxIdempotencyKey)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return "", fmt.Errorf("%w: meta.idempotencyKey must be printable ASCII without spaces", ErrInvalidMeta)
		}
	}
	return key, nil
}
