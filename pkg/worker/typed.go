package worker

import (
	"context"
)

// Typed adapts a function with a typed request and response to a Handler:
// the payload is decoded into Req (INVALID_ARGUMENT when it does not fit),
// and for a request the Resp is sent as the reply, of type replyType. A
// message that is not a request runs f and drops the response.
//
//	w.Handle("profile.get", worker.Typed("profile", func(ctx context.Context, m *worker.Message, req GetProfile) (Profile, error) {
//		...
//	}))
func Typed[Req, Resp any](replyType string, f func(ctx context.Context, m *Message, req Req) (Resp, error)) Handler {
	return func(ctx context.Context, m *Message) error {
		var req Req
		if len(m.Envelope.Payload) > 0 {
			if err := m.Bind(&req); err != nil {
				return err
			}
		}
		resp, err := f(ctx, m, req)
		if err != nil || !m.IsRequest() {
			return err
		}
		return m.Reply(replyType, resp)
	}
}
