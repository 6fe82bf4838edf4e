package schema

import (
	"errors"
	"strconv"
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var (
	// ErrUnknownType is returned by Validate, in Strict mode only, for a type
	// that has no schema in that direction.
	ErrUnknownType = errors.New("schema: no schema for type")
	// ErrInvalidConfig wraps every error Load returns for a bad Config or
	// bad schemas: missing directories, .proto files that do not compile,
	// invalid or duplicate type mappings, rules protovalidate cannot compile.
	ErrInvalidConfig = errors.New("schema: invalid config")
	// ErrInvalidPayload matches every *ValidationError with errors.Is.
	ErrInvalidPayload = errors.New("schema: invalid payload")
)

// Rules of the violations that come from decoding rather than from
// buf.validate.
const (
	// RuleUnknownField: a JSON key the message does not declare, in a
	// message that is not open. Field is the key's path.
	RuleUnknownField = "unknown_field"
	// RuleJSON: the payload is not the JSON encoding of the message: a
	// wrong JSON type, a number out of range, a duplicate key, or not JSON
	// at all. Field is the offending path when it is known, else "".
	RuleJSON = "json"
)

// Violation is one reason a payload was rejected.
type Violation struct {
	// Field is the path of the offending value with JSON field names, such
	// as "room", "items[0].name" or `labels["k"]`; "" for the payload as a
	// whole.
	Field string `json:"field"`
	// Rule is the buf.validate rule id, such as "string.min_len", or
	// RuleUnknownField or RuleJSON.
	Rule string `json:"rule"`
	// Message is for humans.
	Message string `json:"message"`
}

// ValidationError is returned by Validate for a payload that does not match
// its type's schema. It matches ErrInvalidPayload with errors.Is.
type ValidationError struct {
	Type       string
	Violations []Violation
}

// Error lists the violations on one line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("schema: invalid ")
	b.WriteString(strconv.Quote(e.Type))
	b.WriteString(" payload")
	for i, v := range e.Violations {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		if v.Field != "" {
			b.WriteString(v.Field)
			b.WriteString(": ")
		}
		b.WriteString(v.Message)
		b.WriteString(" [")
		b.WriteString(v.Rule)
		b.WriteString("]")
	}
	return b.String()
}

// Unwrap makes a *ValidationError match ErrInvalidPayload.
func (e *ValidationError) Unwrap() error { return ErrInvalidPayload }

// jsonPath renders a protovalidate field path with JSON field names, the
// names a client wrote, starting from the message md. Subscripts are
// rendered as protovalidate's FieldPathString does.
func jsonPath(md protoreflect.MessageDescriptor, path *validate.FieldPath) string {
	var b strings.Builder
	for i, el := range path.GetElements() {
		if i > 0 {
			b.WriteByte('.')
		}
		var fd protoreflect.FieldDescriptor
		if md != nil {
			fd = md.Fields().ByNumber(protoreflect.FieldNumber(el.GetFieldNumber()))
		}
		if fd != nil {
			b.WriteString(fd.JSONName())
			switch {
			case fd.IsMap():
				md = fd.MapValue().Message()
			default:
				md = fd.Message()
			}
		} else {
			b.WriteString(el.GetFieldName()) // an extension, or a path we cannot follow
			md = nil
		}
		var sub string
		switch el.WhichSubscript() {
		case validate.FieldPathElement_Index_case:
			sub = strconv.FormatUint(el.GetIndex(), 10)
		case validate.FieldPathElement_BoolKey_case:
			sub = strconv.FormatBool(el.GetBoolKey())
		case validate.FieldPathElement_IntKey_case:
			sub = strconv.FormatInt(el.GetIntKey(), 10)
		case validate.FieldPathElement_UintKey_case:
			sub = strconv.FormatUint(el.GetUintKey(), 10)
		case validate.FieldPathElement_StringKey_case:
			sub = strconv.Quote(el.GetStringKey())
		default:
			continue
		}
		b.WriteByte('[')
		b.WriteString(sub)
		b.WriteByte(']')
	}
	return b.String()
}
