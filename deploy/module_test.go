package deploy_test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkspaceKeepsRootVersions checks that joining this module to the
// root's in go.work changes the version of no module that the root's
// packages and tests are built from: the
// tests run in the workspace, the image and Natter's users build the root
// module alone (GOWORK=off), and both must be the same program. A
// requirement of this module that raises a shared dependency fails here;
// raise it in the root's go.mod first (or keep this one's lower).
func TestWorkspaceKeepsRootVersions(t *testing.T) {
	work, err := filepath.Abs(filepath.Join("..", "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	list := func(gowork string) map[string]string {
		out := run(t, "..", []string{"GOWORK=" + gowork}, "go", "list", "-deps", "-test", "-f", "{{with .Module}}{{.Path}} {{.Version}}{{end}}", "./...")
		versions := map[string]string{}
		for line := range strings.Lines(out) {
			if path, version, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
				versions[path] = version
			}
		}
		return versions
	}
	alone, workspace := list("off"), list(work)
	if len(alone) == 0 {
		t.Fatal("go list lists no module the root's packages come from")
	}
	for path, v := range alone {
		if w, ok := workspace[path]; ok && w != v {
			t.Errorf("%s: %s in the workspace, %s in the root module alone", path, w, v)
		}
	}
}
