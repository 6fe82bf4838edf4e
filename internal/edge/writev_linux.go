package edge

import "golang.org/x/sys/unix"

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
