package edge

import (
	"encoding/binary"
	"testing"
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
	w := newWireConn(nil, nil, 64<<10, false, 0)
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
		w := newWireConn(nil, nil, 1<<20, false, 0)
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
