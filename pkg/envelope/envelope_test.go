package envelope_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/natter/natter/pkg/envelope"
)

func TestDecodeValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		frame string
		want  envelope.Envelope
	}{
		{
			name:  "type only",
			frame: `{"type":"chat.send"}`,
			want:  envelope.Envelope{Type: "chat.send"},
		},
		{
			name:  "design doc example",
			frame: `{"type": "chat.send", "meta": {"correlationId": "c1", "timestamp": 1730450000000}, "payload": {"room": "general", "text": "hi"}}`,
			want: envelope.Envelope{
				Type:    "chat.send",
				Meta:    envelope.Meta{CorrelationID: "c1", Timestamp: 1730450000000},
				Payload: json.RawMessage(`{"room": "general", "text": "hi"}`),
			},
		},
		{
			name:  "payload without meta",
			frame: `{"type":"a","payload":[1,2,3]}`,
			want:  envelope.Envelope{Type: "a", Payload: json.RawMessage(`[1,2,3]`)},
		},
		{
			name:  "payload first",
			frame: `{"payload":"x","type":"a"}`,
			want:  envelope.Envelope{Type: "a", Payload: json.RawMessage(`"x"`)},
		},
		{
			name:  "scalar payloads",
			frame: `{"type":"a","payload":-1.5e3}`,
			want:  envelope.Envelope{Type: "a", Payload: json.RawMessage(`-1.5e3`)},
		},
		{
			name:  "null payload is kept raw",
			frame: `{"type":"a","payload":null}`,
			want:  envelope.Envelope{Type: "a", Payload: json.RawMessage(`null`)},
		},
		{
			name:  "payload with braces in strings",
			frame: `{"type":"a","payload":{"s":"}]\"{[","n":[{}]}}`,
			want:  envelope.Envelope{Type: "a", Payload: json.RawMessage(`{"s":"}]\"{[","n":[{}]}`)},
		},
		{
			name:  "whitespace everywhere",
			frame: " \t\r\n{ \n\"type\" \t: \"a.b\" ,\r\n \"meta\" : { \"correlationId\" : \"x\" } , \"payload\" : true \n} \t",
			want: envelope.Envelope{
				Type:    "a.b",
				Meta:    envelope.Meta{CorrelationID: "x"},
				Payload: json.RawMessage(`true`),
			},
		},
		{
			name:  "escaped type string",
			frame: `{"type":"ch\u0061t.s\u0065nd"}`,
			want:  envelope.Envelope{Type: "chat.send"},
		},
		{
			name:  "escaped system type",
			frame: `{"type":"\u0024join"}`,
			want:  envelope.Envelope{Type: "$join"},
		},
		{
			name:  "system types",
			frame: `{"type":"$ws:rpc-progress"}`,
			want:  envelope.Envelope{Type: "$ws:rpc-progress"},
		},
		{
			name:  "heartbeat",
			frame: `{"type":"__heartbeat"}`,
			want:  envelope.Envelope{Type: "__heartbeat"},
		},
		{
			name:  "type at max length",
			frame: `{"type":"` + strings.Repeat("a", envelope.MaxTypeLen) + `"}`,
			want:  envelope.Envelope{Type: strings.Repeat("a", envelope.MaxTypeLen)},
		},
		{
			name:  "all known meta keys",
			frame: `{"type":"a","meta":{"correlationId":"c","timestamp":-5,"timeoutMs":1000,"room":"r1"}}`,
			want: envelope.Envelope{Type: "a", Meta: envelope.Meta{
				CorrelationID: "c", Timestamp: -5, TimeoutMs: 1000, Room: "r1",
			}},
		},
		{
			name:  "meta extra keys kept raw",
			frame: `{"type":"a","meta":{"trace":{"id": 7},"x":"y"}}`,
			want: envelope.Envelope{Type: "a", Meta: envelope.Meta{Extra: map[string]json.RawMessage{
				"trace": json.RawMessage(`{"id": 7}`),
				"x":     json.RawMessage(`"y"`),
			}}},
		},
		{
			name:  "empty meta",
			frame: `{"type":"a","meta":{}}`,
			want:  envelope.Envelope{Type: "a"},
		},
		{
			name:  "null meta",
			frame: `{"type":"a","meta":null}`,
			want:  envelope.Envelope{Type: "a"},
		},
		{
			name:  "null known meta values",
			frame: `{"type":"a","meta":{"timestamp":null,"timeoutMs":null,"room":null}}`,
			want:  envelope.Envelope{Type: "a"},
		},
		{
			name:  "correlationId at max length",
			frame: `{"type":"a","meta":{"correlationId":"` + strings.Repeat("c", envelope.MaxCorrelationIDLen) + `"}}`,
			want:  envelope.Envelope{Type: "a", Meta: envelope.Meta{CorrelationID: strings.Repeat("c", envelope.MaxCorrelationIDLen)}},
		},
		{
			name:  "escaped correlationId",
			frame: `{"type":"a","meta":{"correlationId":"\u00e9\"\n"}}`,
			want:  envelope.Envelope{Type: "a", Meta: envelope.Meta{CorrelationID: "é\"\n"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := envelope.Decode([]byte(tt.frame), 0)
			if err != nil {
				t.Fatalf("Decode(%s) = %v", tt.frame, err)
			}
			assertEnvelope(t, got, &tt.want)

			// DecodeInto must give the same result, and reset a used envelope.
			into := envelope.Envelope{
				Type:    "stale",
				Meta:    envelope.Meta{CorrelationID: "stale", Extra: map[string]json.RawMessage{"s": json.RawMessage(`1`)}},
				Payload: json.RawMessage(`"stale"`),
			}
			if err := envelope.DecodeInto(&into, []byte(tt.frame), 0); err != nil {
				t.Fatalf("DecodeInto(%s) = %v", tt.frame, err)
			}
			assertEnvelope(t, &into, &tt.want)
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name    string
		frame   string
		maxSize int
		want    error
	}{
		// Size.
		{name: "over explicit limit", frame: `{"type":"abcdef"}`, maxSize: 10, want: envelope.ErrTooLarge},
		{name: "over default limit", frame: `{"type":"a","payload":"` + long(envelope.DefaultMaxSize) + `"}`, want: envelope.ErrTooLarge},
		{name: "over limit but malformed", frame: `{{{{{{{{{{{{`, maxSize: 4, want: envelope.ErrTooLarge},

		// Not JSON.
		{name: "empty", frame: ``, want: envelope.ErrMalformed},
		{name: "whitespace only", frame: " \n\t", want: envelope.ErrMalformed},
		{name: "truncated", frame: `{"type":"a"`, want: envelope.ErrMalformed},
		{name: "trailing comma", frame: `{"type":"a",}`, want: envelope.ErrMalformed},
		{name: "single quotes", frame: `{'type':'a'}`, want: envelope.ErrMalformed},
		{name: "unquoted key", frame: `{type:"a"}`, want: envelope.ErrMalformed},
		{name: "two objects", frame: `{"type":"a"}{"type":"b"}`, want: envelope.ErrMalformed},
		{name: "trailing garbage", frame: `{"type":"a"} x`, want: envelope.ErrMalformed},
		{name: "NaN payload", frame: `{"type":"a","payload":NaN}`, want: envelope.ErrMalformed},
		{name: "raw control byte in string", frame: "{\"type\":\"a\x01\"}", want: envelope.ErrMalformed},
		{name: "byte order mark", frame: "\xef\xbb\xbf{\"type\":\"a\"}", want: envelope.ErrMalformed},

		// Not an object.
		{name: "array", frame: `[]`, want: envelope.ErrNotObject},
		{name: "array of envelope", frame: `[{"type":"a"}]`, want: envelope.ErrNotObject},
		{name: "string", frame: `"x"`, want: envelope.ErrNotObject},
		{name: "number", frame: `1`, want: envelope.ErrNotObject},
		{name: "null", frame: `null`, want: envelope.ErrNotObject},
		{name: "true", frame: ` true `, want: envelope.ErrNotObject},

		// Unknown top-level keys.
		{name: "unknown key", frame: `{"type":"a","extra":1}`, want: envelope.ErrUnknownField},
		{name: "unknown key first", frame: `{"x":1,"type":"a"}`, want: envelope.ErrUnknownField},
		{name: "Type", frame: `{"Type":"a"}`, want: envelope.ErrUnknownField},
		{name: "TYPE", frame: `{"TYPE":"a"}`, want: envelope.ErrUnknownField},
		{name: "Meta", frame: `{"type":"a","Meta":{}}`, want: envelope.ErrUnknownField},
		{name: "Payload", frame: `{"type":"a","Payload":1}`, want: envelope.ErrUnknownField},
		{name: "escaped key", frame: `{"typ\u0065":"a"}`, want: envelope.ErrUnknownField},
		{name: "key with space", frame: `{"type ":"a"}`, want: envelope.ErrUnknownField},
		{name: "empty key", frame: `{"":"a"}`, want: envelope.ErrUnknownField},
		{name: "long unknown key", frame: `{"` + long(1000) + `":1}`, want: envelope.ErrUnknownField},

		// Duplicates.
		{name: "duplicate type", frame: `{"type":"a","type":"b"}`, want: envelope.ErrDuplicate},
		{name: "duplicate type same value", frame: `{"type":"a","type":"a"}`, want: envelope.ErrDuplicate},
		{name: "duplicate type bad second", frame: `{"type":"a","type":1}`, want: envelope.ErrDuplicate},
		{name: "duplicate meta", frame: `{"type":"a","meta":{},"meta":{}}`, want: envelope.ErrDuplicate},
		{name: "duplicate payload", frame: `{"type":"a","payload":1,"payload":2}`, want: envelope.ErrDuplicate},
		{name: "duplicate payload null", frame: `{"payload":null,"type":"a","payload":null}`, want: envelope.ErrDuplicate},

		// Missing type.
		{name: "empty object", frame: `{}`, want: envelope.ErrMissingType},
		{name: "payload only", frame: `{"payload":{"type":"a"}}`, want: envelope.ErrMissingType},
		{name: "meta only", frame: `{"meta":{"type":"a"}}`, want: envelope.ErrMissingType},
		{name: "empty type", frame: `{"type":""}`, want: envelope.ErrMissingType},

		// Invalid type.
		{name: "type null", frame: `{"type":null}`, want: envelope.ErrInvalidType},
		{name: "type number", frame: `{"type":1}`, want: envelope.ErrInvalidType},
		{name: "type bool", frame: `{"type":true}`, want: envelope.ErrInvalidType},
		{name: "type object", frame: `{"type":{"a":1}}`, want: envelope.ErrInvalidType},
		{name: "type array", frame: `{"type":["a"]}`, want: envelope.ErrInvalidType},
		{name: "type star", frame: `{"type":"a.*"}`, want: envelope.ErrInvalidType},
		{name: "type gt", frame: `{"type":"a.>"}`, want: envelope.ErrInvalidType},
		{name: "type bare star", frame: `{"type":"*"}`, want: envelope.ErrInvalidType},
		{name: "type bare gt", frame: `{"type":">"}`, want: envelope.ErrInvalidType},
		{name: "type empty token", frame: `{"type":"a..b"}`, want: envelope.ErrInvalidType},
		{name: "type leading dot", frame: `{"type":".a"}`, want: envelope.ErrInvalidType},
		{name: "type trailing dot", frame: `{"type":"a."}`, want: envelope.ErrInvalidType},
		{name: "type only dot", frame: `{"type":"."}`, want: envelope.ErrInvalidType},
		{name: "type space", frame: `{"type":"a b"}`, want: envelope.ErrInvalidType},
		{name: "type tab escape", frame: `{"type":"a\tb"}`, want: envelope.ErrInvalidType},
		{name: "type escaped NUL", frame: `{"type":"a\u0000"}`, want: envelope.ErrInvalidType},
		{name: "type escaped star", frame: `{"type":"a.\u002a"}`, want: envelope.ErrInvalidType},
		{name: "type escaped dot", frame: `{"type":"a\u002e\u002eb"}`, want: envelope.ErrInvalidType},
		{name: "type nbsp", frame: `{"type":"a\u00a0b"}`, want: envelope.ErrInvalidType},
		{name: "type non-ascii", frame: `{"type":"caf` + "\u00e9" + `"}`, want: envelope.ErrInvalidType},
		{name: "type too long", frame: `{"type":"` + long(envelope.MaxTypeLen+1) + `"}`, want: envelope.ErrInvalidType},
		{name: "type lone dollar", frame: `{"type":"$"}`, want: envelope.ErrInvalidType},
		{name: "type dollar star", frame: `{"type":"$a.*"}`, want: envelope.ErrInvalidType},
		{name: "type double underscore empty token", frame: `{"type":"__a..b"}`, want: envelope.ErrInvalidType},

		// Invalid meta.
		{name: "meta array", frame: `{"type":"a","meta":[]}`, want: envelope.ErrInvalidMeta},
		{name: "meta string", frame: `{"type":"a","meta":"x"}`, want: envelope.ErrInvalidMeta},
		{name: "meta number", frame: `{"type":"a","meta":1}`, want: envelope.ErrInvalidMeta},
		{name: "meta bool", frame: `{"type":"a","meta":false}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId number", frame: `{"type":"a","meta":{"correlationId":1}}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId object", frame: `{"type":"a","meta":{"correlationId":{}}}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId null", frame: `{"type":"a","meta":{"correlationId":null}}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId empty", frame: `{"type":"a","meta":{"correlationId":""}}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId too long", frame: `{"type":"a","meta":{"correlationId":"` + long(envelope.MaxCorrelationIDLen+1) + `"}}`, want: envelope.ErrInvalidMeta},
		{name: "correlationId too long in bytes", frame: `{"type":"a","meta":{"correlationId":"` + strings.Repeat("\u00e9", envelope.MaxCorrelationIDLen/2+1) + `"}}`, want: envelope.ErrInvalidMeta},
		{name: "timeoutMs negative", frame: `{"type":"a","meta":{"timeoutMs":-1}}`, want: envelope.ErrInvalidMeta},
		{name: "timeoutMs fraction", frame: `{"type":"a","meta":{"timeoutMs":1.5}}`, want: envelope.ErrInvalidMeta},
		{name: "timeoutMs string", frame: `{"type":"a","meta":{"timeoutMs":"100"}}`, want: envelope.ErrInvalidMeta},
		{name: "timeoutMs overflow", frame: `{"type":"a","meta":{"timeoutMs":99999999999999999999}}`, want: envelope.ErrInvalidMeta},
		{name: "timestamp string", frame: `{"type":"a","meta":{"timestamp":"now"}}`, want: envelope.ErrInvalidMeta},
		{name: "timestamp exponent", frame: `{"type":"a","meta":{"timestamp":1e3}}`, want: envelope.ErrInvalidMeta},
		{name: "room number", frame: `{"type":"a","meta":{"room":1}}`, want: envelope.ErrInvalidMeta},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := envelope.Decode([]byte(tt.frame), tt.maxSize)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode(%.80s) error = %v, want %v", tt.frame, err, tt.want)
			}
			if got != nil {
				t.Errorf("Decode returned %+v with an error", got)
			}
			var e envelope.Envelope
			if err := envelope.DecodeInto(&e, []byte(tt.frame), tt.maxSize); !errors.Is(err, tt.want) {
				t.Errorf("DecodeInto error = %v, want %v", err, tt.want)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error message is %d bytes; it must not echo unbounded input", len(err.Error()))
			}
		})
	}
}

// TestDecodeSentinelsDistinct checks that each rejection matches only its own
// sentinel, so callers can switch on them.
func TestDecodeSentinelsDistinct(t *testing.T) {
	t.Parallel()
	sentinels := []error{
		envelope.ErrTooLarge, envelope.ErrMalformed, envelope.ErrNotObject, envelope.ErrUnknownField,
		envelope.ErrDuplicate, envelope.ErrMissingType, envelope.ErrInvalidType, envelope.ErrInvalidMeta,
	}
	frames := map[error]string{
		envelope.ErrMalformed:    `{`,
		envelope.ErrNotObject:    `[]`,
		envelope.ErrUnknownField: `{"x":1}`,
		envelope.ErrDuplicate:    `{"type":"a","type":"a"}`,
		envelope.ErrMissingType:  `{}`,
		envelope.ErrInvalidType:  `{"type":"a.*"}`,
		envelope.ErrInvalidMeta:  `{"type":"a","meta":[]}`,
	}
	for want, frame := range frames {
		_, err := envelope.Decode([]byte(frame), 0)
		for _, s := range sentinels {
			if got := errors.Is(err, s); got != (s == want) {
				t.Errorf("Decode(%s) = %v: errors.Is(err, %v) = %v", frame, err, s, got)
			}
		}
	}
}

func TestDecodeMaxSize(t *testing.T) {
	t.Parallel()
	frame := []byte(`{"type":"a"}`)
	tests := []struct {
		name    string
		maxSize int
		want    error
	}{
		{name: "exact", maxSize: len(frame), want: nil},
		{name: "one short", maxSize: len(frame) - 1, want: envelope.ErrTooLarge},
		{name: "zero means default", maxSize: 0, want: nil},
		{name: "negative means default", maxSize: -1, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := envelope.Decode(frame, tt.maxSize); !errors.Is(err, tt.want) {
				t.Fatalf("Decode with maxSize %d = %v, want %v", tt.maxSize, err, tt.want)
			}
		})
	}

	// The default applies to frames exactly at and just over DefaultMaxSize.
	pad := envelope.DefaultMaxSize - len(`{"type":"a","payload":""}`)
	at := []byte(`{"type":"a","payload":"` + strings.Repeat("x", pad) + `"}`)
	if _, err := envelope.Decode(at, 0); err != nil {
		t.Errorf("Decode of a %d-byte frame = %v", len(at), err)
	}
	over := []byte(`{"type":"a","payload":"` + strings.Repeat("x", pad+1) + `"}`)
	if _, err := envelope.Decode(over, 0); !errors.Is(err, envelope.ErrTooLarge) {
		t.Errorf("Decode of a %d-byte frame = %v, want ErrTooLarge", len(over), err)
	}
}

func TestDecodePayloadAliasesInput(t *testing.T) {
	t.Parallel()
	// The doc promises the payload aliases data: the edge forwards it
	// without a copy, so callers must not reuse the buffer while it lives.
	data := []byte(`{"type":"a","payload":[1]}`)
	e, err := envelope.Decode(data, 0)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-3] = '2'
	if string(e.Payload) != `[2]` {
		t.Errorf("payload %s does not alias the input", e.Payload)
	}
}

func TestEncode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   envelope.Envelope
		want string
	}{
		{
			name: "type only",
			in:   envelope.Envelope{Type: "a"},
			want: `{"type":"a"}`,
		},
		{
			name: "zero meta omitted",
			in:   envelope.Envelope{Type: "a", Meta: envelope.Meta{Extra: map[string]json.RawMessage{}}},
			want: `{"type":"a"}`,
		},
		{
			name: "known meta keys in stable order, then sorted extra",
			in: envelope.Envelope{
				Type: "chat.send",
				Meta: envelope.Meta{
					Room: "r", TimeoutMs: 5, Timestamp: 7, CorrelationID: "c",
					Extra: map[string]json.RawMessage{"z": json.RawMessage(`1`), "b": json.RawMessage(`"x"`)},
				},
				Payload: json.RawMessage(`{"k":1}`),
			},
			want: `{"type":"chat.send","meta":{"correlationId":"c","timestamp":7,"timeoutMs":5,"room":"r","b":"x","z":1},"payload":{"k":1}}`,
		},
		{
			name: "typed meta field wins over Extra",
			in: envelope.Envelope{Type: "a", Meta: envelope.Meta{
				Room:  "typed",
				Extra: map[string]json.RawMessage{"room": json.RawMessage(`"extra"`), "correlationId": json.RawMessage(`"extra"`)},
			}},
			want: `{"type":"a","meta":{"room":"typed"}}`,
		},
		{
			name: "strings are escaped",
			in:   envelope.Envelope{Type: "a", Meta: envelope.Meta{CorrelationID: "q\"\\\n", Room: "é"}},
			want: `{"type":"a","meta":{"correlationId":"q\"\\\n","room":"é"}}`,
		},
		{
			name: "payload is written as is",
			in:   envelope.Envelope{Type: "a", Payload: json.RawMessage(`{ "k" : [1, 2] }`)},
			want: `{"type":"a","payload":{ "k" : [1, 2] }}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := envelope.Encode(&tt.in)
			if err != nil {
				t.Fatalf("Encode = %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("Encode =\n %s\nwant\n %s", got, tt.want)
			}
			// MarshalJSON goes through Encode; json.Marshal then compacts it.
			viaJSON, err := json.Marshal(tt.in)
			if err != nil {
				t.Fatalf("json.Marshal = %v", err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, got); err != nil {
				t.Fatalf("Encode wrote invalid JSON %s: %v", got, err)
			}
			if !bytes.Equal(viaJSON, compact.Bytes()) {
				t.Errorf("json.Marshal =\n %s\nwant\n %s", viaJSON, compact.Bytes())
			}
		})
	}
}

func TestEncodeRejectsInvalidJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   envelope.Envelope
	}{
		{name: "payload", in: envelope.Envelope{Type: "a", Payload: json.RawMessage(`{`)}},
		{name: "payload two values", in: envelope.Envelope{Type: "a", Payload: json.RawMessage(`1 2`)}},
		{name: "meta extra value", in: envelope.Envelope{Type: "a", Meta: envelope.Meta{
			Extra: map[string]json.RawMessage{"x": json.RawMessage(`{`)},
		}}},
		{name: "meta extra empty value", in: envelope.Envelope{Type: "a", Meta: envelope.Meta{
			Extra: map[string]json.RawMessage{"x": nil},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := envelope.Encode(&tt.in)
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("Encode = %s, %v; want ErrMalformed", b, err)
			}
		})
	}
}

func TestMetaExtraRoundTrip(t *testing.T) {
	t.Parallel()
	in := envelope.Envelope{
		Type: "a",
		Meta: envelope.Meta{
			CorrelationID: "c1",
			Extra: map[string]json.RawMessage{
				"trace":         json.RawMessage(`{"id":"abc","sampled":true}`),
				"n":             json.RawMessage(`42`),
				"list":          json.RawMessage(`[1,"two",null]`),
				"":              json.RawMessage(`""`),
				"quote\"":       json.RawMessage(`1`),
				"html<&>":       json.RawMessage(`2`),
				"bell\a":        json.RawMessage(`3`),
				"del\x7f":       json.RawMessage(`4`),
				"nbsp\u00a0":    json.RawMessage(`5`),
				"tag\U000E0001": json.RawMessage(`6`),
				"emoji😀":        json.RawMessage(`7`),
			},
		},
	}
	b, err := envelope.Encode(&in)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("Encode produced invalid JSON: %s", b)
	}
	out, err := envelope.Decode(b, 0)
	if err != nil {
		t.Fatalf("Decode(%s) = %v", b, err)
	}
	assertEnvelope(t, out, &in)
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	frames := []string{
		`{"type":"a"}`,
		`{"type": "chat.send", "meta": {"correlationId": "c1", "timestamp": 1730450000000}, "payload": {"room": "general", "text": "hi"}}`,
		` { "payload" : [ 1 , 2 ] , "type" : "x.y" } `,
		`{"type":"a","meta":{"timestamp":0,"timeoutMs":0,"room":""}}`,
		`{"type":"a","meta":{"correlationId":"<&>\u2028\u0001","room":"\ud83d\ude00","x":{"y":[]}}}`,
		`{"type":"a","meta":{"\u0007":1,"\u007f":2,"\udb40\udc01":3}}`,
		`{"type":"a","meta":null,"payload":null}`,
		`{"type":"$ws:abort","meta":{"correlationId":"c"}}`,
		`{"type":"__heartbeat"}`,
		`{"type":"a","payload":"\u00e9\n"}`,
	}
	for i, frame := range frames {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			first, err := envelope.Decode([]byte(frame), 0)
			if err != nil {
				t.Fatalf("Decode(%s) = %v", frame, err)
			}
			b, err := envelope.Encode(first)
			if err != nil {
				t.Fatalf("Encode = %v", err)
			}
			second, err := envelope.Decode(b, 0)
			if err != nil {
				t.Fatalf("Decode(Encode(%s)) = Decode(%s) = %v", frame, b, err)
			}
			assertEnvelope(t, second, first)
			// Encoding is a fixed point after one round.
			b2, err := envelope.Encode(second)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, b2) {
				t.Errorf("Encode is not stable:\n %s\n %s", b, b2)
			}
		})
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    any
		want string
	}{
		{name: "nil payload", v: nil, want: `{"type":"a"}`},
		{name: "struct", v: struct {
			Text string `json:"text"`
		}{"hi"}, want: `{"type":"a","payload":{"text":"hi"}}`},
		{name: "raw message is not re-encoded", v: json.RawMessage(`[1, 2]`), want: `{"type":"a","payload":[1, 2]}`},
		{name: "string", v: "s", want: `{"type":"a","payload":"s"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := envelope.New("a", tt.v)
			if err != nil {
				t.Fatal(err)
			}
			b, err := envelope.Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("got %s, want %s", b, tt.want)
			}
		})
	}

	if _, err := envelope.New("a", func() {}); err == nil {
		t.Error("New with an unencodable payload succeeded")
	}
}

func TestCodeOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want envelope.Code
	}{
		{name: "nil", err: nil, want: ""},
		{name: "too large", err: envelope.ErrTooLarge, want: envelope.CodeResourceExhausted},
		{name: "wrapped too large", err: fmt.Errorf("read: %w", envelope.ErrTooLarge), want: envelope.CodeResourceExhausted},
		{name: "malformed", err: envelope.ErrMalformed, want: envelope.CodeInvalidArgument},
		{name: "not object", err: envelope.ErrNotObject, want: envelope.CodeInvalidArgument},
		{name: "unknown field", err: envelope.ErrUnknownField, want: envelope.CodeInvalidArgument},
		{name: "duplicate", err: envelope.ErrDuplicate, want: envelope.CodeInvalidArgument},
		{name: "missing type", err: envelope.ErrMissingType, want: envelope.CodeInvalidArgument},
		{name: "invalid type", err: envelope.ErrInvalidType, want: envelope.CodeInvalidArgument},
		{name: "invalid meta", err: envelope.ErrInvalidMeta, want: envelope.CodeInvalidArgument},
		{name: "invalid id", err: envelope.ErrInvalidID, want: envelope.CodeInvalidArgument},
		{name: "invalid prefix", err: envelope.ErrInvalidPrefix, want: envelope.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := envelope.CodeOf(tt.err); got != tt.want {
				t.Errorf("CodeOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}

	// Errors as Decode returns them map the same way.
	for frame, want := range map[string]envelope.Code{
		`{"type":"a"}`:                 "",
		`{"type":"a.*"}`:               envelope.CodeInvalidArgument,
		`{"type":"a","meta":[]}`:       envelope.CodeInvalidArgument,
		`{"type":"a","payload":[{}]}`:  envelope.CodeResourceExhausted,
		`{"type":"a","payload":[{}]`:   envelope.CodeResourceExhausted,
		`{"type":"a","Payload":[{}]} `: envelope.CodeResourceExhausted,
	} {
		_, err := envelope.Decode([]byte(frame), 24)
		if got := envelope.CodeOf(err); got != want {
			t.Errorf("CodeOf(Decode(%s)) = %q, want %q", frame, got, want)
		}
	}
}

func TestCloseCodeReconnect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code envelope.CloseCode
		want bool
	}{
		{envelope.CloseNormal, false},
		{1001, true}, // going away
		{envelope.CloseProtocol, false},
		{1003, false}, // unsupported data
		{1006, true},  // abnormal closure
		{envelope.CloseInvalidUTF8, false},
		{1008, false}, // policy violation
		{envelope.CloseTooLarge, false},
		{1011, true}, // internal server error
		{1012, true}, // service restart
		{1013, true}, // try again later
		{envelope.CloseShutdown, true},
		{envelope.CloseSlowConsumer, true},
		{envelope.CloseIdle, true},
		{envelope.CloseServer, true},
		{envelope.CloseInternal, true},
		{4099, true},
		{envelope.CloseUnauthorized, false},
		{envelope.CloseForbidden, false},
		{envelope.CloseKicked, false},
		{4199, false},
		{4200, true},
		{0, true},
		{65535, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(uint16(tt.code)), func(t *testing.T) {
			if got := tt.code.Reconnect(); got != tt.want {
				t.Errorf("CloseCode(%d).Reconnect() = %v, want %v", tt.code, got, tt.want)
			}
		})
	}
}

func TestErrorFrame(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		correlationID string
		code          envelope.Code
		message       string
		wantType      string
	}{
		{name: "error", code: envelope.CodeInvalidArgument, message: "bad frame", wantType: envelope.TypeError},
		{name: "rpc error", correlationID: "c1", code: envelope.CodeUnavailable, message: "no worker", wantType: envelope.TypeRPCError},
		{name: "escaped message", code: envelope.CodeInternal, message: "<\"x\">\n\u2028", wantType: envelope.TypeError},
		{name: "odd correlation id", correlationID: "\"é\x00", code: envelope.CodeNotFound, message: "m", wantType: envelope.TypeRPCError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := envelope.ErrorFrame(tt.correlationID, tt.code, tt.message)
			e, err := envelope.Decode(b, 0)
			if err != nil {
				t.Fatalf("Decode(%s) = %v", b, err)
			}
			if e.Type != tt.wantType {
				t.Errorf("type = %q, want %q", e.Type, tt.wantType)
			}
			if e.Meta.CorrelationID != tt.correlationID {
				t.Errorf("correlationId = %q, want %q", e.Meta.CorrelationID, tt.correlationID)
			}
			if tt.correlationID == "" && !e.Meta.IsZero() {
				t.Errorf("ERROR frame carries meta %+v", e.Meta)
			}
			var p envelope.ErrorPayload
			if err := json.Unmarshal(e.Payload, &p); err != nil {
				t.Fatalf("payload %s: %v", e.Payload, err)
			}
			want := envelope.ErrorPayload{Code: tt.code, Message: tt.message}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("payload = %+v, want %+v", p, want)
			}
			// Optional fields are omitted when unset.
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(e.Payload, &raw); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"details", "retryAfterMs"} {
				if _, ok := raw[k]; ok {
					t.Errorf("payload has %q: %s", k, e.Payload)
				}
			}
		})
	}
}

func TestEncodeError(t *testing.T) {
	t.Parallel()
	p := &envelope.ErrorPayload{
		Code:         envelope.CodeResourceExhausted,
		Message:      "slow down",
		Details:      json.RawMessage(`{"limit":10}`),
		RetryAfterMs: 1500,
	}
	b := envelope.EncodeError("c9", p)
	want := `{"type":"RPC_ERROR","meta":{"correlationId":"c9"},"payload":{"code":"RESOURCE_EXHAUSTED","message":"slow down","details":{"limit":10},"retryAfterMs":1500}}`
	if string(b) != want {
		t.Errorf("EncodeError =\n %s\nwant\n %s", b, want)
	}
	if got := p.Error(); got != "RESOURCE_EXHAUSTED: slow down" {
		t.Errorf("Error() = %q", got)
	}
}

func assertEnvelope(t *testing.T, got, want *envelope.Envelope) {
	t.Helper()
	if got.Type != want.Type {
		t.Errorf("Type = %q, want %q", got.Type, want.Type)
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("Payload = %s, want %s", got.Payload, want.Payload)
	}
	if !metaEqual(got.Meta, want.Meta) {
		t.Errorf("Meta = %+v, want %+v", got.Meta, want.Meta)
	}
}

// metaEqual compares metas, treating a nil and an empty Extra as equal.
func metaEqual(a, b envelope.Meta) bool {
	if len(a.Extra) == 0 && len(b.Extra) == 0 {
		a.Extra, b.Extra = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

func TestCorrelationIDOfBrokenFrames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, frame, want string
	}{
		{"bad later meta key", `{"type":"x","meta":{"correlationId":"c1","timeoutMs":-1}}`, "c1"},
		{"unknown key after meta", `{"meta":{"correlationId":"c2"},"extra":1}`, "c2"},
		{"unknown key before meta", `{"extra":1,"meta":{"correlationId":"c3"}}`, "c3"},
		{"bad type", `{"type":"a.*","meta":{"correlationId":"c4"}}`, "c4"},
		{"not a string", `{"type":"x","meta":{"correlationId":5}}`, ""},
		{"malformed JSON", `{"type":"x","meta":{"correlationId":"c5"}`, ""},
		{"no meta", `{"type":"x"}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := envelope.CorrelationID([]byte(tc.frame)); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	// The decoder's own verdict does not depend on map order.
	frame := []byte(`{"type":"x","meta":{"correlationId":"c1","timeoutMs":-1,"timestamp":"bad"}}`)
	_, first := envelope.Decode(frame, 0)
	for range 50 {
		if _, err := envelope.Decode(frame, 0); err.Error() != first.Error() {
			t.Fatalf("error changed between runs: %v vs %v", err, first)
		}
	}
}
