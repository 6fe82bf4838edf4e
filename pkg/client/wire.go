package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
)

// Wire is the WebSocket subprotocol a client speaks, named as the edge
// names it (docs/protocol.md, "Binary wire").
type Wire string

// The wires.
const (
	// WireJSON ("natter"): one JSON envelope per text frame. The default.
	WireJSON Wire = wire.JSON
	// WireProtobuf ("natter.protobuf"): one natter.v1.Envelope per binary
	// frame, payloads of types with a schema as protobuf (Options.Schemas),
	// others as JSON text. The application API is the JSON wire's: the
	// client converts at the socket, so Send, Call and the handlers see
	// the same JSON payloads, except that a payload that came as protobuf
	// is the JSON form of its message (default values left out, enums by
	// name; 64-bit integers are turned back into JSON numbers).
	WireProtobuf Wire = wire.Protobuf
)

// LoadSchemas compiles the schemas shipped with Natter and the .proto
// files under dirs (each loaded recursively, import paths relative to it),
// as the edge's --schemas does, for Options.Schemas. Load them once and
// share them between clients: compiling takes milliseconds.
func LoadSchemas(dirs ...string) (wire.Types, error) {
	reg, err := schema.Load(schema.Config{Dirs: dirs})
	if err != nil {
		return nil, fmt.Errorf("client: schemas: %w", err)
	}
	return reg, nil
}

// toWire converts a JSON frame the client wrote into the connection's
// wire form; it returns frame itself on the JSON wire.
func (s *session) toWire(frame []byte) ([]byte, error) {
	if s.codec == nil {
		return frame, nil
	}
	return s.codec.JSONToProto(wire.Client, frame, maxReadSize)
}

// fromWire converts an inbound frame into its JSON form. ok is false for
// a frame of the other wire's opcode.
func (s *session) fromWire(binary bool, data []byte) (frame []byte, ok bool, err error) {
	if s.codec == nil {
		return data, !binary, nil
	}
	if !binary {
		return nil, false, nil
	}
	env, err := s.codec.FromProto(wire.Server, data)
	if err != nil {
		return nil, true, err
	}
	if md := s.codec.Types.Message(wire.Server, env.Type); md != nil && len(env.Payload) > 0 && has64(md, 0) {
		env.Payload = int64sAsNumbers(md, env.Payload)
	}
	b, err := envelope.Encode(env)
	return b, true, err
}

// protoSize returns the size of frame's protobuf form, for the size check
// of a JSON frame over MaxMessageSize on the protobuf wire.
func (c *Client) protoSize(frame []byte) (int, error) {
	b, err := c.codec.JSONToProto(wire.Client, frame, maxReadSize)
	return len(b), err
}

// has64 reports whether md has a 64-bit integer field, in itself or in
// the messages it holds (to a bounded depth: recursive messages).
func has64(md protoreflect.MessageDescriptor, depth int) bool {
	if depth > 8 {
		return true // deep: let int64sAsNumbers look
	}
	fs := md.Fields()
	for i := range fs.Len() {
		fd := fs.Get(i)
		if fd.IsMap() {
			if is64(fd.MapKey()) || is64(fd.MapValue()) {
				return true
			}
			if v := fd.MapValue(); v.Message() != nil && has64(v.Message(), depth+1) {
				return true
			}
			continue
		}
		if is64(fd) {
			return true
		}
		if m := fd.Message(); m != nil && !isWellKnown(m) && has64(m, depth+1) {
			return true
		}
	}
	return false
}

func is64(fd protoreflect.FieldDescriptor) bool {
	switch fd.Kind() {
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return true
	}
	return false
}

// isWellKnown reports the google.protobuf messages whose JSON form is
// not an object of their fields (Timestamp, Duration, wrappers, Struct).
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return strings.HasPrefix(string(md.FullName()), "google.protobuf.")
}

// int64sAsNumbers rewrites the 64-bit integers of a payload in protojson
// form, which are JSON strings ("ts":"1733..."), as JSON numbers, the form
// an application gets on the JSON wire and decodes into int64 fields. Map
// keys stay strings, as in any JSON. On any surprise it returns payload
// unchanged.
func int64sAsNumbers(md protoreflect.MessageDescriptor, payload []byte) []byte {
	d := json.NewDecoder(bytes.NewReader(payload))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return payload
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return payload
	}
	numbersIn(md, obj, 0)
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	if e.Encode(obj) != nil {
		return payload
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// numbersIn rewrites obj, the JSON of a message md, in place.
func numbersIn(md protoreflect.MessageDescriptor, obj map[string]any, depth int) {
	if depth > 100 || isWellKnown(md) {
		return
	}
	fs := md.Fields()
	for i := range fs.Len() {
		fd := fs.Get(i)
		key := fd.JSONName()
		val, ok := obj[key]
		if !ok {
			key = string(fd.Name())
			if val, ok = obj[key]; !ok {
				continue
			}
		}
		switch {
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				continue
			}
			for k, e := range m {
				m[k] = numberValue(fd.MapValue(), e, depth)
			}
		case fd.IsList():
			l, ok := val.([]any)
			if !ok {
				continue
			}
			for j, e := range l {
				l[j] = numberValue(fd, e, depth)
			}
		default:
			obj[key] = numberValue(fd, val, depth)
		}
	}
}

// numberValue returns one value of field fd with its 64-bit integers as
// numbers.
func numberValue(fd protoreflect.FieldDescriptor, v any, depth int) any {
	if is64(fd) {
		if s, ok := v.(string); ok && isDigits(s) {
			return json.Number(s)
		}
		return v
	}
	if m := fd.Message(); m != nil {
		if o, ok := v.(map[string]any); ok {
			numbersIn(m, o, depth+1)
		}
	}
	return v
}

// isDigits reports an optional minus followed by decimal digits.
func isDigits(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
