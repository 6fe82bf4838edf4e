package edge_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// Length encodings of a frame header (RFC 6455 section 5.2).
const (
	len7  = 7
	len16 = 16
	len64 = 64
)

// frameHeader is a masked client frame header (zero mask key: the payload
// goes as is) with length in the given encoding, minimal or not.
func frameHeader(b0 byte, length uint64, enc int) []byte {
	h := []byte{b0}
	switch enc {
	case len7:
		h = append(h, 0x80|byte(length))
	case len16:
		h = append(h, 0x80|126, byte(length>>8), byte(length))
	case len64:
		h = append(h, 0x80|127)
		h = binary.BigEndian.AppendUint64(h, length)
	}
	return append(h, 0, 0, 0, 0)
}

// heartbeatOf is a __heartbeat envelope of exactly n bytes (n >= 40).
func heartbeatOf(n int) []byte {
	const head, tail = `{"type":"__heartbeat","payload":"`, `"}`
	return []byte(head + strings.Repeat("a", n-len(head)-len(tail)) + tail)
}

// alive proves c still works: a heartbeat gets its ack.
func alive(t *testing.T, c *wstest.Client) {
	t.Helper()
	if got := c.Request(t, envelope.TypeHeartbeat, nil, wait); got.Type != envelope.TypeHeartbeatAck {
		t.Fatalf("bystander: got %s", got.Type)
	}
}

// readClose reads frames until the close frame and returns its code and
// reason; an error means the socket ended without one.
func readClose(r *wstest.RawConn, timeout time.Duration) (uint16, string, error) {
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	for {
		op, p, err := r.ReadFrame()
		if err != nil {
			return 0, "", err
		}
		if op == 0x8 {
			if len(p) < 2 {
				return 0, "", errors.New("close frame without a code")
			}
			return binary.BigEndian.Uint16(p), string(p[2:]), nil
		}
	}
}

// TestFrameHeaders sends every length encoding at and around its
// boundaries, the three frames that crashed gws v1.9.1, and other header
// violations over real sockets. Valid frames are answered and keep the
// connection; invalid ones close it with the documented code and the
// edge's words; the edge itself never goes down.
func TestFrameHeaders(t *testing.T) {
	t.Parallel()
	const max = 128 << 10
	cfg := edge.DefaultConfig()
	cfg.WebSocket.MaxMessageSize = max
	m := newMesh(t, cfg)
	bystander := m.dial(t, "bob")
	cases := []struct {
		name  string
		frame []byte // sent whole, then a heartbeat when the connection should stay
		close envelope.CloseCode
	}{
		{"text, 64-bit length with its top bit set (the 14-byte crash)", []byte{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}, envelope.CloseProtocol},
		{"binary, length 0x8000000000000000", frameHeader(0x82, 1<<63, len64), envelope.CloseProtocol},
		{"continuation, length ending F0", []byte{0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0, 0, 0, 0}, envelope.CloseProtocol},
		{"continuation of a fragment, top bit set", append(append(frameHeader(0x01, 40, len7), heartbeatOf(40)...), frameHeader(0x80, 1<<63|40, len64)...), envelope.CloseProtocol},
		{"7-bit length 125", append(frameHeader(0x81, 125, len7), heartbeatOf(125)...), 0},
		{"7-bit length 0 (empty text, answered with an error)", frameHeader(0x81, 0, len7), 0},
		{"16-bit length 126", append(frameHeader(0x81, 126, len16), heartbeatOf(126)...), 0},
		{"16-bit length 65535", append(frameHeader(0x81, 65535, len16), heartbeatOf(65535)...), 0},
		{"16-bit length 125 (not the shortest)", append(frameHeader(0x81, 125, len16), heartbeatOf(125)...), envelope.CloseProtocol},
		{"16-bit length 0", frameHeader(0x81, 0, len16), envelope.CloseProtocol},
		{"64-bit length 65536", append(frameHeader(0x81, 65536, len64), heartbeatOf(65536)...), 0},
		{"64-bit length of the size limit", append(frameHeader(0x81, max, len64), heartbeatOf(max)...), 0},
		{"64-bit length 65535 (not the shortest)", append(frameHeader(0x81, 65535, len64), heartbeatOf(65535)...), envelope.CloseProtocol},
		{"64-bit length 126", frameHeader(0x81, 126, len64), envelope.CloseProtocol},
		{"64-bit length 0", frameHeader(0x81, 0, len64), envelope.CloseProtocol},
		{"64-bit length one over the limit", frameHeader(0x81, max+1, len64), envelope.CloseTooLarge},
		{"64-bit length 2^63-1", frameHeader(0x81, 1<<63-1, len64), envelope.CloseTooLarge},
		{"fragments adding up past the limit", append(append(frameHeader(0x01, max-10, len64), heartbeatOf(max-10)...), frameHeader(0x80, 11, len7)...), envelope.CloseTooLarge},
		{"unmasked", []byte{0x81, 0x02, '{', '}'}, envelope.CloseProtocol},
		{"RSV2 without an extension", frameHeader(0xA1, 0, len7), envelope.CloseProtocol},
		{"RSV1 without an extension", frameHeader(0xC1, 0, len7), envelope.CloseProtocol},
		{"reserved data opcode 3", frameHeader(0x83, 0, len7), envelope.CloseProtocol},
		{"reserved control opcode 0xB", frameHeader(0x8B, 0, len7), envelope.CloseProtocol},
		{"ping of 126 bytes", frameHeader(0x89, 126, len16), envelope.CloseProtocol},
		{"fragmented ping", frameHeader(0x09, 0, len7), envelope.CloseProtocol},
		{"continuation with nothing to continue", frameHeader(0x80, 0, len7), envelope.CloseProtocol},
		{"text inside a fragmented message", append(frameHeader(0x01, 0, len7), frameHeader(0x81, 0, len7)...), envelope.CloseProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := wstest.DialRaw(t, m.Edge.URL, 0)
			defer raw.Close()
			if _, err := raw.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			if tc.close == 0 {
				if err := raw.WriteText([]byte(`{"type":"__heartbeat","meta":{"correlationId":"after"}}`)); err != nil {
					t.Fatal(err)
				}
				_ = raw.SetReadDeadline(time.Now().Add(wait))
				for {
					op, p, err := raw.ReadFrame()
					if err != nil {
						t.Fatalf("connection ended: %v", err)
					}
					if op == 0x8 {
						t.Fatalf("closed with %d %s", binary.BigEndian.Uint16(p), p[2:])
					}
					if bytes.Contains(p, []byte(`"after"`)) {
						break
					}
				}
			} else {
				code, reason, err := readClose(raw, wait)
				if err != nil || code != uint16(tc.close) {
					t.Fatalf("close %d %q (err %v), want %d", code, reason, err, tc.close)
				}
				if reason == "" || strings.Contains(reason, "gws") {
					t.Fatalf("close reason %q: want the edge's words", reason)
				}
			}
			alive(t, bystander)
		})
	}
	if p := m.Edge.Stats().Panics; p != 0 {
		t.Fatalf("%d panics", p)
	}
}

// TestReadLoopPanicCostsOneConnection turns the frame checks off, so that
// the 14-byte frame reaches gws and panics inside its read loop as it did
// before them. The edge logs it, counts it, closes that connection with
// 1011 and serves the others as before.
func TestReadLoopPanicCostsOneConnection(t *testing.T) {
	edge.SetCheckFrames(false)
	t.Cleanup(func() { edge.SetCheckFrames(true) })
	reg := prometheus.NewRegistry()
	cfg := edge.DefaultConfig()
	cfg.Registerer = reg
	var logged lockedLog
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logged, testLogWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := newMesh(t, cfg)
	bystander := m.dial(t, "bob")
	join(t, bystander, "lobby")
	for i := range 3 {
		raw := wstest.DialRaw(t, m.Edge.URL, 0)
		if _, err := raw.Write([]byte{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		code, _, err := readClose(raw, wait)
		if err != nil || code != uint16(envelope.CloseServerError) {
			t.Fatalf("attack %d: close %d (err %v), want 1011", i, code, err)
		}
		_ = raw.Close()
	}
	alive(t, bystander)
	if err := m.NC.Publish("natter.out.room.lobby", []byte(`{"type":"news"}`)); err != nil {
		t.Fatal(err)
	}
	bystander.AwaitType(t, "news", wait)
	testenv.Eventually(t, wait, "three connections gone", func() bool { return m.Edge.Stats().Connections == 1 })
	if p := m.Edge.Stats().Panics; p != 3 {
		t.Fatalf("panics %d, want 3", p)
	}
	if v := metricValue(t, reg, "natter_edge_read_panics_total", ""); v != 3 {
		t.Fatalf("natter_edge_read_panics_total %v, want 3", v)
	}
	// Each is logged once, with the panic and the stack that raised it.
	out := logged.String()
	if n := strings.Count(out, "edge: panic handling a connection's frames"); n != 3 {
		t.Fatalf("%d panic log lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "stack=") || !strings.Contains(out, "goroutine ") || !strings.Contains(out, "readLoop") {
		t.Fatalf("the panic log has no stack through the read loop:\n%s", out)
	}
}

// lockedLog collects log output written from several goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testLogWriter writes to the test's log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// metricValue gathers one counter from reg; label selects a reason label
// value when non-empty.
func metricValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{reason=%q}", name, reason)
	return 0
}

// handshakeRaw writes req and returns the response and its body.
func handshakeRaw(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func wsKey() string {
	k := make([]byte, 16)
	_, _ = rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

// TestHandshakeConformance sends handshakes that break RFC 6455 section
// 4.2.1 and the subprotocol rule. Each is refused with its status, in the
// edge's words, and counted under its reason.
func TestHandshakeConformance(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	cfg := edge.DefaultConfig()
	cfg.Registerer = reg
	m := newMesh(t, cfg)
	good := func(proto string, extra ...string) string {
		return "GET /ws?user=alice " + proto + "\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + strings.Join(extra, "")
	}
	key := "Sec-WebSocket-Key: " + wsKey() + "\r\n"
	v13 := "Sec-WebSocket-Version: 13\r\n"
	cases := []struct {
		name    string
		req     string
		status  int
		version bool // the answer names the version the edge speaks
	}{
		{"valid", good("HTTP/1.1", key, v13, "\r\n"), http.StatusSwitchingProtocols, false},
		{"valid, natter among subprotocols", good("HTTP/1.1", key, v13, "Sec-WebSocket-Protocol: chat, natter\r\n\r\n"), http.StatusSwitchingProtocols, false},
		{"key not base64", good("HTTP/1.1", "Sec-WebSocket-Key: not base64 at all!!!!!!\r\n", v13, "\r\n"), http.StatusBadRequest, true},
		{"key of 15 bytes", good("HTTP/1.1", "Sec-WebSocket-Key: "+base64.StdEncoding.EncodeToString(make([]byte, 15))+"\r\n", v13, "\r\n"), http.StatusBadRequest, true},
		{"key of 17 bytes", good("HTTP/1.1", "Sec-WebSocket-Key: "+base64.StdEncoding.EncodeToString(make([]byte, 17))+"\r\n", v13, "\r\n"), http.StatusBadRequest, true},
		{"empty key", good("HTTP/1.1", "Sec-WebSocket-Key: \r\n", v13, "\r\n"), http.StatusBadRequest, true},
		{"two key headers", good("HTTP/1.1", key, key, v13, "\r\n"), http.StatusBadRequest, true},
		{"HTTP/1.0", good("HTTP/1.0", key, v13, "\r\n"), http.StatusBadRequest, true},
		{"version 8", good("HTTP/1.1", key, "Sec-WebSocket-Version: 8\r\n", "\r\n"), http.StatusUpgradeRequired, true},
		{"two versions", good("HTTP/1.1", key, v13, "Sec-WebSocket-Version: 8\r\n", "\r\n"), http.StatusUpgradeRequired, true},
		{"no version", good("HTTP/1.1", key, "\r\n"), http.StatusBadRequest, true},
		{"subprotocols without natter", good("HTTP/1.1", key, v13, "Sec-WebSocket-Protocol: graphql-ws, bearer.abc\r\n\r\n"), http.StatusBadRequest, true},
		{"valid, natter on a second subprotocol line", good("HTTP/1.1", key, v13, "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: natter\r\n\r\n"), http.StatusSwitchingProtocols, false},
		{"valid, an empty subprotocol header", good("HTTP/1.1", key, v13, "Sec-WebSocket-Protocol: \r\n\r\n"), http.StatusSwitchingProtocols, false},
		{"valid, Upgrade lists another protocol too", "GET /ws?user=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket, foo/1\r\nConnection: keep-alive, Upgrade\r\n" + key + v13 + "\r\n", http.StatusSwitchingProtocols, false},
		{"no Upgrade header", "GET /ws?user=alice HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" + key + v13 + "\r\n", http.StatusBadRequest, true},
		{"POST", "POST /ws?user=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n" + key + v13 + "\r\n", http.StatusMethodNotAllowed, false},
	}
	refused := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := handshakeRaw(t, m.Edge.Addr, tc.req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			if tc.status == http.StatusSwitchingProtocols {
				return
			}
			refused++
			if strings.Contains(body, "gws") || strings.TrimSpace(body) == "" {
				t.Fatalf("body %q: want the edge's words", body)
			}
			if got := resp.Header.Get("Sec-WebSocket-Version"); tc.version && got != "13" {
				t.Fatalf("Sec-WebSocket-Version %q, want 13", got)
			}
		})
	}
	if got := m.Edge.Stats().RefusedBy["bad_handshake"]; got != int64(refused) {
		t.Fatalf("refused bad_handshake %d, want %d", got, refused)
	}
	if v := metricValue(t, reg, "natter_edge_handshakes_refused_total", "bad_handshake"); v != float64(refused) {
		t.Fatalf("metric %v, want %d", v, refused)
	}
	if v := metricValue(t, reg, "natter_edge_handshakes_refused_total", "unauthenticated"); v != 0 {
		t.Fatalf("unauthenticated %v, want 0", v)
	}
}

// TestFrameInHandshakeSegment sends the handshake and a first frame in one
// write, so they arrive in one TCP segment; the frame is answered.
func TestFrameInHandshakeSegment(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	c, err := net.Dial("tcp", m.Edge.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /ws?user=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + wsKey() + "\r\n\r\n"
	hb := []byte(`{"type":"__heartbeat","meta":{"correlationId":"first"}}`)
	if _, err := c.Write(append(append([]byte(req), frameHeader(0x81, uint64(len(hb)), len7)...), hb...)); err != nil {
		t.Fatal(err)
	}
	raw := &wstest.RawConn{Conn: c, R: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(raw.R, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for {
		op, p, err := raw.ReadFrame()
		if err != nil {
			t.Fatalf("the frame sent with the handshake got no answer: %v", err)
		}
		if op == 0x1 && bytes.Contains(p, []byte(`"first"`)) && bytes.Contains(p, []byte(envelope.TypeHeartbeatAck)) {
			return
		}
	}
}

// TestCompressionFrameRules negotiates permessage-deflate and sends what
// RFC 7692 forbids (RSV1 on control and continuation frames) and what no
// extension defines (RSV2, RSV3): each closes with 1002. A compressed
// message that inflates past the limit closes with 1009, and a valid
// compressed message is answered.
func TestCompressionFrameRules(t *testing.T) {
	t.Parallel()
	const max = 8192
	cfg := edge.DefaultConfig()
	cfg.WebSocket.Compression = true
	cfg.WebSocket.MaxMessageSize = max
	m := newMesh(t, cfg)
	bystander := m.dial(t, "bob")
	deflated := func(b []byte) []byte {
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestCompression)
		_, _ = w.Write(b)
		_ = w.Flush()
		return bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
	}
	hb := []byte(`{"type":"__heartbeat","meta":{"correlationId":"z"}}`)
	bomb := deflated(append(append([]byte(`{"type":"__heartbeat","payload":"`), bytes.Repeat([]byte("a"), 4<<20)...), `"}`...))
	cases := []struct {
		name  string
		frame []byte
		close envelope.CloseCode
	}{
		{"compressed heartbeat", append(frameHeader(0xC1, uint64(len(deflated(hb))), len7), deflated(hb)...), 0},
		{"RSV2", frameHeader(0xA1, 0, len7), envelope.CloseProtocol},
		{"RSV3", frameHeader(0x91, 0, len7), envelope.CloseProtocol},
		{"RSV1 on a ping", frameHeader(0xC9, 0, len7), envelope.CloseProtocol},
		{"RSV1 on a continuation", append(append(frameHeader(0x41, uint64(len(deflated(hb))), len7), deflated(hb)...), frameHeader(0xC0, 0, len7)...), envelope.CloseProtocol},
		{"inflate bomb", append(frameHeader(0xC1, uint64(len(bomb)), len16), bomb...), envelope.CloseTooLarge},
	}
	if len(bomb) >= max || len(bomb) < 126 {
		t.Fatalf("bomb of %d bytes does not fit the test", len(bomb))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := dialDeflate(t, m.Edge.Addr)
			if _, err := raw.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			if tc.close == 0 {
				_ = raw.SetReadDeadline(time.Now().Add(wait))
				op, p, err := raw.ReadFrame()
				if err != nil || op != 0x1 {
					t.Fatalf("no answer: op %d %v", op, err)
				}
				_ = p // compressed; its arrival as a text frame is the answer
				return
			}
			code, reason, err := readClose(raw, wait)
			if err != nil || code != uint16(tc.close) {
				t.Fatalf("close %d %q (err %v), want %d", code, reason, err, tc.close)
			}
			if strings.Contains(reason, "gws") {
				t.Fatalf("reason %q", reason)
			}
			alive(t, bystander)
		})
	}
}

// dialDeflate does a handshake that negotiates permessage-deflate without
// context takeover, as the edge offers it.
func dialDeflate(t *testing.T, addr string) *wstest.RawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	req := "GET /ws?user=mallory HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + wsKey() +
		"\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	raw := &wstest.RawConn{Conn: c, R: bufio.NewReader(c)}
	resp, err := http.ReadResponse(raw.R, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatalf("deflate handshake: %v %v", resp, err)
	}
	return raw
}

// TestClosesArrive has the edge close connections that still have input
// on the way: the close frame must reach the client, not a reset that
// discards it. Every edge-initiated close is covered: 1009, 1007, 1002,
// 4001 for a slow consumer that keeps sending, 4000 at shutdown and 4100
// at token expiry.
func TestClosesArrive(t *testing.T) {
	t.Parallel()
	const max = 8192
	cfg := edge.DefaultConfig()
	cfg.WebSocket.MaxMessageSize = max
	m := newMesh(t, cfg)
	junk := bytes.Repeat(append(frameHeader(0x81, 40, len7), heartbeatOf(40)...), 2000) // 92 KB of valid frames
	cases := []struct {
		name  string
		first []byte
		close envelope.CloseCode
	}{
		{"1009: a frame over the limit with its payload", append(frameHeader(0x81, 60000, len16), make([]byte, 60000)...), envelope.CloseTooLarge},
		{"1007: invalid UTF-8, then more frames", append(frameHeader(0x81, 4, len7), 0xff, 0xfe, 0xfd, 0xfc), envelope.CloseInvalidUTF8},
		{"1002: a crash frame, then more frames", frameHeader(0x81, 1<<63, len64), envelope.CloseProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := wstest.DialRaw(t, m.Edge.URL, 0)
			if _, err := raw.Write(append(append([]byte(nil), tc.first...), junk...)); err != nil {
				t.Fatal(err)
			}
			code, reason, err := readClose(raw, wait)
			if err != nil || code != uint16(tc.close) {
				t.Fatalf("close %d %q (err %v), want %d", code, reason, err, tc.close)
			}
		})
	}
}

// flooded dials a client with a small receive buffer into room "flood"
// and publishes n bytes to the room while it reads nothing, so that its
// socket and the edge's queue are backed up: a close frame written now
// waits in the edge's send buffer, which a reset would discard.
func flooded(t *testing.T, m *mesh, n int) *wstest.RawConn {
	t.Helper()
	return floodedAt(t, m, m.Edge.URL, n)
}

func floodedAt(t *testing.T, m *mesh, url string, n int) *wstest.RawConn {
	t.Helper()
	raw := wstest.DialRaw(t, url, 64<<10)
	if err := raw.WriteText([]byte(`{"type":"$join","payload":{"room":"flood"}}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "the join", func() bool { return m.Edge.Stats().FramesOut >= 2 }) // $connected, $joined
	before := m.Edge.Stats().BytesOut
	payload := []byte(`{"type":"tick","payload":"` + strings.Repeat("x", 4000) + `"}`)
	for sent := 0; sent < n; sent += len(payload) {
		if err := m.NC.Publish("natter.out.room.flood", payload); err != nil {
			t.Fatal(err)
		}
	}
	_ = m.NC.Flush()
	testenv.Eventually(t, wait, "the socket backed up", func() bool { return m.Edge.Stats().BytesOut-before >= 256<<10 })
	return raw
}

// keepSending writes heartbeats until the socket fails or stop is called,
// so that the edge has unread input whenever it closes.
func keepSending(raw *wstest.RawConn) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := raw.WriteText([]byte(`{"type":"__heartbeat"}`)); err != nil {
				return
			}
		}
	}()
	return func() { close(done); <-ended }
}

// TestClosesArriveAtBackedUpClients closes clients whose socket is backed
// up while they keep sending: the edge half-closes and drains their input
// instead of closing with unread input, whose reset would discard the
// close frame still in its send buffer. Before, such clients read a reset
// (1006 in a browser) instead of the documented code.
func TestClosesArriveAtBackedUpClients(t *testing.T) {
	t.Parallel()
	const flood = 8 << 20
	t.Run("1009, a frame over the limit and its payload", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.MaxMessageSize = 8192
		cfg.WebSocket.WriteQueueBytes = 64 << 20
		cfg.WebSocket.WriteTimeout = 20 * time.Second
		m := newMesh(t, cfg)
		raw := flooded(t, m, flood)
		if _, err := raw.Write(append(frameHeader(0x81, 60000, len16), make([]byte, 60000)...)); err != nil {
			t.Fatal(err)
		}
		expectClose(t, raw, envelope.CloseTooLarge)
	})
	t.Run("1007, invalid UTF-8 from a client that keeps sending", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.WriteQueueBytes = 64 << 20
		cfg.WebSocket.WriteTimeout = 20 * time.Second
		m := newMesh(t, cfg)
		raw := flooded(t, m, flood)
		stop := keepSending(raw)
		defer stop()
		if _, err := raw.Write(append(frameHeader(0x81, 4, len7), 0xff, 0xfe, 0xfd, 0xfc)); err != nil {
			t.Fatal(err)
		}
		expectClose(t, raw, envelope.CloseInvalidUTF8)
	})
	t.Run("4001, a slow consumer that keeps sending", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.WriteQueueBytes = 256 << 10
		cfg.WebSocket.WriteTimeout = 20 * time.Second
		m := newMesh(t, cfg)
		raw := wstest.DialRaw(t, m.Edge.URL, 64<<10)
		if err := raw.WriteText([]byte(`{"type":"$join","payload":{"room":"flood"}}`)); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, wait, "the join", func() bool { return m.Edge.Stats().FramesOut >= 2 }) // $connected, $joined
		stop := keepSending(raw)
		defer stop()
		payload := []byte(`{"type":"tick","payload":"` + strings.Repeat("x", 4000) + `"}`)
		// Publish until the edge gives up on the client: how much the
		// kernel buffers first depends on the machine. The edge reads the
		// client's heartbeats meanwhile, so its input never runs dry.
		deadline := time.Now().Add(30 * time.Second)
		for m.Edge.Stats().SlowConsumerCloses == 0 && time.Now().Before(deadline) {
			for range 256 { // 1 MB between looks
				if err := m.NC.Publish("natter.out.room.flood", payload); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.NC.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, wait, "the slow consumer close", func() bool { return m.Edge.Stats().SlowConsumerCloses == 1 })
		expectClose(t, raw, envelope.CloseSlowConsumer)
	})
	t.Run("4100, token expiry of a client that keeps sending", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.WriteQueueBytes = 64 << 20
		cfg.WebSocket.WriteTimeout = 20 * time.Second
		cfg.Auth.PublicRooms = []string{"flood"}
		am := newAuthMesh(t, cfg)
		m := &mesh{am.Mesh}
		// JWT expiry has whole seconds: 3 s leave the flood time to back up.
		raw := floodedAt(t, m, m.Edge.URL+"?token="+token(t, "alice", 3*time.Second, nil), flood)
		stop := keepSending(raw)
		defer stop()
		expectClose(t, raw, envelope.CloseUnauthorized)
	})
	t.Run("4000, shutdown of an edge whose client keeps sending", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.WriteQueueBytes = 64 << 20
		cfg.WebSocket.WriteTimeout = 20 * time.Second
		m := newMesh(t, cfg)
		raw := flooded(t, m, flood)
		stop := keepSending(raw)
		defer stop()
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done <- m.Edge.Shutdown(ctx)
		}()
		expectClose(t, raw, envelope.CloseShutdown)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// expectClose reads everything the edge sent and fails unless it ends
// with a close frame of code.
func expectClose(t *testing.T, raw *wstest.RawConn, code envelope.CloseCode) {
	t.Helper()
	got, reason, err := readClose(raw, 30*time.Second)
	if err != nil || got != uint16(code) {
		t.Fatalf("close %d %q (err %v), want %d", got, reason, err, code)
	}
}

// TestShutdownWithAStalledClient: a client that stopped reading, with a
// backlog queued, cannot hold Shutdown past its lingering bound: the close
// is given up when the peer takes nothing.
func TestShutdownWithAStalledClient(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.WebSocket.WriteQueueBytes = 64 << 20
	cfg.WebSocket.WriteTimeout = 20 * time.Second
	m := newMesh(t, cfg)
	raw := flooded(t, m, 4<<20)
	defer raw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := m.Edge.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v after %s", err, time.Since(start))
	}
	t.Logf("Shutdown with a stalled client took %s", time.Since(start))
}
