package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

const (
	dialTimeout      = 5 * time.Second  // TCP connect
	handshakeTimeout = 5 * time.Second  // WebSocket upgrade
	joinTimeout      = 10 * time.Second // $join until $joined
	closeWait        = 10 * time.Second // read loops ending after the close frames
)

// dialer opens WebSocket connections to one URL, spreading them over
// loopback source addresses 127.0.0.1, 127.0.0.2, ... so that per-address
// limits (ephemeral ports, the edge's per-IP caps) apply to a share only.
type dialer struct {
	url   string
	addrs []net.IP // nil: let the kernel choose
	wire  string   // WireJSON or WireProtobuf
}

func newDialer(rawURL string, sourceAddrs int) (*dialer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: url: %v", ErrInvalidConfig, err)
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("%w: url %q: want ws://", ErrInvalidConfig, rawURL)
	}
	d := &dialer{url: rawURL, wire: WireJSON}
	if sourceAddrs <= 1 {
		return d, nil
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%w: -source-addrs %d needs a 127.x.x.x URL host, not %q (or use -source-addrs 1)", ErrInvalidConfig, sourceAddrs, u.Hostname())
	}
	if sourceAddrs > 254 {
		return nil, fmt.Errorf("%w: at most 254 source addresses", ErrInvalidConfig)
	}
	for i := range sourceAddrs {
		d.addrs = append(d.addrs, net.IPv4(127, 0, 0, byte(1+i)))
	}
	return d, nil
}

// dial opens connection number i and starts its read loop, which ends
// when the connection closes; wg counts it. On the protobuf wire it offers
// the subprotocol natter.protobuf. With read not nil, every byte read from
// the socket (handshake response, frame headers and payloads) is added to
// it.
func (d *dialer) dial(i int, h gws.Event, wg *sync.WaitGroup, read *atomic.Int64) (*gws.Conn, error) {
	opt := &gws.ClientOption{Addr: d.url, HandshakeTimeout: handshakeTimeout}
	if d.wire == WireProtobuf {
		opt.RequestHeader = http.Header{}
		opt.RequestHeader.Set("Sec-WebSocket-Protocol", subprotocolProtobuf)
	}
	nd := &net.Dialer{Timeout: dialTimeout}
	if d.addrs != nil {
		nd.LocalAddr = &net.TCPAddr{IP: d.addrs[i%len(d.addrs)]}
	}
	opt.NewDialer = func() (gws.Dialer, error) {
		if read != nil {
			return &countingDialer{nd, read}, nil
		}
		return nd, nil
	}
	conn, resp, err := gws.NewClient(h, opt)
	if err != nil {
		if resp != nil && resp.StatusCode != 101 {
			return nil, fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
		}
		return nil, err
	}
	if d.wire == WireProtobuf && conn.SubProtocol() != subprotocolProtobuf {
		_ = conn.NetConn().Close()
		return nil, fmt.Errorf("handshake: the server chose subprotocol %q, not %s", conn.SubProtocol(), subprotocolProtobuf)
	}
	wg.Go(conn.ReadLoop)
	return conn, nil
}

// errorKind names an error for counting: the errno or HTTP status, without
// the addresses that make every message unique.
func errorKind(err error) string {
	var errno syscall.Errno
	var ne net.Error
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// errorCounts counts failures by kind.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]int
	n  int
}

func (e *errorCounts) add(kind string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[kind]++
	e.n++
}

func (e *errorCounts) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

// String lists the kinds, most frequent first.
func (e *errorCounts) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	kinds := make([]string, 0, len(e.m))
	for k := range e.m {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return e.m[kinds[i]] > e.m[kinds[j]] })
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%d× %s", e.m[k], k))
	}
	return strings.Join(parts, "; ")
}

// member is a connection that joins a room and then counts the bench's
// tick messages. Its read loop is the only writer of lat and other; read
// them after the loop has ended.
type member struct {
	conn   *gws.Conn // nil for a fallback stream (stream)
	stream *sseStream
	proto  bool          // speaks the protobuf wire
	joined chan struct{} // closed at $joined
	failed chan string   // the first error frame before $joined
	state  atomic.Int32  // 0 joining, 1 joined, 2 failed
	closed atomic.Bool   // closed by the server or the network, not by us
	byUs   atomic.Bool

	// Tick counting: sequence numbers in [lo, hi) are measured.
	lo, hi int64
	got    atomic.Int64    // measured ticks received
	lat    []time.Duration // their latencies
}

func newMember(lo, hi int64, proto bool) *member {
	return &member{
		proto:  proto,
		joined: make(chan struct{}), failed: make(chan string, 1),
		lo: lo, hi: hi, lat: make([]time.Duration, 0, hi-lo),
	}
}

var (
	tickKey      = []byte(`{"t":`)
	seqKey       = []byte(`,"n":`)
	joinedKey    = []byte(`"$joined"`)
	connectedKey = []byte(`"$connected"`)
)

func (m *member) OnOpen(*gws.Conn) {}
func (m *member) OnClose(*gws.Conn, error) {
	if !m.byUs.Load() {
		m.closed.Store(true)
	}
}
func (m *member) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (m *member) OnPong(*gws.Conn, []byte)     {}

// OnMessage reads a tick's send time and sequence number with two
// bytes.Index calls and no decoding: the bench shares the machine with the
// server, so its cost per message is kept small.
func (m *member) OnMessage(_ *gws.Conn, msg *gws.Message) {
	now := time.Now().UnixNano()
	b := msg.Bytes()
	if m.proto {
		m.onProto(now, b)
		msg.Close()
		return
	}
	m.onText(now, b)
	msg.Close()
}

// onText reads one JSON envelope received at now: a WebSocket text
// frame, or a fallback stream's event.
func (m *member) onText(now int64, b []byte) {
	if i := bytes.Index(b, tickKey); i >= 0 {
		t, rest, ok1 := leadingInt(b[i+len(tickKey):])
		n, _, ok2 := int64(0), rest, false
		if j := bytes.Index(rest, seqKey); j >= 0 {
			n, _, ok2 = leadingInt(rest[j+len(seqKey):])
		}
		if ok1 && ok2 {
			m.tick(now, t, n)
		}
		return
	}
	m.joining(bytes.Contains(b, connectedKey), bytes.Contains(b, joinedKey), b)
}

// tick counts a tick received at now.
func (m *member) tick(now, t, n int64) {
	if n >= m.lo && n < m.hi {
		m.lat = append(m.lat, time.Duration(now-t))
		m.got.Add(1)
	}
}

// joining handles a frame that is not a tick while the member joins:
// $connected is skipped, $joined ends the join, anything else fails it.
func (m *member) joining(connected, joined bool, b []byte) {
	if m.state.Load() != 0 || connected {
		return
	}
	if joined {
		if m.state.CompareAndSwap(0, 1) {
			close(m.joined)
		}
	} else if m.state.CompareAndSwap(0, 2) {
		m.failed <- "join: " + truncate(fmt.Sprintf("%q", b), 120)
	}
}

// leadingInt parses the decimal integer at the start of b.
func leadingInt(b []byte) (int64, []byte, bool) {
	var n int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	return n, b[i:], i > 0
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// joinFrame is the $join every member sends, as the clients do.
func joinFrame(room string) string {
	return `{"type":"$join","meta":{"correlationId":"j"},"payload":{"room":` + strconv.Quote(room) + `}}`
}

// pool is a set of members and the read loops they run.
type pool struct {
	room    string // the room the members join
	members []*member
	loops   sync.WaitGroup
	errs    errorCounts
	first   time.Time // first dial
	last    time.Time // last $joined
}

// dialMembers connects n members with at most concurrency handshakes at a
// time; each sends $join and waits for $joined before its worker dials the
// next. Failures are counted, never retried. The members measure ticks
// with sequence numbers in [lo, hi).
func dialMembers(ctx context.Context, d *dialer, n, concurrency int, room string, lo, hi int64) *pool {
	p := &pool{room: room, members: make([]*member, n)}
	next := atomic.Int64{}
	var lastNs atomic.Int64
	frame := []byte(joinFrame(room))
	if d.wire == WireProtobuf {
		frame = protoJoinFrame(room)
	}
	p.first = time.Now()
	var workers sync.WaitGroup
	for range min(concurrency, n) {
		workers.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				m := newMember(lo, hi, d.wire == WireProtobuf)
				if err := p.join(ctx, d, i, m, frame); err != nil {
					p.errs.add(err.Error())
					continue
				}
				p.members[i] = m
				now := time.Now().UnixNano()
				for {
					old := lastNs.Load()
					if now <= old || lastNs.CompareAndSwap(old, now) {
						break
					}
				}
			}
		})
	}
	workers.Wait()
	p.last = p.first // none joined
	if ns := lastNs.Load(); ns != 0 {
		p.last = time.Unix(0, ns)
	}
	p.members = compact(p.members)
	return p
}

func compact(ms []*member) []*member {
	out := ms[:0]
	for _, m := range ms {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

func (p *pool) join(ctx context.Context, d *dialer, i int, m *member, frame []byte) error {
	if d.wire == WireSSE {
		return p.joinSSE(ctx, d, i, m)
	}
	conn, err := d.dial(i, m, &p.loops, nil)
	if err != nil {
		return fmt.Errorf("dial: %s", errorKind(err))
	}
	m.conn = conn
	op := gws.OpcodeText
	if m.proto {
		op = gws.OpcodeBinary
	}
	if err := conn.WriteMessage(op, frame); err != nil {
		m.byUs.Store(true)
		_ = conn.NetConn().Close()
		return fmt.Errorf("join: write: %s", errorKind(err))
	}
	if err := m.awaitJoined(ctx); err != nil {
		_ = conn.WriteClose(1000, nil)
		return err
	}
	return nil
}

// awaitJoined waits for the member's $joined; on failure the member is
// marked closed by us, for the caller to close.
func (m *member) awaitJoined(ctx context.Context) error {
	t := time.NewTimer(joinTimeout)
	defer t.Stop()
	var err error
	select {
	case <-m.joined:
		return nil
	case reason := <-m.failed:
		err = errors.New(reason)
	case <-t.C:
		err = errors.New("join: no $joined in time")
	case <-ctx.Done():
		err = ctx.Err()
	}
	m.byUs.Store(true)
	return err
}

// closedByServer counts members the server or the network closed.
func (p *pool) closedByServer() int {
	n := 0
	for _, m := range p.members {
		if m.closed.Load() {
			n++
		}
	}
	return n
}

// close sends every member a close frame with code 1000 and waits (bounded)
// for the read loops to end.
func (p *pool) close() {
	for _, m := range p.members {
		m.byUs.Store(true)
		if m.stream != nil {
			m.stream.stop()
			continue
		}
		_ = m.conn.WriteClose(1000, nil)
	}
	waitBounded(&p.loops, closeWait)
}

// waitBounded waits for wg, at most d; read loops end once their sockets
// close, which WriteClose does at once.
func waitBounded(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
