package demo_test

import (
	"os"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
)

// TestBrowserDemo runs the demo's browser test (internal/demo/browser-test:
// node:test driving Debian's Chromium with playwright-core) from go test,
// so that the README's test command runs it.
func TestBrowserDemo(t *testing.T) {
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		t.Fatal("the browser test needs Debian's Chromium at /usr/bin/chromium: apt-get install chromium (.ci/run does)")
	}
	testenv.NPM(t, "internal/demo/browser-test", "test", 5*time.Minute)
}
