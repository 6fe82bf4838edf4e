package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// testProto holds the messages these tests need besides the shipped chat
// schemas: an open message, and one with 64-bit integers, a list, a map,
// an enum and bytes.
const testProto = `syntax = "proto3";
package wiretest.v1;
import "natter/v1/options.proto";

message Note {
  option (natter.v1.client_type) = "wt.note";
  option (natter.v1.server_type) = "wt.note";
  option (natter.v1.open) = true;
  string text = 1;
}

enum Level {
  LEVEL_UNSPECIFIED = 0;
  LEVEL_HIGH = 1;
}

message Series {
  option (natter.v1.server_type) = "wt.series";
  int64 at = 1;
  repeated double values = 2;
  map<string, uint64> counts = 3;
  Level level = 4;
  bytes blob = 5;
}
`

// types loads the shipped schemas and testProto once for every test.
var types = sync.OnceValues(func() (*schema.Registry, error) {
	dir, err := os.MkdirTemp("", "wiretest")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "wiretest.proto"), []byte(testProto), 0o644); err != nil {
		return nil, err
	}
	return schema.Load(schema.Config{Dirs: []string{dir}})
})

func codec(t testing.TB) *wire.Codec {
	t.Helper()
	reg, err := types()
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Codec{Types: reg}
}

// schemaBytes is the protobuf encoding of the JSON payload p as the
// message of typ in dir.
func schemaBytes(t *testing.T, c *wire.Codec, dir wire.Direction, typ, p string) []byte {
	t.Helper()
	md := c.Types.Message(dir, typ)
	if md == nil {
		t.Fatalf("no schema for %s", typ)
	}
	m := dynamicpb.NewMessage(md)
	if err := protojson.Unmarshal([]byte(p), m); err != nil {
		t.Fatal(err)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

func TestToProto(t *testing.T) {
	t.Parallel()
	c := codec(t)
	tests := []struct {
		name string
		dir  wire.Direction
		in   string
		want func(t *testing.T) *natterv1.Envelope
		// back is the JSON form FromProto gives; "" means in itself.
		back string
	}{
		{
			name: "type only",
			dir:  wire.Client,
			in:   `{"type":"echo"}`,
			want: func(*testing.T) *natterv1.Envelope { return &natterv1.Envelope{Type: "echo"} },
		},
		{
			name: "meta fields",
			dir:  wire.Client,
			in:   `{"type":"echo","meta":{"correlationId":"c1","timestamp":1733,"timeoutMs":500,"room":"r1"}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{
					CorrelationId: ptr("c1"), TimeoutMs: ptr(int64(500)), Timestamp: ptr(int64(1733)), Room: ptr("r1"),
				}}
			},
		},
		{
			name: "extra keys as one JSON object",
			dir:  wire.Client,
			in:   `{"type":"echo","meta":{"zeta":[1,2],"idempotencyKey":"k1","alpha":{"b":true}}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `{"alpha":{"b":true},"idempotencyKey":"k1","zeta":[1,2]}`}}
			},
			back: `{"type":"echo","meta":{"alpha":{"b":true},"idempotencyKey":"k1","zeta":[1,2]}}`,
		},
		{
			name: "offset and epoch as fields",
			dir:  wire.Server,
			in:   `{"type":"chat.message","meta":{"room":"r","offset":18446744073709551615,"epoch":"e-1"}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "chat.message", Meta: &natterv1.Meta{
					Room: ptr("r"), Offset: ptr(uint64(18446744073709551615)), Epoch: ptr("e-1"),
				}}
			},
		},
		{
			name: "offset and epoch that are not a position stay in extra",
			dir:  wire.Server,
			in:   `{"type":"x","meta":{"offset":-1,"epoch":7}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "x", Meta: &natterv1.Meta{Extra: `{"epoch":7,"offset":-1}`}}
			},
			back: `{"type":"x","meta":{"epoch":7,"offset":-1}}`,
		},
		{
			name: "schema payload as protobuf",
			dir:  wire.Client,
			in:   `{"type":"chat.send","payload":{"room":"general","text":"héllo \u2603"}}`,
			want: func(t *testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{
					Payload: schemaBytes(t, c, wire.Client, "chat.send", `{"room":"general","text":"héllo ☃"}`)}}
			},
			back: `{"type":"chat.send","payload":{"room":"general","text":"héllo ☃"}}`,
		},
		{
			name: "server payload: 64-bit integers come back as numbers",
			dir:  wire.Server,
			in:   `{"type":"chat.message","payload":{"room":"g","text":"hi","user":"u","conn":"e.1","ts":1733000000000}}`,
			want: func(t *testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "chat.message", Body: &natterv1.Envelope_Payload{
					Payload: schemaBytes(t, c, wire.Server, "chat.message", `{"room":"g","text":"hi","user":"u","conn":"e.1","ts":1733000000000}`)}}
			},
			back: `{"type":"chat.message","payload":{"conn":"e.1","room":"g","text":"hi","ts":1733000000000,"user":"u"}}`,
		},
		{
			name: "defaults left out, enum by name, bytes in base64",
			dir:  wire.Server,
			in:   `{"type":"wt.series","payload":{"at":0,"values":[1.5,-2],"counts":{"a":3},"level":1,"blob":"AQI="}}`,
			want: func(t *testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "wt.series", Body: &natterv1.Envelope_Payload{
					Payload: schemaBytes(t, c, wire.Server, "wt.series", `{"values":[1.5,-2],"counts":{"a":"3"},"level":"LEVEL_HIGH","blob":"AQI="}`)}}
			},
			back: `{"type":"wt.series","payload":{"blob":"AQI=","counts":{"a":3},"level":"LEVEL_HIGH","values":[1.5,-2]}}`,
		},
		{
			name: "type without schema as json",
			dir:  wire.Client,
			in:   `{"type":"echo","payload":{"any":[1,"two",null]}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: `{"any":[1,"two",null]}`}}
			},
		},
		{
			name: "schema of the other direction only: json",
			dir:  wire.Server,
			in:   `{"type":"chat.send","payload":{"room":"g","text":"t"}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Json{Json: `{"room":"g","text":"t"}`}}
			},
		},
		{
			name: "system type as json",
			dir:  wire.Server,
			in:   `{"type":"$joined","meta":{"correlationId":"j"},"payload":{"room":"g"}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "$joined", Meta: &natterv1.Meta{CorrelationId: ptr("j")}, Body: &natterv1.Envelope_Json{Json: `{"room":"g"}`}}
			},
		},
		{
			name: "open message with unknown keys falls back to json",
			dir:  wire.Client,
			in:   `{"type":"wt.note","payload":{"text":"t","mood":"ok"}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "wt.note", Body: &natterv1.Envelope_Json{Json: `{"text":"t","mood":"ok"}`}}
			},
		},
		{
			name: "open message without unknown keys as protobuf",
			dir:  wire.Client,
			in:   `{"type":"wt.note","payload":{"text":"t"}}`,
			want: func(t *testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "wt.note", Body: &natterv1.Envelope_Payload{Payload: schemaBytes(t, c, wire.Client, "wt.note", `{"text":"t"}`)}}
			},
		},
		{
			name: "payload the closed message cannot hold as json",
			dir:  wire.Client,
			in:   `{"type":"chat.send","payload":{"room":"g","text":5}}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Json{Json: `{"room":"g","text":5}`}}
			},
		},
		{
			name: "null payload is no payload",
			dir:  wire.Client,
			in:   `{"type":"echo","payload":null}`,
			want: func(*testing.T) *natterv1.Envelope { return &natterv1.Envelope{Type: "echo"} },
			back: `{"type":"echo"}`,
		},
		{
			name: "scalar payload as json",
			dir:  wire.Client,
			in:   `{"type":"echo","payload":"just text"}`,
			want: func(*testing.T) *natterv1.Envelope {
				return &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: `"just text"`}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := c.JSONToProto(tt.dir, []byte(tt.in), 0)
			if err != nil {
				t.Fatalf("JSONToProto: %v", err)
			}
			var got natterv1.Envelope
			if err := proto.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if want := tt.want(t); !proto.Equal(&got, want) {
				t.Fatalf("protobuf form:\n got %v\nwant %v", &got, want)
			}
			j, err := c.ProtoToJSON(tt.dir, b)
			if err != nil {
				t.Fatalf("ProtoToJSON: %v", err)
			}
			back := tt.back
			if back == "" {
				back = tt.in
			}
			assertSameEnvelope(t, j, []byte(back))
			// The JSON form decodes as any JSON frame does.
			if _, err := envelope.Decode(j, 0); err != nil {
				t.Fatalf("envelope.Decode(%s): %v", j, err)
			}
		})
	}
}

// assertSameEnvelope compares two JSON envelopes as decoded values: key
// order and spacing aside.
func assertSameEnvelope(t *testing.T, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got %s: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		t.Fatalf("JSON form:\n got %s\nwant %s", got, want)
	}
}

// TestToProtoDeterministic: the edge encodes a delivery once for every
// protobuf socket; equal envelopes give equal bytes (map entries sorted).
func TestToProtoDeterministic(t *testing.T) {
	t.Parallel()
	c := codec(t)
	in := []byte(`{"type":"wt.series","meta":{"b":1,"a":2,"c":3},"payload":{"counts":{"z":1,"y":2,"x":3,"w":4}}}`)
	first, err := c.JSONToProto(wire.Server, in, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		b, err := c.JSONToProto(wire.Server, in, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, first) {
			t.Fatalf("encodings differ:\n%x\n%x", b, first)
		}
	}
}

// TestZeroCodec: without schemas every payload travels as JSON text, and
// a protobuf payload cannot be read.
func TestZeroCodec(t *testing.T) {
	t.Parallel()
	var c wire.Codec
	b, err := c.JSONToProto(wire.Client, []byte(`{"type":"chat.send","payload":{"room":"g","text":"t"}}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	var got natterv1.Envelope
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.GetJson() != `{"room":"g","text":"t"}` {
		t.Fatalf("body = %v, want json", got.Body)
	}
	pb, _ := proto.Marshal(&natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{Payload: []byte{0x0a, 0x01, 'g'}}})
	if _, err := c.FromProto(wire.Client, pb); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("FromProto of a payload without schemas: %v, want ErrMalformed", err)
	}
}

func marshal(t testing.TB, e *natterv1.Envelope) []byte {
	t.Helper()
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFromProtoMalformed(t *testing.T) {
	t.Parallel()
	c := codec(t)
	tests := []struct {
		name string
		dir  wire.Direction
		in   []byte
	}{
		{"not protobuf", wire.Client, []byte{0xff, 0xff, 0xff}},
		{"truncated field", wire.Client, []byte{0x0a, 0x05, 'e', 'c'}},
		{"type not UTF-8", wire.Client, []byte{0x0a, 0x02, 0xc3, 0x28}},
		{"json not JSON", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: `{"a":`}})},
		{"json two values", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: `1 2`}})},
		{"json empty", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Json{Json: ""}})},
		{"payload without schema", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Body: &natterv1.Envelope_Payload{Payload: []byte{0x0a, 0x00}}})},
		{"payload with the other direction's schema", wire.Server, marshal(t, &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{Payload: []byte{0x0a, 0x01, 'g'}}})},
		{"payload not the message", wire.Client, marshal(t, &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{Payload: []byte{0x0a, 0x09, 'g'}}})},
		{"payload string not UTF-8", wire.Client, marshal(t, &natterv1.Envelope{Type: "chat.send", Body: &natterv1.Envelope_Payload{Payload: []byte{0x12, 0x02, 0xc3, 0x28}}})},
		{"extra not an object", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `[1]`}})},
		{"extra null", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `null`}})},
		{"extra not JSON", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `{`}})},
		{"extra repeats a field", wire.Client, marshal(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Extra: `{"room":"r"}`}})},
		{"extra repeats offset", wire.Server, marshal(t, &natterv1.Envelope{Type: "echo", Meta: &natterv1.Meta{Offset: ptr(uint64(3)), Extra: `{"offset":4}`}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := c.FromProto(tt.dir, tt.in); !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("FromProto: %v, want ErrMalformed", err)
			}
			if _, err := c.ProtoToJSON(tt.dir, tt.in); !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("ProtoToJSON: %v, want ErrMalformed", err)
			}
		})
	}
}

// TestJSONToProtoMalformed: a JSON frame the JSON decoder refuses does not
// convert either, with the decoder's error.
func TestJSONToProtoMalformed(t *testing.T) {
	t.Parallel()
	c := codec(t)
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"not JSON", `{"type":`, envelope.ErrMalformed},
		{"not an object", `[1]`, envelope.ErrNotObject},
		{"no type", `{"payload":1}`, envelope.ErrMissingType},
		{"unknown top-level field", `{"type":"echo","extra":1}`, envelope.ErrUnknownField},
		{"too large", `{"type":"echo","payload":"` + string(bytes.Repeat([]byte("x"), 100)) + `"}`, envelope.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := c.JSONToProto(wire.Client, []byte(tt.in), 64); !errors.Is(err, tt.want) {
				t.Fatalf("JSONToProto: %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzProtoToJSON: no input panics, and whatever converts is a JSON
// envelope the JSON decoder takes.
func FuzzProtoToJSON(f *testing.F) {
	c := codec(f)
	for _, s := range []string{
		`{"type":"echo"}`,
		`{"type":"echo","meta":{"correlationId":"c","timeoutMs":5,"timestamp":6,"room":"r","k":[1]},"payload":{"a":1}}`,
		`{"type":"chat.send","payload":{"room":"g","text":"hi"}}`,
		`{"type":"wt.series","meta":{"offset":3,"epoch":"e"},"payload":{"at":5,"values":[1],"counts":{"a":1},"level":1,"blob":"AA=="}}`,
		`{"type":"chat.message","payload":{"room":"g","text":"t","ts":1}}`,
	} {
		for _, dir := range []wire.Direction{wire.Client, wire.Server} {
			b, err := c.JSONToProto(dir, []byte(s), 0)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(dir), b)
		}
	}
	f.Add(uint8(wire.Client), []byte{})
	f.Add(uint8(wire.Server), []byte{0x22, 0x01, '{'})
	f.Fuzz(func(t *testing.T, d uint8, data []byte) {
		dir := wire.Client
		if d%2 == 0 {
			dir = wire.Server
		}
		out, err := c.ProtoToJSON(dir, data)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) {
				t.Logf("error not wrapping ErrMalformed: %v", err)
			}
			return
		}
		if _, err := envelope.Decode(out, len(out)+1); err != nil {
			// A missing or invalid type is the JSON decoder's to refuse,
			// as for any JSON frame; anything else is a conversion bug.
			if errors.Is(err, envelope.ErrMissingType) || errors.Is(err, envelope.ErrInvalidType) {
				return
			}
			t.Fatalf("ProtoToJSON(%x) = %s, which does not decode: %v", data, out, err)
		}
	})
}
