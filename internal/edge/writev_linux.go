package edge

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// writev is the callback for RawConn.Write: one writev of s.q that never
// waits. A full socket buffer (EAGAIN) is not an error; it wrote nothing.
func (s *writerShard) writev(fd uintptr) bool {
	for {
		n, err := unix.Writev(int(fd), s.q)
		switch err {
		case unix.EINTR:
			continue
		case nil:
			s.n = n
		case unix.EAGAIN:
		default:
			s.err = err
		}
		return true
	}
}

// nonblockingWrites says writev above works on this platform.
const nonblockingWrites = true

// unsent reports the bytes of c's send queue that the peer has not yet
// acknowledged (SIOCOUTQ), and whether it could tell.
func unsent(c syscall.Conn) (int, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	n, ierr := 0, error(nil)
	if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
