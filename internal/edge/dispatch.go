package edge

import (
	"context"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/routine"
)

// dispatchQueue is each dispatcher's channel capacity, in messages. A
// dispatcher decodes each message once and queues its frame on the local
// recipients without blocking; a message for a room of 10,000 members is
// 10,000 such queue operations, a few milliseconds. If the channel ever
// fills, nats.go drops the message and reports a slow consumer to the
// connection's error handler (cmd/edge logs it, sampled).
const dispatchQueue = 1 << 16

// dispatcher receives the messages of the edge's subscriptions (per room,
// per user, and the two per edge that address its connections) on a few
// channels, one goroutine each (the shards), instead of a goroutine per
// subscription (nats.go's callback subscriptions start one each).
// Handlers run on a shard's goroutine and must not block.
//
// A plain subscription (subscribe) delivers onto one shard, so its
// messages stay in order; a large room's fan-out delays the other messages
// on its shard by as long as it takes.
//
// A subscription by id (subscribeByID) is one wildcard whose messages are
// each addressed to one id, the end of their subject: <prefix>.out.conn.
// <edge>.* and <prefix>.ctl.conn.<edge>.* for all the edge's connections.
// Its messages go through one more goroutine, the router, which hands each
// to the shard of its id (a hash of the id). So every message for one id,
// from either subscription, runs on one shard, in the order NATS delivered
// it, and different connections still spread over the shards as they did
// with a subscription each. The router only hashes and forwards; when the
// id's shard is full it waits for it, so the router's own channel fills
// next, and nats.go drops and reports a slow consumer there as it would
// on a shard.
type dispatcher struct {
	chans  []chan *nats.Msg
	router chan *nats.Msg // messages of subscriptions by id, before their shard
	routes sync.Map       // subscribed subject -> *route; one subscription per subject
	seed   maphash.Seed   // shards of ids
	loops  routine.Group  // the shards' goroutines and the router
}

// route is where one subscription's messages go. sub is set once the
// subscription exists; messages of an earlier subscription to the same
// subject, still on a channel, are dropped.
type route struct {
	f    func(*nats.Msg)
	byID func(id string, msg *nats.Msg) // subscriptions by id: f is nil
	idAt int                            // subscriptions by id: where the id starts in a message's subject
	sub  atomic.Pointer[nats.Subscription]
}

func newDispatcher() *dispatcher {
	d := &dispatcher{
		chans:  make([]chan *nats.Msg, runtime.GOMAXPROCS(0)),
		router: make(chan *nats.Msg, dispatchQueue),
		seed:   maphash.MakeSeed(),
	}
	for i := range d.chans {
		ch := make(chan *nats.Msg, dispatchQueue)
		d.chans[i] = ch
		d.loops.Go(func(ctx context.Context) { d.run(ctx, ch) })
	}
	d.loops.Go(d.forward)
	return d
}

// subscribe subscribes subject on nc, with f handling its messages on
// dispatcher shard. The route is in place before the subscription, so the
// first message finds it. The caller keeps one subscription per subject.
func (d *dispatcher) subscribe(nc *nats.Conn, subject string, shard int, f func(*nats.Msg)) (*nats.Subscription, error) {
	return d.add(nc, subject, &route{f: f}, d.chans[shard%len(d.chans)])
}

// subscribeByID subscribes subject, a wildcard, on nc for messages each
// addressed to one id: the end of the message's subject from byte idAt
// on. f gets each with its id, on the id's shard (shardOf); per id, they
// stay in order. The caller keeps one subscription per subject.
func (d *dispatcher) subscribeByID(nc *nats.Conn, subject string, idAt int, f func(id string, msg *nats.Msg)) (*nats.Subscription, error) {
	return d.add(nc, subject, &route{byID: f, idAt: idAt}, d.router)
}

func (d *dispatcher) add(nc *nats.Conn, subject string, r *route, ch chan *nats.Msg) (*nats.Subscription, error) {
	d.routes.Store(subject, r)
	sub, err := nc.ChanSubscribe(subject, ch)
	if err != nil {
		d.routes.CompareAndDelete(subject, r)
		return nil, err
	}
	r.sub.Store(sub)
	return sub, nil
}

// unsubscribe ends sub and its route. Messages already on a channel for
// it are dropped, unless a new subscription took the subject over.
func (d *dispatcher) unsubscribe(sub *nats.Subscription) {
	_ = sub.Unsubscribe()
	if v, ok := d.routes.Load(sub.Subject); ok && v.(*route).sub.Load() == sub {
		d.routes.CompareAndDelete(sub.Subject, v)
	}
}

// shardOf is the shard of an id's messages.
func (d *dispatcher) shardOf(id string) int {
	return int(maphash.String(d.seed, id) % uint64(len(d.chans)))
}

// inject queues msg (whose Sub is the subscription it stands for) on
// shard as if NATS had delivered it, so that its handler runs in order
// with the subscription's messages. It never blocks: on a full channel
// msg is dropped and inject reports false.
func (d *dispatcher) inject(msg *nats.Msg, shard int) bool {
	select {
	case d.chans[shard%len(d.chans)] <- msg:
		return true
	default:
		return false
	}
}

// lookup returns the live route of msg's subscription, or nil.
func (d *dispatcher) lookup(msg *nats.Msg) *route {
	if msg.Sub == nil {
		return nil
	}
	v, ok := d.routes.Load(msg.Sub.Subject)
	if !ok {
		return nil
	}
	r := v.(*route)
	if s := r.sub.Load(); s != nil && s != msg.Sub {
		return nil
	}
	return r
}

func (d *dispatcher) run(ctx context.Context, ch chan *nats.Msg) {
	for {
		select {
		case msg := <-ch:
			switch r := d.lookup(msg); {
			case r == nil:
			case r.byID != nil:
				if len(msg.Subject) > r.idAt {
					r.byID(msg.Subject[r.idAt:], msg)
				}
			default:
				r.f(msg)
			}
		case <-ctx.Done():
			return
		}
	}
}

// forward is the router: it hands the messages of subscriptions by id to
// their id's shard.
func (d *dispatcher) forward(ctx context.Context) {
	for {
		select {
		case msg := <-d.router:
			r := d.lookup(msg)
			if r == nil || r.byID == nil || len(msg.Subject) <= r.idAt {
				continue
			}
			select {
			case d.chans[d.shardOf(msg.Subject[r.idAt:])] <- msg:
			case <-ctx.Done():
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// close stops the shards and the router and waits for them; messages
// still on the channels are not handled. It is idempotent.
func (d *dispatcher) close() {
	d.loops.Stop()
	_ = d.loops.Wait(context.Background())
}
