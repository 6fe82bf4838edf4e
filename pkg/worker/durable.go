package worker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
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
// Backoff. A worker that dies or hangs mid-handler lets it go to another
// after AckWait. Handling is therefore at least once: Message.Attempt
// above 1 says that an earlier attempt may have done some of the work,
// and meta.idempotencyKey (Envelope.Meta.IdempotencyKey) names the
// client's operation. Durable messages are never requests: the client got
// $ws:accepted from the edge, and results reach it by publishing.
//
// The consumer is <queue>_<type>, shared by the queue group; a work queue
// allows one consumer per type, so one queue group handles a durable type.
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
	cc := jetstream.ConsumerConfig{
		Durable:       consumerName(w.cfg.Queue, typ),
		Description:   "Natter workers of durable type " + typ + ", queue " + w.cfg.Queue,
		FilterSubject: subj.String(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxDeliver:    opts.MaxAttempts,
		// MaxAckPending is the whole group's: left at the server's
		// default (1,000). Each worker takes at most MaxConcurrent at once.
	}
	var cons jetstream.Consumer
	for {
		cons, err = js.CreateOrUpdateConsumer(ctx, w.cfg.Namespace.WorkStream(), cc)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker: no work stream %s (start an edge with --durable-types): %w", w.cfg.Namespace.WorkStream(), ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("worker: consumer %s: %w", cc.Durable, err)
	}
	consume, err := cons.Consume(func(msg jetstream.Msg) { w.dispatchDurable(h, msg, &opts) },
		jetstream.PullMaxMessages(min(w.cfg.MaxConcurrent, 256)))
	if err != nil {
		return fmt.Errorf("worker: consume %s: %w", cc.Durable, err)
	}
	w.mu.Lock()
	w.consumers = append(w.consumers, consume)
	w.mu.Unlock()
	return nil
}

// consumerName is <queue>_<type> with dots made underscores, and a hash of
// both so that "a.b" and "a_b" stay apart.
func consumerName(queue, typ string) string {
	h := fnv.New32a()
	h.Write([]byte(queue + "\x00" + typ))
	clean := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_").Replace(queue + "_" + typ)
	return fmt.Sprintf("%s_%08x", clean, h.Sum32())
}

// dispatchDurable runs h on one durable message, then acknowledges,
// drops or retries it. It runs on the consumer's goroutine and waits for
// a handler slot, which holds back further messages.
func (w *Worker) dispatchDurable(h Handler, msg jetstream.Msg, opts *DurableOptions) {
	md, err := msg.Metadata()
	if err != nil {
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
		w.cfg.Logger.Warn("worker: undecodable durable message dropped", "subject", msg.Subject(), "err", err)
		_ = msg.TermWithReason("undecodable")
		return
	}
	m.Envelope = env
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		return // not acknowledged: redelivered to a worker that runs
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		<-w.sem
		_ = msg.Nak() // to another worker, at once
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem }()
		ctx, cancel := context.WithCancel(w.ctx)
		defer cancel()
		// Keep the message while the handler runs.
		go func() {
			t := time.NewTicker(opts.AckWait / 3)
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
		err := w.call(ctx, h, m)
		cancel()
		switch {
		case err == nil:
			actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer acancel()
			if err := msg.DoubleAck(actx); err != nil {
				w.cfg.Logger.Warn("worker: durable ack failed; the message may be handled again", "type", env.Type, "err", err)
			}
		case permanent(err):
			w.cfg.Logger.Warn("worker: durable message dropped", "type", env.Type, "attempt", m.Attempt, "err", err)
			_ = msg.TermWithReason(string(rpc.FromError(err).Code))
		default:
			delay := min(opts.Backoff<<min(max(m.Attempt-1, 0), 16), time.Minute)
			if opts.MaxAttempts > 0 && m.Attempt >= opts.MaxAttempts {
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
