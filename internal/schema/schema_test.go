package schema_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/natter/natter/internal/schema"
)

// userDir holds the test schemas loaded next to the shipped ones.
const userDir = "testdata/user"

func load(t testing.TB, cfg schema.Config) *schema.Registry {
	t.Helper()
	r, err := schema.Load(cfg)
	if err != nil {
		t.Fatalf("Load(%+v): %v", cfg, err)
	}
	return r
}

// v is a violation as the tests name it: "field rule".
func v(field, rule string) string { return field + " " + rule }

// check validates payload and compares the violations, in order, with want
// (nil: valid).
func check(t *testing.T, r *schema.Registry, dir schema.Direction, typ, payload string, want []string) {
	t.Helper()
	var p []byte
	if payload != "<nil>" {
		p = []byte(payload)
	}
	err := r.Validate(dir, typ, p)
	if want == nil {
		if err != nil {
			t.Fatalf("Validate(%s, %q, %s) = %v, want nil", dir, typ, payload, err)
		}
		return
	}
	var verr *schema.ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("Validate(%s, %q, %s) = %v, want a *ValidationError", dir, typ, payload, err)
	}
	if !errors.Is(err, schema.ErrInvalidPayload) {
		t.Errorf("errors.Is(%v, ErrInvalidPayload) = false", err)
	}
	if verr.Type != typ {
		t.Errorf("ValidationError.Type = %q, want %q", verr.Type, typ)
	}
	var got []string
	for _, vi := range verr.Violations {
		got = append(got, v(vi.Field, vi.Rule))
		if vi.Message == "" {
			t.Errorf("violation %+v has no message", vi)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Validate(%s, %q, %s) violations\n got %q\nwant %q\n(%v)", dir, typ, payload, got, want, err)
	}
}

func TestValidateChat(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{})
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name    string
		dir     schema.Direction
		typ     string
		payload string // "<nil>" for a nil payload
		want    []string
	}{
		{name: "send", dir: schema.Client, typ: "chat.send", payload: `{"room":"general","text":"hello there"}`},
		{name: "send spaced JSON", dir: schema.Client, typ: "chat.send", payload: " {\n\"text\" : \"héllo\", \"room\":\"a-b_C9\"} "},
		{name: "send max lengths", dir: schema.Client, typ: "chat.send", payload: `{"room":"` + long(128) + `","text":"` + long(4096) + `"}`},
		{name: "send null field", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","text":"t","user":null}`, want: []string{v("user", "unknown_field")}},
		{name: "ping nil", dir: schema.Client, typ: "ping", payload: "<nil>"},
		{name: "ping empty object", dir: schema.Client, typ: "ping", payload: `{}`},
		{name: "ping null", dir: schema.Client, typ: "ping", payload: `null`},
		{name: "ping unknown field", dir: schema.Client, typ: "ping", payload: `{"x":1}`, want: []string{v("x", "unknown_field")}},
		{name: "pong number", dir: schema.Server, typ: "pong", payload: `{"time":1730450000000}`},
		{name: "pong string int64", dir: schema.Server, typ: "pong", payload: `{"time":"1730450000000"}`},
		{name: "join client", dir: schema.Client, typ: "chat.join", payload: `{"room":"lobby"}`},
		{name: "join server", dir: schema.Server, typ: "chat.join", payload: `{"room":"lobby"}`},
		{name: "leave", dir: schema.Client, typ: "chat.leave", payload: `{"room":"lobby"}`},
		{name: "message", dir: schema.Server, typ: "chat.message", payload: `{"room":"r","text":"hi","user":"u1","conn":"c1","ts":1730450000000}`},
		{name: "sent", dir: schema.Server, typ: "chat.sent", payload: `{"ts":1730450000000}`},

		{name: "empty payload", dir: schema.Client, typ: "chat.send", payload: "<nil>",
			want: []string{v("room", "string.min_len"), v("room", "string.pattern"), v("text", "string.min_len")}},
		{name: "room empty", dir: schema.Client, typ: "chat.send", payload: `{"room":"","text":"hi"}`,
			want: []string{v("room", "string.min_len"), v("room", "string.pattern")}},
		{name: "room too long", dir: schema.Client, typ: "chat.join", payload: `{"room":"` + long(129) + `"}`,
			want: []string{v("room", "string.max_len")}},
		{name: "room pattern", dir: schema.Client, typ: "chat.leave", payload: `{"room":"a.b"}`,
			want: []string{v("room", "string.pattern")}},
		{name: "room wildcard", dir: schema.Client, typ: "chat.send", payload: `{"room":"*","text":"hi"}`,
			want: []string{v("room", "string.pattern")}},
		{name: "text empty", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","text":""}`,
			want: []string{v("text", "string.min_len")}},
		{name: "text too long", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","text":"` + long(4097) + `"}`,
			want: []string{v("text", "string.max_bytes")}},
		{name: "room a number", dir: schema.Client, typ: "chat.send", payload: `{"room":5,"text":"hi"}`,
			want: []string{v("room", "json")}},
		{name: "text an object", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","text":{"a":1}}`,
			want: []string{v("text", "json")}},
		{name: "unknown field", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","text":"hi","colour":"red"}`,
			want: []string{v("colour", "unknown_field")}},
		{name: "unknown field first", dir: schema.Client, typ: "chat.send", payload: `{"colour":"red","room":5}`,
			want: []string{v("colour", "unknown_field")}},
		{name: "duplicate key", dir: schema.Client, typ: "chat.send", payload: `{"room":"r","room":"s","text":"hi"}`,
			want: []string{v("room", "json")}},
		{name: "payload an array", dir: schema.Client, typ: "chat.send", payload: `["general","hi"]`,
			want: []string{v("", "json")}},
		{name: "payload a string", dir: schema.Client, typ: "chat.send", payload: `"hi"`,
			want: []string{v("", "json")}},
		{name: "payload not JSON", dir: schema.Client, typ: "chat.send", payload: `{"room":`,
			want: []string{v("", "json")}},
		{name: "pong fraction", dir: schema.Server, typ: "pong", payload: `{"time":1.5}`,
			want: []string{v("time", "json")}},
		{name: "pong not a number", dir: schema.Server, typ: "pong", payload: `{"time":"soon"}`,
			want: []string{v("time", "json")}},
		{name: "pong out of range", dir: schema.Server, typ: "pong", payload: `{"time":99999999999999999999}`,
			want: []string{v("time", "json")}},
		{name: "message unknown field", dir: schema.Server, typ: "chat.message", payload: `{"room":"r","from":"u"}`,
			want: []string{v("from", "unknown_field")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, r, tt.dir, tt.typ, tt.payload, tt.want)
		})
	}
}

func TestEchoHasNoSchema(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{})
	for _, dir := range []schema.Direction{schema.Client, schema.Server} {
		if r.Known(dir, "echo") {
			t.Errorf("Known(%s, echo) = true: echo takes any payload", dir)
		}
		if err := r.Validate(dir, "echo", []byte(`{"anything":[1,2,3]}`)); err != nil {
			t.Errorf("Validate(%s, echo) = %v", dir, err)
		}
	}
}

func TestValidateUserDir(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{userDir}})
	const valid = `{
		"orderId": "o1",
		"items": [{"name": "pen", "qty": 2}, {"name": "ink", "qty": "100"}],
		"shipTo": {"streetLine": "1 Main St", "country": "NL"},
		"extras": {"gift": {"name": "wrap", "qty": 1}},
		"priority": "PRIORITY_HIGH",
		"due": "2026-01-02T03:04:05Z",
		"attrs": {"any": [1, "x", null]},
		"budgetCents": "12345",
		"tags": ["a", "b"],
		"slug": "fine-slug-1",
		"card": "visa"
	}`
	// order builds a payload from valid with one key replaced.
	order := func(key, value string) string {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(valid), &m); err != nil {
			t.Fatal(err)
		}
		if value == "" {
			delete(m, key)
		} else {
			m[key] = json.RawMessage(value)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name    string
		typ     string
		payload string
		want    []string
	}{
		{name: "valid", typ: "acme.order", payload: valid},
		{name: "second type of the same message", typ: "acme.order.v2", payload: valid},
		{name: "proto field names", typ: "acme.order", payload: `{"order_id":"o","items":[{"name":"n","qty":1}],"ship_to":{"street_line":"s","country":"NL"}}`},
		{name: "shipped types still load", typ: "chat.send", payload: `{"room":"general","text":"hi"}`},

		{name: "nested min_len", typ: "acme.order", payload: order("items", `[{"name":"","qty":1}]`),
			want: []string{v("items[0].name", "string.min_len")}},
		{name: "nested range", typ: "acme.order", payload: order("items", `[{"name":"a","qty":1},{"name":"b","qty":101}]`),
			want: []string{v("items[1].qty", "int32.gte_lte")}},
		{name: "two nested violations", typ: "acme.order", payload: order("items", `[{"name":"","qty":0}]`),
			want: []string{v("items[0].name", "string.min_len"), v("items[0].qty", "int32.gte_lte")}},
		{name: "min_items", typ: "acme.order", payload: order("items", `[]`),
			want: []string{v("items", "repeated.min_items")}},
		{name: "required message", typ: "acme.order", payload: order("shipTo", ""),
			want: []string{v("shipTo", "required")}},
		{name: "camel path", typ: "acme.order", payload: order("shipTo", `{"streetLine":"s","country":"NLD"}`),
			want: []string{v("shipTo.country", "string.len")}},
		{name: "map value", typ: "acme.order", payload: order("extras", `{"gift":{"name":"wrap","qty":0}}`),
			want: []string{v(`extras["gift"].qty`, "int32.gte_lte")}},
		{name: "repeated items rule", typ: "acme.order", payload: order("tags", `["ok","much-too-long"]`),
			want: []string{v("tags[1]", "string.max_len")}},
		{name: "int64 rule", typ: "acme.order", payload: order("budgetCents", `-1`),
			want: []string{v("budgetCents", "int64.gte")}},
		{name: "predefined rule", typ: "acme.order", payload: order("slug", `"Not A Slug"`),
			want: []string{v("slug", "string.slug")}},
		{name: "enum defined_only", typ: "acme.order", payload: order("priority", `7`),
			want: []string{v("priority", "enum.defined_only")}},
		{name: "enum unknown name", typ: "acme.order", payload: order("priority", `"PRIORITY_URGENT"`),
			want: []string{v("priority", "json")}},
		{name: "nested unknown field", typ: "acme.order", payload: order("items", `[{"name":"a","qty":1,"colour":"red"}]`),
			want: []string{v("items[0].colour", "unknown_field")}},
		{name: "nested wrong type", typ: "acme.order", payload: order("items", `[{"name":"a","qty":"many"}]`),
			want: []string{v("items[0].qty", "json")}},
		{name: "repeated not an array", typ: "acme.order", payload: order("items", `{"name":"a"}`),
			want: []string{v("items", "json")}},
		{name: "null list item", typ: "acme.order", payload: order("items", `[null]`),
			want: []string{v("items[0]", "json")}},
		{name: "timestamp wrong type", typ: "acme.order", payload: order("due", `5`),
			want: []string{v("due", "json")}},
		{name: "oneof twice", typ: "acme.order", payload: order("invoice", `"inv-1"`),
			want: []string{v("invoice", "json")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, r, schema.Client, tt.typ, tt.payload, tt.want)
		})
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{userDir}})
	tests := []struct {
		name    string
		typ     string
		payload string
		want    []string
	}{
		{name: "open accepts unknown", typ: "acme.note", payload: `{"text":"hi","mood":"good","n":[1,{"a":2}]}`},
		{name: "open still applies rules", typ: "acme.note", payload: `{"mood":"good"}`,
			want: []string{v("text", "string.min_len")}},
		{name: "closed child of open", typ: "acme.note", payload: `{"text":"hi","x":1,"closed":{"name":"n","bogus":true}}`,
			want: []string{v("closed.bogus", "unknown_field")}},
		{name: "open child of closed", typ: "acme.wrapper", payload: `{"kind":"k","loose":{"id":"1","more":{"deep":[1]}}}`},
		{name: "closed parent of open", typ: "acme.wrapper", payload: `{"kind":"k","loose":{"id":"1"},"other":1}`,
			want: []string{v("other", "unknown_field")}},
		{name: "rules in open child", typ: "acme.wrapper", payload: `{"loose":{"id":"","more":1}}`,
			want: []string{v("loose.id", "string.min_len")}},
		{name: "wrong type in mixed", typ: "acme.wrapper", payload: `{"kind":1}`,
			want: []string{v("kind", "json")}},
		{name: "closed rejects unknown", typ: "acme.tight", payload: `{"text":"hi","mood":"good"}`,
			want: []string{v("mood", "unknown_field")}},
		{name: "closed accepts known", typ: "acme.tight", payload: `{"text":"hi"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, r, schema.Client, tt.typ, tt.payload, tt.want)
		})
	}
}

func TestUnknownType(t *testing.T) {
	t.Parallel()
	lax := load(t, schema.Config{})
	strict := load(t, schema.Config{Strict: true})
	tests := []struct {
		name    string
		r       *schema.Registry
		dir     schema.Direction
		typ     string
		wantErr error
	}{
		{name: "lax echo", r: lax, dir: schema.Client, typ: "echo"},
		{name: "lax unknown", r: lax, dir: schema.Client, typ: "acme.nothing"},
		{name: "lax server type sent by a client", r: lax, dir: schema.Client, typ: "pong"},
		{name: "strict echo", r: strict, dir: schema.Client, typ: "echo", wantErr: schema.ErrUnknownType},
		{name: "strict unknown", r: strict, dir: schema.Server, typ: "acme.nothing", wantErr: schema.ErrUnknownType},
		{name: "strict server type sent by a client", r: strict, dir: schema.Client, typ: "pong", wantErr: schema.ErrUnknownType},
		{name: "strict client type sent to a client", r: strict, dir: schema.Server, typ: "ping", wantErr: schema.ErrUnknownType},
		{name: "strict known", r: strict, dir: schema.Client, typ: "ping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate(tt.dir, tt.typ, []byte(`{"whatever":1}`))
			if tt.typ == "ping" {
				err = tt.r.Validate(tt.dir, tt.typ, nil)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Validate(%s, %q) = %v, want %v", tt.dir, tt.typ, err, tt.wantErr)
			}
		})
	}
}

func TestDirections(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{userDir}})
	known := []struct {
		dir  schema.Direction
		typ  string
		want bool
	}{
		{schema.Client, "ping", true},
		{schema.Server, "ping", false},
		{schema.Server, "pong", true},
		{schema.Client, "pong", false},
		{schema.Client, "chat.join", true},
		{schema.Server, "chat.join", true},
		{schema.Client, "chat.message", false},
		{schema.Server, "chat.send", false},
		{schema.Client, "acme.order", true},
		{schema.Server, "acme.order", true},
		{schema.Direction(0), "ping", false},
		{schema.Direction(3), "ping", false},
	}
	for _, k := range known {
		if got := r.Known(k.dir, k.typ); got != k.want {
			t.Errorf("Known(%s, %q) = %v, want %v", k.dir, k.typ, got, k.want)
		}
	}

	t.Run("server schema does not apply to clients", func(t *testing.T) {
		check(t, r, schema.Client, "pong", `{"bogus":1}`, nil)
		check(t, r, schema.Server, "pong", `{"bogus":1}`, []string{v("bogus", "unknown_field")})
	})
	t.Run("one type, a message per direction", func(t *testing.T) {
		check(t, r, schema.Server, "acme.order", `{"orderId":"o1"}`, nil)
		check(t, r, schema.Client, "acme.order", `{"orderId":"o1"}`,
			[]string{v("items", "repeated.min_items"), v("shipTo", "required")})
	})
	t.Run("invalid direction", func(t *testing.T) {
		err := r.Validate(schema.Direction(0), "ping", nil)
		if err == nil || errors.Is(err, schema.ErrInvalidPayload) {
			t.Fatalf("Validate(Direction(0)) = %v, want an error that is no payload error", err)
		}
	})
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	notADir := filepath.Join(t.TempDir(), "file.proto")
	if err := os.WriteFile(notADir, []byte(`syntax = "proto3";`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dirs []string
		want []string // substrings of the error
	}{
		{name: "duplicate mapping", dirs: []string{"testdata/dup"},
			want: []string{`client type "chat.send"`, "natter.chat.v1.SendMessage", "dup.v1.MySend", filepath.Join("testdata", "dup", "dup.proto")}},
		{name: "syntax error", dirs: []string{"testdata/bad"},
			want: []string{filepath.Join("testdata", "bad", "broken.proto") + ":7:", "syntax error"}},
		{name: "missing import", dirs: []string{"testdata/badimport"},
			want: []string{filepath.Join("testdata", "badimport", "badimport.proto") + ":6:", "acme/v9/missing.proto"}},
		{name: "invalid type", dirs: []string{"testdata/badtype"},
			want: []string{"badtype.v1.BadType", `"a..b"`}},
		{name: "rule for another kind", dirs: []string{"testdata/badrule"},
			want: []string{"badrule.v1.BadRule", filepath.Join("testdata", "badrule", "badrule.proto")}},
		{name: "bad CEL in an embedded message", dirs: []string{"testdata/badcel"},
			want: []string{"badcel.v1.Outer", "badcel.v1.Inner", "nope"}},
		{name: "missing dir", dirs: []string{"testdata/nope"},
			want: []string{"testdata/nope"}},
		{name: "not a dir", dirs: []string{notADir},
			want: []string{"not a directory"}},
		{name: "empty dir name", dirs: []string{""},
			want: []string{"empty directory"}},
		{name: "shadows a shipped file", dirs: []string{"testdata/shadow"},
			want: []string{"schemas.FS: natter/chat/v1/chat.proto", filepath.Join("testdata", "shadow", "natter", "chat", "v1", "chat.proto"), "both define"}},
		{name: "same import path twice", dirs: []string{userDir, userDir},
			want: []string{filepath.Join("testdata", "user", "acme", "v1"), "both define"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := schema.Load(schema.Config{Dirs: tt.dirs})
			if err == nil {
				t.Fatalf("Load(%q) = %v, nil; want an error", tt.dirs, r)
			}
			if !errors.Is(err, schema.ErrInvalidConfig) {
				t.Errorf("errors.Is(%v, ErrInvalidConfig) = false", err)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Load(%q) error %q does not mention %q", tt.dirs, err, s)
				}
			}
		})
	}
}

func TestVendoredCopyOfShippedFile(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{"testdata/vendored"}})
	check(t, r, schema.Client, "vendored.hello", `{"name":"n"}`, nil)
	check(t, r, schema.Client, "vendored.hello", `{"nom":"n"}`, []string{v("nom", "unknown_field")})
}

func TestTypes(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{userDir}})
	types := r.Types()
	var got []string
	for _, ti := range types {
		got = append(got, ti.Type+"/"+ti.Direction)
	}
	sorted := slices.IsSortedFunc(types, func(a, b schema.TypeInfo) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(a.Direction, b.Direction)
	})
	if !sorted {
		t.Errorf("Types() not sorted by type then direction: %q", got)
	}
	for _, want := range []string{"chat.join/client", "chat.join/server", "chat.send/client", "ping/client", "pong/server", "acme.order/client", "acme.order/server"} {
		if !slices.Contains(got, want) {
			t.Errorf("Types() lacks %s: %q", want, got)
		}
	}
	if slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "echo/") }) {
		t.Errorf("Types() lists echo: %q", got)
	}
	// The caller owns the result.
	types[0].Schema[0] = 'X'
	if r.Types()[0].Schema[0] != '{' {
		t.Error("Types() shares its schema bytes with the registry")
	}
}

// typesResponse is ServeHTTP's body, with the parts of JSON Schema the
// tests read.
type typesResponse struct {
	Types []struct {
		schema.TypeInfo
		Schema jsonSchema `json:"schema"`
	} `json:"types"`
}

type jsonSchema struct {
	Schema               string                `json:"$schema"`
	Title                string                `json:"title"`
	Ref                  string                `json:"$ref"`
	Type                 any                   `json:"type"`
	Properties           map[string]jsonSchema `json:"properties"`
	Required             []string              `json:"required"`
	AdditionalProperties json.RawMessage       `json:"additionalProperties"` // false, or a schema
	Items                *jsonSchema           `json:"items"`
	Defs                 map[string]jsonSchema `json:"$defs"`
	MinLength            *int                  `json:"minLength"`
	MaxLength            *int                  `json:"maxLength"`
	Minimum              *float64              `json:"minimum"`
	Maximum              *float64              `json:"maximum"`
	MinItems             *int                  `json:"minItems"`
	Pattern              string                `json:"pattern"`
	Enum                 []string              `json:"enum"`
	Format               string                `json:"format"`
	Description          string                `json:"description"`
}

func TestServeHTTP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(load(t, schema.Config{Dirs: []string{userDir}}))
	t.Cleanup(srv.Close)

	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET: %s, Content-Type %q", res.Status, res.Header.Get("Content-Type"))
	}
	var body typesResponse
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatalf("decode: %v", err)
	}
	schemas := map[string]jsonSchema{}
	for _, ti := range body.Types {
		schemas[ti.Type+"/"+ti.Direction] = ti.Schema
		if ti.Schema.Schema != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema = %q", ti.Type, ti.Schema.Schema)
		}
		if ti.Type == "chat.send" && ti.Message != "natter.chat.v1.SendMessage" {
			t.Errorf("chat.send: message %q", ti.Message)
		}
	}

	send := schemas["chat.send/client"]
	room := send.Properties["room"]
	if send.Type != "object" || string(send.AdditionalProperties) != "false" {
		t.Errorf("chat.send: type %v, additionalProperties %s; want a closed object", send.Type, send.AdditionalProperties)
	}
	if room.Type != "string" || room.MinLength == nil || *room.MinLength != 1 || room.MaxLength == nil || *room.MaxLength != 128 || room.Pattern != "^[A-Za-z0-9_-]+$" {
		t.Errorf("chat.send room: %+v", room)
	}
	// max_bytes has no JSON Schema keyword (maxLength counts characters).
	if text := send.Properties["text"]; text.MinLength == nil || *text.MinLength != 1 || text.MaxLength != nil {
		t.Errorf("chat.send text: %+v", text)
	}
	if ts := schemas["chat.sent/server"].Properties["ts"]; fmt.Sprint(ts.Type) != "[integer string]" {
		t.Errorf("chat.sent ts type %v, want integer or string (int64)", ts.Type)
	}
	if note := schemas["acme.note/client"]; note.AdditionalProperties != nil {
		t.Errorf("acme.note is open, yet additionalProperties = %s", note.AdditionalProperties)
	}
	if extras := schemas["acme.order/client"].Properties["extras"]; !strings.Contains(string(extras.AdditionalProperties), "#/$defs/acme.v1.Item") {
		t.Errorf("acme.order extras (a map) additionalProperties = %s, want the Item schema", extras.AdditionalProperties)
	}

	order := schemas["acme.order/client"]
	items := order.Properties["items"]
	if items.Type != "array" || items.Items == nil || items.Items.Ref != "#/$defs/acme.v1.Item" || items.MinItems == nil || *items.MinItems != 1 {
		t.Errorf("acme.order items: %+v", items)
	}
	item, ok := order.Defs["acme.v1.Item"]
	if !ok {
		t.Fatalf("acme.order $defs lack acme.v1.Item: %v", order.Defs)
	}
	if qty := item.Properties["qty"]; qty.Minimum == nil || *qty.Minimum != 1 || qty.Maximum == nil || *qty.Maximum != 100 {
		t.Errorf("Item.qty: %+v", qty)
	}
	if item.Properties["name"].Description != "name of the product." {
		t.Errorf("Item.name description %q", item.Properties["name"].Description)
	}
	if !slices.Contains(order.Required, "shipTo") {
		t.Errorf("acme.order required = %q, want shipTo", order.Required)
	}
	if _, ok := order.Properties["orderId"]; !ok {
		t.Errorf("acme.order properties lack the JSON name orderId: %v", order.Properties)
	}
	if p := order.Properties["priority"]; !slices.Equal(p.Enum, []string{"PRIORITY_UNSPECIFIED", "PRIORITY_LOW", "PRIORITY_HIGH"}) {
		t.Errorf("priority enum %q", p.Enum)
	}
	if due := order.Properties["due"]; due.Format != "date-time" {
		t.Errorf("due: %+v", due)
	}

	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, srv.URL, strings.NewReader("{}"))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(res.Header.Get("Allow"), "GET") {
			t.Errorf("%s: %s, Allow %q; want 405 allowing GET", method, res.Status, res.Header.Get("Allow"))
		}
	}
}

func TestConcurrentValidate(t *testing.T) {
	t.Parallel()
	r := load(t, schema.Config{Dirs: []string{userDir}, Strict: true})
	cases := []struct {
		dir     schema.Direction
		typ     string
		payload string
		valid   bool
	}{
		{schema.Client, "chat.send", `{"room":"general","text":"hello there"}`, true},
		{schema.Client, "chat.send", `{"room":"gen eral","text":""}`, false},
		{schema.Client, "chat.send", `{"room":"general","text":"hi","x":1}`, false},
		{schema.Server, "pong", `{"time":1}`, true},
		{schema.Client, "acme.order", `{"orderId":"o","items":[{"name":"","qty":1}],"shipTo":{"streetLine":"s","country":"NL"}}`, false},
		{schema.Client, "acme.wrapper", `{"kind":"k","loose":{"id":"1","more":1}}`, true},
		{schema.Client, "acme.wrapper", `{"kind":"k","bad":1}`, false},
	}
	const goroutines, rounds = 16, 200
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				c := cases[(g+i)%len(cases)]
				err := r.Validate(c.dir, c.typ, []byte(c.payload))
				if (err == nil) != c.valid {
					errs <- fmt.Errorf("Validate(%s, %q, %s) = %v, want valid %v", c.dir, c.typ, c.payload, err, c.valid)
					return
				}
				_ = r.Known(c.dir, c.typ)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDescriptorSet(t *testing.T) {
	t.Parallel()
	reg, err := schema.Load(schema.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := reg.DescriptorSet()
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	// Every file comes after its imports, so that a runtime that builds
	// the files in order finds each dependency built.
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("the set does not link: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range set.File {
		for _, dep := range f.Dependency {
			if !seen[dep] {
				t.Errorf("%s comes before its import %s", f.GetName(), dep)
			}
		}
		seen[f.GetName()] = true
	}
	for _, name := range []protoreflect.FullName{"natter.v1.Envelope", "natter.chat.v1.SendMessage"} {
		if _, err := files.FindDescriptorByName(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
