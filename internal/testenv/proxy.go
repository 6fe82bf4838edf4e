package testenv

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Proxy is a TCP proxy to a NATS server that a test can cut, like a
// network partition between one client and NATS.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  []net.Conn
}

// StartProxy proxies a random loopback port to target (a nats:// URL or
// host:port) until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: strings.TrimPrefix(target, "nats://"), up: true}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if !p.up {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			d, err := net.Dial("tcp", p.target)
			if err != nil {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			p.conns = append(p.conns, c, d)
			p.mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(d, c); _ = d.Close() })
			wg.Go(func() { _, _ = io.Copy(c, d); _ = c.Close() })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		wg.Wait()
	})
	return p
}

// URL is the proxy's nats:// URL.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Cut closes every proxied connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = false
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.up = true
	p.mu.Unlock()
}
