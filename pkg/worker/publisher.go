package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/tracing"
)

// Publisher reaches clients from any Go service: it publishes envelopes to
// connections, users, rooms or everyone, and joins, removes or closes
// connections. It is safe for concurrent use.
type Publisher struct {
	*publisher
	// sc is the trace context its messages carry (WithContext).
	sc trace.SpanContext
}

// publisher is the state that a Publisher and its copies of WithContext
// share.
type publisher struct {
	nc *nats.Conn
	ns envelope.Namespace

	jsOnce   sync.Once
	js       jetstream.JetStream
	jsErr    error
	mu       sync.Mutex
	patterns []string  // durable room patterns, from the rooms stream
	checked  time.Time // when patterns were read
}

// NewPublisher returns a Publisher on nc for namespace ns.
func NewPublisher(nc *nats.Conn, ns envelope.Namespace) *Publisher {
	return &Publisher{publisher: &publisher{nc: nc, ns: ns}}
}

// WithContext returns a Publisher whose messages carry the trace context
// of ctx (its active span) in the standard Traceparent and Tracestate
// headers: the edges deliver it to clients in meta.traceparent, and trace
// their delivery under it. Message.Publisher is one already, for the
// handler's span. Without a valid span context in ctx it returns p.
func (p *Publisher) WithContext(ctx context.Context) *Publisher {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return p
	}
	return &Publisher{publisher: p.publisher, sc: sc}
}

// ToConn delivers env to one connection: conn is its id as the edge gave
// it (the Natter-Conn header, Message.Conn, presence entries), <edge>.<n>
// (envelope.ValidateConnID), published on natter.out.conn.<conn>.
func (p *Publisher) ToConn(conn string, env *envelope.Envelope) error {
	subj, err := p.ns.Conn(conn)
	if err != nil {
		return err
	}
	return p.publish(subj, env, nil)
}

// ToUser delivers env to every connection of user, except the connections
// named in exclude.
func (p *Publisher) ToUser(user string, env *envelope.Envelope, exclude ...string) error {
	subj, err := p.ns.User(user)
	if err != nil {
		return err
	}
	return p.publish(subj, env, exclude)
}

// ToRoom delivers env to every member of room, except the connections named
// in exclude (typically the sender).
func (p *Publisher) ToRoom(room string, env *envelope.Envelope, exclude ...string) error {
	subj, err := p.ns.Room(room)
	if err != nil {
		return err
	}
	return p.publish(subj, env, exclude)
}

// dupWindow is the rooms stream's duplicate window (the edge sets it to
// two minutes, or the history's age when shorter), minus a margin:
// ToDurableRoom retries one message id no longer than this.
const dupWindow = 110 * time.Second

// ToDurableRoom stores env in the history of a durable room and returns
// its position (meta.offset). Unlike ToRoom it is acknowledged and
// deduplicated: it retries with one message id until the stream has the
// message or ctx ends, so a NATS node failure neither loses nor doubles
// it. A room that is not durable (the patterns the edges store in the
// rooms stream) fails with FAILED_PRECONDITION; use ToRoom for those.
func (p *Publisher) ToDurableRoom(ctx context.Context, room string, env *envelope.Envelope, exclude ...string) (uint64, error) {
	subj, err := p.ns.DurableRoom(room)
	if err != nil {
		return 0, err
	}
	msg, err := p.message(subj, env, exclude)
	if err != nil {
		return 0, err
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		// Stored with the message: every delivery and replay carries it.
		// ctx's context wins over WithContext's, with its own tracestate
		// or none.
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		delete(msg.Header, tracing.HeaderTracestate)
		tracing.InjectContext(sc, msg.Header)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rpc.DefaultTimeout)
		defer cancel()
	}
	if err := p.checkDurable(ctx, room); err != nil {
		return 0, err
	}
	// Retries reuse the id only within the stream's duplicate window.
	ctx, cancel := context.WithTimeout(ctx, dupWindow)
	defer cancel()
	id := nuid.Next()
	for {
		// Each attempt waits 2s: an acknowledgement lost to a NATS node
		// failure or a leader election is not awaited for ever.
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := p.js.PublishMsg(actx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(p.ns.RoomsStream()))
		acancel()
		if err == nil {
			return ack.Sequence, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code != 503 || errors.Is(err, nats.ErrMaxPayload) {
			return 0, err // refused (too large, wrong stream): retrying changes nothing
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("worker: durable publish to %s not acknowledged: %w (last error: %w)", room, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IsDurable reports whether room is durable, by the patterns the edges
// store in the rooms stream (read at most every 30 seconds). Without the
// stream, or when it cannot be read, no room is.
func (p *Publisher) IsDurable(ctx context.Context, room string) bool {
	return p.checkDurable(ctx, room) == nil
}

// checkDurable fails unless room matches the durable patterns in the rooms
// stream's metadata, read at most every 30 seconds. A missing stream, or
// JetStream off, counts as no durable rooms for as long.
func (p *Publisher) checkDurable(ctx context.Context, room string) error {
	p.jsOnce.Do(func() { p.js, p.jsErr = jetstream.New(p.nc) })
	if p.jsErr != nil {
		return p.jsErr
	}
	p.mu.Lock()
	patterns, fresh := p.patterns, time.Since(p.checked) < 30*time.Second
	p.mu.Unlock()
	if !fresh {
		for {
			s, err := p.js.Stream(ctx, p.ns.RoomsStream())
			if err == nil || errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
				errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
				patterns = nil
				if err == nil {
					patterns = strings.Split(s.CachedInfo().Config.Metadata[envelope.RoomsStreamPatterns], ",")
				}
				p.mu.Lock()
				p.patterns, p.checked = patterns, time.Now()
				p.mu.Unlock()
				break
			}
			select {
			case <-ctx.Done():
				return rpc.FromError(fmt.Errorf("%w: %v", ctx.Err(), err))
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	for _, pat := range patterns {
		if ok, _ := path.Match(pat, room); ok && pat != "" {
			return nil
		}
	}
	return &rpc.Error{Code: envelope.CodeFailedPrecondition, Message: "room " + room + " is not durable"}
}

// ToAll delivers env to every connection on every edge, except exclude.
func (p *Publisher) ToAll(env *envelope.Envelope, exclude ...string) error {
	return p.publish(p.ns.All(), env, exclude)
}

func (p *Publisher) publish(subj envelope.Subject, env *envelope.Envelope, exclude []string) error {
	msg, err := p.message(subj, env, exclude)
	if err != nil {
		return err
	}
	return p.nc.PublishMsg(msg)
}

func (p *Publisher) message(subj envelope.Subject, env *envelope.Envelope, exclude []string) (*nats.Msg, error) {
	data, err := envelope.Encode(env)
	if err != nil {
		return nil, err
	}
	msg := &nats.Msg{Subject: subj.String(), Data: data}
	if len(exclude) > 0 {
		for _, id := range exclude {
			if err := envelope.ValidateConnID(id); err != nil {
				return nil, err
			}
		}
		msg.Header = nats.Header{envelope.HeaderExclude: []string{strings.Join(exclude, ",")}}
	}
	if p.sc.IsValid() {
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		tracing.InjectContext(p.sc, msg.Header)
	}
	return msg, nil
}

// Join adds conn to room and returns once the edge holding conn has
// subscribed, so a room publish made after Join returns reaches it. A
// connection that no edge holds gives rpc.ErrNotFound.
func (p *Publisher) Join(ctx context.Context, conn, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	return p.control(ctx, conn, envelope.Control{Op: envelope.OpJoin, Room: room})
}

// JoinAsClient adds conn to room if the client itself may join it (its
// token's grants, the edge's public rooms or the join authorizer), as for
// a $join; otherwise it fails with PERMISSION_DENIED. Use it when a client
// asks a handler to join it somewhere.
func (p *Publisher) JoinAsClient(ctx context.Context, conn, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	return p.control(ctx, conn, envelope.Control{Op: envelope.OpJoin, Room: room, AsClient: true})
}

// RequireMember fails with PERMISSION_DENIED unless conn is in room. Use it
// before posting to a room on a client's behalf.
func (p *Publisher) RequireMember(ctx context.Context, conn, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	return p.control(ctx, conn, envelope.Control{Op: envelope.OpMember, Room: room})
}

// Leave removes conn from room.
func (p *Publisher) Leave(ctx context.Context, conn, room string) error {
	if err := envelope.ValidateID(room); err != nil {
		return err
	}
	return p.control(ctx, conn, envelope.Control{Op: envelope.OpLeave, Room: room})
}

// Close closes conn with code (envelope.CloseServer when zero) and reason.
func (p *Publisher) Close(ctx context.Context, conn string, code envelope.CloseCode, reason string) error {
	return p.control(ctx, conn, envelope.Control{Op: envelope.OpClose, Code: code, Reason: reason})
}

func (p *Publisher) control(ctx context.Context, conn string, c envelope.Control) error {
	subj, err := p.ns.Ctl(conn)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(c)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rpc.DefaultTimeout)
		defer cancel()
	}
	msg, err := p.nc.RequestWithContext(ctx, subj.String(), body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return &rpc.Error{Code: envelope.CodeNotFound, Message: fmt.Sprintf("connection %s not found", conn)}
		}
		return rpc.FromError(err)
	}
	var rep envelope.ControlReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("worker: bad control reply: %w", err)
	}
	if !rep.OK {
		if rep.Error == nil {
			return rpc.ErrInternal
		}
		return &rpc.Error{Code: rep.Error.Code, Message: rep.Error.Message}
	}
	return nil
}
