package client

import (
	"encoding/json"
	"slices"
	"sync"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// PresenceDiff is a room's batch of presence changes ($presence.diff), for
// members that joined it WithPresence. Within one diff each connection
// appears once, as its last change left it.
type PresenceDiff struct {
	Room   string            `json:"room"`
	Joins  []presence.Member `json:"joins,omitempty"`
	Leaves []presence.Member `json:"leaves,omitempty"`
	States []presence.Member `json:"states,omitempty"`
}

type handler struct{ f func(*envelope.Envelope) }

type presenceHandler struct{ f func(PresenceDiff) }

// On calls f with every frame of type typ that is not the reply to a Call
// (or a request answered by Handle), in the order frames arrive, on the
// callback goroutine. typ "*" receives every frame, replies included. The
// envelope is f's to keep. The returned function removes f; it is
// idempotent.
func (c *Client) On(typ string, f func(*envelope.Envelope)) (unsubscribe func()) {
	h := &handler{f: f}
	c.hmu.Lock()
	c.handlers[typ] = append(slices.Clip(c.handlers[typ]), h)
	c.hmu.Unlock()
	return func() {
		c.hmu.Lock()
		defer c.hmu.Unlock()
		hs := slices.DeleteFunc(slices.Clone(c.handlers[typ]), func(x *handler) bool { return x == h })
		if len(hs) == 0 {
			delete(c.handlers, typ)
		} else {
			c.handlers[typ] = hs
		}
	}
}

// OnPresence calls f with the $presence.diff frames of room, which arrive
// for rooms joined WithPresence. The returned function removes f.
func (c *Client) OnPresence(room string, f func(PresenceDiff)) (unsubscribe func()) {
	h := &presenceHandler{f: f}
	c.hmu.Lock()
	c.presences[room] = append(slices.Clip(c.presences[room]), h)
	c.hmu.Unlock()
	return func() {
		c.hmu.Lock()
		defer c.hmu.Unlock()
		hs := slices.DeleteFunc(slices.Clone(c.presences[room]), func(x *presenceHandler) bool { return x == h })
		if len(hs) == 0 {
			delete(c.presences, room)
		} else {
			c.presences[room] = hs
		}
	}
}

// event is a frame or a state change waiting for callbacks.
type event struct {
	env      *envelope.Envelope
	consumed bool // a reply or server request: only "*" handlers see it
	isState  bool
	state    State
	info     CloseInfo
	err      error     // for OnError; env is nil and isState false
	rec      *Recovery // for OnRecovery; queued like a frame
}

// inbound reports whether e counts against MaxInbound: frames, and
// recovery reports, which must not be dropped while the client runs.
func (e *event) inbound() bool { return e.env != nil || e.rec != nil }

// eventQueue is the bounded queue between the read loops and the callback
// goroutine. Frames wait while MaxInbound frames are queued; state changes
// never wait (there are at most two per connection attempt).
type eventQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	items    []event
	frames   int
	stopping bool // the client is closing: frames are dropped
	closed   bool // no more events
	// busy: the callback goroutine took an event and runs its callbacks.
	busy bool
}

func (q *eventQueue) init() { q.cond = sync.NewCond(&q.mu) }

func (q *eventQueue) pushFrame(env *envelope.Envelope, consumed bool) {
	q.pushInbound(event{env: env, consumed: consumed})
}

// pushRecovery queues a recovery report in order with the frames, waiting
// like pushFrame while MaxInbound wait.
func (q *eventQueue) pushRecovery(rec *Recovery) { q.pushInbound(event{rec: rec}) }

// pushInbound queues a frame or a recovery report, waiting while
// MaxInbound of them are queued; after stop it drops e.
func (q *eventQueue) pushInbound(e event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.frames >= MaxInbound && !q.stopping {
		q.cond.Wait()
	}
	if q.stopping {
		return
	}
	q.items = append(q.items, e)
	q.frames++
	q.cond.Broadcast()
}

func (q *eventQueue) pushState(s State, info CloseInfo) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	// Keep the queue bounded if callbacks never return: a state change
	// replaces a queued one that nobody saw yet.
	if n := len(q.items) - q.frames; n >= 64 {
		if i := slices.IndexFunc(q.items, func(e event) bool { return e.isState }); i >= 0 {
			q.items = slices.Delete(q.items, i, i+1)
		}
	}
	q.items = append(q.items, event{isState: true, state: s, info: info})
	q.cond.Broadcast()
}

// pushError queues a failure for OnError; beyond 64 queued non-frame
// events it is dropped (it was logged).
func (q *eventQueue) pushError(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.stopping || len(q.items)-q.frames >= 64 {
		return
	}
	q.items = append(q.items, event{err: err})
	q.cond.Broadcast()
}

// inCallback reports whether the callback goroutine is running callbacks
// (or about to). After stop, only state changes and errors are delivered.
func (q *eventQueue) inCallback() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.busy
}

// stop drops queued frames and wakes read loops waiting for room.
func (q *eventQueue) stop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopping = true
	q.items = slices.DeleteFunc(q.items, func(e event) bool { return e.inbound() })
	q.frames = 0
	q.cond.Broadcast()
}

// close ends the queue once what is in it was delivered.
func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// next returns the next event, marking the callback goroutine busy until
// the following call.
func (q *eventQueue) next() (event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.busy = false
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if len(q.items) == 0 {
		return event{}, false
	}
	e := q.items[0]
	q.items[0] = event{}
	q.items = q.items[1:]
	q.busy = true
	if e.inbound() {
		q.frames--
		q.cond.Broadcast()
	}
	return e, true
}

// dispatch runs callbacks, one at a time, until the queue is closed.
func (c *Client) dispatch() {
	defer close(c.dispatched)
	for {
		e, ok := c.events.next()
		if !ok {
			return
		}
		if e.isState {
			if c.opts.OnState != nil {
				c.safely("OnState", func() { c.opts.OnState(e.state, e.info) })
			}
			continue
		}
		if e.err != nil {
			if c.opts.OnError != nil {
				c.safely("OnError", func() { c.opts.OnError(e.err) })
			}
			continue
		}
		if e.rec != nil {
			c.safely("OnRecovery", func() { c.opts.OnRecovery(*e.rec) })
			continue
		}
		c.deliver(e)
	}
}

func (c *Client) deliver(e event) {
	c.hmu.RLock()
	all := c.handlers["*"]
	var typed []*handler
	var pres []*presenceHandler
	if !e.consumed {
		typed = c.handlers[e.env.Type]
		if e.env.Type == envelope.TypePresenceDiff {
			pres = c.presences[e.env.Meta.Room]
		}
	}
	c.hmu.RUnlock()
	for _, h := range typed {
		c.safely(e.env.Type, func() { h.f(e.env) })
	}
	for _, h := range all {
		c.safely("*", func() { h.f(e.env) })
	}
	if len(pres) > 0 {
		var d PresenceDiff
		if err := json.Unmarshal(e.env.Payload, &d); err != nil {
			c.log.Debug("client: bad presence diff", "err", err)
			return
		}
		if d.Room == "" {
			d.Room = e.env.Meta.Room
		}
		for _, h := range pres {
			c.safely("presence", func() { h.f(d) })
		}
	}
}

// safely runs a callback; a panic is logged, and the callbacks go on.
func (c *Client) safely(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("client: callback panicked", "callback", what, "panic", r)
		}
	}()
	f()
}
