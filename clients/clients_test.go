// Package clients_test runs the TypeScript client's own tests (Node's test
// runner against a real edge) from go test, so that the README's test
// command covers them.
package clients_test

import (
	"bytes"
	"io/fs"
	"maps"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
)

func TestTypeScriptClient(t *testing.T) {
	before := demoCopy(t)
	// npm test builds (tsc, then the copy the demo page embeds), type-checks
	// the generated payload types and runs the tests.
	testenv.NPM(t, "clients", "test", 10*time.Minute) // beside clients/ai and the other packages under go test ./..., 5 min was once too short
	after := demoCopy(t)
	for _, name := range slices.Sorted(maps.Keys(after)) {
		if old, ok := before[name]; !ok {
			t.Errorf("internal/demo/static/%s was missing: the build added it", name)
		} else if !bytes.Equal(old, after[name]) {
			t.Errorf("internal/demo/static/%s was stale: the build rewrote it", name)
		}
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			t.Errorf("internal/demo/static/%s was stale: the build removed it", name)
		}
	}
	if t.Failed() {
		t.Log("commit the new copy: cd clients && npm run build")
	}
}

// demoCopy reads the copy of the built client that the demo page embeds:
// static/natter.js and the modules it imports, static/natter/*.js.
func demoCopy(t *testing.T) map[string][]byte {
	t.Helper()
	static := os.DirFS("../internal/demo/static")
	files := map[string][]byte{}
	for _, pattern := range []string{"natter.js", "natter/*.js"} {
		names, err := fs.Glob(static, pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			b, err := fs.ReadFile(static, name)
			if err != nil {
				t.Fatal(err)
			}
			files[name] = b
		}
	}
	if files["natter.js"] == nil {
		t.Fatal("internal/demo/static/natter.js is missing: cd clients && npm run build")
	}
	return files
}
