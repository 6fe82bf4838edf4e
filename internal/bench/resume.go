package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natter/natter/pkg/envelope"
)

const (
	// resumeTimeout bounds one join of the resume scenario: until the
	// whole backlog is in.
	resumeTimeout = 10 * time.Second
	// prefillBatch is how many chunks the resume scenario's producer
	// publishes before it waits for their acknowledgements.
	prefillBatch = 500
	// maxEndedJoins bounds the joins of the ended stream.
	maxEndedJoins = 50
)

// rawStream writes one response stream as docs/protocol.md's "Writing a
// stream" describes, with its own JetStream publishes: the Go SDK's
// StreamWriter stores what is written while a chunk is being stored as
// one chunk, and the resume scenario needs every chunk stored as a
// message of its own, quickly.
type rawStream struct {
	js   jetstream.JetStream
	ns   envelope.Namespace
	id   string
	subj string
	user string
	ctl  *nats.Subscription
	size int

	mu      sync.Mutex
	text    []byte // every chunk: the rollup's body
	lastSeq uint64
	stored  atomic.Int64 // chunks acknowledged
}

func openRawStream(ctx context.Context, nc *nats.Conn, ns envelope.Namespace, user string, size int) (*rawStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &rawStream{js: js, ns: ns, id: nuid.Next(), user: user, size: size}
	subj, err := ns.Stream(s.id)
	if err != nil {
		return nil, err
	}
	s.subj = subj.String()
	ctl, err := ns.StreamCtl(s.id)
	if err != nil {
		return nil, err
	}
	if s.ctl, err = nc.Subscribe(ctl.String(), func(m *nats.Msg) { _ = m.Respond([]byte(`{"ok":true}`)) }); err != nil {
		return nil, err
	}
	open := s.msg(envelope.StreamOpen, nil)
	open.Header.Set(envelope.HeaderStreamUser, user)
	open.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	ack, err := js.PublishMsg(ctx, open, jetstream.WithExpectStream(ns.StreamsStream()))
	if err != nil {
		_ = s.ctl.Unsubscribe()
		return nil, fmt.Errorf("bench: open stream (is the edge run with --streams?): %w", err)
	}
	s.lastSeq = ack.Sequence
	return s, nil
}

func (s *rawStream) msg(event string, data []byte) *nats.Msg {
	m := nats.NewMsg(s.subj)
	m.Header.Set(envelope.HeaderStream, event)
	m.Data = data
	return m
}

// chunk builds chunk number n, sent now, and adds it to the text.
func (s *rawStream) chunk(n int64) (*nats.Msg, jetstream.PublishOpt) {
	s.mu.Lock()
	at := len(s.text)
	s.text = appendChunk(s.text, time.Now().UnixNano(), n, s.size)
	b := s.text[at:len(s.text):len(s.text)]
	s.mu.Unlock()
	m := s.msg(envelope.StreamChunk, b)
	// Where the chunk starts, as docs/protocol.md recommends: the edge
	// starts a join at the chunk that holds its offset.
	m.Header.Set(envelope.HeaderStreamOffset, strconv.Itoa(at))
	return m, jetstream.WithMsgID(s.id + "." + strconv.FormatInt(n+1, 10))
}

// prefill stores chunks 0..count-1, pipelined in batches: one
// connection's publishes are stored in the order sent.
func (s *rawStream) prefill(ctx context.Context, count int64) error {
	for n := int64(0); n < count; {
		var futs []jetstream.PubAckFuture
		for ; n < count && len(futs) < prefillBatch; n++ {
			m, id := s.chunk(n)
			f, err := s.js.PublishMsgAsync(m, id, jetstream.WithExpectStream(s.ns.StreamsStream()))
			if err != nil {
				return fmt.Errorf("bench: prefill: %w", err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case ack := <-f.Ok():
				s.mu.Lock()
				s.lastSeq = ack.Sequence
				s.mu.Unlock()
				s.stored.Add(1)
			case err := <-f.Err():
				return fmt.Errorf("bench: prefill: %w", err)
			case <-time.After(streamsTimeout):
				return errors.New("bench: prefill: no acknowledgement in time")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// live stores one chunk per interval from chunk number next on, until
// stop is closed, each acknowledged before the next (so that the text the
// rollup holds is what was stored).
func (s *rawStream) live(ctx context.Context, stop <-chan struct{}, next int64, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := next; ; n++ {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		m, id := s.chunk(n)
		actx, cancel := context.WithTimeout(ctx, streamsTimeout)
		ack, err := s.js.PublishMsg(actx, m, id, jetstream.WithExpectStream(s.ns.StreamsStream()))
		cancel()
		if err != nil {
			return fmt.Errorf("bench: live chunk %d: %w", n, err)
		}
		s.mu.Lock()
		s.lastSeq = ack.Sequence
		s.mu.Unlock()
		s.stored.Add(1)
	}
}

// end stores the rollup: the whole text, done, right after the last
// chunk.
func (s *rawStream) end(ctx context.Context) error {
	defer func() { _ = s.ctl.Unsubscribe() }()
	s.mu.Lock()
	m := s.msg(envelope.StreamDone, s.text)
	last := s.lastSeq
	s.mu.Unlock()
	m.Header.Set(envelope.HeaderStreamUser, s.user)
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectStream(s.ns.StreamsStream())); err != nil {
		return fmt.Errorf("bench: end stream (%d bytes of text): %w", len(m.Data), err)
	}
	return nil
}

// resumeReader is the connection of one resume join: it joins from
// offset and reads until target.
type resumeReader struct {
	offset, target int64
	first          int64 // the chunk number at offset
	clock          *chunkClock

	sent     atomic.Int64 // when the join was sent, unix ns
	joinedAt atomic.Int64
	firstAt  atomic.Int64
	doneAt   atomic.Int64
	done     chan struct{} // closed when target is reached, or failed is set
	failed   atomic.Pointer[string]
	once     sync.Once
	progress atomic.Int64 // bytes read past offset
	frames   int          // chunk frames until target; read loop only
	firstN   int64        // the number of the first chunk parsed; -1 none yet
}

func newResumeReader(offset, target int64, size int) *resumeReader {
	return &resumeReader{
		offset: offset, target: target, first: offset / int64(size),
		clock: newChunkClock(size, offset), done: make(chan struct{}), firstN: -1,
	}
}

func (r *resumeReader) fail(reason string) {
	r.failed.CompareAndSwap(nil, &reason)
	r.once.Do(func() { close(r.done) })
}

func (r *resumeReader) OnOpen(*gws.Conn)               {}
func (r *resumeReader) OnClose(_ *gws.Conn, err error) { r.fail(fmt.Sprintf("closed: %v", err)) }
func (r *resumeReader) OnPing(c *gws.Conn, p []byte)   { _ = c.WritePong(p) }
func (r *resumeReader) OnPong(*gws.Conn, []byte)       {}

func (r *resumeReader) OnMessage(_ *gws.Conn, msg *gws.Message) {
	now := time.Now().UnixNano()
	defer msg.Close()
	f, ok := parseStreamFrame(msg.Bytes())
	if !ok {
		r.fail("a frame that does not parse: " + truncate(string(msg.Bytes()), 120))
		return
	}
	switch f.kind {
	case frameJoined:
		r.joinedAt.Store(now)
	case frameError:
		r.fail("join: " + truncate(string(f.text), 160))
	case frameEnd:
		if r.doneAt.Load() == 0 {
			r.fail(fmt.Sprintf("$stream.end at offset %d before the backlog's end %d", f.offset, r.target))
		}
	case frameChunk:
		if r.doneAt.Load() != 0 {
			return // live chunks after the backlog
		}
		at := f.offset - int64(len(f.text))
		if r.firstAt.Load() == 0 {
			r.firstAt.Store(now)
			if at != r.offset {
				r.fail(fmt.Sprintf("first chunk frame starts at offset %d, not %d", at, r.offset))
				return
			}
		}
		r.frames++
		if !r.clock.feed(at, f.text, func(_, n int64) {
			if r.firstN < 0 {
				r.firstN = n
			}
		}) {
			r.fail(fmt.Sprintf("chunk frame at offset %d after offset %d: a gap or an overlap", at, r.clock.pos))
			return
		}
		r.progress.Store(r.clock.pos - r.offset)
		switch {
		case r.clock.bad > 0:
			r.fail("a chunk whose head does not say its place")
		case r.firstN >= 0 && r.firstN != r.first:
			r.fail(fmt.Sprintf("the first chunk is number %d, not %d", r.firstN, r.first))
		case r.clock.pos >= r.target:
			r.doneAt.Store(now)
			r.once.Do(func() { close(r.done) })
		}
	}
}

// joinTiming is one resume join's times from sending $stream.join.
type joinTiming struct {
	joined, first, backlog time.Duration
	frames                 int
}

// resumeJoin dials connection i as user, joins stream id from offset and
// reads until target.
func resumeJoin(ctx context.Context, d *dialer, i int, user, id string, offset, target int64, size int) (joinTiming, error) {
	r := newResumeReader(offset, target, size)
	dd := *d
	dd.url = withUser(d.url, user)
	var loop sync.WaitGroup
	conn, err := dd.dial(i, r, &loop, nil)
	if err != nil {
		return joinTiming{}, fmt.Errorf("dial: %s", errorKind(err))
	}
	defer func() {
		r.once.Do(func() { close(r.done) })
		_ = conn.WriteClose(1000, nil)
		waitBounded(&loop, closeWait)
	}()
	frame := streamJoinFrame(id, offset)
	r.sent.Store(time.Now().UnixNano())
	if err := conn.WriteMessage(gws.OpcodeText, frame); err != nil {
		return joinTiming{}, fmt.Errorf("join: write: %s", errorKind(err))
	}
	t := time.NewTimer(resumeTimeout)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		return joinTiming{}, fmt.Errorf("join: the backlog was not in within %s (%d of %d bytes)", resumeTimeout, r.progress.Load(), target-offset)
	case <-ctx.Done():
		return joinTiming{}, ctx.Err()
	}
	if p := r.failed.Load(); p != nil && r.doneAt.Load() == 0 {
		return joinTiming{}, errors.New(*p)
	}
	s := r.sent.Load()
	return joinTiming{
		joined:  time.Duration(r.joinedAt.Load() - s),
		first:   time.Duration(r.firstAt.Load() - s),
		backlog: time.Duration(r.doneAt.Load() - s),
		frames:  r.frames,
	}, nil
}

// joinStats are the sorted times of a set of joins.
type joinStats struct {
	joined, first, backlog []time.Duration
	frames                 []int
}

func (s *joinStats) add(t joinTiming) {
	s.joined = append(s.joined, t.joined)
	s.first = append(s.first, t.first)
	s.backlog = append(s.backlog, t.backlog)
	s.frames = append(s.frames, t.frames)
}

func (s *joinStats) sort() {
	slices.Sort(s.joined)
	slices.Sort(s.first)
	slices.Sort(s.backlog)
	slices.Sort(s.frames)
}

// runResume opens one stream, stores Read+Behind chunks, keeps writing
// ChunkRate chunks per second, and measures Joins joins, each on a new
// connection, from the offset with Behind chunks stored after it; then
// ends the stream and measures joins of the ended stream the same way.
func runResume(ctx context.Context, cfg *Config, sl *StreamLoad, t *target, run int) (*Result, error) {
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	ns, err := envelope.NewNamespace(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if text := int64(sl.Read+sl.Behind) * int64(sl.ChunkSize); text > 768<<10 {
		fmt.Fprintf(cfg.Log, "bench: resume: %d chunks of %d bytes and the live ones may not fit in one rollup (1 MiB by default): the end may fail\n", sl.Read+sl.Behind, sl.ChunkSize)
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("natter-bench-producer"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("bench: connect NATS %s (-nats: the edge's NATS): %w", cfg.NATSURL, err)
	}
	defer nc.Close()
	user := "resume" + strconv.Itoa(run)
	s, err := openRawStream(ctx, nc, ns, user, sl.ChunkSize)
	if err != nil {
		return nil, err
	}
	behind, read := int64(sl.Behind), int64(sl.Read)
	size := int64(sl.ChunkSize)
	p0 := time.Now()
	if err := s.prefill(ctx, read+behind); err != nil {
		return nil, err
	}
	prefill := time.Since(p0)

	stopLive := make(chan struct{})
	liveErr := make(chan error, 1)
	go func() { liveErr <- s.live(ctx, stopLive, read+behind, time.Second/time.Duration(sl.ChunkRate)) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		close(stopLive)
		return <-liveErr
	}
	defer func() { _ = stop() }()

	var live joinStats
	var failures errorCounts
	kMin, kMax := int64(math.MaxInt64), int64(0)
	s0, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	w0 := time.Now()
	for j := range sl.Joins {
		k := s.stored.Load() - behind // the first chunk the reader missed
		kMin, kMax = min(kMin, k), max(kMax, k)
		tm, err := resumeJoin(ctx, d, j, user, s.id, k*size, (k+behind)*size, sl.ChunkSize)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			failures.add(err.Error())
			continue
		}
		live.add(tm)
	}
	s1, err := sampleProc(t.pid)
	wall := time.Since(w0)
	if err != nil {
		return nil, err
	}
	if err := stop(); err != nil {
		return nil, err
	}
	total := s.stored.Load()
	endErr := s.end(ctx)
	var ended joinStats
	if endErr == nil {
		k := total - behind
		for j := range min(sl.Joins, maxEndedJoins) {
			tm, err := resumeJoin(ctx, d, sl.Joins+j, user, s.id, k*size, total*size, sl.ChunkSize)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				failures.add("ended: " + err.Error())
				continue
			}
			ended.add(tm)
		}
	} else {
		fmt.Fprintf(cfg.Log, "bench: resume: %v\n", endErr)
	}
	if n := failures.total(); n > 0 {
		fmt.Fprintf(cfg.Log, "bench: resume: %d joins failed: %s\n", n, failures.String())
	}
	if kMin == math.MaxInt64 {
		kMin = 0
	}
	live.sort()
	ended.sort()
	serverCPU := s1.cpuSeconds() - s0.cpuSeconds()

	var l line
	l.add("scenario", ScenarioResume)
	l.add("server", t.name)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("behind", behind)
	l.int("read", read)
	l.int("chunk_bytes", size)
	l.add("chunk_rate", strconv.Itoa(sl.ChunkRate)+"/s")
	l.num("prefill_s", prefill.Seconds(), 2, "")
	l.int("joins", int64(len(live.first)))
	l.int("failed", int64(failures.total()))
	l.int("read_min", kMin)
	l.int("read_max", kMax)
	l.ms("joined_p50", percentile(live.joined, 50))
	l.ms("first_p50", percentile(live.first, 50))
	l.ms("first_p99", percentile(live.first, 99))
	l.ms("first_max", percentile(live.first, 100))
	l.ms("backlog_p50", percentile(live.backlog, 50))
	l.ms("backlog_p99", percentile(live.backlog, 99))
	l.ms("backlog_max", percentile(live.backlog, 100))
	if len(live.frames) > 0 {
		l.int("frames_p50", int64(live.frames[len(live.frames)/2]))
	}
	l.num("server_cpu_s", serverCPU, 2, "")
	l.num("server_cpu_pct", serverCPU/wall.Seconds()*100, 0, "")
	l.num("cpu_ms_per_join", serverCPU*1000/float64(max(len(live.first), 1)), 1, "")
	l.int("stored", total)
	if endErr != nil {
		l.add("ended", "failed")
	} else {
		l.int("ended_joins", int64(len(ended.first)))
		l.ms("ended_first_p50", percentile(ended.first, 50))
		l.ms("ended_first_p99", percentile(ended.first, 99))
		l.ms("ended_backlog_p50", percentile(ended.backlog, 50))
	}
	return &Result{Scenario: ScenarioResume, Server: t.name, Fields: l.fields, Latencies: live.first}, nil
}
