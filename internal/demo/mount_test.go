package demo_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/app"
	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/testenv"
)

// TestEdgeMountsDemo runs the single binary in-process: in dev mode "/" is
// the demo page; with authentication configured it is not (the page relies
// on the insecure ?user=), and "/" is the edge's one-line greeting.
func TestEdgeMountsDemo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		jwt   auth.JWTConfig
		root  string // substring of GET /
		appJS int    // status of GET /app.js
	}{
		{name: "dev mode", root: `data-testid="conn-state"`, appJS: http.StatusOK},
		{name: "with auth", jwt: auth.JWTConfig{HMACSecret: []byte("0123456789abcdef0123456789abcdef")},
			root: "WebSocket endpoint: /ws", appJS: http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rc := app.DefaultConfig()
			rc.Listener, rc.NATSListen, rc.DataDir = ln, "127.0.0.1:0", t.TempDir()
			rc.JWT.HMACSecret = tc.jwt.HMACSecret
			rc.Edge.Logger = testenv.Logger(t)
			rc.Edge.WebSocket.ShutdownSpread = time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- app.Run(ctx, rc) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("edge: %v", err)
				}
			})
			base := "http://" + ln.Addr().String()
			get := func(path string) (int, string) {
				resp, err := http.Get(base + path)
				if err != nil {
					return 0, err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			var status int
			var body string
			testenv.Eventually(t, 30*time.Second, "the edge serving /", func() bool {
				status, body = get("/")
				return status == http.StatusOK
			})
			if !strings.Contains(body, tc.root) {
				t.Errorf("GET /: %q does not contain %q", body, tc.root)
			}
			if status, _ := get("/app.js"); status != tc.appJS {
				t.Errorf("GET /app.js: %d, want %d", status, tc.appJS)
			}
			if status, body := get("/schemas"); status != http.StatusOK || !strings.Contains(body, "chat.send") {
				t.Errorf("GET /schemas: %d %.100s", status, body)
			}
		})
	}
}
