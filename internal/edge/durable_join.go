package edge

// Durable rooms, join recovery: a join from a position replays the room
// after it while the member's live messages are buffered (recovery), then
// acknowledges and hands the member over to live delivery (finish) with no
// gap and no duplicate at the seam.

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// recovery buffers a member's live messages while its replay runs, up to
// WebSocketConfig.WriteQueueBytes; past that it keeps nothing and the
// replay goes another round.
type recovery struct {
	buf      []seqFrame
	bytes    int
	overflow bool
}

type seqFrame struct {
	seq   uint64
	frame *outFrame
}

// The seam between a member's replay and its live delivery, all under
// group.mu: while the replay runs, admit buffers the member's live
// messages in its recovery (add); after each round of replay, again says
// whether the buffer overflowed, so that the replay goes another round;
// at the end, release hands the member over to live delivery with the
// buffered messages past the replay, and admit then skips what the replay
// gave it beyond the room's chain (floor).

// add buffers live message seq, unless the buffer overflowed: past limit
// bytes it empties it, and keeps nothing until the next round.
func (r *recovery) add(seq uint64, frame *outFrame, limit int) {
	if r.overflow {
		return
	}
	r.buf = append(r.buf, seqFrame{seq: seq, frame: frame})
	r.bytes += frame.size()
	if r.bytes > limit {
		r.buf, r.bytes, r.overflow = nil, 0, true
	}
}

// again reports whether the buffer overflowed during the round of replay
// that just ended (the replay must go on from where it got to), and
// starts the next round.
func (r *recovery) again() bool {
	again := r.overflow
	r.overflow = false // buf and bytes were emptied when it overflowed
	return again
}

// admit reports whether live message seq goes to member c now. A member
// still replaying gets it buffered instead (up to limit bytes); a member
// whose replay ended past the room's chain does not get what it was
// replayed.
func (l *roomLog) admit(c *conn, seq uint64, frame *outFrame, limit int) bool {
	if r := l.recovering[c]; r != nil {
		r.add(seq, frame, limit)
		return false
	}
	if f, ok := l.floor[c]; ok {
		if seq <= f {
			return false // replayed to c already
		}
		delete(l.floor, c)
	}
	return true
}

// release ends c's recovery r after a replay up to sequence last: it
// returns the buffered live messages past last, in order, and makes admit
// skip those at or before last that the room's chain has not delivered
// yet. It returns false and changes nothing when r is no longer c's
// recovery: c left the room meanwhile (and may have joined again).
func (l *roomLog) release(c *conn, r *recovery, last uint64) ([]*outFrame, bool) {
	if l.recovering[c] != r {
		return nil, false
	}
	delete(l.recovering, c)
	var frames []*outFrame
	for _, sf := range r.buf {
		if sf.seq > last {
			frames = append(frames, sf.frame)
		}
	}
	if last > l.last {
		if l.floor == nil {
			l.floor = make(map[*conn]uint64)
		}
		l.floor[c] = last
	}
	return frames, true
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
				if b, ok := d.frame(g.id, seq, data, h); ok {
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
		again := r.again()
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
	frames, ok := g.log.release(c, r, last)
	if !ok {
		return // c left the room meanwhile
	}
	d.ack(c, g, cid, ack)
	for _, f := range frames {
		c.sendOut(f)
	}
}
