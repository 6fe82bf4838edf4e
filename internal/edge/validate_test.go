package edge_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

func loadSchemas(t *testing.T, strict bool) *schema.Registry {
	t.Helper()
	reg, err := schema.Load(schema.Config{Dirs: []string{"testdata/schemas"}, Strict: strict})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

type violations struct {
	Violations []schema.Violation `json:"violations"`
}

func TestInboundValidation(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Schemas = loadSchemas(t, false)
	m := newMesh(t, cfg)
	c := m.dial(t, "alice")
	join(t, c, "general")
	tap, err := m.NC.SubscribeSync("natter.in.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = m.NC.Flush()

	if got := c.Request(t, "chat.send", map[string]string{"room": "general", "text": "hello"}, wait); got.Type != "chat.sent" {
		t.Fatalf("valid chat.send: %s %s", got.Type, got.Payload)
	}
	if _, err := tap.NextMsg(wait); err != nil {
		t.Fatal("the valid message did not reach NATS")
	}

	tests := []struct {
		name    string
		typ     string
		payload string
		want    []schema.Violation // field and rule only
	}{
		{"pattern and min_len", "chat.send", `{"room":"a b","text":""}`,
			[]schema.Violation{{Field: "room", Rule: "string.pattern"}, {Field: "text", Rule: "string.min_len"}}},
		{"max_len", "chat.send", `{"room":"r","text":"` + string(make([]byte, 0)) + repeat("x", 4097) + `"}`,
			[]schema.Violation{{Field: "text", Rule: "string.max_bytes"}}},
		{"wrong JSON type", "chat.send", `{"room":5,"text":"x"}`,
			[]schema.Violation{{Field: "room", Rule: schema.RuleJSON}}},
		{"unknown field, strict schema", "test.tight", `{"name":"n","extra":1}`,
			[]schema.Violation{{Field: "extra", Rule: schema.RuleUnknownField}}},
		{"missing required value", "test.tight", `{}`,
			[]schema.Violation{{Field: "name", Rule: "string.min_len"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.SendRaw(t, 1, []byte(`{"type":"`+tc.typ+`","meta":{"correlationId":"v"},"payload":`+tc.payload+`}`))
			got := c.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "v" })
			assertRPCError(t, got, envelope.CodeInvalidArgument)
			var p envelope.ErrorPayload
			_ = json.Unmarshal(got.Payload, &p)
			var d violations
			if err := json.Unmarshal(p.Details, &d); err != nil {
				t.Fatalf("details %s: %v", p.Details, err)
			}
			if len(d.Violations) != len(tc.want) {
				t.Fatalf("violations %+v, want %+v", d.Violations, tc.want)
			}
			for i, w := range tc.want {
				if g := d.Violations[i]; g.Field != w.Field || g.Rule != w.Rule || g.Message == "" {
					t.Fatalf("violation %d: %+v, want %+v", i, g, w)
				}
			}
			if msg, err := tap.NextMsg(50 * time.Millisecond); err == nil {
				t.Fatalf("an invalid message reached NATS: %s", msg.Data)
			}
		})
	}

	t.Run("unknown field, open schema", func(t *testing.T) {
		c.Send(t, "test.loose", envelope.Meta{}, map[string]any{"name": "n", "extra": 1})
		msg, err := tap.NextMsg(wait)
		if err != nil || msg.Subject != "natter.in.test.loose" {
			t.Fatalf("open schema: %v", err)
		}
	})
	t.Run("no schema passes", func(t *testing.T) {
		c.Send(t, "anything.goes", envelope.Meta{}, []int{1, 2})
		if _, err := tap.NextMsg(wait); err != nil {
			t.Fatal(err)
		}
	})
	if m.Edge.Stats().InboundInvalid != int64(len(tests)) {
		t.Fatalf("InboundInvalid %d, want %d", m.Edge.Stats().InboundInvalid, len(tests))
	}
}

func TestStrictTypes(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Schemas = loadSchemas(t, true)
	m := newMesh(t, cfg)
	c := m.dial(t, "")
	got := c.Request(t, "no.such.schema", nil, wait)
	assertRPCError(t, got, envelope.CodeNotFound)
	if got := c.Request(t, "chat.join", map[string]string{"room": "r"}, wait); got.Type != "chat.join" {
		t.Fatalf("a typed message in strict mode: %s %s", got.Type, got.Payload)
	}
	// Outbound: a type without a server schema is dropped too.
	join(t, c, "r")
	_ = m.NC.Publish("natter.out.room.r", []byte(`{"type":"untyped.news"}`))
	_ = m.NC.Publish("natter.out.room.r", []byte(`{"type":"test.notice","payload":{"text":"ok"}}`))
	if got := c.Next(t, wait); got.Type != "test.notice" {
		t.Fatalf("got %s", got.Type)
	}
}

func TestOutboundValidation(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Schemas = loadSchemas(t, false)
	m := newMesh(t, cfg)
	members := []*wstest.Client{m.dial(t, ""), m.dial(t, "")}
	for _, c := range members {
		join(t, c, "news")
	}
	before := m.Edge.Stats().OutboundDropped
	for _, bad := range []string{
		`{"type":"test.notice","payload":{"text":""}}`,
		`{"type":"test.notice","payload":{"text":"x","level":9}}`,
		`{"type":"chat.message","payload":{"room":5}}`,
	} {
		if err := m.NC.Publish("natter.out.room.news", []byte(bad)); err != nil {
			t.Fatal(err)
		}
	}
	_ = m.NC.Publish("natter.out.room.news", []byte(`{"type":"test.notice","payload":{"text":"fine","level":2}}`))
	for _, c := range members {
		if got := c.Next(t, wait); got.Type != "test.notice" || string(got.Payload) != `{"text":"fine","level":2}` {
			t.Fatalf("first frame: %s %s", got.Type, got.Payload)
		}
	}
	// Validated once per edge, not once per socket.
	if d := m.Edge.Stats().OutboundDropped - before; d != 3 {
		t.Fatalf("dropped %d, want 3", d)
	}

	// A worker reply that breaks its schema becomes INTERNAL for the client.
	w, err := worker.New(m.NC, worker.Config{Queue: "bad-replies"})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Handle("ask.bad", func(_ context.Context, msg *worker.Message) error {
		return msg.Reply("test.reply", map[string]string{"text": ""})
	})
	_ = w.Flush(t.Context())
	assertRPCError(t, members[0].Request(t, "ask.bad", nil, wait), envelope.CodeInternal)
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}
