package edge_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"google.golang.org/protobuf/proto"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// FuzzProtobufFrame sends one arbitrary binary frame on a real
// natter.protobuf connection of a real edge (with the shipped schemas),
// then a heartbeat. Whatever the bytes, the edge answers the heartbeat on
// the same connection: a bad protobuf envelope costs an ERROR, never the
// connection, and everything the edge sends is a natter.v1.Envelope.
func FuzzProtobufFrame(f *testing.F) {
	seeds := [][]byte{
		{},
		{0xff, 0xff, 0xff},
		{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, // a type whose length runs past the frame
		{0x0a, 0x02, 0xc3, 0x28},             // a type that is not UTF-8
		{0x12, 0x03, 0x7a, 0x01, 0x7b},       // meta.extra "{"
		{0x0a, 0x04, 'p', 'i', 'n', 'g'},
		{0x0a, 0x09, 'c', 'h', 'a', 't', '.', 's', 'e', 'n', 'd', 0x1a, 0x02, 0x0a, 0x7f},
		{0x0a, 0x09, 'c', 'h', 'a', 't', '.', 's', 'e', 'n', 'd', 0x1a, 0x03, 0x12, 0x01, 0x00},
		{0x0a, 0x05, '$', 'j', 'o', 'i', 'n', 0x22, 0x0a, '{', '"', 'r', 'o', 'o', 'm', '"', ':', '1', '}'},
		mustProtoF(f, &natterv1.Envelope{Type: "$join", Body: &natterv1.Envelope_Json{Json: `{"room":"fuzz"}`}}),
		mustProtoF(f, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{CorrelationId: new("c"), Extra: `{"a":[1,{"b":null}]}`}}),
		mustProtoF(f, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Offset: new(uint64(1 << 63)), Epoch: new("x")}}),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	reg, err := schema.Load(schema.Config{})
	if err != nil {
		f.Fatal(err)
	}
	cfg := testenv.DevEdge()
	cfg.Schemas = reg
	// The fuzzer's pace is not what is under test.
	cfg.Limits.MessageRate, cfg.Limits.UserMessageRate = -1, 0
	cfg.Limits.HandshakeRate, cfg.Limits.MaxConnsPerUser = 0, 0
	cfg.WebSocket.MaxMessageSize = 4096
	m := testenv.NewMesh(f, testenv.MeshOptions{Edge: &cfg})

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		c := wstest.DialProtobuf(t, m.Edge.URL+"?user=fuzz", reg)
		c.SendRaw(t, gws.OpcodeBinary, data)
		got := c.Request(t, envelope.TypeHeartbeat, nil, 5*time.Second)
		if got.Type != envelope.TypeHeartbeatAck {
			t.Fatalf("heartbeat answered with %s %s", got.Type, got.Payload)
		}
		if c.Closed() {
			t.Fatalf("the connection closed with %d", c.CloseCode())
		}
		for !c.Quiet(0) {
			if e := c.Next(t, time.Second); e.Type == "wstest.undecodable" {
				t.Fatalf("the edge sent a frame that is not a natter.v1.Envelope: %s", e.Payload)
			}
		}
	})
}

// FuzzFallbackPost posts an arbitrary body to a real fallback session,
// then a heartbeat. The POST gets one of its documented answers, and the
// session either answers the heartbeat or was closed with a documented
// code (1009, 1007) by a line the WebSocket path closes for too.
func FuzzFallbackPost(f *testing.F) {
	for _, s := range []string{
		"", "\n", "{}", `{"type":"echo"}`, "not json\n{\"type\":\"echo\"}",
		`{"type":"$join","payload":{"room":"x"}}` + "\n" + `{"type":"$leave","payload":{"room":"x"}}`,
		"\xff\xfe", strings.Repeat("\n", 300), strings.Repeat(`{"type":"a"}`+"\n", 257),
		`{"type":"echo","meta":{"correlationId":"x"}}` + "\r\n",
	} {
		f.Add([]byte(s))
	}
	cfg := testenv.DevEdge()
	cfg.Limits.MessageRate, cfg.Limits.UserMessageRate = -1, 0
	cfg.Limits.HandshakeRate, cfg.Limits.MaxConnsPerUser = 0, 0
	cfg.WebSocket.MaxMessageSize = 1024
	m := testenv.NewMesh(f, testenv.MeshOptions{Edge: &cfg})
	base := "http://" + m.Edge.Addr

	f.Fuzz(func(t *testing.T, body []byte) {
		s := wstest.DialSSE(t, base, m.Edge.Path(), "user=fuzz", nil)
		status, msg := s.PostRaw(t, base, s.Session(), 1, body)
		switch status {
		case http.StatusNoContent, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("POST answered %d %s", status, msg)
		}
		seq := uint64(2)
		if status != http.StatusNoContent {
			seq = 1 // not acted on: the seq is still free
		}
		if st, msg := s.PostRaw(t, base, s.Session(), seq, []byte(`{"type":"__heartbeat","meta":{"correlationId":"probe"}}`)); st != http.StatusNoContent && st != http.StatusNotFound {
			t.Fatalf("the probe's POST answered %d %s", st, msg)
		}
		ev := s.AwaitEvent(t, 5*time.Second, func(ev wstest.Event) bool {
			return ev.Name == "close" || strings.Contains(string(ev.Data), `"probe"`)
		})
		if ev.Name == "close" && !strings.Contains(string(ev.Data), `"code":1009`) && !strings.Contains(string(ev.Data), `"code":1007`) {
			t.Fatalf("the session closed with %s", ev.Data)
		}
	})
}

func mustProtoF(f *testing.F, m *natterv1.Envelope) []byte {
	f.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
