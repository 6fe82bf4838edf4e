//go:build !linux

package edge

import (
	"errors"
	"syscall"
)

// writev is never called off Linux: connections there have no raw
// descriptor and use their own writer goroutine.
func (s *writerShard) writev(uintptr) bool {
	s.err = errors.ErrUnsupported
	return true
}

const nonblockingWrites = false

// unsent cannot tell the unacknowledged bytes of a send queue here.
func unsent(syscall.Conn) (int, bool) { return 0, false }
