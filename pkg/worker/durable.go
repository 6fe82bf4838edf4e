package worker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// DurableOptions tunes HandleDurable. The zero value is good.
type DurableOptions struct {
	// AckWait is how long a delivered message may go unacknowledged
	// before another worker gets it: what a worker that died holding one
	// costs. While a handler runs, the worker extends it. Default 30s.
	AckWait time.Duration
	// MaxAttempts bounds the deliveries of a message whose handler keeps
	// failing. After the last one the message stays in the stream, where
	// JetStream's max-deliveries advisory points an operator to it.
	// Default 5; -1 is unlimited.
	MaxAttempts int
	// Backoff is the wait before the first retry of a failed message; it
	// doubles with every attempt, up to a minute. Default 1s.
	Backoff time.Duration
}

// HandleDurable registers h for client messages of a durable type: types
// the edges store in the work stream (edge flag --durable-types) until a
// worker acknowledges them, so that a worker crash loses nothing.
//
// A message goes to one worker of the queue group at a time. Its handler's
// nil return acknowledges it. An error with a code the client caused
// (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION,
// ALREADY_EXISTS, UNAUTHENTICATED, UNIMPLEMENTED) drops it, as a retry
// would fail the same way; any other error or a panic retries it after
// Backoff. A worker that dies or loses its NATS connection mid-handler
// lets it go to another after AckWait. (A handler that hangs in a live
// worker keeps its message, since the worker reports progress while it
// runs: bound handlers with deadlines of their own.) Handling is
// therefore at least once: Message.Attempt
// above 1 says that an earlier attempt may have done some of the work,
// and meta.idempotencyKey (Envelope.Meta.IdempotencyKey) names the
// client's operation. Durable messages are never requests: the client got
// $ws:accepted from the edge, and results reach it by publishing.
//
// The consumer is <queue>_<type>, shared by the queue group; a work queue
// allows one consumer per type, so one queue group handles a durable type.
// Every worker of the group writes the consumer's AckWait and MaxAttempts
// when it starts: give them all the same DurableOptions.
// HandleDurable waits, until ctx ends, for the work stream to exist; the
// edges create it.
func (w *Worker) HandleDurable(ctx context.Context, typ string, h Handler, opts DurableOptions) error {
	subj, err := w.cfg.Namespace.Work(typ)
	if err != nil {
		return err
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	js, err := jetstream.New(w.nc)
	if err != nil {
		return err
	}
	w.mu.Lock()
	switch {
	case w.draining:
		w.mu.Unlock()
		return errors.New("worker: HandleDurable after Drain")
	case w.durable[typ]:
		w.mu.Unlock()
		return fmt.Errorf("worker: durable type %s is handled already", typ)
	}
	w.durable[typ] = true
	w.mu.Unlock()
	p := &puller{w: w, h: h, opts: opts, js: js, stream: w.cfg.Namespace.WorkStream(), cc: jetstream.ConsumerConfig{
		Durable:       consumerName(w.cfg.Queue, typ),
		Description:   "Natter workers of durable type " + typ + ", queue " + w.cfg.Queue,
		FilterSubject: subj.String(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxDeliver:    opts.MaxAttempts,
		// The group's limit would stall pulls (a no-wait pull at the limit
		// waits a second), and messages waiting out a retry's backoff
		// count toward it: unlimited. Each worker holds at most
		// MaxConcurrent, plus one waiting for a slot.
		MaxAckPending: -1,
	}}
	if err := p.consumer(ctx); err != nil {
		w.mu.Lock()
		delete(w.durable, typ)
		w.mu.Unlock()
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining {
		delete(w.durable, typ)
		return errors.New("worker: HandleDurable after Drain")
	}
	w.pulling.Add(1)
	go p.run()
	return nil
}

const (
	// durablePoll is the life of one waiting pull request.
	durablePoll = 5 * time.Second
	// durableBatch bounds the messages one pull asks for.
	durableBatch = 64
)

// puller pulls one durable type's messages for a Worker.
type puller struct {
	w      *Worker
	h      Handler
	opts   DurableOptions
	js     jetstream.JetStream
	stream string
	cc     jetstream.ConsumerConfig

	cons    jetstream.Consumer
	ackWait time.Duration // the consumer's, as the server returned it
}

// consumer creates or updates the group's consumer, waiting until ctx ends
// for the work stream, which the edges create.
func (p *puller) consumer(ctx context.Context) error {
	for {
		cons, err := p.js.CreateOrUpdateConsumer(ctx, p.stream, p.cc)
		if err == nil {
			p.cons, p.ackWait = cons, cons.CachedInfo().Config.AckWait
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("worker: consumer %s: %w", p.cc.Durable, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker: no work stream %s (start an edge with --durable-types): %w", p.stream, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// run pulls until Drain. While messages wait in the stream, they are
// pulled in batches as large as the free handler slots; otherwise one pull
// waits for the next message, holding no slot, so plain handlers never
// wait for an idle type, and the message it brings gets progress reports
// until a slot frees. No message waits in this worker while its ack wait
// runs out and it goes to another worker.
func (p *puller) run() {
	w := p.w
	defer w.pulling.Done()
	backlog := false // the last message pulled had others behind it
	for !p.stopping() {
		if !p.connected() {
			continue
		}
		var got int
		var err error
		if backlog {
			// Take a batch as large as the free slots, without waiting.
			select {
			case w.sem <- struct{}{}:
			case <-w.pullStop:
				return
			}
			if p.stopping() { // both were ready: Drain wins
				<-w.sem
				return
			}
			n := 1
			for n < durableBatch && p.tryAcquire() {
				n++
			}
			var batch jetstream.MessageBatch
			batch, err = p.cons.FetchNoWait(n)
			if err == nil {
				got, backlog, err = p.handle(batch, true)
			}
			for n -= got; n > 0; n-- {
				<-w.sem
			}
			if got == 0 {
				backlog = false
			}
		} else {
			// One pull waits for the next message, holding no slot.
			ctx, cancel := p.pullCtx(durablePoll)
			batch, ferr := p.cons.Fetch(1, jetstream.FetchContext(ctx))
			err = ferr
			if err == nil {
				_, backlog, err = p.handle(batch, false)
			}
			cancel()
		}
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			backlog = false
			p.failed(err)
		}
	}
}

// stopping reports whether Drain began.
func (p *puller) stopping() bool {
	select {
	case <-p.w.pullStop:
		return true
	default:
		return false
	}
}

// connected reports whether the NATS connection is up. While it is down
// (pulls would pile up in the reconnect buffer) it waits for nats.go to
// report it connected again, or for Drain; a closed connection never
// comes back, so then it waits for Drain only.
func (p *puller) connected() bool {
	nc := p.w.nc
	if nc.IsConnected() {
		return true
	}
	up := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(up)
	if nc.IsConnected() { // it came back before the listener was in place
		return true
	}
	if nc.IsClosed() {
		up = nil
	}
	select {
	case <-p.w.pullStop:
	case <-up:
	}
	return nc.IsConnected()
}

// pullCtx is a context that ends after d or when Drain begins.
func (p *puller) pullCtx(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	go func() {
		select {
		case <-p.w.pullStop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (p *puller) tryAcquire() bool {
	select {
	case p.w.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// handle starts a handler for each message of batch and returns how many
// it started, and whether more messages wait behind the last one. With held, each runs on a slot the caller holds; otherwise
// each waits for a slot, with progress reports, and goes back at once
// when Drain begins.
func (p *puller) handle(batch jetstream.MessageBatch, held bool) (got int, more bool, err error) {
	for msg := range batch.Messages() {
		if md, err := msg.Metadata(); err == nil {
			more = md.NumPending > 0
		}
		if !held && !p.acquireFor(msg) {
			continue
		}
		got++
		p.start(msg)
	}
	return got, more, batch.Error()
}

// acquireFor takes a handler slot for msg, keeping msg meanwhile.
func (p *puller) acquireFor(msg jetstream.Msg) bool {
	w := p.w
	select {
	case w.sem <- struct{}{}:
		return true
	default:
	}
	_ = msg.InProgress()
	t := time.NewTicker(p.reportEvery())
	defer t.Stop()
	for {
		select {
		case w.sem <- struct{}{}:
			return true
		case <-t.C:
			_ = msg.InProgress()
		case <-w.pullStop:
			_ = msg.Nak()
			return false
		}
	}
}

// reportEvery is the period of progress reports: a third of the ack wait.
func (p *puller) reportEvery() time.Duration { return max(p.ackWait/3, 10*time.Millisecond) }

// failed logs a failed pull and pauses; when the consumer or its stream is
// gone (deleted, or the stream re-created), it re-creates the consumer,
// retrying every second until it can or Drain begins.
func (p *puller) failed(err error) {
	w := p.w
	w.cfg.Logger.Warn("worker: durable pull failed", "consumer", p.cc.Durable, "err", err)
	// No responders: the consumer is gone, with its stream or alone.
	gone := errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrNoResponders)
	for {
		select {
		case <-w.pullStop:
			return
		case <-time.After(time.Second):
		}
		if !gone || w.nc.IsClosed() {
			return
		}
		ctx, cancel := p.pullCtx(5 * time.Second)
		err := p.consumer(ctx)
		cancel()
		if err == nil {
			w.cfg.Logger.Info("worker: durable consumer re-created", "consumer", p.cc.Durable)
			return
		}
		if !p.stopping() {
			w.cfg.Logger.Warn("worker: durable consumer not re-created; retrying", "consumer", p.cc.Durable, "err", err)
		}
	}
}

// consumerName is <queue>_<type>, with every character that a consumer
// name may not hold made an underscore, cut to fit, and a hash of both so
// that "a.b" and "a_b" stay apart.
func consumerName(queue, typ string) string {
	h := fnv.New32a()
	h.Write([]byte(queue + "\x00" + typ))
	clean := []byte(queue + "_" + typ)
	for i, c := range clean {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			clean[i] = '_'
		}
	}
	if len(clean) > 200 {
		clean = clean[:200]
	}
	return fmt.Sprintf("%s_%08x", clean, h.Sum32())
}

// start runs the handler of one durable message on a slot the caller
// holds, then acknowledges, drops or retries the message.
func (p *puller) start(msg jetstream.Msg) {
	w := p.w
	md, err := msg.Metadata()
	if err != nil {
		<-w.sem
		_ = msg.Term()
		return
	}
	hdr := msg.Headers()
	m := &Message{
		Conn:    hdr.Get(envelope.HeaderConn),
		User:    hdr.Get(envelope.HeaderUser),
		Edge:    hdr.Get(envelope.HeaderEdge),
		Attempt: int(md.NumDelivered),
		msg:     &nats.Msg{Subject: msg.Subject(), Header: hdr, Data: msg.Data()},
		pub:     w.pub,
		nc:      w.nc,
	}
	env, err := envelope.Decode(msg.Data(), w.cfg.MaxMessageSize)
	if err != nil {
		<-w.sem
		w.cfg.Logger.Warn("worker: undecodable durable message dropped", "subject", msg.Subject(), "err", err)
		_ = msg.TermWithReason("undecodable")
		return
	}
	m.Envelope = env
	w.mu.Lock()
	if w.stopped {
		// Drain gave up waiting for the pulls: to another worker at once.
		w.mu.Unlock()
		<-w.sem
		_ = msg.Nak()
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	every := p.reportEvery()
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem }()
		ctx, cancel := context.WithCancel(w.ctx)
		// Keep the message while the handler runs; stopped before the
		// ack or nak, whose timing a late progress report would undo.
		reporting := make(chan struct{})
		go func() {
			defer close(reporting)
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = msg.InProgress()
				}
			}
		}()
		err := w.call(ctx, p.h, m)
		m.endSpan(err)
		cancel()
		<-reporting
		switch {
		case err == nil:
			actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer acancel()
			if err := msg.DoubleAck(actx); err != nil {
				w.cfg.Logger.Warn("worker: durable ack failed; the message may be handled again", "type", env.Type, "err", err)
			}
		case w.ctx.Err() != nil:
			// Drain gave up on the handler: to another worker at once.
			_ = msg.Nak()
		case permanent(err):
			w.cfg.Logger.Warn("worker: durable message dropped", "type", env.Type, "attempt", m.Attempt, "err", err)
			_ = msg.TermWithReason(string(rpc.FromError(err).Code))
		default:
			delay := p.opts.Backoff
			for i := 1; i < m.Attempt && delay < time.Minute; i++ {
				delay *= 2
			}
			delay = min(delay, time.Minute)
			if p.opts.MaxAttempts > 0 && m.Attempt >= p.opts.MaxAttempts {
				w.cfg.Logger.Error("worker: durable message failed its last attempt; it stays in the stream", "type", env.Type, "seq", md.Sequence.Stream, "attempt", m.Attempt, "err", err)
			} else {
				w.cfg.Logger.Warn("worker: durable message failed; retrying", "type", env.Type, "attempt", m.Attempt, "in", delay, "err", err)
			}
			_ = msg.NakWithDelay(delay)
		}
	}()
}

// permanent reports whether err is the client's fault, so that a retry
// would fail the same way.
func permanent(err error) bool {
	switch rpc.FromError(err).Code {
	case envelope.CodeInvalidArgument, envelope.CodePermissionDenied, envelope.CodeNotFound,
		envelope.CodeFailedPrecondition, envelope.CodeAlreadyExists, envelope.CodeUnauthenticated,
		envelope.CodeUnimplemented:
		return true
	}
	return false
}
