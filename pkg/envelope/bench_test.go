package envelope_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/natter/natter/pkg/envelope"
)

// benchFrames are the frames the benchmarks decode: a typical small RPC
// request and a frame carrying a 4 KB payload.
var benchFrames = []struct {
	name  string
	frame []byte
}{
	{
		name:  "small",
		frame: []byte(`{"type":"chat.send","meta":{"correlationId":"c-42","timestamp":1730450000000},"payload":{"text":"hello"}}`),
	},
	{
		name:  "4KB",
		frame: []byte(`{"type":"chat.send","meta":{"correlationId":"c-42","timestamp":1730450000000},"payload":{"room":"general","text":"` + strings.Repeat("x", 4096) + `"}}`),
	},
}

func BenchmarkDecode(b *testing.B) {
	for _, bf := range benchFrames {
		b.Run(bf.name, func(b *testing.B) {
			if _, err := envelope.Decode(bf.frame, 0); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(bf.frame)))
			for b.Loop() {
				if _, err := envelope.Decode(bf.frame, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeInto(b *testing.B) {
	for _, bf := range benchFrames {
		b.Run(bf.name, func(b *testing.B) {
			var e envelope.Envelope
			b.ReportAllocs()
			b.SetBytes(int64(len(bf.frame)))
			for b.Loop() {
				if err := envelope.DecodeInto(&e, bf.frame, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	for _, bf := range benchFrames {
		b.Run(bf.name, func(b *testing.B) {
			e, err := envelope.Decode(bf.frame, 0)
			if err != nil {
				b.Fatal(err)
			}
			out, err := envelope.Encode(e)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(out)))
			for b.Loop() {
				if _, err := envelope.Encode(e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	// A room delivery: the edge sets meta.room, and the publisher's own
	// meta keys ride along in Extra.
	b.Run("room_extra", func(b *testing.B) {
		e := &envelope.Envelope{
			Type: "chat.message",
			Meta: envelope.Meta{
				Room:      "general",
				Timestamp: 1730450000000,
				Extra:     map[string]json.RawMessage{"trace": json.RawMessage(`"00-4bf92f3577b34da6-01"`)},
			},
			Payload: json.RawMessage(`{"from":"u1","text":"hi"}`),
		}
		out, err := envelope.Encode(e)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(out)))
		for b.Loop() {
			if _, err := envelope.Encode(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
