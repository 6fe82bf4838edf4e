package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// diagnoser walks a JSON payload against a message descriptor, the way
// protojson reads it, to name the first field that does not fit. It runs
// only on payloads protojson rejected (protojson's errors carry no field
// path), and before decoding payloads that mix open and closed messages
// (protojson's DiscardUnknown applies to a whole payload).
type diagnoser struct {
	dec  *json.Decoder
	open map[protoreflect.FullName]bool
	ext  protoregistry.ExtensionTypeResolver
}

// diagnose returns the first violation in data, or nil when it finds none,
// including when data is not JSON at all: the caller reports protojson's
// error then.
func diagnose(md protoreflect.MessageDescriptor, open map[protoreflect.FullName]bool, ext protoregistry.ExtensionTypeResolver, data []byte) *Violation {
	d := diagnoser{dec: json.NewDecoder(bytes.NewReader(data)), open: open, ext: ext}
	d.dec.UseNumber()
	tok, err := d.dec.Token()
	if err != nil || tok == nil {
		return nil // not JSON, or null: the empty message
	}
	v, _ := d.message(md, tok, "")
	return v
}

// The walk stops at the first violation or at the first JSON syntax error;
// functions return (nil, nil) when the value they read is fine.

// field checks a value of fd whose first token is tok.
func (d *diagnoser) field(fd protoreflect.FieldDescriptor, tok json.Token, path string) (*Violation, error) {
	if tok == nil {
		return nil, nil // null: the field is unset (for a Value, JSON null)
	}
	switch {
	case fd.IsList():
		if tok != json.Delim('[') {
			return mismatch(path, "must be an array")
		}
		for i := 0; d.dec.More(); i++ {
			if v, err := d.element(fd, path+"["+strconv.Itoa(i)+"]"); v != nil || err != nil {
				return v, err
			}
		}
		_, err := d.dec.Token() // ']'
		return nil, err
	case fd.IsMap():
		if tok != json.Delim('{') {
			return mismatch(path, "must be an object")
		}
		for d.dec.More() {
			kt, err := d.dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := kt.(string)
			p := path + "[" + strconv.Quote(key) + "]"
			if msg := checkKey(fd.MapKey().Kind(), key); msg != "" {
				return mismatch(p, msg)
			}
			if v, err := d.element(fd.MapValue(), p); v != nil || err != nil {
				return v, err
			}
		}
		_, err := d.dec.Token() // '}'
		return nil, err
	default:
		return d.single(fd, tok, path)
	}
}

// element checks the next value as one list item or map value of fd.
func (d *diagnoser) element(fd protoreflect.FieldDescriptor, path string) (*Violation, error) {
	tok, err := d.dec.Token()
	if err != nil {
		return nil, err
	}
	if tok == nil && (fd.Message() == nil || fd.Message().FullName() != "google.protobuf.Value") {
		return mismatch(path, "must not be null")
	}
	if tok == nil {
		return nil, nil
	}
	return d.single(fd, tok, path)
}

// single checks a non-null value of fd's kind whose first token is tok.
func (d *diagnoser) single(fd protoreflect.FieldDescriptor, tok json.Token, path string) (*Violation, error) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return d.message(fd.Message(), tok, path)
	case protoreflect.BoolKind:
		if _, ok := tok.(bool); !ok {
			return mismatch(path, "must be a boolean")
		}
	case protoreflect.StringKind, protoreflect.BytesKind:
		if _, ok := tok.(string); !ok {
			return mismatch(path, "must be a string")
		}
	case protoreflect.EnumKind:
		switch t := tok.(type) {
		case string:
			if fd.Enum().Values().ByName(protoreflect.Name(t)) == nil {
				return mismatch(path, "unknown enum value "+strconv.Quote(t))
			}
		case json.Number:
			if _, err := strconv.ParseInt(t.String(), 10, 32); err != nil {
				return mismatch(path, "must be an enum value")
			}
		default:
			return mismatch(path, "must be an enum value name")
		}
	default: // numbers: protojson takes a JSON number or a string holding one
		var s string
		switch t := tok.(type) {
		case json.Number:
			s = t.String()
		case string:
			s = t
		default:
			return mismatch(path, "must be a number")
		}
		if msg := checkNumber(fd.Kind(), s); msg != "" {
			return mismatch(path, msg)
		}
	}
	if delim, ok := tok.(json.Delim); ok && (delim == '{' || delim == '[') {
		return nil, d.skipRest()
	}
	return nil, nil
}

// message checks a value of md whose first token is tok.
func (d *diagnoser) message(md protoreflect.MessageDescriptor, tok json.Token, path string) (*Violation, error) {
	if md.FullName().Parent() == "google.protobuf" {
		return d.wellKnown(md, tok, path)
	}
	if tok != json.Delim('{') {
		return mismatch(path, "must be an object")
	}
	fields := md.Fields()
	var seen map[protoreflect.FieldNumber]bool
	var oneofs map[protoreflect.FullName]bool
	for d.dec.More() {
		kt, err := d.dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := kt.(string)
		var fd protoreflect.FieldDescriptor
		if strings.HasPrefix(key, "[") && strings.HasSuffix(key, "]") {
			if xt, _ := d.ext.FindExtensionByName(protoreflect.FullName(key[1 : len(key)-1])); xt != nil {
				fd = xt.TypeDescriptor()
			}
		} else if fd = fields.ByJSONName(key); fd == nil {
			fd = fields.ByTextName(key)
		}
		vt, err := d.dec.Token()
		if err != nil {
			return nil, err
		}
		if fd == nil {
			if !d.open[md.FullName()] {
				return &Violation{Field: join(path, key), Rule: RuleUnknownField, Message: "unknown field " + strconv.Quote(key)}, nil
			}
			if delim, ok := vt.(json.Delim); ok && (delim == '{' || delim == '[') {
				if err := d.skipRest(); err != nil {
					return nil, err
				}
			}
			continue
		}
		p := join(path, fd.JSONName())
		if seen[fd.Number()] {
			return mismatch(p, "duplicate field")
		}
		if seen == nil {
			seen = make(map[protoreflect.FieldNumber]bool)
		}
		seen[fd.Number()] = true
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && vt != nil {
			if oneofs[od.FullName()] {
				return mismatch(p, "another field of oneof "+string(od.Name())+" is already set")
			}
			if oneofs == nil {
				oneofs = make(map[protoreflect.FullName]bool)
			}
			oneofs[od.FullName()] = true
		}
		if v, err := d.field(fd, vt, p); v != nil || err != nil {
			return v, err
		}
	}
	_, err := d.dec.Token() // '}'
	return nil, err
}

// wellKnown checks the JSON shape of a google.protobuf message, which
// protojson encodes specially. Contents are not checked further.
func (d *diagnoser) wellKnown(md protoreflect.MessageDescriptor, tok json.Token, path string) (*Violation, error) {
	var ok bool
	var msg string
	switch md.Name() {
	case "Value":
		ok = true
	case "ListValue":
		ok, msg = tok == json.Delim('['), "must be an array"
	case "Timestamp":
		s, isString := tok.(string)
		_, err := time.Parse(time.RFC3339Nano, s)
		ok, msg = isString && err == nil, "must be an RFC 3339 date-time string"
	case "Duration":
		s, isString := tok.(string)
		_, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64)
		ok, msg = isString && strings.HasSuffix(s, "s") && err == nil, `must be a duration string such as "1.5s"`
	case "FieldMask", "StringValue", "BytesValue":
		_, ok = tok.(string)
		msg = "must be a string"
	case "BoolValue":
		_, ok = tok.(bool)
		msg = "must be a boolean"
	case "DoubleValue", "FloatValue", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value":
		switch tok.(type) {
		case json.Number, string:
			ok = true
		}
		msg = "must be a number"
	default: // Struct, Any, Empty and anything newer
		ok, msg = tok == json.Delim('{'), "must be an object"
	}
	if !ok {
		return mismatch(path, msg)
	}
	if delim, isDelim := tok.(json.Delim); isDelim && (delim == '{' || delim == '[') {
		return nil, d.skipRest()
	}
	return nil, nil
}

// skipRest skips to the end of the object or array whose opening token was
// just read.
func (d *diagnoser) skipRest() error {
	for depth := 1; depth > 0; {
		tok, err := d.dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}

func mismatch(path, msg string) (*Violation, error) {
	return &Violation{Field: path, Rule: RuleJSON, Message: msg}, nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// checkNumber checks s as protojson reads a number of kind k: an integer
// in range (exponents allowed when the value is whole), or for floats any
// number, "NaN", "Infinity" or "-Infinity".
func checkNumber(k protoreflect.Kind, s string) string {
	switch k {
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		switch s {
		case "NaN", "Infinity", "-Infinity":
			return ""
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return "must be a number"
		}
		if k == protoreflect.FloatKind && !math.IsInf(f, 0) && math.Abs(f) > math.MaxFloat32 {
			return "out of range for float"
		}
		return ""
	}
	lo, hi, name := intRange(k)
	var err error
	if lo == 0 {
		_, err = strconv.ParseUint(s, 10, bits(name))
	} else {
		_, err = strconv.ParseInt(s, 10, bits(name))
	}
	if err == nil {
		return ""
	}
	if errors.Is(err, strconv.ErrRange) {
		return "out of range for " + name
	}
	f, err := strconv.ParseFloat(s, 64) // "1e3", "-1", "1.5"
	if err != nil {
		return "must be an integer"
	}
	if f != math.Trunc(f) {
		return "must be a whole number"
	}
	if f < lo || f > hi {
		return "out of range for " + name
	}
	return ""
}

// intRange gives the range of an integer kind, and its name.
func intRange(k protoreflect.Kind) (lo, hi float64, name string) {
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return math.MinInt32, math.MaxInt32, "int32"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return 0, math.MaxUint32, "uint32"
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return 0, math.MaxUint64, "uint64"
	default:
		return math.MinInt64, math.MaxInt64, "int64"
	}
}

// checkKey checks a JSON object key as protojson reads a map key of kind k.
func checkKey(k protoreflect.Kind, key string) string {
	switch k {
	case protoreflect.StringKind:
		return ""
	case protoreflect.BoolKind:
		if key == "true" || key == "false" {
			return ""
		}
		return "map key must be true or false"
	}
	lo, _, name := intRange(k)
	var err error
	if lo == 0 {
		_, err = strconv.ParseUint(key, 10, bits(name))
	} else {
		_, err = strconv.ParseInt(key, 10, bits(name))
	}
	if err != nil {
		return "map key must be an " + name
	}
	return ""
}

func bits(name string) int {
	if strings.HasSuffix(name, "32") {
		return 32
	}
	return 64
}
