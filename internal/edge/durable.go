package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// Durable rooms (docs/protocol.md, "Durable rooms"; docs/design/durable-rooms.md).
//
//   - The stream <prefix>_rooms holds <prefix>.durable.room.<room>. Services
//     publish there with JetStream (acknowledged, deduplicated by
//     Nats-Msg-Id); the capturer, on the one edge that holds a lease,
//     stores core publishes to <prefix>.out.room.<room> of durable rooms
//     there too, in arrival order.
//   - The stream republishes every stored message to
//     <prefix>.durable.live.<room> with Nats-Sequence and
//     Nats-Last-Sequence (the room's previous sequence). An edge with
//     members subscribes to that, not to the room's out subject, so every
//     delivery has a position and a missed republish shows as a hole in
//     the chain, which the edge fills from the stream.
//   - A $join with since subscribes first, buffers the member's live
//     messages, replays the stream after since, then flushes the buffer
//     past the last replayed sequence: no gap and no duplicate at the seam.
//     When the history cannot be read, the join fails with UNAVAILABLE
//     and the client retries from the same position.
//   - $history reads a page with direct gets (ADR-31): forward, one batch
//     of the room's next messages; backward, the room's last message up
//     to a sequence, one request per message. What it reads from
//     JetStream is what the page returns, plus at most one message.
//
// Non-durable rooms are untouched: no stream, no header parsing.

const (
	// fetchBatch is how many messages one pull of a replay or backfill
	// asks for: at most 64 MiB at the largest message size.
	fetchBatch = 64
	// maxHistory is the largest page of $history.
	maxHistory = 1000
	// durableTimeout bounds one recovery or history query: below the
	// clients' default request timeout (10s), so that a join from a
	// position is answered, recovered or not, before the client gives up.
	durableTimeout = 8 * time.Second
	// backfillTimeout bounds one attempt to fill a hole in a room's live
	// chain; backfillRetry spaces the attempts while the stream fails.
	backfillTimeout = 2 * time.Second
	backfillRetry   = time.Second
)

// durable is an edge's side of durable rooms; nil without patterns.
type durable struct {
	e        *Edge
	js       jetstream.JetStream
	name     string // the stream
	patterns []string
	epoch    atomic.Pointer[string]

	// The capturer runs on one edge at a time, the holder of a lease in
	// the <prefix>_capture bucket: a queue group would hand two
	// back-to-back publishes to two edges, which could store them in
	// either order.
	lease jetstream.KeyValue
	// dropLive makes the next republishes vanish, as a NATS failure would,
	// and failFetch the next backfills fail; tests set them
	// (export_test.go) to exercise hole filling.
	dropLive  atomic.Int32
	failFetch atomic.Int32
	capture   *nats.Subscription // guarded by the lead goroutine
	quit      chan struct{}
	done      chan struct{}
}

const (
	// leaseTTL is how long a capture lease outlives its holder.
	leaseTTL   = 3 * time.Second
	leaseRenew = time.Second
	// leaseMargin: a holder stops capturing this long before its lease
	// could expire, for clock rates and the server's expiry timer.
	leaseMargin = 500 * time.Millisecond
	leaseKey    = "leader"
)

func startDurable(ctx context.Context, e *Edge) (*durable, error) {
	cfg := &e.cfg
	d := &durable{e: e, name: e.ns.RoomsStream(), patterns: cfg.DurableRooms}
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		if e.logLimit.Allow() {
			cfg.Logger.Warn("edge: durable capture failed", "subject", m.Subject, "err", err)
		}
	}))
	if err != nil {
		return nil, err
	}
	d.js = js
	pfx := e.ns.Prefix()
	dup := min(2*time.Minute, cfg.DurableMaxAge)
	sc := jetstream.StreamConfig{
		Name:              d.name,
		Description:       "Natter durable rooms: history of " + pfx + ".durable.room.<room>, republished to " + pfx + ".durable.live.<room>",
		Subjects:          []string{pfx + ".durable.room.*"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.DurableReplicas,
		MaxAge:            cfg.DurableMaxAge,
		MaxMsgs:           cfg.DurableMaxMsgs,
		MaxBytes:          cfg.DurableMaxBytes,
		MaxMsgsPerSubject: cfg.DurableRoomMaxMsgs,
		MaxMsgSize:        int32(min(cfg.MaxOutboundSize, 1<<30)),
		Discard:           jetstream.DiscardOld,
		Duplicates:        dup,
		AllowDirect:       true,
		RePublish:         &jetstream.RePublish{Source: pfx + ".durable.room.*", Destination: pfx + ".durable.live.{{wildcard(1)}}"},
		Metadata:          map[string]string{envelope.RoomsStreamPatterns: strings.Join(cfg.DurableRooms, ",")},
	}
	var s jetstream.Stream
	if err := natsopt.Retry(ctx, cfg.Logger, "durable rooms stream", func(ctx context.Context) (err error) {
		s, err = js.CreateOrUpdateStream(ctx, sc)
		return err
	}); err != nil {
		return nil, fmt.Errorf("edge: durable rooms stream %s: %w", d.name, err)
	}
	d.setEpoch(s.CachedInfo())
	if !cfg.DurableNoCapture {
		bucket := strings.ReplaceAll(pfx, ".", "_") + "_capture"
		err = natsopt.Retry(ctx, cfg.Logger, "durable capture lease", func(ctx context.Context) (err error) {
			d.lease, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      bucket,
				Description: "Natter: which edge captures core publishes to durable rooms",
				History:     1,
				TTL:         leaseTTL,
				Storage:     jetstream.MemoryStorage,
				Replicas:    cfg.DurableReplicas,
			})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("edge: durable capture lease %s: %w", bucket, err)
		}
		d.quit, d.done = make(chan struct{}), make(chan struct{})
		go d.lead()
	}
	return d, nil
}

// lead holds the capture lease when it can and runs the capturer while it
// does. A lease not renewed expires after leaseTTL; until then no other
// edge captures, and core publishes to durable rooms are not stored.
func (d *durable) lead() {
	defer close(d.done)
	var rev uint64
	var renewed time.Time // when the last successful renewal was sent
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	for {
		if rev != 0 && time.Since(renewed) > leaseTTL-leaseMargin {
			// Ours may run out before another renewal gets through: stop
			// before another edge can start.
			rev = 0
			d.stopCapture()
		}
		if rev == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
			sent := time.Now()
			if r, err := d.lease.Create(ctx, leaseKey, []byte(d.e.cfg.EdgeID)); err == nil {
				rev, renewed = r, sent
				d.startCapture()
			}
			cancel()
		} else {
			ctx, cancel := context.WithDeadline(context.Background(), renewed.Add(leaseTTL-leaseMargin))
			sent := time.Now()
			r, err := d.lease.Update(ctx, leaseKey, []byte(d.e.cfg.EdgeID), rev)
			cancel()
			switch {
			case err == nil:
				rev, renewed = r, sent
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyNotFound):
				rev = 0 // another edge holds it, or ours ran out
				d.stopCapture()
			}
		}
		select {
		case <-d.quit:
			d.stopCapture()
			if rev != 0 {
				ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
				_ = d.lease.Delete(ctx, leaseKey, jetstream.LastRevision(rev))
				cancel()
			}
			return
		case <-tick.C:
		}
	}
}

func (d *durable) startCapture() {
	// One subscription stores in arrival order: async publishes on one
	// connection reach the stream in the order they were made.
	sub, err := d.e.nc.Subscribe(d.e.ns.RoomAll().String(), d.captureMsg)
	if err != nil {
		d.e.cfg.Logger.Warn("edge: durable capture", "err", err)
		return
	}
	d.capture = sub
	d.e.cfg.Logger.Info("edge: capturing core publishes to durable rooms")
}

func (d *durable) stopCapture() {
	if d.capture != nil {
		_ = d.capture.Unsubscribe()
		d.capture = nil
	}
}

// stop gives up the capture lease, so that another edge takes over at
// once, and waits a little for captures still unacknowledged.
func (d *durable) stop() {
	if d.quit != nil {
		close(d.quit)
		<-d.done
	}
	select {
	case <-d.js.PublishAsyncComplete():
	case <-time.After(2 * time.Second):
	}
}

// isDurable reports whether room matches the durable patterns.
func (d *durable) isDurable(room string) bool {
	return d != nil && auth.Grants(d.patterns, room)
}

// setEpoch names the stream's incarnation: its creation time, which a
// delete and re-create changes.
func (d *durable) setEpoch(info *jetstream.StreamInfo) string {
	ep := strconv.FormatInt(info.Created.UnixNano(), 36)
	if old := d.epoch.Load(); old == nil || *old != ep {
		d.epoch.Store(&ep)
	}
	return ep
}

// captureMsg stores a core publish to a durable room in the stream.
func (d *durable) captureMsg(msg *nats.Msg) {
	kind, room := d.e.ns.Parse(msg.Subject)
	if kind != envelope.KindRoom || !d.isDurable(room) {
		return
	}
	subj, _ := d.e.ns.DurableRoom(room)
	out := &nats.Msg{Subject: subj.String(), Data: msg.Data}
	if x := msg.Header.Get(envelope.HeaderExclude); x != "" {
		out.Header = nats.Header{envelope.HeaderExclude: []string{x}}
	}
	if _, err := d.js.PublishMsgAsync(out); err != nil {
		if d.e.logLimit.Allow() {
			d.e.cfg.Logger.Warn("edge: durable capture failed", "room", room, "err", err)
		}
		return
	}
	d.e.stats.captured.Add(1)
}

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

// recovery buffers a member's live messages while its replay runs, up to
// Config.WriteQueueBytes; past that it keeps nothing and the replay goes
// another round.
type recovery struct {
	buf      []seqFrame
	bytes    int
	overflow bool
}

type seqFrame struct {
	seq   uint64
	frame []byte
}

// frame encodes a stored message for delivery: meta.room, meta.offset and
// meta.epoch set by the edge, whatever the publisher wrote there.
func (d *durable) frame(room string, seq uint64, data []byte) ([]byte, bool) {
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, data, d.e.cfg.MaxOutboundSize); err != nil {
		d.e.stats.dropped.Add(1)
		return nil, false
	}
	if !d.e.validOut(&env) {
		return nil, false
	}
	env.Meta.Room = room
	if env.Meta.Extra == nil {
		env.Meta.Extra = make(map[string]json.RawMessage, 2)
	}
	env.Meta.Extra["offset"] = strconv.AppendUint(nil, seq, 10)
	env.Meta.Extra["epoch"] = strconv.AppendQuote(nil, *d.epoch.Load())
	b, err := envelope.Encode(&env)
	if err != nil {
		d.e.stats.dropped.Add(1)
		return nil, false
	}
	return b, true
}

func headerSeq(h nats.Header, key string) uint64 {
	n, _ := strconv.ParseUint(h.Get(key), 10, 64)
	return n
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
	d.deliverStored(g, seq, msg.Data, msg.Header.Get(envelope.HeaderExclude))
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
			d.deliverStored(g, s, data, h.Get(envelope.HeaderExclude))
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
func (d *durable) deliverStored(g *group, seq uint64, data []byte, exclude string) {
	b, ok := d.frame(g.id, seq, data)
	var frame []byte
	if ok {
		frame = wsFrame(opText, b)
	}
	var ex []string
	if exclude != "" {
		ex = strings.Split(exclude, ",")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if seq <= g.log.last {
		return
	}
	g.log.last = seq
	if frame == nil {
		return
	}
	for c := range g.members {
		if ex != nil && slices.Contains(ex, c.id) {
			continue
		}
		if r := g.log.recovering[c]; r != nil {
			if !r.overflow {
				r.buf = append(r.buf, seqFrame{seq: seq, frame: frame})
				r.bytes += len(frame)
				if r.bytes > d.e.cfg.WriteQueueBytes {
					r.buf, r.bytes, r.overflow = nil, 0, true
				}
			}
			continue
		}
		if f, ok := g.log.floor[c]; ok {
			if seq <= f {
				continue // replayed to c already
			}
			delete(g.log.floor, c)
		}
		c.sendFrame(frame)
	}
}

// fetch calls f with the stored messages of room from sequence from to to
// (0: the end of the stream when the read starts), in order, until f
// returns false. It reads with an ephemeral pull consumer, in batches of
// at most fetchBatch messages, and deletes it after. It fails unless it
// read everything it set out to read before ctx ended.
func (d *durable) fetch(ctx context.Context, room string, from, to uint64, f func(seq uint64, data []byte, h nats.Header) bool) error {
	if to != 0 && to < from {
		return nil
	}
	subj, err := d.e.ns.DurableRoom(room)
	if err != nil {
		return err
	}
	var cons jetstream.Consumer
	for {
		// Retried: right after a NATS node failure the stream may still be
		// electing a leader.
		cons, err = d.js.CreateConsumer(ctx, d.name, jetstream.ConsumerConfig{
			FilterSubject:     subj.String(),
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       max(from, 1),
			AckPolicy:         jetstream.AckNonePolicy,
			InactiveThreshold: 30 * time.Second,
			MemoryStorage:     true,
			Replicas:          1,
		})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consumer: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.js.DeleteConsumer(dctx, d.name, cons.CachedInfo().Name)
		cancel()
	}()
	pending := cons.CachedInfo().NumPending // matching messages from `from` on
	prev := max(from, 1) - 1
	for pending > 0 {
		wait := time.Until(deadline(ctx, 5*time.Second))
		batch, err := cons.Fetch(int(min(pending, fetchBatch)), jetstream.FetchMaxWait(max(wait, time.Millisecond)))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			pending--
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			seq := md.Sequence.Stream
			if seq <= prev {
				continue
			}
			prev = seq
			if to != 0 && seq > to || !f(seq, m.Data(), m.Headers()) {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if n == 0 {
			return fmt.Errorf("read stopped at %d with %d messages to go: %w", prev, pending, context.DeadlineExceeded)
		}
	}
	return nil
}

// deadline is ctx's deadline, or d from now.
func deadline(ctx context.Context, d time.Duration) time.Time {
	if t, ok := ctx.Deadline(); ok {
		return t
	}
	return time.Now().Add(d)
}

// roomState is what a recovery or history query needs of the stream.
type roomState struct {
	epoch     string
	first     uint64 // the stream's first sequence
	last      uint64 // the stream's last sequence
	count     uint64 // messages of the room
	firstRoom uint64 // the room's first sequence, 0 with none or not read
	roomLimit int64  // the stream's per-room count limit (-1: none)
}

// state reads the stream's state for room, and the room's first sequence
// when withFirst (a direct get of that message). Right after a NATS node
// failure a request can go unanswered while the stream elects a leader, so
// each attempt gets 2s and is retried until ctx ends.
func (d *durable) state(ctx context.Context, room string, withFirst bool) (*roomState, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := d.stateOnce(actx, room, withFirst)
		cancel()
		if err == nil || ctx.Err() != nil {
			return st, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *durable) stateOnce(ctx context.Context, room string, withFirst bool) (*roomState, error) {
	subj, err := d.e.ns.DurableRoom(room)
	if err != nil {
		return nil, err
	}
	s, err := d.js.Stream(ctx, d.name)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj.String()))
	if err != nil {
		return nil, err
	}
	st := &roomState{
		epoch: d.setEpoch(info), first: info.State.FirstSeq, last: info.State.LastSeq,
		count: info.State.Subjects[subj.String()], roomLimit: info.Config.MaxMsgsPerSubject,
	}
	if withFirst && st.count > 0 {
		m, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj.String()))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, err
		}
		if m != nil {
			st.firstRoom = m.Sequence
		}
	}
	return st, nil
}

// complete reports whether every message of the room after since is still
// retained. Every limit removes oldest first (globally for age, total
// count and bytes; within the room for the per-room count), so:
//   - if the room still holds a message at or before since, nothing after
//     since was removed;
//   - else, if nothing after since was removed globally and the room is
//     below its count limit, the per-room limit never removed one after
//     since either. At the limit it cannot tell, and says no.
func (st *roomState) complete(since uint64) bool {
	roomLimit := st.roomLimit
	if since > st.last {
		return false // a position this history never had
	}
	if st.firstRoom != 0 && st.firstRoom <= since {
		return true
	}
	return since+1 >= st.first && (roomLimit <= 0 || st.count < uint64(roomLimit))
}

// errHistoryUnavailable fails a join from a position whose history cannot
// be read now (the stream electing a leader after a NATS node failure): the
// client is not a member and retries with the same since, rather than be
// told that messages are lost.
var errHistoryUnavailable = &rpc.Error{Code: envelope.CodeUnavailable, Message: "room history unavailable; retry the join", RetryAfter: time.Second}

// join finishes a $join (or a server-side join) of a durable room: c is a
// member of g already, with r registered when since was given. It replays
// the messages after since, acknowledges with the position, then releases
// the live messages buffered meanwhile. When the buffer overflowed, it
// replays another round from where it got to instead. When the history
// cannot be read, a join from a position fails with errHistoryUnavailable
// and the caller removes c from the room.
func (d *durable) join(c *conn, g *group, r *recovery, cid string, since *envelope.Position) error {
	ctx, cancel := context.WithTimeout(context.Background(), durableTimeout)
	defer cancel()
	ack := envelope.Joined{Room: g.id, Durable: true}
	st, err := d.state(ctx, g.id, r != nil)
	if err != nil {
		d.e.cfg.Logger.Warn("edge: durable room state", "room", g.id, "err", err)
		if r != nil {
			d.e.stats.recoveryRetries.Add(1)
			return errHistoryUnavailable
		}
	} else {
		// The end of history: the stream's last sequence, read after c's
		// subscription was in place, so every message of the room stored
		// later has a larger offset and a re-join from it replays exactly
		// those. The room's own last offset (0 for an empty room) would
		// replay the same ones, but once the stream has dropped older
		// messages a re-join from it could not prove that none was lost.
		ack.Epoch = st.epoch
		ack.Offset = st.last
	}
	if r == nil {
		d.ack(c, g, cid, &ack)
		return nil
	}
	ok := since.Epoch == st.epoch && since.Offset <= st.last
	if !ok {
		// Another history, or a position it never had: nothing to replay.
		ack.Recovered = &ok
		d.finish(c, g, r, cid, &ack, ack.Offset)
		return nil
	}
	ok = st.complete(since.Offset)
	last := since.Offset
	for {
		stopped := false
		ferr := d.fetch(ctx, g.id, last+1, 0, func(seq uint64, data []byte, h nats.Header) bool {
			if x := h.Get(envelope.HeaderExclude); x == "" || !slices.Contains(strings.Split(x, ","), c.id) {
				if b, ok := d.frame(g.id, seq, data); ok {
					if !c.waitRoom(ctx) {
						stopped = true
						return false
					}
					c.send(b)
				}
			}
			last = seq
			return true
		})
		if stopped {
			// The client does not read: it keeps what it got, and learns
			// that it is not everything.
			d.e.cfg.Logger.Warn("edge: durable replay incomplete", "room", g.id, "conn", c.id)
			ok = false
			break
		}
		if ferr != nil {
			// What was replayed is in order; the retry goes on from the
			// client's position.
			d.e.cfg.Logger.Warn("edge: durable replay failed", "room", g.id, "conn", c.id, "err", ferr)
			d.e.stats.recoveryRetries.Add(1)
			return errHistoryUnavailable
		}
		g.mu.Lock()
		again := r.overflow
		r.overflow = false // buf and bytes were emptied when it overflowed
		g.mu.Unlock()
		if !again {
			break
		}
	}
	ack.Recovered = &ok
	ack.Offset = last
	d.finish(c, g, r, cid, &ack, last)
	return nil
}

// ack sends $joined. With a position (an epoch), offset is always there,
// 0 included: envelope.Joined omits a zero offset, which a client would
// read as "no position".
func (d *durable) ack(c *conn, g *group, cid string, ack *envelope.Joined) {
	var payload []byte
	if ack.Epoch != "" {
		payload, _ = json.Marshal(struct {
			*envelope.Joined
			Offset uint64 `json:"offset"`
		}{ack, ack.Offset})
	} else {
		payload, _ = json.Marshal(ack)
	}
	b, _ := envelope.Encode(&envelope.Envelope{Type: envelope.TypeJoined, Meta: envelope.Meta{CorrelationID: cid, Room: g.id}, Payload: payload})
	c.send(b)
}

// finish acknowledges a join from a position and hands c over to live
// delivery: the buffered messages past last first, and nothing at or
// before last later.
func (d *durable) finish(c *conn, g *group, r *recovery, cid string, ack *envelope.Joined, last uint64) {
	if *ack.Recovered {
		d.e.stats.recovered.Add(1)
	} else {
		d.e.stats.gaps.Add(1)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.log.recovering[c] != r {
		return // c left the room meanwhile
	}
	delete(g.log.recovering, c)
	d.ack(c, g, cid, ack)
	for _, sf := range r.buf {
		if sf.seq > last {
			c.sendFrame(sf.frame)
		}
	}
	if last > g.log.last {
		if g.log.floor == nil {
			g.log.floor = make(map[*conn]uint64)
		}
		g.log.floor[c] = last
	}
}

// history answers $history for room. A page holds at most Limit messages
// and at most MaxOutboundSize bytes of them; More says another page
// exists in the direction asked. Positions are taken as they come, any
// uint64: a since at or past the end gives an empty page (since+1 must not
// wrap to the oldest), a before past the end the newest page, a before of 1
// an empty one.
func (d *durable) history(ctx context.Context, q *envelope.HistoryQuery) (*envelope.History, error) {
	st, err := d.state(ctx, q.Room, false)
	if err != nil {
		return nil, &rpc.Error{Code: envelope.CodeUnavailable, Message: "history unavailable: " + err.Error()}
	}
	h := &envelope.History{Room: q.Room, Epoch: st.epoch, Messages: []json.RawMessage{}}
	if st.count == 0 || q.Since != nil && *q.Since >= st.last {
		return h, nil // nothing stored, or nothing after since
	}
	r, err := d.newPageReader(q.Room)
	if err == nil {
		defer r.close()
		if q.Since != nil {
			err = d.pageAfter(ctx, r, h, q.Limit, *q.Since+1)
		} else {
			upTo := st.last
			if q.Before != 0 {
				upTo = min(upTo, q.Before-1)
			}
			err = d.pageBefore(ctx, r, h, q.Limit, upTo)
		}
	}
	if err != nil {
		return nil, &rpc.Error{Code: envelope.CodeUnavailable, Message: "history unavailable: " + err.Error()}
	}
	return h, nil
}

// pageAfter fills h with the first messages of the room from sequence
// from on: batches of direct gets asking for what the page still lacks,
// in count and in bytes. The server stops a batch after the message that
// reaches the byte bound, so a page reads at most one message more than it
// holds; whether another page exists comes from the number of the room's
// messages left after the batch, not from reading one. Messages the edge
// does not deliver (invalid envelopes) are skipped and do not count.
func (d *durable) pageAfter(ctx context.Context, r *pageReader, h *envelope.History, limit int, from uint64) error {
	budget := d.e.cfg.MaxOutboundSize
	for {
		read, full := 0, false
		pending, err := r.get(ctx, &directGet{Seq: from, NextFor: r.subj, Batch: limit - len(h.Messages), MaxBytes: max(budget, 1)}, func(seq uint64, m *nats.Msg) {
			if full || seq < from {
				return
			}
			read++
			from = seq + 1
			b, ok := d.frame(h.Room, seq, m.Data)
			if !ok {
				return
			}
			if len(b) > budget && len(h.Messages) > 0 {
				h.More, full = true, true
				return
			}
			budget -= len(b)
			h.Messages = append(h.Messages, b)
		})
		switch {
		case err != nil:
			return err
		case full || read == 0:
			return nil
		case len(h.Messages) == limit || pending == 0:
			h.More = pending > 0
			return nil
		}
		// Skipped messages, or a batch cut by bytes below the page's bound:
		// ask for the rest.
	}
}

// pageBefore fills h with the newest messages of the room at or before
// sequence upTo, oldest first. JetStream reads batches forward only, so it
// walks backward with one direct get per message (the room's last message
// up to a sequence), newest first, until the page is full in count or in
// bytes: it reads at most one message more than the page holds, the one
// that tells whether another page exists. Messages the edge does not
// deliver are skipped and do not count.
func (d *durable) pageBefore(ctx context.Context, r *pageReader, h *envelope.History, limit int, upTo uint64) error {
	budget := d.e.cfg.MaxOutboundSize
	var page []json.RawMessage // newest first
	// upTo stays above 0: up_to_seq 0 would mean the stream's end.
	for upTo > 0 {
		var seq uint64
		var data []byte
		if _, err := r.get(ctx, &directGet{MultiLast: []string{r.subj}, UpToSeq: upTo, Batch: 1}, func(s uint64, m *nats.Msg) {
			seq, data = s, m.Data
		}); err != nil {
			return err
		}
		if seq == 0 {
			break // none left
		}
		if seq > upTo {
			return fmt.Errorf("direct get up to %d answered %d", upTo, seq)
		}
		if len(page) == limit {
			h.More = true
			break
		}
		upTo = seq - 1
		b, ok := d.frame(h.Room, seq, data)
		if !ok {
			continue
		}
		if len(b) > budget && len(page) > 0 {
			h.More = true
			break
		}
		budget -= len(b)
		page = append(page, b)
	}
	slices.Reverse(page)
	h.Messages = append(h.Messages, page...)
	return nil
}

// directGet is a direct get request (ADR-31, nats-server 2.11): the next
// Batch messages of NextFor from Seq on, at most about MaxBytes of them, or
// the last message of each MultiLast subject at or before UpToSeq. nats.go
// has no call for either.
type directGet struct {
	Seq       uint64   `json:"seq,omitempty"`
	NextFor   string   `json:"next_by_subj,omitempty"`
	Batch     int      `json:"batch,omitempty"`
	MaxBytes  int      `json:"max_bytes,omitempty"`
	MultiLast []string `json:"multi_last,omitempty"`
	UpToSeq   uint64   `json:"up_to_seq,omitempty"`
}

// pageReader sends the direct gets of one $history page, one at a time,
// and reads their answers on one reply subscription.
type pageReader struct {
	nc   *nats.Conn
	api  string // the stream's direct get subject
	subj string // the room's subject in the stream
	sub  *nats.Subscription
}

func (d *durable) newPageReader(room string) (*pageReader, error) {
	subj, err := d.e.ns.DurableRoom(room)
	if err != nil {
		return nil, err
	}
	sub, err := d.e.nc.SubscribeSync(d.e.nc.NewInbox())
	if err != nil {
		return nil, err
	}
	return &pageReader{nc: d.e.nc, api: jetstream.DefaultAPIPrefix + "DIRECT.GET." + d.name, subj: subj.String(), sub: sub}, nil
}

func (r *pageReader) close() { _ = r.sub.Unsubscribe() }

// get sends req and calls f with each message of the answer, in order, up
// to its end. It returns the number of matching messages left after the
// last one sent (the end-of-batch header), 0 when none matched. One
// request is answered in full before the next is sent, so answers never
// mix on the subscription.
func (r *pageReader) get(ctx context.Context, req *directGet, f func(seq uint64, m *nats.Msg)) (uint64, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	if err := r.nc.PublishMsg(&nats.Msg{Subject: r.api, Reply: r.sub.Subject, Data: b}); err != nil {
		return 0, err
	}
	for {
		m, err := r.sub.NextMsgWithContext(ctx)
		if err != nil {
			return 0, err
		}
		if status := m.Header.Get("Status"); status != "" && len(m.Data) == 0 {
			switch status {
			case "204": // end of the batch
				return headerSeq(m.Header, "Nats-Num-Pending"), nil
			case "404": // nothing matched
				return 0, nil
			}
			return 0, fmt.Errorf("direct get: %s %s", status, m.Header.Get("Description"))
		}
		seq := headerSeq(m.Header, jetstream.SequenceHeader)
		if seq == 0 {
			return 0, errors.New("direct get: a message without a sequence")
		}
		f(seq, m)
	}
}

// queryHistory answers a client's $history.
func (c *conn) queryHistory(cid string, payload json.RawMessage) {
	d := c.e.dur
	if cid == "" {
		c.sendError("", envelope.CodeInvalidArgument, "$history is a request: it needs meta.correlationId")
		return
	}
	if d == nil {
		c.sendError(cid, envelope.CodeUnimplemented, "this edge has no durable rooms")
		return
	}
	var q envelope.HistoryQuery
	if err := json.Unmarshal(payload, &q); err != nil || envelope.ValidateID(q.Room) != nil || q.Limit < 0 || q.Limit > maxHistory || (q.Since != nil && q.Before != 0) {
		c.sendError(cid, envelope.CodeInvalidArgument, `payload must be {"room": id, "limit"?: 1..1000, "since"?: offset} or {"room": id, "limit"?, "before"?: offset}`)
		return
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	if !d.isDurable(q.Room) {
		c.sendError(cid, envelope.CodeFailedPrecondition, "room "+q.Room+" is not durable")
		return
	}
	c.e.hub.mu.Lock()
	member := c.rooms.has(q.Room)
	c.e.hub.mu.Unlock()
	if !member {
		if err := c.authorizeJoin(q.Room); err != nil {
			c.sendError(cid, codeOf(err), auth.Reason(err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), durableTimeout)
	defer cancel()
	h, err := d.history(ctx, &q)
	if err != nil {
		re := rpc.FromError(err)
		c.sendError(cid, re.Code, re.Message)
		return
	}
	b, _ := json.Marshal(h)
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeHistory, Meta: envelope.Meta{CorrelationID: cid, Room: q.Room}, Payload: b})
}
