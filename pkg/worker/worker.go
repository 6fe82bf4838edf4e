// Package worker is Natter's Go SDK for stateless workers: register a
// handler per message type, in a NATS queue group, and reply, publish to
// connections, users and rooms, or join and remove connections. Durable
// types (HandleDurable) come from the edges' work queue instead, at least
// once, so that a worker crash loses nothing.
//
// A Worker is safe for concurrent use. Handlers run on their own goroutines,
// at most Config.MaxConcurrent at once; Drain stops intake and waits for the
// handlers in flight.
//
// The module github.com/natter/natter is not published: a worker in a
// module of its own depends on it through a replace directive pointing at a
// clone (or a go.work workspace), as docs/worker-module.md shows.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("worker: invalid config")

// DefaultQueue is the queue group workers join unless configured otherwise.
const DefaultQueue = "natter-workers"

// Config configures a Worker.
type Config struct {
	// Namespace is the subject namespace. Default envelope.DefaultNamespace.
	Namespace envelope.Namespace
	// Queue is the NATS queue group. Default DefaultQueue.
	Queue string
	// MaxConcurrent bounds handler calls in flight. Default 256, range 1..65536.
	MaxConcurrent int
	// MaxMessageSize bounds a message's envelope, in bytes. Default 16 MiB,
	// the edge's largest --max-message-size.
	MaxMessageSize int
	// MaxTimeout bounds the deadline a client may ask with meta.timeoutMs.
	// Default rpc.MaxTimeout.
	MaxTimeout time.Duration
	// Logger receives handler panics and failures. Default slog.Default().
	Logger *slog.Logger
	// ID names this worker process in logs and replies that report it.
	// Default: a random NUID.
	ID string
	// TracerProvider makes a span per handler call, continuing the trace
	// context of the message's Traceparent header
	// (docs/design/tracing.md). Default: OpenTelemetry's global provider,
	// which makes none until the application sets one. With
	// noop.NewTracerProvider() the worker makes no span at all and only
	// passes the message's context on (the handler's ctx, its publishes).
	TracerProvider trace.TracerProvider
}

// Handler handles one message. For a request (the client set
// meta.correlationId) a returned error becomes the RPC_ERROR reply, with the
// code of an *rpc.Error or INTERNAL; a nil error with no Reply sends
// envelope.TypeRPCOK ("$ws:rpc-ok"), so every request gets exactly one reply.
type Handler func(ctx context.Context, m *Message) error

// Worker dispatches NATS messages to handlers.
type Worker struct {
	nc     *nats.Conn
	cfg    Config
	pub    *Publisher
	tracer trace.Tracer
	// noSpans: the provider is OpenTelemetry's no-op one, so handlers get
	// the message's context without a span made for nothing.
	noSpans bool
	sem     chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context
	stop    context.CancelFunc

	mu       sync.Mutex
	subs     []*subscription
	durable  map[string]bool // types registered with HandleDurable
	draining bool            // Drain began: no HandleDurable
	stopped  bool            // no handler starts once set
	// The pull loops of HandleDurable end when pullStop closes.
	pullStop chan struct{}
	pulling  sync.WaitGroup

	abortSub *nats.Subscription
	aborts   sync.Map // reply subject -> context.CancelFunc of a request in flight
}

// New returns a Worker on nc. It subscribes to nothing until Handle.
func New(nc *nats.Conn, cfg Config) (*Worker, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil NATS connection", ErrInvalidConfig)
	}
	if cfg.Namespace == (envelope.Namespace{}) {
		cfg.Namespace = envelope.DefaultNamespace
	}
	if cfg.Queue == "" {
		cfg.Queue = DefaultQueue
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = 256
	}
	if cfg.MaxConcurrent < 1 || cfg.MaxConcurrent > 65536 {
		return nil, fmt.Errorf("%w: MaxConcurrent %d out of 1..65536", ErrInvalidConfig, cfg.MaxConcurrent)
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = 16 << 20
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = rpc.MaxTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ID == "" {
		cfg.ID = nuid.Next()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	_, noSpans := cfg.TracerProvider.(noop.TracerProvider)
	ctx, stop := context.WithCancel(context.Background())
	w := &Worker{
		nc:       nc,
		cfg:      cfg,
		pub:      NewPublisher(nc, cfg.Namespace),
		tracer:   tracing.Tracer(cfg.TracerProvider),
		noSpans:  noSpans,
		sem:      make(chan struct{}, cfg.MaxConcurrent),
		pullStop: make(chan struct{}),
		durable:  map[string]bool{},
		ctx:      ctx,
		stop:     stop,
	}
	// Every worker hears every abort; only the one running the request acts.
	sub, err := nc.Subscribe(cfg.Namespace.Abort().String(), func(msg *nats.Msg) {
		if cancel, ok := w.aborts.Load(string(msg.Data)); ok {
			cancel.(context.CancelFunc)()
		}
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("worker: subscribe aborts: %w", err)
	}
	w.abortSub = sub
	return w, nil
}

// ID returns the worker's id (Config.ID).
func (w *Worker) ID() string { return w.cfg.ID }

// Publisher returns the worker's publisher, for use outside handlers.
func (w *Worker) Publisher() *Publisher { return w.pub }

// Handle registers h for messages of type typ, in the worker's queue group:
// each message goes to one worker of the group.
func (w *Worker) Handle(typ string, h Handler) error {
	subj, err := w.cfg.Namespace.In(typ)
	if err != nil {
		return err
	}
	sub, err := w.nc.QueueSubscribe(subj.String(), w.cfg.Queue, func(msg *nats.Msg) { w.dispatch(h, msg) })
	if err != nil {
		return fmt.Errorf("worker: subscribe %s: %w", subj, err)
	}
	w.keep(sub)
	return nil
}

// subscription is a callback subscription of the worker's and its end.
type subscription struct {
	*nats.Subscription
	// done is closed once nats.go's delivery goroutine for the
	// subscription has returned: after a Drain, when its last message was
	// handed to its callback; or when the connection closed.
	done chan struct{}
}

// keep adds sub to the subscriptions Drain drains and waits for.
func (w *Worker) keep(sub *nats.Subscription) {
	s := &subscription{Subscription: sub, done: make(chan struct{})}
	var once sync.Once
	end := func(string) { once.Do(func() { close(s.done) }) }
	sub.SetClosedHandler(end)
	if !sub.IsValid() {
		end("") // closed before the handler was set: nothing calls it
	}
	w.mu.Lock()
	w.subs = append(w.subs, s)
	w.mu.Unlock()
}

// Flush waits until the server has processed the subscriptions made so far.
// Without a deadline on ctx it waits at most 10s.
func (w *Worker) Flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return w.nc.FlushWithContext(ctx)
}

// Drain stops taking messages, lets the ones already received finish, and
// waits for every handler. When ctx ends first, handlers' contexts are
// cancelled and Drain returns ctx's error without waiting further.
func (w *Worker) Drain(ctx context.Context) error {
	w.mu.Lock()
	subs := w.subs
	w.subs = nil
	if !w.draining {
		w.draining = true
		close(w.pullStop)
	}
	w.mu.Unlock()
	for _, s := range subs {
		_ = s.Drain()
	}
	for _, s := range subs {
		select {
		case <-s.done:
		case <-ctx.Done():
		}
	}
	pulled := make(chan struct{})
	go func() { w.pulling.Wait(); close(pulled) }()
	select {
	case <-pulled:
	case <-ctx.Done():
	}
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	defer w.stop()
	defer w.abortSub.Unsubscribe()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Worker) dispatch(h Handler, msg *nats.Msg) {
	m := &Message{
		Conn: msg.Header.Get(envelope.HeaderConn),
		User: msg.Header.Get(envelope.HeaderUser),
		Edge: msg.Header.Get(envelope.HeaderEdge),
		msg:  msg,
		pub:  w.pub,
		nc:   w.nc,
	}
	env, err := envelope.Decode(msg.Data, w.cfg.MaxMessageSize)
	if err != nil {
		w.cfg.Logger.Warn("worker: undecodable message", "subject", msg.Subject, "err", err)
		if msg.Reply != "" {
			_ = msg.Respond(envelope.RPCErrorFrame("", envelope.CodeInvalidArgument, err.Error()))
		}
		return
	}
	m.Envelope = env
	// The deadline runs from receipt, and an abort is heard, also while the
	// request waits for a handler slot.
	var ctx context.Context
	var cancel context.CancelFunc
	if m.IsRequest() {
		ctx, cancel = context.WithTimeout(w.ctx, w.deadline(msg, env))
		w.aborts.Store(msg.Reply, cancel)
	} else {
		ctx, cancel = context.WithCancel(w.ctx)
	}
	release := func() {
		if m.IsRequest() {
			w.aborts.Delete(msg.Reply)
		}
		cancel()
	}
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		release()
		return
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		<-w.sem
		release()
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem }()
		defer release()
		if ctx.Err() != nil {
			return // aborted or expired while waiting: nobody waits for the reply
		}
		err := w.call(ctx, h, m)
		defer m.endSpan(err)
		if !m.IsRequest() {
			if err != nil {
				w.cfg.Logger.Debug("worker: handler failed", "type", env.Type, "err", err)
			}
			return
		}
		if err != nil {
			_ = m.ReplyError(err)
			return
		}
		_ = m.reply(&envelope.Envelope{Type: envelope.TypeRPCOK})
	}()
}

// deadline is the handler's time for a request: what the edge granted, in
// the Natter-Timeout-Ms header, or else the client's meta.timeoutMs clamped
// here (requests from plain NATS clients), never more than MaxTimeout.
func (w *Worker) deadline(msg *nats.Msg, env *envelope.Envelope) time.Duration {
	if ms, err := strconv.ParseInt(msg.Header.Get(envelope.HeaderTimeout), 10, 64); err == nil && ms > 0 {
		return min(time.Duration(ms)*time.Millisecond, w.cfg.MaxTimeout)
	}
	return rpc.ClampTimeout(env.Meta.TimeoutMs, rpc.DefaultTimeout, w.cfg.MaxTimeout)
}

// call runs h (run) in the message's trace context. It starts the
// handler's span, unless the provider is the no-op one; the caller ends
// it (Message.endSpan) once it has replied.
func (w *Worker) call(ctx context.Context, h Handler, m *Message) (err error) {
	if sc := tracing.FromHeader(m.msg.Header); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		m.sc = sc
	}
	if w.noSpans {
		// Tracing off: the context goes on (the handler's ctx and its
		// publishes carry it), no span is made.
		return w.run(ctx, h, m)
	}
	kind := trace.SpanKindConsumer
	if m.IsRequest() {
		kind = trace.SpanKindServer
	}
	ctx, m.span = w.tracer.Start(ctx, "natter.worker.handle "+m.Envelope.Type, trace.WithSpanKind(kind))
	m.sc = m.span.SpanContext()
	if m.span.IsRecording() {
		m.span.SetAttributes(attribute.String("messaging.system", "natter"), attribute.String("natter.type", m.Envelope.Type))
		if m.Attempt > 0 {
			m.span.SetAttributes(attribute.Int("natter.attempt", m.Attempt))
		}
	}
	return w.run(ctx, h, m)
}

// run runs h, turning a panic into an INTERNAL error.
func (w *Worker) run(ctx context.Context, h Handler, m *Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			w.cfg.Logger.Error("worker: handler panic", "type", m.Envelope.Type, "panic", p)
			err = rpc.ErrInternal
		}
	}()
	return h(ctx, m)
}

// Message is one client message as a handler sees it.
type Message struct {
	// Envelope is the client's envelope, as it sent it.
	Envelope *envelope.Envelope
	// Conn, User and Edge identify the sender. The edge set them in NATS
	// headers; a client cannot forge them. User is empty for anonymous
	// connections; all three are empty for messages from plain NATS clients.
	Conn, User, Edge string
	// Attempt counts the deliveries of a durable message (HandleDurable):
	// 1 the first time, more after a worker failed or died handling it.
	// It is 0 for other messages.
	Attempt int

	msg     *nats.Msg
	pub     *Publisher
	nc      *nats.Conn
	replied atomic.Bool
	span    trace.Span        // the handler's span, from call; nil: none
	sc      trace.SpanContext // the span's context, or the message's when no span is made
}

// endSpan ends the handler's span, failed with err's code if err is set.
func (m *Message) endSpan(err error) {
	if m.span == nil {
		return
	}
	if err != nil && m.span.IsRecording() {
		p := rpc.FromError(err).Payload()
		m.span.SetAttributes(attribute.String("natter.error.code", string(p.Code)))
		m.span.SetStatus(codes.Error, p.Message)
	}
	m.span.End()
}

// traceReply adds the handler span's context, when it is recorded, to the
// meta of a reply or progress frame, as meta.traceparent and meta.tracestate, unless the
// handler set its own: the edge passes them to the client as they are
// (docs/protocol.md, "Trace context").
func (m *Message) traceReply(meta *envelope.Meta) {
	if m.span == nil || !m.span.IsRecording() {
		return // not traced here: nothing to add
	}
	if _, ok := meta.Extra[tracing.MetaTraceparent]; ok {
		return
	}
	tp, ts := tracing.Format(m.span.SpanContext())
	if tp == "" {
		return
	}
	if meta.Extra == nil {
		meta.Extra = make(map[string]json.RawMessage, 2)
	}
	meta.Extra[tracing.MetaTraceparent] = strconv.AppendQuote(nil, tp)
	if ts != "" {
		meta.Extra[tracing.MetaTracestate] = strconv.AppendQuote(nil, ts)
	}
}

// Progress sends a $ws:rpc-progress frame with payload to the requester,
// ahead of the reply. Frames arrive in the order they were sent, before the
// reply; after the reply, Progress returns an error.
func (m *Message) Progress(payload any) error {
	if !m.IsRequest() {
		return errors.New("worker: message is not a request")
	}
	if m.replied.Load() {
		return errors.New("worker: already replied")
	}
	env, err := envelope.New(envelope.TypeRPCProgress, payload)
	if err != nil {
		return err
	}
	env.Meta.CorrelationID = m.Envelope.Meta.CorrelationID
	m.traceReply(&env.Meta)
	data, err := envelope.Encode(env)
	if err != nil {
		return err
	}
	return m.nc.PublishMsg(&nats.Msg{Subject: m.msg.Reply, Data: data, Header: nats.Header{envelope.HeaderProgress: []string{"1"}}})
}

// IsRequest reports whether the sender waits for exactly one reply.
func (m *Message) IsRequest() bool {
	return m.msg.Reply != "" && m.Envelope.Meta.CorrelationID != ""
}

// Bind decodes the payload into v.
func (m *Message) Bind(v any) error {
	if len(m.Envelope.Payload) == 0 {
		return rpc.Errorf(envelope.CodeInvalidArgument, "payload is required")
	}
	if err := json.Unmarshal(m.Envelope.Payload, v); err != nil {
		return rpc.Errorf(envelope.CodeInvalidArgument, "payload: %v", err)
	}
	return nil
}

// Publisher returns the publisher, to reach other connections, users and
// rooms, in the handler's trace: what it publishes carries the handler
// span's context (Publisher.WithContext).
func (m *Message) Publisher() *Publisher {
	if !m.sc.IsValid() {
		return m.pub
	}
	return &Publisher{publisher: m.pub.publisher, sc: m.sc}
}

// Reply answers a request with an envelope of type typ carrying payload.
// Only the first reply counts; later ones, and replies to messages that are
// not requests, return an error.
func (m *Message) Reply(typ string, payload any) error {
	env, err := envelope.New(typ, payload)
	if err != nil {
		return err
	}
	return m.reply(env)
}

// ReplyError answers a request with RPC_ERROR carrying err's code.
func (m *Message) ReplyError(err error) error {
	env := &envelope.Envelope{Type: envelope.TypeRPCError}
	env.Payload, _ = json.Marshal(rpc.FromError(err).Payload())
	return m.reply(env)
}

func (m *Message) reply(env *envelope.Envelope) error {
	env.Meta.CorrelationID = m.Envelope.Meta.CorrelationID
	m.traceReply(&env.Meta)
	data, err := envelope.Encode(env)
	if err != nil {
		return err
	}
	return m.respond(data)
}

func (m *Message) respond(data []byte) error {
	if !m.IsRequest() {
		return errors.New("worker: message is not a request")
	}
	if !m.replied.CompareAndSwap(false, true) {
		return errors.New("worker: already replied")
	}
	return m.msg.Respond(data)
}
