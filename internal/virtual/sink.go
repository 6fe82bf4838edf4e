package virtual

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The states of a virtual connection, in order.
const (
	stateUpgrading int32 = iota // handshake not answered yet
	stateOpen                   // upgraded, its $join sent, no $joined yet
	stateHeld                   // joined: counted in Stats.Held
	stateClosed                 // the socket is closed
)

// WebSocket opcodes the sink acts on.
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// sink is the server end of a virtual connection: the net.Conn the edge
// hijacks. Reads return what the virtual client sends (its $join, the pongs
// answering the edge's pings, its close frame) and block until there is
// more, the read deadline passes or the connection closes. Writes are the
// edge's: parsed into frames, counted and dropped. A ping is answered
// with a pong queued on the read side, a close frame with the client's
// close reply and then end of stream, as a WebSocket client does.
//
// One goroutine reads (the edge's read loop); writes come from the edge's
// writer and, for its close frames, from gws, each under wmu.
type sink struct {
	set *Set

	mu     sync.Mutex
	in     []byte    // client bytes the edge has not read yet
	eof    bool      // the client hung up: reads end once in is empty
	closed bool      // Close was called: reads and writes fail
	rdl    time.Time // read deadline; zero: none
	wake   chan struct{}

	state atomic.Int32
	// hangingUp is set when the client sent its close frame: the edge's
	// close frame then answers it, and the client hangs up.
	hangingUp atomic.Bool
	// startedAt is when the handshake began (unix nanos), for the time
	// to $joined.
	startedAt int64
	// probe, when set, looks for the connection's own join in its room's
	// $presence.diff; only the reader of the edge's frames touches it.
	probe *probe

	wmu      sync.Mutex
	upgraded bool        // guarded by wmu: the edge answered 101
	fp       frameParser // guarded by wmu
}

func newSink(set *Set, join []byte) *sink {
	return &sink{set: set, in: join, wake: make(chan struct{}, 1), startedAt: time.Now().UnixNano()}
}

// probe times a connection's presence: from its handshake to its own join
// in a $presence.diff of its room, which the edge derives from its mirror
// once the KV write came back through the watch (the path of the
// lifecycle events), then batches for up to presence.Config.DiffInterval.
type probe struct {
	member []byte // `"conn":"<id>"`, once $connected named the id
	done   bool
}

func (s *sink) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// push queues client bytes for the edge to read.
func (s *sink) push(b []byte, hangUp bool) {
	s.mu.Lock()
	if !s.closed && !s.eof {
		s.in = append(s.in, b...)
		s.eof = hangUp
	}
	s.mu.Unlock()
	s.signal()
}

func (s *sink) Read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return 0, net.ErrClosed
		case len(s.in) > 0:
			n := copy(p, s.in)
			s.in = s.in[n:]
			if len(s.in) == 0 {
				s.in = nil // the join frame's array goes with it
			}
			s.mu.Unlock()
			return n, nil
		case s.eof:
			s.mu.Unlock()
			return 0, io.EOF
		}
		dl := s.rdl
		s.mu.Unlock()
		if dl.IsZero() {
			<-s.wake
			continue
		}
		d := time.Until(dl)
		if d <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		select {
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *sink) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.state.Load() == stateClosed {
		return 0, net.ErrClosed
	}
	s.set.bytes.Add(int64(len(p)))
	b := p
	if s.state.Load() == stateUpgrading {
		// gws writes its whole response in one write.
		if !bytes.HasPrefix(b, []byte("HTTP/1.1 101 ")) {
			return len(p), nil // a refusal: the handshake's caller counts it
		}
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			return len(p), nil
		}
		s.upgraded = true
		s.state.CompareAndSwap(stateUpgrading, stateOpen)
		b = b[end+4:]
	}
	s.fp.feed(b, s.frame)
	return len(p), nil
}

// frame acts on one frame of the edge's; payload holds its first bytes
// (all of a control frame's), or none when the frame came in parts.
func (s *sink) frame(op byte, payload []byte) {
	s.set.frames.Add(1)
	switch op {
	case opPing:
		s.set.pongs.Add(1)
		s.push(clientFrame(opPong, payload), false)
	case opClose:
		if s.hangingUp.Load() {
			s.push(nil, true) // the answer to the client's close: hang up
			return
		}
		// The client echoes the code and hangs up.
		var code []byte
		if len(payload) >= 2 {
			code = payload[:2]
		}
		s.push(clientFrame(opClose, code), true)
	case opText:
		s.text(payload)
	}
}

// text classifies a text frame by its envelope type, which Encode writes
// first: {"type":"...". payload is as much of it as the write held: all
// of it, as the edge writes whole frames.
func (s *sink) text(payload []byte) {
	typ, ok := bytes.CutPrefix(payload, []byte(`{"type":"`))
	if ok && s.probe != nil && !s.probe.done {
		s.probeFrame(typ, payload)
	}
	switch {
	case !ok:
		s.set.messages.Add(1) // came in parts, or not an envelope
	case bytes.HasPrefix(typ, []byte(`$joined"`)):
		if s.state.CompareAndSwap(stateOpen, stateHeld) {
			s.set.joinedConn(s)
		}
	case bytes.HasPrefix(typ, []byte(`$error"`)) && s.state.Load() == stateOpen:
		// The join was refused: counted, and the client leaves.
		s.set.joinRefused.Add(1)
		s.hangUp()
	case bytes.HasPrefix(typ, []byte(`$`)):
		s.set.system.Add(1)
	default:
		s.set.messages.Add(1)
	}
}

// probeFrame looks for the connection's id in $connected, then for it
// among the joins of a $presence.diff.
func (s *sink) probeFrame(typ, payload []byte) {
	p := s.probe
	switch {
	case p.member == nil && bytes.HasPrefix(typ, []byte(`$connected"`)):
		_, rest, ok := bytes.Cut(payload, []byte(`"connectionId":"`))
		if id, _, ok2 := bytes.Cut(rest, []byte(`"`)); ok && ok2 {
			p.member = append(append([]byte(`"conn":"`), id...), '"')
		}
	case p.member != nil && bytes.HasPrefix(typ, []byte(`$presence.diff"`)):
		_, joins, ok := bytes.Cut(payload, []byte(`"joins":[`))
		if joins, _, _ = bytes.Cut(joins, []byte("]")); ok && bytes.Contains(joins, p.member) {
			p.done = true
			s.set.presenceSeen(time.Now().UnixNano() - s.startedAt)
		}
	}
}

// hangUp is the client closing: a close frame, 1001 (going away); the
// edge's answer ends the connection.
func (s *sink) hangUp() {
	if s.hangingUp.CompareAndSwap(false, true) {
		s.push(clientFrame(opClose, []byte{0x03, 0xE9}), false)
	}
}

// CloseWrite is the edge's half-close after its close frame: the client
// reads end of stream and hangs up.
func (s *sink) CloseWrite() error {
	s.push(nil, true)
	return nil
}

// Close is the edge closing the socket for good.
func (s *sink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.in = nil
	s.mu.Unlock()
	s.signal()
	s.set.closedConn(s, s.state.Swap(stateClosed))
	return nil
}

func (s *sink) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

func (s *sink) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl = t
	s.mu.Unlock()
	s.signal()
	return nil
}

// SetWriteDeadline does nothing: writes never block.
func (s *sink) SetWriteDeadline(time.Time) error { return nil }

func (s *sink) LocalAddr() net.Addr  { return Addr{} }
func (s *sink) RemoteAddr() net.Addr { return Addr{} }

// Addr is the address of both ends of a virtual connection.
type Addr struct{}

func (Addr) Network() string { return "virtual" }
func (Addr) String() string  { return "virtual" }

// clientFrame is a final client frame: masked, with a zero mask key, so
// the payload goes as it is. Payloads here are at most 125 bytes except a
// $join's.
func clientFrame(op byte, payload []byte) []byte {
	n := len(payload)
	var f []byte
	if n < 126 {
		f = make([]byte, 0, 6+n)
		f = append(f, 0x80|op, 0x80|byte(n))
	} else {
		f = make([]byte, 0, 8+n)
		f = append(f, 0x80|op, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, 0, 0, 0, 0)
	return append(f, payload...)
}

// frameParser splits the edge's byte stream into frames. Server frames
// are unmasked: a header is 2, 4 or 10 bytes.
type frameParser struct {
	hold      [10]byte // a header not yet whole
	nhold     int
	op        byte
	remaining uint64 // payload bytes of the current frame still to come
	ctl       []byte // a control frame's payload, when it comes in parts
}

// feed parses b and calls frame for each frame, once its header (and, for
// a control frame, its whole payload) has arrived. A data frame's payload
// is handed over as far as this write holds it.
func (p *frameParser) feed(b []byte, frame func(op byte, payload []byte)) {
	for len(b) > 0 {
		if p.remaining > 0 {
			k := int(min(p.remaining, uint64(len(b))))
			if p.ctl != nil {
				p.ctl = append(p.ctl, b[:k]...)
			}
			p.remaining -= uint64(k)
			b = b[k:]
			if p.remaining == 0 && p.ctl != nil {
				frame(p.op, p.ctl)
				p.ctl = nil
			}
			continue
		}
		// A header: complete it from b.
		k := copy(p.hold[p.nhold:], b)
		h := p.hold[:p.nhold+k]
		size, length, ok := headerSize(h)
		if !ok {
			p.nhold += k
			return
		}
		b = b[size-p.nhold:]
		p.nhold = 0
		p.op = h[0] & 0x0F
		p.remaining = length
		control := p.op >= opClose
		switch {
		case length == 0:
			frame(p.op, nil)
		case control && uint64(len(b)) >= length:
			frame(p.op, b[:length])
			b = b[length:]
			p.remaining = 0
		case control:
			p.ctl = make([]byte, 0, length)
		default:
			frame(p.op, b[:int(min(uint64(len(b)), length))])
		}
	}
}

// headerSize reports the size of the server frame header h starts with
// and its payload length, or that h does not hold it whole.
func headerSize(h []byte) (size int, length uint64, ok bool) {
	if len(h) < 2 {
		return 0, 0, false
	}
	switch n := h[1] & 0x7F; n {
	case 126:
		if len(h) < 4 {
			return 0, 0, false
		}
		return 4, uint64(binary.BigEndian.Uint16(h[2:])), true
	case 127:
		if len(h) < 10 {
			return 0, 0, false
		}
		return 10, binary.BigEndian.Uint64(h[2:]), true
	default:
		return 2, uint64(n), true
	}
}

// hijacker is the http.ResponseWriter of a virtual handshake: the edge
// hijacks the sink through it, or answers a refusal, whose status it keeps.
type hijacker struct {
	conn   *sink
	header http.Header
	status int
}

func (w *hijacker) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *hijacker) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}

func (w *hijacker) WriteHeader(code int) { w.status = code }

func (w *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	// Nothing is ever buffered: the request was handed over parsed.
	return w.conn, bufio.NewReadWriter(bufio.NewReaderSize(w.conn, 16), bufio.NewWriterSize(w.conn, 16)), nil
}
