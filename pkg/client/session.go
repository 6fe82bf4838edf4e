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
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// session is one WebSocket connection. Its read loop runs on a goroutine
// of its own; the client's run goroutine writes to it.
type session struct {
	c    *Client
	ws   *gws.Conn
	done chan struct{} // closed by OnClose, after info is set
	info CloseInfo
	// ctrl holds frames that go before the send buffer: aborts and answers
	// to server requests. They belong to this connection only.
	ctrl   chan []byte
	ctx    context.Context // ends with the connection; Handle handlers use it
	cancel context.CancelFunc
	// lastRead is when anything last arrived, in Unix nanoseconds.
	lastRead atomic.Int64
	// byClient marks a close the client started (Close).
	byClient atomic.Bool
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
	s := &session{c: c, done: make(chan struct{}), ctrl: make(chan []byte, ctrlQueue), ctx: sctx, cancel: scancel}
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
	s.ws = ws
	s.lastRead.Store(time.Now().UnixNano())
	go ws.ReadLoop()
	return s, nil
}

// serve restores rooms and state on s, then writes frames until s ends.
// It returns why s ended and whether it reached Open.
func (c *Client) serve(s *session) (CloseInfo, bool) {
	opened := false
	if c.restore(s) {
		opened = true
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
// RPCTimeout). A refused join is forgotten. It reports false when the
// connection ended or the client closed meanwhile.
func (c *Client) restore(s *session) bool {
	c.mu.Lock()
	type step struct {
		room string // "" for the state
		cl   *call
	}
	steps := make([]step, 0, len(c.rooms)+1)
	frames := make([][]byte, 0, len(c.rooms)+1)
	add := func(room, typ string, payload any) {
		cid := c.nextCIDLocked()
		env, _ := envelope.New(typ, payload)
		env.Meta = envelope.Meta{CorrelationID: cid, TimeoutMs: c.opts.RPCTimeout.Milliseconds()}
		frame, err := envelope.Encode(env)
		if err != nil {
			return
		}
		cl := newCall(cid)
		cl.sess = s
		c.pending[cid] = cl
		steps = append(steps, step{room, cl})
		frames = append(frames, frame)
	}
	for room, pres := range c.rooms {
		add(room, envelope.TypeJoin, envelope.RoomPayload{Room: room, Presence: pres})
	}
	if c.pstate != nil {
		add("", envelope.TypePresenceState, map[string]json.RawMessage{"state": c.pstate})
	}
	c.mu.Unlock()
	if len(steps) == 0 {
		return true
	}
	for _, f := range frames {
		c.write(s, f)
	}
	t := time.NewTimer(c.opts.RPCTimeout)
	defer t.Stop()
	for i, st := range steps {
		select {
		case env := <-st.cl.frames:
			if err := replyError(env); err != nil {
				if st.room == "" {
					c.log.Warn("client: restoring presence state failed", "err", err)
					continue
				}
				c.log.Warn("client: re-join failed; the room is forgotten", "room", st.room, "err", err)
				if !errors.Is(err, rpc.ErrUnavailable) {
					c.mu.Lock()
					delete(c.rooms, st.room)
					c.mu.Unlock()
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
			return true
		}
	}
	return true
}

// pump writes priority frames and the send buffer to s until s ends or the
// client closes, and keeps the connection alive.
func (c *Client) pump(s *session) {
	var tick <-chan time.Time
	if c.opts.KeepAlive > 0 {
		t := time.NewTicker(c.opts.KeepAlive / 4)
		defer t.Stop()
		tick = t.C
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

// writeItem writes one buffered frame. A frame taken while s is already
// gone is kept for the next connection, so buffered sends are not lost to
// the race; it reports false then. A request its caller gave up on is
// skipped.
func (c *Client) writeItem(s *session, it *outItem) bool {
	select {
	case <-s.done:
		c.held = it
		return false
	default:
	}
	if it.call != nil {
		c.mu.Lock()
		live := c.pending[it.call.cid] == it.call
		if live {
			it.call.sess = s
		}
		c.mu.Unlock()
		if !live {
			return true
		}
	}
	c.write(s, it.frame)
	return true
}

// write writes one text frame. A failed write closes the socket; the read
// loop then ends the session.
func (c *Client) write(s *session, frame []byte) {
	_ = s.ws.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
	_ = s.ws.WriteMessage(gws.OpcodeText, frame)
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
	data := append([]byte(nil), m.Bytes()...)
	m.Close()
	if m.Opcode != gws.OpcodeText {
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
	if env.Type == envelope.TypeAuthExpiring && c.opts.Token != nil && !c.refreshing.Swap(true) {
		go c.autoRefresh()
	}
	c.events.pushFrame(env, false)
}
