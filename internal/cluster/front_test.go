//go:build cluster

package cluster_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// front is a TCP load balancer in front of edges, as in production: each
// connection goes to the first backend that accepts it. Clients dialing
// the front land on the first edge while it listens and on the next one
// once it stops, which is how they "reconnect through the other edge".
type front struct {
	ln       net.Listener
	backends []string // guarded by mu

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // the accept loop and every copy
}

// startFront listens on a loopback port; t's cleanup closes the listener
// and every connection and waits for the goroutines.
func startFront(t testing.TB, backends ...string) *front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &front{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

// addr is the front's host:port.
func (f *front) addr() string { return f.ln.Addr().String() }

func (f *front) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.handle(c)
	}
}

// handle pipes c to the first backend that accepts a connection; when
// either side ends, both are closed.
func (f *front) handle(c net.Conn) {
	defer f.wg.Done()
	var b net.Conn
	f.mu.Lock()
	backends := f.backends
	f.mu.Unlock()
	for _, addr := range backends {
		var err error
		if b, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
	}
	if b == nil || !f.track(c, b) {
		_ = c.Close()
		if b != nil {
			_ = b.Close()
		}
		return
	}
	done := make(chan struct{})
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_, _ = io.Copy(b, c)
		close(done)
	}()
	_, _ = io.Copy(c, b)
	_ = c.Close()
	_ = b.Close()
	<-done
	f.untrack(c, b)
}

// route sends new connections to backends (none: every connection is
// closed at once, an outage) and, with drop, cuts the current ones.
func (f *front) route(drop bool, backends ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends = backends
	if drop {
		for c := range f.conns {
			_ = c.Close()
		}
	}
}

func (f *front) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *front) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

func (f *front) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
