package bench

import (
	"encoding/hex"
	"math/rand/v2"
)

// traceparentLen is the length of a version-00 W3C traceparent.
const traceparentLen = 55

// appendTraceparent appends a W3C traceparent (version 00) with a random
// trace id and parent id and the sampled flag: what a client or service
// that traces every message would send (Config.Traceparent). Neither id
// is ever all zeros.
func appendTraceparent(b []byte) []byte {
	var ids [24]byte // trace id (16), parent id (8)
	for i := 0; i < len(ids); i += 8 {
		u := rand.Uint64() | 1 // never zero
		for j := range 8 {
			ids[i+j] = byte(u >> (8 * j))
		}
	}
	b = append(b, "00-"...)
	b = hex.AppendEncode(b, ids[:16])
	b = append(b, '-')
	b = hex.AppendEncode(b, ids[16:])
	return append(b, "-01"...)
}

// newTraceparent returns appendTraceparent's value as a string.
func newTraceparent() string {
	return string(appendTraceparent(make([]byte, 0, traceparentLen)))
}

// appendRPCFrame appends an rpc scenario request: an envelope of type typ
// with correlation id cid (first in meta: replies are matched by it), a
// random sampled meta.traceparent when traced, and payload (a JSON value).
func appendRPCFrame(b []byte, typ, cid string, traced bool, payload string) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","meta":{"correlationId":"`...)
	b = append(b, cid...)
	if traced {
		b = append(b, `","traceparent":"`...)
		b = appendTraceparent(b)
	}
	b = append(b, `"},"payload":`...)
	b = append(b, payload...)
	return append(b, '}')
}
