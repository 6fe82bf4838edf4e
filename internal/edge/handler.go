package edge

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/wire"
)

// handler receives gws events. The connection is the socket's session value.
type handler struct{ e *Edge }

func (h *handler) conn(socket *gws.Conn) *conn {
	v, _ := socket.Session().Load(sessionKey)
	c, _ := v.(*conn)
	return c
}

const sessionKey = "c"

func (h *handler) OnOpen(socket *gws.Conn) {}

func (h *handler) OnClose(socket *gws.Conn, err error) {
	if c := h.conn(socket); c != nil {
		c.unregister()
	}
}

func (h *handler) OnPing(socket *gws.Conn, payload []byte) {
	if c := h.conn(socket); c != nil {
		c.lastRead.Store(time.Now().UnixNano())
		c.sendFrame(wsFrame(opPong, payload)) // through the queue, never between a frame's parts
		return
	}
	_ = socket.WritePong(payload)
}

func (h *handler) OnPong(socket *gws.Conn, payload []byte) {
	if c := h.conn(socket); c != nil {
		c.lastRead.Store(time.Now().UnixNano())
	}
}

func (h *handler) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	c := h.conn(socket)
	if c == nil || c.isClosing() {
		return // frames after a close are drained, not acted on
	}
	if msg.Opcode == gws.OpcodeText && !utf8.Valid(msg.Bytes()) {
		// Checked here rather than by gws, so that the close goes through
		// the connection's writer like every other.
		c.closeWith(envelope.CloseInvalidUTF8, "invalid UTF-8", true)
		return
	}
	b := msg.Bytes()
	cid := func() string {
		if c.protobuf && msg.Opcode == gws.OpcodeBinary {
			return wire.CorrelationID(b)
		}
		return envelope.CorrelationID(b)
	}
	if !c.admit(len(b), cid) {
		return
	}
	// Converted only once admitted: a client over its rate costs no
	// protobuf work.
	data, wrong := c.envelopeOf(msg)
	if wrong != "" {
		c.sendError(cid(), envelope.CodeInvalidArgument, wrong)
		return
	}
	c.handle(data)
}

// admit counts one client frame of size bytes (a WebSocket frame, or a
// line of a fallback POST) and takes it from the connection's and the
// user's rate limits. A frame over a limit is answered with
// RESOURCE_EXHAUSTED, to the request cid names, and admit reports false.
func (c *conn) admit(size int, cid func() string) bool {
	now := time.Now().UnixNano()
	c.lastRead.Store(now)
	c.lastData.Store(now)
	c.e.stats.framesIn.Add(1)
	c.e.stats.bytesIn.Add(int64(size))
	if wait, scope := c.rateLimited(time.Unix(0, now)); wait > 0 {
		c.e.stats.rateLimited.Add(1)
		c.send(c.refusal(cid(), &envelope.ErrorPayload{
			Code: envelope.CodeResourceExhausted, Message: scope + " rate limit exceeded",
			RetryAfterMs: max(wait.Milliseconds(), 1),
		}))
		return false
	}
	return true
}

// protobufJSONGrowth bounds the JSON form of a natter.protobuf frame, in
// multiples of WebSocketConfig.MaxMessageSize (docs/protocol.md).
const protobufJSONGrowth = 4

// envelopeOf returns the JSON envelope of a client frame: a text frame's
// bytes on natter, a binary frame's Envelope converted once on
// natter.protobuf. What cannot be one is the reason to refuse it.
func (c *conn) envelopeOf(msg *gws.Message) ([]byte, string) {
	switch {
	case !c.protobuf && msg.Opcode == gws.OpcodeText:
		return msg.Bytes(), ""
	case !c.protobuf:
		return nil, "binary frames are not supported on natter; send JSON text frames, or connect with natter.protobuf"
	case msg.Opcode != gws.OpcodeBinary:
		return nil, "text frames are not supported on natter.protobuf; send natter.v1.Envelope in binary frames"
	}
	env, err := c.e.codec.FromProto(wire.Client, msg.Bytes())
	if err != nil {
		return nil, err.Error()
	}
	b, err := envelope.Encode(env)
	if err != nil {
		return nil, "invalid envelope: " + err.Error()
	}
	return b, ""
}

// rateLimited takes one message from the connection's and the user's
// limiters, or says how long to wait and which limit it hit. A message the
// user's limiter refuses still counts against the connection's.
func (c *conn) rateLimited(now time.Time) (time.Duration, string) {
	if c.limit != nil {
		if wait, ok := delay(c.limit, now); !ok {
			return wait, "connection"
		}
	}
	if c.ulimit != nil {
		if wait, ok := delay(c.ulimit, now); !ok {
			return wait, "user"
		}
	}
	return 0, ""
}

// handle acts on one client frame. data is only valid during the call.
func (c *conn) handle(data []byte) {
	var env envelope.Envelope
	limit := c.e.cfg.WebSocket.MaxMessageSize
	if c.protobuf {
		// The frame was at most MaxMessageSize; its JSON form is larger
		// (field names, base64, quoted 64-bit integers), within a bound.
		limit *= protobufJSONGrowth
	}
	if err := envelope.DecodeInto(&env, data, limit); err != nil {
		c.send(c.refusal(envelope.CorrelationID(data), &envelope.ErrorPayload{Code: envelope.CodeOf(err), Message: err.Error()}))
		return
	}
	cid := env.Meta.CorrelationID
	if cid != "" && c.answer(&env, data) {
		return // the client's answer to a server-to-client request
	}
	if env.Type != envelope.TypeAbort && c.inFlight(cid) {
		// Whatever it is, its answer would carry the id of a request still
		// waiting: refused without it (see refuseDuplicate).
		c.refuseDuplicate(cid)
		return
	}
	switch env.Type {
	case envelope.TypeAbort:
		if cid == "" {
			c.sendError("", envelope.CodeInvalidArgument, "$ws:abort needs meta.correlationId of the request")
			return
		}
		c.e.rpc.abort(c, cid)
	case envelope.TypeJoin, envelope.TypeLeave:
		var p envelope.RoomPayload
		if err := json.Unmarshal(env.Payload, &p); err != nil || envelope.ValidateID(p.Room) != nil {
			c.sendError(cid, envelope.CodeInvalidArgument, "payload must be {\"room\": id}, id 1-128 characters of [A-Za-z0-9_-]")
			return
		}
		var err error
		if env.Type == envelope.TypeJoin {
			if aerr := c.authorizeJoin(p.Room); aerr != nil {
				c.sendError(cid, codeOf(aerr), auth.Reason(aerr))
				return
			}
			err = c.e.hub.join(c, p.Room, cid, p.Presence, p.Since)
		} else {
			c.e.hub.leave(c, p.Room, cid)
		}
		if err != nil {
			c.sendErrorPayload(cid, rpc.FromError(err).Payload())
		}
	case envelope.TypeError, envelope.TypeRPCError:
		// From a client these only answer a server request (above). Any
		// other, such as a late answer, is dropped without a reply: an
		// error about an error could bounce between a client and the edge
		// for ever.
		c.e.stats.invalidIn.Add(1)
	case envelope.TypeAuthRefresh:
		c.refresh(cid, env.Payload)
	case envelope.TypePresence:
		c.queryPresence(cid, env.Payload)
	case envelope.TypeHistory:
		c.queryHistory(cid, env.Payload)
	case envelope.TypeStreamJoin, envelope.TypeStreamLeave, envelope.TypeStreamCancel:
		c.stream(env.Type, cid, env.Payload)
	case envelope.TypePresenceState:
		c.setState(cid, env.Payload)
	case envelope.TypeHeartbeat:
		c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeHeartbeatAck, Meta: envelope.Meta{CorrelationID: cid, Timestamp: time.Now().UnixMilli()}})
	default:
		if envelope.IsSystemType(env.Type) {
			c.sendError(cid, envelope.CodeNotFound, "unknown system type "+env.Type)
			return
		}
		t, data := c.e.traceIn(&env, data)
		defer t.end()
		_, vs := c.e.child(t, "natter.edge.validate", env.Type, trace.SpanKindInternal)
		err := c.e.checkIn(&env)
		if err != nil {
			failed(vs, err)
			failed(t.span, err)
		}
		endSpan(vs)
		if err != nil {
			c.sendErrorPayload(cid, err)
			return
		}
		if c.e.work.isDurable(env.Type) {
			c.e.work.store(c, &env, data, t)
			return
		}
		c.forward(&env, data, t)
	}
}

// forward publishes an application message to <prefix>.in.<type>, with the
// connection's identity in headers, or makes the NATS request of an RPC.
func (c *conn) forward(env *envelope.Envelope, data []byte, t inTrace) {
	cid := env.Meta.CorrelationID
	subj, err := c.e.ns.In(env.Type)
	if err != nil {
		c.sendError(cid, envelope.CodeInvalidArgument, err.Error())
		return
	}
	hdr := nats.Header{
		envelope.HeaderConn: []string{c.id},
		envelope.HeaderEdge: []string{c.e.cfg.EdgeID},
	}
	if c.user != "" {
		hdr[envelope.HeaderUser] = []string{c.user}
	}
	if !c.e.nc.IsConnected() {
		// Requests would sit in the reconnect buffer until they time out.
		c.sendError(cid, envelope.CodeUnavailable, "message bus unavailable")
		return
	}
	if cid == "" {
		span := c.e.traceOut(t, "natter.edge.publish", env.Type, trace.SpanKindProducer, hdr)
		// nats.go copies data into its buffer before PublishMsg returns.
		if err := c.e.nc.PublishMsg(&nats.Msg{Subject: subj.String(), Header: hdr, Data: data}); err != nil {
			failed(span, &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: err.Error()})
			endSpan(span)
			c.sendError("", envelope.CodeUnavailable, "message bus unavailable")
			return
		}
		endSpan(span)
		c.e.stats.published.Add(1)
		return
	}
	timeout := rpc.ClampTimeout(env.Meta.TimeoutMs, c.e.cfg.NATS.RPCTimeout, c.e.cfg.NATS.RPCMaxTimeout)
	hdr[envelope.HeaderTimeout] = []string{strconv.FormatInt(timeout.Milliseconds(), 10)}
	span := c.e.traceOut(t, "natter.edge.rpc", env.Type, trace.SpanKindClient, hdr)
	c.e.rpc.start(c, cid, timeout, &nats.Msg{Subject: subj.String(), Header: hdr, Data: data}, span)
}

func (c *conn) sendEnvelope(env *envelope.Envelope) {
	b, err := envelope.Encode(env)
	if err != nil {
		c.e.cfg.Logger.Error("edge: encode", "type", env.Type, "err", err)
		return
	}
	c.send(b)
}

func (c *conn) sendError(cid string, code envelope.Code, message string) {
	c.send(envelope.ErrorFrame(cid, code, message))
}

func (c *conn) sendErrorPayload(cid string, p *envelope.ErrorPayload) {
	c.send(envelope.EncodeError(cid, p))
}

// queryPresence answers $presence: {"room": id, "cursor"?, "limit"?} for
// rooms the connection is in (any room with Config.Presence.Open), or
// {"user": id} for whether a user is online.
func (c *conn) queryPresence(cid string, payload json.RawMessage) {
	if c.e.presence == nil {
		c.sendError(cid, envelope.CodeUnimplemented, "presence is off on this edge")
		return
	}
	var q presence.Query
	if err := json.Unmarshal(payload, &q); err != nil || (q.Room == "") == (q.User == "") {
		c.sendError(cid, envelope.CodeInvalidArgument, `payload must be {"room": id, "cursor"?, "limit"?} or {"user": id}`)
		return
	}
	var reply any
	if q.Room != "" {
		c.e.hub.mu.Lock()
		member := c.rooms.has(q.Room)
		c.e.hub.mu.Unlock()
		if !member && !c.e.cfg.Presence.Open {
			c.sendError(cid, envelope.CodePermissionDenied, "not a member of room "+q.Room)
			return
		}
		reply = c.e.presence.Room(q.Room, q.Cursor, q.Limit)
	} else {
		info := c.e.presence.User(q.User)
		if q.User != c.user && !c.e.cfg.Presence.Open {
			// Others see whether a user is online, not where.
			info = &presence.UserInfo{User: info.User, Online: info.Online, Connections: []presence.Entry{}}
		}
		reply = info
	}
	b, _ := json.Marshal(reply)
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypePresence, Meta: envelope.Meta{CorrelationID: cid}, Payload: b})
}

// setState sets the connection's presence state ({"state": any JSON of at
// most presence.MaxStateSize bytes}, null to clear); room members that
// watch presence see it in $presence.diff.
func (c *conn) setState(cid string, payload json.RawMessage) {
	var p struct {
		State json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		c.sendError(cid, envelope.CodeInvalidArgument, `payload must be {"state": value}`)
		return
	}
	if len(p.State) > presence.MaxStateSize {
		c.sendError(cid, envelope.CodeResourceExhausted, "state is larger than 256 bytes")
		return
	}
	if string(p.State) == "null" {
		p.State = nil
	}
	c.e.hub.mu.Lock()
	c.state = append(json.RawMessage(nil), p.State...)
	entry := c.entryLocked()
	c.e.hub.mu.Unlock()
	c.e.setPresence(entry)
	if cid != "" {
		c.sendEnvelope(&envelope.Envelope{Type: envelope.TypePresenceState, Meta: envelope.Meta{CorrelationID: cid}, Payload: payload})
	}
}

// stream answers $stream.join, $stream.leave and $stream.cancel
// (streams.go).
func (c *conn) stream(typ, cid string, payload json.RawMessage) {
	s := c.e.streams
	switch {
	case s == nil:
		c.sendError(cid, envelope.CodeUnimplemented, "response streams are off on this edge")
	case typ == envelope.TypeStreamJoin && cid == "":
		c.sendError("", envelope.CodeInvalidArgument, "$stream.join is a request: it needs meta.correlationId")
	case typ == envelope.TypeStreamJoin:
		s.join(c, cid, payload)
	case typ == envelope.TypeStreamLeave:
		s.leave(c, cid, payload)
	default:
		s.cancelStream(c, cid, payload)
	}
}
