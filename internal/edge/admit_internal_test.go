package edge

import (
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestIPKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"203.0.113.9", "203.0.113.9"},
		{"::ffff:203.0.113.9", "203.0.113.9"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"not-an-ip", ""},
		{"", ""},
	} {
		got, ok := ipKey(tc.in)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("ipKey(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}

// Past maxTrackedIPs, new addresses share one limiter instead of going
// unlimited. Not parallel: it changes the package's maxTrackedIPs, which
// every edge's handshakes read.
func TestHandshakeLimiterOverflow(t *testing.T) {
	defer func(n int) { maxTrackedIPs = n }(maxTrackedIPs)
	maxTrackedIPs = 2
	e := &Edge{cfg: Config{Limits: LimitsConfig{HandshakeRate: 0.001, HandshakeBurst: 1}}}
	e.adm.init()
	now := time.Now()
	for _, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		if _, ok := e.allowHandshake(ip, now); !ok {
			t.Fatalf("first handshake of %s refused", ip)
		}
	}
	if _, ok := e.allowHandshake("10.0.0.3", now); !ok {
		t.Fatal("the overflow limiter's first handshake refused")
	}
	if _, ok := e.allowHandshake("10.0.0.4", now); ok {
		t.Fatal("a fourth address went unlimited past the bound")
	}
}

// The rate limit check runs on every client frame; admitting one allocates
// nothing.
func TestDelayAdmitsWithoutAllocating(t *testing.T) {
	lim := rate.NewLimiter(rate.Inf, 1)
	now := time.Now()
	if n := testing.AllocsPerRun(100, func() { delay(lim, now) }); n != 0 {
		t.Fatalf("%v allocations per admitted frame", n)
	}
	slow := rate.NewLimiter(1, 1)
	if _, ok := delay(slow, now); !ok {
		t.Fatal("first token refused")
	}
	if wait, ok := delay(slow, now); ok || wait <= 0 || wait > time.Second {
		t.Fatalf("second token: ok=%v wait=%v; want refused with a wait of at most 1s", ok, wait)
	}
}
