package tsgen_test

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/tsgen"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func generate(t *testing.T, dirs ...string) []byte {
	t.Helper()
	reg, err := schema.Load(schema.Config{Dirs: dirs})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tsgen.Generate(reg.Types())
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// golden generates the types of dirs and compares them with the file
// golden (rewritten with -update).
func golden(t *testing.T, golden string, dirs ...string) []byte {
	t.Helper()
	got := generate(t, dirs...)
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("generated types differ from %s (go test ./internal/tsgen -update to accept):\n%s", golden, got)
	}
	return got
}

// The TypeScript client's payload types are generated from the shipped
// schemas; a schema change without regenerating fails here.
func TestClientTypesUpToDate(t *testing.T) {
	const file = "../../clients/src/messages.gen.ts"
	want := generate(t)
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run `go run ./cmd/natter-gen-ts > clients/src/messages.gen.ts`", file)
	}
}

// The user schemas of the schema tests cover nested, repeated, map, enum,
// oneof, 64-bit and well-known fields.
func TestGolden(t *testing.T) {
	got := golden(t, "testdata/user.gen.ts", "../schema/testdata/user")
	for _, line := range []string{
		`  "acme.order": Order;`,
		`  items: Item[];`,                      // min_items 1: required
		`  budgetCents?: number | string;`,      // int64 as protojson writes it
		`  due?: string;`,                       // Timestamp
		`  attrs?: { [key: string]: unknown };`, // Struct
		`  extras?: { [key: string]: Item };`,
		`  shipTo: Address;`, // buf.validate required
	} {
		if !strings.Contains(string(got), line+"\n") {
			t.Errorf("missing line %q", line)
		}
	}
}

// Names TypeScript already uses are qualified, self-references stay typed
// whichever type brought the message first, and maps of enums are typed.
func TestTrickyShapes(t *testing.T) {
	got := golden(t, "testdata/tricky.gen.ts", "testdata/tricky")
	for _, line := range []string{
		`export interface TrickyV1Record {`,
		`export interface TrickyV1ClientMessages {`,
		`  kinds?: { [key: string]: "KIND_UNSPECIFIED" | "KIND_A" };`,
		`  kids?: Node[];`,
		`  root?: Node;`,
		`  "tricky.record": TrickyV1Record;`,
	} {
		if !strings.Contains(string(got), line+"\n") {
			t.Errorf("missing line %q", line)
		}
	}
	if strings.Contains(string(got), "Record<") {
		t.Error("uses Record<...>, which a message named Record would shadow")
	}
}
