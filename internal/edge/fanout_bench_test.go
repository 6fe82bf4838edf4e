package edge_test

// Room fan-out benchmarks: the cost on the edge of one envelope published on
// natter.out.room.<room> reaching N local members. The edge's dispatcher
// decodes and validates it once, sets meta.room (one re-encode), builds one
// WebSocket frame, queues that shared frame on each member's bounded write
// queue, and the writer pool writes each member's queue in one non-blocking
// writev (see writer.go).
//
// How the members are connected, and why:
//
// BenchmarkRoomFanout uses real WebSockets over loopback TCP for every N, so
// the kernel write path (one write syscall per frame per connection, a large
// part of the real cost of a delivery) is measured. The open-file limit
// is 20,000, soft and hard, so 10,000 connections with both ends in one
// process (20,000 descriptors, plus NATS and the listeners) do not fit. The
// clients therefore run in a child process: this test binary re-executed to
// run TestFanoutClientProcess, the pattern of os/exec's own helper-process
// tests. Each process holds about 10,000 descriptors. The child dials N gws
// clients, joins each to the room with a $join frame, checks every frame
// byte for byte against the expected one and counts them; the parent asks
// it over a pipe to report once a count is reached. The same code runs for
// N = 1, 100 and 10,000, so the three results compare. A side effect is
// that allocs/op and B/op count only this process: the edge, the publisher
// and the embedded nats-server, not the clients. CPU is still shared: the
// machine's cores also run the child's reads.
//
// In-memory pipes were the alternative: no descriptors, but they skip the
// kernel, and their client ends would run and allocate in the measured
// process. BenchmarkRoomFanoutEncode uses the same idea for what it is good
// at: it replaces each socket with a sink that counts and checks frames, to
// show the edge's own share of the work. It goes through the public API
// only (Edge.ServeHTTP with a hijackable ResponseWriter), so the upgrade,
// the hub, the queues and gws's frame writes are the real ones. The NATS
// callback alone (decode, re-encode, enqueue) cannot be isolated from
// package edge_test, and an in-package test cannot use testenv (it imports
// edge), so no benchmark measures that step alone.
//
// Both benchmarks publish with a plain nats.Conn and keep up to two batches
// of messages in flight, waiting for the deliveries of the older batch
// before publishing more. They measure delivery throughput, not the latency
// of one message. A batch is about 10,000 deliveries, at most 1,000 messages;
// two batches of frames per member stay far below the 4 MiB write queue, so
// no member is closed as a slow consumer (the benchmark fails if one is).
// The deliveries of the last batch are timed too.
//
//	go test -run='^$' -bench=BenchmarkRoomFanout -benchmem -benchtime=2s ./internal/edge

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
)

// fanoutSizes are the room sizes benchmarked.
var fanoutSizes = []int{1, 100, 10_000}

const fanoutRoom = "bench"

// fanoutBody is what a worker publishes to the room: a chat message without
// meta.room, so the edge sets it and re-encodes once per message.
var fanoutBody = []byte(`{"type":"chat.message","meta":{"timestamp":1730450000000},"payload":{"room":"bench","user":"alice","text":"The quick brown fox jumps over the lazy dog, twice over."}}`)

// fanoutJoin is the $join a member sends.
var fanoutJoin = []byte(`{"type":"$join","payload":{"room":"` + fanoutRoom + `"}}`)

// Environment of the client process.
const (
	fanoutEnvURL     = "NATTER_FANOUT_URL"
	fanoutEnvMembers = "NATTER_FANOUT_MEMBERS"
	fanoutEnvFrame   = "NATTER_FANOUT_FRAME" // base64 of the expected frame
)

// fanoutTimeout bounds every wait of these benchmarks.
const fanoutTimeout = 60 * time.Second

// BenchmarkRoomFanout times room deliveries to N real WebSocket clients
// over loopback TCP, held by a child process. One op is one message, so
// ns/op is the time per message for all N members; ns/delivery and
// deliveries/s divide by the deliveries. The embedded nats-server and the
// publisher run in this process too, so their work is in the numbers, as in
// single-binary mode.
//
// Setup and teardown are untimed: with b.Loop the function runs once, the
// timer is reset at the loop's first call and stopped at its end; cleanup
// (clients, then the edge, then NATS) runs after.
func BenchmarkRoomFanout(b *testing.B) {
	for _, n := range fanoutSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			e, pub := fanoutEdge(b)
			frame := fanoutFrame(b)
			clients := startFanoutClients(b, e.URL, n, frame)
			runFanout(b, e, pub, n, frame, clients.await)
		})
	}
}

// BenchmarkRoomFanoutEncode is BenchmarkRoomFanout with each socket replaced
// by an in-memory sink: the edge's own work (NATS callback, decode,
// re-encode, enqueue) without the kernel and the clients. The sinks' byte-
// for-byte check of every frame is timed with it. A sink has no file
// descriptor, so its frames take the fallback path: each connection's own
// writer goroutine with blocking writes, as every connection did before
// the writer pool; compare it with BenchmarkRoomFanout for the pool.
func BenchmarkRoomFanoutEncode(b *testing.B) {
	for _, n := range fanoutSizes {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			e, pub := fanoutEdge(b)
			frame := fanoutFrame(b)
			sinks := newSinkSet(frame)
			for range n {
				sinks.connect(b, e)
			}
			if _, ok := sinks.joined.wait(int64(n), fanoutTimeout); !ok {
				b.Fatalf("only %d of %d sinks joined", sinks.joined.n.Load(), n)
			}
			runFanout(b, e, pub, n, frame, func(target int64) {
				if got, ok := sinks.delivered.wait(target, fanoutTimeout); !ok {
					b.Fatalf("%d of %d deliveries after %s", got, target, fanoutTimeout)
				}
				if bad := sinks.bad.Load(); bad > 0 {
					b.Fatalf("%d unexpected writes to sinks", bad)
				}
			})
		})
	}
}

// fanoutEdge starts an embedded nats-server, an edge and a publisher. All
// are stopped by b.Cleanup.
func fanoutEdge(b *testing.B) (*testenv.Edge, *nats.Conn) {
	b.Helper()
	srv := testenv.NATS(b)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(b, srv.ClientURL())
	cfg.Auth.Anonymous = true
	cfg.Auth.PublicRooms = []string{"*"}
	cfg.WebSocket.WriteQueueBytes = 4 << 20
	// No pings during the run: members only read, and 10,000 pings plus
	// pongs would land in the measurement.
	cfg.WebSocket.PingInterval = time.Hour
	cfg.WebSocket.PongTimeout = time.Hour
	// Loosens production: one client IP opens all 10,000 members at once.
	cfg.Limits.HandshakeRate = 0
	// Not under measurement: a member's join would write to presence.
	cfg.Presence = nil
	e := testenv.StartEdge(b, cfg)
	return e, testenv.Connect(b, srv.ClientURL())
}

// fanoutFrame is the frame every member must receive: fanoutBody with
// meta.room set.
func fanoutFrame(b *testing.B) []byte {
	b.Helper()
	env, err := envelope.Decode(fanoutBody, 0)
	if err != nil {
		b.Fatal(err)
	}
	env.Meta.Room = fanoutRoom
	frame, err := envelope.Encode(env)
	if err != nil {
		b.Fatal(err)
	}
	return frame
}

// runFanout publishes to the room once per iteration and times the
// deliveries to all members. await(target) returns once members received
// target frames in total, counted from the start.
func runFanout(b *testing.B, e *testenv.Edge, pub *nats.Conn, members int, frame []byte, await func(target int64)) {
	b.Helper()
	subj, err := envelope.DefaultNamespace.Room(fanoutRoom)
	if err != nil {
		b.Fatal(err)
	}
	if got := e.Stats().Connections; got != int64(members) {
		b.Fatalf("edge has %d connections, want %d", got, members)
	}
	batch := min(max(10_000/members, 1), 1000)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame) * members))

	sent, done := 0, 0 // messages published; messages whose deliveries were awaited
	for b.Loop() {
		if err := pub.Publish(subj.String(), fanoutBody); err != nil {
			b.Fatal(err)
		}
		sent++
		// Up to two batches in flight; fewer early on, so that the time
		// b.Loop sees when it sizes the run includes the deliveries.
		if limit := min(2*batch, max(sent/2, 1)); sent-done >= limit {
			done = sent - limit/2
			await(int64(members * done))
		}
	}
	// b.Loop stopped the timer; the deliveries still in flight are part of
	// the work of the messages already counted.
	b.StartTimer()
	await(int64(members * sent))
	b.StopTimer()

	st := e.Stats()
	if st.SlowConsumerCloses > 0 || st.OutboundDropped > 0 || st.Connections != int64(members) {
		b.Fatalf("edge stats after the run: %+v", st)
	}
	deliveries := float64(members) * float64(sent)
	elapsed := b.Elapsed()
	b.ReportMetric(float64(elapsed.Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(deliveries/elapsed.Seconds(), "deliveries/s")
}

// counter counts frames and wakes one waiter when a target is reached.
type counter struct {
	n      atomic.Int64
	target atomic.Int64
	wake   chan struct{}
}

func newCounter() *counter {
	c := &counter{wake: make(chan struct{}, 1)}
	c.target.Store(math.MaxInt64)
	return c
}

func (c *counter) add() {
	if c.n.Add(1) >= c.target.Load() {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// wait returns the count once it reaches target, or false after timeout.
// One goroutine waits at a time.
func (c *counter) wait(target int64, timeout time.Duration) (int64, bool) {
	c.target.Store(target)
	defer c.target.Store(math.MaxInt64)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if n := c.n.Load(); n >= target {
			return n, true
		}
		select {
		case <-c.wake:
		case <-timer.C:
			return c.n.Load(), false
		}
	}
}

// fanoutClients is the child process holding the WebSocket clients.
type fanoutClients struct {
	b       *testing.B
	cmd     *exec.Cmd
	out     bytes.Buffer // the child's stdout and stderr; read after exit
	cmds    *os.File     // to the child
	replies *os.File     // from the child
	r       *bufio.Reader
	exited  chan struct{}
	stopped sync.Once
}

// startFanoutClients starts the client process with n members of the room
// and waits until all of them joined.
func startFanoutClients(b *testing.B, url string, n int, frame []byte) *fanoutClients {
	b.Helper()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	p := &fanoutClients{b: b, cmds: cmdW, replies: repR, r: bufio.NewReader(repR), exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^TestFanoutClientProcess$", "-test.count=1")
	p.cmd.Env = append(os.Environ(),
		fanoutEnvURL+"="+url,
		fanoutEnvMembers+"="+strconv.Itoa(n),
		fanoutEnvFrame+"="+base64.StdEncoding.EncodeToString(frame),
	)
	p.cmd.ExtraFiles = []*os.File{cmdR, repW} // fd 3 and 4
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	err = p.cmd.Start()
	_ = cmdR.Close()
	_ = repW.Close()
	if err != nil {
		_ = cmdW.Close()
		_ = repR.Close()
		b.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	b.Cleanup(p.stop)
	if _, err := p.reply("ready"); err != nil {
		p.fatal(err)
	}
	return p
}

// await asks the child to report once its members received target frames.
func (p *fanoutClients) await(target int64) {
	if _, err := fmt.Fprintf(p.cmds, "wait %d\n", target); err != nil {
		p.fatal(err)
	}
	if _, err := p.reply("ok"); err != nil {
		p.fatal(err)
	}
}

// reply reads one reply line, which must start with want.
func (p *fanoutClients) reply(want string) (string, error) {
	_ = p.replies.SetReadDeadline(time.Now().Add(fanoutTimeout + 30*time.Second))
	line, err := p.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("client process: %w", err)
	}
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, want) {
		return "", fmt.Errorf("client process: %s", line)
	}
	return line, nil
}

// stop closes the command pipe, on which the child closes its connections
// and exits, and waits for it; it kills it if it does not exit.
func (p *fanoutClients) stop() {
	p.stopped.Do(func() {
		_ = p.cmds.Close()
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			p.b.Errorf("client process did not exit; killed it")
		}
		_ = p.replies.Close()
		if !p.cmd.ProcessState.Success() {
			p.b.Errorf("client process: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
	})
}

// fatal stops the child, which logs its output if it failed, and fails.
func (p *fanoutClients) fatal(err error) {
	p.stop()
	p.b.Fatal(err)
}

// TestFanoutClientProcess is the client side of BenchmarkRoomFanout. It
// does nothing unless started by it; see startFanoutClients.
//
// Protocol, one line each: the child answers "ready" once all members got
// their $joined; "wait <n>" gets "ok <count>" once the members received n
// room frames in all; "fail <reason>" ends it. EOF on the command pipe
// closes the connections.
func TestFanoutClientProcess(t *testing.T) {
	url := os.Getenv(fanoutEnvURL)
	if url == "" {
		return
	}
	cmds, replies := os.NewFile(3, "commands"), os.NewFile(4, "replies")
	defer replies.Close()
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintf(replies, "fail %s\n", msg)
		t.Fatal(msg)
	}
	n, err := strconv.Atoi(os.Getenv(fanoutEnvMembers))
	if err != nil {
		fail("members: %v", err)
	}
	frame, err := base64.StdEncoding.DecodeString(os.Getenv(fanoutEnvFrame))
	if err != nil {
		fail("frame: %v", err)
	}

	joined, delivered := newCounter(), newCounter()
	var bad atomic.Int64
	conns := make([]*gws.Conn, n)
	var (
		mu      sync.Mutex
		dialErr error
	)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 { // dials in parallel, well inside the listen backlog
		wg.Go(func() {
			for i := range work {
				h := &fanoutMember{frame: frame, joined: joined, delivered: delivered, bad: &bad}
				c, _, err := gws.NewClient(h, &gws.ClientOption{Addr: url, HandshakeTimeout: 10 * time.Second})
				if err == nil {
					conns[i] = c
					go c.ReadLoop()
					err = c.WriteMessage(gws.OpcodeText, fanoutJoin)
				}
				if err != nil {
					mu.Lock()
					dialErr = cmp.Or(dialErr, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if dialErr != nil {
		fail("dial: %v", dialErr)
	}
	if got, ok := joined.wait(int64(n), fanoutTimeout); !ok {
		fail("%d of %d members joined", got, n)
	}
	if b := bad.Load(); b > 0 {
		fail("%d unexpected frames", b)
	}
	fmt.Fprintf(replies, "ready %d\n", n)

	sc := bufio.NewScanner(cmds)
	for sc.Scan() {
		target, err := strconv.ParseInt(strings.TrimPrefix(sc.Text(), "wait "), 10, 64)
		if err != nil {
			fail("command %q", sc.Text())
		}
		got, ok := delivered.wait(target, fanoutTimeout)
		if !ok {
			fail("%d of %d frames after %s", got, target, fanoutTimeout)
		}
		if b := bad.Load(); b > 0 {
			fail("%d unexpected frames", b)
		}
		fmt.Fprintf(replies, "ok %d\n", got)
	}
	for _, c := range conns {
		_ = c.NetConn().Close()
	}
	// The process exits now; the edge sees every connection end.
}

// fanoutMember is one client of the child process: after $connected its
// first frame must be $joined, every later one the room frame.
type fanoutMember struct {
	frame     []byte
	joined    *counter
	delivered *counter
	bad       *atomic.Int64
	isMember  bool // only the read loop touches it
}

func (m *fanoutMember) OnOpen(*gws.Conn)             {}
func (m *fanoutMember) OnClose(*gws.Conn, error)     {}
func (m *fanoutMember) OnPing(s *gws.Conn, p []byte) { _ = s.WritePong(p) }
func (m *fanoutMember) OnPong(*gws.Conn, []byte)     {}

func (m *fanoutMember) OnMessage(_ *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	if !m.isMember && bytes.Contains(msg.Bytes(), []byte(`"$connected"`)) {
		return // the edge's first frame
	}
	if !m.isMember {
		m.isMember = true
		if env, err := envelope.Decode(msg.Bytes(), 0); err != nil || env.Type != envelope.TypeJoined {
			m.bad.Add(1)
		}
		m.joined.add()
		return
	}
	if !bytes.Equal(msg.Bytes(), m.frame) {
		m.bad.Add(1)
	}
	m.delivered.add()
}

// sinkSet is the members of BenchmarkRoomFanoutEncode: connections whose
// client side is a sink that counts and checks what the edge writes.
type sinkSet struct {
	wire      []byte // the room frame as the edge writes it: header and payload
	joined    *counter
	delivered *counter
	bad       atomic.Int64
}

func newSinkSet(frame []byte) *sinkSet {
	// A final, unmasked text frame (server frames are never masked).
	var wire []byte
	switch n := len(frame); {
	case n < 126:
		wire = []byte{0x81, byte(n)}
	case n < 1<<16:
		wire = []byte{0x81, 126, byte(n >> 8), byte(n)}
	default:
		wire = []byte{0x81, 127, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
	wire = append(wire, frame...)
	return &sinkSet{wire: wire, joined: newCounter(), delivered: newCounter()}
}

// connect upgrades one sink connection through Edge.ServeHTTP. The sink
// sends its $join as the client's first frame.
func (s *sinkSet) connect(b *testing.B, e *testenv.Edge) {
	b.Helper()
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	r := httptest.NewRequest(http.MethodGet, e.Path(), nil)
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))

	// A masked text frame with a zero key: the payload goes as is.
	in := append([]byte{0x81, 0x80 | byte(len(fanoutJoin)), 0, 0, 0, 0}, fanoutJoin...)
	c := &sinkConn{set: s, in: in, closed: make(chan struct{})}
	w := &hijackWriter{conn: c, header: http.Header{}}
	e.ServeHTTP(w, r)
	if w.code != 0 || !c.upgraded.Load() {
		b.Fatalf("upgrade of a sink failed: status %d", w.code)
	}
}

// hijackWriter is the http.ResponseWriter of a sink's upgrade.
type hijackWriter struct {
	conn   net.Conn
	header http.Header
	code   int
}

func (w *hijackWriter) Header() http.Header         { return w.header }
func (w *hijackWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *hijackWriter) WriteHeader(code int)        { w.code = code }

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}

// sinkConn is the server end of a sink connection. Reads return the
// client's frames and then block until Close. Writes are checked and
// counted; gws writes one frame per Write.
type sinkConn struct {
	set       *sinkSet
	in        []byte // only the read loop reads
	upgraded  atomic.Bool
	isMember  atomic.Bool
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *sinkConn) Read(p []byte) (int, error) {
	if len(c.in) > 0 {
		n := copy(p, c.in)
		c.in = c.in[n:]
		return n, nil
	}
	<-c.closed
	return 0, io.EOF
}

func (c *sinkConn) Write(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	switch {
	case !c.upgraded.Load():
		if !bytes.HasPrefix(p, []byte("HTTP/1.1 101 ")) {
			c.set.bad.Add(1)
		}
		c.upgraded.Store(true)
	case len(p) < 2 || p[0] != 0x81: // not a final text frame: close, pong
	case !c.isMember.Load() && bytes.Contains(p, []byte(`"$connected"`)): // the edge's first frame
	case !c.isMember.Load():
		c.isMember.Store(true)
		c.set.joined.add()
	default:
		if !bytes.Equal(p, c.set.wire) {
			c.set.bad.Add(1)
		}
		c.set.delivered.add()
	}
	return len(p), nil
}

// CloseWrite is the edge's half-close after its close frame: the sink
// hangs up at once, as a client does.
func (c *sinkConn) CloseWrite() error { return c.Close() }

func (c *sinkConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *sinkConn) LocalAddr() net.Addr              { return sinkAddr{} }
func (c *sinkConn) RemoteAddr() net.Addr             { return sinkAddr{} }
func (c *sinkConn) SetDeadline(time.Time) error      { return nil }
func (c *sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (c *sinkConn) SetWriteDeadline(time.Time) error { return nil }

type sinkAddr struct{}

func (sinkAddr) Network() string { return "sink" }
func (sinkAddr) String() string  { return "sink" }
