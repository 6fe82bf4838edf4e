package client

import (
	"fmt"

	"github.com/natter/natter/internal/schema"
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
	// name; 64-bit integers as JSON numbers, as pkg/wire converts them).
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
	b, err := s.codec.ProtoToJSON(wire.Server, data)
	return b, true, err
}

// protoSize returns the size of frame's protobuf form, for the size check
// on the protobuf wire (checkSize).
func (c *Client) protoSize(frame []byte) (int, error) {
	b, err := c.codec.JSONToProto(wire.Client, frame, maxReadSize)
	return len(b), err
}
