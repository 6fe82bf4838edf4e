package tap

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/natter/natter/pkg/envelope"
)

// ErrInvalidConfig wraps every error of New: a bad pattern, id or
// direction.
var ErrInvalidConfig = errors.New("tap: invalid config")

// Directions of Config.Direction.
const (
	DirectionIn   = "in"   // client to worker: <prefix>.in.<type>
	DirectionOut  = "out"  // toward clients and edges: out.*, durable.live.*, ctl.conn.*.*
	DirectionBoth = "both" // both (the default)
)

// Config says what a Tap shows and how.
type Config struct {
	// Namespace is the deployment's subjects. Zero: DefaultNamespace.
	Namespace envelope.Namespace
	// Rooms, Users and Conns select the traffic of any of the rooms, users
	// or connections they match (or): room deliveries; a user's or a
	// connection's messages in both directions (inbound ones by their
	// Natter-User and Natter-Conn headers). Each is a glob (path.Match,
	// '*' also matches dots); a plain id subscribes only its subjects.
	// All empty: every room, user and connection.
	Rooms, Users, Conns []string
	// Types keeps only messages whose type matches one of these globs
	// ("chat.*" matches chat.send and chat.a.b). Inbound subscriptions
	// narrow to <prefix>.in.<literal tokens>.>. A control's type is its op
	// (join, leave, member, close); events are not filtered by type.
	// Empty: every type.
	Types []string
	// Direction is DirectionIn, DirectionOut or DirectionBoth. Empty: both.
	Direction string
	// Events adds lifecycle events (<prefix>.evt.>), filtered by their
	// user and connection. Default: off.
	Events bool
	// Payloads shows payloads; otherwise only their size. Default: off.
	Payloads bool
	// MaxPayload truncates shown payloads, in bytes. <= 0: 1024.
	MaxPayload int
	// JSON writes one JSON object per line instead of text.
	JSON bool
	// Count stops after this many messages shown. <= 0: no limit.
	Count int
	// Buffer bounds the messages received but not yet written; beyond it
	// NATS drops them (slow consumer) and the tap reports how many.
	// <= 0: 4096.
	Buffer int
}

// DefaultMaxPayload is Config.MaxPayload's default, in bytes.
const DefaultMaxPayload = 1024

// validate checks c and fills its defaults.
func (c *Config) validate() error {
	if c.Namespace.Prefix() == "" {
		c.Namespace = envelope.DefaultNamespace
	}
	switch c.Direction {
	case "":
		c.Direction = DirectionBoth
	case DirectionIn, DirectionOut, DirectionBoth:
	default:
		return fmt.Errorf("%w: --direction %q: want in, out or both", ErrInvalidConfig, c.Direction)
	}
	for _, g := range [...]struct {
		flag string
		pats []string
	}{{"room", c.Rooms}, {"user", c.Users}, {"conn", c.Conns}, {"type", c.Types}} {
		for _, p := range g.pats {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return fmt.Errorf("%w: --%s %q: not a glob", ErrInvalidConfig, g.flag, p)
			}
		}
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.Buffer <= 0 {
		c.Buffer = 4096
	}
	return nil
}

// literal reports whether p is a plain string, no glob.
func literal(p string) bool { return !strings.ContainsAny(p, `*?[\`) }

// match reports whether s matches one of pats.
func match(pats []string, s string) bool {
	for _, p := range pats {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

// Subjects returns the core NATS subscriptions c needs, as narrow as its
// filters allow and none covered by another. c must be valid (New).
func (c *Config) Subjects() []string {
	p := c.Namespace.Prefix()
	in := c.Direction != DirectionOut
	out := c.Direction != DirectionIn
	selected := len(c.Rooms)+len(c.Users)+len(c.Conns) > 0
	var subs []string
	add := func(s ...string) { subs = append(subs, s...) }
	// inbound: by type; the user and conn filters need the headers.
	inSubjects := func() {
		if len(c.Types) == 0 {
			add(p + ".in.>")
			return
		}
		for _, t := range c.Types {
			add(typeSubject(p+".in", t))
		}
	}
	if !selected {
		if in {
			inSubjects()
		}
		if out {
			add(p+".out.>", p+".durable.live.*", p+".ctl.conn.*.*")
		}
	}
	if out {
		for _, r := range c.Rooms {
			if literal(r) && envelope.ValidateID(r) == nil {
				add(p+".out.room."+r, p+".durable.live."+r)
			} else {
				add(p+".out.room.*", p+".durable.live.*")
			}
		}
		for _, u := range c.Users {
			if literal(u) && envelope.ValidateID(u) == nil {
				add(p + ".out.user." + u)
			} else {
				add(p + ".out.user.*")
			}
		}
		for _, id := range c.Conns {
			if literal(id) && envelope.ValidateConnID(id) == nil {
				add(p+".out.conn."+id, p+".ctl.conn."+id)
			} else {
				add(p+".out.conn.*.*", p+".ctl.conn.*.*")
			}
		}
	}
	if in && len(c.Users)+len(c.Conns) > 0 {
		inSubjects()
	}
	if c.Events {
		add(p + ".evt.>")
	}
	return minimal(subs)
}

// typeSubject is the narrowest subject under base that holds every type
// matching glob t: the literal tokens before the first one with a glob
// character, then ">" (or the type itself when it is literal).
func typeSubject(base, t string) string {
	if literal(t) && envelope.ValidateType(t) == nil {
		return base + "." + t
	}
	s := base
	for _, tok := range strings.Split(t, ".") {
		if !literal(tok) || envelope.ValidateID(tok) != nil {
			break
		}
		s += "." + tok
	}
	return s + ".>"
}

// minimal sorts subs and drops duplicates and subjects another one covers,
// so that no message is received twice.
func minimal(subs []string) []string {
	slices.Sort(subs)
	subs = slices.Compact(subs)
	var out []string
	for i, s := range subs {
		covered := false
		for j, o := range subs {
			if i != j && covers(o, s) && !(covers(s, o) && j > i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, s)
		}
	}
	return out
}

// covers reports whether every subject matching b also matches a.
func covers(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i, t := range at {
		if t == ">" {
			return i < len(bt)
		}
		if i >= len(bt) {
			return false
		}
		switch {
		case t == "*" && bt[i] != ">":
		case t == bt[i]:
		default:
			return false
		}
	}
	return len(at) == len(bt)
}
