package e2e_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The edge's admin listener, configured from a YAML file: liveness,
// readiness that fails during the drain, and Prometheus metrics.
func TestEdgeAdminListener(t *testing.T) {
	srv := testenv.NATS(t)
	cfg := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(cfg, []byte("admin-listen: 127.0.0.1:0\ndrain-delay: 1500ms\ninsecure-dev-users: true\nshutdown-spread: 10ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, "edge", "--nats", srv.ClientURL(), "--listen", "127.0.0.1:0", "--config", cfg, "--log-format", "json")
	admin := "http://" + p.WaitLog(t, `"msg":"admin listening","addr":"([^"]+)"`, wait)[1]
	m := p.WaitLog(t, `"msg":"edge listening","addr":"([^"]+)","path":"([^"]+)"`, wait)

	if code, _ := get(t, admin+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get(t, admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}
	c := wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=alice"))
	c.Request(t, "$join", map[string]string{"room": "lobby"}, wait)
	testenv.Eventually(t, wait, "metrics show the connection", func() bool {
		_, body := get(t, admin+"/metrics")
		return strings.Contains(body, "natter_edge_connections 1\n") &&
			strings.Contains(body, "natter_nats_connected 1\n") &&
			strings.Contains(body, "natter_nats_reconnects_total 0\n") &&
			strings.Contains(body, "natter_edge_frames_in_total 1\n") &&
			strings.Contains(body, "natter_edge_rpc_duration_seconds_count") &&
			strings.Contains(body, "go_goroutines")
	})

	// SIGTERM: readiness fails at once, while the drain delay keeps the
	// socket open; then clients get 4000.
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, wait, "readiness fails while draining", func() bool {
		code, body := get(t, admin+"/readyz")
		return code == 503 && strings.Contains(body, "draining")
	})
	if c.Closed() {
		t.Fatal("the socket closed before the drain delay ended")
	}
	// A handshake during the drain delay is refused (deploy/README.md),
	// not accepted and closed with 4000.
	if status, body, h := wstest.Handshake(t, wstest.WSURL(m[1], m[2], "user=carol"), nil, ""); status != 503 || h.Get("Retry-After") == "" {
		t.Fatalf("handshake while draining: %d %q (Retry-After %q), want 503 with Retry-After", status, body, h.Get("Retry-After"))
	}
	if code := c.WaitClose(t, wait); code != 4000 {
		t.Fatalf("close code %d, want 4000", code)
	}
	if code := p.Wait(t, wait); code != 0 {
		t.Fatalf("edge exited %d", code)
	}
}

// The worker's admin listener: ready while NATS is connected; not ready
// once NATS is gone.
func TestWorkerAdminListener(t *testing.T) {
	srv := testenv.NATS(t)
	w := testenv.Start(t, "worker", "--nats", srv.ClientURL(), "--admin-listen", "127.0.0.1:0", "--worker-id", "w-test")
	admin := "http://" + w.WaitLog(t, `msg="admin listening" addr=(\S+)`, wait)[1]
	w.WaitLog(t, `msg="worker ready".* worker=w-test`, wait)
	if code, body := get(t, admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if _, body := get(t, admin+"/metrics"); !strings.Contains(body, "natter_nats_connected 1\n") {
		t.Fatalf("metrics:\n%s", body)
	}
	srv.Shutdown()
	testenv.Eventually(t, 10*time.Second, "not ready without NATS", func() bool {
		code, body := get(t, admin+"/readyz")
		return code == 503 && strings.Contains(body, "NATS disconnected")
	})
	if code, _ := get(t, admin+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d without NATS; liveness must not depend on it", code)
	}
}
