package presencekv

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// keep runs the keeper until ctx ends: it refreshes the lease every TTL/3
// (and takes it again, rewriting this edge's keys, when it lapsed),
// rewrites own keys whose write failed, and removes the keys of edges
// without a lease and the delete markers that are due.
func (s *Service) keep(ctx context.Context) {
	t := time.NewTimer(0) // a first round at once: the loaded copy may hold dead edges
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		next := s.tend(ctx)
		t.Reset(max(time.Until(next), 10*time.Millisecond))
	}
}

// retryGap is the pause before a failed write is tried again.
func (s *Service) retryGap() time.Duration { return min(s.cfg.TTL/3, time.Second) }

// sweepGap is the least time between two sweeps, which kicks would
// otherwise repeat for every failed write.
const sweepGap = 100 * time.Millisecond

// tend does what is due and returns when the next round is.
func (s *Service) tend(ctx context.Context) time.Time {
	now := time.Now()
	if !now.Before(s.leaseDue(now)) {
		s.renew(ctx)
		now = time.Now()
	}
	next := s.leaseDue(now)
	if d := s.retryDirty(now); !d.IsZero() && d.Before(next) {
		next = d
	}
	if now.Before(s.sweptAt.Add(sweepGap)) {
		return minTime(next, s.sweptAt.Add(sweepGap))
	}
	s.sweptAt = now
	if d := s.sweep(now); !d.IsZero() && d.Before(next) {
		next = d
	}
	return next
}

// leaseDue is when the lease is to be written next: TTL/3 after the last
// stored write, at once when it lapsed, and a little after a failed
// attempt.
func (s *Service) leaseDue(now time.Time) time.Time {
	due := s.leaseAt.Add(s.cfg.TTL / 3)
	if s.lapsed.Load() > s.leaseSeq.Load() {
		due = now
	}
	if s.leaseTry.After(s.leaseAt) { // the last attempt failed
		due = maxTime(due, s.leaseTry.Add(s.retryGap()))
	}
	return due
}

// renew refreshes the lease. If it may have lapsed (the watcher saw it go
// or saw one of our keys removed by another edge, the refresh found
// another revision than ours, or no refresh was stored for a TTL: a
// partition, a long pause), it takes the lease again and then rewrites
// every own key: the other edges may have removed them meanwhile, and
// writes made meanwhile must stand.
func (s *Service) renew(ctx context.Context) {
	s.leaseTry = time.Now()
	lost := s.lapsed.Load() > s.leaseSeq.Load() || s.leaseTry.Sub(s.leaseAt) >= s.cfg.TTL
	err := s.writeLease(ctx, !lost)
	if err != nil && !lost && wrongLastSeq(err) {
		lost = true
		err = s.writeLease(ctx, false)
	}
	if err != nil {
		if ctx.Err() == nil && s.warn.Allow() {
			s.cfg.Logger.Warn("presence: lease refresh failed; retrying", "edge", s.cfg.Edge, "err", err)
		}
		return
	}
	if lost {
		s.reassert()
	}
}

// writeLease writes the lease with its TTL. A refresh expects the lease's
// last revision to be the one we wrote and rolls the older ones up;
// otherwise (at start, after a lapse or an unknown outcome) the write is
// unconditional.
func (s *Service) writeLease(ctx context.Context, refresh bool) error {
	body, _ := json.Marshal(struct {
		Edge string `json:"edge"`
		TTL  int    `json:"ttlSeconds"`
	}{s.cfg.Edge, int(s.cfg.TTL / time.Second)})
	m := nats.NewMsg(s.prefix + "edge." + s.cfg.Edge)
	m.Data = body
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(s.cfg.TTL)}
	if refresh && s.leaseRev != 0 {
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(s.leaseRev))
	}
	sent := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.ackWait())
	defer cancel()
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		if !wrongLastSeq(err) {
			s.leaseRev = 0 // stored or not: the next write is unconditional
		}
		return err
	}
	s.leaseRev, s.leaseAt = ack.Sequence, sent
	s.leaseSeq.Store(ack.Sequence)
	return nil
}

// reassert rewrites every own key, one at a time under ownMu and only if
// it is still the current entry (no rewrite undoes an Update or follows a
// Remove; connects never wait for the whole round).
func (s *Service) reassert() {
	s.ownMu.Lock()
	own := make([]*ownEntry, 0, len(s.own))
	for _, o := range s.own {
		own = append(own, o)
	}
	s.ownMu.Unlock()
	for _, o := range own {
		s.ownMu.Lock()
		if cur, ok := s.own[o.e.Conn]; ok && cur == o {
			s.put(o.e)
		}
		s.ownMu.Unlock()
	}
	s.cfg.Logger.Warn("presence: this edge's lease had lapsed; took it again and rewrote its connection keys",
		"edge", s.cfg.Edge, "connections", len(own))
}

// retryDirty writes again the own keys whose last write failed, as they
// are now: the entry if the connection is still held, else its removal.
// It returns when the next retry is due, or zero.
func (s *Service) retryDirty(now time.Time) time.Time {
	s.dirtyMu.Lock()
	if len(s.dirty) == 0 {
		s.dirtyMu.Unlock()
		return time.Time{}
	}
	if due := s.dirtyAt.Add(s.retryGap()); now.Before(due) {
		s.dirtyMu.Unlock()
		return due
	}
	if !s.cfg.NATS.IsConnected() {
		// Nothing is published while disconnected (publishOwn): look again
		// a gap later.
		s.dirtyAt = now
		s.dirtyMu.Unlock()
		return now.Add(s.retryGap())
	}
	ids := s.dirty
	s.dirty = make(map[string]struct{})
	s.dirtyMu.Unlock()
	s.ownMu.Lock()
	defer s.ownMu.Unlock()
	for id := range ids {
		if o, ok := s.own[id]; ok {
			s.put(o.e)
		} else {
			s.del(id)
		}
	}
	return time.Time{}
}

// removal is a key to remove if its revision is still rev.
type removal struct {
	id  string
	rev uint64
}

// sweep removes, from what the mirror holds:
//
//   - the connection keys of every edge whose lease lapsed, at once;
//   - those of an edge the mirror never saw holding a lease (an older edge,
//     or one whose lease expired before this mirror loaded), once it has
//     written no key for a TTL (older edges rewrite theirs every TTL/3);
//   - delete markers a TTL old, with their connection's earlier writes.
//
// The edge with the lowest id among those holding a lease does it at once;
// every other edge does what is left after the backup delay. Every removal
// is conditional on the revision the mirror holds, so that only one of
// racing removals wins and a key written since survives. It returns when
// the next removal is due, or zero.
func (s *Service) sweep(now time.Time) time.Time {
	var next time.Time
	due := func(t time.Time) bool {
		if now.Before(t) {
			next = minTime(next, t)
			return false
		}
		return true
	}
	gap := s.cfg.TTL / 3
	backup := time.Duration(s.backup.Load())
	var reap map[string]bool
	var purges []removal
	s.mu.Lock()
	first := s.firstLocked()
	for name, st := range s.edges {
		if name == s.cfg.Edge || st.lease != 0 || st.conns == 0 {
			continue
		}
		at := st.since
		if !st.lapse {
			at = maxTime(st.since, st.wrote).Add(s.cfg.TTL)
		}
		if !first {
			at = at.Add(backup)
		}
		if !st.swept.IsZero() {
			at = maxTime(at, st.swept.Add(gap)) // not again while the last round is in flight
		}
		if !due(at) {
			continue
		}
		st.swept = now
		if reap == nil {
			reap = make(map[string]bool)
		}
		reap[name] = st.lapse
	}
	for id, tb := range s.tombs {
		at := tb.seen.Add(s.cfg.TTL)
		if tb.owner != s.cfg.Edge {
			if o := s.edges[tb.owner]; o != nil && o.lease != 0 {
				at = tb.seen.Add(2 * s.cfg.TTL) // its edge's to purge, unless it fails to
			}
			if !first {
				at = at.Add(backup)
			}
		}
		if !tb.tried.IsZero() {
			at = maxTime(at, tb.tried.Add(gap))
		}
		if !due(at) {
			continue
		}
		tb.tried = now
		purges = append(purges, removal{id, tb.rev})
	}
	s.mu.Unlock()
	if len(reap) > 0 {
		var dels []removal
		count := make(map[string]int)
		s.mu.RLock()
		for id, r := range s.conns {
			if _, ok := reap[r.Edge]; ok && !r.refused {
				dels = append(dels, removal{id, r.rev})
				count[r.Edge]++
			}
		}
		s.mu.RUnlock()
		for edge, lapsed := range reap {
			why := "its lease lapsed"
			if !lapsed {
				why = "it holds no lease and wrote nothing for a TTL"
			}
			s.cfg.Logger.Info("presence: removing another edge's connection keys: "+why, "edge", edge, "keys", count[edge], "first", first)
		}
		for _, r := range dels {
			s.remove(r, false)
		}
	}
	for _, r := range purges {
		s.remove(r, true)
	}
	return next
}

// firstLocked reports whether this edge holds a lease and has the lowest
// id of those that do; mu is held.
func (s *Service) firstLocked() bool {
	if st := s.edges[s.cfg.Edge]; st == nil || st.lease == 0 {
		return false
	}
	for name, st := range s.edges {
		if st.lease != 0 && name < s.cfg.Edge {
			return false
		}
	}
	return true
}

// remove deletes a connection key (a delete marker, from which the
// watchers derive the events), or purges a delete marker and the
// connection's earlier writes (a rollup whose own marker expires after a
// TTL), if the key's revision is still r.rev.
func (s *Service) remove(r removal, purge bool) {
	m := nats.NewMsg(s.prefix + "conn." + r.id)
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(r.rev)}
	if purge {
		m.Header.Set(kvOperation, kvPurge)
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		opts = append(opts, jetstream.WithMsgTTL(s.cfg.TTL))
	} else {
		m.Header.Set(kvOperation, kvDel)
	}
	if _, err := s.js.PublishMsgAsync(m, opts...); err != nil {
		s.writeFailed(s.js, m, err)
	}
}

// removeStale removes the connection keys that name this edge when it
// starts, before it holds any connection: a previous edge of the same id
// left them (a restart within a TTL of a crash).
func (s *Service) removeStale() {
	var stale []removal
	s.mu.RLock()
	for id, r := range s.conns {
		if r.Edge == s.cfg.Edge {
			stale = append(stale, removal{id, r.rev})
		}
	}
	s.mu.RUnlock()
	if len(stale) == 0 {
		return
	}
	s.cfg.Logger.Info("presence: removing the connection keys a previous edge of this id left", "edge", s.cfg.Edge, "keys", len(stale))
	for _, r := range stale {
		s.remove(r, false)
	}
}

// dropLease purges the lease when the edge stops (the other edges see it go
// like an expiry, with nothing left to remove). An edge that is the last
// one holding a lease also purges the delete markers now, since no one
// else will; it waits for that until deadline, or a second.
func (s *Service) dropLease(deadline time.Time) {
	deadline = maxTime(deadline, time.Now().Add(time.Second))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	m := nats.NewMsg(s.prefix + "edge." + s.cfg.Edge)
	m.Header.Set(kvOperation, kvPurge)
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithMsgTTL(s.cfg.TTL)); err != nil {
		s.cfg.Logger.Warn("presence: removing the lease failed; it expires", "edge", s.cfg.Edge, "err", err)
		return
	}
	var purges []removal
	s.mu.RLock()
	alone := true
	for name, st := range s.edges {
		if st.lease != 0 && name != s.cfg.Edge {
			alone = false
		}
	}
	if alone {
		for id, tb := range s.tombs {
			purges = append(purges, removal{id, tb.rev})
		}
	}
	s.mu.RUnlock()
	if len(purges) == 0 {
		return
	}
	for _, r := range purges {
		s.remove(r, true)
	}
	select {
	case <-s.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
