package bench

import (
	"bytes"
	"net"
	"strconv"
	"sync/atomic"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
	"github.com/natter/natter/pkg/wire/natterv1"
)

// The wires a member speaks (Config.Wires).
const (
	WireJSON     = "json"     // subprotocol natter: JSON text frames
	WireProtobuf = "protobuf" // subprotocol natter.protobuf: natter.v1.Envelope binary frames
	// WireSSE: members are fallback streams (GET <path>/sse?room=), JSON
	// envelopes in Server-Sent Events; they join with ?room= at open.
	WireSSE = "sse"
)

const subprotocolProtobuf = wire.Protobuf

// protoJoinFrame is joinFrame on the protobuf wire: $join is a system type,
// so its payload travels as JSON text.
func protoJoinFrame(room string) []byte {
	cid := "j"
	b, err := proto.Marshal(&natterv1.Envelope{
		Type: envelope.TypeJoin,
		Meta: &natterv1.Meta{CorrelationId: &cid},
		Body: &natterv1.Envelope_Json{Json: `{"room":` + strconv.Quote(room) + `}`},
	})
	if err != nil {
		panic(err) // a fixed message: cannot fail
	}
	return b
}

// The fields of natter.v1.Envelope and of bench.v1.Tick the members read.
const (
	envType    protowire.Number = 1
	envPayload protowire.Number = 3
	envJSON    protowire.Number = 4
	tickT      protowire.Number = 1
	tickN      protowire.Number = 2
)

// protoEnvelope is what a member reads of a natter.v1.Envelope, without
// copying: the type, and the body, protobuf payload or JSON text.
type protoEnvelope struct {
	typ     []byte
	payload []byte // field 3, nil when absent
	json    []byte // field 4, nil when absent
}

// parseEnvelope reads b's top-level fields with protowire, skipping meta.
func parseEnvelope(b []byte) (protoEnvelope, bool) {
	var e protoEnvelope
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return e, false
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == envType || num == envPayload || num == envJSON) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return e, false
			}
			switch num {
			case envType:
				e.typ = v
			case envPayload:
				e.payload = v
			case envJSON:
				e.json = v
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return e, false
		}
		b = b[n:]
	}
	return e, true
}

// protoTick reads t and n of a bench.v1.Tick.
func protoTick(b []byte) (t, n int64, ok bool) {
	var gotT, gotN bool
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, 0, false
		}
		b = b[l:]
		if typ == protowire.VarintType && (num == tickT || num == tickN) {
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return 0, 0, false
			}
			if num == tickT {
				t, gotT = int64(v), true
			} else {
				n, gotN = int64(v), true
			}
			b = b[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return 0, 0, false
		}
		b = b[l:]
	}
	return t, n, gotT && gotN
}

// jsonTick reads t and n of a tick payload in JSON, as the JSON members do.
func jsonTick(b []byte) (t, n int64, ok bool) {
	i := bytes.Index(b, tickKey)
	if i < 0 {
		return 0, 0, false
	}
	t, rest, ok1 := leadingInt(b[i+len(tickKey):])
	j := bytes.Index(rest, seqKey)
	if !ok1 || j < 0 {
		return 0, 0, false
	}
	n, _, ok = leadingInt(rest[j+len(seqKey):])
	return t, n, ok
}

var (
	tickTypeBytes  = []byte(tickType)
	dashTickBytes  = []byte(dashTickType)
	joinedType     = []byte(envelope.TypeJoined)
	connectedType  = []byte(envelope.TypeConnected)
	errorTypeBytes = []byte(envelope.TypeError)
)

// onProto is OnMessage on the protobuf wire. A tick's payload is a
// bench.v1.Tick when the edge has the bench's schemas (--schemas
// internal/bench/schemas), else its JSON text.
func (m *member) onProto(now int64, b []byte) {
	e, ok := parseEnvelope(b)
	if ok && (bytes.Equal(e.typ, tickTypeBytes) || bytes.Equal(e.typ, dashTickBytes)) {
		var t, n int64
		if e.payload != nil {
			t, n, ok = protoTick(e.payload)
		} else {
			t, n, ok = jsonTick(e.json)
		}
		if ok {
			m.tick(now, t, n)
		}
		return
	}
	m.joining(ok && bytes.Equal(e.typ, connectedType), ok && bytes.Equal(e.typ, joinedType), b)
}

// countingDialer dials connections that add every byte they read to read.
type countingDialer struct {
	*net.Dialer
	read *atomic.Int64
}

func (d *countingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := d.Dialer.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, read: d.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}
