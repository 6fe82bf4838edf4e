package schema

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Field numbers of the extensions in natter/v1/options.proto.
const (
	extClientType protowire.Number = 51000
	extServerType protowire.Number = 51001
	extOpen       protowire.Number = 51002
)

// msgOptions are the natter.v1 options set on one message.
type msgOptions struct {
	client []string
	server []string
	open   bool
}

// readOptions reads the natter.v1 options of md.
//
// Depending on what the compiler knew when it interpreted them, custom
// options are either dynamic extension fields or unknown bytes on the
// options message. Marshalling the options and reading the wire format
// handles both the same way, and needs no registry that knows the
// extensions.
func readOptions(md protoreflect.MessageDescriptor) (msgOptions, error) {
	var o msgOptions
	opts := md.Options()
	if opts == nil {
		return o, nil
	}
	b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(opts)
	if err != nil {
		return o, fmt.Errorf("options of %s: %w", md.FullName(), err)
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return o, fmt.Errorf("options of %s: %w", md.FullName(), protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case (num == extClientType || num == extServerType) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return o, fmt.Errorf("options of %s: %w", md.FullName(), protowire.ParseError(n))
			}
			if num == extClientType {
				o.client = append(o.client, string(v))
			} else {
				o.server = append(o.server, string(v))
			}
			b = b[n:]
		case num == extOpen && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return o, fmt.Errorf("options of %s: %w", md.FullName(), protowire.ParseError(n))
			}
			o.open = v != 0 // the last value wins, as for any scalar field
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return o, fmt.Errorf("options of %s: %w", md.FullName(), protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return o, nil
}
