package routine_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natter/natter/internal/routine"
)

// noLeak fails t unless the number of goroutines is back to what it was
// when noLeak was called, within a deadline, once the test ended. The
// tests that use it do not run in parallel.
func noLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines leaked: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			runtime.Gosched()
			time.Sleep(time.Millisecond) // polls, with the deadline above
		}
	})
}

func TestGoRunsAndWaitWaits(t *testing.T) {
	noLeak(t)
	var g routine.Group
	release := make(chan struct{})
	var ran atomic.Int32
	for range 10 {
		if !g.Go(func(context.Context) { <-release; ran.Add(1) }) {
			t.Fatal("Go refused on a running group")
		}
	}
	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with goroutines blocked = %v, want DeadlineExceeded", err)
	}
	close(release)
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := ran.Load(); n != 10 {
		t.Fatalf("Wait returned with %d of 10 goroutines done", n)
	}
	g.Stop()
}

func TestStopEndsContextAndRefuses(t *testing.T) {
	noLeak(t)
	var g routine.Group
	started := make(chan struct{})
	var cause atomic.Value
	g.Go(func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		cause.Store(ctx.Err())
	})
	<-started
	if g.Context().Err() != nil {
		t.Fatal("Context ended before Stop")
	}
	if g.Stopped() {
		t.Fatal("Stopped before Stop")
	}
	g.Stop()
	if !g.Stopped() {
		t.Fatal("not Stopped after Stop")
	}
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g.Context().Err() == nil {
		t.Fatal("Context did not end at Stop")
	}
	if err, _ := cause.Load().(error); !errors.Is(err, context.Canceled) {
		t.Fatalf("goroutine's context ended with %v, want Canceled", err)
	}
	tests := []struct {
		name  string
		start func(f func(context.Context)) bool
	}{
		{"Go", g.Go},
		{"Do", g.Do},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.start(func(context.Context) { t.Error("ran after Stop") }) {
				t.Fatal("accepted after Stop")
			}
		})
	}
}

func TestZeroGroup(t *testing.T) {
	tests := []struct {
		name string
		use  func(g *routine.Group)
	}{
		{"Wait", func(g *routine.Group) {}},
		{"Stop", func(g *routine.Group) { g.Stop() }},
		{"Stop twice", func(g *routine.Group) { g.Stop(); g.Stop() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g routine.Group
			tc.use(&g)
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // an empty group returns at once, whatever ctx
			if err := g.Wait(ctx); err != nil {
				t.Fatalf("Wait on an idle group = %v", err)
			}
		})
	}
}

func TestDoIsWaitedFor(t *testing.T) {
	noLeak(t)
	var g routine.Group
	inside, release := make(chan struct{}), make(chan struct{})
	var ctxEnded atomic.Bool
	did := make(chan bool)
	go func() {
		did <- g.Do(func(ctx context.Context) {
			close(inside)
			<-release
			ctxEnded.Store(ctx.Err() != nil)
		})
	}()
	<-inside
	g.Stop()
	waited := make(chan error, 1)
	go func() { waited <- g.Wait(context.Background()) }()
	select {
	case <-waited:
		t.Fatal("Wait returned while Do's f ran")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	if !<-did {
		t.Fatal("Do reported false for f that ran")
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if !ctxEnded.Load() {
		t.Fatal("Do's context did not end at Stop")
	}
}

// TestGoStopRace starts goroutines from many callers while another stops
// the group: every Go that reported true ran, and Wait after Stop waited
// for all of them. Run it with -race.
func TestGoStopRace(t *testing.T) {
	noLeak(t)
	for round := range 50 {
		var g routine.Group
		var accepted, ran atomic.Int64
		var waited atomic.Bool
		var callers sync.WaitGroup
		start := make(chan struct{})
		for range 8 {
			callers.Add(1)
			go func() {
				defer callers.Done()
				<-start
				for range 50 {
					ok := g.Go(func(context.Context) {
						runtime.Gosched()
						if waited.Load() {
							t.Error("a goroutine ran after Wait returned")
						}
						ran.Add(1)
					})
					if ok {
						accepted.Add(1)
					}
				}
			}()
		}
		close(start)
		runtime.Gosched()
		g.Stop()
		if err := g.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		waited.Store(true)
		// A Go that reported true did so before Stop (they are ordered),
		// so the count is final once the callers are done too.
		callers.Wait()
		if a, r := accepted.Load(), ran.Load(); a != r {
			t.Fatalf("round %d: %d accepted, %d ran before Wait returned", round, a, r)
		}
	}
}

func TestConcurrentStopAndWait(t *testing.T) {
	noLeak(t)
	var g routine.Group
	for range 4 {
		g.Go(func(ctx context.Context) { <-ctx.Done() })
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(2)
		go func() { defer wg.Done(); g.Stop() }()
		go func() {
			defer wg.Done()
			if err := g.Wait(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

// TestGoFromGroupGoroutine: a goroutine of the group hands work to another
// one; Wait waits for both, and after Stop the hand-off is refused.
func TestGoFromGroupGoroutine(t *testing.T) {
	noLeak(t)
	var g routine.Group
	var second atomic.Bool
	g.Go(func(context.Context) {
		g.Go(func(context.Context) { second.Store(true) })
	})
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !second.Load() {
		t.Fatal("Wait returned before the goroutine started by a goroutine of the group")
	}
	g.Stop()
	refused := make(chan bool, 1)
	var h routine.Group
	h.Go(func(context.Context) {
		h.Stop()
		refused <- !h.Go(func(context.Context) {})
	})
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !<-refused {
		t.Fatal("Go from a goroutine of a stopped group was accepted")
	}
}

func ExampleGroup() {
	var g routine.Group
	ticks := make(chan int)
	g.Go(func(ctx context.Context) {
		for i := 0; ; i++ {
			select {
			case ticks <- i:
			case <-ctx.Done():
				return
			}
		}
	})
	fmt.Println(<-ticks, <-ticks)
	g.Stop()
	_ = g.Wait(context.Background())
	fmt.Println(g.Go(func(context.Context) {}))
	// Output:
	// 0 1
	// false
}
