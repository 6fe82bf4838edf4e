package presencekv

import (
	"time"

	"github.com/natter/natter/internal/routine"
)

// Kill stops the service as a SIGKILL of its edge would: its goroutines
// end, its lease is no longer refreshed, and nothing is removed.
func (s *Service) Kill() {
	s.stopOnce.Do(func() {
		if s.querySub != nil {
			_ = s.querySub.Unsubscribe()
		}
		s.stopping.Store(true)
		s.stopKeeper()
		s.stopLoops()
	})
}

// SetBackup sets how long an edge that is not the first waits before it
// removes a dead edge's keys (0: every edge at once).
func (s *Service) SetBackup(d time.Duration) { s.backup.Store(int64(d)) }

// Conflicts counts the removals the server refused because the key had
// changed (another edge removed it first, or its edge wrote it again).
func (s *Service) Conflicts() int64 { return s.conflicts.Load() }

// Pause stops the keeper, as a long pause of the edge's process would stop
// its lease refreshes (the watcher goes on); resume starts it again.
func (s *Service) Pause() (resume func()) {
	s.stopKeeper()
	return func() {
		s.keeper = new(routine.Group)
		s.keeper.Go(s.keep)
	}
}

// Drained reports whether every event derived so far is published and
// acknowledged by the event stream.
func (s *Service) Drained() bool {
	return len(s.events) == 0 && s.evjs.PublishAsyncPending() == 0
}

// SetEventQueue sets the event queue of services started from now on,
// and returns a function that restores it.
func SetEventQueue(n int) (restore func()) {
	old := eventQueue
	eventQueue = n
	return func() { eventQueue = old }
}

// QueueFull counts the events that found the event queue full.
func (s *Service) QueueFull() int64 { return s.queueFull.Load() }

// SetSlowWatcher makes s's watcher sleep d per change, as a watcher that
// lags behind the bucket under load.
func (s *Service) SetSlowWatcher(d time.Duration) { s.slowApply.Store(int64(d)) }
