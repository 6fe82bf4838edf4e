// Package presence is the public contract of Natter's presence: the
// entries edges keep in the JetStream KV bucket natter_presence, the
// lifecycle events on natter.evt.*, and the query served on
// natter.presence.query, with Go helpers to ask it.
//
// Everything here is safe for concurrent use.
package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// Bucket is the KV bucket of the default namespace. Its keys are
// conn.<connection id>, one per connection (an Entry, written by its edge
// when it changes, without a TTL), and edge.<edge id>, one lease per edge
// (a key with a TTL that the edge refreshes; when it expires, the other
// edges remove the edge's connections).
const Bucket = "natter_presence"

// MaxStateSize bounds a connection's client-set state, in bytes of JSON.
const MaxStateSize = 256

// Entry is the value of one connection's key.
type Entry struct {
	Conn        string          `json:"conn"`
	User        string          `json:"user,omitempty"`
	Edge        string          `json:"edge"`
	Rooms       []string        `json:"rooms,omitempty"`
	ConnectedAt int64           `json:"connectedAt"` // Unix ms
	State       json.RawMessage `json:"state,omitempty"`
	// Seq orders an edge's updates of one connection; it is not stored.
	Seq uint64 `json:"-"`
}

// Lifecycle event names: natter.evt.<name>.
const (
	EventConnect    = "connect"
	EventDisconnect = "disconnect"
	EventOnline     = "online"
	EventOffline    = "offline"
	EventJoin       = "join"
	EventLeave      = "leave"
)

// Event is the body of a lifecycle event.
type Event struct {
	Event string `json:"event"`
	Conn  string `json:"conn"`
	User  string `json:"user,omitempty"`
	Edge  string `json:"edge,omitempty"`
	Room  string `json:"room,omitempty"`
	// Revision is the KV revision of the change that caused the event; it
	// orders events and identifies them.
	Revision uint64 `json:"revision"`
	At       int64  `json:"at"` // Unix ms
}

// Query is the body of a request on natter.presence.query. Set exactly one
// of User, Room or Conn.
type Query struct {
	User   string `json:"user,omitempty"`
	Room   string `json:"room,omitempty"`
	Conn   string `json:"conn,omitempty"`
	Cursor string `json:"cursor,omitempty"` // Room: the next page's cursor
	Limit  int    `json:"limit,omitempty"`  // Room: page size, default 100, at most 1000
}

// UserInfo answers a User query.
type UserInfo struct {
	User        string  `json:"user"`
	Online      bool    `json:"online"`
	Connections []Entry `json:"connections"`
}

// Member is one connection in a room.
type Member struct {
	Conn  string          `json:"conn"`
	User  string          `json:"user,omitempty"`
	State json.RawMessage `json:"state,omitempty"`
}

// RoomPage answers a Room query: members ordered by connection id.
type RoomPage struct {
	Room    string   `json:"room"`
	Count   int      `json:"count"` // all members, not just this page
	Members []Member `json:"members"`
	Next    string   `json:"next,omitempty"` // cursor of the next page, "" on the last
}

// Reply is the JSON reply to a Query: one of the fields, or Error.
type Reply struct {
	User  *UserInfo              `json:"user,omitempty"`
	Room  *RoomPage              `json:"room,omitempty"`
	Conn  *Entry                 `json:"conn,omitempty"`
	Error *envelope.ErrorPayload `json:"error,omitempty"`
}

// Subject is where queries go: <prefix>.presence.query.
func Subject(ns envelope.Namespace) string { return ns.Prefix() + ".presence.query" }

// Ask sends q to the edges and returns their reply. An edge answers from
// its copy of the bucket, which follows the bucket within milliseconds.
func Ask(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, q Query) (*Reply, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	msg, err := nc.RequestWithContext(ctx, Subject(ns), body)
	if err != nil {
		return nil, rpc.FromError(err)
	}
	var r Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return nil, fmt.Errorf("presence: bad reply: %w", err)
	}
	if r.Error != nil {
		return nil, &rpc.Error{Code: r.Error.Code, Message: r.Error.Message}
	}
	return &r, nil
}

// Online reports whether user has a connection on any edge.
func Online(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, user string) (*UserInfo, error) {
	r, err := Ask(ctx, nc, ns, Query{User: user})
	if err != nil {
		return nil, err
	}
	if r.User == nil {
		return nil, errors.New("presence: reply without user")
	}
	return r.User, nil
}

// Room returns one page of room's members.
func Room(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, room, cursor string, limit int) (*RoomPage, error) {
	r, err := Ask(ctx, nc, ns, Query{Room: room, Cursor: cursor, Limit: limit})
	if err != nil {
		return nil, err
	}
	if r.Room == nil {
		return nil, errors.New("presence: reply without room")
	}
	return r.Room, nil
}
