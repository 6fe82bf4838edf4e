// Package bincache builds the Go commands that tests run as processes
// (cmd/edge, cmd/worker, nats-server, nk) once for all the test processes
// of a run, and again only when something they are built from changes.
//
// go build links into a directory under the user's cache directory, one
// per module root, flags and packages, that outlives the test processes.
// go build's own up-to-date check (the build ID of each binary there
// against the one its sources, embedded files, go.sum, flags and toolchain
// give now) decides whether to link again: a changed input always gives a
// new binary, and an unchanged one costs a no-op go build of a fraction of
// a second. A lock file makes the test processes that `go test` runs in
// parallel wait for the first one's build instead of linking side by side.
//
// That directory changes whenever a later build relinks, such as another
// run after a source edit while this one still starts processes, so Build
// returns an immutable copy instead: hard links in a directory named by a
// hash of the binaries, which no later build writes to. Copies that no
// Build returned for a day are removed (a test process never lives that
// long); the whole cache may be deleted at any time.
//
// It imports only the standard library, so that the deploy module's tests
// use it too.
package bincache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// maxAge is how long a build directory or copy stays after the last Build
// that used it.
const maxAge = 24 * time.Hour

// Commands builds cmd/edge and cmd/worker of the module at root with the
// race detector, as the tests run them. Every test that starts them calls
// this, so that all of a run share one build.
func Commands(root string) (string, error) {
	return Build(root, []string{"-race"}, "./cmd/edge", "./cmd/worker")
}

// Build runs `go build flags -o DIR/ pkgs` in the module directory root and
// returns a directory holding the binaries under the names go build gives
// them, which no later Build changes. pkgs are main packages: relative to
// root, or import paths of commands in modules that root's go.mod requires.
func Build(root string, flags []string, pkgs ...string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return build(filepath.Join(base, "natter-test-bin"), root, flags, pkgs)
}

// build is Build with the cache in base.
func build(base, root string, flags, pkgs []string) (string, error) {
	key := sha256.Sum256([]byte(strings.Join(append(append([]string{root}, flags...), pkgs...), "\x00")))
	dir := filepath.Join(base, hex.EncodeToString(key[:8]))
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	unlock, err := lock(filepath.Join(base, "lock"))
	if err != nil {
		return "", fmt.Errorf("bincache: lock: %w", err)
	}
	defer unlock()

	args := append(append([]string{"build"}, flags...), "-o", out+string(os.PathSeparator))
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bincache: %s (in %s): %w\n%s", strings.Join(cmd.Args, " "), root, err, b)
	}
	snap, err := snapshot(dir, out)
	if err != nil {
		return "", fmt.Errorf("bincache: %w", err)
	}
	now := time.Now()
	for _, p := range []string{dir, snap} {
		if err := os.Chtimes(p, now, now); err != nil {
			return "", fmt.Errorf("bincache: %w", err)
		}
	}
	prune(base, now.Add(-maxAge))
	return snap, nil
}

// snapshot returns the directory dir/<hash of out's files> holding hard
// links to them, making it first if no earlier build had the same files.
func snapshot(dir, out string) (string, error) {
	entries, err := os.ReadDir(out)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, e := range entries {
		f, err := os.Open(filepath.Join(out, e.Name()))
		if err != nil {
			return "", err
		}
		io.WriteString(h, e.Name()+"\x00")
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	snap := filepath.Join(dir, hex.EncodeToString(h.Sum(nil)[:8]))
	if _, err := os.Stat(snap); !errors.Is(err, fs.ErrNotExist) {
		return snap, err
	}
	tmp, err := os.MkdirTemp(dir, "tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for _, e := range entries {
		if err := os.Link(filepath.Join(out, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, snap); err != nil {
		// Without a lock (see lock_other.go) another process may have
		// made the same copy first.
		if _, statErr := os.Stat(snap); statErr != nil {
			return "", err
		}
	}
	return snap, nil
}

// prune removes the build directories and copies that no Build returned
// since before.
func prune(base string, before time.Time) {
	stale := func(e fs.DirEntry) bool {
		info, err := e.Info()
		return err == nil && e.IsDir() && info.ModTime().Before(before)
	}
	builds, _ := os.ReadDir(base)
	for _, b := range builds {
		dir := filepath.Join(base, b.Name())
		if stale(b) {
			os.RemoveAll(dir)
			continue
		}
		copies, _ := os.ReadDir(dir)
		for _, c := range copies {
			if c.Name() != "out" && stale(c) {
				os.RemoveAll(filepath.Join(dir, c.Name()))
			}
		}
	}
}
