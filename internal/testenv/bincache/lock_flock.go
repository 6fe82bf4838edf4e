//go:build linux || darwin

package bincache

import (
	"os"
	"syscall"
)

// lock waits for an exclusive flock on path and returns its release. The
// kernel releases it too if the process dies holding it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
