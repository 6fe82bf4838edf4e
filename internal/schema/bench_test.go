package schema_test

import (
	"testing"

	"github.com/natter/natter/internal/schema"
)

func BenchmarkValidate(b *testing.B) {
	r := load(b, schema.Config{})
	benches := []struct {
		name    string
		payload string
		valid   bool
	}{
		{name: "valid", payload: `{"room":"general","text":"hello there"}`, valid: true},
		{name: "invalid_rule", payload: `{"room":"general!","text":"hello there"}`},
		{name: "invalid_unknown_field", payload: `{"room":"general","text":"hello there","colour":"red"}`},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			p := []byte(bb.payload)
			if err := r.Validate(schema.Client, "chat.send", p); (err == nil) != bb.valid {
				b.Fatalf("Validate = %v, want valid %v", err, bb.valid)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				_ = r.Validate(schema.Client, "chat.send", p)
			}
		})
	}
	b.Run("no_schema", func(b *testing.B) {
		p := []byte(`{"anything":1}`)
		b.ReportAllocs()
		for b.Loop() {
			if err := r.Validate(schema.Client, "echo", p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
