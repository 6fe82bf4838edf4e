package edge

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
//
// This file holds the type, its construction and shutdown, and what the
// other files share (the frame a stored message becomes). The rest, by
// concern:
//   - durable_stream.go: the stream's set-up and epoch, a room's state in
//     it and the completeness check, and reads of a room by pull consumer
//     (fetch);
//   - durable_capture.go: the capture lease and the capturer;
//   - durable_live.go: live delivery of republished messages, the room's
//     chain and the backfill of its holes;
//   - durable_join.go: a join from a position: replay, the buffer of live
//     messages meanwhile, and the hand-over to live delivery (the seam);
//   - durable_history.go: $history, read with direct gets.

import (
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

// durableTimeout bounds one recovery or history query: below the
// clients' default request timeout (10s), so that a join from a
// position is answered, recovered or not, before the client gives up.
const durableTimeout = 8 * time.Second

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
	leader    routine.Group      // the lead goroutine; none without capture
}

// startDurable sets up e's side of durable rooms: the stream and, unless
// the edge does not capture, the capture lease and its goroutine.
func startDurable(ctx context.Context, e *Edge) (*durable, error) {
	cfg := e.cfg.DurableRooms
	d := &durable{e: e, name: e.ns.RoomsStream(), patterns: cfg.Patterns}
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		if e.logLimit.Allow() {
			e.cfg.Logger.Warn("edge: durable capture failed", "subject", m.Subject, "err", err)
		}
	}))
	if err != nil {
		return nil, err
	}
	d.js = js
	if err := d.createStream(ctx); err != nil {
		return nil, err
	}
	if !cfg.NoCapture {
		if err := d.createLease(ctx); err != nil {
			return nil, err
		}
		d.leader.Go(d.lead)
	}
	return d, nil
}

// stop gives up the capture lease, so that another edge takes over at
// once, and waits a little for captures still unacknowledged. A second
// call finds the lease given up already.
func (d *durable) stop() {
	d.leader.Stop()
	_ = d.leader.Wait(context.Background())
	select {
	case <-d.js.PublishAsyncComplete():
	case <-time.After(2 * time.Second):
	}
	d.js.CleanupPublisher() // its reply subscription, and what never got an answer
}

// isDurable reports whether room matches the durable patterns.
func (d *durable) isDurable(room string) bool {
	return d != nil && auth.Grants(d.patterns, room)
}

// frame encodes a stored message for delivery: meta.room, meta.offset and
// meta.epoch set by the edge, whatever the publisher wrote there.
func (d *durable) frame(room string, seq uint64, data []byte, h nats.Header) ([]byte, bool) {
	var env envelope.Envelope
	if err := envelope.DecodeInto(&env, data, d.e.cfg.NATS.MaxOutboundSize); err != nil {
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
	// The stored context of the message (its publisher's), the same in a
	// live delivery, a replay and a history page.
	if sc := tracing.FromHeader(h); sc.IsValid() {
		setMetaTrace(&env, sc)
	}
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
