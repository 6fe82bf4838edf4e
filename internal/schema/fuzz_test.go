package schema_test

import (
	"errors"
	"testing"

	"github.com/natter/natter/internal/schema"
)

// FuzzValidate feeds arbitrary payloads to every kind of schema: closed,
// open, mixed, nested and repeated. Validate must never panic, and must
// answer nil or a *ValidationError with a rule on every violation.
func FuzzValidate(f *testing.F) {
	r := load(f, schema.Config{Dirs: []string{userDir}})
	for _, seed := range []string{
		``, `null`, `{}`, `[]`, `"x"`, `1`, `{"room":"general","text":"hello there"}`,
		`{"room":5}`, `{"room":"a","room":"b"}`, `{"colour":1}`, `{"room":`,
		`{"orderId":"o","items":[{"name":"","qty":1e3}],"shipTo":{"streetLine":"s","country":"NL"}}`,
		`{"extras":{"k":{"qty":"7"}},"priority":7,"due":"2026-01-02T03:04:05Z","card":"a","invoice":"b"}`,
		`{"kind":"k","loose":{"id":"","more":[{"x":null}]},"x":1}`,
		`{"text":"t","closed":{"name":1,"y":[1,2]}}`,
		`{"items":[null],"tags":[1],"attrs":[],"budgetCents":"1.5"}`,
	} {
		f.Add(seed)
	}
	types := []string{"chat.send", "ping", "acme.order", "acme.note", "acme.wrapper", "acme.tight"}
	f.Fuzz(func(t *testing.T, payload string) {
		for _, typ := range types {
			err := r.Validate(schema.Client, typ, []byte(payload))
			if err == nil {
				continue
			}
			var verr *schema.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Validate(%q, %q) = %v (%T), want nil or *ValidationError", typ, payload, err, err)
			}
			if len(verr.Violations) == 0 {
				t.Fatalf("Validate(%q, %q): ValidationError without violations", typ, payload)
			}
			for _, v := range verr.Violations {
				if v.Rule == "" || v.Message == "" {
					t.Fatalf("Validate(%q, %q): violation %+v lacks a rule or message", typ, payload, v)
				}
			}
		}
	})
}
