package schema

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
)

// Direction says which way a message travels.
type Direction uint8

// The directions. The same type may have a schema in each.
const (
	// Client is a message a client sends to the edge (natter.v1.client_type).
	Client = Direction(wire.Client)
	// Server is a message sent toward clients (natter.v1.server_type).
	Server = Direction(wire.Server)
)

// String returns "client" or "server".
func (d Direction) String() string {
	switch d {
	case Client:
		return "client"
	case Server:
		return "server"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// Config configures Load.
type Config struct {
	// Dirs are directories of user .proto files, loaded recursively in
	// addition to the schemas shipped in package schemas. Import paths are
	// relative to each directory; the shipped files import as
	// "natter/v1/options.proto", and "buf/validate/validate.proto" and the
	// google/protobuf files are built in (copies under Dirs are ignored, as
	// are exact copies of shipped files). Two different files with the same
	// import path are an error. Default: none.
	Dirs []string
	// Strict rejects types that have no schema in the message's direction:
	// Validate returns ErrUnknownType. Default false: they pass unchecked.
	Strict bool
}

// TypeInfo describes one type that has a schema.
type TypeInfo struct {
	// Type is the envelope type.
	Type string `json:"type"`
	// Direction is "client" or "server".
	Direction string `json:"direction"`
	// Message is the full name of the proto message, such as
	// "natter.chat.v1.SendMessage".
	Message string `json:"message"`
	// Schema is the JSON Schema (2020-12) of the payload as protojson
	// encodes the message, with the buf.validate rules JSON Schema can
	// express.
	Schema json.RawMessage `json:"schema"`
}

// Registry validates payloads against the compiled schemas. It is
// immutable after Load and safe for concurrent use.
type Registry struct {
	client map[string]*payloadType
	server map[string]*payloadType
	strict bool
	// open holds the messages with option (natter.v1.open) = true.
	open      map[protoreflect.FullName]bool
	ext       *dynamicpb.Types
	validator protovalidate.Validator
	files     *protoregistry.Files
	types     []TypeInfo
	index     []byte // ServeHTTP's body
}

// payloadType is everything Validate needs for one type, computed at Load.
type payloadType struct {
	desc   protoreflect.MessageDescriptor
	decode protojson.UnmarshalOptions
	// precheck walks the JSON before decoding: the payload mixes open and
	// closed messages, and decode discards unknown keys in all of them.
	precheck bool
}

// Load compiles the shipped schemas and the .proto files under cfg.Dirs,
// maps types to messages, and prepares one validator for all of them. All
// the work happens here, once: Validate only decodes and checks. Every
// error caused by the configuration or the schemas wraps ErrInvalidConfig
// and names the file or message at fault.
func Load(cfg Config) (*Registry, error) {
	srcs, err := gather(cfg.Dirs)
	if err != nil {
		return nil, err
	}
	files, err := compile(context.Background(), srcs)
	if err != nil {
		return nil, err
	}
	reg, err := registryOf(files)
	if err != nil {
		return nil, err
	}
	ext := dynamicpb.NewTypes(reg)
	if err := checkExtensions(ext); err != nil {
		return nil, err
	}

	r := &Registry{
		client: make(map[string]*payloadType),
		server: make(map[string]*payloadType),
		strict: cfg.Strict,
		open:   make(map[protoreflect.FullName]bool),
		ext:    ext,
		files:  reg,
	}
	type mapping struct {
		dir  Direction
		typ  string
		desc protoreflect.MessageDescriptor
	}
	var mappings []mapping
	for _, lf := range files {
		f, err := reg.FindFileByPath(lf.Path())
		if err != nil {
			return nil, fmt.Errorf("schema: %w", err)
		}
		err = eachMessage(f.Messages(), func(md protoreflect.MessageDescriptor) error {
			o, err := readOptions(md)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, srcs[f.Path()].origin, err)
			}
			if o.open {
				r.open[md.FullName()] = true
			}
			for _, t := range o.client {
				mappings = append(mappings, mapping{Client, t, md})
			}
			for _, t := range o.server {
				mappings = append(mappings, mapping{Server, t, md})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}

	var descs []protoreflect.MessageDescriptor
	for _, m := range mappings {
		where := fmt.Sprintf("%s (%s)", m.desc.FullName(), srcs[m.desc.ParentFile().Path()].origin)
		if err := envelope.ValidateType(m.typ); err != nil {
			return nil, fmt.Errorf("%w: %s: %s type: %w", ErrInvalidConfig, where, m.dir, err)
		}
		byType := r.byDirection(m.dir)
		if prev, ok := byType[m.typ]; ok {
			if prev.desc == m.desc {
				continue // the same option repeated
			}
			return nil, fmt.Errorf("%w: %s type %q is mapped to both %s (%s) and %s", ErrInvalidConfig,
				m.dir, m.typ, prev.desc.FullName(), srcs[prev.desc.ParentFile().Path()].origin, where)
		}
		byType[m.typ] = r.newPayloadType(m.desc)
		if !slices.Contains(descs, m.desc) {
			descs = append(descs, m.desc)
		}
	}

	r.validator, err = protovalidate.New(
		protovalidate.WithMessageDescriptors(descs...),
		protovalidate.WithDisableLazy(), // every message is known now: no locks later
		protovalidate.WithExtensionTypeResolver(ext),
	)
	if err != nil {
		return nil, fmt.Errorf("schema: validator: %w", err)
	}
	// Rules protovalidate cannot compile (a bad CEL expression, a string rule
	// on an int field) surface on first use: use every message now.
	for _, md := range descs {
		var cerr *protovalidate.CompilationError
		if err := r.validator.Validate(dynamicpb.NewMessage(md)); errors.As(err, &cerr) {
			return nil, fmt.Errorf("%w: %s (%s): %w", ErrInvalidConfig, md.FullName(), srcs[md.ParentFile().Path()].origin, err)
		}
	}

	if err := r.buildIndex(); err != nil {
		return nil, err
	}
	return r, nil
}

// checkExtensions makes sure the field numbers readOptions looks for belong
// to natter.v1's options, and not to another extension of MessageOptions
// that some user file declared with the same number.
func checkExtensions(ext *dynamicpb.Types) error {
	for num, name := range map[protoreflect.FieldNumber]protoreflect.FullName{
		protoreflect.FieldNumber(extClientType): "natter.v1.client_type",
		protoreflect.FieldNumber(extServerType): "natter.v1.server_type",
		protoreflect.FieldNumber(extOpen):       "natter.v1.open",
	} {
		xt, err := ext.FindExtensionByNumber("google.protobuf.MessageOptions", num)
		if err != nil {
			return fmt.Errorf("schema: shipped option %s is missing: %w", name, err)
		}
		if got := xt.TypeDescriptor().FullName(); got != name {
			return fmt.Errorf("%w: extension %s of google.protobuf.MessageOptions uses number %d, reserved for %s", ErrInvalidConfig, got, num, name)
		}
	}
	return nil
}

// eachMessage calls fn for every message in mds and their nested messages,
// but not for map entries.
func eachMessage(mds protoreflect.MessageDescriptors, fn func(protoreflect.MessageDescriptor) error) error {
	for i := range mds.Len() {
		md := mds.Get(i)
		if md.IsMapEntry() {
			continue
		}
		if err := fn(md); err != nil {
			return err
		}
		if err := eachMessage(md.Messages(), fn); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) byDirection(dir Direction) map[string]*payloadType {
	switch dir {
	case Client:
		return r.client
	case Server:
		return r.server
	}
	return nil
}

// newPayloadType prepares the decoding of md. protojson's DiscardUnknown
// covers a whole payload, so a payload whose messages are all open or all
// closed is decoded in one pass, and one that mixes them is walked first.
func (r *Registry) newPayloadType(md protoreflect.MessageDescriptor) *payloadType {
	rootOpen := r.open[md.FullName()]
	mixed, required := false, false
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] || md.FullName().Parent() == "google.protobuf" {
			return // well-known types have no unknown keys of their own
		}
		seen[md.FullName()] = true
		if !md.IsMapEntry() && r.open[md.FullName()] != rootOpen {
			mixed = true
		}
		fields := md.Fields()
		for i := range fields.Len() {
			if fields.Get(i).Cardinality() == protoreflect.Required {
				required = true
			}
			if m := fields.Get(i).Message(); m != nil {
				walk(m)
			}
		}
	}
	walk(md)
	return &payloadType{
		desc: md,
		decode: protojson.UnmarshalOptions{
			DiscardUnknown: rootOpen || mixed,
			// Checking proto2 required fields walks the whole message again:
			// skip it when there are none.
			AllowPartial: !required,
			Resolver:     r.ext,
		},
		precheck: mixed,
	}
}

// buildIndex computes Types and ServeHTTP's body.
func (r *Registry) buildIndex() error {
	schemas := make(map[protoreflect.FullName]json.RawMessage)
	for _, dir := range []Direction{Client, Server} {
		for typ, pt := range r.byDirection(dir) {
			s, ok := schemas[pt.desc.FullName()]
			if !ok {
				var err error
				if s, err = jsonSchema(pt.desc, r.open); err != nil {
					return fmt.Errorf("schema: JSON Schema of %s: %w", pt.desc.FullName(), err)
				}
				schemas[pt.desc.FullName()] = s
			}
			r.types = append(r.types, TypeInfo{Type: typ, Direction: dir.String(), Message: string(pt.desc.FullName()), Schema: s})
		}
	}
	slices.SortFunc(r.types, func(a, b TypeInfo) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(a.Direction, b.Direction) // "client" < "server"
	})
	var err error
	r.index, err = json.Marshal(struct {
		Types []TypeInfo `json:"types"`
	}{r.types})
	return err
}

// Validate checks payload, the raw JSON payload of an envelope of type typ
// travelling in direction dir. An empty payload or JSON null is the empty
// message.
//
// It returns nil when the payload is valid, or when typ has no schema in
// that direction and the registry is not Strict (ErrUnknownType if it is).
// A payload that is not the JSON encoding of the message, or breaks its
// buf.validate rules, gets a *ValidationError listing why.
func (r *Registry) Validate(dir Direction, typ string, payload []byte) error {
	byType := r.byDirection(dir)
	if byType == nil {
		return fmt.Errorf("schema: invalid direction %d", dir)
	}
	pt := byType[typ]
	if pt == nil {
		if r.strict {
			return fmt.Errorf("%w: %q (%s)", ErrUnknownType, typ, dir)
		}
		return nil
	}
	msg := dynamicpb.NewMessage(pt.desc)
	if !isNull(payload) {
		if pt.precheck {
			if v := diagnose(pt.desc, r.open, r.ext, payload); v != nil {
				return &ValidationError{Type: typ, Violations: []Violation{*v}}
			}
		}
		if err := pt.decode.Unmarshal(payload, msg); err != nil {
			v := diagnose(pt.desc, r.open, r.ext, payload)
			if v == nil {
				v = &Violation{Rule: RuleJSON, Message: protojsonMessage(err)}
			}
			return &ValidationError{Type: typ, Violations: []Violation{*v}}
		}
	}
	err := r.validator.Validate(msg)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		return fmt.Errorf("schema: validate %q: %w", typ, err) // a CEL runtime error
	}
	out := &ValidationError{Type: typ, Violations: make([]Violation, len(verr.Violations))}
	for i, v := range verr.Violations {
		out.Violations[i] = Violation{
			Field:   jsonPath(pt.desc, v.Proto.GetField()),
			Rule:    v.Proto.GetRuleId(),
			Message: v.Proto.GetMessage(),
		}
	}
	return out
}

// Known reports whether typ has a schema in direction dir.
func (r *Registry) Known(dir Direction, typ string) bool {
	return r.byDirection(dir)[typ] != nil
}

// Message returns the message typ maps to in direction dir, or nil when
// it has none: the registry is the edge's wire.Types, which converts
// payloads between JSON and protobuf.
func (r *Registry) Message(dir wire.Direction, typ string) protoreflect.MessageDescriptor {
	if pt := r.byDirection(Direction(dir))[typ]; pt != nil {
		return pt.desc
	}
	return nil
}

// DescriptorSet returns every compiled file, the shipped and user schemas
// and what they import, as a serialized google.protobuf.FileDescriptorSet
// with each file after its imports: what a protobuf runtime in another
// language needs to encode the payloads of the binary wire (natter-gen-ts
// embeds it for the TypeScript client).
func (r *Registry) DescriptorSet() ([]byte, error) {
	var set descriptorpb.FileDescriptorSet
	done := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if done[fd.Path()] {
			return
		}
		done[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	var paths []string
	r.files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		paths = append(paths, fd.Path())
		return true
	})
	slices.Sort(paths)
	for _, p := range paths {
		fd, err := r.files.FindFileByPath(p)
		if err != nil {
			return nil, err
		}
		add(fd)
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&set)
}

// Types lists the types that have a schema, sorted by type, then
// direction. The caller owns the slice and its schemas.
func (r *Registry) Types() []TypeInfo {
	out := slices.Clone(r.types)
	for i := range out {
		out[i].Schema = bytes.Clone(out[i].Schema)
	}
	return out
}

// ServeHTTP answers GET (and HEAD) with {"types": [TypeInfo...]}, and
// other methods with 405.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(r.index)))
	if req.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(r.index)
}

// isNull reports whether a payload stands for the empty message: absent,
// empty or JSON null.
func isNull(p []byte) bool {
	p = bytes.TrimSpace(p)
	return len(p) == 0 || string(p) == "null"
}

// protojsonMessage is protojson's error text without its "proto:" prefix,
// for a payload the diagnoser could not place.
func protojsonMessage(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "proto:")
	return strings.TrimLeft(s, " \u00a0")
}
