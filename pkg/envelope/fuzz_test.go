package envelope_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/natter/natter/pkg/envelope"
)

var decodeSentinels = []error{
	envelope.ErrTooLarge, envelope.ErrMalformed, envelope.ErrNotObject, envelope.ErrUnknownField,
	envelope.ErrDuplicate, envelope.ErrMissingType, envelope.ErrInvalidType, envelope.ErrInvalidMeta,
}

func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"type":"chat.send"}`,
		`{"type": "chat.send", "meta": {"correlationId": "c1", "timestamp": 1730450000000}, "payload": {"room": "general", "text": "hi"}}`,
		`{"type":"a","meta":{"correlationId":"c","timeoutMs":5,"room":"r","x":{"y":[1,"}"]}},"payload":null}`,
		`{"type":"a","meta":{"\u0007":1,"\u007f":2,"\udb40\udc01":3,"<&>":4,"":5}}`,
		`{"type":"ch\u0061t","payload":"\u2028"}`,
		`{"type":"$join","payload":{"room":"r"}}`,
		`{"type":"__heartbeat"}`,
		` {"payload":[{"a":"]"}] , "type" : "x" } `,
		`{"type":"a.*"}`, `{"type":"a.>"}`, `{"type":"a..b"}`, `{"type":".a"}`, `{"type":"a."}`,
		`{"type":"a b"}`, `{"type":""}`, `{"type":1}`, `{"type":null}`, `{"type":"$nope*"}`,
		`{"Type":"a"}`, `{"type":"a","type":"a"}`, `{"meta":{},"meta":{},"type":"a"}`, `{}`,
		`{"type":"a","meta":[]}`, `{"type":"a","meta":{"correlationId":""}}`, `{"type":"a","meta":{"timeoutMs":-1}}`,
		`{"type":"a","meta":{"correlationId":"` + strings.Repeat("c", 129) + `"}}`,
		`[]`, `"x"`, `1`, `null`, ``, `{`, "\x00", "{\"type\":\"a\xff\"}", "{\"type\":\"a\",\"payload\":\"\xff\"}",
		`{"type":"a","payload":"\ud800"}`, `{"type":"a","meta":{"room":"\ud800"}}`,
		`{"type":"` + strings.Repeat("a", 200) + `"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := envelope.Decode(data, 0)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned %+v with error %v", e, err)
			}
			if !matchesOne(err, decodeSentinels) {
				t.Fatalf("Decode error %v matches no sentinel", err)
			}
			return
		}
		if err := envelope.ValidateType(e.Type); err != nil {
			t.Fatalf("decoded type %q fails ValidateType: %v", e.Type, err)
		}
		if n := len(e.Meta.CorrelationID); n > envelope.MaxCorrelationIDLen {
			t.Fatalf("decoded correlationId of %d bytes", n)
		}
		if e.Meta.TimeoutMs < 0 {
			t.Fatalf("decoded negative timeoutMs %d", e.Meta.TimeoutMs)
		}

		enc, err := envelope.Encode(e)
		if err != nil {
			t.Fatalf("Encode(Decode(%q)) = %v", data, err)
		}
		// Escaping may make the encoding longer than the input, so lift the limit.
		again, err := envelope.Decode(enc, len(enc))
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = Decode(%q) = %v", data, enc, err)
		}
		if again.Type != e.Type {
			t.Fatalf("type changed: %q -> %q", e.Type, again.Type)
		}
		if !bytes.Equal(again.Payload, e.Payload) {
			t.Fatalf("payload changed: %q -> %q", e.Payload, again.Payload)
		}
		if !metaEqual(again.Meta, e.Meta) {
			t.Fatalf("meta changed: %+v -> %+v", e.Meta, again.Meta)
		}
		enc2, err := envelope.Encode(again)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("Encode not stable: %q -> %q, %v", enc, enc2, err)
		}
	})
}

func matchesOne(err error, sentinels []error) bool {
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	return n == 1
}

func FuzzSubject(f *testing.F) {
	seeds := []string{
		"general", "chat.send", "a-b_c", "natter", "acme.rt",
		"a.*", "a.>", "*", ">", "a..b", ".a", "a.", ".", "",
		"$nope", "$join", "$ws:abort", "__heartbeat", "__a.b", "_x",
		"\x00", "a b", "a\tb", "a\nb", "a\rb", "\v", "\f", "a\x7f", "\x1f",
		"\u00a0", "a\u0085b", "a\u2028b", "a\u3000", "\ufeff", "\xff", "caf\u00e9",
		strings.Repeat("a", envelope.MaxIDLen), strings.Repeat("a", envelope.MaxIDLen+1),
		strings.Repeat("a.", 64), strings.Repeat("ab.", 42) + "c", strings.Repeat("x", 4096),
		// Connection ids: <edge>.<n>.
		"Cq7pT1XhQ6mQ3bZ9vN0aK2.1", "edge-1.2s9x", "e.*", "*.n", "e.>", "e..n", "e.n.x", "e.", ".n",
		"e n.1", "e.n\n", "e.\u00a0", strings.Repeat("e", envelope.MaxIDLen) + "." + strings.Repeat("n", envelope.MaxIDLen),
		strings.Repeat("e", envelope.MaxIDLen+1) + ".n", "e." + strings.Repeat("n", envelope.MaxIDLen+1),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	custom, err := envelope.NewNamespace("acme.rt")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		namespaces := []envelope.Namespace{envelope.DefaultNamespace, custom, {}}
		if ns, err := envelope.NewNamespace(s); err == nil {
			if ns.Prefix() != s {
				t.Fatalf("NewNamespace(%q).Prefix() = %q", s, ns.Prefix())
			}
			checkSubject(t, "NewNamespace", envelope.Subject(s))
			namespaces = append(namespaces, ns)
		} else if !errors.Is(err, envelope.ErrInvalidPrefix) {
			t.Fatalf("NewNamespace(%q) = %v, want ErrInvalidPrefix", s, err)
		}

		idOK := envelope.ValidateID(s) == nil
		if idOK {
			checkSubject(t, "ValidateID", envelope.Subject(s))
			if strings.Contains(s, ".") {
				t.Fatalf("ValidateID accepted %q, which is more than one token", s)
			}
		}
		connOK := envelope.ValidateConnID(s) == nil
		if connOK {
			checkSubject(t, "ValidateConnID", envelope.Subject(s))
			edge, n, ok := strings.Cut(s, ".")
			if !ok || strings.Contains(n, ".") {
				t.Fatalf("ValidateConnID accepted %q, which is not two tokens", s)
			}
			if envelope.ValidateID(edge) != nil || envelope.ValidateID(n) != nil {
				t.Fatalf("ValidateConnID accepted %q, whose tokens ValidateID rejects", s)
			}
			if len(s) > envelope.MaxConnIDLen {
				t.Fatalf("ValidateConnID accepted %d bytes", len(s))
			}
		} else if err := envelope.ValidateConnID(s); !errors.Is(err, envelope.ErrInvalidID) {
			t.Fatalf("ValidateConnID(%q) = %v, want ErrInvalidID", s, err)
		}
		if idOK && connOK {
			t.Fatalf("%q is both a one-token id and a connection id", s)
		}
		// Any edge id and any valid second token make a connection id.
		if idOK && envelope.ValidateConnID(s+".n") != nil || idOK && envelope.ValidateConnID("e."+s) != nil {
			t.Fatalf("ValidateConnID refused a connection id made of %q", s)
		}

		for _, ns := range namespaces {
			if subj, err := ns.In(s); err == nil {
				checkSubject(t, "In", subj)
				if envelope.IsSystemType(s) {
					t.Fatalf("In(%q) made a subject of a system type: %q", s, subj)
				}
				if want := ns.Prefix() + ".in." + s; subj.String() != want {
					t.Fatalf("In(%q) = %q, want %q", s, subj, want)
				}
			} else if subj != "" {
				t.Fatalf("In(%q) returned %q with error %v", s, subj, err)
			}

			builders := []struct {
				name   string
				mid    string
				build  func(string) (envelope.Subject, error)
				conn   bool // takes a connection id: two tokens
				parsed bool // Parse reads its subjects
			}{
				{"Conn", ".out.conn.", ns.Conn, true, true},
				{"User", ".out.user.", ns.User, false, true},
				{"Room", ".out.room.", ns.Room, false, true},
				{"Ctl", ".ctl.conn.", ns.Ctl, true, true},
				{"Event", ".evt.", ns.Event, false, false},
				{"DurableRoom", ".durable.room.", ns.DurableRoom, false, false},
				{"DurableLive", ".durable.live.", ns.DurableLive, false, false},
			}
			for _, b := range builders {
				subj, err := b.build(s)
				if err != nil {
					if subj != "" {
						t.Fatalf("%s(%q) returned %q with error %v", b.name, s, subj, err)
					}
					if b.conn && connOK && ns.Prefix() != "" {
						t.Fatalf("%s(%q) refused a valid connection id: %v", b.name, s, err)
					}
					continue
				}
				if b.conn && !connOK {
					t.Fatalf("%s(%q) accepted an id ValidateConnID rejects", b.name, s)
				}
				if !b.conn && !idOK {
					t.Fatalf("%s(%q) accepted an id ValidateID rejects", b.name, s)
				}
				checkSubject(t, b.name, subj)
				id, ok := strings.CutPrefix(subj.String(), ns.Prefix()+b.mid)
				if !ok || id != s {
					t.Fatalf("%s(%q) = %q: the id is not its end", b.name, s, subj)
				}
				tokens := 1
				if b.conn {
					tokens = 2
				}
				if strings.Count(subj.String(), ".") != strings.Count(ns.Prefix()+b.mid, ".")+tokens-1 {
					t.Fatalf("%s(%q) = %q: the id is not %d token(s)", b.name, s, subj, tokens)
				}
				if b.parsed {
					kind, got := ns.Parse(subj.String())
					if kind == envelope.KindUnknown || got != s {
						t.Fatalf("Parse(%s(%q)) = %v, %q", b.name, s, kind, got)
					}
				}
			}

			// The per-edge wildcards take one edge token and end in '*'.
			for _, w := range []struct {
				name  string
				mid   string
				build func(string) (envelope.Subject, error)
			}{{"ConnAll", ".out.conn.", ns.ConnAll}, {"CtlAll", ".ctl.conn.", ns.CtlAll}} {
				subj, err := w.build(s)
				if err != nil {
					if subj != "" {
						t.Fatalf("%s(%q) returned %q with error %v", w.name, s, subj, err)
					}
					continue
				}
				if !idOK {
					t.Fatalf("%s(%q) accepted an edge id ValidateID rejects", w.name, s)
				}
				if want := ns.Prefix() + w.mid + s + ".*"; subj.String() != want {
					t.Fatalf("%s(%q) = %q, want %q", w.name, s, subj, want)
				}
				checkSubject(t, w.name, envelope.Subject(strings.TrimSuffix(subj.String(), ".*")))
			}
		}
	})
}

// checkSubject fails unless s is a literal NATS subject with no wildcard, no
// whitespace or control byte and no empty token.
func checkSubject(t *testing.T, from string, s envelope.Subject) {
	t.Helper()
	str := s.String()
	if str == "" {
		t.Fatalf("%s: empty subject", from)
	}
	for i := 0; i < len(str); i++ {
		switch c := str[i]; {
		case c == '*' || c == '>':
			t.Fatalf("%s: subject %q has a wildcard", from, str)
		case c < 0x21 || c == 0x7f:
			t.Fatalf("%s: subject %q has byte %#x", from, str, c)
		}
	}
	for _, r := range str {
		if unicode.IsSpace(r) || r == utf8.RuneError {
			t.Fatalf("%s: subject %q has rune %U", from, str, r)
		}
	}
	for _, tok := range strings.Split(str, ".") {
		if tok == "" {
			t.Fatalf("%s: subject %q has an empty token", from, str)
		}
	}
}
