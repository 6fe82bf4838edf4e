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
