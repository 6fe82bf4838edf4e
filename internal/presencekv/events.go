package presencekv

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/presence"
)

// eventQueue holds the derived events for the publisher: a slice that
// grows with a burst (an edge of many connections died, or they all
// reconnect: two or three events each) up to max, so that the watcher
// neither waits for the event stream nor drops an event. At max (about
// 100 MB of events) the watcher waits for room.
type eventQueue struct {
	mu      sync.Mutex
	q       []presence.Event
	max     int
	ready   chan struct{} // an event was queued (the publisher's wake-up)
	room    chan struct{} // events were taken (a waiting watcher's wake-up)
	waiting bool          // the watcher waits for room
	// unsent counts the events queued or taken and not yet handed to
	// the NATS client: what Stop and the tests wait for.
	unsent atomic.Int64
}

func newEventQueue(max int) *eventQueue {
	return &eventQueue{max: max, ready: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

func (q *eventQueue) len() int { return int(q.unsent.Load()) }

// take returns the queued events and empties the queue.
func (q *eventQueue) take() []presence.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.q
	q.q = nil
	if q.waiting {
		select {
		case q.room <- struct{}{}:
		default:
		}
	}
	return out
}

// publish queues an event for the publisher. The edge that died
// published nothing, and the survivors all see the same burst: an event
// dropped here may be lost for good (a bounded channel that dropped lost
// 3.6 to 4.3 % of the events of a 50,000-connection edge's death,
// docs/scale.md).
func (s *Service) publish(e presence.Event) {
	q := s.events
	for {
		q.mu.Lock()
		if len(q.q) < q.max {
			q.q = append(q.q, e)
			q.unsent.Add(1)
			q.waiting = false
			q.mu.Unlock()
			select {
			case q.ready <- struct{}{}:
			default:
			}
			return
		}
		q.waiting = true
		q.mu.Unlock()
		if s.queueFull.Add(1) == 1 || s.warn.Allow() {
			s.cfg.Logger.Warn("presence: event queue full; the watcher waits for the event publisher", "queued", q.max)
		}
		select {
		case <-q.room:
		case <-s.loops.Context().Done():
			return
		}
	}
}

// publishEvents publishes the queued events with the message id
// <revision>.<event>.<room>, which the event stream deduplicates. A
// publish refused because too many await their acknowledgement is tried
// again: the publisher waits, not the watcher.
func (s *Service) publishEvents(ctx context.Context) {
	for {
		select {
		case <-s.events.ready:
		case <-ctx.Done():
			return
		}
		for _, e := range s.events.take() {
			b, _ := json.Marshal(e)
			id := strconv.FormatUint(e.Revision, 10) + "." + e.Event + "." + e.Room
			subj := s.cfg.Namespace.Prefix() + ".evtq." + e.Event
			for {
				_, err := s.evjs.PublishAsync(subj, b, jetstream.WithMsgID(id))
				if err == nil || ctx.Err() != nil {
					break
				}
				if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
					s.cfg.Logger.Warn("presence: event", "event", e.Event, "err", err)
					break
				}
			}
			s.events.unsent.Add(-1)
			s.progressed()
		}
	}
}

func (s *Service) addDiff(room string, f func(*Diff)) {
	if s.cfg.Diff == nil || !s.cfg.Interested(room) {
		return
	}
	s.diffMu.Lock()
	if len(s.pending) == 0 {
		select {
		case s.diffDue <- struct{}{}:
		default:
		}
	}
	d := s.pending[room]
	if d == nil {
		d = &Diff{Room: room}
		s.pending[room] = d
	}
	f(d)
	s.diffMu.Unlock()
}

// flushLoop hands a batch of diffs to the edge DiffInterval after its first
// change. While no room changes it waits on a channel, with no timer, so an
// idle edge does not wake up for diffs.
func (s *Service) flushLoop(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.diffDue:
		}
		t.Reset(s.cfg.DiffInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		s.flushDiffs()
	}
}

// flushDiffs hands each room's batched changes to the edge.
func (s *Service) flushDiffs() {
	s.diffMu.Lock()
	if len(s.pending) == 0 {
		s.diffMu.Unlock()
		return
	}
	batch := s.pending
	s.pending = make(map[string]*Diff)
	s.diffMu.Unlock()
	for room, d := range batch {
		s.cfg.Diff(room, d)
	}
}
