package edge_test

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// TestBadInput sends one bad frame per case over a real WebSocket and checks
// the documented answer: an ERROR or RPC_ERROR frame with the connection
// left open, or a close with a standard code when the WebSocket protocol
// itself was broken. In every case nothing reaches NATS, and a well-behaved
// client on the same edge keeps getting its room messages.
func TestBadInput(t *testing.T) {
	const maxSize = 4096
	cfg := edge.DefaultConfig()
	cfg.WebSocket.MaxMessageSize = maxSize
	// Presence off: its events are publishes a connection rightly causes,
	// and this test proves that bad input publishes nothing.
	cfg.Presence = nil
	m := newMesh(t, cfg)
	base := runtime.NumGoroutine()

	bystander := m.dial(t, "")
	join(t, bystander, "lobby")

	// A valid text frame of exactly 5000 bytes, over maxSize.
	const oversizeLen = 5000
	oversize := `{"type":"x","payload":"` + strings.Repeat("x", oversizeLen-len(`{"type":"x","payload":""}`)) + `"}`
	joinWith := func(room string) string {
		return `{"type":"$join","meta":{"correlationId":"j1"},"payload":{"room":` + string(wstest.JSON(t, room)) + `}}`
	}

	cases := []struct {
		name   string
		binary bool
		frame  string
		// The answer: an error frame of wantType, wantCode and wantCID, or,
		// when wantClose is set, a close frame with that code.
		wantType  string
		wantCode  envelope.Code
		wantCID   string
		wantClose envelope.CloseCode
	}{
		{name: "malformed JSON", frame: `{"type":`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "not an object", frame: `["type","x"]`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "missing type", frame: `{"payload":1}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "type with star", frame: `{"type":"a.*"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "type with gt", frame: `{"type":"a.>"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "type with empty token", frame: `{"type":"a..b"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "type with escaped star", frame: `{"type":"a.\u002a"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "unknown system type", frame: `{"type":"$nope"}`, wantType: envelope.TypeError, wantCode: envelope.CodeNotFound},
		{name: "unknown system type request", frame: `{"type":"$nope","meta":{"correlationId":"nope-1"}}`, wantType: envelope.TypeRPCError, wantCode: envelope.CodeNotFound, wantCID: "nope-1"},
		{name: "oversized frame", frame: oversize, wantClose: envelope.CloseTooLarge},
		{name: "invalid UTF-8", frame: "{\"type\":\"x\",\"payload\":\"\xff\"}", wantClose: envelope.CloseInvalidUTF8},
		{name: "binary frame", binary: true, frame: `{"type":"x"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "unknown top-level key", frame: `{"type":"x","extra":1}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "duplicate type", frame: `{"type":"x","type":"y"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "numeric correlationId", frame: `{"type":"x","meta":{"correlationId":7}}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "meta not an object", frame: `{"type":"x","meta":"m"}`, wantType: envelope.TypeError, wantCode: envelope.CodeInvalidArgument},
		{name: "join room with dot", frame: joinWith("a.b"), wantType: envelope.TypeRPCError, wantCode: envelope.CodeInvalidArgument, wantCID: "j1"},
		{name: "join room star", frame: joinWith("*"), wantType: envelope.TypeRPCError, wantCode: envelope.CodeInvalidArgument, wantCID: "j1"},
		{name: "join empty room", frame: joinWith(""), wantType: envelope.TypeRPCError, wantCode: envelope.CodeInvalidArgument, wantCID: "j1"},
		{name: "join 200-char room", frame: joinWith(strings.Repeat("r", 200)), wantType: envelope.TypeRPCError, wantCode: envelope.CodeInvalidArgument, wantCID: "j1"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A plain NATS tap, in place on the server before the frame goes.
			tap, err := m.NC.SubscribeSync("natter.>")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tap.Unsubscribe() }()
			if err := m.NC.Flush(); err != nil {
				t.Fatal(err)
			}

			c := m.dial(t, "")
			defer c.Close()
			op := gws.OpcodeText
			if tc.binary {
				op = gws.OpcodeBinary
			}
			c.SendRaw(t, op, []byte(tc.frame))

			if tc.wantClose != 0 {
				if code := c.WaitClose(t, wait); code != uint16(tc.wantClose) {
					t.Fatalf("close code %d, want %d", code, tc.wantClose)
				}
			} else {
				assertErrorFrame(t, c.Next(t, wait), tc.wantType, tc.wantCode, tc.wantCID)
				// Still open, and the bad frame was handled before this.
				if got := c.Request(t, envelope.TypeHeartbeat, nil, wait); got.Type != envelope.TypeHeartbeatAck {
					t.Fatalf("heartbeat after bad input: got %s %s", got.Type, got.Payload)
				}
			}

			// The edge handled the bad frame before the probe below, and it
			// publishes in order on one NATS connection: whatever the bad
			// frame published would reach the tap before the probe.
			bystander.Send(t, "probe", envelope.Meta{}, nil)
			for {
				msg, err := tap.NextMsg(wait)
				if err != nil {
					t.Fatalf("probe not seen on the tap: %v", err)
				}
				if msg.Subject == "natter.in.probe" {
					break
				}
				if strings.HasPrefix(msg.Subject, "natter.evt.") {
					continue // lifecycle events of the edge
				}
				t.Fatalf("bad input published %s: %q", msg.Subject, msg.Data)
			}

			// The edge keeps serving others.
			body := wstest.JSON(t, map[string]any{"type": "news", "payload": map[string]int{"case": i}})
			if err := m.NC.Publish("natter.out.room.lobby", body); err != nil {
				t.Fatal(err)
			}
			got := bystander.AwaitType(t, "news", wait)
			if want := string(wstest.JSON(t, map[string]int{"case": i})); string(got.Payload) != want || got.Meta.Room != "lobby" {
				t.Fatalf("bystander got %+v %s, want room lobby %s", got.Meta, got.Payload, want)
			}
		})
	}

	bystander.Close()
	testenv.Eventually(t, wait, "no connections left", func() bool { return m.Edge.Stats().Connections == 0 })
	testenv.GoroutinesSettle(t, base, 2, 5*time.Second)
}

// assertErrorFrame checks an ERROR or RPC_ERROR frame.
func assertErrorFrame(t *testing.T, got *envelope.Envelope, typ string, code envelope.Code, cid string) {
	t.Helper()
	var p envelope.ErrorPayload
	if err := json.Unmarshal(got.Payload, &p); err != nil {
		t.Fatalf("error payload %s: %v", got.Payload, err)
	}
	if got.Type != typ || p.Code != code || got.Meta.CorrelationID != cid || p.Message == "" {
		t.Fatalf("got %s %s correlationId %q; want %s %s correlationId %q with a message",
			got.Type, got.Payload, got.Meta.CorrelationID, typ, code, cid)
	}
}
