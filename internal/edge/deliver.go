package edge

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
	"github.com/natter/natter/pkg/wire"
)

// outbound checks an envelope published toward clients and returns the
// WebSocket frame to send, encoded once for every local recipient. Room
// deliveries get meta.room. Invalid envelopes are dropped and counted,
// envelopes that are not UTF-8 among them (DecodeInto refuses them: a
// browser fails a connection on such a text frame).
func (e *Edge) outbound(msg *nats.Msg, room string) (*outFrame, []string, bool) {
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, msg.Data, e.cfg.NATS.MaxOutboundSize); err != nil {
		e.stats.dropped.Add(1)
		e.cfg.Logger.Debug("edge: dropped invalid outbound envelope", "subject", msg.Subject, "err", err)
		return nil, nil, false
	}
	if !e.validOut(&env) {
		return nil, nil, false
	}
	frame := msg.Data
	forged := false
	if len(env.Meta.Extra) > 0 {
		// Positions are the edge's to give, in durable rooms only.
		for _, k := range [...]string{"offset", "epoch"} {
			if _, ok := env.Meta.Extra[k]; ok {
				delete(env.Meta.Extra, k)
				forged = true
			}
		}
	}
	// A message that carries trace context (a Traceparent header) gives
	// it to the clients, as the delivery span's when tracing is on.
	var span trace.Span
	if tracing.HasContext(msg.Header) {
		var sc trace.SpanContext
		if sc, span = e.traceDeliver(msg.Header, env.Type); sc.IsValid() {
			setMetaTrace(&env, sc)
			forged = true
		}
	}
	if forged || room != "" && env.Meta.Room != room {
		if room != "" {
			env.Meta.Room = room
		}
		var err error
		if frame, err = envelope.Encode(&env); err != nil {
			endSpan(span)
			e.stats.dropped.Add(1)
			return nil, nil, false
		}
	}
	var exclude []string
	if x := msg.Header.Get(envelope.HeaderExclude); x != "" {
		exclude = strings.Split(x, ",")
	}
	f := newOutFrame(frame)
	f.span = span
	return f, exclude, true
}

// outFrame is one envelope on its way to clients, encoded once per wire:
// the JSON text frame when it is made, the natter.protobuf binary frame
// when the first protobuf connection needs it, shared by the others. Like
// every frame, it is never modified once queued.
type outFrame struct {
	text []byte // the complete text frame
	json []byte // its payload: the JSON envelope
	once sync.Once
	bin  []byte // the binary frame; nil when the envelope does not convert
	// pos is the durable room position the envelope carries, set by the
	// durable rooms' delivery: fallback streams take it from here rather
	// than from the JSON.
	pos *framePos
	// The fallback streams' form (sseFrame), made for the first of them.
	sseOnce sync.Once
	sse     []byte
	// span is the delivery span (trace.go) that the fan-out ends; nil: none.
	span trace.Span
}

// delivered ends the delivery span once the frame is queued for every
// local recipient.
func (f *outFrame) delivered() { endSpan(f.span) }

// framePos is a durable delivery's position.
type framePos struct {
	room   string
	offset uint64
	epoch  string
}

func newOutFrame(env []byte) *outFrame {
	text := wsFrame(opText, env)
	return &outFrame{text: text, json: text[len(text)-len(env):]}
}

// binary returns the protobuf frame, converting the envelope the first
// time, or nil when it does not convert.
func (f *outFrame) binary(e *Edge) []byte {
	f.once.Do(func() {
		b, err := e.codec.JSONToProto(wire.Server, f.json, len(f.json))
		if err != nil {
			e.stats.dropped.Add(1)
			if e.logLimit.Allow() {
				e.cfg.Logger.Warn("edge: an outbound envelope does not convert to protobuf", "err", err)
			}
			return
		}
		f.bin = wsFrame(opBinary, b)
		e.stats.protobufEncodes.Add(1)
	})
	return f.bin
}

// size is what the frame costs a queue: its larger encoding.
func (f *outFrame) size() int { return max(len(f.text), len(f.bin)) }

// sendOut queues f in the connection's wire.
func (c *conn) sendOut(f *outFrame) {
	if c.session != nil {
		c.sendFrame(f.sseFrame())
		return
	}
	if !c.protobuf {
		c.sendFrame(f.text)
		return
	}
	if b := f.binary(c.e); b != nil {
		c.sendFrame(b)
	}
}

// deliverGroup fans a room or user message out to the local members.
func (e *Edge) deliverGroup(g *group, msg *nats.Msg) {
	room := ""
	if g.room {
		room = g.id
	}
	frame, exclude, ok := e.outbound(msg, room)
	if !ok {
		return
	}
	defer frame.delivered()
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c := range g.members {
		if exclude == nil || !slices.Contains(exclude, c.id) {
			c.sendOut(frame)
		}
	}
}

// deliverDiff sends a room's batched presence changes to the local members
// that asked for them with $join {"presence": true}.
func (e *Edge) deliverDiff(room string, d any) {
	e.hub.mu.Lock()
	g := e.hub.rooms[room]
	e.hub.mu.Unlock()
	if g == nil {
		return
	}
	payload, _ := json.Marshal(d)
	b, err := envelope.Encode(&envelope.Envelope{Type: envelope.TypePresenceDiff, Meta: envelope.Meta{Room: room}, Payload: payload})
	if err != nil {
		return
	}
	frame := newOutFrame(b)
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c, watch := range g.members {
		if watch {
			c.sendOut(frame)
		}
	}
}

// deliverAll fans a message out to every local connection.
func (e *Edge) deliverAll(msg *nats.Msg) {
	frame, exclude, ok := e.outbound(msg, "")
	if !ok {
		return
	}
	defer frame.delivered()
	e.conns.each(func(c *conn) {
		if exclude == nil || !slices.Contains(exclude, c.id) {
			c.sendOut(frame)
		}
	})
}

// onOut delivers a message addressed to this one connection. A request
// (the message has a reply subject) is a server-to-client RPC.
func (c *conn) onOut(msg *nats.Msg) {
	if msg.Reply == "" {
		if frame, _, ok := c.e.outbound(msg, ""); ok {
			c.sendOut(frame)
			frame.delivered()
		}
		return
	}
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, msg.Data, c.e.cfg.NATS.MaxOutboundSize); err != nil || envelope.IsSystemType(env.Type) {
		c.e.stats.dropped.Add(1)
		_ = msg.Respond(envelope.RPCErrorFrame("", envelope.CodeInvalidArgument, "invalid request envelope"))
		return
	}
	if !c.e.validOut(&env) {
		_ = msg.Respond(envelope.RPCErrorFrame("", envelope.CodeInvalidArgument, "payload breaks the schema of "+env.Type))
		return
	}
	c.askClient(msg, &env)
}

// control acts on a join, leave or close from a worker or service. These
// need no grant: the server side decides.
func (c *conn) control(msg *nats.Msg) {
	var ctl envelope.Control
	err := json.Unmarshal(msg.Data, &ctl)
	if err == nil {
		switch ctl.Op {
		case envelope.OpJoin, envelope.OpLeave:
			if err = envelope.ValidateID(ctl.Room); err != nil {
				err = &rpc.Error{Code: envelope.CodeInvalidArgument, Message: err.Error()}
			} else if ctl.Op == envelope.OpJoin {
				if ctl.AsClient {
					if aerr := c.authorizeJoin(ctl.Room); aerr != nil {
						err = &rpc.Error{Code: codeOf(aerr), Message: auth.Reason(aerr)}
						break
					}
				}
				err = c.e.hub.joinAs(c, ctl.Room, "", false, true, nil)
			} else {
				c.e.hub.leave(c, ctl.Room, "")
			}
		case envelope.OpMember:
			c.e.hub.mu.Lock()
			member := c.rooms.has(ctl.Room)
			c.e.hub.mu.Unlock()
			if !member || ctl.Room == "" {
				err = &rpc.Error{Code: envelope.CodePermissionDenied, Message: "not a member of this room"}
			}
		case envelope.OpClose:
			code := ctl.Code
			if code == 0 {
				code = envelope.CloseServer
			}
			if code < 4000 || code > 4999 {
				err = &rpc.Error{Code: envelope.CodeInvalidArgument, Message: "close code must be 4000-4999"}
				break
			}
			c.closeWith(code, clipReason(ctl.Reason), false)
		default:
			err = &rpc.Error{Code: envelope.CodeInvalidArgument, Message: "unknown op " + ctl.Op}
		}
	} else {
		err = &rpc.Error{Code: envelope.CodeInvalidArgument, Message: "control body must be JSON"}
	}
	replyControl(msg, err)
}

// replyControl answers a control message that asked for a reply.
func replyControl(msg *nats.Msg, err error) {
	if msg.Reply == "" {
		return
	}
	rep := envelope.ControlReply{OK: err == nil}
	if err != nil {
		rep.Error = rpc.FromError(err).Payload()
	}
	b, _ := json.Marshal(rep)
	_ = msg.Respond(b)
}

// clipReason cuts a close reason to what a close frame holds (123 bytes),
// on a rune boundary: browsers fail a connection whose reason is not UTF-8.
func clipReason(s string) string {
	const max = 120
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
