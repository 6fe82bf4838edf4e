package bench

import (
	"errors"
	"net"
	"os"
	"slices"
	"testing"
)

func TestParseStatTicks(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want int64
		ok   bool
	}{
		{"plain", "42 (edge) S 1 42 42 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 9 0 1000 1 1 1", 267, true},
		{"name with spaces and parens", "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 9 0 1000 1 1 1", 10, true},
		{"short", "42 (edge) S 1 2", 0, false},
		{"no name", "garbage", 0, false},
		{"not a number", "42 (edge) S 1 42 42 0 -1 4194560 100 0 0 0 x 3 0", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatTicks([]byte(tt.stat))
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("got %d, %v; want %d, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestListenInodes(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0200007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
`
	if got := listenInodes([]byte(table), 8080); !slices.Equal(got, []string{"111"}) {
		t.Fatalf("port 8080: %v", got)
	}
	if got := listenInodes([]byte(table), 8081); !slices.Equal(got, []string{"333"}) {
		t.Fatalf("port 8081: %v", got)
	}
	if got := listenInodes([]byte(table), 9); got != nil {
		t.Fatalf("port 9: %v", got)
	}
}

func TestListenerPid(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			pid, err := listenerPid(port)
			if err != nil || pid != os.Getpid() {
				t.Fatalf("pid %d, %v; want %d", pid, err, os.Getpid())
			}
			_ = ln.Close()
			if _, err := listenerPid(port); !errors.Is(err, ErrNoProcess) {
				t.Fatalf("closed listener: %v", err)
			}
		})
	}
}

func TestSampleProc(t *testing.T) {
	s, err := sampleProc(os.Getpid())
	if err != nil || s.rssKiB <= 0 || s.ticks < 0 {
		t.Fatalf("%+v, %v", s, err)
	}
	if lim, err := openFileLimit(os.Getpid()); err != nil || lim < 1 {
		t.Fatalf("open-file limit %d, %v", lim, err)
	}
	if _, err := sampleProc(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("no such pid: %v", err)
	}
}
