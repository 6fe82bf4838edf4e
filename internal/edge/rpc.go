package edge

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

// rpcMux carries every client request of the edge over one NATS inbox
// subscription, <inbox>.<token>. One subscription means one goroutine
// delivers a call's progress frames and its reply, so they reach the
// client in the order the worker sent them; no goroutine waits per call.
type rpcMux struct {
	e      *Edge
	prefix string // "_INBOX.<nuid>." (or the connection's custom inbox prefix)
	sub    *nats.Subscription
	seq    atomic.Uint64
	calls  sync.Map // token -> *call
}

// call is one client request in flight.
type call struct {
	c     *conn
	cid   string
	reply string // the inbox subject the worker answers on
	timer *time.Timer
	start time.Time
	mu    sync.Mutex // orders progress frames before the one reply
	done  bool       // guarded by mu: the client got its one reply
	span  trace.Span // the RPC span (trace.go), ended by finish; nil: none
}

func newRPCMux(e *Edge) (*rpcMux, error) {
	// NewInbox honours nats.CustomInboxPrefix.
	m := &rpcMux{e: e, prefix: e.nc.NewInbox() + "."}
	sub, err := e.nc.Subscribe(m.prefix+"*", m.onReply)
	if err != nil {
		return nil, err
	}
	m.sub = sub
	return m, nil
}

// start sends a client request. It answers RESOURCE_EXHAUSTED past the
// in-flight bound, and refuses a correlation id already in flight on this
// connection with an ERROR ALREADY_EXISTS that does not carry the id (see
// refuseDuplicate).
func (m *rpcMux) start(c *conn, cid string, timeout time.Duration, msg *nats.Msg, span trace.Span) {
	c.rpcMu.Lock()
	switch {
	case c.calls[cid] != nil:
		c.rpcMu.Unlock()
		endSpan(span)
		c.refuseDuplicate(cid)
		return
	case len(c.calls) >= m.e.cfg.Limits.MaxInflightRPC:
		c.rpcMu.Unlock()
		p := &envelope.ErrorPayload{Code: envelope.CodeResourceExhausted, Message: "too many requests in flight", RetryAfterMs: 100}
		failed(span, p)
		endSpan(span)
		c.sendErrorPayload(cid, p)
		return
	case c.isClosed():
		c.rpcMu.Unlock()
		endSpan(span)
		return
	}
	token := strconv.FormatUint(m.seq.Add(1), 36)
	k := &call{c: c, cid: cid, reply: m.prefix + token, start: time.Now(), span: span}
	if c.calls == nil {
		c.calls = make(map[string]*call)
	}
	c.calls[cid] = k
	m.calls.Store(token, k)
	k.timer = time.AfterFunc(timeout, func() {
		// The worker's handler stops too: its deadline may be later.
		m.finish(k, envelope.ErrorFrame(cid, envelope.CodeDeadlineExceeded, "no reply within "+timeout.String()), true)
	})
	c.rpcMu.Unlock()

	msg.Reply = k.reply
	m.e.stats.rpcs.Add(1)
	if err := m.e.nc.PublishMsg(msg); err != nil {
		m.finish(k, envelope.ErrorFrame(cid, envelope.CodeUnavailable, "message bus unavailable"), false)
	}
}

// onReply handles everything that arrives on the inbox: NATS's
// no-responders status, progress frames and the final reply.
func (m *rpcMux) onReply(msg *nats.Msg) {
	token := msg.Subject[len(m.prefix):]
	v, ok := m.calls.Load(token)
	if !ok {
		return // late: the call timed out, was aborted, or its client left
	}
	k := v.(*call)
	switch {
	case msg.Header.Get("Status") == "503":
		m.finish(k, envelope.ErrorFrame(k.cid, envelope.CodeUnavailable, "no worker for this type"), false)
	case msg.Header.Get(envelope.HeaderProgress) != "":
		if frame, err := m.e.relay(k.cid, msg, envelope.TypeRPCProgress); err == nil {
			k.mu.Lock()
			if !k.done {
				k.c.send(frame) // never blocks
			}
			k.mu.Unlock()
		}
	default:
		frame, err := m.e.relay(k.cid, msg, "")
		if err != nil {
			frame = m.e.invalidReply(k.cid, err)
		}
		m.finish(k, frame, false)
	}
}

// inFlight reports whether cid names a request of c's still waiting for
// its reply: another frame must not carry it back.
func (c *conn) inFlight(cid string) bool {
	if cid == "" {
		return false
	}
	c.rpcMu.Lock()
	defer c.rpcMu.Unlock()
	return c.calls[cid] != nil
}

// refusal is p addressed to cid, unless cid is in flight: then it goes
// without it, in details.correlationId, so that the request waiting under
// that id is not settled by an error that is not its own.
func (c *conn) refusal(cid string, p *envelope.ErrorPayload) []byte {
	if c.inFlight(cid) {
		p.Details, _ = json.Marshal(map[string]string{"correlationId": cid})
		cid = ""
	}
	return envelope.EncodeError(cid, p)
}

// refuseDuplicate answers a request whose correlation id is already in
// flight on c. The refusal is an ERROR without meta.correlationId, so that
// no request of the client's matches it: the request in flight keeps its
// one reply, which a refusal carrying the id could be mistaken for. The id
// is in details, for the client's logs.
func (c *conn) refuseDuplicate(cid string) {
	details, _ := json.Marshal(map[string]string{"correlationId": cid})
	c.sendErrorPayload("", &envelope.ErrorPayload{
		Code:    envelope.CodeAlreadyExists,
		Message: "correlationId already in flight",
		Details: details,
	})
}

// invalidReply is the client's RPC_ERROR INTERNAL for a worker reply that
// relay refused. Why is logged (sampled); in DevMode it is also in
// details.reason, for the developer of the worker. A production edge keeps
// it to its log: it can name schemas and internals.
func (e *Edge) invalidReply(cid string, why error) []byte {
	if e.logLimit.Allow() {
		e.cfg.Logger.Warn("edge: invalid reply from worker", "err", why)
	}
	p := &envelope.ErrorPayload{Code: envelope.CodeInternal, Message: "invalid reply from worker"}
	if e.cfg.Auth.DevMode {
		p.Details, _ = json.Marshal(map[string]string{"reason": why.Error()})
	}
	return envelope.EncodeError(cid, p)
}

// finish ends a call once: it sends frame (if any) to the client and, with
// abort, tells the workers to cancel the handler's context.
func (m *rpcMux) finish(k *call, frame []byte, abort bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done {
		return
	}
	k.done = true
	m.calls.Delete(k.reply[len(m.prefix):])
	k.c.rpcMu.Lock() // start set k.timer under it
	k.timer.Stop()
	if k.c.calls[k.cid] == k {
		delete(k.c.calls, k.cid)
	}
	k.c.rpcMu.Unlock()
	if frame != nil {
		k.c.send(frame)
		if m.e.rpcLatency != nil {
			m.e.rpcLatency.Observe(time.Since(k.start).Seconds())
		}
	}
	if k.span != nil {
		if k.span.IsRecording() {
			if frame == nil {
				failed(k.span, &envelope.ErrorPayload{Code: envelope.CodeCanceled, Message: "connection closed"})
			} else if env, err := envelope.Decode(frame, len(frame)); err == nil && (env.Type == envelope.TypeRPCError || env.Type == envelope.TypeError) {
				var p envelope.ErrorPayload
				_ = json.Unmarshal(env.Payload, &p)
				failed(k.span, &p)
			}
		}
		k.span.End()
	}
	if abort {
		_ = m.e.nc.Publish(m.e.ns.Abort().String(), []byte(k.reply))
	}
}

// abort cancels the call cid of c: the client gets RPC_ERROR CANCELLED as
// its one reply, and the worker's handler context is cancelled.
func (m *rpcMux) abort(c *conn, cid string) {
	c.rpcMu.Lock()
	k := c.calls[cid]
	c.rpcMu.Unlock()
	if k != nil {
		m.finish(k, envelope.ErrorFrame(cid, envelope.CodeCanceled, "aborted by the client"), true)
	}
}

// dropConn ends every call of a closed connection, cancelling the
// workers' handlers, and answers the services waiting on it with
// UNAVAILABLE. start and ask check the phase under rpcMu, so none adds
// another after it.
func (m *rpcMux) dropConn(c *conn) {
	c.rpcMu.Lock()
	calls := make([]*call, 0, len(c.calls))
	for _, k := range c.calls {
		calls = append(calls, k)
	}
	asks := c.asks
	c.asks = nil
	c.rpcMu.Unlock()
	for _, k := range calls {
		m.finish(k, nil, true)
	}
	for _, a := range asks {
		a.finish(envelope.RPCErrorFrame("", envelope.CodeUnavailable, "connection closed"))
	}
}

// relay checks a worker's reply or progress envelope and returns it as the
// client must see it: carrying the client's correlation id, and of type typ
// when typ is set. Server-direction schemas apply to replies. The error
// says why an envelope is unfit.
func (e *Edge) relay(cid string, msg *nats.Msg, typ string) ([]byte, error) {
	data := msg.Data
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, data, e.cfg.NATS.MaxOutboundSize); err != nil {
		e.stats.dropped.Add(1)
		return nil, err
	}
	if typ != "" && env.Type != typ {
		e.stats.dropped.Add(1)
		return nil, fmt.Errorf("type %q where %q was expected", env.Type, typ)
	}
	if env.Type != envelope.TypeRPCError && env.Type != envelope.TypeError && !e.validOut(&env) {
		// validOut counted and logged it; the schema's words are wanted
		// only on this rare path, so they are asked for again here.
		if err := e.cfg.Schemas.Validate(schema.Server, env.Type, env.Payload); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("reply of type %q breaks its schema", env.Type)
	}
	// A reply that carries trace context (the worker's handler span)
	// gives it to the client.
	sc := tracing.FromHeader(msg.Header)
	if env.Meta.CorrelationID == cid && !sc.IsValid() {
		return data, nil
	}
	env.Meta.CorrelationID = cid
	if sc.IsValid() {
		setMetaTrace(&env, sc)
	}
	b, err := envelope.Encode(&env)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// ask is a server-to-client request waiting for the client's answer.
type ask struct {
	msg   *nats.Msg
	timer *time.Timer
	done  atomic.Bool
	span  trace.Span // the delivery span of a traced request; nil: none
}

func (a *ask) finish(data []byte) {
	if a.done.CompareAndSwap(false, true) {
		if a.timer != nil {
			a.timer.Stop()
		}
		endSpan(a.span)
		_ = a.msg.Respond(data)
	}
}

// askClient forwards a service's request on out.conn.<id> to the client
// with a correlation id of the edge's, and answers the service with the
// client's reply, or DEADLINE_EXCEEDED.
func (c *conn) askClient(msg *nats.Msg, env *envelope.Envelope) {
	ms, _ := strconv.ParseInt(msg.Header.Get(envelope.HeaderTimeout), 10, 64)
	if ms <= 0 {
		ms = env.Meta.TimeoutMs
	}
	timeout := rpc.ClampTimeout(ms, c.e.cfg.NATS.RPCTimeout, c.e.cfg.NATS.RPCMaxTimeout)
	cid := "srv-" + strconv.FormatUint(c.e.rpc.seq.Add(1), 36)
	env.Meta.CorrelationID = cid
	sc, span := c.e.traceDeliver(msg.Header, env.Type)
	if sc.IsValid() {
		setMetaTrace(env, sc)
	}
	a := &ask{msg: msg, span: span}
	frame, err := envelope.Encode(env)
	if err != nil {
		a.finish(envelope.RPCErrorFrame("", envelope.CodeInvalidArgument, err.Error()))
		return
	}
	c.rpcMu.Lock()
	if c.isClosed() {
		c.rpcMu.Unlock()
		a.finish(envelope.RPCErrorFrame("", envelope.CodeUnavailable, "connection closed"))
		return
	}
	if len(c.asks) >= c.e.cfg.Limits.MaxInflightRPC {
		c.rpcMu.Unlock()
		a.finish(envelope.RPCErrorFrame("", envelope.CodeResourceExhausted, "too many questions waiting for this connection"))
		return
	}
	if c.asks == nil {
		c.asks = make(map[string]*ask)
	}
	c.asks[cid] = a
	a.timer = time.AfterFunc(timeout, func() {
		c.rpcMu.Lock()
		delete(c.asks, cid)
		c.rpcMu.Unlock()
		a.finish(envelope.RPCErrorFrame("", envelope.CodeDeadlineExceeded, "the client did not answer within "+timeout.String()))
	})
	c.rpcMu.Unlock()
	c.send(frame)
}

// answer takes the client's reply to a server-to-client request, if cid
// names one. An RPC_ERROR from the client is passed on as it is.
func (c *conn) answer(env *envelope.Envelope, data []byte) bool {
	c.rpcMu.Lock()
	a := c.asks[env.Meta.CorrelationID]
	delete(c.asks, env.Meta.CorrelationID)
	c.rpcMu.Unlock()
	if a == nil {
		return false
	}
	if env.Type != envelope.TypeRPCError && env.Type != envelope.TypeError && !envelope.IsSystemType(env.Type) {
		if err := c.e.checkIn(env); err != nil {
			a.finish(envelope.EncodeRPCError("", err))
			c.sendErrorPayload(env.Meta.CorrelationID, err)
			return true
		}
	}
	a.finish(append([]byte(nil), data...))
	return true
}
