package envelope_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/natter/natter/pkg/envelope"
)

func TestValidateType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		typ  string
		want error
	}{
		{name: "one token", typ: "chat", want: nil},
		{name: "dotted", typ: "chat.send", want: nil},
		{name: "all token bytes", typ: "azAZ09_-.x", want: nil},
		{name: "digits", typ: "1.2.3", want: nil},
		{name: "dash and underscore tokens", typ: "-._", want: nil},
		{name: "max length", typ: strings.Repeat("a", envelope.MaxTypeLen), want: nil},
		{name: "max length dotted", typ: strings.Repeat("a.", envelope.MaxTypeLen/2-1) + "ab", want: nil},
		{name: "system join", typ: envelope.TypeJoin, want: nil},
		{name: "system with colon", typ: "$ws:rpc-progress", want: nil},
		{name: "system with dots", typ: "$a.b", want: nil},
		{name: "heartbeat", typ: envelope.TypeHeartbeat, want: nil},
		{name: "heartbeat ack", typ: envelope.TypeHeartbeatAck, want: nil},
		{name: "double underscore dotted", typ: "__a.b", want: nil},
		{name: "single underscore", typ: "_a", want: nil},

		{name: "empty", typ: "", want: envelope.ErrMissingType},
		{name: "too long", typ: strings.Repeat("a", envelope.MaxTypeLen+1), want: envelope.ErrInvalidType},
		{name: "system too long", typ: "$" + strings.Repeat("a", envelope.MaxTypeLen), want: envelope.ErrInvalidType},
		{name: "star token", typ: "a.*", want: envelope.ErrInvalidType},
		{name: "gt token", typ: "a.>", want: envelope.ErrInvalidType},
		{name: "star", typ: "*", want: envelope.ErrInvalidType},
		{name: "gt", typ: ">", want: envelope.ErrInvalidType},
		{name: "star inside token", typ: "a*b", want: envelope.ErrInvalidType},
		{name: "empty token", typ: "a..b", want: envelope.ErrInvalidType},
		{name: "leading dot", typ: ".a", want: envelope.ErrInvalidType},
		{name: "trailing dot", typ: "a.", want: envelope.ErrInvalidType},
		{name: "only dot", typ: ".", want: envelope.ErrInvalidType},
		{name: "space", typ: "a b", want: envelope.ErrInvalidType},
		{name: "tab", typ: "a\tb", want: envelope.ErrInvalidType},
		{name: "newline", typ: "a\n", want: envelope.ErrInvalidType},
		{name: "NUL", typ: "\x00", want: envelope.ErrInvalidType},
		{name: "DEL", typ: "a\x7f", want: envelope.ErrInvalidType},
		{name: "nbsp", typ: "a\u00a0b", want: envelope.ErrInvalidType},
		{name: "ideographic space", typ: "a\u3000b", want: envelope.ErrInvalidType},
		{name: "non-ascii letter", typ: "caf\u00e9", want: envelope.ErrInvalidType},
		{name: "invalid utf-8", typ: "a\xff", want: envelope.ErrInvalidType},
		{name: "colon in app type", typ: "a:b", want: envelope.ErrInvalidType},
		{name: "slash", typ: "a/b", want: envelope.ErrInvalidType},
		{name: "lone dollar", typ: "$", want: envelope.ErrInvalidType},
		{name: "dollar inside", typ: "a$b", want: envelope.ErrInvalidType},
		{name: "system star", typ: "$a.*", want: envelope.ErrInvalidType},
		{name: "system gt", typ: "$>", want: envelope.ErrInvalidType},
		{name: "system space", typ: "$a b", want: envelope.ErrInvalidType},
		{name: "system double dollar", typ: "$$", want: envelope.ErrInvalidType},
		{name: "double underscore empty token", typ: "__a..b", want: envelope.ErrInvalidType},
		{name: "double underscore star", typ: "__a.*", want: envelope.ErrInvalidType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := envelope.ValidateType(tt.typ)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("ValidateType(%q) = %v, want %v", tt.typ, err, tt.want)
			}
		})
	}
}

func TestIsSystemType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ  string
		want bool
	}{
		{"$join", true},
		{"$", true},
		{"__heartbeat", true},
		{"__", true},
		{"_a", false},
		{"a$", false},
		{"a__", false},
		{"chat.send", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := envelope.IsSystemType(tt.typ); got != tt.want {
			t.Errorf("IsSystemType(%q) = %v, want %v", tt.typ, got, tt.want)
		}
	}
}

func TestValidateID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{name: "simple", id: "general", ok: true},
		{name: "all token bytes", id: "azAZ09_-", ok: true},
		{name: "one byte", id: "x", ok: true},
		{name: "dash only", id: "-", ok: true},
		{name: "nuid-like", id: "Cq7pT1XhQ6mQ3bZ9vN0aK2", ok: true},
		{name: "max length", id: strings.Repeat("i", envelope.MaxIDLen), ok: true},

		{name: "empty", id: ""},
		{name: "too long", id: strings.Repeat("i", envelope.MaxIDLen+1)},
		{name: "dot", id: "a.b"},
		{name: "leading dot", id: ".a"},
		{name: "trailing dot", id: "a."},
		{name: "only dot", id: "."},
		{name: "star", id: "*"},
		{name: "gt", id: ">"},
		{name: "star inside", id: "a*"},
		{name: "space", id: "a b"},
		{name: "tab", id: "\t"},
		{name: "CR LF", id: "a\r\n"},
		{name: "NUL", id: "\x00"},
		{name: "DEL", id: "\x7f"},
		{name: "nbsp", id: "\u00a0"},
		{name: "line separator", id: "a\u2028"},
		{name: "non-ascii", id: "r\u00e9sum\u00e9"},
		{name: "invalid utf-8", id: "\xc3"},
		{name: "dollar", id: "$sys"},
		{name: "colon", id: "a:b"},
		{name: "slash", id: "a/b"},
		{name: "at", id: "user@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := envelope.ValidateID(tt.id)
			if tt.ok && err != nil {
				t.Errorf("ValidateID(%q) = %v, want nil", tt.id, err)
			}
			if !tt.ok && !errors.Is(err, envelope.ErrInvalidID) {
				t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", tt.id, err)
			}
			if err != nil && len(err.Error()) > 200 {
				t.Errorf("error message is %d bytes; it must not echo unbounded input", len(err.Error()))
			}
		})
	}
}

func TestValidateConnID(t *testing.T) {
	t.Parallel()
	maxTok := strings.Repeat("i", envelope.MaxIDLen)
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{name: "edge and counter", id: "edge1.1", ok: true},
		{name: "nuid edge, base36 n", id: "Cq7pT1XhQ6mQ3bZ9vN0aK2.3w5e11264sgsf", ok: true},
		{name: "all token bytes", id: "azAZ09_-.azAZ09_-", ok: true},
		{name: "one byte each", id: "e.n", ok: true},
		{name: "max length", id: maxTok + "." + maxTok, ok: true},

		{name: "empty", id: ""},
		{name: "one token", id: "Cq7pT1XhQ6mQ3bZ9vN0aK2"},
		{name: "three tokens", id: "a.b.c"},
		{name: "empty edge", id: ".n"},
		{name: "empty n", id: "e."},
		{name: "only dot", id: "."},
		{name: "two dots", id: "e..n"},
		{name: "star n", id: "e.*"},
		{name: "star edge", id: "*.n"},
		{name: "gt n", id: "e.>"},
		{name: "gt edge", id: ">.n"},
		{name: "star inside", id: "e.n*"},
		{name: "space", id: "e.n m"},
		{name: "tab", id: "e\t.n"},
		{name: "CR LF", id: "e.n\r\n"},
		{name: "NUL", id: "e.\x00"},
		{name: "non-ascii", id: "caf\u00e9.1"},
		{name: "dollar", id: "$SYS.n"},
		{name: "edge too long", id: maxTok + "i.n"},
		{name: "n too long", id: "e." + maxTok + "i"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := envelope.ValidateConnID(tt.id)
			if tt.ok && err != nil {
				t.Errorf("ValidateConnID(%q) = %v, want nil", tt.id, err)
			}
			if !tt.ok && !errors.Is(err, envelope.ErrInvalidID) {
				t.Errorf("ValidateConnID(%q) = %v, want ErrInvalidID", tt.id, err)
			}
			if err != nil && len(err.Error()) > 200 {
				t.Errorf("error message is %d bytes; it must not echo unbounded input", len(err.Error()))
			}
		})
	}
}

func TestNewNamespace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prefix string
		ok     bool
	}{
		{name: "default", prefix: envelope.DefaultPrefix, ok: true},
		{name: "dotted", prefix: "acme.natter", ok: true},
		{name: "token bytes", prefix: "a-b_c9", ok: true},

		{name: "empty", prefix: ""},
		{name: "system dollar", prefix: "$SYS"},
		{name: "underscore", prefix: "_INBOX"},
		{name: "double underscore", prefix: "__x"},
		{name: "star", prefix: "*"},
		{name: "gt", prefix: ">"},
		{name: "star token", prefix: "a.*"},
		{name: "empty token", prefix: "a..b"},
		{name: "leading dot", prefix: ".a"},
		{name: "trailing dot", prefix: "a."},
		{name: "space", prefix: "a b"},
		{name: "too long", prefix: strings.Repeat("a", envelope.MaxTypeLen+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := envelope.NewNamespace(tt.prefix)
			if tt.ok {
				if err != nil {
					t.Fatalf("NewNamespace(%q) = %v", tt.prefix, err)
				}
				if ns.Prefix() != tt.prefix {
					t.Errorf("Prefix() = %q, want %q", ns.Prefix(), tt.prefix)
				}
				return
			}
			if !errors.Is(err, envelope.ErrInvalidPrefix) {
				t.Errorf("NewNamespace(%q) = %v, want ErrInvalidPrefix", tt.prefix, err)
			}
			if ns != (envelope.Namespace{}) {
				t.Errorf("NewNamespace(%q) returned a usable namespace %q with an error", tt.prefix, ns.Prefix())
			}
		})
	}

	if got := envelope.DefaultNamespace.Prefix(); got != envelope.DefaultPrefix {
		t.Errorf("DefaultNamespace.Prefix() = %q", got)
	}
}

func TestNamespaceSubjects(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("acme.rt")
	if err != nil {
		t.Fatal(err)
	}
	type builder func(envelope.Namespace, string) (envelope.Subject, error)
	builders := map[string]builder{
		"Conn":        envelope.Namespace.Conn,
		"User":        envelope.Namespace.User,
		"Room":        envelope.Namespace.Room,
		"Ctl":         envelope.Namespace.Ctl,
		"Event":       envelope.Namespace.Event,
		"DurableRoom": envelope.Namespace.DurableRoom,
		"DurableLive": envelope.Namespace.DurableLive,
	}
	tests := []struct {
		name   string
		ns     envelope.Namespace
		method string
		arg    string
		want   envelope.Subject
	}{
		{name: "conn", ns: envelope.DefaultNamespace, method: "Conn", arg: "e1.c1", want: "natter.out.conn.e1.c1"},
		{name: "conn nuid edge", ns: envelope.DefaultNamespace, method: "Conn", arg: "Cq7pT1XhQ6mQ3bZ9vN0aK2.2s9x", want: "natter.out.conn.Cq7pT1XhQ6mQ3bZ9vN0aK2.2s9x"},
		{name: "user", ns: envelope.DefaultNamespace, method: "User", arg: "u-1", want: "natter.out.user.u-1"},
		{name: "room", ns: envelope.DefaultNamespace, method: "Room", arg: "general", want: "natter.out.room.general"},
		{name: "ctl", ns: envelope.DefaultNamespace, method: "Ctl", arg: "e1.c1", want: "natter.ctl.conn.e1.c1"},
		{name: "event", ns: envelope.DefaultNamespace, method: "Event", arg: "connect", want: "natter.evt.connect"},
		{name: "custom prefix room", ns: custom, method: "Room", arg: "r_1", want: "acme.rt.out.room.r_1"},
		{name: "custom prefix ctl", ns: custom, method: "Ctl", arg: "E.C", want: "acme.rt.ctl.conn.E.C"},
		{name: "custom prefix conn", ns: custom, method: "Conn", arg: "edge-1.z", want: "acme.rt.out.conn.edge-1.z"},
		{name: "durable room", ns: envelope.DefaultNamespace, method: "DurableRoom", arg: "support-1", want: "natter.durable.room.support-1"},
		{name: "durable live", ns: custom, method: "DurableLive", arg: "support-1", want: "acme.rt.durable.live.support-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := builders[tt.method](tt.ns, tt.arg)
			if err != nil {
				t.Fatalf("%s(%q) = %v", tt.method, tt.arg, err)
			}
			if got != tt.want || got.String() != string(tt.want) {
				t.Errorf("%s(%q) = %q, want %q", tt.method, tt.arg, got, tt.want)
			}
		})
	}

	// Every id builder rejects every bad id, on every namespace: one token
	// for rooms, users and events, exactly two for connections.
	badIDs := []string{"", ".", "*", ">", "a*", "a>", "a b", "\x00", "\t", "\u00a0", "$x", "a\n", strings.Repeat("x", envelope.MaxIDLen+1),
		"e.*", "*.n", "e.>", ">.n", "e..n", "e.n.x", "e.", ".n", "e .n", "e.n\n", "e.$n", "e.\u00a0", "e." + strings.Repeat("n", envelope.MaxIDLen+1)}
	oneToken := []string{"a.b", "e1.c1"}
	connIDs := []string{"c1", "Cq7pT1XhQ6mQ3bZ9vN0aK2", "a"}
	for method, build := range builders {
		bad := append(slices.Clone(badIDs), oneToken...)
		if method == "Conn" || method == "Ctl" {
			bad = append(slices.Clone(badIDs), connIDs...)
		}
		for _, ns := range []envelope.Namespace{envelope.DefaultNamespace, custom} {
			for _, id := range bad {
				s, err := build(ns, id)
				if !errors.Is(err, envelope.ErrInvalidID) {
					t.Errorf("%s(%q) on %q = %q, %v; want ErrInvalidID", method, id, ns.Prefix(), s, err)
				}
				if s != "" {
					t.Errorf("%s(%q) returned subject %q with an error", method, id, s)
				}
			}
		}
	}
}

func TestNamespaceFixedSubjects(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("acme.rt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  envelope.Subject
		want envelope.Subject
	}{
		{name: "all", got: envelope.DefaultNamespace.All(), want: "natter.out.all"},
		{name: "in all", got: envelope.DefaultNamespace.InAll(), want: "natter.in.>"},
		{name: "room all", got: envelope.DefaultNamespace.RoomAll(), want: "natter.out.room.*"},
		{name: "custom all", got: custom.All(), want: "acme.rt.out.all"},
		{name: "custom in all", got: custom.InAll(), want: "acme.rt.in.>"},
		{name: "custom room all", got: custom.RoomAll(), want: "acme.rt.out.room.*"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

// TestNamespaceConnAll checks the per-edge wildcards an edge subscribes
// for all its connections, and that each matches exactly the subjects of
// that edge's connection ids.
func TestNamespaceConnAll(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("acme.rt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		build func(envelope.Namespace, string) (envelope.Subject, error)
		ns    envelope.Namespace
		edge  string
		want  envelope.Subject
		err   error
	}{
		{name: "conn", build: envelope.Namespace.ConnAll, ns: envelope.DefaultNamespace, edge: "e1", want: "natter.out.conn.e1.*"},
		{name: "ctl", build: envelope.Namespace.CtlAll, ns: envelope.DefaultNamespace, edge: "e1", want: "natter.ctl.conn.e1.*"},
		{name: "custom conn", build: envelope.Namespace.ConnAll, ns: custom, edge: "Cq7pT1XhQ6mQ3bZ9vN0aK2", want: "acme.rt.out.conn.Cq7pT1XhQ6mQ3bZ9vN0aK2.*"},
		{name: "custom ctl", build: envelope.Namespace.CtlAll, ns: custom, edge: "edge-0", want: "acme.rt.ctl.conn.edge-0.*"},

		{name: "conn two tokens", build: envelope.Namespace.ConnAll, ns: envelope.DefaultNamespace, edge: "e.1", err: envelope.ErrInvalidID},
		{name: "ctl star", build: envelope.Namespace.CtlAll, ns: envelope.DefaultNamespace, edge: "*", err: envelope.ErrInvalidID},
		{name: "conn gt", build: envelope.Namespace.ConnAll, ns: envelope.DefaultNamespace, edge: ">", err: envelope.ErrInvalidID},
		{name: "conn empty", build: envelope.Namespace.ConnAll, ns: envelope.DefaultNamespace, edge: "", err: envelope.ErrInvalidID},
		{name: "zero namespace", build: envelope.Namespace.ConnAll, ns: envelope.Namespace{}, edge: "e", err: envelope.ErrInvalidPrefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.build(tt.ns, tt.edge)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || got != "" {
					t.Errorf("got %q, %v; want %v", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	// The wildcard matches the subjects of its edge's connection ids and
	// nothing else (NATS matching: '*' is one whole token).
	all, _ := envelope.DefaultNamespace.ConnAll("e1")
	for id, want := range map[string]bool{"e1.c1": true, "e1.x-_9": true, "e2.c1": false, "e10.c1": false, "x.e1": false} {
		subj, err := envelope.DefaultNamespace.Conn(id)
		if err != nil {
			t.Fatal(err)
		}
		if got := matchSubject(all.String(), subj.String()); got != want {
			t.Errorf("%s matches %s: %v, want %v", all, subj, got, want)
		}
	}
	ctl, _ := envelope.DefaultNamespace.CtlAll("e1")
	if subj, _ := envelope.DefaultNamespace.Conn("e1.c1"); matchSubject(ctl.String(), subj.String()) {
		t.Errorf("%s matches %s", ctl, subj)
	}
}

// matchSubject is NATS's match of a literal subject against a pattern with
// '*' tokens.
func matchSubject(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	if len(p) != len(s) {
		return false
	}
	for i := range p {
		if p[i] != "*" && p[i] != s[i] {
			return false
		}
	}
	return true
}

func TestNamespaceIn(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("acme")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ns   envelope.Namespace
		typ  string
		want envelope.Subject
		err  error
	}{
		{name: "one token", ns: envelope.DefaultNamespace, typ: "ping", want: "natter.in.ping"},
		{name: "dotted", ns: envelope.DefaultNamespace, typ: "chat.send", want: "natter.in.chat.send"},
		{name: "custom prefix", ns: custom, typ: "chat.send", want: "acme.in.chat.send"},
		{name: "single underscore is an app type", ns: envelope.DefaultNamespace, typ: "_x", want: "natter.in._x"},

		{name: "join", ns: envelope.DefaultNamespace, typ: envelope.TypeJoin, err: envelope.ErrInvalidType},
		{name: "leave", ns: envelope.DefaultNamespace, typ: envelope.TypeLeave, err: envelope.ErrInvalidType},
		{name: "rpc abort", ns: envelope.DefaultNamespace, typ: "$ws:abort", err: envelope.ErrInvalidType},
		{name: "heartbeat", ns: envelope.DefaultNamespace, typ: envelope.TypeHeartbeat, err: envelope.ErrInvalidType},
		{name: "heartbeat ack", ns: envelope.DefaultNamespace, typ: envelope.TypeHeartbeatAck, err: envelope.ErrInvalidType},
		{name: "double underscore dotted", ns: envelope.DefaultNamespace, typ: "__a.b", err: envelope.ErrInvalidType},
		{name: "empty", ns: envelope.DefaultNamespace, typ: "", err: envelope.ErrMissingType},
		{name: "star", ns: envelope.DefaultNamespace, typ: "a.*", err: envelope.ErrInvalidType},
		{name: "gt", ns: envelope.DefaultNamespace, typ: "a.>", err: envelope.ErrInvalidType},
		{name: "empty token", ns: envelope.DefaultNamespace, typ: "a..b", err: envelope.ErrInvalidType},
		{name: "space", ns: envelope.DefaultNamespace, typ: "a b", err: envelope.ErrInvalidType},
		{name: "too long", ns: envelope.DefaultNamespace, typ: strings.Repeat("a", envelope.MaxTypeLen+1), err: envelope.ErrInvalidType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.ns.In(tt.typ)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Errorf("In(%q) = %q, %v; want %v", tt.typ, got, err, tt.err)
				}
				if got != "" {
					t.Errorf("In(%q) returned subject %q with an error", tt.typ, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("In(%q) = %q, %v; want %q", tt.typ, got, err, tt.want)
			}
		})
	}
}

// TestZeroNamespace checks that the unusable zero value never yields a
// subject with an empty first token.
func TestZeroNamespace(t *testing.T) {
	t.Parallel()
	var ns envelope.Namespace
	calls := map[string]func() (envelope.Subject, error){
		"In":          func() (envelope.Subject, error) { return ns.In("chat.send") },
		"Conn":        func() (envelope.Subject, error) { return ns.Conn("e.c") },
		"ConnAll":     func() (envelope.Subject, error) { return ns.ConnAll("e") },
		"User":        func() (envelope.Subject, error) { return ns.User("u") },
		"Room":        func() (envelope.Subject, error) { return ns.Room("r") },
		"Ctl":         func() (envelope.Subject, error) { return ns.Ctl("e.c") },
		"CtlAll":      func() (envelope.Subject, error) { return ns.CtlAll("e") },
		"Event":       func() (envelope.Subject, error) { return ns.Event("connect") },
		"DurableRoom": func() (envelope.Subject, error) { return ns.DurableRoom("r") },
		"DurableLive": func() (envelope.Subject, error) { return ns.DurableLive("r") },
	}
	for name, call := range calls {
		s, err := call()
		if !errors.Is(err, envelope.ErrInvalidPrefix) || s != "" {
			t.Errorf("zero Namespace.%s = %q, %v; want ErrInvalidPrefix", name, s, err)
		}
	}
}

func TestNamespaceParse(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("acme.rt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		ns       envelope.Namespace
		subject  string
		wantKind envelope.Kind
		wantID   string
	}{
		{name: "conn", ns: envelope.DefaultNamespace, subject: "natter.out.conn.e1.c1", wantKind: envelope.KindConn, wantID: "e1.c1"},
		{name: "user", ns: envelope.DefaultNamespace, subject: "natter.out.user.u1", wantKind: envelope.KindUser, wantID: "u1"},
		{name: "room", ns: envelope.DefaultNamespace, subject: "natter.out.room.general", wantKind: envelope.KindRoom, wantID: "general"},
		{name: "all", ns: envelope.DefaultNamespace, subject: "natter.out.all", wantKind: envelope.KindAll},
		{name: "ctl", ns: envelope.DefaultNamespace, subject: "natter.ctl.conn.e1.c1", wantKind: envelope.KindCtl, wantID: "e1.c1"},
		{name: "custom prefix conn", ns: custom, subject: "acme.rt.out.conn.e.c", wantKind: envelope.KindConn, wantID: "e.c"},
		{name: "custom prefix", ns: custom, subject: "acme.rt.out.room.r", wantKind: envelope.KindRoom, wantID: "r"},

		{name: "other prefix", ns: envelope.DefaultNamespace, subject: "acme.rt.out.room.r", wantKind: envelope.KindUnknown},
		{name: "prefix is not a token boundary", ns: envelope.DefaultNamespace, subject: "natterx.out.room.r", wantKind: envelope.KindUnknown},
		{name: "custom prefix partial", ns: custom, subject: "acme.out.room.r", wantKind: envelope.KindUnknown},
		{name: "in subject", ns: envelope.DefaultNamespace, subject: "natter.in.chat.send", wantKind: envelope.KindUnknown},
		{name: "event", ns: envelope.DefaultNamespace, subject: "natter.evt.connect", wantKind: envelope.KindUnknown},
		{name: "ctl user", ns: envelope.DefaultNamespace, subject: "natter.ctl.user.u", wantKind: envelope.KindUnknown},
		{name: "all with suffix", ns: envelope.DefaultNamespace, subject: "natter.out.all.x", wantKind: envelope.KindUnknown},
		{name: "unknown out kind", ns: envelope.DefaultNamespace, subject: "natter.out.group.g", wantKind: envelope.KindUnknown},
		{name: "prefix only", ns: envelope.DefaultNamespace, subject: "natter", wantKind: envelope.KindUnknown},
		{name: "empty", ns: envelope.DefaultNamespace, subject: "", wantKind: envelope.KindUnknown},
		{name: "conn of one token", ns: envelope.DefaultNamespace, subject: "natter.out.conn.c1", wantKind: envelope.KindUnknown},
		{name: "ctl of one token", ns: envelope.DefaultNamespace, subject: "natter.ctl.conn.c1", wantKind: envelope.KindUnknown},
		{name: "conn of three tokens", ns: envelope.DefaultNamespace, subject: "natter.out.conn.e.c.x", wantKind: envelope.KindUnknown},
		{name: "conn wildcard", ns: envelope.DefaultNamespace, subject: "natter.out.conn.e.*", wantKind: envelope.KindUnknown},
		{name: "room of two tokens", ns: envelope.DefaultNamespace, subject: "natter.out.room.a.b", wantKind: envelope.KindUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, id := tt.ns.Parse(tt.subject)
			if kind != tt.wantKind || id != tt.wantID {
				t.Errorf("Parse(%q) = %v, %q; want %v, %q", tt.subject, kind, id, tt.wantKind, tt.wantID)
			}
		})
	}
}

func TestNamespaceParseRoundTrip(t *testing.T) {
	t.Parallel()
	custom, err := envelope.NewNamespace("a.b-c")
	if err != nil {
		t.Fatal(err)
	}
	builders := []struct {
		kind  envelope.Kind
		build func(envelope.Namespace, string) (envelope.Subject, error)
	}{
		{envelope.KindConn, envelope.Namespace.Conn},
		{envelope.KindUser, envelope.Namespace.User},
		{envelope.KindRoom, envelope.Namespace.Room},
		{envelope.KindCtl, envelope.Namespace.Ctl},
	}
	ids := []string{"x", "general", "Cq7pT1XhQ6mQ3bZ9vN0aK2", "out", "conn", "all", "-", "_", strings.Repeat("z", envelope.MaxIDLen)}
	var connIDs []string
	for _, id := range ids {
		connIDs = append(connIDs, "Cq7pT1XhQ6mQ3bZ9vN0aK2."+id, id+".1", id+"."+id)
	}
	for _, ns := range []envelope.Namespace{envelope.DefaultNamespace, custom} {
		for _, b := range builders {
			ids := ids
			if b.kind == envelope.KindConn || b.kind == envelope.KindCtl {
				ids = connIDs
			}
			for _, id := range ids {
				s, err := b.build(ns, id)
				if err != nil {
					t.Fatalf("build(%q) = %v", id, err)
				}
				kind, got := ns.Parse(s.String())
				if kind != b.kind || got != id {
					t.Errorf("Parse(%q) = %v, %q; want %v, %q", s, kind, got, b.kind, id)
				}
			}
		}
		if kind, id := ns.Parse(ns.All().String()); kind != envelope.KindAll || id != "" {
			t.Errorf("Parse(%q) = %v, %q; want KindAll", ns.All(), kind, id)
		}
		// A subject of one namespace is unknown to another.
		other := envelope.DefaultNamespace
		if ns == other {
			other = custom
		}
		s, _ := ns.Room("r")
		if kind, _ := other.Parse(s.String()); kind != envelope.KindUnknown {
			t.Errorf("%q.Parse(%q) = %v, want KindUnknown", other.Prefix(), s, kind)
		}
	}
}
