package edge

// Durable rooms, the stream: its set-up and epoch, a room's state in it
// and whether a room's history after a position is complete, and reading a
// room's messages with an ephemeral pull consumer (replay and backfill).

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
)

// fetchBatch is how many messages one pull of a replay or backfill
// asks for: at most 64 MiB at the largest message size.
const fetchBatch = 64

// createStream creates the stream of durable rooms, or updates it to
// this edge's config, and reads its epoch.
func (d *durable) createStream(ctx context.Context) error {
	cfg, pfx := d.e.cfg.DurableRooms, d.e.ns.Prefix()
	sc := jetstream.StreamConfig{
		Name:              d.name,
		Description:       "Natter durable rooms: history of " + pfx + ".durable.room.<room>, republished to " + pfx + ".durable.live.<room>",
		Subjects:          []string{pfx + ".durable.room.*"},
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		MaxAge:            cfg.MaxAge,
		MaxMsgs:           cfg.MaxMsgs,
		MaxBytes:          cfg.MaxBytes,
		MaxMsgsPerSubject: cfg.RoomMaxMsgs,
		MaxMsgSize:        int32(min(d.e.cfg.NATS.MaxOutboundSize, 1<<30)),
		Discard:           jetstream.DiscardOld,
		Duplicates:        min(2*time.Minute, cfg.MaxAge),
		AllowDirect:       true,
		RePublish:         &jetstream.RePublish{Source: pfx + ".durable.room.*", Destination: pfx + ".durable.live.{{wildcard(1)}}"},
		Metadata:          map[string]string{envelope.RoomsStreamPatterns: strings.Join(cfg.Patterns, ",")},
	}
	var s jetstream.Stream
	if err := natsopt.Retry(ctx, d.e.cfg.Logger, "durable rooms stream", func(ctx context.Context) (err error) {
		s, err = d.js.CreateOrUpdateStream(ctx, sc)
		return err
	}); err != nil {
		return fmt.Errorf("edge: durable rooms stream %s: %w", d.name, err)
	}
	d.setEpoch(s.CachedInfo())
	return nil
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
