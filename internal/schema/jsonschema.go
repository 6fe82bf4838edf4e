package schema

import (
	"encoding/json"
	"math"
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// jsonSchemaDialect is the JSON Schema version of TypeInfo.Schema.
const jsonSchemaDialect = "https://json-schema.org/draft/2020-12/schema"

// object is one JSON Schema object. encoding/json sorts its keys, so the
// output is stable.
type object = map[string]any

// schemaGen builds the JSON Schema of one payload message: the message as
// protojson encodes it, with the buf.validate rules that JSON Schema can
// express. Messages it refers to go to $defs, keyed by full name.
type schemaGen struct {
	root protoreflect.MessageDescriptor
	open map[protoreflect.FullName]bool
	defs object
}

// jsonSchema returns the JSON Schema (2020-12) of md's JSON encoding.
func jsonSchema(md protoreflect.MessageDescriptor, open map[protoreflect.FullName]bool) (json.RawMessage, error) {
	g := &schemaGen{root: md, open: open, defs: object{}}
	s := g.message(md)
	s["$schema"] = jsonSchemaDialect
	s["title"] = string(md.FullName())
	if len(g.defs) > 0 {
		s["$defs"] = g.defs
	}
	return json.Marshal(s)
}

// message is the schema of md's own object.
func (g *schemaGen) message(md protoreflect.MessageDescriptor) object {
	s := object{"type": "object"}
	describe(s, md)
	props := object{}
	var required []string
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		fs, req := g.field(fd)
		props[fd.JSONName()] = fs
		if req {
			required = append(required, fd.JSONName())
		}
	}
	s["properties"] = props
	if len(required) > 0 {
		s["required"] = required
	}
	if !g.open[md.FullName()] {
		s["additionalProperties"] = false
	}
	return s
}

// ref is the schema of a field of message type md: a well-known type
// inline, anything else a $ref.
func (g *schemaGen) ref(md protoreflect.MessageDescriptor) object {
	if s := g.wellKnown(md); s != nil {
		return s
	}
	if md.FullName() == g.root.FullName() {
		return object{"$ref": "#"}
	}
	name := string(md.FullName())
	if _, ok := g.defs[name]; !ok {
		g.defs[name] = nil // a recursive message finds itself here
		g.defs[name] = g.message(md)
	}
	return object{"$ref": "#/$defs/" + name}
}

// field is the schema of fd's JSON value, and whether buf.validate marks
// it required.
func (g *schemaGen) field(fd protoreflect.FieldDescriptor) (object, bool) {
	rules, _ := protovalidate.ResolveFieldRules(fd) // a broken rule fails Load elsewhere
	var s object
	switch {
	case fd.IsMap():
		vs := g.single(fd.MapValue())
		applyRules(vs, rules.GetMap().GetValues())
		s = object{"type": "object", "additionalProperties": vs}
		if kp := keyPattern(fd.MapKey().Kind()); kp != "" {
			s["propertyNames"] = object{"pattern": kp}
		}
		if r := rules.GetMap(); r != nil {
			if r.HasMinPairs() {
				s["minProperties"] = r.GetMinPairs()
			}
			if r.HasMaxPairs() {
				s["maxProperties"] = r.GetMaxPairs()
			}
		}
	case fd.IsList():
		is := g.single(fd)
		applyRules(is, rules.GetRepeated().GetItems())
		s = object{"type": "array", "items": is}
		if r := rules.GetRepeated(); r != nil {
			if r.HasMinItems() {
				s["minItems"] = r.GetMinItems()
			}
			if r.HasMaxItems() {
				s["maxItems"] = r.GetMaxItems()
			}
			if r.GetUnique() {
				s["uniqueItems"] = true
			}
		}
	default:
		s = g.single(fd)
		applyRules(s, rules)
	}
	describe(s, fd) // 2020-12 allows keywords next to $ref
	return s, rules.GetRequired()
}

// single is the schema of one value of fd's kind, ignoring its cardinality.
func (g *schemaGen) single(fd protoreflect.FieldDescriptor) object {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return g.ref(fd.Message())
	case protoreflect.BoolKind:
		return object{"type": "boolean"}
	case protoreflect.StringKind:
		return object{"type": "string"}
	case protoreflect.BytesKind:
		return object{"type": "string", "contentEncoding": "base64"}
	case protoreflect.EnumKind:
		ed := fd.Enum()
		if ed.FullName() == "google.protobuf.NullValue" {
			return object{"type": "null"}
		}
		names := make([]string, ed.Values().Len())
		for i := range names {
			names[i] = string(ed.Values().Get(i).Name())
		}
		return object{"type": "string", "enum": names}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return object{"type": "integer", "minimum": -1 << 31, "maximum": 1<<31 - 1}
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return object{"type": "integer", "minimum": 0, "maximum": 1<<32 - 1}
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		// protojson writes 64-bit integers as strings and reads both.
		return object{"type": []string{"integer", "string"}, "pattern": "^-?[0-9]+$"}
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return object{"type": []string{"integer", "string"}, "minimum": 0, "pattern": "^[0-9]+$"}
	default: // float, double
		return object{"anyOf": []object{
			{"type": "number"},
			{"type": "string", "enum": []string{"NaN", "Infinity", "-Infinity"}},
		}}
	}
}

// wellKnown is the schema of a google.protobuf message that protojson
// encodes specially, or nil.
func (g *schemaGen) wellKnown(md protoreflect.MessageDescriptor) object {
	if md.FullName().Parent() != "google.protobuf" {
		return nil
	}
	switch md.Name() {
	case "Value":
		return object{"description": "any JSON value"}
	case "Struct":
		return object{"type": "object"}
	case "ListValue":
		return object{"type": "array"}
	case "Timestamp":
		return object{"type": "string", "format": "date-time"}
	case "Duration":
		return object{"type": "string", "pattern": `^-?[0-9]+(\.[0-9]+)?s$`}
	case "FieldMask":
		return object{"type": "string"}
	case "Empty":
		return object{"type": "object", "additionalProperties": false}
	case "Any":
		return object{"type": "object", "properties": object{"@type": object{"type": "string"}}, "required": []string{"@type"}}
	case "BoolValue", "StringValue", "BytesValue", "DoubleValue", "FloatValue",
		"Int32Value", "Int64Value", "UInt32Value", "UInt64Value":
		return g.single(md.Fields().ByName("value"))
	}
	return nil
}

// applyRules maps the buf.validate rules that JSON Schema can express onto
// s, the schema of one scalar value. Others (CEL, prefixes, ...) are left to
// Validate.
func applyRules(s object, rules *validate.FieldRules) {
	if rules == nil {
		return
	}
	if r := rules.GetString(); r != nil {
		if r.HasLen() {
			s["minLength"], s["maxLength"] = r.GetLen(), r.GetLen()
		}
		if r.HasMinLen() {
			s["minLength"] = r.GetMinLen()
		}
		if r.HasMaxLen() {
			s["maxLength"] = r.GetMaxLen()
		}
		if r.HasPattern() {
			s["pattern"] = r.GetPattern()
		}
		if r.HasConst() {
			s["const"] = r.GetConst()
		}
		if len(r.GetIn()) > 0 {
			s["enum"] = r.GetIn()
		}
		switch {
		case r.GetEmail():
			s["format"] = "email"
		case r.GetHostname():
			s["format"] = "hostname"
		case r.GetIpv4():
			s["format"] = "ipv4"
		case r.GetIpv6():
			s["format"] = "ipv6"
		case r.GetUri():
			s["format"] = "uri"
		case r.GetUriRef():
			s["format"] = "uri-reference"
		case r.GetUuid():
			s["format"] = "uuid"
		}
		return
	}
	// Numeric rules have the same field names for every type: read them by
	// reflection rather than once per type.
	refl := rules.ProtoReflect()
	typ := refl.WhichOneof(refl.Descriptor().Oneofs().ByName("type"))
	if typ == nil || typ.Message() == nil {
		return
	}
	nr := refl.Get(typ).Message()
	for name, key := range map[protoreflect.Name]string{
		"gte": "minimum", "lte": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum", "const": "const",
	} {
		fd := nr.Descriptor().Fields().ByName(name)
		if fd == nil || !nr.Has(fd) {
			continue
		}
		switch v := nr.Get(fd).Interface().(type) {
		case int32, int64, uint32, uint64, bool:
			s[key] = v
		case float32:
			if f := float64(v); !math.IsNaN(f) && !math.IsInf(f, 0) {
				s[key] = f
			}
		case float64:
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				s[key] = v
			}
		}
	}
}

// keyPattern constrains the JSON keys of a map with non-string keys.
func keyPattern(k protoreflect.Kind) string {
	switch k {
	case protoreflect.StringKind:
		return ""
	case protoreflect.BoolKind:
		return "^(true|false)$"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return "^[0-9]+$"
	default:
		return "^-?[0-9]+$"
	}
}

// describe sets s's description from the leading comment of d.
func describe(s object, d protoreflect.Descriptor) {
	loc := d.ParentFile().SourceLocations().ByDescriptor(d)
	c := strings.TrimSpace(loc.LeadingComments)
	if c == "" {
		return
	}
	lines := strings.Split(c, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	s["description"] = strings.Join(lines, "\n")
}
