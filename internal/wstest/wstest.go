// Package wstest is a WebSocket test client for Natter's own tests: a real
// gws client over loopback that collects frames and the close code.
package wstest

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/wire"
)

// Client is a connected test client. Frames arrive in order on an unbounded
// internal queue, so a slow test never back-pressures the edge.
type Client struct {
	Conn *gws.Conn
	// codec is set on natter.protobuf clients (DialProtobuf): Send
	// converts envelopes to binary frames, and binary frames arrive
	// converted to JSON, so the rest of the client reads the same.
	codec *wire.Codec
	// nbin and ntext count the data frames received of each kind; rawBin
	// keeps the binary ones as they came.
	nbin, ntext int
	rawBin      [][]byte

	mu      sync.Mutex
	cond    *sync.Cond
	frames  [][]byte
	closed  bool
	code    uint16
	nextCID int

	// The edge's $connected, kept out of frames: welcome is the frame,
	// welcomeAfter how many frames came before it, received all of them.
	welcome      []byte
	welcomeAfter int
	received     int
}

// Dial connects to url (ws://host/path?query) and fails the test on error.
func Dial(t testing.TB, url string) *Client {
	t.Helper()
	c, err := DialErr(url, nil)
	if err != nil {
		t.Fatalf("wstest: dial %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

// FrameKinds returns how many binary and text data frames arrived.
func (c *Client) FrameKinds() (binary, text int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nbin, c.ntext
}

// RawBinary returns the binary frames that arrived, as the wire carried
// them.
func (c *Client) RawBinary() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.rawBin...)
}

// DialProtobuf connects to url with the subprotocol natter.protobuf: Send
// writes binary frames, and what arrives is read as JSON (FrameKinds and
// RawBinary tell what the wire carried). types converts schema payloads; nil sends
// and expects every payload as JSON text.
func DialProtobuf(t testing.TB, url string, types wire.Types) *Client {
	t.Helper()
	hdr := http.Header{}
	hdr.Set("Sec-WebSocket-Protocol", wire.Protobuf) // canonical, so that gws checks the answer
	c, err := dial(url, hdr, &wire.Codec{Types: types})
	if err != nil {
		t.Fatalf("wstest: dial %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

// DialErr connects to url with extra request headers.
func DialErr(url string, hdr http.Header) (*Client, error) {
	return dial(url, hdr, nil)
}

func dial(url string, hdr http.Header, codec *wire.Codec) (*Client, error) {
	c := &Client{codec: codec}
	c.cond = sync.NewCond(&c.mu)
	conn, _, err := gws.NewClient(c, &gws.ClientOption{
		Addr:               url,
		RequestHeader:      hdr,
		ReadMaxPayloadSize: 32 << 20,
		HandshakeTimeout:   5 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	c.Conn = conn
	go conn.ReadLoop()
	return c, nil
}

func (c *Client) OnOpen(*gws.Conn)             {}
func (c *Client) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (c *Client) OnPong(*gws.Conn, []byte)     {}
func (c *Client) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	binary := m.Opcode == gws.OpcodeBinary
	raw := b
	m.Close()
	if binary && c.codec != nil {
		j, err := c.codec.ProtoToJSON(wire.Server, b)
		if err != nil {
			j = []byte(fmt.Sprintf(`{"type":"wstest.undecodable","payload":%q}`, err.Error()))
		}
		b = j
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if binary {
		c.nbin++
		c.rawBin = append(c.rawBin, raw)
	} else {
		c.ntext++
	}
	c.cond.Broadcast()
	if c.welcome == nil {
		if env, err := envelope.Decode(b, 1<<30); err == nil && env.Type == envelope.TypeConnected {
			c.welcome, c.welcomeAfter = b, c.received
			c.received++
			return
		}
	}
	c.received++
	c.frames = append(c.frames, b)
}

// Welcome waits for the edge's $connected frame, which the client keeps
// out of Next, Await and NextRaw, and returns it with the number of frames
// that arrived before it.
func (c *Client) Welcome(t testing.TB, timeout time.Duration) (*envelope.Envelope, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.welcome == nil {
		if c.closed || !time.Now().Before(deadline) {
			t.Fatalf("wstest: no $connected within %s", timeout)
		}
		c.cond.Wait()
	}
	env, err := envelope.Decode(c.welcome, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return env, c.welcomeAfter
}

// ConnID waits for $connected and returns the connection's id.
func (c *Client) ConnID(t testing.TB) string {
	t.Helper()
	env, _ := c.Welcome(t, 5*time.Second)
	var p struct {
		ConnectionID string `json:"connectionId"`
	}
	if err := json.Unmarshal(env.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p.ConnectionID
}
func (c *Client) OnClose(_ *gws.Conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		c.code = ce.Code
	}
	c.cond.Broadcast()
}

// Close closes the connection.
func (c *Client) Close() { _ = c.Conn.NetConn().Close() }

// SendRaw writes one frame as is.
func (c *Client) SendRaw(t testing.TB, op gws.Opcode, b []byte) {
	t.Helper()
	if err := c.Conn.WriteMessage(op, b); err != nil {
		t.Fatalf("wstest: write: %v", err)
	}
}

// Send writes an envelope.
func (c *Client) Send(t testing.TB, typ string, meta envelope.Meta, payload any) {
	t.Helper()
	env, err := envelope.New(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	env.Meta = meta
	if c.codec != nil {
		b, err := c.codec.ToProto(wire.Client, env)
		if err != nil {
			t.Fatal(err)
		}
		c.SendRaw(t, gws.OpcodeBinary, b)
		return
	}
	b, err := envelope.Encode(env)
	if err != nil {
		t.Fatal(err)
	}
	c.SendRaw(t, gws.OpcodeText, b)
}

// Request sends typ with a fresh correlation id and returns the frame that
// carries it back, skipping others.
func (c *Client) Request(t testing.TB, typ string, payload any, timeout time.Duration) *envelope.Envelope {
	t.Helper()
	c.mu.Lock()
	c.nextCID++
	cid := fmt.Sprintf("c%d", c.nextCID)
	c.mu.Unlock()
	c.Send(t, typ, envelope.Meta{CorrelationID: cid}, payload)
	return c.Await(t, timeout, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid })
}

// Await returns the first frame matching f, skipping (and dropping) frames
// before it.
func (c *Client) Await(t testing.TB, timeout time.Duration, f func(*envelope.Envelope) bool) *envelope.Envelope {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, ok := c.NextRaw(time.Until(deadline))
		if !ok {
			t.Fatalf("wstest: no matching frame within %s (closed=%v code=%d)", timeout, c.Closed(), c.CloseCode())
		}
		env, err := envelope.Decode(b, 1<<30)
		if err != nil {
			t.Fatalf("wstest: undecodable frame %q: %v", b, err)
		}
		if f(env) {
			return env
		}
	}
}

// AwaitType returns the next frame of type typ.
func (c *Client) AwaitType(t testing.TB, typ string, timeout time.Duration) *envelope.Envelope {
	t.Helper()
	return c.Await(t, timeout, func(e *envelope.Envelope) bool { return e.Type == typ })
}

// Next returns the next frame, decoded.
func (c *Client) Next(t testing.TB, timeout time.Duration) *envelope.Envelope {
	t.Helper()
	return c.Await(t, timeout, func(*envelope.Envelope) bool { return true })
}

// NextRaw returns the next frame, or false after timeout or once the
// connection closed with nothing left.
func (c *Client) NextRaw(timeout time.Duration) ([]byte, bool) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.frames) == 0 {
		if c.closed || !time.Now().Before(deadline) {
			return nil, false
		}
		c.cond.Wait()
	}
	b := c.frames[0]
	c.frames = c.frames[1:]
	return b, true
}

// Quiet reports whether no frame arrives within d.
func (c *Client) Quiet(d time.Duration) bool {
	b, ok := c.NextRaw(d)
	if ok {
		c.mu.Lock()
		c.frames = append([][]byte{b}, c.frames...)
		c.mu.Unlock()
	}
	return !ok
}

// WaitClose waits for the connection to close and returns the close code
// the server sent (0 if none arrived).
func (c *Client) WaitClose(t testing.TB, timeout time.Duration) uint16 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !c.Closed() {
		if time.Now().After(deadline) {
			t.Fatalf("wstest: connection still open after %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c.CloseCode()
}

// Closed reports whether the connection closed.
func (c *Client) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// CloseCode is the code of the server's close frame, 0 if none.
func (c *Client) CloseCode() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code
}

// RawConn is a hand-made WebSocket connection that reads only when told to,
// for slow-consumer tests. Its receive buffer is small.
type RawConn struct {
	net.Conn
	R *bufio.Reader
}

// DialRaw does the WebSocket handshake over a plain TCP connection with a
// receive buffer of rcvbuf bytes and returns it without reading further.
func DialRaw(t testing.TB, rawURL string, rcvbuf int) *RawConn {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	if rcvbuf > 0 {
		_ = nc.(*net.TCPConn).SetReadBuffer(rcvbuf)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		base64.StdEncoding.EncodeToString(key) + "\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("wstest: raw handshake: %v %v", resp, err)
	}
	return &RawConn{Conn: nc, R: br}
}

// WriteText writes one masked text frame.
func (r *RawConn) WriteText(payload []byte) error {
	hdr := []byte{0x81}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 65536:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	hdr = append(hdr, 0, 0, 0, 0) // zero mask key: payload goes as is
	_, err := r.Write(append(hdr, payload...))
	return err
}

// ReadFrame reads one frame and returns its opcode and payload.
func (r *RawConn) ReadFrame() (byte, []byte, error) {
	var h [2]byte
	if _, err := ioReadFull(r.R, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := ioReadFull(r.R, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(b[0])<<8 | uint64(b[1])
	case 127:
		var b [8]byte
		if _, err := ioReadFull(r.R, b[:]); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, x := range b {
			n = n<<8 | uint64(x)
		}
	}
	p := make([]byte, n)
	if _, err := ioReadFull(r.R, p); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, p, nil
}

// ReadUntilClose reads frames until a close frame and returns its code, or
// 0 with the error that ended the stream first.
func (r *RawConn) ReadUntilClose(timeout time.Duration) (uint16, int, error) {
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	frames := 0
	for {
		op, p, err := r.ReadFrame()
		if err != nil {
			return 0, frames, err
		}
		if op == 0x8 {
			if len(p) < 2 {
				return 0, frames, nil
			}
			return uint16(p[0])<<8 | uint16(p[1]), frames, nil
		}
		frames++
	}
}

// JSON marshals v or fails the test.
func JSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WSURL turns an HTTP listen address and path into a ws:// URL.
func WSURL(addr, path string, query ...string) string {
	u := "ws://" + addr + path
	if len(query) > 0 {
		u += "?" + strings.Join(query, "&")
	}
	return u
}

func ioReadFull(r *bufio.Reader, p []byte) (int, error) { return io.ReadFull(r, p) }

// Handshake makes a raw WebSocket upgrade request and returns the status,
// the body (for refusals) and the response headers. laddr, if not empty, is
// the local address to dial from.
func Handshake(t testing.TB, rawURL string, hdr http.Header, laddr string) (int, string, http.Header) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, strings.Replace(rawURL, "ws://", "http://", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp.StatusCode, "", resp.Header
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(body)), resp.Header
}
