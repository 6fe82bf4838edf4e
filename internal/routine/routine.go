// Package routine owns goroutines. A Group starts them, refuses to start
// more once it is stopped, and waits for them: every long-lived component
// of Natter (the edge and its connections, the writer pool, the
// dispatcher, durable rooms, the work queue, presence, the admin listener)
// holds its goroutines in one, so that each can be stopped and waited for
// in one way. It is nats-server's startGoRoutine (a WaitGroup that counts
// only while the server runs, under the lock that stops it) with a
// context that ends at Stop, which the goroutines watch.
//
// Concurrency: a Group's methods are safe for concurrent use. Go and Stop
// are ordered by the group's lock, so a Go that returned true started its
// goroutine before any Stop that follows it, and every Wait that begins
// after that Stop waits for it. A goroutine of the group may call Go
// (a goroutine it hands work to) but must not Wait for its own group.
package routine

import (
	"context"
	"sync"
)

// Group is a set of owned goroutines. The zero value is ready to use: it
// runs until Stop. A Group must not be copied after first use.
type Group struct {
	mu      sync.Mutex
	ctx     context.Context // ends at Stop; made on first use
	cancel  context.CancelFunc
	stopped bool
	n       int           // goroutines (and Do calls) running
	idle    chan struct{} // closed when n drops to zero; made by a Wait that finds n above zero
}

// initLocked makes the group's context; g.mu is held.
func (g *Group) initLocked() {
	if g.ctx == nil {
		g.ctx, g.cancel = context.WithCancel(context.Background())
	}
}

// enter counts one more member unless the group stopped, and returns the
// context it runs with.
func (g *Group) enter() (context.Context, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return nil, false
	}
	g.initLocked()
	g.n++
	return g.ctx, true
}

func (g *Group) leave() {
	g.mu.Lock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
	g.mu.Unlock()
}

// Go runs f on a new goroutine of the group, unless the group was
// stopped: then f never runs and Go reports false, and the caller must
// undo what it prepared for f. f's context ends at Stop; f should return
// soon after.
func (g *Group) Go(f func(ctx context.Context)) bool {
	ctx, ok := g.enter()
	if !ok {
		return false
	}
	go func() {
		defer g.leave()
		f(ctx)
	}()
	return true
}

// Do runs f on the calling goroutine as a member of the group, for work
// the group does not start itself (an HTTP handler): unless the group was
// stopped (then f never runs and Do reports false), Wait waits for f to
// return. f's context ends at Stop.
func (g *Group) Do(f func(ctx context.Context)) bool {
	ctx, ok := g.enter()
	if !ok {
		return false
	}
	defer g.leave()
	f(ctx)
	return true
}

// Stop refuses every later Go and Do and ends the context of the running
// goroutines. It does not wait for them (Wait does). Calls after the first
// do nothing.
func (g *Group) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	g.stopped = true
	g.initLocked()
	g.cancel()
}

// Context returns the context the group's goroutines get: it ends at
// Stop. Set-up whose result the goroutines will own (a watch they follow)
// can be made with it before they start.
func (g *Group) Context() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initLocked()
	return g.ctx
}

// Stopped reports whether Stop was called.
func (g *Group) Stopped() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopped
}

// Wait waits until no goroutine of the group runs, or until ctx ends, and
// then returns ctx's error. After Stop, once Wait returned nil, no
// goroutine of the group runs or will. Before Stop, a Go that follows may
// start another.
func (g *Group) Wait(ctx context.Context) error {
	g.mu.Lock()
	if g.n == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
