package edge_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
)

// FuzzWire drives a real connection of a real edge (embedded NATS,
// loopback TCP) with arbitrary bytes after the handshake, then a heartbeat,
// then hangs up its side. Whatever the bytes, the edge must not panic, must
// end the connection or answer within the deadline, close only with a
// documented code in its own words, and keep no connection behind.
//
// The seeds are the three frames that took gws v1.9.1 down and every
// length encoding at and around its boundaries; go test runs them as a
// regression test, go test -fuzz=FuzzWire explores from them.
func FuzzWire(f *testing.F) {
	const max = 4096
	seeds := [][]byte{
		{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0},
		frameHeader(0x82, 1<<63, len64),
		{0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0, 0, 0, 0},
		append(frameHeader(0x01, 40, len7), heartbeatOf(40)...),
		append(frameHeader(0x81, 125, len7), heartbeatOf(125)...),
		append(frameHeader(0x81, 126, len16), heartbeatOf(126)...),
		append(frameHeader(0x81, 125, len16), heartbeatOf(125)...),
		frameHeader(0x81, 65535, len16),
		frameHeader(0x81, 65535, len64),
		frameHeader(0x81, 65536, len64),
		frameHeader(0x81, max, len16),
		frameHeader(0x81, max+1, len16),
		frameHeader(0x81, 1<<63-1, len64),
		{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8},
		{0x89, 0x80, 0, 0, 0, 0},
		{0xC1, 0x80, 0, 0, 0, 0},
		{0x81, 0x84, 1, 2, 3, 4, 0xfe, 0xfd, 0xfc, 0xfb},
		{0x81},
		{},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	srv := testenv.NATS(f)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(f, srv.ClientURL())
	cfg.Auth.DevMode = true
	// go test -fuzz dials hundreds of times a second from one address.
	cfg.Limits.HandshakeRate, cfg.Limits.MaxConnsPerUser = 0, 0
	cfg.WebSocket.MaxMessageSize = max
	cfg.WebSocket.WriteTimeout = 2 * time.Second
	e := testenv.StartEdge(f, cfg)
	probe := append(frameHeader(0x81, 55, len7), []byte(`{"type":"__heartbeat","meta":{"correlationId":"probe"}}`)...)

	f.Fuzz(func(t *testing.T, data []byte) {
		raw := wstest.DialRaw(t, e.URL, 0)
		_, _ = raw.Write(data) // the edge may have closed already
		_, _ = raw.Write(probe)
		_ = raw.Conn.(*net.TCPConn).CloseWrite()
		_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			op, p, err := raw.ReadFrame()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("the edge neither answered nor closed within 10s")
				}
				break // EOF or reset: the connection ended
			}
			if op != 0x8 {
				continue
			}
			if len(p) == 0 {
				break // the echo of a client's own close frame without a code
			}
			if len(p) < 2 {
				t.Fatalf("close frame with a 1-byte body: %x", p)
			}
			switch code := binary.BigEndian.Uint16(p); {
			case code == 1000, code == 1002, code == 1007, code == 1009:
			case code >= 3000 && code < 5000 && len(p) == 2:
				// The echo of a client's own close code (RFC 6455 5.5.1).
			default:
				t.Fatalf("close code %d %q", code, p[2:])
			}
			if bytes.Contains(p, []byte("gws")) {
				t.Fatalf("close reason %q", p[2:])
			}
		}
		_ = raw.Close()
		if n := e.Stats().Panics; n != 0 {
			t.Fatalf("%d panics", n)
		}
		testenv.Eventually(t, 10*time.Second, "no connection left behind", func() bool { return e.Stats().Connections == 0 })
	})
}

// TestDrainRefusesHandshakes: once the edge drains (readiness fails at
// SIGTERM), new handshakes get 503 with Retry-After, counted as draining,
// and the connections it holds stay open until Shutdown.
func TestDrainRefusesHandshakes(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	held := m.dial(t, "alice")
	m.Edge.Drain()
	status, body, h := wstest.Handshake(t, m.Edge.URL+"?user=bob", nil, "")
	if status != 503 || h.Get("Retry-After") == "" || !strings.Contains(body, "shutting down") {
		t.Fatalf("handshake while draining: %d %q Retry-After %q, want 503 with Retry-After", status, body, h.Get("Retry-After"))
	}
	if n := m.Edge.Stats().RefusedBy["draining"]; n != 1 {
		t.Fatalf("refused draining %d, want 1", n)
	}
	alive(t, held)
}
