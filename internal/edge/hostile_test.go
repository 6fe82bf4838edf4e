package edge_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/app"
	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// hostileFrames are a thousand malformed or hostile text frames: hand-made
// attacks on the envelope, the ids that become subjects and the system
// types, then seeded mutations of them.
func hostileFrames() []string {
	long := strings.Repeat("a", 3000)
	ids := []string{"*", ">", "a.b", "lobby.>", "lobby *", "lobby\u0000", "lobbÿ", "..", ".", "a\tb",
		"$KV", "_INBOX.x", strings.Repeat("r", 129), "", "secret", "team-1", "lobby/x", `\u002a`}
	var f []string
	for _, id := range ids {
		q := fmt.Sprintf("%q", id)
		f = append(f,
			`{"type":"$join","meta":{"correlationId":"j"},"payload":{"room":`+q+`}}`,
			`{"type":"$leave","payload":{"room":`+q+`}}`,
			`{"type":"$presence","meta":{"correlationId":"p"},"payload":{"room":`+q+`}}`,
			`{"type":"$presence","meta":{"correlationId":"p"},"payload":{"user":`+q+`}}`,
			`{"type":`+q+`}`,
			`{"type":"x.`+strings.Trim(q, `"`)+`"}`,
			`{"type":"echo","meta":{"correlationId":`+q+`}}`,
			`{"type":"$ws:abort","meta":{"correlationId":`+q+`}}`,
			`{"type":"chat.send","meta":{"room":`+q+`},"payload":{"room":`+q+`,"text":"hi"}}`,
		)
	}
	f = append(f,
		``, ` `, `null`, `[]`, `"str"`, `1e999`, `{}`, `{"type":null}`, `{"type":1}`, `{"type":"x"} {}`,
		"\ufeff{\"type\":\"x\"}", `{"typ\u0065":"x"}`, `{"Type":"x"}`, `{"type":"x","type":"y"}`,
		`{"type":"x","meta":{"timeoutMs":-1,"correlationId":"t"}}`,
		`{"type":"x","meta":{"timeoutMs":1e300,"correlationId":"t2"}}`,
		`{"type":"x","meta":{"correlationId":"`+long+`"}}`,
		`{"type":"x","payload":`+strings.Repeat("[", 2000)+strings.Repeat("]", 2000)+`}`,
		`{"type":"x","payload":{"a":`+strings.Repeat(`{"a":`, 500)+`1`+strings.Repeat("}", 501)+`}`,
		`{"type":"$presence.state","payload":{"state":"`+long+`"}}`,
		`{"type":"$auth.refresh","meta":{"correlationId":"r"},"payload":{"token":"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."}}`,
		`{"type":"$auth.refresh","payload":{"token":`+fmt.Sprintf("%q", long)+`}}`,
		`{"type":"$auth.refresh","payload":7}`,
		`{"type":"__heartbeat","payload":{"x":"`+long+`"}}`,
		`{"type":"$ws:rpc-ok","meta":{"correlationId":"zz"}}`,
		`{"type":"RPC_ERROR","meta":{"correlationId":"zz"},"payload":{"code":"INTERNAL"}}`,
		`{"type":"$joined","payload":{"room":"lobby"}}`,
	)
	rng := rand.New(rand.NewPCG(1, 2))
	base := len(f)
	for len(f) < 1000 {
		b := []byte(f[rng.IntN(base)])
		switch rng.IntN(4) {
		case 0: // truncate
			if len(b) > 0 {
				b = b[:rng.IntN(len(b))]
			}
		case 1: // flip bytes (stay ASCII: invalid UTF-8 has its own case)
			for range 1 + rng.IntN(4) {
				if len(b) > 0 {
					b[rng.IntN(len(b))] = byte(32 + rng.IntN(95))
				}
			}
		case 2: // splice two frames
			o := f[rng.IntN(base)]
			b = append(b[:rng.IntN(len(b)+1)], o[rng.IntN(len(o)+1):]...)
		case 3: // duplicate a slice
			if len(b) > 2 {
				i := rng.IntN(len(b) - 1)
				b = append(b[:i:i], append([]byte(string(b[i:])), b[i:]...)...)
			}
		}
		// Stay valid UTF-8 and under the size limit: both close the
		// connection by design, and have their own cases.
		f = append(f, strings.ToValidUTF8(string(b[:min(len(b), 8000)]), "?"))
	}
	return f
}

// TestHostileClients runs the bad-input suite against a running edge (Run,
// with its real HTTP server settings, JWT auth and a NATS server): a
// thousand hostile frames, WebSocket protocol abuse, oversized handshake
// headers, a slowloris handshake and ids crafted to reach other subjects.
// The edge stays up and keeps serving a bystander, publishes nothing outside
// the attacker's rights, and ends with its goroutines and heap back where
// they were.
func TestHostileClients(t *testing.T) {
	srv := testenv.NATS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc := app.DefaultConfig()
	rc.Listener, rc.NATSURL = ln, srv.ClientURL()
	rc.JWT.HMACSecret = testSecret
	rc.HandshakeTimeout, rc.MaxHeaderBytes = time.Second, 16<<10
	rc.Edge.Logger = testenv.Logger(t)
	rc.Edge.WebSocket.MaxMessageSize = 8192
	rc.Edge.Limits.MessageRate = -1 // loosens production: the attacker floods on purpose
	rc.Edge.Auth.PublicRooms = []string{"lobby"}
	rc.Edge.WebSocket.ShutdownSpread = time.Millisecond
	// Presence off: its events and keys are publishes every connection
	// rightly causes, and this test proves the attacker reaches no other.
	rc.Edge.Presence = nil
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, rc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("edge: %v", err)
		}
	})
	url := "ws://" + ln.Addr().String() + "/ws"
	bearer := func(user string, rooms ...string) http.Header {
		claims := map[string]any{}
		if rooms != nil {
			claims["rooms"] = rooms
		}
		return http.Header{"Authorization": {"Bearer " + token(t, user, time.Hour, claims)}}
	}
	dial := func(h http.Header) *wstest.Client {
		var c *wstest.Client
		testenv.Eventually(t, wait, "the edge accepting", func() bool {
			c, err = wstest.DialErr(url, h)
			return err == nil
		})
		return c
	}
	nc := testenv.Connect(t, srv.ClientURL())

	bystander := dial(bearer("alice"))
	join(t, bystander, "lobby")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	base := runtime.NumGoroutine()

	// Everything published while the attacker works. No worker and no
	// presence run here, so only the attacker's own client messages (and
	// aborts of its own requests) may appear.
	var tapMu sync.Mutex
	var leaked []string
	tap, err := nc.Subscribe(">", func(m *nats.Msg) {
		ok := m.Subject == "natter.ctl.abort" ||
			(strings.HasPrefix(m.Subject, "natter.in.") && m.Header.Get(envelope.HeaderUser) == "mallory" &&
				envelope.ValidateType(strings.TrimPrefix(m.Subject, "natter.in.")) == nil)
		if !ok {
			tapMu.Lock()
			leaked = append(leaked, m.Subject)
			tapMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()

	t.Run("a thousand hostile frames", func(t *testing.T) {
		frames := hostileFrames()
		mallory := dial(bearer("mallory", "mallory-*"))
		for i, f := range frames {
			if err := mallory.Conn.WriteMessage(gws.OpcodeText, []byte(f)); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if i%100 == 99 {
				// Every bad frame gets an answer and the connection stays:
				// a heartbeat comes back after them.
				mallory.Request(t, envelope.TypeHeartbeat, nil, wait)
			}
		}
		for {
			raw, ok := mallory.NextRaw(0)
			if !ok {
				break
			}
			if s := string(raw); strings.Contains(s, `"$joined"`) && !strings.Contains(s, `"mallory-`) {
				t.Fatalf("mallory joined a room it has no grant for: %s", s)
			}
		}
		mallory.Close()
	})

	t.Run("protocol abuse", func(t *testing.T) {
		frames := [][]byte{
			{0x83, 0x80, 0, 0, 0, 0},              // reserved opcode 3
			{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, // unmasked client frame
			{0xC1, 0x80, 0, 0, 0, 0},              // RSV1 without an extension
			{0x09, 0x80, 0, 0, 0, 0},              // fragmented ping
			{0x80, 0x80, 0, 0, 0, 0},              // continuation with nothing to continue
			{0x89, 0xFE, 0x00, 0xC8, 0, 0, 0, 0},  // ping of 200 bytes (control max 125)
			{0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}, // 2^63-byte frame
			{0x88, 0x81, 0, 0, 0, 0, 0x03},                                           // close with a 1-byte body
			// The three frames that took gws v1.9.1 (and every connection
			// of the edge) down: 64-bit lengths with the top bit set.
			{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0},
			{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			{0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0, 0, 0, 0},
		}
		for i, f := range frames {
			raw := wstest.DialRaw(t, url+"?token="+token(t, "mallory", time.Hour, nil), 0)
			if _, err := raw.Write(f); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			// The edge closes the connection: with a close frame or by
			// dropping it. Either way the read ends.
			if _, _, err := raw.ReadUntilClose(wait); err != nil && !isClosedErr(err) {
				t.Fatalf("frame %d: the edge kept the connection: %v", i, err)
			}
			_ = raw.Close()
		}
	})

	t.Run("oversized handshake headers", func(t *testing.T) {
		for _, hdr := range []string{
			"X-Big: " + strings.Repeat("a", 64<<10) + "\r\n",
			strings.Repeat("X-Many: b\r\n", 5000),
			"Authorization: Bearer " + strings.Repeat("c", 40<<10) + "\r\n",
		} {
			status := rawRequest(t, ln.Addr().String(), "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+hdr+"\r\n")
			if status != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d, want 431", status)
			}
		}
		// A token within the header limit but over auth.MaxTokenSize.
		h := http.Header{"Authorization": {"Bearer " + strings.Repeat("d", auth.MaxTokenSize+1)}}
		if status, _, _ := wstest.Handshake(t, url, h, ""); status != http.StatusUnauthorized {
			t.Fatalf("long token: %d, want 401", status)
		}
	})

	t.Run("slowloris handshake", func(t *testing.T) {
		const n = 100
		conns := make([]net.Conn, n)
		for i := range conns {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _ = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: "))
			conns[i] = c
		}
		// Trickle a byte each 200ms; the edge must hang up after its 1s
		// handshake timeout, not wait for the headers to end.
		start := time.Now()
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(start) < 5*time.Second {
					if _, err := c.Write([]byte("a")); err != nil {
						return
					}
					_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					if _, err := c.Read(make([]byte, 512)); err != nil && !isTimeout(err) {
						return // closed by the edge (after a 408, or without a word)
					}
				}
				t.Errorf("a slowloris connection lived 5s; handshake timeout is 1s")
			}()
		}
		// Meanwhile honest clients are served.
		c := dial(bearer("bob"))
		join(t, c, "lobby")
		c.Close()
		wg.Wait()
		if d := time.Since(start); d > 4*time.Second {
			t.Fatalf("slowloris connections closed after %s", d)
		}
	})

	t.Run("ids crafted for other subjects", func(t *testing.T) {
		for _, user := range []string{"*", ">", "a.b", "alice.>", "x y"} {
			if status, _, _ := wstest.Handshake(t, url, bearer(user), ""); status != http.StatusUnauthorized {
				t.Fatalf("token for user %q: %d, want 401", user, status)
			}
		}
		// Grant patterns are matched against valid room ids only, so even
		// subject wildcards in a grant reach no subject.
		c := dial(bearer("mallory", ">", "*.>", "lobby.*"))
		for _, room := range []string{">", "lobby.>", "lobby.x"} {
			got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room}, wait)
			assertErrorFrame(t, got, envelope.TypeRPCError, envelope.CodeInvalidArgument, got.Meta.CorrelationID)
		}
		got := c.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "secret"}, wait)
		assertErrorFrame(t, got, envelope.TypeRPCError, envelope.CodePermissionDenied, got.Meta.CorrelationID)
		c.Close()
		// The dev-mode parameter means nothing to a production edge.
		if status, _, _ := wstest.Handshake(t, url+"?user=alice", nil, ""); status != http.StatusUnauthorized {
			t.Fatalf("?user= without a token: %d, want 401", status)
		}
	})

	_ = nc.Flush()
	_ = tap.Unsubscribe()
	tapMu.Lock()
	if len(leaked) > 0 {
		t.Errorf("published outside the attacker's rights: %v", leaked[:min(len(leaked), 10)])
	}
	tapMu.Unlock()

	// The bystander was never disturbed and still gets its room.
	if err := nc.Publish("natter.out.room.lobby", []byte(`{"type":"news","payload":1}`)); err != nil {
		t.Fatal(err)
	}
	bystander.AwaitType(t, "news", wait)
	for {
		raw, ok := bystander.NextRaw(0)
		if !ok {
			break
		}
		t.Fatalf("the bystander got %s", raw)
	}

	testenv.GoroutinesSettle(t, base, 3, 10*time.Second)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("heap in use %d KiB before, %d KiB after", before.HeapInuse>>10, after.HeapInuse>>10)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 32<<20 {
		t.Fatalf("heap grew by %d MiB", grown>>20)
	}
}

// rawRequest writes a raw HTTP request and returns the response status.
func rawRequest(t *testing.T, addr, req string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	go func() { _, _ = io.WriteString(c, req) }() // the server may answer before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("raw request: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func isClosedErr(err error) bool {
	return err == io.EOF || strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "closed")
}
