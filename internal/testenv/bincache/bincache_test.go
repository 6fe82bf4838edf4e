package bincache

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// program writes a main module in dir whose binary prints version.
func program(t *testing.T, dir, version string) {
	t.Helper()
	files := map[string]string{
		"go.mod":  "module example.com/hello\n\ngo 1.26\n",
		"main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + version + "\") }\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func runHello(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(dir, "hello")).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestBuild checks that an unchanged module is not linked again, that a
// changed one is, and that the copy an earlier Build returned keeps the
// binary it had.
func TestBuild(t *testing.T) {
	t.Setenv("GOWORK", "off")
	base, root := t.TempDir(), t.TempDir()
	program(t, root, "v1")
	first, err := build(base, root, nil, []string{"."})
	if err != nil {
		t.Fatal(err)
	}
	if got := runHello(t, first); got != "v1" {
		t.Fatalf("first build prints %q, want v1", got)
	}
	linked, err := os.Stat(filepath.Join(first, "hello"))
	if err != nil {
		t.Fatal(err)
	}

	again, err := build(base, root, nil, []string{"."})
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Fatalf("unchanged module: copy %s, want the first one %s", again, first)
	}
	out, err := os.Stat(filepath.Join(filepath.Dir(first), "out", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(out, linked) {
		t.Fatal("unchanged module: go build linked it again")
	}

	program(t, root, "v2")
	changed, err := build(base, root, nil, []string{"."})
	if err != nil {
		t.Fatal(err)
	}
	if changed == first {
		t.Fatal("changed source: the same copy as before")
	}
	if got := runHello(t, changed); got != "v2" {
		t.Fatalf("after the change: %q, want v2", got)
	}
	if got := runHello(t, first); got != "v1" {
		t.Fatalf("the first copy now prints %q, want v1 still", got)
	}
}

// TestBuildConcurrent checks that builds at the same time wait for each
// other and return the same copy.
func TestBuildConcurrent(t *testing.T) {
	t.Setenv("GOWORK", "off")
	base, root := t.TempDir(), t.TempDir()
	program(t, root, "v1")
	dirs := make([]string, 4)
	var wg sync.WaitGroup
	for i := range dirs {
		wg.Go(func() {
			dir, err := build(base, root, nil, []string{"."})
			if err != nil {
				t.Error(err)
			}
			dirs[i] = dir
		})
	}
	wg.Wait()
	for _, d := range dirs[1:] {
		if d != dirs[0] {
			t.Fatalf("copies %q: want one", dirs)
		}
	}
	if got := runHello(t, dirs[0]); got != "v1" {
		t.Fatalf("prints %q, want v1", got)
	}
}

// TestPrune checks that builds and copies unused for maxAge go, and the
// rest stays.
func TestPrune(t *testing.T) {
	base := t.TempDir()
	long := time.Now().Add(-2 * maxAge)
	mk := func(path string, at time.Time) string {
		t.Helper()
		p := filepath.Join(base, path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldCopy := mk("used/0123", long)
	newCopy := mk("used/4567", time.Now())
	out := mk("used/out", long)
	mk("used", time.Now())
	oldBuild := mk("gone", long)
	prune(base, time.Now().Add(-maxAge))
	for path, want := range map[string]bool{oldCopy: false, newCopy: true, out: true, oldBuild: false} {
		if _, err := os.Stat(path); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", path, err == nil, want)
		}
	}
}
