package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"golang.org/x/time/rate"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/wire"
)

// session is one WebSocket connection. Its read loop runs on a goroutine
// of its own; the client's run goroutine writes to it.
type session struct {
	c  *Client
	ws *gws.Conn
	// codec converts frames on the protobuf wire; nil on the JSON wire.
	codec *wire.Codec
	done  chan struct{} // closed by OnClose, after info is set
	info  CloseInfo
	// ctrl holds frames that go before the send buffer: aborts and answers
	// to server requests. They belong to this connection only.
	ctrl   chan []byte
	ctx    context.Context // ends with the connection; Handle handlers use it
	cancel context.CancelFunc
	// lastRead is when anything last arrived, in Unix nanoseconds.
	lastRead atomic.Int64
	// lastWrite is when a message was last written; writer only.
	lastWrite time.Time
	// lim paces the messages written on this connection (Options.SendRate);
	// nil: no pacing. Writer only.
	lim *rate.Limiter
	// byClient marks a close the client started (Close).
	byClient atomic.Bool
	// welcome is closed when the edge's $connected arrives; welcomed is
	// its read goroutine's note that it did.
	welcome  chan struct{}
	welcomed bool
}

// connect makes one connection attempt: token, dial, TLS, upgrade.
func (c *Client) connect() (*session, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.HandshakeTimeout)
	defer cancel()
	hdr := c.opts.Header.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	if c.opts.Token != nil {
		tok, err := c.opts.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("client: token: %w", err)
		}
		if tok != "" {
			hdr.Set("Authorization", "Bearer "+tok)
		}
	}
	if c.codec != nil {
		// Offered alone: an edge without the binary wire refuses the
		// handshake instead of answering in JSON. Entries the
		// application offers itself (bearer.<token>) follow.
		offer := []string{wire.Protobuf}
		for _, v := range hdr.Values("Sec-WebSocket-Protocol") {
			for _, p := range strings.Split(v, ",") {
				if p = strings.TrimSpace(p); p != "" && p != wire.JSON && p != wire.Protobuf {
					offer = append(offer, p)
				}
			}
		}
		hdr.Set("Sec-WebSocket-Protocol", strings.Join(offer, ", "))
	}
	u, _ := url.Parse(c.url) // checked by New
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "wss" {
			port = "443"
		}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, err
	}
	if u.Scheme == "wss" {
		tc := tls.Client(conn, &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = tc
	}
	sctx, scancel := context.WithCancel(c.ctx)
	s := &session{c: c, codec: c.codec, done: make(chan struct{}), ctrl: make(chan []byte, ctrlQueue), ctx: sctx, cancel: scancel, welcome: make(chan struct{})}
	if c.opts.SendRate > 0 {
		// Full at first use, like the edge's (whose burst is larger by
		// default: see DefaultSendBurst).
		s.lim = rate.NewLimiter(rate.Limit(c.opts.SendRate), c.opts.SendBurst)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	ws, resp, err := gws.NewClientFromConn(s, &gws.ClientOption{
		Addr:               c.url,
		RequestHeader:      hdr,
		HandshakeTimeout:   c.opts.HandshakeTimeout,
		ReadMaxPayloadSize: maxReadSize,
		CheckUtf8Enabled:   true,
		Recovery:           gws.Recovery,
	}, conn)
	if !stop() {
		scancel()
		if err == nil {
			_ = conn.Close()
		}
		return nil, fmt.Errorf("client: handshake: %w", context.Cause(ctx))
	}
	if err != nil {
		scancel()
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
			return nil, &HandshakeError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(body))}
		}
		return nil, fmt.Errorf("client: handshake: %w", err)
	}
	if c.codec != nil && ws.SubProtocol() != wire.Protobuf {
		// gws checks only that the edge chose one of the offered entries.
		scancel()
		_ = ws.NetConn().Close()
		return nil, fmt.Errorf("client: handshake: the edge chose subprotocol %q, not %q", ws.SubProtocol(), wire.Protobuf)
	}
	s.ws = ws
	s.lastRead.Store(time.Now().UnixNano())
	go ws.ReadLoop()
	return s, nil
}

// serve waits for the edge's $connected, restores rooms and state on s,
// then writes frames until s ends. It returns why s ended and when it
// reached Open (zero: never).
func (c *Client) serve(s *session) (CloseInfo, time.Time) {
	var opened time.Time
	if c.awaitWelcome(s) && c.restore(s) {
		opened = time.Now()
		c.rejoinStreams()
		c.setState(StateOpen, CloseInfo{})
		select {
		case <-c.opened:
		default:
			close(c.opened)
		}
		c.pump(s)
	}
	select {
	case <-s.done:
	default:
		if c.ctx.Err() != nil {
			c.closeSession(s)
		}
		<-s.done
	}
	return s.info, opened
}

// awaitWelcome waits for the edge's first frame, $connected, which tells
// the connection's id (ConnID), so that the client is Open only once it
// knows it. An edge that sends none within HandshakeTimeout gets the
// connection anyway, without an id. It reports false when s ended or the
// client closed first.
func (c *Client) awaitWelcome(s *session) bool {
	t := time.NewTimer(c.opts.HandshakeTimeout)
	defer t.Stop()
	select {
	case <-s.welcome:
		return true
	case <-t.C:
		c.log.Warn("client: the edge sent no $connected; the connection id is unknown", "waited", c.opts.HandshakeTimeout)
		return true
	case <-s.done:
		return false
	case <-c.ctx.Done():
		return false
	}
}

// closeSession sends the close frame 1000 and waits for the read loop.
func (c *Client) closeSession(s *session) {
	s.byClient.Store(true)
	_ = s.ws.SetWriteDeadline(time.Now().Add(time.Second))
	_ = s.ws.WriteClose(uint16(envelope.CloseNormal), nil) // closes the socket too
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		_ = s.ws.NetConn().Close()
	}
}

// restore re-joins the remembered rooms and re-sends the presence state on
// a new connection, pipelined, and waits for the acks (at most
// RPCTimeout). A join refused for good (PERMISSION_DENIED,
// INVALID_ARGUMENT, NOT_FOUND) forgets the room; other failures and joins
// not acknowledged in time are retried in the background with backoff.
// Failures go to the log and OnError. It reports false when the connection
// ended or the client closed meanwhile.
func (c *Client) restore(s *session) bool {
	c.mu.Lock()
	type step struct {
		room string // "" for the state
		cl   *call
	}
	steps := make([]step, 0, len(c.rooms)+1)
	frames := make([][]byte, 0, len(c.rooms)+1)
	add := func(op *roomOp, typ string, payload any) {
		cid := c.nextCIDLocked()
		env, _ := envelope.New(typ, payload)
		env.Meta = envelope.Meta{CorrelationID: cid, TimeoutMs: c.opts.RPCTimeout.Milliseconds()}
		frame, err := envelope.Encode(env)
		if err != nil {
			return
		}
		cl := newCall(cid)
		cl.sess = s
		cl.op = op
		c.pending[cid] = cl
		room := ""
		if op != nil {
			room = op.room
		}
		steps = append(steps, step{room, cl})
		frames = append(frames, frame)
	}
	for room, pres := range c.rooms {
		since := c.sinceLocked(room)
		add(&roomOp{kind: opRejoin, room: room, since: since}, envelope.TypeJoin, joinPayload{Room: room, Presence: pres, Since: since})
	}
	if c.pstate != nil {
		add(nil, envelope.TypePresenceState, map[string]json.RawMessage{"state": c.pstate})
	}
	c.mu.Unlock()
	if len(steps) == 0 {
		return true
	}
	for _, f := range frames {
		if !c.write(s, f) {
			break // s ends: the loop below sees it
		}
	}
	var retry []string
	var after time.Duration
	t := time.NewTimer(c.opts.RPCTimeout)
	defer t.Stop()
	for i, st := range steps {
		select {
		case env := <-st.cl.frames:
			if err := replyError(env); err != nil {
				if st.room == "" {
					c.log.Warn("client: restoring presence state failed", "err", err)
					c.report(&BackgroundError{Op: OpRestoreState, Final: true, Err: err})
					continue
				}
				if c.rejoinFailed(st.room, err) {
					retry = append(retry, st.room)
					after = max(after, retryAfter(err))
				}
			}
		case <-st.cl.failed:
			return false
		case <-s.done:
			return false
		case <-c.ctx.Done():
			return false
		case <-t.C:
			c.log.Warn("client: re-joins not acknowledged in time", "waiting", len(steps)-i)
			c.mu.Lock()
			for _, st := range steps[i:] {
				if c.pending[st.cl.cid] == st.cl {
					delete(c.pending, st.cl.cid)
				}
			}
			c.mu.Unlock()
			for _, st := range steps[i:] {
				if st.room != "" {
					if op := st.cl.op; op != nil && op.since != nil {
						// The edge may have replayed part and gone on live:
						// what arrived cannot be told complete.
						c.mu.Lock()
						pos := c.positions[st.room]
						c.mu.Unlock()
						c.reportRecovery(&Recovery{Room: st.room, Since: *op.since, Position: pos, Rejoin: true})
					}
					c.rejoinFailed(st.room, &rpc.Error{Code: envelope.CodeDeadlineExceeded, Message: "re-join not acknowledged in time"})
					retry = append(retry, st.room)
				}
			}
			c.retryJoins(s, retry, after)
			return true
		}
	}
	c.retryJoins(s, retry, after)
	return true
}

// permanentJoinError reports whether a refused join cannot succeed by
// retrying it.
func permanentJoinError(err error) bool {
	return errors.Is(err, rpc.ErrPermissionDenied) || errors.Is(err, rpc.ErrInvalidArgument) || errors.Is(err, rpc.ErrNotFound)
}

// retryAfter returns the RetryAfter of an *rpc.Error, or 0.
func retryAfter(err error) time.Duration {
	var re *rpc.Error
	if errors.As(err, &re) {
		return re.RetryAfter
	}
	return 0
}

// rejoinFailed logs and reports a failed re-join of room, forgets the room
// when the failure is permanent, and reports whether to retry.
func (c *Client) rejoinFailed(room string, err error) (retry bool) {
	final := permanentJoinError(err)
	if final {
		c.log.Warn("client: re-join refused; the room is forgotten", "room", room, "err", err)
		c.mu.Lock()
		if c.roomOps[room] == 0 { // else a Join or Leave in flight decides
			delete(c.rooms, room)
			delete(c.positions, room)
		}
		c.mu.Unlock()
	} else {
		c.log.Warn("client: re-join failed; retrying", "room", room, "err", err)
	}
	c.report(&BackgroundError{Op: OpRejoin, Room: room, Final: final, Err: err})
	return !final
}

// sinceLocked returns the position a re-join of room starts from, nil for
// a room without one. c.mu is held.
func (c *Client) sinceLocked(room string) *Position {
	p, ok := c.positions[room]
	if !ok {
		return nil
	}
	return &p
}

// retryJoins re-joins rooms on s in the background, with backoff (no
// sooner than after), until each succeeds, fails for good, is no longer
// remembered, or s ends.
func (c *Client) retryJoins(s *session, rooms []string, after time.Duration) {
	if len(rooms) == 0 {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for n := 0; len(rooms) > 0; n++ {
			if !sleepCtx(s.ctx, max(c.backoff.Delay(n), after)) {
				return
			}
			after = 0
			var mu sync.Mutex
			var again []string
			var wg sync.WaitGroup
			for _, room := range rooms {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(s.ctx, c.opts.RPCTimeout)
					defer cancel()
					c.mu.Lock()
					pres := c.rooms[room]
					since := c.sinceLocked(room)
					c.mu.Unlock()
					op := &roomOp{kind: opRejoin, room: room, since: since}
					_, err := c.system(ctx, envelope.TypeJoin, joinPayload{Room: room, Presence: pres, Since: since}, envelope.TypeJoined, op)
					if err == nil || errors.Is(err, errRoomSettled) || s.ctx.Err() != nil {
						return
					}
					if c.rejoinFailed(room, err) {
						mu.Lock()
						again = append(again, room)
						after = max(after, retryAfter(err))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			rooms = again
		}
	}()
}

// pump writes priority frames and the send buffer to s until s ends or the
// client closes, and keeps the connection alive.
func (c *Client) pump(s *session) {
	var tick, hb <-chan time.Time
	if c.opts.KeepAlive > 0 {
		t := time.NewTicker(c.opts.KeepAlive / 4)
		defer t.Stop()
		tick = t.C
	}
	if c.opts.Heartbeat > 0 {
		t := time.NewTicker(max(c.opts.Heartbeat/2, time.Millisecond))
		defer t.Stop()
		hb = t.C
	}
	for {
		if it := c.held; it != nil {
			c.held = nil
			if !c.writeItem(s, it) {
				return
			}
			continue
		}
		select {
		case <-s.done:
			return
		case <-c.ctx.Done():
			return
		case b := <-s.ctrl:
			c.write(s, b)
		case <-hb:
			// Checked every Heartbeat/2: at most Heartbeat between two
			// messages.
			if time.Since(s.lastWrite) >= c.opts.Heartbeat/2 {
				c.write(s, heartbeatFrame)
			}
		case it := <-c.queue:
			if !c.writeItem(s, it) {
				return
			}
		case <-tick:
			idle := time.Since(time.Unix(0, s.lastRead.Load()))
			switch {
			case idle > 2*c.opts.KeepAlive:
				c.log.Info("client: no frame from the edge, dropping the connection", "idle", idle)
				_ = s.ws.NetConn().Close()
			case idle > c.opts.KeepAlive:
				_ = s.ws.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
				_ = s.ws.WritePing(nil)
			}
		}
	}
}

// heartbeatFrame keeps a connection alive under the edge's idle timeout.
var heartbeatFrame = []byte(`{"type":"` + envelope.TypeHeartbeat + `"}`)

// writeItem writes one buffered frame. A frame taken while s is already
// gone is kept for the next connection, so buffered sends are not lost to
// the race; it reports false then. A request its caller gave up on is
// skipped; a request's meta.timeoutMs is what is left of its deadline.
func (c *Client) writeItem(s *session, it *outItem) bool {
	select {
	case <-s.done:
		c.held = it
		return false
	default:
	}
	if !c.pace(s) {
		c.held = it
		return false
	}
	if it.call != nil {
		c.mu.Lock()
		live := c.pending[it.call.cid] == it.call
		if live {
			it.call.sess = s
		}
		c.mu.Unlock()
		if !live {
			// The token taken is lost; rare, and only slows down.
			return true
		}
	}
	frame := it.frame
	if it.env != nil {
		env := *it.env
		env.Meta.TimeoutMs = max(time.Until(it.deadline).Milliseconds(), 1)
		b, err := envelope.Encode(&env)
		if err != nil {
			return true // encoded once already; cannot happen
		}
		frame = b
	}
	c.writeNow(s, frame)
	return true
}

// pace waits until s's rate limiter allows one more message; it reports
// false when s ended or the client closed first.
func (c *Client) pace(s *session) bool {
	if s.lim == nil {
		return true
	}
	r := s.lim.Reserve()
	d := r.Delay()
	if d == 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
	case <-c.ctx.Done():
	}
	r.Cancel()
	return false
}

// write paces and writes one text frame; it reports false when s ended
// (or the client closed) before the frame could go.
func (c *Client) write(s *session, frame []byte) bool {
	if !c.pace(s) {
		return false
	}
	c.writeNow(s, frame)
	return true
}

// writeNow writes one JSON frame: a text frame, or on the protobuf wire
// its binary form. A failed write closes the socket; the read loop then
// ends the session.
func (c *Client) writeNow(s *session, frame []byte) {
	op := gws.OpcodeText
	if s.codec != nil {
		b, err := s.toWire(frame)
		if err != nil {
			// Every frame comes from envelope.Encode: not expected.
			c.log.Error("client: frame does not convert to protobuf; dropped", "err", err)
			return
		}
		frame, op = b, gws.OpcodeBinary
	}
	s.lastWrite = time.Now()
	_ = s.ws.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
	_ = s.ws.WriteMessage(op, frame)
}

// sendCtrl queues a priority frame for s; it waits while the queue is
// full, unless s ends.
func (s *session) sendCtrl(frame []byte) {
	select {
	case s.ctrl <- frame:
	case <-s.done:
	}
}

// failSession fails the requests written on s: their replies cannot come.
func (c *Client) failSession(s *session) {
	c.mu.Lock()
	c.connID = ""
	var lost []*call
	for cid, cl := range c.pending {
		if cl.sess == s {
			delete(c.pending, cid)
			lost = append(lost, cl)
		}
	}
	c.mu.Unlock()
	for _, cl := range lost {
		cl.fail(&rpc.Error{Code: envelope.CodeUnavailable, Message: "connection lost"})
	}
}

// gws events. They run on the session's read goroutine.

func (s *session) OnOpen(*gws.Conn) {}

func (s *session) OnClose(_ *gws.Conn, err error) {
	info := CloseInfo{Code: CloseAbnormal, Err: err}
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		info = CloseInfo{Code: envelope.CloseCode(ce.Code), Reason: string(ce.Reason)}
		if ce.Code == 0 {
			info.Code = 1005 // a close frame without a code
		}
	case s.byClient.Load():
		info = CloseInfo{Code: envelope.CloseNormal}
	}
	s.info = info
	s.cancel()
	close(s.done)
}

func (s *session) OnPing(socket *gws.Conn, payload []byte) {
	s.lastRead.Store(time.Now().UnixNano())
	_ = socket.WritePong(payload)
}

func (s *session) OnPong(*gws.Conn, []byte) {
	s.lastRead.Store(time.Now().UnixNano())
}

func (s *session) OnMessage(_ *gws.Conn, m *gws.Message) {
	s.lastRead.Store(time.Now().UnixNano())
	binary := m.Opcode == gws.OpcodeBinary
	data, ok, err := s.fromWire(binary, m.Bytes())
	if s.codec == nil {
		data = append([]byte(nil), data...) // m's buffer is reused
	}
	m.Close()
	if !ok {
		s.c.log.Debug("client: frame of the other wire dropped", "binary", binary)
		return
	}
	if err != nil {
		s.c.log.Debug("client: unconvertible binary frame dropped", "err", err)
		return
	}
	env, err := envelope.Decode(data, maxReadSize)
	if err != nil {
		s.c.log.Debug("client: undecodable frame dropped", "err", err)
		return
	}
	s.c.route(s, env)
}

// route hands a frame to the request it answers, the server request
// handler, or the callbacks.
func (c *Client) route(s *session, env *envelope.Envelope) {
	if env.Type == envelope.TypeStreamJoined {
		c.streamJoined(env)
	}
	if cid := env.Meta.CorrelationID; cid != "" {
		if c.deliverReply(env) {
			c.events.pushFrame(env, true)
			return
		}
		if strings.HasPrefix(cid, "srv-") && env.Type != envelope.TypeError && env.Type != envelope.TypeRPCError && !envelope.IsSystemType(env.Type) {
			c.serveRequest(s, env)
			c.events.pushFrame(env, true)
			return
		}
	}
	if env.Meta.Room != "" && env.Meta.Extra != nil {
		c.trackDelivery(env)
	}
	switch env.Type {
	case envelope.TypeConnected:
		var p struct {
			ConnectionID string `json:"connectionId"`
		}
		if json.Unmarshal(env.Payload, &p) == nil && p.ConnectionID != "" {
			c.mu.Lock()
			c.connID = p.ConnectionID
			c.mu.Unlock()
		}
		if !s.welcomed {
			s.welcomed = true
			close(s.welcome)
		}
	case envelope.TypeAuthExpiring:
		if c.opts.Token != nil && !c.refreshing.Swap(true) {
			var p struct {
				ExpiresAt int64 `json:"expiresAt"`
			}
			_ = json.Unmarshal(env.Payload, &p)
			exp := time.Now().Add(defaultRefreshWindow)
			if p.ExpiresAt > 0 {
				exp = time.UnixMilli(p.ExpiresAt)
			}
			c.wg.Add(1)
			go c.autoRefresh(s, exp)
		}
	case envelope.TypeJoined, envelope.TypeLeft:
		if env.Meta.CorrelationID == "" {
			c.serverMembership(env)
		}
	case envelope.TypeStreamChunk, envelope.TypeStreamEnd:
		c.routeStream(env)
	}
	c.events.pushFrame(env, false)
}
