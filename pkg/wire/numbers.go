package wire

import (
	"bytes"
	"encoding/json"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// int64sAsNumbers rewrites the 64-bit integers of md's payload in
// protojson form, JSON strings ("ts":"1733..."), as JSON numbers: the form
// a JSON client sends and a worker decodes into int64 fields. Map keys stay
// strings, as in any JSON. A message without such a field, and any
// surprise, return payload unchanged.
func int64sAsNumbers(md protoreflect.MessageDescriptor, payload []byte) []byte {
	if !has64(md, 0) {
		return payload
	}
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
