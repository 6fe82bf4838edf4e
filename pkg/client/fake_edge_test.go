package client_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lxzan/gws"

	"github.com/natter/natter/pkg/envelope"
)

// fakeEdge is a scripted WebSocket server that speaks just enough of the
// protocol for tests that need answers a real edge does not give on
// demand. Connections are numbered from 1.
type fakeEdge struct {
	URL   string
	conns atomic.Int32
	// silent: no $connected on open, as an edge that does not send it.
	silent atomic.Bool

	onOpen    func(n int, ws *gws.Conn)
	onMessage func(n int, ws *gws.Conn, env *envelope.Envelope)

	mu   sync.Mutex
	live []*gws.Conn
}

type fakeConn struct {
	gws.BuiltinEventHandler
	f *fakeEdge
	n int
}

func (h *fakeConn) OnOpen(ws *gws.Conn) {
	if !h.f.silent.Load() {
		// As the edge does, first of all: the connection's id, "fake-<n>".
		_ = ws.WriteMessage(gws.OpcodeText, []byte(`{"type":"`+envelope.TypeConnected+`","payload":{"connectionId":"fake-`+strconv.Itoa(h.n)+`"}}`))
	}
	if h.f.onOpen != nil {
		h.f.onOpen(h.n, ws)
	}
}

func (h *fakeConn) OnMessage(ws *gws.Conn, m *gws.Message) {
	defer m.Close()
	env, err := envelope.Decode(m.Bytes(), 0)
	if err != nil || h.f.onMessage == nil {
		return
	}
	h.f.onMessage(h.n, ws, env)
}

// startFakeEdge serves a fake edge until the test ends.
func startFakeEdge(t *testing.T, onOpen func(n int, ws *gws.Conn), onMessage func(n int, ws *gws.Conn, env *envelope.Envelope)) *fakeEdge {
	t.Helper()
	f := &fakeEdge{onOpen: onOpen, onMessage: onMessage}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(f.conns.Add(1))
		ws, err := gws.NewUpgrader(&fakeConn{f: f, n: n}, &gws.ServerOption{}).Upgrade(w, r)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.live = append(f.live, ws)
		f.mu.Unlock()
		go ws.ReadLoop()
	}))
	t.Cleanup(func() {
		srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, ws := range f.live {
			_ = ws.NetConn().Close()
		}
	})
	f.URL = "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	return f
}

// answer writes a reply of type typ with the request's correlation id.
func answer(ws *gws.Conn, req *envelope.Envelope, typ string, payload any) {
	env, _ := envelope.New(typ, payload)
	env.Meta.CorrelationID = req.Meta.CorrelationID
	b, _ := envelope.Encode(env)
	_ = ws.WriteMessage(gws.OpcodeText, b)
}

// answerError writes an RPC_ERROR for the request.
func answerError(ws *gws.Conn, req *envelope.Envelope, code envelope.Code, retryAfterMs int64) {
	_ = ws.WriteMessage(gws.OpcodeText, envelope.EncodeRPCError(req.Meta.CorrelationID, &envelope.ErrorPayload{Code: code, Message: "scripted", RetryAfterMs: retryAfterMs}))
}

// roomOf returns the room of a $join or $leave.
func roomOf(env *envelope.Envelope) string {
	var p envelope.RoomPayload
	_ = json.Unmarshal(env.Payload, &p)
	return p.Room
}
