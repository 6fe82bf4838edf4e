package tsgen_test

import (
	"bytes"
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

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
	set, err := reg.DescriptorSet()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tsgen.Generate(reg.Types(), set)
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

// natterSchemas embeds a descriptor set that links on its own (every file
// after its imports, none missing) and holds the message of every type,
// which the maps name per direction.
func TestSchemasDescriptorSet(t *testing.T) {
	reg, err := schema.Load(schema.Config{Dirs: []string{"../schema/testdata/user"}})
	if err != nil {
		t.Fatal(err)
	}
	got := golden(t, "testdata/user.gen.ts", "../schema/testdata/user")
	src := string(got)
	start := strings.Index(src, "  descriptorSet: [\n")
	end := strings.Index(src, "  ].join(\"\"),\n")
	if start < 0 || end < start {
		t.Fatalf("no descriptorSet in:\n%s", src)
	}
	var b64 strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(src[start+len("  descriptorSet: [\n"):end]), "\n") {
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimSpace(line), ","))
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		b64.WriteString(s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64.String())
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("the descriptor set does not link: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range set.File {
		if f.SourceCodeInfo != nil {
			t.Errorf("%s keeps its source code info", f.GetName())
		}
		for _, dep := range f.Dependency {
			if !seen[dep] {
				t.Errorf("%s comes before its import %s", f.GetName(), dep)
			}
		}
		seen[f.GetName()] = true
	}
	for _, ti := range reg.Types() {
		if _, err := files.FindDescriptorByName(protoreflect.FullName(ti.Message)); err != nil {
			t.Errorf("%s: %v", ti.Message, err)
		}
		line := fmt.Sprintf("    %q: %q,\n", ti.Type, ti.Message)
		dir := strings.Index(src, "  "+ti.Direction+": {\n")
		if dir < 0 || !strings.Contains(src[dir:], line) {
			t.Errorf("natterSchemas.%s lacks %s", ti.Direction, strings.TrimSpace(line))
		}
	}
}
