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
//	             gets "chat.sent" {"ts"}. Only members of room may send:
//	             PERMISSION_DENIED "join room <room> before sending to it"
//
// A request (meta.correlationId set) that fails gets RPC_ERROR, as from any
// worker. A plain message that fails is not dropped in silence either: the
// sending connection gets an ERROR frame with the same code and
// details {"type": <the message's type>}, published to its
// natter.out.conn.<conn> subject.
//
// The handlers keep no state; they are safe to run on many workers at once.
package chat

import (
	"context"
	"encoding/json"
	"errors"
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
		if err := w.Handle(typ, reportErrors(h)); err != nil {
			return err
		}
	}
	return nil
}

// reportErrors sends a failed plain message's error to the connection that
// sent it. The worker SDK answers a request's error with RPC_ERROR but has
// nobody to tell about a plain message's, so without this a client whose
// chat.send was refused would never learn it.
func reportErrors(h worker.Handler) worker.Handler {
	return func(ctx context.Context, m *worker.Message) error {
		err := h(ctx, m)
		if err == nil || m.IsRequest() || m.Conn == "" {
			return err
		}
		re := *rpc.FromError(err) // a copy: sentinels are shared
		if len(re.Details) == 0 {
			re.Details, _ = json.Marshal(map[string]string{"type": m.Envelope.Type})
		}
		env := &envelope.Envelope{Type: envelope.TypeError}
		env.Payload, _ = json.Marshal(re.Payload())
		if perr := m.Publisher().ToConn(m.Conn, env); perr != nil {
			return errors.Join(err, perr)
		}
		return err
	}
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
			if errors.Is(err, rpc.ErrPermissionDenied) {
				return rpc.Errorf(envelope.CodePermissionDenied, "join room %s before sending to it", r.Room)
			}
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
