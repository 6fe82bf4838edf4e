package edge

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// dispatchQueue is each dispatcher's channel capacity, in messages. A
// dispatcher decodes each message once and queues its frame on the local
// recipients without blocking; a message for a room of 10,000 members is
// 10,000 such queue operations, a few milliseconds. If the channel ever
// fills, nats.go drops the message and reports a slow consumer to the
// connection's error handler (cmd/edge logs it, sampled).
const dispatchQueue = 1 << 16

// dispatcher receives the messages of the edge's per-connection, per-user
// and per-room subscriptions on a few channels, one goroutine each, instead
// of a goroutine per subscription (nats.go's callback subscriptions start
// one each: two or three per connection). A subscription's messages stay in
// order: they all go through one channel. Handlers run on the dispatcher's
// goroutine and must not block. All of one connection's subscriptions
// share a channel, and so do a room's or a user's; a large room's fan-out
// delays the other messages on its channel by as long as it takes.
type dispatcher struct {
	chans  []chan *nats.Msg
	routes sync.Map // subject -> *route; one subscription per subject
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// route is where one subscription's messages go. sub is set once the
// subscription exists; messages of an earlier subscription to the same
// subject, still on a channel, are dropped.
type route struct {
	f   func(*nats.Msg)
	sub atomic.Pointer[nats.Subscription]
}

func newDispatcher() *dispatcher {
	d := &dispatcher{chans: make([]chan *nats.Msg, runtime.GOMAXPROCS(0)), stop: make(chan struct{})}
	for i := range d.chans {
		d.chans[i] = make(chan *nats.Msg, dispatchQueue)
		d.wg.Add(1)
		go d.run(d.chans[i])
	}
	return d
}

// subscribe subscribes subject on nc, with f handling its messages on
// dispatcher shard. The route is in place before the subscription, so the
// first message finds it. The caller keeps one subscription per subject.
func (d *dispatcher) subscribe(nc *nats.Conn, subject string, shard int, f func(*nats.Msg)) (*nats.Subscription, error) {
	r := &route{f: f}
	d.routes.Store(subject, r)
	sub, err := nc.ChanSubscribe(subject, d.chans[shard%len(d.chans)])
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

func (d *dispatcher) run(ch chan *nats.Msg) {
	defer d.wg.Done()
	for {
		select {
		case msg := <-ch:
			if v, ok := d.routes.Load(msg.Subject); ok {
				r := v.(*route)
				if s := r.sub.Load(); s == nil || s == msg.Sub {
					r.f(msg)
				}
			}
		case <-d.stop:
			return
		}
	}
}

func (d *dispatcher) close() {
	d.once.Do(func() { close(d.stop) })
	d.wg.Wait()
}
