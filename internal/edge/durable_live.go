package edge

// Durable rooms, live delivery: a room's durable state (roomLog), the
// republished messages delivered in the order of the room's chain, and
// the backfill of a hole in it from the stream.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

const (
	// backfillTimeout bounds one attempt to fill a hole in a room's live
	// chain; backfillRetry spaces the attempts while the stream fails.
	backfillTimeout = 2 * time.Second
	backfillRetry   = time.Second
)

// roomLog is the durable state of a local room group, guarded by group.mu.
type roomLog struct {
	last       uint64              // the last sequence delivered live
	recovering map[*conn]*recovery // members whose replay is running
	// floor is, for members whose replay ended past last, the last
	// sequence replayed to them: a hole filled later must not repeat it.
	floor map[*conn]uint64
	// retryAt: a hole could not be filled; until the stream answers
	// again, live messages wait in the stream, and a new attempt is made
	// at most every backfillRetry: on the next republish, or on a retry
	// queued by a timer (retrying) when none comes.
	retryAt  time.Time
	retrying bool
}

// advance makes seq the last sequence delivered live, unless it is not
// past it: an older or repeated republish, which is dropped.
func (l *roomLog) advance(seq uint64) bool {
	if seq <= l.last {
		return false
	}
	l.last = seq
	return true
}

// deliverLive handles a republished message of a durable room: it fills a
// hole in the room's chain from the stream first, then delivers. It runs
// on the room's dispatcher goroutine, which a backfill holds for at most
// backfillTimeout; while the stream does not answer, the room's live
// messages are not delivered (they are in the stream) and a backfill is
// tried again at most every backfillRetry, so that the shard's other rooms
// keep flowing.
func (d *durable) deliverLive(g *group, msg *nats.Msg) {
	if msg.Header.Get(retryHeader) != "" {
		d.retryBackfill(g)
		return
	}
	if d.dropLive.Load() > 0 && d.dropLive.Add(-1) >= 0 {
		return
	}
	seq := headerSeq(msg.Header, jetstream.SequenceHeader)
	if seq == 0 {
		d.e.stats.dropped.Add(1)
		return
	}
	prev := headerSeq(msg.Header, "Nats-Last-Sequence")
	g.mu.RLock()
	last, retryAt := g.log.last, g.log.retryAt
	g.mu.RUnlock()
	if seq <= last {
		return // a republish seen already (after a reconnect, a backfill)
	}
	if last != 0 && (prev > last || !retryAt.IsZero()) {
		// Republishes are core NATS: one was lost (a NATS node failed, the
		// stream changed leader, the edge reconnected). The stream has it.
		if time.Now().Before(retryAt) || !d.backfill(g, last, seq-1) {
			return
		}
	}
	d.deliverStored(g, seq, msg.Data, msg.Header)
}

// retryHeader marks a message the edge queues itself on a durable room's
// dispatcher: try the failed backfill again.
const retryHeader = "Natter-Backfill-Retry"

// retryBackfill reads everything after the last delivered message when a
// backfill failed and no republish came to retry it.
func (d *durable) retryBackfill(g *group) {
	g.mu.Lock()
	g.log.retrying = false
	last, held := g.log.last, !g.log.retryAt.IsZero()
	g.mu.Unlock()
	if held {
		d.backfill(g, last, 0)
	}
}

// backfill delivers the stored messages of g after last up to to (0: the
// end), on the room's dispatcher goroutine. On failure it holds the room
// (retryAt) and queues a retry for backfillRetry later.
func (d *durable) backfill(g *group, last, to uint64) bool {
	var err error
	if d.failFetch.Load() > 0 && d.failFetch.Add(-1) >= 0 {
		err = errors.New("test: backfill made to fail")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), backfillTimeout)
		err = d.fetch(ctx, g.id, last+1, to, func(s uint64, data []byte, h nats.Header) bool {
			d.deliverStored(g, s, data, h)
			return true
		})
		cancel()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil {
		d.e.stats.backfills.Add(1)
		g.log.retryAt = time.Time{}
		return true
	}
	d.e.stats.backfillFails.Add(1)
	if d.e.logLimit.Allow() {
		d.e.cfg.Logger.Warn("edge: durable backfill failed; retrying", "room", g.id, "after", last, "err", err)
	}
	g.log.retryAt = time.Now().Add(backfillRetry)
	if !g.log.retrying {
		g.log.retrying = true
		sub, shard := g.sub, d.e.conns.shard(g.id)
		time.AfterFunc(backfillRetry, func() {
			msg := &nats.Msg{Subject: sub.Subject, Sub: sub, Header: nats.Header{retryHeader: []string{"1"}}}
			if !d.e.disp.inject(msg, shard) {
				g.mu.Lock()
				g.log.retrying = false
				g.mu.Unlock()
			}
		})
	}
	return false
}

// deliverStored delivers stored message seq to the group's members, in
// sequence order: an older sequence than the last delivered is dropped.
// Members still replaying get it buffered.
func (d *durable) deliverStored(g *group, seq uint64, data []byte, h nats.Header) {
	b, ok := d.frame(g.id, seq, data, h)
	var frame *outFrame
	if ok {
		frame = newOutFrame(b)
		frame.pos = &framePos{room: g.id, offset: seq, epoch: *d.epoch.Load()}
		if d.e.tracer != nil && tracing.HasContext(h) {
			_, frame.span = d.e.traceDeliver(h, "")
			defer frame.delivered()
		}
	}
	var ex []string
	if exclude := h.Get(envelope.HeaderExclude); exclude != "" {
		ex = strings.Split(exclude, ",")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.log.advance(seq) || frame == nil {
		return
	}
	for c := range g.members {
		if ex != nil && slices.Contains(ex, c.id) {
			continue
		}
		if g.log.admit(c, seq, frame, d.e.cfg.WebSocket.WriteQueueBytes) {
			c.sendOut(frame)
		}
	}
}
