package edge_test

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/lxzan/gws"
	"google.golang.org/protobuf/proto"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// protobufMesh is a mesh whose edge has the shipped schemas, so that the
// built-in chat types travel as protobuf on natter.protobuf.
func protobufMesh(t *testing.T) (*mesh, *schema.Registry) {
	t.Helper()
	reg, err := schema.Load(schema.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.DefaultConfig()
	cfg.Schemas = reg
	return newMesh(t, cfg), reg
}

func dialProtobuf(t *testing.T, m *mesh, user string, types wire.Types) *wstest.Client {
	t.Helper()
	return wstest.DialProtobuf(t, m.Edge.URL+"?user="+user, types)
}

// payloadOf decodes a payload for comparison: JSON and protobuf clients
// get the same value, whatever the key order. Numbers compare as their
// decimal text: a 64-bit integer that came through protobuf is a string,
// as protojson writes it (docs/protocol.md, "Binary wire").
func payloadOf(t *testing.T, env *envelope.Envelope) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(env.Payload, &v); err != nil {
		t.Fatalf("payload of %s: %v (%s)", env.Type, err, env.Payload)
	}
	for k, x := range v {
		if f, ok := x.(float64); ok {
			v[k] = strconv.FormatFloat(f, 'f', -1, 64)
		}
	}
	return v
}

// TestProtobufAndJSONShareARoom: a protobuf client and a JSON client in one
// room get the same chat messages, the protobuf one in binary frames whose
// payload is the schema message's protobuf encoding, and the edge encodes
// each delivery for protobuf once, however many protobuf sockets it
// reaches.
func TestProtobufAndJSONShareARoom(t *testing.T) {
	t.Parallel()
	m, reg := protobufMesh(t)
	alice := m.dial(t, "alice")
	bob := dialProtobuf(t, m, "bob", reg)
	carol := dialProtobuf(t, m, "carol", reg)
	welcome, _ := bob.Welcome(t, wait)
	if welcome.Type != envelope.TypeConnected || !strings.Contains(string(welcome.Payload), `"user":"bob"`) {
		t.Fatalf("bob's welcome: %s %s", welcome.Type, welcome.Payload)
	}
	for _, c := range []*wstest.Client{alice, bob, carol} {
		join(t, c, "general")
	}

	// A client's chat.send reaches the others (the sender is excluded).
	if got := bob.Request(t, "chat.send", map[string]string{"room": "general", "text": "from protobuf"}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send from protobuf: %s %s", got.Type, got.Payload)
	}
	fromBob := func(e *envelope.Envelope) bool {
		return e.Type == "chat.message" && strings.Contains(string(e.Payload), "from protobuf")
	}
	if pa, pc := payloadOf(t, alice.Await(t, wait, fromBob)), payloadOf(t, carol.Await(t, wait, fromBob)); !reflect.DeepEqual(pa, pc) || pa["user"] != "bob" {
		t.Errorf("bob's message: JSON client got %v, protobuf client %v", pa, pc)
	}

	// A service's publish reaches all three, encoded for protobuf once.
	before := m.Edge.Stats().ProtobufEncodes
	const svc = `{"type":"chat.message","meta":{"timestamp":1730450000000,"trace":"t-1"},"payload":{"room":"general","text":"from a service","user":"svc","conn":"x.1","ts":"1730450000000"}}`
	if err := m.NC.Publish("natter.out.room.general", []byte(svc)); err != nil {
		t.Fatal(err)
	}
	fromSvc := func(e *envelope.Envelope) bool {
		return e.Type == "chat.message" && strings.Contains(string(e.Payload), "from a service")
	}
	a, b, c := alice.Await(t, wait, fromSvc), bob.Await(t, wait, fromSvc), carol.Await(t, wait, fromSvc)
	if pa, pb := payloadOf(t, a), payloadOf(t, b); !reflect.DeepEqual(pa, pb) {
		t.Errorf("JSON client got %v, protobuf client %v", pa, pb)
	}
	if pb, pc := payloadOf(t, b), payloadOf(t, c); !reflect.DeepEqual(pb, pc) {
		t.Errorf("protobuf clients differ: %v, %v", pb, pc)
	}
	for _, e := range []*envelope.Envelope{a, b, c} {
		if e.Meta.Room != "general" || e.Meta.Timestamp != 1730450000000 || string(e.Meta.Extra["trace"]) != `"t-1"` {
			t.Errorf("meta: %+v", e.Meta)
		}
	}
	if n := m.Edge.Stats().ProtobufEncodes - before; n != 1 {
		t.Errorf("one message to two protobuf sockets took %d protobuf encodings; want 1", n)
	}

	if _, text := bob.FrameKinds(); text != 0 {
		t.Errorf("the protobuf client got %d text frames", text)
	}
	if bin, _ := alice.FrameKinds(); bin != 0 {
		t.Errorf("the JSON client got %d binary frames", bin)
	}
	// chat.message has a server schema: its payload is protobuf, not JSON
	// text; $joined has none: JSON text.
	kinds := map[string]string{}
	for _, raw := range bob.RawBinary() {
		var pb natterv1.Envelope
		if err := proto.Unmarshal(raw, &pb); err != nil {
			t.Fatalf("a binary frame is not a natter.v1.Envelope: %v", err)
		}
		switch pb.Body.(type) {
		case *natterv1.Envelope_Payload:
			kinds[pb.Type] = "payload"
		case *natterv1.Envelope_Json:
			kinds[pb.Type] = "json"
		}
	}
	if kinds["chat.message"] != "payload" || kinds[envelope.TypeJoined] != "json" || kinds[envelope.TypeConnected] != "json" {
		t.Errorf("payload kinds by type: %v; want chat.message as protobuf, $joined and $connected as JSON text", kinds)
	}
}

// TestProtobufRPCAndErrors: a protobuf client's RPC round-trips (ping's
// reply has a schema with a 64-bit field, which protojson writes as a
// string), a payload that breaks its schema gets the same validation error
// as on JSON, and frames that are not protobuf envelopes get
// INVALID_ARGUMENT without closing the connection.
func TestProtobufRPCAndErrors(t *testing.T) {
	t.Parallel()
	m, reg := protobufMesh(t)
	bob := dialProtobuf(t, m, "bob", reg)

	pong := bob.Request(t, "ping", nil, wait)
	if pong.Type != "pong" {
		t.Fatalf("ping: got %s %s", pong.Type, pong.Payload)
	}
	if p := payloadOf(t, pong); p["worker"] == nil || p["time"] == nil {
		t.Errorf("pong payload %s", pong.Payload)
	}
	echo := bob.Request(t, "echo", map[string]any{"free": []int{1, 2}}, wait)
	if echo.Type != "echo" || string(echo.Payload) != `{"free":[1,2]}` {
		t.Errorf("echo (no schema, JSON text both ways): %s %s", echo.Type, echo.Payload)
	}

	bad := bob.Request(t, "chat.send", map[string]string{"room": "general", "text": ""}, wait)
	if bad.Type != envelope.TypeRPCError || !strings.Contains(string(bad.Payload), `"INVALID_ARGUMENT"`) || !strings.Contains(string(bad.Payload), `"field":"text"`) {
		t.Errorf("empty chat text: %s %s; want RPC_ERROR INVALID_ARGUMENT naming field text", bad.Type, bad.Payload)
	}

	for _, tc := range []struct {
		name  string
		op    gws.Opcode
		frame []byte
		want  string
	}{
		{"garbage", gws.OpcodeBinary, []byte{0xff, 0xff, 0xff}, "malformed protobuf envelope"},
		{"text frame", gws.OpcodeText, []byte(`{"type":"ping"}`), "text frames are not supported on natter.protobuf"},
		{"payload without schema", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Payload{Payload: []byte{1}}}), "has no schema"},
		{"payload not the message", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{Payload: []byte{0x0a, 0x7f}}}), "is not a natter.chat.v1.SendMessage"},
		{"json not JSON", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: "{"}}), "not one JSON value"},
		{"extra not an object", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: "[1]"}}), "meta.extra must be a JSON object"},
		{"extra repeats a field", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `{"room":"x"}`}}), "repeats the field"},
		{"invalid type", gws.OpcodeBinary, mustProto(t, &natterv1.Envelope{Type: "bad type!"}), "invalid type"},
	} {
		bob.SendRaw(t, tc.op, tc.frame)
		got := bob.AwaitType(t, envelope.TypeError, wait)
		if !strings.Contains(string(got.Payload), `"INVALID_ARGUMENT"`) || !strings.Contains(string(got.Payload), tc.want) {
			t.Errorf("%s: %s; want INVALID_ARGUMENT with %q", tc.name, got.Payload, tc.want)
		}
	}
	if again := bob.Request(t, "echo", map[string]int{"n": 1}, wait); again.Type != "echo" || bob.Closed() {
		t.Errorf("after the bad frames: %s, closed %v", again.Type, bob.Closed())
	}
}

// TestProtobufSubprotocolChoice: the edge selects the first of natter and
// natter.protobuf that the client lists, and refuses an offer of neither.
func TestProtobufSubprotocolChoice(t *testing.T) {
	t.Parallel()
	m, _ := protobufMesh(t)
	for _, tc := range []struct {
		offer  string
		status int
		chosen string
	}{
		{"natter.protobuf", 101, "natter.protobuf"},
		{"natter.protobuf, natter", 101, "natter.protobuf"},
		{"natter, natter.protobuf", 101, "natter"},
		{"bearer.x, natter.protobuf", 101, "natter.protobuf"},
		{"natter.json", 400, ""},
	} {
		status, _, hdr := wstest.Handshake(t, m.Edge.URL+"?user=u", map[string][]string{"Sec-WebSocket-Protocol": {tc.offer}}, "")
		if status != tc.status || hdr.Get("Sec-WebSocket-Protocol") != tc.chosen {
			t.Errorf("offer %q: %d %q; want %d %q", tc.offer, status, hdr.Get("Sec-WebSocket-Protocol"), tc.status, tc.chosen)
		}
	}
}

func mustProto(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
