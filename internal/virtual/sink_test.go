package virtual

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// serverFrame is an unmasked server frame, as the edge writes them.
func serverFrame(op byte, payload []byte) []byte {
	n := len(payload)
	var f []byte
	switch {
	case n < 126:
		f = []byte{0x80 | op, byte(n)}
	case n < 1<<16:
		f = []byte{0x80 | op, 126, byte(n >> 8), byte(n)}
	default:
		f = []byte{0x80 | op, 127, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
	return append(f, payload...)
}

type seen struct {
	op      byte
	payload string
}

func TestFrameParser(t *testing.T) {
	t.Parallel()
	long := bytes.Repeat([]byte("x"), 70_000)
	stream := bytes.Join([][]byte{
		serverFrame(opText, []byte(`{"type":"$connected"}`)),
		serverFrame(opPing, nil),
		serverFrame(opText, append([]byte(`{"type":"chat.message","payload":"`), bytes.Repeat([]byte("y"), 300)...)),
		serverFrame(opPing, []byte("abc")),
		serverFrame(opText, long),
		serverFrame(opClose, []byte{0x0F, 0xA0, 'b', 'y', 'e'}),
	}, nil)
	want := []seen{
		{opText, `{"type":"$connected"}`},
		{opPing, ""},
		{opText, `{"type":"chat.message","payload":"` + strings.Repeat("y", 300)},
		{opPing, "abc"},
		{opText, string(long)},
		{opClose, "\x0f\xa0bye"},
	}
	for _, tc := range []struct {
		name  string
		chunk int // bytes per write; 0: all at once
	}{
		{"one write", 0},
		{"byte by byte", 1},
		{"chunks of 3", 3},
		{"chunks of 1000", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p frameParser
			var got []seen
			record := func(op byte, payload []byte) { got = append(got, seen{op, string(payload)}) }
			if tc.chunk == 0 {
				p.feed(stream, record)
			} else {
				for b := stream; len(b) > 0; {
					k := min(tc.chunk, len(b))
					p.feed(b[:k], record)
					b = b[k:]
				}
			}
			if len(got) != len(want) {
				t.Fatalf("got %d frames, want %d: %q", len(got), len(want), got)
			}
			for i := range want {
				// A data frame split across writes is seen with the part of
				// its payload the first write held; control frames whole.
				if got[i].op != want[i].op || (got[i].op >= opClose || tc.chunk == 0) && got[i].payload != want[i].payload {
					t.Errorf("frame %d: got %q, want %q", i, got[i], want[i])
				}
			}
		})
	}
}

// readAll reads what the sink hands the edge until it would block for
// 100 ms, or an error.
func readAll(t *testing.T, s *sink) ([]byte, error) {
	t.Helper()
	var out []byte
	buf := make([]byte, 64)
	for {
		_ = s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := s.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return out, nil
			}
			return out, err
		}
	}
}

func TestSinkAnswersLikeAClient(t *testing.T) {
	t.Parallel()
	set := &Set{}
	join := clientFrame(opText, []byte(`{"type":"$join","payload":{"room":"r"}}`))
	s := newSink(set, join)

	// The handshake response, then the client's $join is there to read.
	if _, err := s.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, s); err != nil || !bytes.Equal(got, join) {
		t.Fatalf("first read %q, %v; want the join frame", got, err)
	}
	// $connected, $joined: held.
	_, _ = s.Write(serverFrame(opText, []byte(`{"type":"$connected","payload":{}}`)))
	_, _ = s.Write(serverFrame(opText, []byte(`{"type":"$joined","meta":{"correlationId":"j"}}`)))
	if st := set.Stats(); st.Held != 1 || st.System != 1 {
		t.Fatalf("after $joined: %+v", st)
	}
	// A ping is answered with a masked pong carrying its payload.
	_, _ = s.Write(serverFrame(opPing, []byte("hi")))
	if got, err := readAll(t, s); err != nil || !bytes.Equal(got, clientFrame(opPong, []byte("hi"))) {
		t.Fatalf("after ping: %q, %v", got, err)
	}
	// A room message is counted.
	_, _ = s.Write(serverFrame(opText, []byte(`{"type":"chat.message","meta":{"room":"r"}}`)))
	// A close frame: the client echoes its code, then end of stream.
	_, _ = s.Write(serverFrame(opClose, []byte{0x0F, 0xA0, 'x'}))
	if got, err := readAll(t, s); err != io.EOF || !bytes.Equal(got, clientFrame(opClose, []byte{0x0F, 0xA0})) {
		t.Fatalf("after close: %q, %v", got, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	if _, err := s.Write([]byte{0x81, 0}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	st := set.Stats()
	if st.Held != 0 || st.ClosedByEdge != 1 || st.Messages != 1 || st.Pongs != 1 || st.Frames != 5 {
		t.Fatalf("at the end: %+v", st)
	}
}

func TestSinkHangUp(t *testing.T) {
	t.Parallel()
	set := &Set{}
	s := newSink(set, nil)
	_, _ = s.Write([]byte("HTTP/1.1 101 Switching Protocols\r\n\r\n"))
	_, _ = s.Write(serverFrame(opText, []byte(`{"type":"$joined"}`)))
	s.hangUp()
	if got, err := readAll(t, s); err != nil || !bytes.Equal(got, clientFrame(opClose, []byte{0x03, 0xE9})) {
		t.Fatalf("hang-up: %q, %v", got, err)
	}
	// The edge's answer: the client hangs up.
	_, _ = s.Write(serverFrame(opClose, []byte{0x03, 0xE9}))
	if got, err := readAll(t, s); err != io.EOF || len(got) != 0 {
		t.Fatalf("after the answer: %q, %v", got, err)
	}
	_ = s.Close()
	if st := set.Stats(); st.ClosedByClient != 1 || st.ClosedByEdge != 0 || st.Held != 0 {
		t.Fatalf("%+v", st)
	}
}

func TestSinkReadBlocksUntilClose(t *testing.T) {
	t.Parallel()
	s := newSink(&Set{}, nil)
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := s.Read(make([]byte, 8))
		done <- err
	}()
	<-started
	// A deadline in the past ends the blocked read, as on a socket.
	_ = s.SetReadDeadline(time.Now())
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with a past deadline: %v", err)
	}
	_ = s.SetReadDeadline(time.Time{})
	go func() { _, err := s.Read(make([]byte, 8)); done <- err }()
	_ = s.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read across Close: %v", err)
	}
}
