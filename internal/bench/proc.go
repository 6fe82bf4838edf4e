package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (getconf CLK_TCK);
// reading it needs sysconf, which needs cgo.
const clockTicks = 100

// ErrNoProcess means the server process could not be found or read.
var ErrNoProcess = errors.New("bench: server process not found")

// procSample is one reading of a process's memory and CPU.
type procSample struct {
	rssKiB int64 // VmRSS, KiB (the kernel's "kB" is 1024 bytes)
	ticks  int64 // utime + stime, in clockTicks
}

func (s procSample) cpuSeconds() float64 { return float64(s.ticks) / clockTicks }

// sampleProc reads VmRSS from /proc/<pid>/status and utime+stime from
// /proc/<pid>/stat.
func sampleProc(pid int) (procSample, error) {
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("%w: %v", ErrNoProcess, err)
	}
	found := false
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return s, fmt.Errorf("bench: pid %d: unexpected VmRSS line %q", pid, line)
			}
			if s.rssKiB, err = strconv.ParseInt(f[0], 10, 64); err != nil {
				return s, fmt.Errorf("bench: pid %d: VmRSS: %w", pid, err)
			}
			found = true
			break
		}
	}
	if !found {
		return s, fmt.Errorf("%w: pid %d has no VmRSS (a zombie?)", ErrNoProcess, pid)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("%w: %v", ErrNoProcess, err)
	}
	s.ticks, err = parseStatTicks(stat)
	if err != nil {
		return s, fmt.Errorf("bench: pid %d: %w", pid, err)
	}
	return s, nil
}

// parseStatTicks returns utime+stime from the contents of /proc/<pid>/stat.
// The command name (field 2) is in parentheses and may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStatTicks(stat []byte) (int64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	// After ')': field 3 (state) is f[0], so utime (14) is f[11], stime (15) f[12].
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return u + s, nil
}

// selfCPUSeconds is this process's user+system CPU time.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// listenerPid finds the process holding a TCP socket that listens on port,
// from /proc/net/tcp{,6} and the /proc/<pid>/fd links. Processes of other
// users cannot be inspected without privileges; then pass the pid.
func listenerPid(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // no IPv6
		}
		for _, ino := range listenInodes(b, port) {
			inodes["socket:["+ino+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("%w: nothing listens on port %d", ErrNoProcess, port)
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		link, err := os.Readlink(fd)
		if err != nil || !inodes[link] {
			continue
		}
		pid, err := strconv.Atoi(strings.Split(fd, "/")[2])
		if err == nil {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("%w: a socket listens on port %d but no readable process holds it (another user's? pass -pid)", ErrNoProcess, port)
}

// listenInodes returns the inodes of the LISTEN sockets on port in the
// contents of /proc/net/tcp or /proc/net/tcp6.
func listenInodes(table []byte, port int) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != "0A" { // 0A: TCP_LISTEN
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port && f[9] != "0" {
			out = append(out, f[9])
		}
	}
	return out
}

// openFileLimit returns the soft RLIMIT_NOFILE of pid, from
// /proc/<pid>/limits.
func openFileLimit(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrNoProcess, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			if f[0] == "unlimited" {
				return 1 << 30, nil
			}
			return strconv.Atoi(f[0])
		}
	}
	return 0, fmt.Errorf("bench: pid %d: no open-file limit in /proc/%d/limits", pid, pid)
}

// RaiseFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit and returns the new soft limit.
func RaiseFileLimit() (int, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("bench: getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("bench: setrlimit: %w", err)
		}
	}
	return int(min(lim.Cur, 1<<30)), nil
}
