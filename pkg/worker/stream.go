package worker

// Response streams, the producer's side (docs/protocol.md, "Writing a
// stream"): a StreamWriter opens <prefix>.stream.<id>, stores what it is
// given as chunks in order, answers the edges' pings and cancels on
// <prefix>.ctl.stream.<id>, and ends the stream with a rollup that holds
// the whole text.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

const (
	// streamChunkMax bounds one stored chunk, in bytes: what Write was
	// given while the previous chunk was being stored goes out as one
	// chunk, up to this.
	streamChunkMax = 64 << 10
	// streamPendingMax bounds what Write holds before it blocks until the
	// stream has stored it.
	streamPendingMax = 1 << 20
	// streamAttempt bounds one attempt to store a message: an
	// acknowledgement lost to a NATS node failure or a leader election is
	// not awaited for ever; the retry, with the same message id, is
	// stored once.
	streamAttempt = 2 * time.Second
)

// ErrStreamEnded is Write's error once the stream was ended: by Close or
// Fail, or by an edge that found the producer gone.
var ErrStreamEnded = errors.New("worker: stream ended")

// StreamTo names who may read a stream (docs/protocol.md, "Response
// streams"): one user (all its connections: other tabs and devices), the
// members of one room, or one connection. Exactly one field is set.
type StreamTo = envelope.StreamTo

// StreamWriter writes one response stream. Write stores text in order as
// chunks that readers get as soon as they are stored; Close ends the
// stream done, Fail with an error. The stream's Context is cancelled when
// a reader or a service cancels it (its cause an *rpc.Error CANCELLED):
// stop writing then, and Close or Fail as usual (the end is CANCELLED
// either way). A StreamWriter is safe for concurrent use; its writes are
// stored in the order Write was called.
type StreamWriter struct {
	p      *publisher
	id     string
	nonce  string // this writer's: its message ids are <nonce>.open, <nonce>.<n>, <nonce>.end
	subj   string
	to     StreamTo
	hdr    nats.Header // the trace context stored with every message
	ctx    context.Context
	cancel context.CancelCauseFunc
	ctl    *nats.Subscription

	mu      sync.Mutex
	cond    *sync.Cond // signals pending, drained, ending
	pending []byte     // written, not stored yet
	text    []byte     // everything written: the rollup's body
	ending  bool       // Close or Fail was called: no more writes
	err     error      // the first failure to store: the stream is broken
	lastSeq uint64     // the stream sequence of the last stored message
	chunks  int        // stored chunks: the next message id
	stored  int64      // bytes of text stored in chunks
	flushed chan struct{}
	endOnce sync.Once
	endErr  error
}

// OpenStream opens a response stream with a new id for to, and returns its
// writer. Tell the readers its ID (a reply, a room message); they join it
// with $stream.join. The stream outlives ctx's deadline (a request's
// handler replies with the id and goes on writing); ctx's trace context is
// stored with its messages.
func (p *Publisher) OpenStream(ctx context.Context, to StreamTo) (*StreamWriter, error) {
	return p.OpenStreamID(ctx, nuid.Next(), to)
}

// OpenStreamID is OpenStream with the caller's id: 1-128 characters of
// [A-Za-z0-9_-], not used by another stream within the streams stream's
// max age (ALREADY_EXISTS).
func (p *Publisher) OpenStreamID(ctx context.Context, id string, to StreamTo) (*StreamWriter, error) {
	subj, err := p.ns.Stream(id)
	if err != nil {
		return nil, rpc.Errorf(envelope.CodeInvalidArgument, "stream id: %v", err)
	}
	if err := validStreamTo(to); err != nil {
		return nil, err
	}
	ctl, err := p.ns.StreamCtl(id)
	if err != nil {
		return nil, err
	}
	p.jsOnce.Do(func() { p.js, p.jsErr = jetstream.New(p.nc) })
	if p.jsErr != nil {
		return nil, p.jsErr
	}
	wctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	s := &StreamWriter{p: p.publisher, id: id, nonce: nuid.Next(), subj: subj.String(), to: to, ctx: wctx, cancel: cancel, flushed: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		sc = p.sc
	}
	if sc.IsValid() {
		s.hdr = nats.Header{}
		tracing.InjectContext(sc, s.hdr)
	}
	// Listening before the open is stored: an edge that pings once the
	// stream exists finds the producer (one connection: NATS applies the
	// subscription before the publish).
	if s.ctl, err = p.nc.Subscribe(ctl.String(), s.control); err != nil {
		cancel(err)
		return nil, err
	}
	open := s.message(envelope.StreamOpen, nil)
	s.setTo(open.Header)
	open.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	if _, ok := ctx.Deadline(); !ok {
		var cancelOpen context.CancelFunc
		ctx, cancelOpen = context.WithTimeout(ctx, rpc.DefaultTimeout)
		defer cancelOpen()
	}
	seq, err := s.store(ctx, open, s.nonce+".open")
	if err != nil {
		_ = s.ctl.Unsubscribe()
		cancel(err)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && wrongLastSeq(apiErr) {
			return nil, rpc.Errorf(envelope.CodeAlreadyExists, "stream %s exists already", id)
		}
		return nil, err
	}
	s.lastSeq = seq
	go s.flush()
	return s, nil
}

// OpenStream opens a response stream from a handler, for the sender's user
// when to is zero (its connection when it is anonymous); see
// Publisher.OpenStream.
func (m *Message) OpenStream(ctx context.Context, to StreamTo) (*StreamWriter, error) {
	if to == (StreamTo{}) {
		switch {
		case m.User != "":
			to.User = m.User
		case m.Conn != "":
			to.Conn = m.Conn
		default:
			return nil, rpc.Errorf(envelope.CodeInvalidArgument, "stream: a message without a sender needs StreamTo")
		}
	}
	return m.Publisher().OpenStream(ctx, to)
}

func validStreamTo(to StreamTo) error {
	n := 0
	for _, v := range []string{to.User, to.Room, to.Conn} {
		if v != "" {
			n++
		}
	}
	switch {
	case n != 1:
		return rpc.Errorf(envelope.CodeInvalidArgument, "stream: StreamTo needs exactly one of User, Room, Conn")
	case to.Conn != "":
		if err := envelope.ValidateConnID(to.Conn); err != nil {
			return rpc.Errorf(envelope.CodeInvalidArgument, "stream: conn: %v", err)
		}
	default:
		if err := envelope.ValidateID(to.User + to.Room); err != nil {
			return rpc.Errorf(envelope.CodeInvalidArgument, "stream: %v", err)
		}
	}
	return nil
}

// ID is the stream's id, for readers' $stream.join.
func (s *StreamWriter) ID() string { return s.id }

// Context is cancelled when the stream is cancelled (context.Cause: an
// *rpc.Error CANCELLED) or ended.
func (s *StreamWriter) Context() context.Context { return s.ctx }

// Write appends p to the stream; it is stored in the background, in
// order. It blocks while more than 1 MiB waits to be stored, and fails
// with ErrStreamEnded after Close or Fail, or with the error that broke
// the stream (a store that failed for good). p must be UTF-8 text.
func (s *StreamWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.pending) >= streamPendingMax && s.err == nil && !s.ending {
		s.cond.Wait()
	}
	switch {
	case s.err != nil:
		return 0, s.err
	case s.ending:
		return 0, ErrStreamEnded
	case len(s.text)+len(p) > s.maxText():
		// The end holds the whole text in one message.
		return 0, rpc.Errorf(envelope.CodeResourceExhausted, "stream %s: the whole text must fit one NATS message (%d bytes); end this stream and go on in another", s.id, s.maxText())
	}
	s.pending = append(s.pending, p...)
	s.text = append(s.text, p...)
	s.cond.Broadcast()
	return len(p), nil
}

// maxText is the longest text a stream may have: its end is one message.
func (s *StreamWriter) maxText() int { return int(s.p.nc.MaxPayload()) - streamHeaderRoom }

// streamHeaderRoom is what the headers of the end may take, at most.
const streamHeaderRoom = 8 << 10

// WriteString is Write of a string.
func (s *StreamWriter) WriteString(text string) (int, error) {
	return s.Write([]byte(text))
}

// Close stores what is still pending and ends the stream done (CANCELLED
// after a cancel). It returns the first error of storing it; a second
// call returns the first's result.
func (s *StreamWriter) Close() error { return s.end(nil) }

// Fail ends the stream with err's code (INTERNAL without one, as for RPC
// errors) and message, after what is pending.
func (s *StreamWriter) Fail(err error) error {
	if err == nil {
		err = rpc.ErrInternal
	}
	return s.end(err)
}

func (s *StreamWriter) end(fail error) error {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.ending = true
		s.cond.Broadcast()
		s.mu.Unlock()
		<-s.flushed
		s.endErr = s.storeEnd(fail)
		_ = s.ctl.Unsubscribe()
		s.cancel(ErrStreamEnded)
	})
	return s.endErr
}

// storeEnd stores the rollup: the whole text, who may read it, and how
// it ended, expected right after the last chunk, so that it cannot land
// after an end an edge wrote for a producer it thought gone.
func (s *StreamWriter) storeEnd(fail error) error {
	s.mu.Lock()
	err, text, last := s.err, s.text, s.lastSeq
	s.mu.Unlock()
	if err != nil {
		return err // the chunks are not all stored: an edge ends it when it finds us gone
	}
	if cause := context.Cause(s.ctx); cause != nil && rpc.FromError(cause).Code == envelope.CodeCanceled {
		fail = cause
	}
	msg := s.message(envelope.StreamDone, text)
	if fail != nil {
		p := rpc.FromError(fail).Payload()
		msg.Header.Set(envelope.HeaderStream, envelope.StreamError)
		msg.Header.Set(envelope.HeaderStreamCode, string(p.Code))
		msg.Header.Set(envelope.HeaderStreamMessage, p.Message)
	}
	s.setTo(msg.Header)
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	ctx, cancel := context.WithTimeout(context.Background(), dupWindow)
	defer cancel()
	if _, err := s.store(ctx, msg, s.nonce+".end"); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && wrongLastSeq(apiErr) {
			return fmt.Errorf("%w: ended by an edge meanwhile", ErrStreamEnded)
		}
		return err
	}
	return nil
}

// flush stores the pending text as chunks, one at a time, until the
// stream ends or a store fails for good.
func (s *StreamWriter) flush() {
	defer close(s.flushed)
	for {
		s.mu.Lock()
		n := s.sendable()
		for n == 0 && !s.ending {
			s.cond.Wait()
			n = s.sendable()
		}
		if n == 0 && len(s.pending) > 0 {
			n = len(s.pending) // ending: what is left, whole characters or not
		}
		if n == 0 {
			s.mu.Unlock()
			return
		}
		chunk := s.pending[:n:n]
		s.chunks++
		id := s.nonce + "." + strconv.Itoa(s.chunks)
		msg := s.message(envelope.StreamChunk, chunk)
		// Right after what this writer stored: a chunk after an end an
		// edge wrote, for a producer it thought gone, is refused.
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(s.lastSeq, 10))
		msg.Header.Set(envelope.HeaderStreamOffset, strconv.FormatInt(s.stored, 10))
		s.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), dupWindow)
		seq, err := s.store(ctx, msg, id)
		cancel()

		s.mu.Lock()
		if s.pending = s.pending[n:]; len(s.pending) == 0 {
			s.pending = nil // let the stored text go
		}
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			s.lastSeq = seq
			s.stored += int64(n)
		case errors.As(err, &apiErr) && wrongLastSeq(apiErr):
			s.err = fmt.Errorf("%w: ended by an edge, which found the producer gone", ErrStreamEnded)
		default:
			s.err = fmt.Errorf("worker: stream %s: store chunk: %w", s.id, err)
		}
		if err != nil {
			s.pending = nil
		}
		s.cond.Broadcast()
		s.mu.Unlock()
		if err != nil {
			s.cancel(s.err)
			return
		}
	}
}

// sendable is how much of pending goes in the next chunk: at most
// streamChunkMax bytes, and not a character Write has only begun (the
// rest of it comes with the next Write), so that no chunk ends inside
// one. s.mu is held.
func (s *StreamWriter) sendable() int {
	n := envelope.TextCut(s.pending, streamChunkMax)
	if n < len(s.pending) {
		return n
	}
	for i := n - 1; i >= 0 && i >= n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s.pending[i]) {
			if !utf8.FullRune(s.pending[i:n]) {
				return i
			}
			break
		}
	}
	return n
}

func (s *StreamWriter) message(event string, data []byte) *nats.Msg {
	h := make(nats.Header, len(s.hdr)+5)
	for k, v := range s.hdr {
		h[k] = v
	}
	h.Set(envelope.HeaderStream, event)
	return &nats.Msg{Subject: s.subj, Header: h, Data: data}
}

func (s *StreamWriter) setTo(h nats.Header) {
	switch {
	case s.to.User != "":
		h.Set(envelope.HeaderStreamUser, s.to.User)
	case s.to.Room != "":
		h.Set(envelope.HeaderStreamRoom, s.to.Room)
	default:
		h.Set(envelope.HeaderStreamConn, s.to.Conn)
	}
}

// store publishes msg to the streams stream until it is acknowledged,
// with one message id so that a retry is stored once. A refusal (a wrong
// expected sequence, a message too large) is not retried.
func (s *StreamWriter) store(ctx context.Context, msg *nats.Msg, id string) (uint64, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, streamAttempt)
		ack, err := s.p.js.PublishMsg(actx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(s.p.ns.StreamsStream()))
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && wrongLastSeq(apiErr) {
			// A retry of a message that was stored while its
			// acknowledgement was lost: JetStream checks the expected
			// sequence before the message id. Ours, if the last one is.
			if seq, ok := s.storedLast(ctx, id); ok {
				return seq, nil
			}
			return 0, err
		}
		if errors.As(err, &apiErr) && apiErr.Code != 503 || errors.Is(err, nats.ErrMaxPayload) {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("not acknowledged: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// storedLast reports the sequence of the stream's last message when it
// has message id id.
func (s *StreamWriter) storedLast(ctx context.Context, id string) (uint64, bool) {
	st, err := s.p.js.Stream(ctx, s.p.ns.StreamsStream())
	if err != nil {
		return 0, false
	}
	m, err := st.GetLastMsgForSubject(ctx, s.subj)
	if err != nil || m.Header.Get(jetstream.MsgIDHeader) != id {
		return 0, false
	}
	return m.Sequence, true
}

func wrongLastSeq(e *jetstream.APIError) bool {
	return e.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || e.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// control answers a request on <prefix>.ctl.stream.<id>: a ping, or a
// cancel, which cancels the stream's context.
func (s *StreamWriter) control(msg *nats.Msg) {
	var c envelope.StreamControl
	_ = json.Unmarshal(msg.Data, &c)
	if c.Op == envelope.StreamCancel {
		s.cancel(&rpc.Error{Code: envelope.CodeCanceled, Message: "stream cancelled"})
	}
	_ = msg.Respond([]byte(`{"ok":true}`))
}

// CancelStream asks the producer of stream id to stop (it ends the stream
// CANCELLED). A stream whose producer is gone is not ended by this: an
// edge ends it when a reader finds the producer gone.
func (p *Publisher) CancelStream(ctx context.Context, id string) error {
	subj, err := p.ns.StreamCtl(id)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rpc.DefaultTimeout)
		defer cancel()
	}
	if _, err := p.nc.RequestWithContext(ctx, subj.String(), []byte(`{"op":"cancel"}`)); err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return &rpc.Error{Code: envelope.CodeNotFound, Message: "no producer for stream " + id}
		}
		return rpc.FromError(err)
	}
	return nil
}
