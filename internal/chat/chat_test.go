package chat_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

const wait = 5 * time.Second

// mesh starts an embedded nats-server, the built-in handlers on their own
// NATS connection and a dev-mode edge, and returns the edge's WebSocket URL.
func mesh(t *testing.T) string {
	t.Helper()
	return testenv.NewMesh(t, testenv.MeshOptions{}).Edge.URL
}

func errorPayload(t *testing.T, env *envelope.Envelope) envelope.ErrorPayload {
	t.Helper()
	var p envelope.ErrorPayload
	if err := json.Unmarshal(env.Payload, &p); err != nil {
		t.Fatalf("%s payload %s: %v", env.Type, env.Payload, err)
	}
	return p
}

// A plain message (no correlationId) that a handler refuses is answered
// with an ERROR frame to the sender, instead of being dropped in silence;
// a request still gets exactly one RPC_ERROR with the same code.
func TestRefusedPlainMessageGetsError(t *testing.T) {
	t.Parallel()
	url := mesh(t)
	for _, tc := range []struct {
		name     string
		typ      string
		payload  any
		code     envelope.Code
		contains string
	}{
		{"chat.send before joining", "chat.send", map[string]string{"room": "general", "text": "hi all"},
			envelope.CodePermissionDenied, "join room general before sending to it"},
		{"chat.send with empty text", "chat.send", map[string]string{"room": "general", "text": ""},
			envelope.CodeInvalidArgument, "text must be"},
		{"chat.join of a bad room id", "chat.join", map[string]string{"room": "a b"},
			envelope.CodeInvalidArgument, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := wstest.Dial(t, url+"?user=alice")

			c.Send(t, tc.typ, envelope.Meta{}, tc.payload)
			got := c.Await(t, wait, func(e *envelope.Envelope) bool {
				return e.Type == envelope.TypeError || e.Type == envelope.TypeRPCError
			})
			if got.Type != envelope.TypeError || got.Meta.CorrelationID != "" {
				t.Fatalf("plain %s: got %s (meta %+v) %s; want ERROR", tc.typ, got.Type, got.Meta, got.Payload)
			}
			p := errorPayload(t, got)
			if p.Code != tc.code || !strings.Contains(p.Message, tc.contains) {
				t.Fatalf("plain %s: got %s %q; want %s containing %q", tc.typ, p.Code, p.Message, tc.code, tc.contains)
			}
			if string(p.Details) != `{"type":"`+tc.typ+`"}` {
				t.Fatalf("plain %s: details %s; want the message's type", tc.typ, p.Details)
			}

			// The same message as a request: one RPC_ERROR with its id.
			got = c.Request(t, tc.typ, tc.payload, wait)
			if got.Type != envelope.TypeRPCError {
				t.Fatalf("request %s: got %s %s; want RPC_ERROR", tc.typ, got.Type, got.Payload)
			}
			if p := errorPayload(t, got); p.Code != tc.code || !strings.Contains(p.Message, tc.contains) {
				t.Fatalf("request %s: got %s %q; want %s containing %q", tc.typ, p.Code, p.Message, tc.code, tc.contains)
			}
		})
	}
}

// Once joined, a plain chat.send reaches the room and the sender gets no
// ERROR: the next frame it sees is the reply to a request sent after the
// message was delivered.
func TestPlainChatSendAfterJoin(t *testing.T) {
	t.Parallel()
	url := mesh(t)
	alice := wstest.Dial(t, url+"?user=alice")
	bob := wstest.Dial(t, url+"?user=bob")
	for _, c := range []*wstest.Client{alice, bob} {
		if got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "general"}, wait); got.Type != envelope.TypeJoined {
			t.Fatalf("$join: %s %s", got.Type, got.Payload)
		}
	}

	alice.Send(t, "chat.send", envelope.Meta{}, map[string]string{"room": "general", "text": "hi all"})
	if got := bob.Next(t, wait); got.Type != "chat.message" {
		t.Fatalf("bob: %s %s; want chat.message", got.Type, got.Payload)
	}
	alice.Send(t, "echo", envelope.Meta{CorrelationID: "sentinel"}, "x")
	if got := alice.Next(t, wait); got.Type != "echo" || got.Meta.CorrelationID != "sentinel" {
		t.Fatalf("alice: %s %s; want only the sentinel's echo", got.Type, got.Payload)
	}
}
