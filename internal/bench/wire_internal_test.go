package bench

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// TestBenchSchemas: the bench's schemas load with the shipped ones, and
// the members read what the codec writes.
func TestBenchSchemas(t *testing.T) {
	reg, err := schema.Load(schema.Config{Dirs: []string{filepath.Join("schemas")}})
	if err != nil {
		t.Fatal(err)
	}
	c := &wire.Codec{Types: reg}
	tick := appendTick([]byte(`{"type":"bench.tick","payload":`), 1765090800123456789, 42, "xxxx")
	tick = append(tick, '}')
	b, err := c.JSONToProto(wire.Server, tick, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := parseEnvelope(b)
	if !ok || string(e.typ) != tickType || e.payload == nil {
		t.Fatalf("tick: %q %v, want a protobuf payload", e.typ, ok)
	}
	if tt, n, ok := protoTick(e.payload); !ok || tt != 1765090800123456789 || n != 42 {
		t.Fatalf("protoTick = %d %d %v", tt, n, ok)
	}
	// Without the schema the payload is JSON text, read as the JSON
	// members read it.
	b, err = (&wire.Codec{}).JSONToProto(wire.Server, tick, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok = parseEnvelope(b); !ok || e.json == nil {
		t.Fatalf("tick without schema: %v %v", e, ok)
	}
	if tt, n, ok := jsonTick(e.json); !ok || tt != 1765090800123456789 || n != 42 {
		t.Fatalf("jsonTick = %d %d %v", tt, n, ok)
	}

	// A dashboard tick converts whole, and its t and n read as a tick's.
	dash := appendDashTick([]byte(`{"type":"bench.dashtick","payload":`), 7, 8, dashboardPayload(15, -1))
	b, err = c.JSONToProto(wire.Server, append(dash, '}'), 0)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok = parseEnvelope(b); !ok || e.payload == nil {
		t.Fatalf("dashtick: %v %v, want a protobuf payload", e, ok)
	}
	if tt, n, ok := protoTick(e.payload); !ok || tt != 7 || n != 8 {
		t.Fatalf("dashtick: protoTick = %d %d %v", tt, n, ok)
	}
	if tt, n, ok := jsonTick(dash); !ok || tt != 7 || n != 8 {
		t.Fatalf("dashtick: jsonTick = %d %d %v", tt, n, ok)
	}

	for _, k := range byteKinds() {
		if k.payload == nil {
			continue
		}
		if n := len(k.payload); strings.Contains(k.name, "1k") && (n < 900 || n > 1200) {
			t.Errorf("%s: %d bytes of JSON, want about 1 KB", k.name, n)
		}
		b, err := c.ToProto(wire.Server, &envelope.Envelope{Type: k.typ, Payload: k.payload})
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := parseEnvelope(b); !ok || e.payload == nil {
			t.Fatalf("%s: no protobuf payload", k.name)
		}
		t.Logf("%s: JSON payload %d bytes, protobuf envelope %d bytes", k.name, len(k.payload), len(b))
	}
	if n := len(proseText); n != 1000 {
		t.Errorf("prose: %d bytes", n)
	}
}

func TestProtoJoinFrame(t *testing.T) {
	var e natterv1.Envelope
	if err := proto.Unmarshal(protoJoinFrame("r-1"), &e); err != nil {
		t.Fatal(err)
	}
	if e.Type != envelope.TypeJoin || e.GetMeta().GetCorrelationId() != "j" || e.GetJson() != `{"room":"r-1"}` {
		t.Fatalf("join frame %v", &e)
	}
}
