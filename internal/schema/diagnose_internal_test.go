package schema

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/dynamicpb"
)

// FuzzDiagnoseAgreesWithProtojson checks the property mixed open/closed
// payloads rely on: the diagnoser is never stricter than protojson. What
// protojson accepts (unknown keys allowed exactly where messages are open),
// the diagnoser accepts too.
func FuzzDiagnoseAgreesWithProtojson(f *testing.F) {
	r, err := Load(Config{Dirs: []string{"testdata/user"}})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		`{}`, `{"orderId":"o","items":[{"name":"n","qty":"1"}],"extras":{"k":{"qty":1e2}}}`,
		`{"priority":"PRIORITY_LOW","due":"2026-01-02T03:04:05.123Z","attrs":{"a":[null]},"card":null,"invoice":"i"}`,
		`{"order_id":"o","ship_to":{"street_line":"s"},"budgetCents":"-12","tags":["x"]}`,
		`{"budgetCents":1e3,"priority":2,"due":null,"items":[]}`,
	} {
		f.Add(seed)
	}
	pt := r.client["acme.order"] // closed through and through
	strict := protojson.UnmarshalOptions{Resolver: r.ext}
	f.Fuzz(func(t *testing.T, payload string) {
		if isNull([]byte(payload)) {
			return
		}
		if err := strict.Unmarshal([]byte(payload), dynamicpb.NewMessage(pt.desc)); err != nil {
			return
		}
		if v := diagnose(pt.desc, r.open, r.ext, []byte(payload)); v != nil {
			t.Fatalf("protojson accepts %s, the diagnoser reports %+v", payload, *v)
		}
	})
}
