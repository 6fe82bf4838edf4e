package demo_test

import (
	"cmp"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBrowserFallback runs browser-test/fallback.test.mjs (node:test driving
// Debian's Chromium with playwright-core): the demo page behind a proxy that
// refuses, then stalls, every WebSocket Upgrade must connect over sse and
// work (chat both ways, presence, typing, RPC) across a ctl close, dropped
// connections and an edge restart. npm test runs demo.test.mjs only; this
// runs the fallback file, so that go test runs both.
func TestBrowserFallback(t *testing.T) {
	chromium := cmp.Or(os.Getenv("CHROMIUM"), "/usr/bin/chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the browser test needs Debian's Chromium at %s: apt-get install chromium (.ci/run does)", chromium)
	}
	dir, err := filepath.Abs("browser-test")
	if err != nil {
		t.Fatal(err)
	}
	npmCI(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "fallback.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CI=1", "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test fallback.test.mjs in %s: %v\n%s", dir, err, out)
	}
	// The runs' timings and the proxy's counts.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "# ") && strings.Contains(line, ": ") && !strings.HasPrefix(line, "# Subtest") {
			t.Log(strings.TrimPrefix(line, "# "))
		}
	}
}
