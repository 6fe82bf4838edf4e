// Package wire converts Natter envelopes between their two forms: the JSON
// object of the "natter" subprotocol and of every NATS message, and the
// protobuf message natter.v1.Envelope (package natterv1) of the
// "natter.protobuf" subprotocol, one per binary WebSocket frame
// (docs/protocol.md, "Binary wire").
//
// The envelope converts field by field. A payload converts through its
// type's schema: a type with a schema in the frame's direction travels as
// the protobuf encoding of its message on the binary wire and as protojson
// on the JSON one; any other payload (no schema, a system type, or JSON the
// message cannot hold, such as an open message's unknown keys) travels as
// JSON text in both. The protobuf work is google.golang.org/protobuf's:
// dynamicpb messages from the schemas' descriptors, protojson and
// proto.Marshal. One departure from protojson: a payload that came as
// protobuf has its 64-bit integers as JSON numbers, not strings, so that a
// worker decodes what a JSON client and a protobuf client send alike.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// The WebSocket subprotocols: JSON text frames, and natter.v1.Envelope in
// binary frames.
const (
	JSON     = "natter"
	Protobuf = "natter.protobuf"
)

// Direction says which way a message travels, which picks its schema: a
// type may map to one message from clients and another toward them.
type Direction uint8

// The directions, as in the schemas' natter.v1.client_type and
// natter.v1.server_type options.
const (
	Client Direction = 1 // client to edge
	Server Direction = 2 // toward clients
)

// Types finds the schema message of a type. The edge's schema registry is
// one; a client loads the same .proto files (client.LoadSchemas).
type Types interface {
	// Message returns the message typ maps to in direction dir, or nil
	// when typ has no schema in that direction.
	Message(dir Direction, typ string) protoreflect.MessageDescriptor
}

// ErrMalformed wraps every reason a protobuf envelope does not convert.
var ErrMalformed = errors.New("wire: malformed protobuf envelope")

// Codec converts envelopes. The zero value converts every payload as JSON
// text; Types adds the schemas. It is safe for concurrent use.
type Codec struct {
	Types Types
}

// ToProto returns env's protobuf form for direction dir.
func (c *Codec) ToProto(dir Direction, env *envelope.Envelope) ([]byte, error) {
	pb := natterv1.Envelope{Type: env.Type}
	if !env.Meta.IsZero() {
		m, err := metaToProto(&env.Meta)
		if err != nil {
			return nil, err
		}
		pb.Meta = m
	}
	if p := bytes.TrimSpace(env.Payload); len(p) > 0 && string(p) != "null" {
		if b, ok := c.payloadToProto(dir, env.Type, p); ok {
			pb.Body = &natterv1.Envelope_Payload{Payload: b}
		} else {
			pb.Body = &natterv1.Envelope_Json{Json: string(p)}
		}
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&pb)
}

// JSONToProto converts a JSON envelope (at most maxSize bytes, 0 for
// envelope.DefaultMaxSize) into its protobuf form.
func (c *Codec) JSONToProto(dir Direction, data []byte, maxSize int) ([]byte, error) {
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, data, maxSize); err != nil {
		return nil, err
	}
	return c.ToProto(dir, &env)
}

// FromProto decodes a protobuf envelope travelling in direction dir into
// its JSON form's Envelope. The result is not checked beyond what the
// conversion needs: the JSON decoder's rules apply to it as to any JSON
// frame (ProtoToJSON encodes it for that).
func (c *Codec) FromProto(dir Direction, data []byte) (*envelope.Envelope, error) {
	var pb natterv1.Envelope
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &pb); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	env := &envelope.Envelope{Type: pb.Type}
	if pb.Meta != nil {
		if err := metaFromProto(pb.Meta, &env.Meta); err != nil {
			return nil, err
		}
	}
	switch b := pb.Body.(type) {
	case *natterv1.Envelope_Json:
		if !json.Valid([]byte(b.Json)) {
			return nil, fmt.Errorf("%w: json is not one JSON value", ErrMalformed)
		}
		env.Payload = json.RawMessage(b.Json)
	case *natterv1.Envelope_Payload:
		md := c.message(dir, pb.Type)
		if md == nil {
			return nil, fmt.Errorf("%w: type %q has no schema for a protobuf payload; send it as json", ErrMalformed, pb.Type)
		}
		msg := dynamicpb.NewMessage(md)
		if err := proto.Unmarshal(b.Payload, msg); err != nil {
			return nil, fmt.Errorf("%w: payload is not a %s: %v", ErrMalformed, md.FullName(), err)
		}
		j, err := protojson.Marshal(msg)
		if err != nil {
			return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
		}
		env.Payload = int64sAsNumbers(md, j)
	}
	return env, nil
}

// CorrelationID returns the meta.correlationId of a protobuf envelope, or
// "" when it has none or is not one: the envelope alone is decoded, not
// its payload, for answering a frame refused before conversion.
func CorrelationID(data []byte) string {
	var pb natterv1.Envelope
	if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &pb) != nil {
		return ""
	}
	return pb.GetMeta().GetCorrelationId()
}

// ProtoToJSON converts a protobuf envelope into the JSON form's bytes.
func (c *Codec) ProtoToJSON(dir Direction, data []byte) ([]byte, error) {
	env, err := c.FromProto(dir, data)
	if err != nil {
		return nil, err
	}
	return envelope.Encode(env)
}

func (c *Codec) message(dir Direction, typ string) protoreflect.MessageDescriptor {
	if c.Types == nil {
		return nil
	}
	return c.Types.Message(dir, typ)
}

// payloadToProto encodes a JSON payload as its schema message, or reports
// that it stays JSON: no schema, or JSON the message does not hold whole.
func (c *Codec) payloadToProto(dir Direction, typ string, p []byte) ([]byte, bool) {
	md := c.message(dir, typ)
	if md == nil {
		return nil, false
	}
	msg := dynamicpb.NewMessage(md)
	if err := protojson.Unmarshal(p, msg); err != nil {
		return nil, false
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, false
	}
	return b, true
}

// The meta keys that are protobuf fields; every other key goes in extra.
var metaFields = []string{"correlationId", "timeoutMs", "timestamp", "room", "offset", "epoch"}

func metaToProto(m *envelope.Meta) (*natterv1.Meta, error) {
	out := &natterv1.Meta{}
	if m.CorrelationID != "" {
		out.CorrelationId = &m.CorrelationID
	}
	if m.TimeoutMs != 0 {
		out.TimeoutMs = &m.TimeoutMs
	}
	if m.Timestamp != 0 {
		out.Timestamp = &m.Timestamp
	}
	if m.Room != "" {
		out.Room = &m.Room
	}
	if len(m.Extra) == 0 {
		return out, nil
	}
	rest := make(map[string]json.RawMessage, len(m.Extra))
	for k, v := range m.Extra {
		switch k {
		case "offset":
			if n, err := strconv.ParseUint(string(v), 10, 64); err == nil {
				out.Offset = &n
				continue
			}
		case "epoch":
			var s string
			if json.Unmarshal(v, &s) == nil {
				out.Epoch = &s
				continue
			}
		}
		rest[k] = v
	}
	if len(rest) > 0 {
		b, err := json.Marshal(rest) // sorted keys
		if err != nil {
			return nil, err
		}
		out.Extra = string(b)
	}
	return out, nil
}

func metaFromProto(pm *natterv1.Meta, m *envelope.Meta) error {
	m.CorrelationID = pm.GetCorrelationId()
	m.TimeoutMs = pm.GetTimeoutMs()
	m.Timestamp = pm.GetTimestamp()
	m.Room = pm.GetRoom()
	if pm.Extra != "" {
		if !utf8.ValidString(pm.Extra) {
			return fmt.Errorf("%w: meta.extra is not UTF-8", ErrMalformed)
		}
		if err := json.Unmarshal([]byte(pm.Extra), &m.Extra); err != nil || m.Extra == nil {
			return fmt.Errorf("%w: meta.extra must be a JSON object", ErrMalformed)
		}
		for k := range m.Extra {
			// offset and epoch that are not a position (a number, a
			// string) travel in extra; those that are, as fields.
			if slices.Contains(metaFields, k) && (k == "offset" && pm.Offset != nil || k == "epoch" && pm.Epoch != nil || k != "offset" && k != "epoch") {
				return fmt.Errorf("%w: meta.extra repeats the field %q", ErrMalformed, k)
			}
		}
	}
	if pm.Offset != nil || pm.Epoch != nil {
		if m.Extra == nil {
			m.Extra = make(map[string]json.RawMessage, 2)
		}
		if pm.Offset != nil {
			m.Extra["offset"] = strconv.AppendUint(nil, *pm.Offset, 10)
		}
		if pm.Epoch != nil {
			b, _ := json.Marshal(*pm.Epoch)
			m.Extra["epoch"] = b
		}
	}
	return nil
}
