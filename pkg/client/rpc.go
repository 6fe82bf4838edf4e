package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

// call is a request waiting for its one reply.
type call struct {
	cid string
	// frames carries progress frames and then the reply, in order.
	frames chan *envelope.Envelope
	// failed carries the error when the reply cannot come.
	failed chan error
	// abandoned is closed when the caller stops waiting.
	abandoned chan struct{}
	// sess is the connection the request was written on; guarded by
	// Client.mu. nil while it waits in the buffer.
	sess *session
	// op is set for Join, Leave and background re-joins.
	op *roomOp
}

func newCall(cid string) *call {
	return &call{cid: cid, frames: make(chan *envelope.Envelope, 16), failed: make(chan error, 1), abandoned: make(chan struct{})}
}

// fail hands the call its error; the caller removed it from pending, so
// this happens once.
func (cl *call) fail(err error) {
	select {
	case cl.failed <- err:
	default:
	}
}

func (c *Client) nextCIDLocked() string {
	c.seq++
	return "c" + strconv.FormatUint(c.seq, 36)
}

// CallOption tunes one Call.
type CallOption func(*callOpts)

type callOpts struct {
	progress func(json.RawMessage)
	key      string
}

// WithIdempotencyKey sends key as meta.idempotencyKey: for a durable type
// (SendDurable), the edge's work stream stores one message per key and
// user within its dedupe window; workers see the key of other types too.
func WithIdempotencyKey(key string) CallOption {
	return func(o *callOpts) { o.key = key }
}

// WithProgress receives the payloads of the $ws:rpc-progress frames the
// handler sends before its reply, in order, on the calling goroutine.
func WithProgress(f func(payload json.RawMessage)) CallOption {
	return func(o *callOpts) { o.progress = f }
}

// Call sends req as a request of type typ and decodes the reply's payload
// into resp (unless resp is nil; a *envelope.Envelope receives the whole
// reply). The deadline is ctx's or RPCTimeout, whichever comes first; what
// is left of it when the frame is written (a call may wait in the send
// buffer) is sent to the edge as meta.timeoutMs.
//
// Errors are *rpc.Error with the code the mesh or the handler gave, so
// errors.Is with the rpc sentinels works: UNAVAILABLE when no worker
// listens or the connection dropped with the request in flight,
// DEADLINE_EXCEEDED at the deadline, CANCELLED when ctx is cancelled (the
// client then sends $ws:abort, so the handler's context ends too), the
// handler's own code otherwise. A Call made while the client reconnects is
// buffered like a Send; ErrBufferFull and ErrClosed also come wrapped with
// an *rpc.Error (RESOURCE_EXHAUSTED, UNAVAILABLE).
func (c *Client) Call(ctx context.Context, typ string, req, resp any, opts ...CallOption) (err error) {
	var o callOpts
	for _, f := range opts {
		f(&o)
	}
	if envelope.IsSystemType(typ) {
		return fmt.Errorf("client: Call of system type %q: use the client's own methods", typ)
	}
	ctx, span := c.startSpan(ctx, "natter.rpc", typ, trace.SpanKindClient)
	defer func() { endSpan(span, err) }()
	env, err := c.request(ctx, typ, req, &o, nil)
	if err != nil {
		return err
	}
	return decodeReply(env, resp)
}

// request sends one request and waits for its reply envelope, which may be
// RPC_ERROR. op, if not nil, is a room operation (see roomOp).
func (c *Client) request(ctx context.Context, typ string, payload any, o *callOpts, op *roomOp) (*envelope.Envelope, error) {
	if err := envelope.ValidateType(typ); err != nil {
		return nil, err
	}
	env, err := envelope.New(typ, payload)
	if err != nil {
		return nil, err
	}
	if o.key != "" {
		env.Meta.Extra = map[string]json.RawMessage{envelope.MetaIdempotencyKey: mustMarshal(o.key)}
		if _, err := env.Meta.IdempotencyKey(); err != nil {
			return nil, err
		}
	}
	if op == nil {
		withTrace(ctx, &env.Meta)
	}
	deadline := time.Now().Add(c.opts.RPCTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.mu.Lock()
	if c.state == StateClosed || c.ctx.Err() != nil {
		c.mu.Unlock()
		return nil, closedError()
	}
	cid := c.nextCIDLocked()
	c.mu.Unlock()
	env.Meta.CorrelationID = cid
	// Checked here for the size; written again with the time left when
	// the frame is written (writeItem).
	env.Meta.TimeoutMs = max(time.Until(deadline).Milliseconds(), 1)
	frame, err := envelope.Encode(env)
	if err != nil {
		return nil, err
	}
	if err := c.checkSize(frame); err != nil {
		return nil, err
	}
	cl := newCall(cid)
	cl.op = op
	defer close(cl.abandoned)
	defer c.endRoomOp(op)
	c.mu.Lock()
	if c.state == StateClosed {
		c.mu.Unlock()
		return nil, closedError()
	}
	if op != nil && !c.beginRoomOpLocked(op) {
		c.mu.Unlock()
		return nil, errRoomSettled
	}
	c.pending[cid] = cl
	// Queued with c.mu held: room operations are queued in the order
	// beginRoomOpLocked numbered them.
	select {
	case c.queue <- &outItem{frame: frame, call: cl, env: env, deadline: deadline}:
		c.mu.Unlock()
	default:
		c.mu.Unlock()
		c.abandon(cl, false)
		return nil, fmt.Errorf("%w: %w", ErrBufferFull, &rpc.Error{Code: envelope.CodeResourceExhausted, Message: "send buffer full"})
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		select {
		case e := <-cl.frames:
			if e.Type == envelope.TypeRPCProgress {
				if o.progress != nil {
					o.progress(e.Payload)
				}
				continue
			}
			return e, nil
		case err := <-cl.failed:
			return nil, err
		case <-ctx.Done():
			c.abandon(cl, true)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, &rpc.Error{Code: envelope.CodeDeadlineExceeded, Message: "deadline exceeded"}
			}
			return nil, &rpc.Error{Code: envelope.CodeCanceled, Message: "cancelled"}
		case <-t.C:
			c.abandon(cl, true)
			return nil, &rpc.Error{Code: envelope.CodeDeadlineExceeded, Message: "deadline exceeded"}
		}
	}
}

// abandon forgets a request its caller gave up on and, if it was written
// on the live connection, tells the edge with $ws:abort.
func (c *Client) abandon(cl *call, abort bool) {
	c.mu.Lock()
	var s *session
	if c.pending[cl.cid] == cl {
		delete(c.pending, cl.cid)
		s = cl.sess
	}
	c.mu.Unlock()
	if s == nil || !abort {
		return
	}
	frame, err := envelope.Encode(&envelope.Envelope{Type: envelope.TypeAbort, Meta: envelope.Meta{CorrelationID: cl.cid}})
	if err != nil {
		return
	}
	select {
	case s.ctrl <- frame:
	case <-s.done:
	default: // the queue is full: the edge's deadline ends the request
	}
}

// deliverReply hands a frame carrying the correlation id of a pending
// request to its caller. It reports false when no request waits for it.
func (c *Client) deliverReply(env *envelope.Envelope) bool {
	cid := env.Meta.CorrelationID
	c.mu.Lock()
	cl := c.pending[cid]
	if cl == nil {
		c.mu.Unlock()
		return false
	}
	var rec *Recovery
	if env.Type != envelope.TypeRPCProgress {
		delete(c.pending, cid)
		if cl.op != nil {
			rec = c.settleRoomOpLocked(cl.op, env)
		}
	}
	c.mu.Unlock()
	if rec != nil {
		c.reportRecovery(rec)
	}
	select {
	case cl.frames <- env:
	case <-cl.abandoned:
	}
	return true
}

// replyError returns the *rpc.Error of an RPC_ERROR or ERROR reply, nil
// for any other.
func replyError(env *envelope.Envelope) error {
	if env.Type != envelope.TypeRPCError && env.Type != envelope.TypeError {
		return nil
	}
	var p envelope.ErrorPayload
	if err := json.Unmarshal(env.Payload, &p); err != nil || p.Code == "" {
		return &rpc.Error{Code: envelope.CodeInternal, Message: "malformed error reply"}
	}
	return &rpc.Error{Code: p.Code, Message: p.Message, Details: p.Details, RetryAfter: time.Duration(p.RetryAfterMs) * time.Millisecond}
}

func decodeReply(env *envelope.Envelope, out any) error {
	if err := replyError(env); err != nil {
		return err
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *envelope.Envelope:
		*o = *env
		return nil
	}
	if len(env.Payload) == 0 {
		return nil
	}
	if err := json.Unmarshal(env.Payload, out); err != nil {
		return fmt.Errorf("client: decode %s reply: %w", env.Type, err)
	}
	return nil
}

// HandlerFunc answers a server-to-client request. Its result becomes the
// answer's payload (a *envelope.Envelope is sent as it is, with the
// request's correlation id); an error becomes RPC_ERROR with its code
// (rpc.FromError: an *rpc.Error keeps its code, others are INTERNAL). ctx
// ends at the edge's deadline, when the connection drops, or at Close.
type HandlerFunc func(ctx context.Context, env *envelope.Envelope) (any, error)

// Handle answers server-to-client requests of type typ (services ask with
// rpc.Ask); a nil h removes the handler. The answer has the request's type
// unless h returns an envelope. Requests of a type without a handler are
// answered with UNIMPLEMENTED. Each request runs on a goroutine of its own,
// at most MaxServerRequests at once.
func (c *Client) Handle(typ string, h HandlerFunc) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if h == nil {
		delete(c.servers, typ)
		return
	}
	c.servers[typ] = h
}

// serveRequest runs the handler of a server-to-client request on its own
// goroutine and queues the answer on the connection that asked.
func (c *Client) serveRequest(s *session, env *envelope.Envelope) {
	cid := env.Meta.CorrelationID
	c.hmu.RLock()
	h := c.servers[env.Type]
	c.hmu.RUnlock()
	if h == nil {
		s.sendCtrl(envelope.RPCErrorFrame(cid, envelope.CodeUnimplemented, "no handler for "+env.Type))
		return
	}
	select {
	case c.sem <- struct{}{}:
	default:
		s.sendCtrl(envelope.RPCErrorFrame(cid, envelope.CodeResourceExhausted, "too many requests in progress"))
		return
	}
	timeout := c.opts.RPCTimeout
	if env.Meta.TimeoutMs > 0 {
		timeout = time.Duration(env.Meta.TimeoutMs) * time.Millisecond
	}
	go func() {
		defer func() { <-c.sem }()
		ctx, cancel := context.WithTimeout(s.ctx, timeout)
		defer cancel()
		// The request's context (the edge's delivery span) is the parent
		// of the handler's span, natter.handle <type>.
		var tp, ts string
		_ = json.Unmarshal(env.Meta.Extra[tracing.MetaTraceparent], &tp)
		_ = json.Unmarshal(env.Meta.Extra[tracing.MetaTracestate], &ts)
		if sc := tracing.Parse(tp, ts); sc.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		}
		ctx, span := c.startSpan(ctx, "natter.handle", env.Type, trace.SpanKindServer)
		frame := c.answer(ctx, h, env)
		if span.IsRecording() {
			if e, err := envelope.Decode(frame, len(frame)); err == nil && e.Type == envelope.TypeRPCError {
				span.SetStatus(codes.Error, string(e.Payload))
			}
		}
		span.End()
		s.sendCtrl(frame)
	}()
}

// answer runs h and encodes its answer; a panic is INTERNAL.
func (c *Client) answer(ctx context.Context, h HandlerFunc, req *envelope.Envelope) (frame []byte) {
	cid := req.Meta.CorrelationID
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("client: request handler panicked", "type", req.Type, "panic", r)
			frame = envelope.RPCErrorFrame(cid, envelope.CodeInternal, "handler panicked")
		}
	}()
	v, err := h(ctx, req)
	if err != nil {
		return envelope.EncodeRPCError(cid, rpc.FromError(err).Payload())
	}
	env, ok := v.(*envelope.Envelope)
	if ok && env == nil {
		v, ok = nil, false
	}
	if !ok {
		if env, err = envelope.New(req.Type, v); err != nil {
			return envelope.RPCErrorFrame(cid, envelope.CodeInternal, "answer does not encode")
		}
	} else {
		cp := *env
		env = &cp
	}
	env.Meta.CorrelationID = cid
	b, err := envelope.Encode(env)
	if err != nil || c.checkSize(b) != nil {
		return envelope.RPCErrorFrame(cid, envelope.CodeInternal, "answer does not encode or is too large")
	}
	return b
}
