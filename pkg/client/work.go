package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// durableTimeout is SendDurable's deadline when ctx has none.
const durableTimeout = 30 * time.Second

// SendDurable sends a message of a durable type (the edge's
// --durable-types) and returns once the edge's work stream has stored it,
// with its place there; a worker handles it later, at least once, and a
// worker crash loses nothing (docs/protocol.md, "Durable messages").
//
// The message carries an idempotency key: WithIdempotencyKey's, or a
// random one per call. SendDurable resends it with the same key when the
// answer cannot come (the connection dropped, the attempt's RPCTimeout
// passed) and when the edge says to wait (UNAVAILABLE, or
// RESOURCE_EXHAUSTED with a retry delay: the stream is full or the
// connection's rate limit), until ctx ends; without a deadline on ctx, 30s.
// A resend of a message that was stored is not stored again: it returns
// Duplicate true and the first one's Seq. (For a user; an anonymous
// connection's keys hold only until it reconnects.) Other errors (INVALID_ARGUMENT,
// a message too large) return at once.
func (c *Client) SendDurable(ctx context.Context, typ string, payload any, opts ...CallOption) (_ envelope.Accepted, err error) {
	var o callOpts
	for _, f := range opts {
		f(&o)
	}
	if envelope.IsSystemType(typ) {
		return envelope.Accepted{}, fmt.Errorf("client: SendDurable of system type %q", typ)
	}
	// One span for the message, over its retries: each carries its context.
	ctx, span := c.startSpan(ctx, "natter.send", typ, trace.SpanKindProducer)
	defer func() { endSpan(span, err) }()
	if o.key == "" {
		o.key = nuid.Next()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, durableTimeout)
		defer cancel()
	}
	backoff := 50 * time.Millisecond
	for {
		env, err := c.request(ctx, typ, payload, &o, nil)
		if err == nil {
			err = replyError(env)
		}
		if err == nil {
			if env.Type != envelope.TypeAccepted {
				return envelope.Accepted{}, &rpc.Error{Code: envelope.CodeFailedPrecondition, Message: typ + " is not a durable type on this edge (answered " + env.Type + ")"}
			}
			var a envelope.Accepted
			if err := json.Unmarshal(env.Payload, &a); err != nil {
				return a, &rpc.Error{Code: envelope.CodeInternal, Message: "malformed " + envelope.TypeAccepted}
			}
			return a, nil
		}
		wait, retry := durableRetry(err, backoff)
		if !retry || ctx.Err() != nil {
			return envelope.Accepted{}, err
		}
		backoff = min(2*backoff, 2*time.Second)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return envelope.Accepted{}, err
		}
	}
}

// durableRetry says whether a durable send that failed with err may be
// sent again with the same key, and after how long.
func durableRetry(err error, backoff time.Duration) (time.Duration, bool) {
	var re *rpc.Error
	if !errors.As(err, &re) {
		return 0, false
	}
	switch re.Code {
	case envelope.CodeUnavailable, envelope.CodeDeadlineExceeded:
		// The connection dropped, the bus or the stream was unreachable,
		// or the answer did not come in time: it may have been stored,
		// which the key makes harmless.
	case envelope.CodeResourceExhausted:
		if re.RetryAfter <= 0 {
			return 0, false // too large: no resend helps
		}
	default:
		return 0, false
	}
	if errors.Is(err, ErrClosed) {
		return 0, false
	}
	return max(re.RetryAfter, backoff), true
}

func mustMarshal(v string) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}
