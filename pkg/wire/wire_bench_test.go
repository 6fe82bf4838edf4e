package wire_test

import (
	"testing"

	"github.com/natter/natter/pkg/wire"
)

// The conversions the edge makes: once per delivered message toward
// protobuf sockets (JSONToProto, Server), once per protobuf frame a client
// sends (ProtoToJSON, Client).
func BenchmarkJSONToProto(b *testing.B) {
	c := codec(b)
	for _, bc := range []struct{ name, frame string }{
		{"chat.message", `{"type":"chat.message","meta":{"room":"general"},"payload":{"room":"general","text":"Are we still on for the 3pm review? I pushed the fixes to the branch.","user":"alice","conn":"Ixwxo5s6JK3YCE78klufGM.14xqz36jw48q2","ts":1765090800123}}`},
		{"no schema", `{"type":"bench.tick","meta":{"room":"bench"},"payload":{"t":1765090800123456789,"n":12345,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}`},
		{"series", `{"type":"wt.series","meta":{"room":"dash","offset":42,"epoch":"e1"},"payload":{"at":1765090800000,"values":[41.73902354271934,43.10923400012311,39.88812371623012,40.0000012312,38.123123987123,42.9981273,44.12309812,45.0012398,41.1239812,39.123987,40.9812739,43.1209381,44.98123,42.12398,41.0009123],"counts":{"a":1,"b":2}}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := []byte(bc.frame)
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.JSONToProto(wire.Server, in, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkProtoToJSON(b *testing.B) {
	c := codec(b)
	in, err := c.JSONToProto(wire.Client, []byte(`{"type":"chat.send","meta":{"correlationId":"c1"},"payload":{"room":"general","text":"Are we still on for the 3pm review? I pushed the fixes to the branch."}}`), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.ProtoToJSON(wire.Client, in); err != nil {
			b.Fatal(err)
		}
	}
}
