package edge

import (
	"runtime"
	"sync"

	"github.com/nats-io/nats.go"
)

// dispatchQueue is each dispatcher's channel capacity, in messages. A
// dispatcher only decodes and queues frames, so it drains far faster than
// this fills; if it ever fills, nats.go drops the message and reports a
// slow consumer, which the edge logs.
const dispatchQueue = 1 << 16

// dispatcher receives the messages of the edge's per-connection, per-user
// and per-room subscriptions on a few channels, one goroutine each, instead
// of a goroutine per subscription (nats.go's callback subscriptions start
// one each: two or three per connection). A subscription's messages stay in
// order: they all go through one channel. Handlers run on the dispatcher's
// goroutine and must not block.
type dispatcher struct {
	chans  []chan *nats.Msg
	routes sync.Map // subject -> func(*nats.Msg); one subscription per subject
	stop   chan struct{}
	wg     sync.WaitGroup
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
	d.routes.Store(subject, f)
	sub, err := nc.ChanSubscribe(subject, d.chans[shard%len(d.chans)])
	if err != nil {
		d.routes.Delete(subject)
		return nil, err
	}
	return sub, nil
}

// unsubscribe ends sub and its route. Messages already on a channel for
// it are dropped, unless a new subscription took the subject over.
func (d *dispatcher) unsubscribe(sub *nats.Subscription) {
	_ = sub.Unsubscribe()
	d.routes.Delete(sub.Subject)
}

func (d *dispatcher) run(ch chan *nats.Msg) {
	defer d.wg.Done()
	for {
		select {
		case msg := <-ch:
			if f, ok := d.routes.Load(msg.Subject); ok {
				f.(func(*nats.Msg))(msg)
			}
		case <-d.stop:
			return
		}
	}
}

func (d *dispatcher) close() {
	close(d.stop)
	d.wg.Wait()
}
