package edge

// Response streams, the reader's side (docs/protocol.md, "Response
// streams"; docs/design/streams.md).
//
//   - The stream <prefix>_streams holds <prefix>.stream.<id>: the open,
//     the chunks, and the end, a rollup holding the whole text. A
//     position is a byte offset in the text, so it means the same before
//     and after the rollup.
//   - The stream republishes every stored message to
//     <prefix>.streamlive.<id> with Nats-Sequence and Nats-Last-Sequence
//     (the subject's previous sequence), as durable rooms do.
//   - A $stream.join reads the stream's first message with a direct get
//     (who may read it: the open's or the rollup's headers), subscribes to
//     the live subject, reads the subject's last sequence, acknowledges,
//     and catches up to that sequence with an ordered consumer; then it
//     follows the live subject. A live message whose previous sequence is
//     not the last one read shows a hole (a republish lost, the live
//     queue full while the client was slow): the read catches up from
//     JetStream again. A consumer per read lives only while it catches
//     up: nats-server would otherwise search past every other stream's
//     messages for each waiting consumer at every new message.
//   - The text the reader has not seen waits in the read's buffer until
//     the connection's queue has room; what piles up meanwhile goes out
//     as one frame: a slow reader gets coalesced chunks, never a
//     slow-consumer close.
//   - An end (a rollup: the whole text) is taken whatever its previous
//     sequence: a rollup that lands while the read is behind replaces
//     chunks it has not read, and its text from the reader's position on
//     is what they held.
//   - While a read gets nothing for StreamsConfig.IdleCheck, the edge pings
//     the producer on <prefix>.ctl.stream.<id>; no responders means it is
//     gone, and the edge ends the stream UNAVAILABLE with a rollup expected
//     right after the last message it read (so a late end of the
//     producer's, or another edge's, wins).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/singleflight"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

const (
	// streamFrameMax bounds the text of one $stream.chunk frame.
	streamFrameMax = 64 << 10
	// streamTimeout bounds the requests of a join, a cancel and an end
	// the edge writes.
	streamTimeout = 5 * time.Second
)

// streams is an edge's side of response streams; nil when they are off.
type streams struct {
	e      *Edge
	js     jetstream.JetStream
	stream jetstream.Stream
	name   string

	mu    sync.Mutex
	reads map[*conn]map[string]*streamRead

	// ending runs one endForProducer per stream at a time: cancels of a
	// stream whose producer is gone, from any number of connections, and
	// the idle check's end share one read of the text and one rollup.
	ending  singleflight.Group
	endRuns atomic.Int64 // how many ran (tests)

	// dropLive makes the next live messages vanish, as a lost republish
	// or a full live queue would; tests set it (export_test.go).
	dropLive atomic.Int32
}

// startStreams creates the streams stream, or updates it to this edge's
// config.
func startStreams(ctx context.Context, e *Edge) (*streams, error) {
	cfg, pfx := e.cfg.Streams, e.ns.Prefix()
	s := &streams{e: e, name: e.ns.StreamsStream(), reads: map[*conn]map[string]*streamRead{}}
	js, err := jetstream.New(e.nc)
	if err != nil {
		return nil, err
	}
	s.js = js
	sc := jetstream.StreamConfig{
		Name:        s.name,
		Description: "Natter response streams: " + pfx + ".stream.<id>, chunks then a rollup of the whole text, republished to " + pfx + ".streamlive.<id>",
		Subjects:    []string{pfx + ".stream.*"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		MaxMsgSize:  int32(min(e.cfg.NATS.MaxOutboundSize, 1<<30)),
		Discard:     jetstream.DiscardOld,
		Duplicates:  min(2*time.Minute, cfg.MaxAge),
		AllowDirect: true,
		AllowRollup: true,
		RePublish:   &jetstream.RePublish{Source: pfx + ".stream.*", Destination: pfx + ".streamlive.{{wildcard(1)}}"},
	}
	if err := natsopt.Retry(ctx, e.cfg.Logger, "response streams stream", func(ctx context.Context) (err error) {
		s.stream, err = js.CreateOrUpdateStream(ctx, sc)
		return err
	}); err != nil {
		return nil, fmt.Errorf("edge: response streams stream %s: %w", s.name, err)
	}
	return s, nil
}

// streamRead is one connection's read of one stream.
type streamRead struct {
	s      *streams
	c      *conn
	id     string
	subj   string
	first  *jetstream.RawStreamMsg // the stream's first message, when joined
	ctx    context.Context
	cancel context.CancelFunc

	// sendMu orders the read's frames with its stop: once stopped (a
	// leave, the connection's close), no frame of it goes out.
	sendMu   sync.Mutex
	stopped  bool
	over     bool // the run goroutine's: the end was sent
	sentText bool // the run goroutine's: a chunk frame was sent

	mu      sync.Mutex // pending, pos, end: the run goroutine writes, cancels read
	skip    int64      // the reader's offset: text before it is not sent
	pos     int64      // bytes of the stream's text read so far
	pending []byte     // read, not sent yet; it ends at pos
	end     *envelope.StreamEnd
	lastSeq uint64    // the last message read
	lastAt  time.Time // when it was read
}

// join answers a $stream.join: the stream's first message says who may
// read it; then the read runs on a goroutine of its own.
func (s *streams) join(c *conn, cid string, payload json.RawMessage) {
	q, ok := streamQuery(c, cid, payload, true)
	if !ok {
		return
	}
	s.mu.Lock()
	mine := s.reads[c]
	switch {
	case mine[q.Stream] != nil:
		s.mu.Unlock()
		c.sendError(cid, envelope.CodeAlreadyExists, "stream "+q.Stream+" is joined already on this connection: leave it first")
		return
	case len(mine) >= envelope.MaxStreamJoins:
		s.mu.Unlock()
		c.sendError(cid, envelope.CodeResourceExhausted, fmt.Sprintf("at most %d streams joined at once", envelope.MaxStreamJoins))
		return
	}
	subj, _ := s.e.ns.Stream(q.Stream)
	r := &streamRead{s: s, c: c, id: q.Stream, subj: subj.String(), skip: q.Offset, lastAt: time.Now()}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	if mine == nil {
		mine = map[string]*streamRead{}
		s.reads[c] = mine
	}
	mine[q.Stream] = r // held while the join runs: a second join is refused
	s.mu.Unlock()

	first, to, err := s.authorize(r.ctx, c, q.Stream)
	if err != nil {
		s.forget(r)
		c.sendErrorPayload(cid, rpc.FromError(err).Payload())
		return
	}
	r.first = first
	b, _ := json.Marshal(envelope.StreamJoined{Stream: q.Stream, Offset: q.Offset, To: to})
	if !s.e.routines.Go(func(ctx context.Context) { r.run(ctx, cid, b) }) {
		s.forget(r)
		c.sendError(cid, envelope.CodeUnavailable, "edge shutting down")
	}
}

// streamQuery decodes the payload of $stream.join, leave or cancel, or
// answers INVALID_ARGUMENT.
func streamQuery(c *conn, cid string, payload json.RawMessage, offset bool) (envelope.StreamQuery, bool) {
	var q envelope.StreamQuery
	err := json.Unmarshal(payload, &q)
	if err == nil {
		err = envelope.ValidateID(q.Stream)
	}
	if err != nil || q.Offset < 0 || (!offset && q.Offset != 0) {
		want := `{"stream": id}`
		if offset {
			want = `{"stream": id, "offset"?: bytes >= 0}`
		}
		c.sendError(cid, envelope.CodeInvalidArgument, "payload must be "+want+", id 1-128 characters of [A-Za-z0-9_-]")
		return q, false
	}
	return q, true
}

// authorize reads stream id's first message and checks that c may read
// the stream: its user, a member of its room, or the connection itself.
func (s *streams) authorize(ctx context.Context, c *conn, id string) (*jetstream.RawStreamMsg, envelope.StreamTo, error) {
	var to envelope.StreamTo
	subj, _ := s.e.ns.Stream(id)
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	first, err := s.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj.String()))
	if errors.Is(err, jetstream.ErrMsgNotFound) && s.e.cfg.Streams.Replicas > 1 {
		// A follower answered the direct get, and may not have the open
		// its producer has just been told is stored: once more, shortly.
		time.Sleep(100 * time.Millisecond)
		first, err = s.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj.String()))
	}
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, to, &rpc.Error{Code: envelope.CodeNotFound, Message: "stream " + id + " not found"}
	case err != nil:
		s.e.cfg.Logger.Warn("edge: stream lookup", "stream", id, "err", err)
		return nil, to, &rpc.Error{Code: envelope.CodeUnavailable, Message: "stream unavailable; retry the join", RetryAfter: time.Second}
	}
	to = streamTo(first.Header)
	allowed := false
	switch {
	case to.User != "":
		allowed = c.user == to.User
	case to.Conn != "":
		allowed = c.id == to.Conn
	case to.Room != "":
		s.e.hub.mu.Lock()
		allowed = c.rooms.has(to.Room)
		s.e.hub.mu.Unlock()
	default:
		// Its open is gone (the stream's limits dropped it): what is
		// left is not a whole response.
		return nil, to, &rpc.Error{Code: envelope.CodeNotFound, Message: "stream " + id + " is incomplete"}
	}
	if !allowed {
		return nil, to, &rpc.Error{Code: envelope.CodePermissionDenied, Message: "not allowed to read stream " + id}
	}
	return first, to, nil
}

func streamTo(h nats.Header) envelope.StreamTo {
	return envelope.StreamTo{User: h.Get(envelope.HeaderStreamUser), Room: h.Get(envelope.HeaderStreamRoom), Conn: h.Get(envelope.HeaderStreamConn)}
}

// streamLiveQueue is how many live messages a read holds while its
// client is slow; past it NATS drops them, and the read catches up from
// the stream.
const streamLiveQueue = 4096

// run subscribes to the stream's live subject, acknowledges the join,
// catches up from the stream and follows the live subject, sending the
// text until the end, a leave, or the connection's close.
func (r *streamRead) run(ctx context.Context, cid string, joined []byte) {
	defer r.s.forget(r)
	stop := context.AfterFunc(ctx, r.stop) // the edge stopping
	defer stop()
	defer r.stop()
	s := r.s
	live := make(chan *nats.Msg, streamLiveQueue)
	subj, _ := s.e.ns.StreamLive(r.id)
	sub, err := s.e.nc.ChanSubscribe(subj.String(), live)
	var last uint64
	if err == nil {
		defer func() { _ = sub.Unsubscribe() }()
		last, err = r.lastSeqAfterSubscribe()
	}
	r.c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeStreamJoined, Meta: envelope.Meta{CorrelationID: cid}, Payload: joined})
	s.e.stats.streamJoins.Add(1)
	if err == nil {
		err = r.catchUp(r.seek(last), last)
	}
	idle := time.NewTimer(s.e.cfg.Streams.IdleCheck)
	defer idle.Stop()
	for {
		if err != nil {
			if r.ctx.Err() == nil {
				s.e.cfg.Logger.Warn("edge: stream read", "stream", r.id, "err", err)
				r.mu.Lock()
				offset := r.pos
				r.mu.Unlock()
				payload, _ := json.Marshal(&envelope.StreamEnd{Status: envelope.StreamError, Error: &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: "stream unavailable; join again from the last offset"}})
				r.emit(r.frame(envelope.TypeStreamEnd, offset, payload))
			}
			return
		}
		if r.flush() {
			return
		}
		select {
		case <-r.ctx.Done():
			return
		case m := <-live:
			err = r.live(m)
			for more := err == nil; more; { // what else came: one frame for all
				select {
				case m := <-live:
					err = r.live(m)
					more = err == nil
				default:
					more = false
				}
			}
			idle.Reset(s.e.cfg.Streams.IdleCheck)
		case <-idle.C:
			r.checkProducer()
			idle.Reset(s.e.cfg.Streams.IdleCheck)
		}
	}
}

// lastSeqAfterSubscribe makes sure the live subscription is in place and
// returns the stream's last sequence on the subject: every message after
// it comes live.
func (r *streamRead) lastSeqAfterSubscribe() (uint64, error) {
	ctx, cancel := context.WithTimeout(r.ctx, streamTimeout)
	defer cancel()
	if err := r.s.e.nc.FlushWithContext(ctx); err != nil {
		return 0, err
	}
	m, err := r.s.stream.GetLastMsgForSubject(ctx, r.subj)
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
}

// seek finds where a join from the reader's offset starts reading: the
// chunk that holds the offset, by a binary search of direct gets over the
// stream's sequences, when chunks say where they start
// (HeaderStreamOffset, as the Go SDK writes); else the stream's first
// message, and the text before the offset is read and dropped.
func (r *streamRead) seek(last uint64) uint64 {
	from := r.first.Sequence
	if r.skip == 0 || r.first.Header.Get(envelope.HeaderStream) != envelope.StreamOpen {
		return from
	}
	ctx, cancel := context.WithTimeout(r.ctx, streamTimeout)
	defer cancel()
	// Invariant: the chunk found at or after lo starts at or before the
	// offset; hi is past every such chunk.
	lo, hi := from+1, last+1
	var found *jetstream.RawStreamMsg
	var at int64
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := r.s.stream.GetMsg(ctx, mid, jetstream.WithGetMsgSubject(r.subj))
		if err != nil || m.Sequence > last {
			if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return from // no answer: read from the start
			}
			hi = mid
			continue
		}
		if m.Header.Get(envelope.HeaderStream) != envelope.StreamChunk {
			return from // the end (a rollup): read it whole
		}
		off, err := strconv.ParseInt(m.Header.Get(envelope.HeaderStreamOffset), 10, 64)
		if err != nil {
			return from // a producer that does not say: read from the start
		}
		if off <= r.skip {
			found, at, lo = m, off, m.Sequence+1
		} else {
			hi = mid
		}
	}
	if found == nil {
		return from
	}
	r.mu.Lock()
	r.pos, r.lastSeq = at, found.Sequence-1
	r.mu.Unlock()
	return found.Sequence
}

// live takes one republished message: in order, after catching up from
// the stream when the live subject lost some.
func (r *streamRead) live(m *nats.Msg) error {
	if r.s.dropLive.Load() > 0 && r.s.dropLive.Add(-1) >= 0 {
		return nil
	}
	seq := headerSeq(m.Header, jetstream.SequenceHeader)
	if seq == 0 || seq <= r.lastSeq {
		return nil // read already (caught up past it)
	}
	ev := m.Header.Get(envelope.HeaderStream)
	if ev != envelope.StreamDone && ev != envelope.StreamError && headerSeq(m.Header, "Nats-Last-Sequence") != r.lastSeq {
		if err := r.catchUp(r.lastSeq+1, seq-1); err != nil {
			return err
		}
		if seq <= r.lastSeq {
			return nil
		}
	}
	r.take(seq, m.Header, m.Data)
	return nil
}

// catchUp reads the stream's messages on the subject from sequence from
// up to to with an ordered consumer (a rollup past to ends it too), and
// deletes the consumer after. Failed attempts are tried again, a second
// apart, up to three times.
func (r *streamRead) catchUp(from, to uint64) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-r.ctx.Done():
				return r.ctx.Err()
			case <-time.After(time.Second):
			}
			from = max(from, r.lastSeq+1)
		}
		if to < from || r.ended() {
			return nil
		}
		if err = r.fetch(from, to); err == nil || r.ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (r *streamRead) fetch(from, to uint64) error {
	s := r.s
	ctx, cancel := context.WithTimeout(r.ctx, durableTimeout)
	defer cancel()
	cons, err := s.js.OrderedConsumer(ctx, s.name, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{r.subj},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer func() {
		it.Stop()
		// The server would drop it after InactiveThreshold; at once is
		// cheaper for an edge that serves many streams.
		if info := cons.CachedInfo(); info != nil {
			dctx, dcancel := context.WithTimeout(context.Background(), streamTimeout)
			_ = s.js.DeleteConsumer(dctx, s.name, info.Name)
			dcancel()
		}
	}()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		seq := md.Sequence.Stream
		if seq > r.lastSeq {
			r.take(seq, m.Headers(), m.Data())
		}
		if seq >= to || r.ended() {
			return nil
		}
		// The text so far goes out while the rest is read: the first
		// chunk a reader missed comes at once, not after the backlog.
		// With the client behind, waitRoom paces the read.
		if n := r.buffered(); n > 0 && (!r.sentText || md.NumPending == 0 || n >= streamFrameMax) {
			if r.flush() {
				return nil
			}
		}
	}
}

func (r *streamRead) buffered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

func (r *streamRead) ended() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.end != nil
}

// flush sends what pending holds, in frames of at most streamFrameMax
// bytes of text, each when the connection's queue has room for it, then
// the end once it came; it reports whether the read is over.
func (r *streamRead) flush() bool {
	for {
		if r.over {
			return true
		}
		r.mu.Lock()
		idle := len(r.pending) == 0 && r.end == nil
		r.mu.Unlock()
		if idle {
			return false
		}
		if !r.c.waitRoom(r.ctx) {
			return true
		}
		r.mu.Lock()
		n := envelope.TextCut(r.pending, streamFrameMax)
		text, end := r.pending[:n:n], r.end
		rest := len(r.pending) - n
		offset := r.pos - int64(rest)
		r.mu.Unlock()
		if n > 0 {
			sent, over := r.emit(r.frame(envelope.TypeStreamChunk, offset, jsonString(text)))
			if over {
				return true
			}
			if !sent {
				continue // no room after all (other frames came first): wait again
			}
			r.sentText = true
			r.mu.Lock()
			if r.pending = r.pending[n:]; len(r.pending) == 0 {
				r.pending = nil
			}
			r.mu.Unlock()
		}
		if rest > 0 {
			continue
		}
		if end == nil {
			return false
		}
		payload, _ := json.Marshal(end)
		r.over = true
		for {
			sent, over := r.emit(r.frame(envelope.TypeStreamEnd, offset, payload))
			if sent || over || !r.c.waitRoom(r.ctx) {
				return true
			}
		}
	}
}

// emit queues env unless the read stopped (over) or the queue has no
// room for it now (not sent).
func (r *streamRead) emit(env []byte) (sent, over bool) {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	if r.stopped {
		return false, true
	}
	return r.c.offer(env), false
}

// frame encodes a $stream.chunk or $stream.end of the read's stream.
func (r *streamRead) frame(typ string, offset int64, payload []byte) []byte {
	meta := envelope.Meta{Extra: map[string]json.RawMessage{
		"stream": strconv.AppendQuote(nil, r.id),
		"offset": strconv.AppendInt(nil, offset, 10),
	}}
	b, _ := envelope.Encode(&envelope.Envelope{Type: typ, Meta: meta, Payload: payload})
	return b
}

// jsonString is text as a JSON string, with <, > and & as they are:
// escaping them would make a frame up to six times its text.
func jsonString(text []byte) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(string(text))
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// take adds the text of stored message seq that the reader has not seen
// to pending; an end also ends the read.
func (r *streamRead) take(seq uint64, h nats.Header, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.end != nil {
		return
	}
	r.lastSeq, r.lastAt = seq, time.Now()
	switch ev := h.Get(envelope.HeaderStream); ev {
	case envelope.StreamChunk:
		r.addLocked(data, r.pos)
	case envelope.StreamDone, envelope.StreamError:
		// The rollup: the whole text, of which pos bytes were read.
		r.addLocked(data, 0)
		r.end = &envelope.StreamEnd{Status: ev}
		if ev == envelope.StreamError {
			r.end.Error = &envelope.ErrorPayload{Code: envelope.Code(h.Get(envelope.HeaderStreamCode)), Message: h.Get(envelope.HeaderStreamMessage)}
			if r.end.Error.Code == "" {
				r.end.Error.Code = envelope.CodeInternal
			}
		}
	}
}

// addLocked adds the part of text past pos, text starting at byte at of
// the stream's text, and past the reader's offset, to pending.
func (r *streamRead) addLocked(text []byte, at int64) {
	end := at + int64(len(text))
	if end <= r.pos {
		return
	}
	from := max(r.pos, r.skip) - at
	if r.pos < r.skip {
		// The first text past the reader's offset: an offset inside a
		// character starts at the next one.
		for k := 0; k < utf8.UTFMax-1 && from < int64(len(text)) && !utf8.RuneStart(text[from]); k++ {
			from++
		}
	}
	if from < int64(len(text)) {
		r.pending = append(r.pending, text[from:]...)
	}
	r.pos = end
}

// checkProducer pings the producer of a read that got nothing for a
// while; when it is gone, the edge ends the stream for it.
func (r *streamRead) checkProducer() {
	r.mu.Lock()
	ended, quiet := r.end != nil, time.Since(r.lastAt)
	r.mu.Unlock()
	if ended || quiet < r.s.e.cfg.Streams.IdleCheck {
		return
	}
	// Twice, a second apart: a producer whose NATS connection is
	// reconnecting has no subscription for a moment either.
	if !r.s.producerGone(r.ctx, r.id) {
		return
	}
	select {
	case <-r.ctx.Done():
		return
	case <-time.After(time.Second):
	}
	if r.s.producerGone(r.ctx, r.id) {
		r.s.endForProducer(r.ctx, r.id, r.first.Header, &rpc.Error{Code: envelope.CodeUnavailable, Message: "the stream's producer is gone"})
	}
}

// producerGone reports whether nobody answers on the stream's control
// subject: NATS has no responders.
func (s *streams) producerGone(ctx context.Context, id string) bool {
	subj, _ := s.e.ns.StreamCtl(id)
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	_, err := s.e.nc.RequestWithContext(ctx, subj.String(), []byte(`{"op":"ping"}`))
	return errors.Is(err, nats.ErrNoResponders)
}

// endOutcome is what endForProducer did.
type endOutcome int

const (
	endFailed endOutcome = iota // JetStream did not answer: try again later
	ended                       // the stream has an end now (this one, or one before it)
	endRaced                    // something was stored after what was read: the producer lives
)

// endForProducer ends a stream whose producer is gone with err: a rollup
// of the text stored so far, expected right after the last message, so
// that it fails when the producer's end, or another edge's, landed
// first. A text longer than a NATS message (a producer whose own end was
// refused for its size) is cut, on a character, to what fits.
func (s *streams) endForProducer(ctx context.Context, id string, h nats.Header, err *rpc.Error) endOutcome {
	v, _, _ := s.ending.Do(id, func() (any, error) { return s.endNow(ctx, id, h, err), nil })
	return v.(endOutcome)
}

// endNow is endForProducer's work, one at a time per stream.
func (s *streams) endNow(ctx context.Context, id string, h nats.Header, err *rpc.Error) endOutcome {
	s.endRuns.Add(1)
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	subj, _ := s.e.ns.Stream(id)
	text, last, done, rerr := s.readAll(ctx, subj.String())
	if rerr != nil {
		s.e.cfg.Logger.Warn("edge: stream read for its end", "stream", id, "err", rerr)
		return endFailed
	}
	if done {
		return ended
	}
	msg := &nats.Msg{Subject: subj.String(), Header: nats.Header{}}
	message := err.Message
	if limit := int(s.e.nc.MaxPayload()) - streamHeaderRoom; len(text) > limit {
		n := envelope.TextCut(text, limit)
		message += fmt.Sprintf("; its %d bytes do not fit one message: cut at %d", len(text), n)
		text = text[:n]
	}
	msg.Data = text
	msg.Header.Set(envelope.HeaderStream, envelope.StreamError)
	msg.Header.Set(envelope.HeaderStreamCode, string(err.Code))
	msg.Header.Set(envelope.HeaderStreamMessage, message)
	for _, k := range []string{envelope.HeaderStreamUser, envelope.HeaderStreamRoom, envelope.HeaderStreamConn} {
		if v := h.Get(k); v != "" {
			msg.Header.Set(k, v)
		}
	}
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	_, perr := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(s.name))
	var apiErr *jetstream.APIError
	switch {
	case perr == nil:
		s.e.stats.streamsEnded.Add(1)
		return ended
	case errors.As(perr, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		return endRaced
	default:
		s.e.cfg.Logger.Warn("edge: end a stream whose producer is gone", "stream", id, "err", perr)
		return endFailed
	}
}

// streamHeaderRoom is what the headers of an end may take of a NATS
// message, at most.
const streamHeaderRoom = 8 << 10

// readAll reads a stream's text as stored now: the chunks concatenated,
// or its end's text; the sequence of its last message; and whether it has
// ended.
func (s *streams) readAll(ctx context.Context, subj string) ([]byte, uint64, bool, error) {
	last, err := s.stream.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		return nil, 0, false, err
	}
	if ev := last.Header.Get(envelope.HeaderStream); ev == envelope.StreamDone || ev == envelope.StreamError {
		return last.Data, last.Sequence, true, nil
	}
	cons, err := s.js.OrderedConsumer(ctx, s.name, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}, InactiveThreshold: 30 * time.Second})
	if err != nil {
		return nil, 0, false, err
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, 0, false, err
	}
	defer func() {
		it.Stop()
		if info := cons.CachedInfo(); info != nil {
			_ = s.js.DeleteConsumer(context.WithoutCancel(ctx), s.name, info.Name)
		}
	}()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var text []byte
	for {
		m, err := it.Next()
		if err != nil {
			return nil, 0, false, err
		}
		md, err := m.Metadata()
		if err != nil {
			return nil, 0, false, err
		}
		switch m.Headers().Get(envelope.HeaderStream) {
		case envelope.StreamChunk:
			text = append(text, m.Data()...)
		case envelope.StreamDone, envelope.StreamError:
			return m.Data(), md.Sequence.Stream, true, nil
		}
		if md.Sequence.Stream >= last.Sequence {
			return text, md.Sequence.Stream, false, nil
		}
	}
}

// cancelStream answers a $stream.cancel, on a goroutine of its own: it
// asks the producer to stop, or ends the stream CANCELLED itself when the
// producer is gone.
func (s *streams) cancelStream(c *conn, cid string, payload json.RawMessage) {
	q, ok := streamQuery(c, cid, payload, false)
	if !ok {
		return
	}
	if !s.e.routines.Go(func(context.Context) { s.cancel(c, cid, q.Stream) }) {
		c.sendError(cid, envelope.CodeUnavailable, "edge shutting down")
	}
}

func (s *streams) cancel(c *conn, cid, id string) {
	first, _, err := s.authorize(c.ctx, c, id)
	if err != nil {
		c.sendErrorPayload(cid, rpc.FromError(err).Payload())
		return
	}
	if ev := first.Header.Get(envelope.HeaderStream); ev != envelope.StreamDone && ev != envelope.StreamError {
		subj, _ := s.e.ns.StreamCtl(id)
		ctx, cancel := context.WithTimeout(c.ctx, streamTimeout)
		_, err = s.e.nc.RequestWithContext(ctx, subj.String(), []byte(`{"op":"cancel"}`))
		cancel()
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			switch s.endForProducer(c.ctx, id, first.Header, &rpc.Error{Code: envelope.CodeCanceled, Message: "stream cancelled"}) {
			case endFailed:
				c.sendError(cid, envelope.CodeUnavailable, "the stream could not be ended; retry")
				return
			case endRaced:
				c.sendErrorPayload(cid, (&rpc.Error{Code: envelope.CodeUnavailable, Message: "the producer is back; retry the cancel", RetryAfter: time.Second}).Payload())
				return
			}
		case err != nil:
			c.sendError(cid, envelope.CodeUnavailable, "the producer did not answer: "+err.Error())
			return
		}
	}
	b, _ := json.Marshal(envelope.StreamQuery{Stream: id})
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeStreamCancelled, Meta: envelope.Meta{CorrelationID: cid}, Payload: b})
}

// leave answers a $stream.leave: the read stops, without an end.
func (s *streams) leave(c *conn, cid string, payload json.RawMessage) {
	q, ok := streamQuery(c, cid, payload, false)
	if !ok {
		return
	}
	s.mu.Lock()
	r := s.reads[c][q.Stream]
	s.mu.Unlock()
	if r != nil {
		r.stop()
		s.forget(r)
	}
	b, _ := json.Marshal(envelope.StreamQuery{Stream: q.Stream})
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeStreamLeft, Meta: envelope.Meta{CorrelationID: cid}, Payload: b})
}

// stop ends the read: no frame of it goes out from here on, and its
// goroutine returns.
func (r *streamRead) stop() {
	r.sendMu.Lock()
	r.stopped = true
	r.sendMu.Unlock()
	r.cancel()
}

// forget removes r from its connection's reads, unless another read of
// the same stream replaced it.
func (s *streams) forget(r *streamRead) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mine := s.reads[r.c]; mine[r.id] == r {
		delete(mine, r.id)
		if len(mine) == 0 {
			delete(s.reads, r.c)
		}
	}
}

// dropConn stops every read of a connection that is gone.
func (s *streams) dropConn(c *conn) {
	s.mu.Lock()
	mine := s.reads[c]
	delete(s.reads, c)
	s.mu.Unlock()
	for _, r := range mine {
		r.stop()
	}
}
