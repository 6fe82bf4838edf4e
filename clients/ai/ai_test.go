// Package ai_test runs natter-ai's tests (Node's test runner: the AI SDK's
// chat over NatterChatTransport against a real edge process, in Node and
// in headless Chromium) from go test, so that the README's test command
// covers them.
package ai_test

import (
	"cmp"
	"os"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
)

func TestChatTransport(t *testing.T) {
	chromium := cmp.Or(os.Getenv("CHROMIUM"), "/usr/bin/chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("natter-ai's browser test needs Debian's Chromium at %s: apt-get install chromium (.ci/run does)", chromium)
	}
	// npm test builds (tsc), type-checks against the client's source,
	// bundles the client for the tests and runs them.
	testenv.NPM(t, "clients/ai", "test", 5*time.Minute)
}
