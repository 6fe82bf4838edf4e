package envelope

import (
	"errors"
	"fmt"
	"strings"
)

// Limits on what may become part of a NATS subject.
const (
	// MaxTypeLen bounds a message type, in bytes.
	MaxTypeLen = 128
	// MaxIDLen bounds a room, user or edge id, and each of the two tokens
	// of a connection id, in bytes.
	MaxIDLen = 128
	// MaxConnIDLen bounds a connection id, <edge>.<n>, in bytes.
	MaxConnIDLen = 2*MaxIDLen + 1
	// DefaultPrefix is the first token of every Natter subject.
	DefaultPrefix = "natter"
)

// Subject errors.
var (
	ErrInvalidID     = errors.New("envelope: invalid id")
	ErrInvalidPrefix = errors.New("envelope: invalid subject prefix")
)

// Subject is a NATS subject built by this package. Every token of it passed
// the checks below, so it never holds '*', '>', whitespace or an empty token
// that came from outside.
type Subject string

// String returns the subject as NATS wants it.
func (s Subject) String() string { return string(s) }

// isTokenByte reports whether c may appear in a subject token built from
// outside input: [A-Za-z0-9_-].
func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func validToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

// ValidateID checks a room, user or edge id: 1 to MaxIDLen bytes of
// [A-Za-z0-9_-]. It is the rule for every id that becomes one subject
// token. Connection ids are two tokens: see ValidateConnID.
func ValidateID(id string) error {
	if !validToken(id, MaxIDLen) {
		return fmt.Errorf("%w: %q must be 1-%d characters of [A-Za-z0-9_-]", ErrInvalidID, clip(id), MaxIDLen)
	}
	return nil
}

// ValidateConnID checks a connection id: <edge>.<n>, exactly two tokens
// joined by one dot, each 1 to MaxIDLen bytes of [A-Za-z0-9_-]. The first
// is the id of the edge holding the connection, the second names the
// connection on that edge. Edges give these ids out ($connected, the
// Natter-Conn header, presence entries); everything that takes one from
// outside checks it with this, and no id of any other shape becomes part
// of a subject.
//
// The edge token lets one wildcard subscription per edge,
// <prefix>.out.conn.<edge>.* (ConnAll), receive what is addressed to any
// of its connections, instead of a subscription per connection.
func ValidateConnID(id string) error {
	dot := strings.IndexByte(id, '.')
	if dot < 0 || !validToken(id[:dot], MaxIDLen) || !validToken(id[dot+1:], MaxIDLen) {
		return fmt.Errorf("%w: connection id %q must be <edge>.<n>, two tokens of 1-%d characters of [A-Za-z0-9_-]", ErrInvalidID, clip(id), MaxIDLen)
	}
	return nil
}

// IsSystemType reports whether t is a system type, handled by the edge
// itself and never published to NATS: it starts with "$" or "__".
func IsSystemType(t string) bool {
	return strings.HasPrefix(t, "$") || strings.HasPrefix(t, "__")
}

// ValidateType checks a message type. An application type is one or more
// dot-separated tokens of [A-Za-z0-9_-]; a system type is "$" followed by
// [A-Za-z0-9_:.-], or an application-shaped type starting with "__". Either
// is at most MaxTypeLen bytes.
func ValidateType(t string) error {
	if t == "" {
		return ErrMissingType
	}
	if len(t) > MaxTypeLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidType, MaxTypeLen)
	}
	if t[0] == '$' {
		if len(t) == 1 {
			return fmt.Errorf("%w: %q", ErrInvalidType, t)
		}
		for i := 1; i < len(t); i++ {
			if c := t[i]; !isTokenByte(c) && c != ':' && c != '.' {
				return fmt.Errorf("%w: %q", ErrInvalidType, clip(t))
			}
		}
		return nil
	}
	start := 0
	for i := 0; i <= len(t); i++ {
		if i == len(t) || t[i] == '.' {
			if i == start {
				return fmt.Errorf("%w: %q has an empty token", ErrInvalidType, clip(t))
			}
			start = i + 1
			continue
		}
		if !isTokenByte(t[i]) {
			return fmt.Errorf("%w: %q must be dot-separated tokens of [A-Za-z0-9_-]", ErrInvalidType, clip(t))
		}
	}
	return nil
}

// Namespace builds the subjects of one Natter deployment. The zero value is
// not usable; use NewNamespace or DefaultNamespace.
type Namespace struct {
	prefix string
}

// DefaultNamespace is the namespace with prefix "natter".
var DefaultNamespace = Namespace{prefix: DefaultPrefix}

// NewNamespace returns the namespace for prefix, which must be one or more
// dot-separated tokens of [A-Za-z0-9_-].
func NewNamespace(prefix string) (Namespace, error) {
	if prefix == "" || strings.HasPrefix(prefix, "$") || strings.HasPrefix(prefix, "_") {
		return Namespace{}, fmt.Errorf("%w: %q", ErrInvalidPrefix, prefix)
	}
	if err := ValidateType(prefix); err != nil {
		return Namespace{}, fmt.Errorf("%w: %q", ErrInvalidPrefix, prefix)
	}
	return Namespace{prefix: prefix}, nil
}

// Prefix returns the namespace's first token(s).
func (n Namespace) Prefix() string { return n.prefix }

// In is the subject a client message of type t is published on:
// <prefix>.in.<type>. System types never become subjects.
func (n Namespace) In(t string) (Subject, error) {
	if n.prefix == "" {
		return "", ErrInvalidPrefix
	}
	if err := ValidateType(t); err != nil {
		return "", err
	}
	if IsSystemType(t) {
		return "", fmt.Errorf("%w: system type %q has no subject", ErrInvalidType, t)
	}
	return Subject(n.prefix + ".in." + t), nil
}

// Conn is <prefix>.out.conn.<id>: deliveries to one connection. id is a
// connection id (ValidateConnID), so the subject ends in two tokens,
// <edge>.<n>.
func (n Namespace) Conn(id string) (Subject, error) { return n.connSubject(".out.conn.", id) }

// ConnAll is <prefix>.out.conn.<edge>.*: deliveries to every connection of
// one edge. An edge subscribes it once, for all its connections.
func (n Namespace) ConnAll(edge string) (Subject, error) {
	s, err := n.idSubject(".out.conn.", edge)
	return wildcard(s, err)
}

// User is <prefix>.out.user.<id>: deliveries to every connection of a user.
func (n Namespace) User(id string) (Subject, error) { return n.idSubject(".out.user.", id) }

// Room is <prefix>.out.room.<id>: deliveries to every member of a room.
func (n Namespace) Room(id string) (Subject, error) { return n.idSubject(".out.room.", id) }

// DurableRoom is <prefix>.durable.room.<id>: the subject of a durable
// room's messages in the rooms stream. Publish here with JetStream.
func (n Namespace) DurableRoom(id string) (Subject, error) { return n.idSubject(".durable.room.", id) }

// RoomsStream is the JetStream stream of durable rooms: <prefix>_rooms,
// dots replaced by underscores.
func (n Namespace) RoomsStream() string { return strings.ReplaceAll(n.prefix, ".", "_") + "_rooms" }

// RoomsStreamPatterns is the rooms stream's metadata key that lists the
// durable room patterns, comma-separated, as the edges were configured.
const RoomsStreamPatterns = "natter.durable-rooms"

// DurableLive is <prefix>.durable.live.<id>: the rooms stream republishes
// every stored message of a durable room here, with its sequence in
// headers; edges with members listen.
func (n Namespace) DurableLive(id string) (Subject, error) { return n.idSubject(".durable.live.", id) }

// Work is <prefix>.work.<type>: client messages of a durable type, stored
// in the work stream until a worker acknowledges them.
func (n Namespace) Work(t string) (Subject, error) {
	if _, err := n.In(t); err != nil {
		return "", err
	}
	return Subject(n.prefix + ".work." + t), nil
}

// WorkStream is the JetStream work-queue stream of durable types:
// <prefix>_work, dots replaced by underscores.
func (n Namespace) WorkStream() string { return strings.ReplaceAll(n.prefix, ".", "_") + "_work" }

// WorkStreamPatterns is the work stream's metadata key that lists the
// durable type patterns, comma-separated, as the edges were configured.
const WorkStreamPatterns = "natter.durable-types"

// All is <prefix>.out.all: deliveries to every connection.
func (n Namespace) All() Subject { return Subject(n.prefix + ".out.all") }

// Ctl is <prefix>.ctl.conn.<id>: join, leave and close for one connection.
// id is a connection id (ValidateConnID).
func (n Namespace) Ctl(id string) (Subject, error) { return n.connSubject(".ctl.conn.", id) }

// CtlAll is <prefix>.ctl.conn.<edge>.*: control messages for every
// connection of one edge. An edge subscribes it once, for all its
// connections.
func (n Namespace) CtlAll(edge string) (Subject, error) {
	s, err := n.idSubject(".ctl.conn.", edge)
	return wildcard(s, err)
}

// Abort is <prefix>.ctl.abort: edges publish the reply subject of a
// request the client aborted; workers cancel the handler answering it.
func (n Namespace) Abort() Subject { return Subject(n.prefix + ".ctl.abort") }

// HTTP is <prefix>.http.<edge>: POSTs of fallback connections held by
// edge that reached another edge, forwarded as requests. Edges only.
func (n Namespace) HTTP(edge string) (Subject, error) { return n.idSubject(".http.", edge) }

// Event is <prefix>.evt.<name>: lifecycle events.
func (n Namespace) Event(name string) (Subject, error) { return n.idSubject(".evt.", name) }

// Auth subjects: the requests an edge makes of an auth service.
const (
	AuthConnect = "connect" // decide a handshake
	AuthRefresh = "refresh" // decide a token refresh on a live connection
	AuthJoin    = "join"    // decide a client's $join
)

// Auth is <prefix>.auth.<op>, op one of AuthConnect, AuthRefresh, AuthJoin.
func (n Namespace) Auth(op string) (Subject, error) { return n.idSubject(".auth.", op) }

// InAll is <prefix>.in.>: every client message (for taps and tests).
func (n Namespace) InAll() Subject { return Subject(n.prefix + ".in.>") }

// RoomAll is <prefix>.out.room.*: every room delivery.
func (n Namespace) RoomAll() Subject { return Subject(n.prefix + ".out.room.*") }

func (n Namespace) idSubject(mid, id string) (Subject, error) {
	if n.prefix == "" {
		return "", ErrInvalidPrefix
	}
	if err := ValidateID(id); err != nil {
		return "", err
	}
	return Subject(n.prefix + mid + id), nil
}

func (n Namespace) connSubject(mid, id string) (Subject, error) {
	if n.prefix == "" {
		return "", ErrInvalidPrefix
	}
	if err := ValidateConnID(id); err != nil {
		return "", err
	}
	return Subject(n.prefix + mid + id), nil
}

// wildcard appends the token '*' to a subject built from validated ids.
func wildcard(s Subject, err error) (Subject, error) {
	if err != nil {
		return "", err
	}
	return s + ".*", nil
}

// Kind tells what an out subject addresses.
type Kind uint8

// The kinds of out and ctl subjects.
const (
	KindUnknown Kind = iota
	KindConn
	KindUser
	KindRoom
	KindAll
	KindCtl
)

// Parse splits an out or ctl subject of this namespace into its kind and
// id. A subject whose id is not valid for its kind (a connection id,
// ValidateConnID, for KindConn and KindCtl; one token, ValidateID, for the
// others) is KindUnknown.
func (n Namespace) Parse(subject string) (Kind, string) {
	rest, ok := strings.CutPrefix(subject, n.prefix+".")
	if !ok || n.prefix == "" {
		return KindUnknown, ""
	}
	if rest == "out.all" {
		return KindAll, ""
	}
	for _, k := range [...]struct {
		mid  string
		kind Kind
	}{{"out.conn.", KindConn}, {"out.user.", KindUser}, {"out.room.", KindRoom}, {"ctl.conn.", KindCtl}} {
		if id, ok := strings.CutPrefix(rest, k.mid); ok {
			validate := ValidateID
			if k.kind == KindConn || k.kind == KindCtl {
				validate = ValidateConnID
			}
			if validate(id) != nil {
				return KindUnknown, ""
			}
			return k.kind, id
		}
	}
	return KindUnknown, ""
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
