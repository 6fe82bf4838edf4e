package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/wire"
)

// The fallback transports (docs/protocol.md, "Fallback transports"): for
// clients whose network breaks WebSockets, a connection whose frames go
// down a Server-Sent Events stream (GET <path>/sse) and come up in POSTs
// (POST <path>/send). It is a conn like any other: the same admission,
// identity, rooms, presence, limits, replies and close codes; only its
// socket (sseSocket) and the way its frames arrive (a POST instead of a
// read loop) differ.
//
// No sticky sessions: a POST may reach any edge. The session token names
// the connection, whose id names its edge; another edge forwards the POST
// as a NATS request to <prefix>.http.<edge>, which every edge subscribes
// once.

// transport is how a client reached the edge, the label of the metrics by
// transport.
type transport uint8

const (
	transportWebSocket transport = iota // natter: JSON text frames (and virtual connections)
	transportProtobuf                   // natter.protobuf: binary frames
	transportSSE                        // the fallback stream and its POSTs
	numTransports
)

var transportNames = [numTransports]string{
	transportWebSocket: "websocket",
	transportProtobuf:  "websocket_protobuf",
	transportSSE:       "sse",
}

// The fallback's paths under WebSocketConfig.Path, and its bounds.
const (
	ssePath  = "/sse"
	sendPath = "/send"
	// maxPostEnvelopes bounds the envelopes of one POST; its bytes are
	// bounded by postBodyFactor times the message size limit.
	maxPostEnvelopes = 256
	postBodyFactor   = 4
	// postForwardTimeout bounds the wait for the edge that holds a
	// session, when a POST reached another one.
	postForwardTimeout = 5 * time.Second
	// postReadTimeout bounds the reading of a POST's body.
	postReadTimeout = 10 * time.Second
)

// The headers of a POST forwarded over NATS, and of its answer.
const (
	headerSession = "Natter-Session"
	headerPostSeq = "Natter-Seq"
	headerStatus  = "Natter-Status"
)

// httpSession is what a fallback connection adds to conn: the secret of
// its token, and the order of its POSTs.
type httpSession struct {
	secret string
	// mu is held by the one POST being acted on; another finds it taken
	// and gets 409.
	mu  sync.Mutex
	seq uint64 // the last POST acted on
}

// transportOf says which transport a request to the edge asks for.
func (e *Edge) transportOf(r *http.Request) transport {
	if e.subPath(r) == ssePath {
		return transportSSE
	}
	if chosenProtocol(r.Header.Values("Sec-WebSocket-Protocol")) == wire.Protobuf {
		return transportProtobuf
	}
	return transportWebSocket
}

// cors lets a browser page of an allowed origin read the answer (the
// caller checked the origin). Requests without Origin need nothing.
func cors(w http.ResponseWriter, r *http.Request) {
	if o := r.Header.Get("Origin"); o != "" {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", o)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	}
}

// preflight answers a CORS preflight of an allowed origin (the caller
// checked it): a cross-origin page that sends its token in Authorization
// asks first.
func preflight(w http.ResponseWriter, method string) {
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", method)
	h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, Last-Event-ID")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// servePreflight answers OPTIONS on the event stream's path; it admits
// nothing, so it is not a handshake.
func (e *Edge) servePreflight(w http.ResponseWriter, r *http.Request) {
	if err := e.origins.Check(r); err != nil {
		http.Error(w, auth.Reason(err), auth.Status(err))
		return
	}
	cors(w, r)
	preflight(w, http.MethodGet)
}

// serveSSE opens a fallback stream: the handshake's admission, then the
// stream, which lives on this goroutine until it closes.
func (e *Edge) serveSSE(w http.ResponseWriter, r *http.Request) {
	const tr = transportSSE
	now := time.Now()
	ip := e.clientIP(r)
	if wait, ok := e.allowHandshake(ip, now); !ok {
		e.refuse(w, tr, refusedRate, http.StatusTooManyRequests, "too many handshakes", wait)
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		e.refuse(w, tr, refusedBadRequest, http.StatusMethodNotAllowed, "the event stream is a GET", 0)
		return
	}
	if err := e.origins.Check(r); err != nil {
		e.refuse(w, tr, refusedOrigin, auth.Status(err), auth.Reason(err), 0)
		return
	}
	cors(w, r)
	rc := http.NewResponseController(w)
	id, err := e.authenticate(r)
	if err != nil {
		e.cfg.Logger.Debug("edge: stream refused", "remote", r.RemoteAddr, "err", err)
		e.refuse(w, tr, authRefusal(err), auth.Status(err), auth.Reason(err), 0)
		return
	}
	rooms, since, reason := e.streamRooms(r)
	if reason != "" {
		e.refuse(w, tr, refusedBadRequest, http.StatusBadRequest, reason, 0)
		return
	}
	if rc.SetWriteDeadline(time.Time{}) != nil {
		// A response writer without deadlines (middleware that hides
		// them) could hold the stream's writer for ever.
		http.Error(w, "event streams need a response writer with write deadlines", http.StatusInternalServerError)
		return
	}
	release, reason := e.reserve(ip, id.User)
	if release == nil {
		e.refuse(w, tr, refusedLimit, http.StatusTooManyRequests, reason, 0)
		return
	}
	c := newConn(e, tr, e.ids.next(), id, release)
	c.wake = make(chan struct{}, 1)
	var secret [16]byte
	_, _ = rand.Read(secret[:])
	c.session = &httpSession{secret: hex.EncodeToString(secret[:])}
	for _, room := range rooms {
		// Before the stream starts, so that an EventSource gets a status
		// that stops it rather than a stream it would retry for ever.
		if err := c.authorizeJoin(room); err != nil {
			release()
			e.refuse(w, tr, refusedForbidden, http.StatusForbidden, "room not allowed: "+room, 0)
			return
		}
	}
	sock := newSSESocket(w, rc)
	// The positions a resumed stream starts from: until a room's replay
	// or $joined moves it, every event id still carries its position, so
	// a stream cut during another room's replay resumes that one too.
	for room, p := range since {
		if sock.positions == nil {
			sock.epoch, sock.positions = p.Epoch, map[string]uint64{}
		}
		sock.positions[room] = p.Offset
	}
	c.sock = sock
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	// The session event goes first, and only once the connection is
	// registered, so that a POST made as soon as it arrives finds it;
	// registration holds the writes back meanwhile (register).
	hello, _ := json.Marshal(map[string]string{"session": c.id + "." + c.session.secret, "send": e.FallbackPaths()[1]})
	err = c.register()
	if err == nil {
		sock.mu.Lock()
		err = sock.send(append([]byte("event: session\n"), dataLines(nil, hello)...), e.cfg.WebSocket.WriteTimeout)
		sock.mu.Unlock()
		if err != nil {
			sock.abort() // the client is gone: the wait below ends at once
		}
	}
	if err != nil && !sock.closed() {
		release()
		e.cfg.Logger.Warn("edge: register connection", "err", err)
		_ = sock.writeClose(uint16(envelope.CloseInternal), "internal error", e.cfg.WebSocket.WriteTimeout)
		sock.finish(false)
		return
	}
	c.setIdentity(id)
	if e.handshakes.Stopped() {
		c.closeWith(envelope.CloseShutdown, "edge shutting down", false)
	}
	// The joins wait for NATS, and a durable room's replay for the
	// writer, which is this goroutine: they run on one of their own, in
	// order.
	if len(rooms) > 0 && !e.routines.Go(func(context.Context) {
		defer c.containPanic()
		for _, room := range rooms {
			if c.isClosing() {
				return
			}
			if err := e.hub.join(c, room, "", false, since[room]); err != nil {
				c.sendErrorPayload("", rpc.FromError(err).Payload())
			}
		}
	}) {
		c.closeWith(envelope.CloseShutdown, "edge shutting down", false)
	}
	c.serveStream(sock, r.Context())
}

// serveStream is the stream's writer, on the goroutine serving its
// request, until the close event is written or the client goes; then the
// connection leaves the edge. A panic in it ends only this connection, as
// in a WebSocket's read loop.
func (c *conn) serveStream(sock *sseSocket, ctx context.Context) {
	gone := false
	defer func() {
		if v := recover(); v != nil {
			c.panicked(v)
			gone = true // its writer is gone: the close event cannot follow
		}
		sock.finish(gone)
		c.unregister()
	}()
	for {
		select {
		case <-c.wake:
			c.writeLoop()
		case <-sock.done:
			return
		case <-ctx.Done(): // the client went
			gone = true
			return
		}
	}
}

// containPanic, deferred by work done for a fallback connection off its
// stream's goroutine (a POST's frames, the stream's joins), ends only that
// connection when the work panics, as a WebSocket's read loop does.
func (c *conn) containPanic() {
	if v := recover(); v != nil {
		c.panicked(v)
	}
}

// streamRooms reads ?room= and the durable positions of Last-Event-ID (or
// ?lastEventId=): the rooms a stream joins when it opens, and where each
// durable one resumes. It returns why the request is bad, if it is.
func (e *Edge) streamRooms(r *http.Request) ([]string, map[string]*envelope.Position, string) {
	q := r.URL.Query()
	rooms := q["room"]
	if max := e.cfg.Limits.MaxRoomsPerConn; max > 0 && len(rooms) > max {
		return nil, nil, fmt.Sprintf("at most %d rooms", max)
	}
	for _, room := range rooms {
		if envelope.ValidateID(room) != nil {
			return nil, nil, "room must be 1-128 characters of [A-Za-z0-9_-]"
		}
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("lastEventId")
	}
	since := map[string]*envelope.Position{}
	if last == "" {
		return rooms, since, ""
	}
	v, err := url.ParseQuery(last)
	if err != nil || v.Get("e") == "" {
		return rooms, since, "" // not ours: a stream from the start
	}
	for _, room := range rooms {
		if off, err := strconv.ParseUint(v.Get("r."+room), 10, 64); err == nil {
			since[room] = &envelope.Position{Offset: off, Epoch: v.Get("e")}
		}
	}
	return rooms, since, ""
}

// servePost takes a fallback connection's frames: from its client, or
// from another edge that forwards what reached it (onForwardedPost).
func (e *Edge) servePost(w http.ResponseWriter, r *http.Request) {
	if err := e.origins.Check(r); err != nil {
		http.Error(w, auth.Reason(err), auth.Status(err))
		return
	}
	cors(w, r)
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		preflight(w, http.MethodPost)
		return
	default:
		w.Header().Set("Allow", "POST, OPTIONS")
		http.Error(w, "send frames with POST", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	token := q.Get("session")
	seq, err := strconv.ParseUint(q.Get("seq"), 10, 64)
	if token == "" || err != nil || seq == 0 {
		http.Error(w, "POST ?session=<token>&seq=<n>, n counting from 1", http.StatusBadRequest)
		return
	}
	// Before the body is read: a session that is not this edge's (a NATS
	// round trip to come) or that this edge does not know costs its
	// address a handshake token, and none left is 429.
	ip, now := e.clientIP(r), time.Now()
	id, secret, ok := parseSession(token)
	local := ok && id[:strings.LastIndexByte(id, '.')] == e.cfg.EdgeID
	if !local || e.knownSession(id, secret) == nil {
		if wait, allowed := e.badPostsAllowed(ip, now); !allowed {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			http.Error(w, "too many requests with unknown sessions", http.StatusTooManyRequests)
			return
		}
		if !ok || local {
			_, _ = e.allowHandshake(ip, now)
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
	}
	// A body that trickles in holds a goroutine: it has postReadTimeout.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(postReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(e.maxPostBody())))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		http.Error(w, "body unreadable", http.StatusBadRequest)
		return
	case len(bytes.TrimSpace(body)) == 0:
		http.Error(w, "empty body: send envelopes, one per line", http.StatusBadRequest)
		return
	}
	status, msg, wait := e.post(token, seq, body, ip, now)
	if status == http.StatusNotFound {
		// Guessing sessions costs handshake tokens.
		_, _ = e.allowHandshake(ip, now)
	}
	if wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	http.Error(w, msg, status)
}

// badPostsAllowed reports whether ip may still make a POST, which costs a
// handshake token when its session is unknown: it peeks, and takes none.
func (e *Edge) badPostsAllowed(ip string, now time.Time) (time.Duration, bool) {
	if e.cfg.Limits.HandshakeRate <= 0 {
		return 0, true
	}
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	l := e.adm.handshakes[ip]
	if l == nil || l.lim.TokensAt(now) >= 1 {
		return 0, true
	}
	return time.Duration((1 - l.lim.TokensAt(now)) / float64(l.lim.Limit()) * float64(time.Second)), false
}

// maxPostBody bounds a POST's body.
func (e *Edge) maxPostBody() int { return postBodyFactor * e.cfg.WebSocket.MaxMessageSize }

// post acts on a POST of session token from ip: here when this edge
// holds it, or through the edge that does. It returns the HTTP status,
// its words, and for 429 when to retry. A session of this edge is found
// at once; before one of another edge costs a NATS round trip, ip must
// have a handshake token to spare, which the caller takes when the
// session turns out unknown: guessing is bounded like handshakes.
func (e *Edge) post(token string, seq uint64, body []byte, ip string, now time.Time) (int, string, time.Duration) {
	id, secret, ok := parseSession(token)
	if !ok {
		return http.StatusNotFound, "unknown session", 0
	}
	edgeID := id[:strings.LastIndexByte(id, '.')]
	if edgeID == e.cfg.EdgeID {
		c, status, msg := e.lockSession(id, secret)
		if c == nil {
			return status, msg, 0
		}
		status, msg = c.takePost(seq, body)
		return status, msg, 0
	}
	subj, err := e.ns.HTTP(edgeID)
	if err != nil {
		return http.StatusNotFound, "unknown session", 0
	}
	if len(body) > int(e.nc.MaxPayload())-1024 {
		return http.StatusRequestEntityTooLarge, "body too large", 0
	}
	msg := &nats.Msg{Subject: subj.String(), Data: body, Header: nats.Header{
		headerSession: []string{token},
		headerPostSeq: []string{strconv.FormatUint(seq, 10)},
	}}
	rep, err := e.nc.RequestMsg(msg, postForwardTimeout)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return http.StatusNotFound, "unknown session", 0 // its edge is gone
	case err != nil:
		return http.StatusServiceUnavailable, "the edge holding this session did not answer", 0
	}
	status, err := strconv.Atoi(rep.Header.Get(headerStatus))
	if err != nil || status < 200 || status > 599 {
		return http.StatusBadGateway, "bad answer from the edge holding this session", 0
	}
	return status, string(rep.Data), 0
}

// onForwardedPost takes a POST that reached another edge, for a session
// of this one. The cheap checks answer at once; the frames are acted on
// by a goroutine of the edge's, one per session at most (lockSession).
func (e *Edge) onForwardedPost(msg *nats.Msg) {
	answer := func(status int, words string) {
		rep := &nats.Msg{Subject: msg.Reply, Data: []byte(words), Header: nats.Header{headerStatus: []string{strconv.Itoa(status)}}}
		_ = msg.RespondMsg(rep)
	}
	id, secret, ok := parseSession(msg.Header.Get(headerSession))
	seq, err := strconv.ParseUint(msg.Header.Get(headerPostSeq), 10, 64)
	if !ok || err != nil || msg.Reply == "" {
		answer(http.StatusNotFound, "unknown session")
		return
	}
	c, status, words := e.lockSession(id, secret)
	if c == nil {
		answer(status, words)
		return
	}
	if !e.routines.Go(func(context.Context) { answer(c.takePost(seq, msg.Data)) }) {
		c.session.mu.Unlock()
		answer(http.StatusServiceUnavailable, "edge shutting down")
	}
}

// parseSession splits a session token, <connection id>.<secret>.
func parseSession(token string) (id, secret string, ok bool) {
	i := strings.LastIndexByte(token, '.')
	if i < 0 || len(token)-i-1 != 32 {
		return "", "", false
	}
	id, secret = token[:i], token[i+1:]
	return id, secret, envelope.ValidateConnID(id) == nil
}

// knownSession returns the open fallback connection id of this edge whose
// secret is secret, or nil: one that is closing is gone for its POSTs.
func (e *Edge) knownSession(id, secret string) *conn {
	c := e.conns.get(id)
	if c == nil || c.session == nil || c.isClosing() || subtle.ConstantTimeCompare([]byte(secret), []byte(c.session.secret)) != 1 {
		return nil
	}
	return c
}

// lockSession finds the fallback connection id whose secret is secret and
// takes its POST lock; the caller's takePost gives it back. Otherwise it
// returns the status to answer.
func (e *Edge) lockSession(id, secret string) (*conn, int, string) {
	c := e.knownSession(id, secret)
	if c == nil {
		return nil, http.StatusNotFound, "unknown session"
	}
	if !c.session.mu.TryLock() {
		return nil, http.StatusConflict, "another POST of this session is in progress"
	}
	return c, 0, ""
}

// takePost acts on POST seq of c, whose session lock the caller holds,
// and gives the lock back. Each envelope is one frame, as a WebSocket
// frame would be.
func (c *conn) takePost(seq uint64, body []byte) (status int, words string) {
	s := c.session
	defer s.mu.Unlock()
	defer func() {
		if v := recover(); v != nil {
			c.panicked(v)
			status, words = http.StatusInternalServerError, "internal error"
		}
	}()
	switch {
	case seq <= s.seq:
		return http.StatusNoContent, "" // a retry of one acted on
	case seq > s.seq+1:
		return http.StatusConflict, fmt.Sprintf("seq %d skips ahead: the next is %d", seq, s.seq+1)
	}
	lines := bytes.Split(body, []byte("\n"))
	frames := lines[:0]
	for _, l := range lines {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			frames = append(frames, l)
		}
	}
	if len(frames) > maxPostEnvelopes {
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("at most %d envelopes per POST", maxPostEnvelopes)
	}
	s.seq = seq
	for _, f := range frames {
		if c.isClosing() {
			break // frames after a close are not acted on
		}
		switch {
		case len(f) > c.e.cfg.WebSocket.MaxMessageSize:
			c.closeWith(envelope.CloseTooLarge, "message too large", true)
		case !utf8.Valid(f):
			c.closeWith(envelope.CloseInvalidUTF8, "invalid UTF-8", true)
		default:
			if c.admit(len(f), func() string { return envelope.CorrelationID(f) }) {
				c.handle(f)
			}
		}
	}
	return http.StatusNoContent, ""
}

// opSSE marks the frames of fallback streams' write queues that outFrame
// made for them (sseFrame): an opcode RFC 6455 reserves, so that no
// WebSocket frame is one, and that never leaves the edge.
const opSSE = 0x3

// sseFrame returns f as fallback streams queue it, made once for all of
// them: its message event's data lines, already formatted, after its
// durable position when it has one (the event's id depends on the
// stream's other rooms, so each stream writes that line itself):
//
//	0 | data lines
//	1 | offset (8 bytes, big endian) | len(room) | room | len(epoch) | epoch | data lines
func (f *outFrame) sseFrame() []byte {
	f.sseOnce.Do(func() {
		var b []byte
		if p := f.pos; p != nil && len(p.room) < 256 && len(p.epoch) < 256 {
			b = append(b, 1)
			b = binary.BigEndian.AppendUint64(b, p.offset)
			b = append(b, byte(len(p.room)))
			b = append(b, p.room...)
			b = append(b, byte(len(p.epoch)))
			b = append(b, p.epoch...)
		} else {
			b = append(b, 0)
		}
		f.sse = wsFrame(opSSE, dataLines(b, f.json))
	})
	return f.sse
}

// parseSSEFrame splits the payload of an sseFrame.
func parseSSEFrame(p []byte) (pos *framePos, data []byte) {
	if len(p) == 0 || p[0] == 0 || len(p) < 10 {
		if len(p) > 0 {
			p = p[1:]
		}
		return nil, p
	}
	pos = &framePos{offset: binary.BigEndian.Uint64(p[1:9])}
	n := int(p[9])
	rest := p[10:]
	if len(rest) < n+1 {
		return nil, nil
	}
	pos.room, rest = string(rest[:n]), rest[n:]
	m := int(rest[0])
	if len(rest) < m+1 {
		return nil, nil
	}
	pos.epoch, data = string(rest[1:1+m]), rest[1+m:]
	return pos, data
}

// sseSocket is a fallback stream as the write path sees it: each queued
// WebSocket frame becomes an event. Only the connection's writeLoop
// writes (direct is false), under mu, until the handler that serves the
// stream returns (finish).
type sseSocket struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	mu       sync.Mutex
	ended    bool      // the handler returned: the response is no longer ours
	buf      []byte    // the events of one write
	deadline time.Time // the write deadline set last (send)
	// The durable rooms' positions, for the events' ids.
	epoch     string
	positions map[string]uint64

	doneOnce sync.Once
	done     chan struct{} // the close event is written, or the stream aborted
	aborted  atomic.Bool   // the stream ended without its close event
	released atomic.Bool   // finish ran: the connection is net/http's again
}

func newSSESocket(w http.ResponseWriter, rc *http.ResponseController) *sseSocket {
	return &sseSocket{w: w, rc: rc, done: make(chan struct{})}
}

var errStreamEnded = errors.New("edge: the event stream has ended")

func (s *sseSocket) writeNow(*writerShard, [][]byte) (int, error) {
	return 0, errors.New("edge: an event stream has no writes that never wait")
}

// write turns frames into events: text frames into message events,
// pings into comments; pongs answer nothing here.
func (s *sseSocket) write(frames [][]byte, timeout time.Duration, _ *[][]byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return 0, errStreamEnded
	}
	buf, n := s.buf[:0], 0
	for _, f := range frames {
		n += len(f)
		switch f[0] & 0x0F {
		case opSSE:
			pos, data := parseSSEFrame(framePayload(f))
			if pos != nil && s.move(pos.room, pos.offset, pos.epoch, false) {
				buf = append(buf, "id: "...)
				buf = append(buf, s.lastEventID()...)
				buf = append(buf, '\n')
			}
			buf = append(buf, data...)
		case opText, opBinary:
			buf = s.appendMessage(buf, framePayload(f))
		case opPing:
			buf = append(buf, ": ping\n\n"...)
		}
	}
	err := s.send(buf, timeout)
	if cap(buf) <= 64<<10 {
		s.buf = buf[:0]
	} else {
		s.buf = nil
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}

// send writes and flushes b within timeout; s.mu is held.
// The deadline is moved only when less than half of timeout is left, so
// that a busy stream does not pay two timer changes per write: every write
// still has at least timeout/2.
func (s *sseSocket) send(b []byte, timeout time.Duration) error {
	now := time.Now()
	if s.deadline.Sub(now) < timeout/2 {
		s.deadline = now.Add(timeout)
		_ = s.rc.SetWriteDeadline(s.deadline)
	}
	_, err := s.w.Write(b)
	if err == nil {
		err = s.rc.Flush()
	}
	return err
}

// appendMessage appends env as a message event, with the stream's
// positions as its id when it moves one: a delivery in a durable room, or
// the $joined of one.
func (s *sseSocket) appendMessage(b, env []byte) []byte {
	if s.track(env) {
		b = append(b, "id: "...)
		b = append(b, s.lastEventID()...)
		b = append(b, '\n')
	}
	return dataLines(b, env)
}

// dataLines appends data as the data lines of one event and ends it.
// JSON has line breaks only between tokens, so splitting there keeps it
// whole once the client joins the lines with "\n".
func dataLines(b, data []byte) []byte {
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		line := data
		if i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		b = append(b, "data: "...)
		b = append(b, line...)
		b = append(b, '\n')
	}
	return append(b, '\n')
}

// track records the durable position env carries, if any, and reports
// whether it did.
func (s *sseSocket) track(env []byte) bool {
	left := s.positions != nil && bytes.Contains(env, []byte(`"$left"`))
	if !left && !bytes.Contains(env, []byte(`"epoch"`)) {
		return false // no position: the common case costs a scan
	}
	var e envelope.Envelope
	if envelope.DecodeInto(&e, env, len(env)) != nil {
		return false
	}
	if e.Type == envelope.TypeLeft {
		// A room left is not resumed: its position goes, so the ids hold
		// the rooms the stream is in, at most MaxRoomsPerConn.
		var p envelope.RoomPayload
		if json.Unmarshal(e.Payload, &p) != nil {
			return false
		}
		if _, ok := s.positions[p.Room]; !ok {
			return false
		}
		delete(s.positions, p.Room)
		return true
	}
	var room, epoch string
	var offset uint64
	if e.Type == envelope.TypeJoined {
		var j struct {
			Room   string `json:"room"`
			Offset uint64 `json:"offset"`
			Epoch  string `json:"epoch"`
		}
		if json.Unmarshal(e.Payload, &j) != nil || j.Epoch == "" {
			return false
		}
		room, offset, epoch = j.Room, j.Offset, j.Epoch
	} else {
		o, err := strconv.ParseUint(string(e.Meta.Extra["offset"]), 10, 64)
		if err != nil || e.Meta.Room == "" || json.Unmarshal(e.Meta.Extra["epoch"], &epoch) != nil {
			return false
		}
		room, offset = e.Meta.Room, o
	}
	return s.move(room, offset, epoch, e.Type == envelope.TypeJoined)
}

// move records room's position; a $joined's (reset) replaces it, a
// delivery's only moves it forward. It reports true: the event's id
// changes, or confirms the position.
func (s *sseSocket) move(room string, offset uint64, epoch string, reset bool) bool {
	if epoch != s.epoch {
		s.epoch, s.positions = epoch, nil // another history: the old positions mean nothing
	}
	if s.positions == nil {
		s.positions = map[string]uint64{}
	}
	if offset > s.positions[room] || reset {
		s.positions[room] = offset
	}
	return true
}

// lastEventID is the stream's position: its epoch and every durable
// room's offset, in URL query form (docs/protocol.md).
func (s *sseSocket) lastEventID() string {
	v := url.Values{"e": {s.epoch}}
	for room, off := range s.positions {
		v.Set("r."+room, strconv.FormatUint(off, 10))
	}
	return v.Encode()
}

// writeClose writes the close event; the stream then ends.
func (s *sseSocket) writeClose(code uint16, reason string, timeout time.Duration) error {
	s.mu.Lock()
	if !s.ended {
		data, _ := json.Marshal(struct {
			Code   uint16 `json:"code"`
			Reason string `json:"reason"`
		}{code, reason})
		if s.send(append([]byte("event: close\n"), dataLines(nil, data)...), timeout) != nil {
			s.aborted.Store(true) // the client does not read: no last chunk either
		}
	}
	s.mu.Unlock()
	s.end()
	return nil
}

func (s *sseSocket) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// abort ends the stream at once: a write in progress fails. Once the
// handler has returned the connection is not the stream's (net/http may
// reuse it): abort then does nothing to it.
func (s *sseSocket) abort() {
	s.aborted.Store(true)
	if !s.released.Load() {
		_ = s.rc.SetWriteDeadline(time.Now())
	}
	s.end()
}

func (s *sseSocket) end() { s.doneOnce.Do(func() { close(s.done) }) }

// finish is the handler's last word: no write reaches the response after
// it returns. A stream that ended with its close event then ends the
// response properly (the server writes the last chunk); an aborted one
// keeps the deadline that failed it, and its connection closes.
// The stream's writer runs on the caller's goroutine, so no write is in
// progress here.
func (s *sseSocket) finish(clientGone bool) {
	s.end()
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.released.Store(true)
	if clientGone || s.aborted.Load() {
		_ = s.rc.SetWriteDeadline(time.Now()) // nothing more: the connection closes
	} else {
		_ = s.rc.SetWriteDeadline(time.Time{}) // the last chunk, and maybe the next request
	}
}
