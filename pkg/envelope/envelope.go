package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"
)

// DefaultMaxSize is the default limit, in bytes, on one encoded envelope.
const DefaultMaxSize = 64 * 1024

// Decoding errors. They match with errors.Is; Code maps each to a wire code.
var (
	ErrTooLarge     = errors.New("envelope: frame too large")
	ErrMalformed    = errors.New("envelope: malformed JSON")
	ErrNotObject    = errors.New("envelope: frame is not a JSON object")
	ErrUnknownField = errors.New("envelope: unknown top-level field")
	ErrDuplicate    = errors.New("envelope: duplicate top-level field")
	ErrMissingType  = errors.New("envelope: missing type")
	ErrInvalidType  = errors.New("envelope: invalid type")
	ErrInvalidMeta  = errors.New("envelope: invalid meta")
)

// Envelope is one v1 wire message: {type, meta, payload}.
//
// Payload is kept as raw JSON: the edge never re-encodes what it only forwards.
type Envelope struct {
	Type    string          `json:"type"`
	Meta    Meta            `json:"meta,omitzero"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Meta is the envelope's optional metadata. Known keys are typed; any other
// key is kept in Extra and forwarded untouched.
type Meta struct {
	// CorrelationID makes a client message a request with exactly one reply.
	CorrelationID string
	// Timestamp is the sender's clock in Unix milliseconds, if it set one.
	Timestamp int64
	// TimeoutMs is the deadline the client asks for an RPC; the edge clamps it.
	TimeoutMs int64
	// Room is set by the edge on deliveries that came through a room.
	Room string
	// Extra holds every other key, as raw JSON.
	Extra map[string]json.RawMessage
}

// IsZero reports whether m carries nothing, so that it is omitted on encode.
func (m Meta) IsZero() bool {
	return m.CorrelationID == "" && m.Timestamp == 0 && m.TimeoutMs == 0 && m.Room == "" && len(m.Extra) == 0
}

// MarshalJSON encodes the known keys followed by Extra, in a stable order.
func (m Meta) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 64)
	b = append(b, '{')
	first := true
	key := func(k string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k) // JSON, not Go, quoting: strconv.Quote writes \a, \x7f, \U000e0001
		b = append(b, ':')
	}
	if m.CorrelationID != "" {
		key("correlationId")
		b = appendJSONString(b, m.CorrelationID)
	}
	if m.Timestamp != 0 {
		key("timestamp")
		b = strconv.AppendInt(b, m.Timestamp, 10)
	}
	if m.TimeoutMs != 0 {
		key("timeoutMs")
		b = strconv.AppendInt(b, m.TimeoutMs, 10)
	}
	if m.Room != "" {
		key("room")
		b = appendJSONString(b, m.Room)
	}
	for _, k := range slices.Sorted(maps.Keys(m.Extra)) {
		switch k {
		case "correlationId", "timestamp", "timeoutMs", "room":
			continue // the typed field wins
		}
		v := m.Extra[k]
		if !json.Valid(v) {
			return nil, fmt.Errorf("%w: meta.%s is not valid JSON", ErrMalformed, truncate([]byte(k), 40))
		}
		key(k)
		b = append(b, v...)
	}
	return append(b, '}'), nil
}

// UnmarshalJSON decodes meta, checking the types of the known keys.
func (m *Meta) UnmarshalJSON(data []byte) error {
	if !json.Valid(data) {
		*m = Meta{}
		return fmt.Errorf("%w: meta is not valid JSON", ErrInvalidMeta)
	}
	return m.decode(data)
}

// decode decodes a meta value that json.Valid accepted. Known keys are
// checked in a fixed order, correlationId first, so that the error for a
// frame is always the same and a valid correlationId is kept even when a
// later key is bad. A repeated key keeps its last value.
func (m *Meta) decode(b []byte) error {
	*m = Meta{}
	i := skipSpace(b, 0)
	if b[i] == 'n' { // null
		return nil
	}
	if b[i] != '{' {
		return fmt.Errorf("%w: meta must be an object", ErrInvalidMeta)
	}
	var cid, ts, timeout, room []byte
	for it := (members{b: b, i: i + 1}); ; {
		key, val, ok := it.next()
		if !ok {
			break
		}
		null := string(val) == "null" // null is as if absent, but for correlationId
		switch string(key) {
		case `"correlationId"`:
			cid = val
		case `"timestamp"`:
			if !null {
				ts = val
			}
		case `"timeoutMs"`:
			if !null {
				timeout = val
			}
		case `"room"`:
			if !null {
				room = val
			}
		default:
			k, err := unquote(key)
			if err != nil {
				return fmt.Errorf("%w: bad key", ErrInvalidMeta)
			}
			if m.Extra == nil {
				m.Extra = make(map[string]json.RawMessage, 2)
			}
			m.Extra[k] = val
		}
	}
	var err error
	if cid != nil {
		if m.CorrelationID, err = unquote(cid); err != nil || m.CorrelationID == "" || len(m.CorrelationID) > MaxCorrelationIDLen {
			m.CorrelationID = ""
			return fmt.Errorf("%w: meta.correlationId must be a string of 1..%d bytes", ErrInvalidMeta, MaxCorrelationIDLen)
		}
	}
	if ts != nil {
		if m.Timestamp, err = strconv.ParseInt(string(ts), 10, 64); err != nil {
			return fmt.Errorf("%w: meta.timestamp must be an integer", ErrInvalidMeta)
		}
	}
	if timeout != nil {
		if m.TimeoutMs, err = strconv.ParseInt(string(timeout), 10, 64); err != nil || m.TimeoutMs < 0 {
			return fmt.Errorf("%w: meta.timeoutMs must be a non-negative integer", ErrInvalidMeta)
		}
	}
	if room != nil {
		if m.Room, err = unquote(room); err != nil {
			return fmt.Errorf("%w: meta.room must be a string", ErrInvalidMeta)
		}
	}
	return nil
}

// unquote decodes a JSON string value; anything else is an error.
func unquote(raw []byte) (string, error) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", errors.New("not a string")
	}
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner), nil
	}
	// Escapes, or invalid UTF-8 that encoding/json turns into U+FFFD.
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// CorrelationID returns meta.correlationId of a frame that may not decode,
// or "" when there is no valid one. The edge uses it to answer a broken
// request with RPC_ERROR rather than ERROR, whatever else is wrong with it.
func CorrelationID(data []byte) string {
	if !json.Valid(data) {
		return ""
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return ""
	}
	var meta map[string]json.RawMessage
	if json.Unmarshal(top["meta"], &meta) != nil {
		return ""
	}
	var cid string
	if json.Unmarshal(meta["correlationId"], &cid) != nil || len(cid) > MaxCorrelationIDLen {
		return ""
	}
	return cid
}

// MaxCorrelationIDLen bounds meta.correlationId, in bytes.
const MaxCorrelationIDLen = 128

// Decode strictly decodes one frame. It rejects frames over maxSize bytes
// (DefaultMaxSize when maxSize <= 0), anything that is not one JSON object,
// top-level keys other than type, meta and payload, duplicate keys, and a
// missing or invalid type. The returned payload aliases data.
func Decode(data []byte, maxSize int) (*Envelope, error) {
	var e Envelope
	if err := DecodeInto(&e, data, maxSize); err != nil {
		return nil, err
	}
	return &e, nil
}

// DecodeInto is Decode into a caller-owned Envelope.
func DecodeInto(e *Envelope, data []byte, maxSize int) error {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if len(data) > maxSize {
		return ErrTooLarge
	}
	if !json.Valid(data) || !utf8.Valid(data) { // JSON text is UTF-8 (RFC 8259); json.Valid lets invalid bytes in strings pass
		return ErrMalformed
	}
	*e = Envelope{}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return ErrNotObject
	}
	var seen [3]bool
	var typeRaw []byte
	for it := (members{b: data, i: i + 1}); ; {
		key, val, ok := it.next()
		if !ok {
			break
		}
		var slot int
		switch string(key) {
		case `"type"`:
			slot = 0
			typeRaw = val
		case `"meta"`:
			slot = 1
			if err := e.Meta.decode(val); err != nil {
				return err
			}
		case `"payload"`:
			slot = 2
			e.Payload = val
		default:
			return fmt.Errorf("%w: %s", ErrUnknownField, truncate(key, 40))
		}
		if seen[slot] {
			return fmt.Errorf("%w: %s", ErrDuplicate, key)
		}
		seen[slot] = true
	}
	if typeRaw == nil {
		return ErrMissingType
	}
	var err error
	if e.Type, err = unquote(typeRaw); err != nil {
		return fmt.Errorf("%w: type must be a string", ErrInvalidType)
	}
	return ValidateType(e.Type)
}

// Encode encodes e. It is the one place envelopes are written, so every
// frame the edge sends has the same shape.
func Encode(e *Envelope) ([]byte, error) {
	var mb []byte
	if !e.Meta.IsZero() {
		var err error
		if mb, err = e.Meta.MarshalJSON(); err != nil {
			return nil, err
		}
	}
	b := make([]byte, 0, 32+2*len(e.Type)+len(mb)+len(e.Payload))
	b = append(b, `{"type":`...)
	b = appendJSONString(b, e.Type)
	if mb != nil {
		b = append(b, `,"meta":`...)
		b = append(b, mb...)
	}
	if len(e.Payload) > 0 {
		if !json.Valid(e.Payload) {
			return nil, fmt.Errorf("%w: payload is not valid JSON", ErrMalformed)
		}
		b = append(b, `,"payload":`...)
		b = append(b, e.Payload...)
	}
	return append(b, '}'), nil
}

// MarshalJSON makes an Envelope encode through Encode inside other values.
func (e Envelope) MarshalJSON() ([]byte, error) { return Encode(&e) }

// New builds an envelope whose payload is v encoded as JSON. A nil v leaves
// the payload out.
func New(typ string, v any) (*Envelope, error) {
	e := &Envelope{Type: typ}
	if v != nil {
		raw, ok := v.(json.RawMessage)
		if !ok {
			var err error
			if raw, err = json.Marshal(v); err != nil {
				return nil, fmt.Errorf("envelope: encode payload: %w", err)
			}
		}
		e.Payload = raw
	}
	return e, nil
}

func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			enc, _ := json.Marshal(s)
			return append(b, enc...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// The scanners below run only on input that json.Valid accepted, so they
// need no error paths.

// members walks the members of a JSON object; i starts just past its '{'.
type members struct {
	b []byte
	i int
}

// next returns the next member's key (with its quotes) and raw value.
func (m *members) next() (key, val []byte, ok bool) {
	b, i := m.b, skipSpace(m.b, m.i)
	if b[i] == '}' {
		return nil, nil, false
	}
	if b[i] == ',' {
		i = skipSpace(b, i+1)
	}
	kEnd := skipString(b, i)
	key = b[i:kEnd]
	i = skipSpace(b, kEnd)
	i = skipSpace(b, i+1) // the colon
	vEnd := skipValue(b, i)
	m.i = vEnd
	return key, b[i:vEnd], true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	i++
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1
		default:
			i++
		}
	}
	return i
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}
