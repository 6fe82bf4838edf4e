// Package chat holds the built-in worker handlers: echo, ping and a small
// chat-room app. cmd/worker runs them as a separate process; single-binary
// mode runs them inside the edge.
//
// Types:
//
//	echo         request -> reply "echo" with the same payload
//	ping         request -> reply "pong" {"time": unix ms, "worker": id}
//	chat.join    {"room"} -> the worker joins the sender to room; reply {"room"}
//	chat.leave   {"room"} -> the worker removes the sender from room
//	chat.send    {"room","text"} -> members of room except the sender get
//	             "chat.message" {"room","text","user","conn","ts"}; a request
//	             gets "chat.sent" {"ts"}
package chat

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// MaxTextLen bounds a chat message's text, in bytes.
const MaxTextLen = 4096

// Register adds the built-in handlers to w.
func Register(w *worker.Worker) error {
	for typ, h := range map[string]worker.Handler{
		"echo":       echo,
		"ping":       ping(w.ID()),
		"chat.join":  join,
		"chat.leave": leave,
		"chat.send":  send,
	} {
		if err := w.Handle(typ, h); err != nil {
			return err
		}
	}
	return nil
}

func echo(_ context.Context, m *worker.Message) error {
	if !m.IsRequest() {
		return nil
	}
	return m.Reply("echo", m.Envelope.Payload)
}

// ping answers with the clock and the id of the worker that answered, so
// that load spread over workers can be seen from a client.
func ping(id string) worker.Handler {
	return func(_ context.Context, m *worker.Message) error {
		if !m.IsRequest() {
			return nil
		}
		return m.Reply("pong", map[string]any{"time": time.Now().UnixMilli(), "worker": id})
	}
}

type roomReq struct {
	Room string `json:"room"`
}

func (r *roomReq) bind(m *worker.Message) error {
	if err := m.Bind(r); err != nil {
		return err
	}
	if err := envelope.ValidateID(r.Room); err != nil {
		return rpc.Errorf(envelope.CodeInvalidArgument, "%v", err)
	}
	if m.Conn == "" {
		return rpc.Errorf(envelope.CodeFailedPrecondition, "no sender connection")
	}
	return nil
}

func join(ctx context.Context, m *worker.Message) error {
	var r roomReq
	if err := r.bind(m); err != nil {
		return err
	}
	// The client asked: its own room rights apply, as for a $join.
	if err := m.Publisher().JoinAsClient(ctx, m.Conn, r.Room); err != nil {
		return err
	}
	if m.IsRequest() {
		return m.Reply("chat.join", r)
	}
	return nil
}

func leave(ctx context.Context, m *worker.Message) error {
	var r roomReq
	if err := r.bind(m); err != nil {
		return err
	}
	return m.Publisher().Leave(ctx, m.Conn, r.Room)
}

type sendReq struct {
	Room string `json:"room"`
	Text string `json:"text"`
}

// Message is what room members receive as "chat.message".
type Message struct {
	Room string `json:"room"`
	Text string `json:"text"`
	User string `json:"user"`
	Conn string `json:"conn"`
	TS   int64  `json:"ts"`
}

func send(ctx context.Context, m *worker.Message) error {
	var r sendReq
	if err := m.Bind(&r); err != nil {
		return err
	}
	if err := envelope.ValidateID(r.Room); err != nil {
		return rpc.Errorf(envelope.CodeInvalidArgument, "%v", err)
	}
	if r.Text == "" || len(r.Text) > MaxTextLen || !utf8.ValidString(r.Text) {
		return rpc.Errorf(envelope.CodeInvalidArgument, "text must be 1..%d bytes of UTF-8", MaxTextLen)
	}
	if m.Conn != "" {
		// Only members post: a client cannot write into rooms it may not
		// read. (Messages from services, without a connection, may.)
		if err := m.Publisher().RequireMember(ctx, m.Conn, r.Room); err != nil {
			return err
		}
	}
	ts := time.Now().UnixMilli()
	env, err := envelope.New("chat.message", Message{Room: r.Room, Text: r.Text, User: m.User, Conn: m.Conn, TS: ts})
	if err != nil {
		return err
	}
	var exclude []string
	if m.Conn != "" {
		exclude = []string{m.Conn}
	}
	// Durable rooms get the acknowledged path: the message is stored (or
	// the sender gets an error), whichever edge captures core publishes.
	pub := m.Publisher()
	if pub.IsDurable(ctx, r.Room) {
		if _, err := pub.ToDurableRoom(ctx, r.Room, env, exclude...); err != nil {
			return err
		}
	} else if err := pub.ToRoom(r.Room, env, exclude...); err != nil {
		return err
	}
	if m.IsRequest() {
		return m.Reply("chat.sent", map[string]int64{"ts": ts})
	}
	return nil
}
