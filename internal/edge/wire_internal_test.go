package edge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/natter/natter/pkg/envelope"
)

// BenchmarkWireScan measures the header checks the wire adds to every
// read: 64 masked text frames of 1 KiB in one 64 KiB read, as a client
// sending steadily fills gws's read buffer.
func BenchmarkWireScan(b *testing.B) {
	frame := make([]byte, 0, 8+1024)
	frame = append(frame, 0x81, 0x80|126)
	frame = binary.BigEndian.AppendUint16(frame, 1024)
	frame = append(frame, 1, 2, 3, 4)
	frame = append(frame, make([]byte, 1024)...)
	var buf []byte
	for range 64 {
		buf = append(buf, frame...)
	}
	w := newWireConn(nil, nil, 64<<10, false, 0, nil)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := w.scan(buf); err != nil || n != len(buf) {
			b.Fatal(n, err)
		}
	}
}

// TestWireScanSplitHeaders feeds a stream of frames to scan in every
// split position: a header cut anywhere is held back whole, and no byte is
// passed twice or lost.
func TestWireScanSplitHeaders(t *testing.T) {
	t.Parallel()
	var stream []byte
	for _, n := range []int{0, 1, 125, 126, 300, 65535, 65536} {
		h := []byte{0x81}
		switch {
		case n < 126:
			h = append(h, 0x80|byte(n))
		case n <= 0xFFFF:
			h = append(h, 0x80|126)
			h = binary.BigEndian.AppendUint16(h, uint16(n))
		default:
			h = append(h, 0x80|127)
			h = binary.BigEndian.AppendUint64(h, uint64(n))
		}
		stream = append(append(stream, append(h, 9, 9, 9, 9)...), make([]byte, n)...)
	}
	for _, chunk := range []int{1, 2, 3, 7, 13, 14, 15, 100, 4096} {
		w := newWireConn(nil, nil, 1<<20, false, 0, nil)
		var passed, held []byte
		for i := 0; i < len(stream); i += chunk {
			in := append(held, stream[i:min(i+chunk, len(stream))]...)
			n, err := w.scan(in)
			if err != nil {
				t.Fatalf("chunk %d at %d: %v", chunk, i, err)
			}
			passed = append(passed, in[:n]...)
			held = append([]byte(nil), in[n:]...)
			if len(held) >= maxHeader {
				t.Fatalf("chunk %d: %d bytes held", chunk, len(held))
			}
		}
		if len(held) != 0 || string(passed) != string(stream) {
			t.Fatalf("chunk %d: passed %d of %d bytes, %d held", chunk, len(passed), len(stream), len(held))
		}
	}
}

// TestWireSmallReads reads a stream of frames through reads shorter than
// a header: every byte arrives once, in order, and a bad header still
// stops the stream.
func TestWireSmallReads(t *testing.T) {
	t.Parallel()
	frame := append([]byte{0x81, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4}, make([]byte, 256)...)
	stream := append(append(append([]byte(nil), frame...), frame...), frame...)
	client, server := net.Pipe()
	defer client.Close()
	go func() { _, _ = client.Write(stream) }()
	w := newWireConn(server, nil, 1<<20, false, 0, nil)
	var got []byte
	for len(got) < len(stream) {
		p := make([]byte, 1+len(got)%5) // 1 to 5 bytes
		n, err := w.Read(p)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, p[:n]...)
	}
	if !bytes.Equal(got, stream) {
		t.Fatal("bytes lost, repeated or out of order")
	}

	var refused error
	w.violation = func(code envelope.CloseCode, reason string) {
		refused = errors.New(reason)
		_ = w.Close()
	}
	go func() {
		_, _ = client.Write([]byte{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0})
	}()
	if n, err := w.Read(make([]byte, 3)); err == nil || n != 0 || refused == nil {
		t.Fatalf("a crash header through a 3-byte read: %d %v, refused %v", n, err, refused)
	}
}

// TestSSEFrame: a fallback stream's shared frame carries the durable
// position and the formatted data lines, and parses back; one without a
// position carries the data alone.
func TestSSEFrame(t *testing.T) {
	env := []byte(`{"type":"line","meta":{"room":"log-1"},"payload":{"n":1}}`)
	f := newOutFrame(env)
	f.pos = &framePos{room: "log-1", offset: 1<<40 + 7, epoch: "e-1733"}
	b := f.sseFrame()
	if b[0]&0x0F != opSSE || &f.sseFrame()[0] != &b[0] {
		t.Fatalf("opcode %x, or not made once", b[0]&0x0F)
	}
	pos, data := parseSSEFrame(framePayload(b))
	if pos == nil || *pos != *f.pos || string(data) != "data: "+string(env)+"\n\n" {
		t.Fatalf("parsed %+v %q", pos, data)
	}
	plain := newOutFrame(env)
	if pos, data := parseSSEFrame(framePayload(plain.sseFrame())); pos != nil || string(data) != "data: "+string(env)+"\n\n" {
		t.Fatalf("without a position: %+v %q", pos, data)
	}
	for _, bad := range [][]byte{{1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 'x'}, {1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'x', 5, 'y'}} {
		if pos, data := parseSSEFrame(bad); pos != nil || data != nil {
			t.Errorf("%v parsed as %+v %q", bad, pos, data)
		}
	}
}
