// Package clients_test runs the TypeScript client's own tests (Node's test
// runner against a real edge) from go test, so that the README's test
// command covers them.
package clients_test

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
)

func TestTypeScriptClient(t *testing.T) {
	const demoCopy = "../internal/demo/static/natter.js"
	before, err := os.ReadFile(demoCopy)
	if err != nil {
		t.Fatal(err)
	}
	// npm test builds (tsc, then the copy the demo page embeds), type-checks
	// the generated payload types and runs the tests.
	testenv.NPM(t, "clients", "test", 5*time.Minute)
	after, err := os.ReadFile(demoCopy)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("%s was stale: the build rewrote it; commit the new copy (cd clients && npm run build)", demoCopy)
	}
}
