package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/pkg/envelope"
)

// Durable types (docs/protocol.md, "Durable messages").
//
// A client message whose type matches Config.DurableMessages.Types is not published
// on <prefix>.in.<type>. The edge stores it in the work-queue stream
// <prefix>_work as <prefix>.work.<type>, with the sender's identity in
// headers and a Nats-Msg-Id made of the sender's user (or, anonymous, its
// connection) and meta.idempotencyKey, so that a client's resend within
// the dedupe window is stored once. Workers take it from a durable
// consumer (worker.HandleDurable) and acknowledge it when handled; a worker
// that dies holding it lets it go to another after the consumer's ack wait.
//
// A request (meta.correlationId) is answered $ws:accepted {seq, duplicate}
// once the stream has the message, or with an error saying why it does not:
// UNAVAILABLE (stream unreachable: resend with the same key), or
// RESOURCE_EXHAUSTED (the stream is full, or the connection has too many
// messages waiting for the stream). A message that is not a request gets
// the same errors, without a correlationId.

const (
	// workMaxPending bounds an edge's durable messages waiting for the
	// stream's acknowledgement; workConnPending a connection's share, so
	// that one client cannot take them all.
	workMaxPending  = 4096
	workConnPending = 256
	// workAckTimeout bounds the wait for the stream's acknowledgement: a
	// stored message is acknowledged in milliseconds, and one that is not
	// (a stream leader lost mid-publish) is better resent with its key
	// soon, as the client does after UNAVAILABLE.
	workAckTimeout = 2 * time.Second
	// workRetryAfter is the retryAfterMs of a full stream or connection;
	// workRetryUnavailable that of UNAVAILABLE.
	workRetryAfter       = time.Second
	workRetryUnavailable = 250 * time.Millisecond
	// workRepairEvery spaces attempts to re-create a missing work stream.
	workRepairEvery = time.Second
	// jsStoreFailed is the JetStream API's error code for a message the
	// stream did not store: its limits reached (with DiscardNew, "maximum
	// bytes exceeded"), or its store failing.
	jsStoreFailed jetstream.ErrorCode = 10077
	// workHeaderRoom is what the stream allows beyond --max-message-size:
	// the server counts headers (identity, message id) in a message's size.
	workHeaderRoom = 4096
)

// work is an edge's side of durable types; nil without patterns.
type work struct {
	e        *Edge
	js       jetstream.JetStream
	sc       jetstream.StreamConfig
	patterns []string
	// repairing is set while the stream is being re-created, and for
	// workRepairEvery after.
	repairing atomic.Bool

	// bg owns the goroutines that wait for the stream's answers and
	// re-create it, which stop waits for; none starts once stop began.
	bg routine.Group
}

// spawn runs f on a goroutine that stop waits for, unless stop began.
func (w *work) spawn(f func()) bool {
	return w.bg.Go(func(context.Context) { f() })
}

func startWork(ctx context.Context, e *Edge) (*work, error) {
	cfg := &e.cfg
	js, err := jetstream.New(e.nc,
		jetstream.WithPublishAsyncMaxPending(workMaxPending),
		jetstream.WithPublishAsyncTimeout(workAckTimeout))
	if err != nil {
		return nil, err
	}
	pfx := e.ns.Prefix()
	name := e.ns.WorkStream()
	sc := jetstream.StreamConfig{
		Name:        name,
		Description: "Natter durable messages: client messages of durable types, " + pfx + ".work.<type>, until a worker acknowledges them",
		Subjects:    []string{pfx + ".work.>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.DurableMessages.Replicas,
		MaxAge:      cfg.DurableMessages.MaxAge,
		MaxBytes:    cfg.DurableMessages.MaxBytes,
		MaxMsgSize:  int32(min(cfg.WebSocket.MaxMessageSize+workHeaderRoom, 1<<30)),
		// Refuse new work when full: never drop work that was accepted.
		Discard:    jetstream.DiscardNew,
		Duplicates: cfg.DurableMessages.DedupeWindow,
		Metadata:   map[string]string{envelope.WorkStreamPatterns: strings.Join(cfg.DurableMessages.Types, ",")},
	}
	if err := natsopt.Retry(ctx, cfg.Logger, "durable work stream", func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, sc)
		return err
	}); err != nil {
		return nil, fmt.Errorf("edge: durable work stream %s: %w", name, err)
	}
	return &work{e: e, js: js, sc: sc, patterns: cfg.DurableMessages.Types}, nil
}

// repair creates the work stream again, at most once per
// workRepairEvery: when it was deleted, durable messages get UNAVAILABLE
// until then, and clients resend them. On a stream that exists it changes
// nothing.
func (w *work) repair() {
	if !w.repairing.CompareAndSwap(false, true) {
		return
	}
	w.spawn(func() {
		defer time.AfterFunc(workRepairEvery, func() { w.repairing.Store(false) })
		ctx, cancel := context.WithTimeout(context.Background(), workAckTimeout)
		defer cancel()
		if _, err := w.js.CreateOrUpdateStream(ctx, w.sc); err != nil {
			w.e.cfg.Logger.Warn("edge: durable work stream not re-created", "err", err)
			return
		}
		w.e.cfg.Logger.Info("edge: durable work stream re-created or confirmed", "stream", w.sc.Name)
	})
}

// stop waits, until ctx ends, for the stream's answers to the durable
// messages still on their way (they end within workAckTimeout), then
// releases the publisher's reply subscription.
func (w *work) stop(ctx context.Context) {
	w.bg.Stop()
	select {
	case <-w.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
	w.js.CleanupPublisher() // fails what still waits: its goroutine ends
	_ = w.bg.Wait(ctx)
}

// isDurable reports whether typ matches the durable type patterns.
func (w *work) isDurable(typ string) bool { return w != nil && auth.Grants(w.patterns, typ) }

// store sends a client message of a durable type to the work stream and
// answers the client when the stream has acknowledged it. data is only
// valid during the call.
func (w *work) store(c *conn, env *envelope.Envelope, data []byte, t inTrace) {
	cid := env.Meta.CorrelationID
	key, err := env.Meta.IdempotencyKey()
	if err != nil {
		c.sendError(cid, envelope.CodeInvalidArgument, err.Error())
		return
	}
	subj, err := w.e.ns.Work(env.Type)
	if err != nil {
		c.sendError(cid, envelope.CodeInvalidArgument, err.Error())
		return
	}
	if !w.e.nc.IsConnected() {
		c.sendErrorPayload(cid, &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: "message bus unavailable", RetryAfterMs: workRetryUnavailable.Milliseconds()})
		return
	}
	if c.workPending.Add(1) > workConnPending {
		c.workPending.Add(-1)
		c.sendErrorPayload(cid, &envelope.ErrorPayload{
			Code: envelope.CodeResourceExhausted, RetryAfterMs: workRetryAfter.Milliseconds(),
			Message: fmt.Sprintf("more than %d durable messages of this connection wait for the stream", workConnPending),
		})
		return
	}
	// The message ID scopes the key to the sender and the type: one
	// user's key never suppresses another user's message, nor a message
	// of another type. An anonymous sender is known by its connection
	// only, so its resend after a reconnect is not recognized. Without a
	// key, the ID only guards the publisher's own retries.
	id := "k:" + nuid.Next()
	if key != "" {
		if c.user != "" {
			id = "u:" + c.user + ":" + env.Type + ":" + key
		} else {
			id = "c:" + c.id + ":" + env.Type + ":" + key
		}
	}
	hdr := nats.Header{
		envelope.HeaderConn: []string{c.id},
		envelope.HeaderEdge: []string{w.e.cfg.EdgeID},
	}
	if c.user != "" {
		hdr[envelope.HeaderUser] = []string{c.user}
	}
	// The stored message keeps the context: the worker that handles it,
	// now or after a redelivery, continues the trace.
	span := w.e.traceOut(t, "natter.edge.publish", env.Type, trace.SpanKindProducer, hdr)
	// The publisher keeps the message for its retries: a copy, not the
	// socket's buffer.
	msg := &nats.Msg{Subject: subj.String(), Header: hdr, Data: bytes.Clone(data)}
	f, err := w.js.PublishMsgAsync(msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(w.e.ns.WorkStream()))
	if err != nil {
		c.workPending.Add(-1)
		failed(span, &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: err.Error()})
		endSpan(span)
		w.refused(c, cid, err)
		return
	}
	w.e.stats.workStored.Add(1)
	wait := func() {
		defer c.workPending.Add(-1)
		defer endSpan(span)
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				w.e.stats.workDuplicates.Add(1)
			}
			if cid != "" {
				payload, _ := json.Marshal(envelope.Accepted{Seq: ack.Sequence, Duplicate: ack.Duplicate})
				c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeAccepted, Meta: envelope.Meta{CorrelationID: cid}, Payload: payload})
			}
		case err := <-f.Err():
			failed(span, &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: err.Error()})
			w.e.stats.workStored.Add(-1)
			w.refused(c, cid, err)
		}
	}
	if !w.spawn(wait) {
		endSpan(span)
		c.workPending.Add(-1) // the edge is stopping: its connections are gone
	}
}

// refused tells the client why its durable message was not stored.
func (w *work) refused(c *conn, cid string, err error) {
	w.e.stats.workRefused.Add(1)
	p := &envelope.ErrorPayload{Code: envelope.CodeUnavailable, Message: "durable message not stored: " + err.Error(), RetryAfterMs: workRetryUnavailable.Milliseconds()}
	var apiErr *jetstream.APIError
	isAPI := errors.As(err, &apiErr)
	switch {
	case isAPI && apiErr.ErrorCode == jsStoreFailed, errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		// The stream is full (DiscardNew: workers are behind), or the
		// edge has too many messages waiting for it.
		p.Code, p.RetryAfterMs = envelope.CodeResourceExhausted, workRetryAfter.Milliseconds()
	case isAPI && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum, errors.Is(err, nats.ErrMaxPayload):
		// No resend helps.
		p.Code, p.RetryAfterMs = envelope.CodeResourceExhausted, 0
	case isAPI && apiErr.Code == 503:
		// JetStream temporarily unavailable: UNAVAILABLE, as set.
	case isAPI:
		p.Code, p.RetryAfterMs = envelope.CodeInternal, 0
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		w.repair() // nothing listens on the stream's subjects: deleted?
	}
	if w.e.logLimit.Allow() {
		w.e.cfg.Logger.Warn("edge: durable message not stored", "conn", c.id, "err", err)
	}
	c.sendErrorPayload(cid, p)
}
