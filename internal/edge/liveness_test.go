package edge_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// TestPingDeadPeerAndIdle checks the edge's liveness rules: peers that
// answer pings stay, peers that do not are closed, clients that send nothing
// are closed after the idle timeout, and permessage-deflate works end to end.
func TestPingDeadPeerAndIdle(t *testing.T) {
	t.Run("dead peer", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.PingInterval = 200 * time.Millisecond
		cfg.WebSocket.PongTimeout = 300 * time.Millisecond
		m := newMesh(t, cfg)
		start := time.Now()
		alive, _ := dialPeer(t, m.Edge.URL, false)
		dead := wstest.DialRaw(t, m.Edge.URL, 0) // never reads, never answers a ping
		testenv.Eventually(t, wait, "two connections", func() bool { return m.Edge.Stats().Connections == 2 })
		testenv.Eventually(t, wait, "the dead peer closed", func() bool { return m.Edge.Stats().Connections == 1 })

		// The close frame follows the pings the peer never answered; a
		// socket closed before it was written reads as EOF.
		code, pings, err := dead.ReadUntilClose(wait)
		switch {
		case code == uint16(envelope.CloseIdle):
		case code == 0 && errors.Is(err, io.EOF):
		default:
			t.Fatalf("dead peer: close code %d, err %v; want %d or EOF", code, err, envelope.CloseIdle)
		}
		if pings == 0 {
			t.Fatal("dead peer was closed without being pinged")
		}

		// Sending nothing, the live peer stays for 2s on its pongs alone.
		for time.Since(start) < 2*time.Second {
			if alive.closed() {
				t.Fatalf("peer that answers pings closed after %s", time.Since(start))
			}
			time.Sleep(20 * time.Millisecond) // the 2 s window is the behaviour under test: checked every 20 ms
		}
		if m.Edge.Stats().Connections != 1 {
			t.Fatalf("connections %d, want 1", m.Edge.Stats().Connections)
		}
		if alive.pings.Load() < 2 {
			t.Fatalf("live peer answered %d pings in 2s, want several", alive.pings.Load())
		}
		if got := alive.request(t, "hb", envelope.TypeHeartbeat, nil); got.Type != envelope.TypeHeartbeatAck {
			t.Fatalf("heartbeat: got %s", got.Type)
		}
	})

	t.Run("idle", func(t *testing.T) {
		// Pings every 100ms that the clients answer: pongs must not count
		// as activity.
		cfg := edge.DefaultConfig()
		cfg.WebSocket.IdleTimeout = 300 * time.Millisecond
		cfg.WebSocket.PingInterval = 100 * time.Millisecond
		cfg.WebSocket.PongTimeout = 5 * time.Second
		m := newMesh(t, cfg)
		idle, busy := m.dial(t, ""), m.dial(t, "")
		testenv.Eventually(t, wait, "two connections", func() bool { return m.Edge.Stats().Connections == 2 })

		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		sent := 0
		for end := time.Now().Add(1200 * time.Millisecond); time.Now().Before(end); {
			busy.Send(t, envelope.TypeHeartbeat, envelope.Meta{}, nil)
			sent++
			<-tick.C
		}
		if code := idle.WaitClose(t, wait); code != uint16(envelope.CloseIdle) {
			t.Fatalf("idle client close code %d, want %d", code, envelope.CloseIdle)
		}
		if busy.Closed() {
			t.Fatalf("client sending a heartbeat every 100ms was closed with %d", busy.CloseCode())
		}
		for i := 0; i < sent; i++ {
			busy.AwaitType(t, envelope.TypeHeartbeatAck, wait)
		}
		testenv.Eventually(t, wait, "one connection", func() bool { return m.Edge.Stats().Connections == 1 })
	})

	t.Run("permessage-deflate", func(t *testing.T) {
		cfg := edge.DefaultConfig()
		cfg.WebSocket.Compression = true
		m := newMesh(t, cfg)
		p, resp := dialPeer(t, m.Edge.URL, true)
		if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
			t.Fatalf("compression not negotiated: Sec-WebSocket-Extensions %q", ext)
		}
		for i, s := range []string{
			strings.Repeat("natter ", 293)[:2048],                  // compresses well
			strings.Repeat("0123456789abcdefghijklmnopqrstuv", 64), // 2 KB again
			strings.Repeat("é", 1024),                              // 2 KB of multi-byte UTF-8
		} {
			payload := wstest.JSON(t, map[string]any{"i": i, "blob": s})
			got := p.request(t, strconv.Itoa(i), "echo", payload)
			if got.Type != "echo" || string(got.Payload) != string(payload) {
				t.Fatalf("echo %d over deflate: got %s, %d payload bytes, want %d", i, got.Type, len(got.Payload), len(payload))
			}
		}
		// A client that does not negotiate compression is served as well.
		plain := m.dial(t, "")
		payload := json.RawMessage(wstest.JSON(t, map[string]string{"blob": strings.Repeat("y", 2048)}))
		if got := plain.Request(t, "echo", payload, wait); got.Type != "echo" || string(got.Payload) != string(payload) {
			t.Fatalf("echo without deflate: %s", got.Payload)
		}
	})
}

// peer is a bare gws client for these tests: it answers and counts pings,
// and hands frames over a channel.
type peer struct {
	conn   *gws.Conn
	pings  atomic.Int32
	frames chan []byte
	done   chan struct{} // closed by cleanup
	gone   chan struct{} // closed by OnClose
}

// dialPeer connects to url, offering permessage-deflate when deflate is set.
// Cleanup closes the connection and waits for its read loop to end.
func dialPeer(t *testing.T, url string, deflate bool) (*peer, *http.Response) {
	t.Helper()
	p := &peer{frames: make(chan []byte, 16), done: make(chan struct{}), gone: make(chan struct{})}
	conn, resp, err := gws.NewClient(p, &gws.ClientOption{
		Addr:              url,
		HandshakeTimeout:  5 * time.Second,
		PermessageDeflate: gws.PermessageDeflate{Enabled: deflate},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	_ = conn.SetDeadline(time.Time{})
	p.conn = conn
	go conn.ReadLoop()
	t.Cleanup(func() {
		close(p.done)
		_ = conn.NetConn().Close()
		<-p.gone
	})
	return p, resp
}

func (p *peer) OnOpen(*gws.Conn) {}

func (p *peer) OnClose(*gws.Conn, error) { close(p.gone) }

func (p *peer) OnPing(s *gws.Conn, b []byte) {
	p.pings.Add(1)
	_ = s.WritePong(b)
}

func (p *peer) OnPong(*gws.Conn, []byte) {}

func (p *peer) OnMessage(_ *gws.Conn, m *gws.Message) {
	b := append([]byte(nil), m.Bytes()...)
	m.Close()
	select {
	case p.frames <- b:
	case <-p.done:
	}
}

func (p *peer) closed() bool {
	select {
	case <-p.gone:
		return true
	default:
		return false
	}
}

// request sends typ with correlation id cid and a raw JSON payload, and
// returns the frame that answers it.
func (p *peer) request(t *testing.T, cid, typ string, payload []byte) *envelope.Envelope {
	t.Helper()
	b, err := envelope.Encode(&envelope.Envelope{Type: typ, Meta: envelope.Meta{CorrelationID: cid}, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.conn.WriteMessage(gws.OpcodeText, b); err != nil {
		t.Fatalf("write: %v", err)
	}
	timeout := time.After(wait)
	for {
		select {
		case f := <-p.frames:
			env, err := envelope.Decode(f, 1<<20)
			if err != nil {
				t.Fatalf("undecodable frame %q: %v", f, err)
			}
			if env.Meta.CorrelationID == cid {
				return env
			}
		case <-p.gone:
			t.Fatalf("connection closed while waiting for %s %s", typ, cid)
		case <-timeout:
			t.Fatalf("no reply to %s %s within %s", typ, cid, wait)
		}
	}
}
