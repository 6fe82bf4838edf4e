package edge

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/natter/natter/pkg/envelope"
)

// wireConn is the socket as gws sees it. It sits between the TCP (or TLS)
// connection and gws for three reasons:
//
//   - Reads: it checks every frame header before gws parses it. gws v1.9.1
//     turns a 64-bit payload length into a signed int and panics on one
//     whose top bit is set (one 14-byte frame took a whole edge down), and
//     with compression on it accepts RSV2/RSV3 and RSV1 where RFC 7692
//     forbids it. A header that breaks RFC 6455 section 5.2 closes the
//     connection with 1002, and one over the size limit with 1009, through
//     the edge's own close path, before gws acts on it. The bytes that
//     came in with the handshake are read first, not dropped.
//   - Writes: gws writes the close frames of the few errors it still finds
//     itself (a compressed message that inflates past the limit, corrupt
//     compressed data); their codes and reasons are put in the edge's terms.
//   - Close: gws closes the socket right after writing a close frame. A
//     socket closed with unread input sends a reset, and the peer's kernel
//     then discards the close frame before the client reads it. Close
//     lingers instead: it half-closes, stops handing data to gws, and the
//     read loop's owner drains the input until the peer hangs up or has
//     everything sent, for at most closeLinger (or the write timeout, if
//     shorter), and no longer than lingerStall without progress (linger).
//
// Only the connection's read loop calls Read; Write is called by gws under
// its write lock. The edge's own frame writes go to the TCP connection
// directly (see conn.netConn), so every Write here starts a whole frame.
type wireConn struct {
	net.Conn
	pre []byte // bytes read with the handshake, handed out first

	// The frame parser's state; only Read touches it.
	hold      [maxHeader]byte // the start of a header not yet complete
	nhold     int
	remaining uint64 // payload bytes of the current frame still to pass
	fragment  bool   // a fragmented data message is open
	msgSize   uint64 // its payload bytes so far
	deflate   bool   // permessage-deflate was negotiated: RSV1 allowed on data frames
	maxSize   uint64
	lingerFor time.Duration // the bound of linger
	// lingerStop ends every linger at once: it closes when a Shutdown of
	// the edge gives up (its ctx ended).
	lingerStop <-chan struct{}
	noLinger   atomic.Bool // a dead peer: nothing to wait for
	// onClose runs once when the wire closes: the connection's writer
	// stops, so that nothing follows a close frame gws wrote itself.
	onClose func()
	// ready holds checked bytes a read shorter than a header could not
	// take; readErr the error that came with them.
	ready   []byte
	readErr error

	// violation closes the connection through the edge's writer, which
	// writes the close frame after any frame partly written. It is set
	// before the read loop starts.
	violation func(code envelope.CloseCode, reason string)
	// ownClose is set before the edge has gws write its close frame, which
	// Write then passes as it is.
	ownClose atomic.Bool

	closeOnce sync.Once
	closing   chan struct{} // closed by Close: Read returns io.EOF from then on
	closedAt  atomic.Int64  // unix nanos of Close; 0 while open
	ended     atomic.Bool   // the socket is closed for good
}

// maxHeader is the longest frame header: 2 bytes, an 8-byte length and a
// 4-byte mask key.
const maxHeader = 14

// skipFrameChecks is set only in the test that proves a panic in gws's read
// loop costs just its own connection.
var skipFrameChecks atomic.Bool

// errWireClosed ends gws's read loop once the connection is closing.
var errWireClosed = io.EOF

func newWireConn(c net.Conn, pre []byte, maxSize int, deflate bool, linger time.Duration, stop <-chan struct{}) *wireConn {
	return &wireConn{Conn: c, pre: pre, maxSize: uint64(maxSize), deflate: deflate, lingerFor: linger, lingerStop: stop, closing: make(chan struct{})}
}

// closeLinger bounds a lingering close: long enough for a client that
// reads to take the close frame behind a backlog, short enough that a
// client that does not costs little (see linger).
const closeLinger = 2 * time.Second

// Read hands gws the socket's bytes, each frame header checked first. A
// header that is not complete yet is held back until it is: gws never sees
// a length it cannot handle.
func (w *wireConn) Read(p []byte) (int, error) {
	if len(w.ready) > 0 {
		n := copy(p, w.ready)
		w.ready = w.ready[n:]
		return n, nil
	}
	if w.readErr != nil {
		err := w.readErr
		w.readErr = nil
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) < maxHeader {
		// A header must fit whole: read through a buffer that holds one
		// and keep what p does not take. gws reads through a far larger
		// buffer, so this is for other readers.
		var buf [2 * maxHeader]byte
		n, err := w.read(buf[:])
		k := copy(p, buf[:n])
		if k < n {
			w.ready, w.readErr = append([]byte(nil), buf[k:n]...), err
			return k, nil
		}
		return k, err
	}
	return w.read(p)
}

func (w *wireConn) read(p []byte) (int, error) {
	for {
		select {
		case <-w.closing:
			return 0, errWireClosed
		default:
		}
		if skipFrameChecks.Load() {
			return w.readRaw(p)
		}
		n := copy(p, w.hold[:w.nhold]) // p holds at least maxHeader bytes
		w.nhold = 0
		m, err := w.readRaw(p[n:])
		total := n + m
		ok, verr := w.scan(p[:total])
		if verr != nil {
			w.refuse(verr)
			return 0, w.waitClosed()
		}
		w.nhold = copy(w.hold[:], p[ok:total])
		if ok > 0 || err != nil {
			return ok, err
		}
	}
}

func (w *wireConn) readRaw(p []byte) (int, error) {
	if len(w.pre) > 0 {
		n := copy(p, w.pre)
		w.pre = w.pre[n:]
		if len(w.pre) == 0 {
			w.pre = nil
		}
		return n, nil
	}
	n, err := w.Conn.Read(p)
	if err != nil {
		select {
		case <-w.closing:
			// The deadline Close set to stop this read, or the socket
			// closed under it: the connection ends either way.
			return n, errWireClosed
		default:
		}
	}
	return n, err
}

// frameError is a frame header that breaks the protocol or the size limit.
type frameError struct {
	code   envelope.CloseCode
	reason string
}

func (e *frameError) Error() string { return e.reason }

var (
	errLengthMSB      = &frameError{envelope.CloseProtocol, "frame length has its most significant bit set"}
	errLengthEncoding = &frameError{envelope.CloseProtocol, "frame length not in its shortest encoding"}
	errReservedBits   = &frameError{envelope.CloseProtocol, "reserved bits set"}
	errReservedOpcode = &frameError{envelope.CloseProtocol, "reserved opcode"}
	errUnmasked       = &frameError{envelope.CloseProtocol, "client frames must be masked"}
	errControlFrame   = &frameError{envelope.CloseProtocol, "control frames must be final and at most 125 bytes"}
	errContinuation   = &frameError{envelope.CloseProtocol, "continuation frame without a message to continue"}
	errInterleaved    = &frameError{envelope.CloseProtocol, "new message before the fragmented one ended"}
	errTooLarge       = &frameError{envelope.CloseTooLarge, "message too large"}
)

// scan walks b, which starts where the parser left off, through frame
// headers and payloads. It returns how many bytes are checked and may go
// to gws: all of b, or up to the start of a header that b does not hold
// whole.
func (w *wireConn) scan(b []byte) (int, error) {
	i := 0
	for i < len(b) {
		if w.remaining > 0 {
			skip := min(w.remaining, uint64(len(b)-i))
			w.remaining -= skip
			i += int(skip)
			continue
		}
		size, length, complete := headerSize(b[i:])
		if !complete {
			return i, nil
		}
		if err := w.check(b[i:i+size], length); err != nil {
			return i, err
		}
		w.remaining = length
		i += size
	}
	return i, nil
}

// headerSize reports the length of the header that b starts with and its
// payload length, or that b does not hold it whole.
func headerSize(b []byte) (size int, length uint64, complete bool) {
	if len(b) < 2 {
		return 0, 0, false
	}
	size = 2
	switch code := b[1] & 0x7F; code {
	case 126:
		size += 2
	case 127:
		size += 8
	default:
		length = uint64(code)
	}
	if b[1]&0x80 != 0 {
		size += 4
	}
	if len(b) < size {
		return 0, 0, false
	}
	switch b[1] & 0x7F {
	case 126:
		length = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		length = binary.BigEndian.Uint64(b[2:])
	}
	return size, length, true
}

// check applies RFC 6455 section 5 (and RFC 7692 section 6 for RSV1) to
// one whole header, and the size limit to the message it belongs to.
func (w *wireConn) check(h []byte, length uint64) error {
	fin, rsv, op := h[0]&0x80 != 0, h[0]&0x70, h[0]&0x0F
	switch h[1] & 0x7F {
	case 127:
		if length>>63 != 0 {
			return errLengthMSB
		}
		if length <= 0xFFFF {
			return errLengthEncoding
		}
	case 126:
		if length < 126 {
			return errLengthEncoding
		}
	}
	if h[1]&0x80 == 0 {
		return errUnmasked
	}
	control := op >= 0x8
	switch {
	case op > 0x2 && op < 0x8, op > 0xA:
		return errReservedOpcode
	case rsv&0x30 != 0: // RSV2, RSV3: no extension of ours defines them
		return errReservedBits
	case rsv != 0 && (!w.deflate || control || op == 0x0):
		// RSV1 is permessage-deflate's, and only on a message's first frame.
		return errReservedBits
	case control && (!fin || length > 125):
		return errControlFrame
	case control:
		return nil
	case op == 0x0 && !w.fragment:
		return errContinuation
	case op != 0x0 && w.fragment:
		return errInterleaved
	}
	if op != 0x0 {
		w.msgSize = 0
	}
	if length > w.maxSize || w.msgSize+length > w.maxSize {
		return errTooLarge
	}
	w.msgSize += length
	w.fragment = !fin
	return nil
}

// refuse closes the connection for a bad frame header.
func (w *wireConn) refuse(err error) {
	var fe *frameError
	if !errors.As(err, &fe) {
		fe = &frameError{envelope.CloseProtocol, "protocol error"}
	}
	if w.violation != nil {
		w.violation(fe.code, fe.reason)
		return
	}
	_ = w.Close()
}

// waitClosed holds gws's read loop until the close frame is written (or
// the edge gave up writing it), so that gws, which would answer a read
// error with a close frame of its own, finds the connection closed.
func (w *wireConn) waitClosed() error {
	<-w.closing
	return errWireClosed
}

// Write passes gws's writes through. gws writes a close frame whole in one
// Write; those of the errors it finds itself get the edge's codes and
// words, as docs/protocol.md lists them.
func (w *wireConn) Write(b []byte) (int, error) {
	if len(b) >= 4 && b[0] == 0x88 && b[1] < 126 && int(b[1]) == len(b)-2 && !w.ownClose.Load() {
		if f := rewordClose(b); f != nil {
			if _, err := w.Conn.Write(f); err != nil {
				return 0, err
			}
			return len(b), nil
		}
	}
	return w.Conn.Write(b)
}

// rewordClose returns the close frame f in the edge's terms, or nil if it
// is already. gws's own close frames come from the inflate step and from
// answering a client's close frame: that answer echoes the client's code
// when it is 3000 or above (RFC 6455 section 5.5.1), which clients rely on
// (a client closing with 4000 reads 4000 and reconnects), and is 1000 or
// 1002 below.
func rewordClose(f []byte) []byte {
	code := envelope.CloseCode(binary.BigEndian.Uint16(f[2:4]))
	reason, ours := strings.CutPrefix(string(f[4:]), "gws: ")
	switch {
	case code == envelope.CloseServerError && reason == "message too large":
		// Inflating went past the size limit: 1009, as for a frame.
		code, reason = envelope.CloseTooLarge, "message too large"
	case code == envelope.CloseServerError:
		// gws sends 1011 only when inflating fails: the client's data.
		code, reason = envelope.CloseInvalidUTF8, "invalid compressed data"
	case ours:
		reason = closeReasons[code]
	default:
		return nil
	}
	out := make([]byte, 4, 4+len(reason))
	out[0], out[1] = 0x88, byte(2+len(reason))
	binary.BigEndian.PutUint16(out[2:], uint16(code))
	return append(out, reason...)
}

// closeReasons are the words of the close codes gws may send itself.
var closeReasons = map[envelope.CloseCode]string{
	envelope.CloseNormal:      "",
	envelope.CloseProtocol:    "protocol error",
	envelope.CloseInvalidUTF8: "invalid UTF-8",
	envelope.CloseTooLarge:    "message too large",
	envelope.CloseServerError: "internal error",
}

// Close, called by gws after it wrote a close frame (and by the edge's
// own close paths through gws), starts the lingering close: the write side
// is shut, so the peer reads the close frame and then end of stream; the
// read loop stops handing data to gws; linger then drains and closes.
func (w *wireConn) Close() error {
	w.closeOnce.Do(func() {
		w.closedAt.Store(time.Now().UnixNano())
		close(w.closing)
		if w.onClose != nil {
			w.onClose()
		}
		if cw, ok := w.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		// Stops a read in progress; linger sets the drain's own deadline.
		_ = w.Conn.SetReadDeadline(time.Now())
	})
	return nil
}

// linger runs on the read loop's goroutine once gws's read loop returned.
// After a Close it drains the peer's input, so that the socket does not
// close with unread input (which sends a reset, and a reset discards what
// is still in the send queue, the close frame included). It stops at the
// peer's end of stream (a client answers the close frame and hangs up),
// once the peer has acknowledged everything sent (a client that keeps
// sending: closing then costs it nothing), when the peer has not taken a
// byte for lingerStall (it does not read: the frame cannot arrive), after
// lingerFor, or when the edge's Shutdown gives up. It looks at the send
// queue at growing intervals, so that many lingering sockets cost little.
// Then the socket closes for good.
func (w *wireConn) linger() {
	if at := w.closedAt.Load(); at != 0 && !w.noLinger.Load() {
		end := time.Unix(0, at).Add(w.lingerFor)
		sc, _ := w.Conn.(syscall.Conn)
		var buf [512]byte
		poll, last, lastMoved := lingerPoll, -1, time.Now()
	drain:
		for now := time.Now(); now.Before(end); now = time.Now() {
			select {
			case <-w.lingerStop:
				break drain
			default:
			}
			if sc != nil {
				n, ok := unsent(sc)
				switch {
				case ok && n == 0:
					break drain
				case ok && n != last:
					last, lastMoved = n, now
				case ok && now.Sub(lastMoved) > lingerStall:
					break drain
				}
			}
			next := now.Add(poll)
			if next.After(end) {
				next = end
			}
			poll = min(2*poll, lingerPollMax)
			_ = w.Conn.SetReadDeadline(next)
			for {
				if _, err := w.Conn.Read(buf[:]); err != nil {
					if isTimeout(err) {
						break // look at the send queue again
					}
					break drain // end of stream or a reset: nothing to wait for
				}
			}
		}
	}
	w.abort()
}

// The pace of linger: the first look at the send queue, the longest wait
// between two, and how long a queue that does not shrink is waited for.
const (
	lingerPoll    = 10 * time.Millisecond
	lingerPollMax = 250 * time.Millisecond
	lingerStall   = 500 * time.Millisecond
)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// abort closes the socket at once: a failed write, a timed-out close, or a
// connection that never got a read loop.
func (w *wireConn) abort() {
	w.closeOnce.Do(func() {
		w.closedAt.Store(time.Now().UnixNano())
		close(w.closing)
	})
	if w.ended.CompareAndSwap(false, true) {
		_ = w.Conn.Close()
	}
}
