// Package rpc is Natter's request/response contract over NATS: the error
// model shared by edges, workers and services, deadline clamping, and Call
// for Go services that want to call a worker the way a browser does.
//
// Everything here is safe for concurrent use.
package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

// Deadline defaults. A client's meta.timeoutMs is clamped to
// [MinTimeout, the server's maximum]; no timeoutMs means the server default.
const (
	DefaultTimeout = 10 * time.Second
	MaxTimeout     = 60 * time.Second
	MinTimeout     = 10 * time.Millisecond
)

// MaxReplySize bounds a reply envelope, in bytes: NATS's own largest
// payload.
const MaxReplySize = 64 << 20

// Error is an RPC failure with a wire code. It is what RPC_ERROR frames carry.
type Error struct {
	Code       envelope.Code
	Message    string
	Details    json.RawMessage
	RetryAfter time.Duration
}

// Error returns "rpc: CODE: message".
func (e *Error) Error() string { return "rpc: " + string(e.Code) + ": " + e.Message }

// Is makes errors.Is match any *Error with the same code, so callers can
// test against the sentinels below.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Payload returns the wire form of e.
func (e *Error) Payload() *envelope.ErrorPayload {
	return &envelope.ErrorPayload{Code: e.Code, Message: e.Message, Details: e.Details, RetryAfterMs: e.RetryAfter.Milliseconds()}
}

// Sentinels, one per code the mesh itself produces. Match with errors.Is.
var (
	ErrUnavailable       = &Error{Code: envelope.CodeUnavailable, Message: "no responders"}
	ErrDeadlineExceeded  = &Error{Code: envelope.CodeDeadlineExceeded, Message: "deadline exceeded"}
	ErrInvalidArgument   = &Error{Code: envelope.CodeInvalidArgument, Message: "invalid argument"}
	ErrNotFound          = &Error{Code: envelope.CodeNotFound, Message: "not found"}
	ErrPermissionDenied  = &Error{Code: envelope.CodePermissionDenied, Message: "permission denied"}
	ErrResourceExhausted = &Error{Code: envelope.CodeResourceExhausted, Message: "resource exhausted"}
	ErrCanceled          = &Error{Code: envelope.CodeCanceled, Message: "cancelled"}
	ErrAlreadyExists     = &Error{Code: envelope.CodeAlreadyExists, Message: "already exists"}
	ErrInternal          = &Error{Code: envelope.CodeInternal, Message: "internal error"}
)

// Errorf returns an *Error with code and a formatted message.
func Errorf(code envelope.Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FromError maps any error to an *Error: an *Error stays as it is, NATS and
// context errors get their codes, and anything else is INTERNAL with a
// generic message, so that internals never leak to a client.
func FromError(err error) *Error {
	var re *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return re
	case errors.Is(err, nats.ErrNoResponders):
		return ErrUnavailable
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return ErrDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrDisconnected):
		return &Error{Code: envelope.CodeUnavailable, Message: "message bus unavailable"}
	}
	return ErrInternal
}

// ClampTimeout turns a requested timeout in milliseconds into the deadline
// the server grants: def when none was asked, at most limit, at least
// MinTimeout.
func ClampTimeout(requestedMs int64, def, limit time.Duration) time.Duration {
	if requestedMs <= 0 {
		return min(def, limit)
	}
	d := time.Duration(requestedMs) * time.Millisecond
	return min(max(d, MinTimeout), limit)
}

// CallOption tunes one Call or Ask.
type CallOption func(*callOpts)

type callOpts struct {
	progress func(payload json.RawMessage)
}

// WithProgress receives the payloads of $ws:rpc-progress frames the
// handler sends before its reply, in order.
func WithProgress(f func(payload json.RawMessage)) CallOption {
	return func(o *callOpts) { o.progress = f }
}

// Call sends payload as a request of type typ to the workers, as a client
// would, and decodes the reply's payload into out (unless out is nil). An
// RPC_ERROR reply is returned as *Error; no worker listening is
// ErrUnavailable at once, and ctx's deadline (DefaultTimeout when it has
// none) gives ErrDeadlineExceeded. Cancelling ctx aborts the call: the
// handler's context is cancelled too. The trace context of ctx (its
// active span) travels in the Traceparent header.
func Call(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, typ string, payload, out any, opts ...CallOption) error {
	subj, err := ns.In(typ)
	if err != nil {
		return err
	}
	return request(ctx, nc, ns, subj, typ, payload, out, opts)
}

// Ask sends a request of type typ to one client connection and decodes the
// client's reply into out: server-to-client RPC. conn is the connection's
// id, <edge>.<n> (envelope.ValidateConnID; anything else fails with
// envelope.ErrInvalidID before anything is sent). A connection that no
// edge holds fails at once with ErrUnavailable (its edge answers that it
// has no such connection, or, when the edge itself is gone, NATS has no
// responders); a client that does not answer within ctx's deadline gives
// ErrDeadlineExceeded; a client that answers with RPC_ERROR gives an
// *Error with its code. The trace context of ctx travels in the
// Traceparent header, to the edge's delivery span and the client.
func Ask(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, conn, typ string, payload, out any, opts ...CallOption) error {
	subj, err := ns.Conn(conn)
	if err != nil {
		return err
	}
	return request(ctx, nc, ns, subj, typ, payload, out, opts)
}

func request(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, subj envelope.Subject, typ string, payload, out any, opts []CallOption) error {
	var o callOpts
	for _, f := range opts {
		f(&o)
	}
	env, err := envelope.New(typ, payload)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	ms := max(time.Until(dl).Milliseconds(), 1)
	inbox := nc.NewInbox() // honours nats.CustomInboxPrefix
	env.Meta.CorrelationID = inbox[strings.LastIndexByte(inbox, '.')+1:]
	env.Meta.TimeoutMs = ms
	data, err := envelope.Encode(env)
	if err != nil {
		return err
	}
	// One subscription per call receives progress frames and the reply in
	// order; NATS sends the SUB before the request on the same connection.
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return FromError(err)
	}
	defer sub.Unsubscribe()
	msg := &nats.Msg{Subject: subj.String(), Reply: inbox, Data: data, Header: nats.Header{
		envelope.HeaderTimeout: []string{strconv.FormatInt(ms, 10)},
	}}
	// The caller's trace goes on: to the worker's handler span, or to the
	// edge's delivery span of a server-to-client request.
	tracing.Inject(ctx, msg.Header)
	if err := nc.PublishMsg(msg); err != nil {
		return FromError(err)
	}
	for {
		reply, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() == context.Canceled {
				_ = nc.Publish(ns.Abort().String(), []byte(inbox))
			}
			return FromError(err)
		}
		switch {
		case reply.Header.Get("Status") == "503":
			return ErrUnavailable
		case reply.Header.Get(envelope.HeaderProgress) != "":
			if o.progress != nil {
				if p, err := envelope.Decode(reply.Data, MaxReplySize); err == nil {
					o.progress(p.Payload)
				}
			}
		default:
			return DecodeReply(reply.Data, out)
		}
	}
}

// DecodeReply decodes a worker's reply envelope: an RPC_ERROR becomes an
// *Error, anything else has its payload decoded into out (unless out is nil).
func DecodeReply(data []byte, out any) error {
	env, err := envelope.Decode(data, MaxReplySize)
	if err != nil {
		return fmt.Errorf("rpc: bad reply: %w", err)
	}
	if env.Type == envelope.TypeRPCError || env.Type == envelope.TypeError {
		var p envelope.ErrorPayload
		if err := json.Unmarshal(env.Payload, &p); err != nil || p.Code == "" {
			return &Error{Code: envelope.CodeInternal, Message: "malformed error reply"}
		}
		return &Error{Code: p.Code, Message: p.Message, Details: p.Details, RetryAfter: time.Duration(p.RetryAfterMs) * time.Millisecond}
	}
	if out != nil && len(env.Payload) > 0 {
		if err := json.Unmarshal(env.Payload, out); err != nil {
			return fmt.Errorf("rpc: decode reply payload: %w", err)
		}
	}
	return nil
}
