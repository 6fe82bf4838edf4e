package edge_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// FuzzStreamRequest sends one $stream.join, $stream.leave or
// $stream.cancel with an arbitrary payload (arbitrary bytes as its JSON
// when they are UTF-8 JSON, as a JSON string when not) on a real connection of
// a real edge that holds a stream the fuzzing user may read, then a
// heartbeat. Whatever the payload, the request costs an answer, never the
// connection, and every frame the edge sends decodes.
func FuzzStreamRequest(f *testing.F) {
	for _, s := range []string{
		`{"stream":"fz"}`, `{"stream":"fz","offset":3}`, `{"stream":"fz","offset":-1}`,
		`{"stream":"fz","offset":1e300}`, `{"stream":"a.b"}`, `{"stream":""}`, `{"stream":5}`,
		`{"stream":"fz","extra":[1,2]}`, `null`, `[]`, `"fz"`, `{"stream":"nope"}`, `{`,
	} {
		for typ := range 3 {
			f.Add(uint8(typ), []byte(s))
		}
	}
	cfg := testenv.DevEdge()
	cfg.Limits.MessageRate, cfg.Limits.UserMessageRate = -1, 0
	cfg.Limits.HandshakeRate, cfg.Limits.MaxConnsPerUser = 0, 0
	cfg.Streams = &edge.StreamsConfig{}
	m := testenv.NewMesh(f, testenv.MeshOptions{Edge: &cfg})
	w, err := worker.NewPublisher(m.NC, envelope.DefaultNamespace).OpenStreamID(context.Background(), "fz", worker.StreamTo{User: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	_, _ = w.WriteString("héllo, fuzz")
	types := []string{envelope.TypeStreamJoin, envelope.TypeStreamLeave, envelope.TypeStreamCancel}

	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		if len(payload) > 4096 {
			return
		}
		if !json.Valid(payload) || !utf8.Valid(payload) {
			// Text frames are UTF-8, or the socket closes 1007 (RFC 6455).
			payload, _ = json.Marshal(string(payload))
		}
		frame, err := json.Marshal(map[string]any{
			"type":    types[int(typ)%len(types)],
			"meta":    map[string]string{"correlationId": "f1"},
			"payload": json.RawMessage(payload),
		})
		if err != nil {
			return
		}
		c := wstest.Dial(t, m.Edge.URL+"?user=fuzz")
		c.SendRaw(t, gws.OpcodeText, frame)
		got := c.Await(t, 5*time.Second, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "f1" })
		if got.Type == envelope.TypeError {
			t.Fatalf("an answer without its correlationId's type: %s %s", got.Type, got.Payload)
		}
		if hb := c.Request(t, envelope.TypeHeartbeat, nil, 5*time.Second); hb.Type != envelope.TypeHeartbeatAck {
			t.Fatalf("heartbeat answered with %s %s", hb.Type, hb.Payload)
		}
		if c.Closed() {
			t.Fatalf("the connection closed with %d", c.CloseCode())
		}
	})
}
