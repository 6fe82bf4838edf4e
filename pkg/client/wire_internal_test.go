package client

import (
	"encoding/json"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/natter/natter/pkg/wire"
)

// TestInt64sAsNumbers: the protojson form of a payload has its 64-bit
// integers as strings; the client hands them on as numbers, as the JSON
// wire does, and leaves everything else alone.
func TestInt64sAsNumbers(t *testing.T) {
	types, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	md := types.Message(wire.Server, "chat.message")
	tests := []struct {
		name, in, want string
	}{
		{"int64 string to number", `{"room":"r","ts":"1733000000000"}`, `{"room":"r","ts":1733000000000}`},
		{"past 2^53, exact", `{"ts":"9007199254740993"}`, `{"ts":9007199254740993}`},
		{"negative", `{"ts":"-5"}`, `{"ts":-5}`},
		{"already a number", `{"ts":12}`, `{"ts":12}`},
		{"strings that are not integers stay", `{"text":"123","ts":"1e3"}`, `{"text":"123","ts":"1e3"}`},
		{"HTML characters not escaped", `{"text":"<b>&</b>","ts":"1"}`, `{"text":"<b>&</b>","ts":1}`},
		{"not an object", `[1]`, `[1]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := int64sAsNumbers(md, []byte(tt.in))
			if string(got) != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
	if !has64(md, 0) || has64(types.Message(wire.Client, "chat.send"), 0) {
		t.Fatal("has64")
	}
	// What protojson writes comes back as what encoding/json reads.
	m := dynamicpb.NewMessage(md)
	if err := protojson.Unmarshal([]byte(`{"room":"r","ts":42}`), m); err != nil {
		t.Fatal(err)
	}
	pj, _ := protojson.Marshal(m)
	var got, want map[string]any
	_ = json.Unmarshal(int64sAsNumbers(md, pj), &got)
	_ = json.Unmarshal([]byte(`{"room":"r","ts":42}`), &want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s -> %v", pj, got)
	}
}
