package edge

// Durable rooms, $history: a page of a room's messages read with direct
// gets (ADR-31), forward from a position or backward before one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// maxHistory is the largest page of $history.
const maxHistory = 1000

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
	budget := d.e.cfg.NATS.MaxOutboundSize
	for {
		read, full := 0, false
		pending, err := r.get(ctx, &directGet{Seq: from, NextFor: r.subj, Batch: limit - len(h.Messages), MaxBytes: max(budget, 1)}, func(seq uint64, m *nats.Msg) {
			if full || seq < from {
				return
			}
			read++
			from = seq + 1
			b, ok := d.frame(h.Room, seq, m.Data, m.Header)
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
	budget := d.e.cfg.NATS.MaxOutboundSize
	var page []json.RawMessage // newest first
	// upTo stays above 0: up_to_seq 0 would mean the stream's end.
	for upTo > 0 {
		var seq uint64
		var data []byte
		var hdr nats.Header
		if _, err := r.get(ctx, &directGet{MultiLast: []string{r.subj}, UpToSeq: upTo, Batch: 1}, func(s uint64, m *nats.Msg) {
			seq, data, hdr = s, m.Data, m.Header
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
		b, ok := d.frame(h.Room, seq, data, hdr)
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
