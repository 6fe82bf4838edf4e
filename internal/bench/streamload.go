package bench

// The streams and resume scenarios: response streams (docs/protocol.md,
// "Response streams") read by WebSocket clients of the edge, written by
// producers in this process. They run against natter only, through
// RunStreamScenarios (cmd/bench runs them after Run's scenarios).
//
// Every chunk is ChunkSize bytes: "<send time, unix ns, 19 digits>|<its
// number in the stream, 9 digits>|xxx...". Chunk k is bytes
// [k*ChunkSize, (k+1)*ChunkSize) of the stream's text, so a reader finds
// every chunk's head from a frame's meta.offset (the byte after it) and its
// text, however the producer or the edge merged or cut the chunks; a frame
// that does not start where the last one ended counts as a gap, a head that
// does not parse or does not hold its own number as bad.
//
// Scenario streams: Streams streams are opened with the Go SDK
// (worker.Publisher.OpenStream, StreamTo{User: "u<i>"}; a producer NATS
// connection per 250 streams), and a reader connects per stream as its
// user (?user=u<i>: a dev-mode edge) and joins it from offset 0
// ($stream.join, waiting for $stream.joined) before anything is written.
// Then one goroutine per 50 streams writes a chunk to each of its streams
// every 1/ChunkRate s for Warmup+Duration (StreamWriter.Write; the groups'
// ticks are spread over one interval; open loop: pub_lag_max says how late
// a tick started). A chunk's time is taken just before its Write, so
// latency = reader's receipt - Write: the writer's wait for the previous
// chunk's acknowledgement, the JetStream store, the edge's consumer and the
// WebSocket. As in fanout, the chunks written in the window after the
// warm-up are measured: delivered by the last expected one or 2 s after the
// window, late while they keep coming, lost the rest; chunks_per_s is
// delivered over Duration; server_cpu_s is the edge's utime+stime over the
// window and cpu_s_per_million that per million delivered chunks. Then every
// stream is ended with Close (the rollup: one message holding the whole
// text): js_kib_open and js_msgs_open are the natter_streams stream's
// State.Bytes and State.Msgs just before, js_kib_ended and js_msgs_ended
// just after the readers got their $stream.end (all_ended_s), both less the
// state at the start of the run. ended counts readers that got an end;
// end_refused counts Close calls that failed with ErrStreamEnded (JetStream
// refused the rollup's expected last sequence), end_refused_own those of
// them whose stream holds the producer's own end all the same (its message
// id): an earlier attempt of the rollup was stored. How they ended is
// written to Log. written is the chunks written in all (warm-up and window),
// chunk_msgs the messages they were stored as (js_msgs_open less the
// opens): the StreamWriter stores what was written while a chunk was being
// stored as one chunk, so chunks_per_msg = written / chunk_msgs is above 1
// when a stream's stores take longer than its interval.
// cpu_s_per_million_written is server_cpu_s per million chunks written in
// the window. With NoReaders no reader joins: the cost of the producers
// and JetStream alone.
//
// Scenario resume: one stream (user resume<run>), written by the bench with
// JetStream publishes as docs/protocol.md says (the SDK's StreamWriter
// would merge chunks written while one is stored): Read+Behind chunks
// pipelined, then one chunk every 1/ChunkRate s, each acknowledged, for as
// long as the joins run. Joins times, each on a new connection: the offset
// of the first chunk with Behind chunks acknowledged after it (so the
// reader had read Read chunks or more); then $stream.join from it, timed
// from its write to $stream.joined (joined_), to the first $stream.chunk
// (first_; it must start at the offset and hold that chunk, or the join
// fails), and to the byte that ends the Behind chunks (backlog_);
// frames_p50 is the chunk frames that took. read_min and read_max are the
// first joins' chunk numbers. server_cpu_s is the edge's CPU over the
// joins, cpu_ms_per_join that per join. Then the stream is ended (a
// rollup) and up to 50 joins of the ended stream from Behind chunks before
// its end are timed alike (ended_).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// Scenario names of response streams.
const (
	// ScenarioStreams: many concurrent streams, each written at a fixed
	// rate and read by a client of its own.
	ScenarioStreams = "streams"
	// ScenarioResume: joins of one stream from an offset with many chunks
	// stored after it, as after a reload.
	ScenarioResume = "resume"
)

// IsStreamScenario reports whether s is run by RunStreamScenarios rather
// than Run.
func IsStreamScenario(s string) bool { return s == ScenarioStreams || s == ScenarioResume }

// StreamLoad configures the streams and resume scenarios. Zero values
// take the defaults given.
type StreamLoad struct {
	// Streams is the streams scenario's number of concurrent response
	// streams, each with one reader connection; default 1000.
	Streams int
	// ChunkRate is chunks per second written to each stream (streams), or
	// to the one stream while it is joined (resume); default 50.
	ChunkRate int
	// ChunkSize is the bytes of every chunk, at least chunkHeadLen (30);
	// default 32, about an LLM token or a few.
	ChunkSize int
	// Behind is resume's chunks stored after the reader's offset at each
	// join; default 10000.
	Behind int
	// Read is resume's chunks stored before the first join's offset: what
	// the reader had read before its reload; 0 (the default) or more.
	// Later joins start later: the stream grows while it is joined.
	Read int
	// NoReaders runs the streams scenario without readers: what the
	// producers and JetStream cost alone (no latency is measured).
	NoReaders bool
	// Joins is resume's measured joins, each on a new connection; default
	// 200.
	Joins int
}

func (s *StreamLoad) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&s.Streams, 1000)
	def(&s.ChunkRate, 50)
	def(&s.ChunkSize, 32)
	def(&s.Behind, 10000)
	def(&s.Joins, 200)
	switch {
	case s.Streams < 1, s.ChunkRate < 1, s.Behind < 1, s.Joins < 1:
		return fmt.Errorf("%w: streams, chunk-rate, behind and joins must be >= 1", ErrInvalidConfig)
	case s.Read < 0:
		return fmt.Errorf("%w: read must be >= 0", ErrInvalidConfig)
	case s.ChunkSize < chunkHeadLen:
		return fmt.Errorf("%w: chunk-size must be >= %d (a chunk starts with its send time and number)", ErrInvalidConfig, chunkHeadLen)
	case s.ChunkSize > 64<<10:
		return fmt.Errorf("%w: chunk-size must be <= 65536", ErrInvalidConfig)
	}
	return nil
}

// RunStreamScenarios runs the streams and resume scenarios named in
// scenarios, in order, against the edge at cfg.URL (its NATS at
// cfg.NATSURL), cfg.Runs times each, and writes their lines as Run does.
// Of cfg it uses URL, Pid, Runs, SourceAddrs, DialConcurrency, Duration,
// Warmup, Settle, NATSURL, Prefix, Out and Log.
func RunStreamScenarios(ctx context.Context, cfg Config, sl StreamLoad, scenarios []string) ([]*Result, error) {
	for _, s := range scenarios {
		if !IsStreamScenario(s) {
			return nil, fmt.Errorf("%w: %q is not a stream scenario", ErrInvalidConfig, s)
		}
	}
	cfg.Scenarios, cfg.Servers, cfg.Wires = nil, nil, nil // the defaults validate
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := sl.setDefaults(); err != nil {
		return nil, err
	}
	limit, err := RaiseFileLimit()
	if err != nil {
		return nil, err
	}
	if n := sl.Streams; slices.Contains(scenarios, ScenarioStreams) && n+clientFileMargin > limit {
		return nil, fmt.Errorf("%w: %d connections need about %d open files, but this process may open %d (the hard limit; see ulimit -Hn)", ErrInvalidConfig, n, n+clientFileMargin, limit)
	}
	t, err := newTarget(ctx, &cfg, ServerNatter)
	if err != nil {
		return nil, err
	}
	var out []*Result
	for _, s := range scenarios {
		var runs []*Result
		for run := 1; run <= cfg.Runs; run++ {
			if len(out) > 0 && !sleepCtx(ctx, cfg.Settle) {
				return out, ctx.Err()
			}
			if _, err := sampleProc(t.pid); err != nil {
				return out, err
			}
			var r *Result
			if s == ScenarioStreams {
				r, err = runStreamLoad(ctx, &cfg, &sl, t, run)
			} else {
				r, err = runResume(ctx, &cfg, &sl, t, run)
			}
			if err != nil {
				return out, fmt.Errorf("%s: %w", s, err)
			}
			fmt.Fprintln(cfg.Out, r)
			runs = append(runs, r)
			out = append(out, r)
		}
		if len(runs) > 1 {
			m := Median(runs)
			fmt.Fprintln(cfg.Out, m)
			out = append(out, m)
		}
	}
	return out, nil
}

// A chunk's text is its head, then padding to the chunk size:
// "<send time, unix ns, 19 digits>|<number, 9 digits>|xxx...". Only
// digits, '|' and 'x': JSON carries it unescaped.
const (
	chunkTimeLen = 19
	chunkSeqLen  = 9
	chunkHeadLen = chunkTimeLen + 1 + chunkSeqLen + 1
)

// appendChunk appends chunk number n, sent at t (unix ns), of size bytes.
func appendChunk(b []byte, t, n int64, size int) []byte {
	start := len(b)
	b = appendPadded(b, t, chunkTimeLen)
	b = append(b, '|')
	b = appendPadded(b, n, chunkSeqLen)
	b = append(b, '|')
	for len(b)-start < size {
		b = append(b, 'x')
	}
	return b
}

// appendPadded appends v >= 0 in decimal, zero-padded to width digits
// (more when v needs them).
func appendPadded(b []byte, v int64, width int) []byte {
	var d [20]byte
	s := strconv.AppendInt(d[:0], v, 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// parseChunkHead reads the send time and number from a chunk's head.
func parseChunkHead(h []byte) (t, n int64, ok bool) {
	if len(h) < chunkHeadLen || h[chunkTimeLen] != '|' || h[chunkHeadLen-1] != '|' {
		return 0, 0, false
	}
	t, rest, ok1 := leadingInt(h[:chunkTimeLen])
	n, rest2, ok2 := leadingInt(h[chunkTimeLen+1 : chunkHeadLen-1])
	if !ok1 || !ok2 || len(rest) > 0 || len(rest2) > 0 {
		return 0, 0, false
	}
	return t, n, true
}

// chunkClock reads the chunks of one stream's text as it arrives in
// pieces of any size: every chunk's head is read once, wherever the
// pieces cut it. Chunks are all size bytes, so chunk k starts at byte
// k x size of the text.
type chunkClock struct {
	size int
	pos  int64  // the stream offset of the next byte
	head []byte // the current chunk's head so far
	bad  int64  // heads that did not parse, or whose number is not their place
}

func newChunkClock(size int, pos int64) *chunkClock {
	return &chunkClock{size: size, pos: pos, head: make([]byte, 0, chunkHeadLen)}
}

// feed reads text, which starts at stream offset at, and calls fn with
// the send time and number of every chunk whose head it completes. It
// reports false, and reads nothing, when at is not where the last piece
// ended: a gap or an overlap.
func (c *chunkClock) feed(at int64, text []byte, fn func(t, n int64)) bool {
	if at != c.pos {
		return false
	}
	size := int64(c.size)
	for len(text) > 0 {
		in := int(c.pos % size)
		if in < chunkHeadLen {
			k := min(chunkHeadLen-in, len(text))
			c.head = append(c.head, text[:k]...)
			text, c.pos = text[k:], c.pos+int64(k)
			if len(c.head) == chunkHeadLen {
				if t, n, ok := parseChunkHead(c.head); ok && n == (c.pos-1)/size {
					fn(t, n)
				} else {
					c.bad++
				}
				c.head = c.head[:0]
			}
			continue
		}
		k := min(c.size-in, len(text))
		text, c.pos = text[k:], c.pos+int64(k)
	}
	return true
}

// Kinds of streamFrame.
const (
	frameOther = iota
	frameChunk
	frameJoined
	frameEnd
	frameError
)

// streamFrame is what a reader takes from a frame of the edge.
type streamFrame struct {
	kind   int
	offset int64  // meta.offset of a chunk or an end: the byte after it
	text   []byte // a chunk's text; an error's or end's frame
}

var (
	chunkPrefix  = []byte(`{"type":"` + envelope.TypeStreamChunk + `"`)
	joinedPrefix = []byte(`{"type":"` + envelope.TypeStreamJoined + `"`)
	endPrefix    = []byte(`{"type":"` + envelope.TypeStreamEnd + `"`)
	errorPrefix  = []byte(`{"type":"` + envelope.TypeError + `"`)
	rpcErrPrefix = []byte(`{"type":"` + envelope.TypeRPCError + `"`)
	offsetKey    = []byte(`"offset":`)
	payloadKey   = []byte(`,"payload":`)
)

// parseStreamFrame reads a frame of the edge without decoding it
// whole: the edge writes "type" first and "payload" last (envelope.Encode),
// and a chunk's text is one JSON string. ok is false for a chunk or end
// without an offset or text.
func parseStreamFrame(b []byte) (f streamFrame, ok bool) {
	switch {
	case bytes.HasPrefix(b, chunkPrefix):
		f.kind = frameChunk
	case bytes.HasPrefix(b, joinedPrefix):
		return streamFrame{kind: frameJoined}, true
	case bytes.HasPrefix(b, endPrefix):
		f.kind, f.text = frameEnd, b
	case bytes.HasPrefix(b, errorPrefix), bytes.HasPrefix(b, rpcErrPrefix): // a join's refusal has its correlationId: RPC_ERROR
		return streamFrame{kind: frameError, text: b}, true
	default:
		return streamFrame{kind: frameOther}, true
	}
	p := bytes.LastIndex(b, payloadKey)
	if p < 0 {
		return f, false
	}
	i := bytes.Index(b[:p], offsetKey)
	if i < 0 {
		return f, false
	}
	off, _, ok := leadingInt(b[i+len(offsetKey) : p])
	if !ok {
		return f, false
	}
	f.offset = off
	if f.kind == frameEnd {
		return f, true
	}
	s := bytes.TrimSuffix(b[p+len(payloadKey):], []byte("}"))
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return f, false
	}
	if raw := s[1 : len(s)-1]; bytes.IndexByte(raw, '\\') < 0 && bytes.IndexByte(raw, '"') < 0 {
		f.text = raw
		return f, true
	}
	var text string
	if err := json.Unmarshal(s, &text); err != nil {
		return f, false
	}
	f.text = []byte(text)
	return f, true
}

// streamJoinFrame is the $stream.join of stream id from offset.
func streamJoinFrame(id string, offset int64) []byte {
	b := []byte(`{"type":"` + envelope.TypeStreamJoin + `","meta":{"correlationId":"sj"},"payload":{"stream":`)
	b = strconv.AppendQuote(b, id)
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, offset, 10)
	return append(b, "}}"...)
}

// withUser adds ?user=<user> to a WebSocket URL: a dev-mode edge takes it
// as the connection's user.
func withUser(rawURL, user string) string {
	if strings.Contains(rawURL, "?") {
		return rawURL + "&user=" + user
	}
	return rawURL + "?user=" + user
}

// chunkReader is one connection reading one stream (the streams
// scenario). Its read loop is the only user of clock and lat; read them
// after the loop has ended.
type chunkReader struct {
	conn   *gws.Conn
	joined chan struct{} // closed at $stream.joined
	failed chan string   // the first error before it
	state  atomic.Int32  // 0 joining, 1 joined, 2 failed
	ended  atomic.Bool   // $stream.end came
	closed atomic.Bool   // closed by the server or the network, not by us
	byUs   atomic.Bool

	clock  *chunkClock
	lo, hi int64           // chunk numbers in [lo, hi) are measured
	got    atomic.Int64    // measured chunks received
	lat    []time.Duration // their latencies
	gaps   atomic.Int64    // chunk frames that did not start where the last ended
	bad    atomic.Int64    // frames that did not parse, errors after the join
}

func newChunkReader(size int, lo, hi int64) *chunkReader {
	return &chunkReader{
		joined: make(chan struct{}), failed: make(chan string, 1),
		clock: newChunkClock(size, 0), lo: lo, hi: hi,
		lat: make([]time.Duration, 0, hi-lo),
	}
}

func (r *chunkReader) OnOpen(*gws.Conn) {}
func (r *chunkReader) OnClose(*gws.Conn, error) {
	if !r.byUs.Load() {
		r.closed.Store(true)
	}
}
func (r *chunkReader) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (r *chunkReader) OnPong(*gws.Conn, []byte)     {}

func (r *chunkReader) OnMessage(_ *gws.Conn, msg *gws.Message) {
	now := time.Now().UnixNano()
	defer msg.Close()
	f, ok := parseStreamFrame(msg.Bytes())
	if !ok {
		r.bad.Add(1)
		return
	}
	switch f.kind {
	case frameChunk:
		if !r.clock.feed(f.offset-int64(len(f.text)), f.text, func(t, n int64) {
			if n >= r.lo && n < r.hi {
				r.lat = append(r.lat, time.Duration(now-t))
				r.got.Add(1)
			}
		}) {
			r.gaps.Add(1)
		}
	case frameJoined:
		if r.state.CompareAndSwap(0, 1) {
			close(r.joined)
		}
	case frameEnd:
		r.ended.Store(true)
	case frameError:
		if r.state.CompareAndSwap(0, 2) {
			r.failed <- "join: " + truncate(string(f.text), 160)
		} else {
			r.bad.Add(1)
		}
	}
}

// awaitJoined waits for the reader's $stream.joined.
func (r *chunkReader) awaitJoined(ctx context.Context) error {
	t := time.NewTimer(joinTimeout)
	defer t.Stop()
	select {
	case <-r.joined:
		return nil
	case reason := <-r.failed:
		return errors.New(reason)
	case <-t.C:
		return errors.New("join: no $stream.joined in time")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jsState is the size of the streams stream.
type jsState struct{ bytes, msgs uint64 }

func streamsState(ctx context.Context, js jetstream.JetStream, name string) (jsState, error) {
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return jsState{}, fmt.Errorf("bench: stream %s (is the edge run with --streams?): %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return jsState{}, fmt.Errorf("bench: stream %s: info: %w", name, err)
	}
	return jsState{info.State.Bytes, info.State.Msgs}, nil
}

// streamsPerConn is how many streams share one producer NATS
// connection, and streamsPerTicker one writing goroutine.
const (
	streamsPerConn   = 250
	streamsPerTicker = 50
)

// runStreamLoad opens sl.Streams streams with the Go SDK's StreamWriter,
// joins a reader to each, writes sl.ChunkRate chunks per second to each
// for Warmup+Duration, and measures the chunks of the window; then ends
// every stream and reads what JetStream holds before and after.
func runStreamLoad(ctx context.Context, cfg *Config, sl *StreamLoad, t *target, run int) (*Result, error) {
	n := sl.Streams
	if err := checkServerFiles(t.pid, n); err != nil {
		return nil, err
	}
	d, err := newDialer(t.url, cfg.SourceAddrs)
	if err != nil {
		return nil, err
	}
	ns, err := envelope.NewNamespace(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	var ncs []*nats.Conn
	defer func() {
		for _, nc := range ncs {
			nc.Close()
		}
	}()
	pubs := make([]*worker.Publisher, 0, (n+streamsPerConn-1)/streamsPerConn)
	for range cap(pubs) {
		nc, err := nats.Connect(cfg.NATSURL, nats.Name("natter-bench-producer"), nats.Timeout(5*time.Second),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil { // nil: closed by us
					fmt.Fprintf(cfg.Log, "bench: streams: a producer's NATS connection dropped: %v\n", err)
				}
			}),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				fmt.Fprintf(cfg.Log, "bench: streams: a producer's NATS connection: %v\n", err)
			}))
		if err != nil {
			return nil, fmt.Errorf("bench: connect NATS %s (-nats: the edge's NATS): %w", cfg.NATSURL, err)
		}
		ncs = append(ncs, nc)
		pubs = append(pubs, worker.NewPublisher(nc, ns))
	}
	js, err := jetstream.New(ncs[0])
	if err != nil {
		return nil, err
	}
	js0, err := streamsState(ctx, js, ns.StreamsStream())
	if err != nil {
		return nil, err
	}

	// Open the streams, then join a reader to each.
	writers := make([]*worker.StreamWriter, n)
	var errs errorCounts
	parallel(n, cfg.DialConcurrency, func(i int) {
		if ctx.Err() != nil {
			return
		}
		w, err := pubs[i/streamsPerConn].OpenStream(ctx, worker.StreamTo{User: "u" + strconv.Itoa(i)})
		if err != nil {
			errs.add("open: " + err.Error())
			return
		}
		writers[i] = w
	})
	defer func() {
		for _, w := range writers {
			if w != nil {
				_ = w.Close() // a second Close returns the first's result
			}
		}
	}()
	if k := errs.total(); k > 0 {
		return nil, fmt.Errorf("bench: streams: %d of %d streams did not open: %s", k, n, errs.String())
	}
	interval := time.Second / time.Duration(sl.ChunkRate)
	warm := int64(cfg.Warmup / interval)
	measured := int64(cfg.Duration / interval)
	if measured < 1 {
		return nil, fmt.Errorf("%w: chunk-rate x duration gives no chunk to measure", ErrInvalidConfig)
	}
	nr := n // readers
	if sl.NoReaders {
		nr = 0
	}
	readers := make([]*chunkReader, nr)
	var loops sync.WaitGroup
	defer func() {
		for _, r := range readers {
			if r != nil && r.conn != nil {
				r.byUs.Store(true)
				_ = r.conn.WriteClose(1000, nil)
			}
		}
		waitBounded(&loops, closeWait)
	}()
	dial0 := time.Now()
	parallel(nr, cfg.DialConcurrency, func(i int) {
		if ctx.Err() != nil {
			return
		}
		r := newChunkReader(sl.ChunkSize, warm, warm+measured)
		dd := *d
		dd.url = withUser(d.url, "u"+strconv.Itoa(i))
		conn, err := dd.dial(i, r, &loops, nil)
		if err != nil {
			errs.add("dial: " + errorKind(err))
			return
		}
		r.conn = conn
		readers[i] = r
		if err := conn.WriteMessage(gws.OpcodeText, streamJoinFrame(writers[i].ID(), 0)); err != nil {
			errs.add("join: write: " + errorKind(err))
			return
		}
		if err := r.awaitJoined(ctx); err != nil {
			errs.add(err.Error())
		}
	})
	dialWall := time.Since(dial0)
	if k := errs.total(); k > 0 {
		return nil, fmt.Errorf("bench: streams: %d of %d readers failed: %s", k, n, errs.String())
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	// Write: one goroutine per streamsPerTicker streams, their ticks
	// spread over one interval.
	start := time.Now().Add(100 * time.Millisecond)
	ticks := warm + measured
	groups := (n + streamsPerTicker - 1) / streamsPerTicker
	var lagNs, writeErrs, written atomic.Int64
	pctx, cancelPub := context.WithCancel(ctx)
	var writing sync.WaitGroup
	for g := range groups {
		ws := writers[g*streamsPerTicker : min(n, (g+1)*streamsPerTicker)]
		first := start.Add(interval * time.Duration(g) / time.Duration(groups))
		writing.Go(func() {
			buf := make([]byte, 0, sl.ChunkSize)
			for k := range ticks {
				due := first.Add(time.Duration(k) * interval)
				if wait := time.Until(due); wait > 0 {
					if !sleepCtx(pctx, wait) {
						return
					}
				} else {
					storeMax(&lagNs, int64(-wait))
				}
				for _, w := range ws {
					buf = appendChunk(buf[:0], time.Now().UnixNano(), k, sl.ChunkSize)
					if _, err := w.Write(buf); err != nil {
						writeErrs.Add(1)
					} else {
						written.Add(1)
					}
				}
			}
		})
	}
	stopWriting := func() {
		cancelPub()
		writing.Wait()
	}
	defer stopWriting()

	if !sleepCtx(ctx, time.Until(start.Add(cfg.Warmup))) {
		return nil, ctx.Err()
	}
	s0, err := sampleProc(t.pid)
	if err != nil {
		return nil, err
	}
	b0 := selfCPUSeconds()
	w0 := time.Now()
	expected := int64(nr) * measured
	got := func() int64 {
		var k int64
		for _, r := range readers {
			k += r.got.Load()
		}
		return k
	}
	for deadline := start.Add(cfg.Warmup + cfg.Duration + drainWait); (nr == 0 || got() < expected) && time.Now().Before(deadline); {
		if !sleepCtx(ctx, 5*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	s1, err := sampleProc(t.pid)
	b1 := selfCPUSeconds()
	wall := time.Since(w0)
	if err != nil {
		return nil, err
	}
	delivered := got()
	progress, last := time.Now(), delivered
	for deadline := progress.Add(lateWait); last < expected && time.Since(progress) < time.Second && time.Now().Before(deadline); {
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return nil, ctx.Err()
		}
		if k := got(); k != last {
			progress, last = time.Now(), k
		}
	}
	stopWriting() // every tick is written by now, unless the writers fell far behind
	jsOpen, err := streamsState(ctx, js, ns.StreamsStream())
	if err != nil {
		return nil, err
	}

	// End every stream (the rollup), and wait for the readers' ends.
	c0 := time.Now()
	// Close fails with ErrStreamEnded when JetStream refused its rollup
	// because the subject's last message is not its last chunk: an edge
	// ended the stream for it (it thought the producer gone), or an
	// earlier attempt of the same rollup was stored (nats-server checks
	// the expected last sequence before the message id). The stored end
	// tells which.
	var refused, refusedOwn atomic.Int64
	var endedAs errorCounts
	parallel(n, cfg.DialConcurrency, func(i int) {
		err := writers[i].Close()
		switch {
		case errors.Is(err, worker.ErrStreamEnded):
			refused.Add(1)
			how, own := endedHow(ctx, js, ns, writers[i].ID())
			if own {
				refusedOwn.Add(1)
			}
			endedAs.add(how)
		case err != nil:
			errs.add("close: " + err.Error())
		}
	})
	closeWall := time.Since(c0)
	if k := errs.total(); k > 0 {
		fmt.Fprintf(cfg.Log, "bench: streams: %d of %d streams did not end: %s\n", k, n, errs.String())
	}
	if k := endedAs.total(); k > 0 {
		fmt.Fprintf(cfg.Log, "bench: streams: Close of %d of %d streams failed with ErrStreamEnded; their stored ends: %s\n", k, n, endedAs.String())
	}
	ended := func() int {
		k := 0
		for _, r := range readers {
			if r.ended.Load() {
				k++
			}
		}
		return k
	}
	for deadline := time.Now().Add(closeWait); ended() < nr && time.Now().Before(deadline); {
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	endWall := time.Since(c0)
	jsEnd, err := streamsState(ctx, js, ns.StreamsStream())
	if err != nil {
		return nil, err
	}
	nEnded := ended()
	closed := 0
	for _, r := range readers {
		if r.closed.Load() {
			closed++
		}
	}
	for _, r := range readers {
		r.byUs.Store(true)
		_ = r.conn.WriteClose(1000, nil)
	}
	waitBounded(&loops, closeWait)
	var lat []time.Duration
	var gaps, bad int64
	for _, r := range readers {
		lat = append(lat, r.lat...)
		gaps += r.gaps.Load()
		bad += r.bad.Load() + r.clock.bad
	}
	slices.Sort(lat)
	late := int64(len(lat)) - delivered
	serverCPU := s1.cpuSeconds() - s0.cpuSeconds()

	var l line
	l.add("scenario", ScenarioStreams)
	l.add("server", t.name)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("streams", int64(n))
	l.int("readers", int64(nr))
	l.add("chunk_rate", strconv.Itoa(sl.ChunkRate)+"/s")
	l.int("chunk_bytes", int64(sl.ChunkSize))
	l.add("duration", cfg.Duration.String())
	l.num("join_s", dialWall.Seconds(), 2, "")
	l.int("expected", expected)
	l.int("delivered", delivered)
	l.int("late", late)
	l.int("lost", expected-delivered-late)
	l.int("gaps", gaps)
	l.int("bad", bad)
	l.int("write_errors", writeErrs.Load())
	l.int("closed", int64(closed))
	l.num("chunks_per_s", float64(delivered)/cfg.Duration.Seconds(), 0, "")
	l.ms("p50", percentile(lat, 50))
	l.ms("p99", percentile(lat, 99))
	l.ms("max", percentile(lat, 100))
	l.ms("pub_lag_max", time.Duration(lagNs.Load()))
	l.num("server_cpu_s", serverCPU, 2, "")
	l.num("server_cpu_pct", serverCPU/wall.Seconds()*100, 0, "")
	if delivered > 0 {
		l.num("cpu_s_per_million", serverCPU/float64(delivered)*1e6, 2, "")
	} else {
		l.add("cpu_s_per_million", "NaN")
	}
	l.num("cpu_s_per_million_written", serverCPU/float64(int64(n)*measured)*1e6, 2, "")
	l.num("bench_cpu_s", b1-b0, 2, "")
	l.int("written", written.Load())
	chunkMsgs := int64(jsOpen.msgs) - int64(js0.msgs) - int64(n) // less the opens
	l.int("chunk_msgs", chunkMsgs)
	l.num("chunks_per_msg", float64(written.Load())/float64(chunkMsgs), 2, "")
	l.num("js_kib_open", kib(jsOpen.bytes-min(js0.bytes, jsOpen.bytes)), 0, "")
	l.int("js_msgs_open", int64(jsOpen.msgs)-int64(js0.msgs))
	l.num("js_kib_ended", kib(jsEnd.bytes-min(js0.bytes, jsEnd.bytes)), 0, "")
	l.int("js_msgs_ended", int64(jsEnd.msgs)-int64(js0.msgs))
	l.num("end_s", closeWall.Seconds(), 2, "")
	l.int("ended", int64(nEnded))
	l.int("end_refused", refused.Load())
	l.int("end_refused_own", refusedOwn.Load())
	l.num("all_ended_s", endWall.Seconds(), 2, "")
	return &Result{Scenario: ScenarioStreams, Server: t.name, Fields: l.fields, Latencies: lat}, nil
}

// storeMax raises v to x when x is larger.
func storeMax(v *atomic.Int64, x int64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}

// endedHow describes the last message stream id has (event, code,
// message id), and reports whether it is the producer's own end (its
// message id ends in .end, as the StreamWriter writes it).
func endedHow(ctx context.Context, js jetstream.JetStream, ns envelope.Namespace, id string) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	subj, err := ns.Stream(id)
	if err != nil {
		return err.Error(), false
	}
	s, err := js.Stream(ctx, ns.StreamsStream())
	if err != nil {
		return "read the end: " + err.Error(), false
	}
	m, err := s.GetLastMsgForSubject(ctx, subj.String())
	if err != nil {
		return "read the end: " + err.Error(), false
	}
	h := m.Header
	// The StreamWriter's end has the message id <nonce>.end (<id>.end
	// before 2400837); an edge's end has none.
	own := strings.HasSuffix(h.Get(jetstream.MsgIDHeader), ".end")
	how := h.Get(envelope.HeaderStream)
	if c := h.Get(envelope.HeaderStreamCode); c != "" {
		how += " " + c
	}
	if own {
		how += ", the producer's own (Nats-Msg-Id " + strconv.Quote(h.Get(jetstream.MsgIDHeader)) + ")"
	} else {
		how += ", Nats-Msg-Id " + strconv.Quote(h.Get(jetstream.MsgIDHeader))
	}
	return how, own
}

func kib(b uint64) float64 { return float64(b) / 1024 }

// parallel calls fn(0..n-1) on at most workers goroutines and waits.
func parallel(n, workers int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}
