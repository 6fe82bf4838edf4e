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
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// Durable rooms (docs/protocol.md, "Durable rooms"; docs/design/durable-rooms.md).
//
//   - The stream <prefix>_rooms holds <prefix>.durable.room.<room>. Services
//     publish there with JetStream (acknowledged, deduplicated by
//     Nats-Msg-Id); the capturer, a queue group across edges, stores core
//     publishes to <prefix>.out.room.<room> of durable rooms there too.
//   - The stream republishes every stored message to
//     <prefix>.durable.live.<room> with Nats-Sequence and
//     Nats-Last-Sequence (the room's previous sequence). An edge with
//     members subscribes to that, not to the room's out subject, so every
//     delivery has a position and a missed republish shows as a hole in
//     the chain, which the edge fills from the stream.
//   - A $join with since subscribes first, buffers the member's live
//     messages, replays the stream after since, then flushes the buffer
//     past the last replayed sequence: no gap and no duplicate at the seam.
//
// Non-durable rooms are untouched: no stream, no header parsing.

const (
	// replayBatch is how many messages one fetch of a replay asks for.
	replayBatch = 256
	// maxHistory is the largest page of $history.
	maxHistory = 1000
	// durableTimeout bounds one recovery, backfill or history query.
	durableTimeout = 10 * time.Second
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
	lease   jetstream.KeyValue
	capture *nats.Subscription // guarded by the lead goroutine
	quit    chan struct{}
	done    chan struct{}
}

const (
	// leaseTTL is how long a capture lease outlives its holder.
	leaseTTL   = 3 * time.Second
	leaseRenew = time.Second
	leaseKey   = "leader"
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
	for {
		if s, err = js.CreateOrUpdateStream(ctx, sc); err == nil {
			break
		}
		cfg.Logger.Warn("edge: durable rooms stream, retrying", "stream", d.name, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("edge: durable rooms stream %s: %w", d.name, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	d.setEpoch(s.CachedInfo())
	if !cfg.DurableNoCapture {
		bucket := strings.ReplaceAll(pfx, ".", "_") + "_capture"
		d.lease, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Natter: which edge captures core publishes to durable rooms",
			History:     1,
			TTL:         leaseTTL,
			Storage:     jetstream.MemoryStorage,
			Replicas:    cfg.DurableReplicas,
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
	var renewed time.Time
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
		if rev == 0 {
			if r, err := d.lease.Create(ctx, leaseKey, []byte(d.e.cfg.EdgeID)); err == nil {
				rev, renewed = r, time.Now()
				d.startCapture()
			}
		} else {
			r, err := d.lease.Update(ctx, leaseKey, []byte(d.e.cfg.EdgeID), rev)
			var apiErr *jetstream.APIError
			switch {
			case err == nil:
				rev, renewed = r, time.Now()
			case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence,
				time.Since(renewed) > leaseTTL-leaseRenew:
				// Another edge holds it, or ours has run out.
				rev = 0
				d.stopCapture()
			}
		}
		cancel()
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
	if _, err := d.js.PublishMsgAsync(out); err != nil && d.e.logLimit.Allow() {
		d.e.cfg.Logger.Warn("edge: durable capture failed", "room", room, "err", err)
	}
}

// roomLog is the durable state of a local room group, guarded by group.mu.
type roomLog struct {
	last       uint64              // the last sequence delivered live
	recovering map[*conn]*recovery // members whose replay is running
}

// recovery buffers a member's live messages while its replay runs.
type recovery struct {
	buf []seqFrame
}

type seqFrame struct {
	seq     uint64
	frame   []byte
	exclude string
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
// hole in the room's chain from the stream first, then delivers.
func (d *durable) deliverLive(g *group, msg *nats.Msg) {
	seq := headerSeq(msg.Header, jetstream.SequenceHeader)
	if seq == 0 {
		d.e.stats.dropped.Add(1)
		return
	}
	prev := headerSeq(msg.Header, "Nats-Last-Sequence")
	g.mu.RLock()
	last := g.log.last
	g.mu.RUnlock()
	if seq <= last {
		return // a republish seen already (after a reconnect, a backfill)
	}
	if last != 0 && prev > last {
		// Republishes are core NATS: one was lost (a NATS node failed, the
		// edge reconnected). The stream has it.
		ctx, cancel := context.WithTimeout(context.Background(), durableTimeout)
		err := d.fetch(ctx, g.id, last+1, seq-1, func(s uint64, data []byte, h nats.Header) bool {
			d.deliverStored(g, s, data, h.Get(envelope.HeaderExclude))
			return true
		})
		cancel()
		if err != nil && d.e.logLimit.Allow() {
			d.e.cfg.Logger.Warn("edge: durable backfill failed", "room", g.id, "from", last+1, "to", seq-1, "err", err)
		}
	}
	d.deliverStored(g, seq, msg.Data, msg.Header.Get(envelope.HeaderExclude))
}

// deliverStored delivers stored message seq to the group's members, in
// sequence order: an older sequence than the last delivered is dropped.
// Members still replaying get it buffered.
func (d *durable) deliverStored(g *group, seq uint64, data []byte, exclude string) {
	b, ok := d.frame(g.id, seq, data)
	if !ok {
		g.mu.Lock()
		g.log.last = max(g.log.last, seq)
		g.mu.Unlock()
		return
	}
	frame := wsFrame(opText, b)
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
	for c := range g.members {
		if ex != nil && slices.Contains(ex, c.id) {
			continue
		}
		if r := g.log.recovering[c]; r != nil {
			r.buf = append(r.buf, seqFrame{seq: seq, frame: frame})
			continue
		}
		c.sendFrame(frame)
	}
}

// fetch calls f with the stored messages of room from sequence from to to
// (0: the end), in order, until f returns false.
func (d *durable) fetch(ctx context.Context, room string, from, to uint64, f func(seq uint64, data []byte, h nats.Header) bool) error {
	if to != 0 && to < from {
		return nil
	}
	subj, err := d.e.ns.DurableRoom(room)
	if err != nil {
		return err
	}
	cons, err := d.js.OrderedConsumer(ctx, d.name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj.String()},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    max(from, 1),
	})
	if err != nil {
		return err
	}
	prev := max(from, 1) - 1
	for {
		batch, err := cons.FetchNoWait(replayBatch)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			seq := md.Sequence.Stream
			if seq <= prev {
				continue // never twice, whatever the consumer does on a reset
			}
			prev = seq
			if to != 0 && seq > to {
				return nil
			}
			if !f(seq, m.Data(), m.Headers()) {
				return nil
			}
			if md.NumPending == 0 {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// roomState is what a recovery or history query needs of the stream.
type roomState struct {
	epoch     string
	first     uint64 // the stream's first sequence
	last      uint64 // the stream's last sequence
	count     uint64 // messages of the room
	firstRoom uint64 // the room's first sequence, 0 with none
	lastRoom  uint64 // the room's last sequence, 0 with none
}

func (d *durable) state(ctx context.Context, room string) (*roomState, error) {
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
	st := &roomState{epoch: d.setEpoch(info), first: info.State.FirstSeq, last: info.State.LastSeq, count: info.State.Subjects[subj.String()]}
	if st.count > 0 {
		m, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj.String()))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, err
		}
		if m != nil {
			st.firstRoom = m.Sequence
		}
		m, err = s.GetLastMsgForSubject(ctx, subj.String())
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, err
		}
		if m != nil {
			st.lastRoom = m.Sequence
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
func (st *roomState) complete(since uint64, roomLimit int64) bool {
	if since > st.last {
		return false // a position this history never had
	}
	if st.firstRoom != 0 && st.firstRoom <= since {
		return true
	}
	return since+1 >= st.first && (roomLimit < 0 || st.count < uint64(roomLimit))
}

// join finishes a $join (or a server-side join) of a durable room: c is a
// member of g already, with r registered when since was given. It replays
// the messages after since, acknowledges with the position, then releases
// the live messages buffered meanwhile.
func (d *durable) join(c *conn, g *group, r *recovery, cid string, since *envelope.Position) {
	ctx, cancel := context.WithTimeout(context.Background(), durableTimeout)
	defer cancel()
	ack := envelope.Joined{Room: g.id, Durable: true}
	last := uint64(0)
	st, err := d.state(ctx, g.id)
	if err != nil {
		d.e.cfg.Logger.Warn("edge: durable room state", "room", g.id, "err", err)
	} else {
		ack.Epoch = st.epoch
		last = st.lastRoom
	}
	if r != nil {
		ok := err == nil && since.Epoch == st.epoch
		if ok {
			ok = st.complete(since.Offset, d.e.cfg.DurableRoomMaxMsgs)
			last = since.Offset
			ferr := d.fetch(ctx, g.id, since.Offset+1, 0, func(seq uint64, data []byte, h nats.Header) bool {
				if x := h.Get(envelope.HeaderExclude); x != "" && slices.Contains(strings.Split(x, ","), c.id) {
					last = seq
					return true
				}
				if b, ok := d.frame(g.id, seq, data); ok {
					if !c.waitRoom(ctx) {
						return false
					}
					c.send(b)
				}
				last = seq
				return true
			})
			if ferr != nil {
				d.e.cfg.Logger.Warn("edge: durable replay failed", "room", g.id, "conn", c.id, "err", ferr)
				ok = false
			}
		}
		ack.Recovered = &ok
	}
	ack.Offset = last
	payload, _ := json.Marshal(ack)
	ackFrame, _ := envelope.Encode(&envelope.Envelope{Type: envelope.TypeJoined, Meta: envelope.Meta{CorrelationID: cid, Room: g.id}, Payload: payload})
	g.mu.Lock()
	defer g.mu.Unlock()
	c.send(ackFrame)
	if r == nil {
		return
	}
	if g.log.recovering[c] == r {
		delete(g.log.recovering, c)
	}
	if _, member := g.members[c]; !member {
		return
	}
	for _, sf := range r.buf {
		if sf.seq > last {
			c.sendFrame(sf.frame)
		}
	}
}

// history answers $history for room.
func (d *durable) history(ctx context.Context, q *envelope.HistoryQuery) (*envelope.History, error) {
	st, err := d.state(ctx, q.Room)
	if err != nil {
		return nil, &rpc.Error{Code: envelope.CodeUnavailable, Message: "history unavailable: " + err.Error()}
	}
	h := &envelope.History{Room: q.Room, Epoch: st.epoch, Messages: []json.RawMessage{}}
	add := func(seq uint64, data []byte) {
		if b, ok := d.frame(q.Room, seq, data); ok {
			h.Messages = append(h.Messages, b)
		}
	}
	if q.Since != nil {
		n := 0
		err = d.fetch(ctx, q.Room, *q.Since+1, 0, func(seq uint64, data []byte, _ nats.Header) bool {
			if n == q.Limit {
				h.More = true
				return false
			}
			n++
			add(seq, data)
			return true
		})
		return h, err
	}
	// The last Limit before Before: JetStream reads forward only, so scan
	// the room (bounded by the per-room limit) keeping a ring of Limit.
	type stored struct {
		seq  uint64
		data []byte
	}
	ring := make([]stored, 0, q.Limit)
	seen := 0
	if st.count == 0 {
		return h, nil
	}
	err = d.fetch(ctx, q.Room, st.firstRoom, 0, func(seq uint64, data []byte, _ nats.Header) bool {
		if q.Before != 0 && seq >= q.Before {
			return false
		}
		if len(ring) == q.Limit {
			ring = append(ring[:0:0], ring[1:]...)
		}
		ring = append(ring, stored{seq, slices.Clone(data)})
		seen++
		return true
	})
	h.More = seen > len(ring)
	for _, s := range ring {
		add(s.seq, s.data)
	}
	return h, err
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
