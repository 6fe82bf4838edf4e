package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// sse opens a fallback stream on m's edge as user.
func (m *mesh) sse(t *testing.T, user, query string) *wstest.SSE {
	t.Helper()
	return wstest.DialSSE(t, "http://"+m.Edge.Addr, m.Edge.Path(), "user="+user+query, nil)
}

func newEnv(t *testing.T, typ string, cid string, payload any) *envelope.Envelope {
	t.Helper()
	env, err := envelope.New(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	env.Meta.CorrelationID = cid
	return env
}

// TestFallbackSession: a fallback connection is a connection: $connected
// first, then rooms, RPC, presence, messages both ways with a WebSocket
// client, the same limits, and close codes as a close event.
func TestFallbackSession(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	s := m.sse(t, "alice", "")
	welcome := s.AwaitType(t, envelope.TypeConnected, wait)
	var w struct{ ConnectionID, User string }
	_ = json.Unmarshal(welcome.Payload, &w)
	if w.User != "alice" || w.ConnectionID != s.ConnID() {
		t.Fatalf("$connected %s; session %s", welcome.Payload, s.Session())
	}
	if st := m.Edge.Stats().Transports["sse"]; st.Open != 1 || st.Accepted != 1 {
		t.Errorf("sse transport stats %+v", st)
	}

	if got := s.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "lobby", Presence: true}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("$join over POST: %s %s", got.Type, got.Payload)
	}
	bob := m.dial(t, "bob")
	join(t, bob, "lobby")
	if got := s.Request(t, "echo", map[string]int{"n": 7}, wait); got.Type != "echo" || string(got.Payload) != `{"n":7}` {
		t.Errorf("echo RPC: %s %s", got.Type, got.Payload)
	}
	if got := s.Request(t, "chat.send", map[string]string{"room": "lobby", "text": "hi from sse"}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send: %s %s", got.Type, got.Payload)
	}
	if got := bob.AwaitType(t, "chat.message", wait); !strings.Contains(string(got.Payload), "hi from sse") {
		t.Errorf("bob got %s", got.Payload)
	}
	if got := bob.Request(t, "chat.send", map[string]string{"room": "lobby", "text": "hi from ws"}, wait); got.Type != "chat.sent" {
		t.Fatalf("bob's chat.send: %s %s", got.Type, got.Payload)
	}
	if got := s.AwaitType(t, "chat.message", wait); !strings.Contains(string(got.Payload), "hi from ws") || got.Meta.Room != "lobby" {
		t.Errorf("the stream got %s %s", got.Payload, got.Meta.Room)
	}
	pres := s.Request(t, envelope.TypePresence, map[string]string{"room": "lobby"}, wait)
	if !strings.Contains(string(pres.Payload), s.ConnID()) || !strings.Contains(string(pres.Payload), `"bob"`) {
		t.Errorf("$presence: %s", pres.Payload)
	}
	// A bad frame gets the same ERROR as on a WebSocket, on the stream.
	if status, msg := s.PostRaw(t, s.Base, s.Session(), 100, []byte("{}\n")); status != http.StatusConflict {
		t.Errorf("seq skipping ahead: %d %s", status, msg)
	}
	s.Post(t, "", &envelope.Envelope{Type: "$nope"})
	if got := s.AwaitType(t, envelope.TypeError, wait); !strings.Contains(string(got.Payload), "NOT_FOUND") {
		t.Errorf("unknown system type: %s", got.Payload)
	}

	// A service closes the connection: the close event carries the code,
	// and the stream ends.
	if err := m.NC.Publish("natter.ctl.conn."+s.ConnID(), []byte(`{"op":"close","code":4003,"reason":"bye"}`)); err != nil {
		t.Fatal(err)
	}
	if code, reason := s.AwaitClose(t, wait); code != 4003 || reason != "bye" {
		t.Errorf("close event %d %q", code, reason)
	}
	testenv.Eventually(t, wait, "the stream ended and left the edge", func() bool { return s.Ended() && m.Edge.Stats().Transports["sse"].Open == 0 })
	if err := s.EndErr(); err != nil {
		t.Errorf("after its close event the response was cut, not ended: %v", err)
	}
	if status, _ := s.PostRaw(t, s.Base, s.Session(), 4, []byte(`{"type":"echo"}`)); status != http.StatusNotFound {
		t.Errorf("a POST after the close: %d; want 404", status)
	}
}

// TestFallbackRetriedPostActsOnce: a POST retried with the same seq (its
// answer was lost) is answered 204 and not acted on twice.
func TestFallbackRetriedPostActsOnce(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	s := m.sse(t, "alice", "")
	body := []byte(`{"type":"echo","meta":{"correlationId":"once"},"payload":1}` + "\n")
	for range 3 {
		if status, msg := s.PostRaw(t, s.Base, s.Session(), 1, body); status != http.StatusNoContent {
			t.Fatalf("post: %d %s", status, msg)
		}
	}
	s.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "once" })
	if status, _ := s.PostRaw(t, s.Base, s.Session(), 2, []byte(`{"type":"echo","meta":{"correlationId":"two"}}`)); status != http.StatusNoContent {
		t.Fatalf("post 2: %d", status)
	}
	// The next echo answered is "two": "once" came back only once.
	if got := s.Await(t, wait, func(e *envelope.Envelope) bool { return e.Type == "echo" }); got.Meta.CorrelationID != "two" {
		t.Errorf("after the retries the next echo is %q; want two", got.Meta.CorrelationID)
	}
}

// TestFallbackNoStickySessions: two edges on one NATS behind a round-robin
// proxy without affinity. The stream is on one edge; its POSTs alternate
// between the two, and nothing is lost or reordered.
func TestFallbackNoStickySessions(t *testing.T) {
	t.Parallel()
	m := newMesh(t, edge.DefaultConfig())
	second := m.StartEdge(t, testenv.DevEdge())
	var next atomic.Uint64
	backends := []*url.URL{{Scheme: "http", Host: m.Edge.Addr}, {Scheme: "http", Host: second.Addr}}
	posts := [2]atomic.Int64{}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			i := next.Add(1) % 2
			if pr.In.Method == http.MethodPost {
				posts[i].Add(1)
			}
			pr.SetURL(backends[i])
		},
		FlushInterval: -1, // the event stream goes through as it comes
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)

	s := wstest.DialSSE(t, front.URL, m.Edge.Path(), "user=alice", nil)
	if got := s.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "relay"}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("$join: %s", got.Payload)
	}
	watcher := wstest.Dial(t, second.URL+"?user=bob")
	join(t, watcher, "relay")
	// What the client sends reaches NATS whole and in order (the chat
	// handler may publish concurrently, so order is read on the bus).
	in, err := m.NC.SubscribeSync("natter.in.relay.msg")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	const n = 60
	for i := range n {
		// Three envelopes per POST.
		envs := make([]*envelope.Envelope, 3)
		for j := range envs {
			envs[j] = newEnv(t, "relay.msg", "", map[string]int{"n": 3*i + j})
		}
		s.Post(t, front.URL, envs...)
	}
	for i := range 3 * n {
		msg, err := in.NextMsg(wait)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		e, _ := envelope.Decode(msg.Data, 0)
		if want := fmt.Sprintf(`{"n":%d}`, i); string(e.Payload) != want {
			t.Fatalf("message %d is %s; want %s", i, e.Payload, want)
		}
		if msg.Header.Get(envelope.HeaderConn) != s.ConnID() {
			t.Fatalf("message %d from %q", i, msg.Header.Get(envelope.HeaderConn))
		}
	}
	// And a room message reaches the stream through the proxy.
	if got := watcher.Request(t, "chat.send", map[string]string{"room": "relay", "text": "back"}, wait); got.Type != "chat.sent" {
		t.Fatalf("chat.send: %s", got.Payload)
	}
	if got := s.AwaitType(t, "chat.message", wait); !strings.Contains(string(got.Payload), "back") {
		t.Errorf("the stream got %s", got.Payload)
	}
	if posts[0].Load() == 0 || posts[1].Load() == 0 {
		t.Errorf("POSTs by backend %d, %d: the proxy did not alternate", posts[0].Load(), posts[1].Load())
	}
}

// TestFallbackHostilePosts: unknown sessions, another connection's id with
// a guessed secret, bad queries, oversized bodies and floods get the
// documented answers and cost only their sender.
func TestFallbackHostilePosts(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	// Two streams and five unknown sessions, then nothing for a minute.
	cfg.Limits.HandshakeRate, cfg.Limits.HandshakeBurst = 1.0/60, 7
	m := newMesh(t, cfg)
	victim := m.sse(t, "victim", "")
	other := m.sse(t, "mallory", "")
	base := victim.Base
	forged := victim.ConnID() + "." + strings.Repeat("0", 32)
	for _, tc := range []struct {
		name    string
		session string
		seq     uint64
		body    string
		status  int
	}{
		{"another connection's id, a guessed secret", forged, 1, `{"type":"echo"}`, http.StatusNotFound},
		{"mallory's secret on the victim's id", victim.ConnID() + other.Session()[strings.LastIndexByte(other.Session(), '.'):], 1, `{"type":"echo"}`, http.StatusNotFound},
		{"no such connection", "e9.zz." + strings.Repeat("a", 32), 1, `{"type":"echo"}`, http.StatusNotFound},
		{"malformed token", "nonsense", 1, `{"type":"echo"}`, http.StatusNotFound},
	} {
		if status, msg := other.PostRaw(t, base, tc.session, tc.seq, []byte(tc.body)); status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, status, msg, tc.status)
		}
	}
	// Each unknown session took a handshake token: the fifth still
	// passes, then POSTs that would cost a NATS round trip (another edge's
	// session) are refused; the address's own sessions still work.
	remote := "e9.zz." + strings.Repeat("b", 32)
	if status, msg := other.PostRaw(t, base, remote, 1, []byte(`{"type":"echo"}`)); status != http.StatusNotFound {
		t.Errorf("the burst's fifth: %d %s", status, msg)
	}
	if status, msg := other.PostRaw(t, base, remote, 1, []byte(`{"type":"echo"}`)); status != http.StatusTooManyRequests {
		t.Errorf("past the burst: %d %s; want 429", status, msg)
	}

	own := other.Session()
	tooMany := strings.Repeat(`{"type":"echo"}`+"\n", 257)
	huge := `{"type":"echo","payload":"` + strings.Repeat("x", 4*envelope.DefaultMaxSize) + `"}`
	for _, tc := range []struct {
		name   string
		query  string
		body   string
		status int
	}{
		{"no session", "seq=1", `{}`, http.StatusBadRequest},
		{"seq 0", "session=" + own + "&seq=0", `{}`, http.StatusBadRequest},
		{"seq not a number", "session=" + own + "&seq=x", `{}`, http.StatusBadRequest},
		{"empty body", "session=" + own + "&seq=1", " \n", http.StatusBadRequest},
		{"too many envelopes", "session=" + own + "&seq=1", tooMany, http.StatusRequestEntityTooLarge},
		{"body too large", "session=" + own + "&seq=1", huge, http.StatusRequestEntityTooLarge},
	} {
		resp, err := http.Post(base+m.Edge.Path()+"/send?"+tc.query, "text/plain", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d; want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	if resp, err := http.Get(base + m.Edge.Path() + "/send"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /send: %v %v", resp.StatusCode, err)
	}
	// A line that is not an envelope is answered on the stream; one past
	// the size limit closes the session with 1009, as a frame would.
	other.Post(t, "", &envelope.Envelope{Type: "echo", Payload: json.RawMessage(`1`)})
	if status, _ := other.PostRaw(t, base, own, 2, []byte("not json\n")); status != http.StatusNoContent {
		t.Fatalf("a bad line: %d", status)
	}
	if got := other.AwaitType(t, envelope.TypeError, wait); !strings.Contains(string(got.Payload), "INVALID_ARGUMENT") {
		t.Errorf("a bad line: %s", got.Payload)
	}
	big := `{"type":"echo","payload":"` + strings.Repeat("y", envelope.DefaultMaxSize) + `"}`
	if status, _ := other.PostRaw(t, base, own, 3, []byte(big)); status != http.StatusNoContent {
		t.Fatalf("an oversized line: %d", status)
	}
	if code, _ := other.AwaitClose(t, wait); code != int(envelope.CloseTooLarge) {
		t.Errorf("an oversized line closed with %d; want 1009", code)
	}
	// The victim was never touched.
	if got := victim.Request(t, "echo", 1, wait); got.Type != "echo" {
		t.Errorf("the victim's session: %s", got.Type)
	}
}

// TestFallbackLastEventID: a stream on a durable room resumes where its
// Last-Event-ID says, without a gap or a duplicate, as an EventSource does.
func TestFallbackLastEventID(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.DurableRooms = &edge.DurableRoomsConfig{Patterns: []string{"log-*"}}
	// A replay longer than half the write queue waits for the stream's
	// writer while the stream's joins run.
	cfg.WebSocket.WriteQueueBytes = 4096
	m := newMesh(t, cfg)
	pad := strings.Repeat("p", 400)
	publish := func(i int) {
		t.Helper()
		if err := m.NC.Publish("natter.out.room.log-1", fmt.Appendf(nil, `{"type":"line","payload":{"n":%d,"pad":%q}}`, i, pad)); err != nil {
			t.Fatal(err)
		}
	}
	nOf := func(e *envelope.Envelope) int {
		var p struct{ N int }
		_ = json.Unmarshal(e.Payload, &p)
		return p.N
	}
	s := m.sse(t, "reader", "&room=log-1")
	joined := s.AwaitType(t, envelope.TypeJoined, wait)
	if !strings.Contains(string(joined.Payload), `"durable":true`) {
		t.Fatalf("$joined %s", joined.Payload)
	}
	for i := 1; i <= 5; i++ {
		publish(i)
	}
	var lastID string
	for i := 1; i <= 5; i++ {
		ev := s.AwaitEvent(t, wait, func(ev wstest.Event) bool { return strings.Contains(string(ev.Data), `"line"`) })
		e, _ := envelope.Decode(ev.Data, 0)
		if nOf(e) != i || ev.ID == "" {
			t.Fatalf("event %d: n %d id %q", i, nOf(e), ev.ID)
		}
		lastID = ev.ID
	}
	s.Close()
	for i := 6; i <= 29; i++ {
		publish(i)
	}
	again := wstest.DialSSE(t, "http://"+m.Edge.Addr, m.Edge.Path(), "user=reader&room=log-1", http.Header{"Last-Event-ID": {lastID}})
	for i := 6; i <= 29; i++ {
		if got := again.AwaitType(t, "line", wait); nOf(got) != i {
			t.Fatalf("after the reconnect: %d; want %d", nOf(got), i)
		}
	}
	if j := again.AwaitType(t, envelope.TypeJoined, wait); !strings.Contains(string(j.Payload), `"recovered":true`) {
		t.Errorf("$joined after the reconnect: %s", j.Payload)
	}
	publish(30)
	if got := again.AwaitType(t, "line", wait); nOf(got) != 30 {
		t.Errorf("live after the replay: %d", nOf(got))
	}
}

// TestFallbackLastEventIDKeepsEveryRoom: while a resumed stream replays
// one durable room, its event ids still carry the other rooms' positions
// from Last-Event-ID, so a stream cut during that replay resumes them all.
func TestFallbackLastEventIDKeepsEveryRoom(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.DurableRooms = &edge.DurableRoomsConfig{Patterns: []string{"d-*"}}
	m := newMesh(t, cfg)
	publish := func(room string, n int) {
		t.Helper()
		if err := m.NC.Publish("natter.out.room."+room, fmt.Appendf(nil, `{"type":"line","payload":{"n":%d}}`, n)); err != nil {
			t.Fatal(err)
		}
	}
	s := m.sse(t, "reader", "&room=d-a&room=d-b")
	s.AwaitType(t, envelope.TypeJoined, wait)
	s.AwaitType(t, envelope.TypeJoined, wait)
	publish("d-a", 1)
	publish("d-b", 1)
	var lastID string
	for range 2 {
		lastID = s.AwaitEvent(t, wait, func(ev wstest.Event) bool { return strings.Contains(string(ev.Data), `"line"`) }).ID
	}
	v, _ := url.ParseQuery(lastID)
	if v.Get("r.d-a") == "" || v.Get("r.d-b") == "" {
		t.Fatalf("the live id %q lacks a room", lastID)
	}
	s.Close()
	publish("d-a", 2)
	publish("d-b", 2)
	again := wstest.DialSSE(t, "http://"+m.Edge.Addr, m.Edge.Path(), "user=reader&room=d-a&room=d-b", http.Header{"Last-Event-ID": {lastID}})
	first := again.AwaitEvent(t, wait, func(ev wstest.Event) bool { return strings.Contains(string(ev.Data), `"line"`) })
	w, _ := url.ParseQuery(first.ID)
	if w.Get("r.d-a") == "" || w.Get("r.d-b") == "" || w.Get("e") != v.Get("e") {
		t.Errorf("the first replayed event's id %q lacks a room of %q", first.ID, lastID)
	}
	// A room left is not resumed: its position leaves the ids, which so
	// hold only the rooms the stream is in.
	again.AwaitType(t, envelope.TypeJoined, wait)
	again.AwaitType(t, envelope.TypeJoined, wait)
	if got := again.Request(t, envelope.TypeLeave, envelope.RoomPayload{Room: "d-b"}, wait); got.Type != envelope.TypeLeft {
		t.Fatalf("$leave: %s", got.Type)
	}
	publish("d-a", 3)
	ev := again.AwaitEvent(t, wait, func(ev wstest.Event) bool { return strings.Contains(string(ev.Data), `"n":3`) })
	if x, _ := url.ParseQuery(ev.ID); x.Get("r.d-b") != "" || x.Get("r.d-a") == "" {
		t.Errorf("after leaving d-b the id is %q", ev.ID)
	}
}

// TestFallbackStreamRefusals: a stream request is admitted like a
// handshake, and refused rooms stop it before it starts.
func TestFallbackStreamRefusals(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Limits.MaxConnsPerUser = 1
	m := newMesh(t, cfg)
	base := "http://" + m.Edge.Addr
	m.sse(t, "solo", "")
	for _, tc := range []struct {
		name, query string
		status      int
	}{
		{"over the per-user cap", "user=solo", http.StatusTooManyRequests},
		{"a bad room id", "user=x&room=a.b", http.StatusBadRequest},
	} {
		if s, status, body := wstest.OpenSSE(t, base, m.Edge.Path(), tc.query, nil); s != nil || status != tc.status {
			t.Errorf("%s: %d %s; want %d", tc.name, status, body, tc.status)
		}
	}
	if st := m.Edge.Stats().Transports["sse"]; st.Refused != 2 || st.Open != 1 {
		t.Errorf("sse transport stats %+v", st)
	}
}

// TestFallbackCORS: a page of an allowed origin may preflight both paths
// (its token in Authorization) and read the answers; another origin is
// refused.
func TestFallbackCORS(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Auth.AllowedOrigins = []string{"https://app.example.com"}
	m := newMesh(t, cfg)
	base := "http://" + m.Edge.Addr + m.Edge.Path()
	for _, tc := range []struct {
		method, path, origin string
		status               int
		allow                string
	}{
		{http.MethodOptions, "/sse", "https://app.example.com", http.StatusNoContent, "https://app.example.com"},
		{http.MethodOptions, "/send", "https://app.example.com", http.StatusNoContent, "https://app.example.com"},
		{http.MethodOptions, "/sse", "https://evil.example", http.StatusForbidden, ""},
		{http.MethodGet, "/sse?user=x", "https://evil.example", http.StatusForbidden, ""},
		{http.MethodPost, "/send?session=x&seq=1", "https://evil.example", http.StatusForbidden, ""},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		req.Header.Set("Origin", tc.origin)
		req.Header.Set("Access-Control-Request-Headers", "authorization")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("Access-Control-Allow-Origin") != tc.allow {
			t.Errorf("%s %s from %s: %d, allow-origin %q; want %d %q", tc.method, tc.path, tc.origin, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), tc.status, tc.allow)
		}
		if tc.status == http.StatusNoContent && !strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "authorization") {
			t.Errorf("%s %s: Access-Control-Allow-Headers %q", tc.method, tc.path, resp.Header.Get("Access-Control-Allow-Headers"))
		}
	}
	// The allowed origin's stream opens, with its CORS headers.
	s := wstest.DialSSE(t, "http://"+m.Edge.Addr, m.Edge.Path(), "user=alice", http.Header{"Origin": {"https://app.example.com"}})
	if got := s.Request(t, "echo", 1, wait); got.Type != "echo" {
		t.Errorf("echo: %s", got.Type)
	}
}

// panickyAuthorizer is application code that panics.
type panickyAuthorizer struct{}

func (panickyAuthorizer) AuthorizeJoin(context.Context, auth.JoinRequest) error {
	panic("the application's join authorizer failed")
}

// TestFallbackPanicCostsOneSession: a panic while a POST's frames are
// handled (here the application's join authorizer), on the edge that holds
// the session or forwarded from another, closes that session with 1011,
// is counted, and leaves the edge and its other clients serving.
func TestFallbackPanicCostsOneSession(t *testing.T) {
	t.Parallel()
	cfg := edge.DefaultConfig()
	cfg.Auth.PublicRooms = []string{"open-*"}
	cfg.Auth.JoinAuthorizer = panickyAuthorizer{}
	m := newMesh(t, cfg)
	other := m.StartEdge(t, func() edge.Config { c := testenv.DevEdge(); c.Auth.PublicRooms = cfg.Auth.PublicRooms; return c }())
	bystander := m.dial(t, "bystander")
	for i, via := range []string{"http://" + m.Edge.Addr, "http://" + other.Addr} {
		s := m.sse(t, fmt.Sprintf("victim%d", i), "")
		status, _ := s.PostRaw(t, via, s.Session(), 1, []byte(`{"type":"$join","payload":{"room":"guarded"}}`))
		if status != http.StatusInternalServerError {
			t.Errorf("POST via %s: %d; want 500", via, status)
		}
		if code, _ := s.AwaitClose(t, wait); code != int(envelope.CloseServerError) {
			t.Errorf("via %s: closed with %d; want 1011", via, code)
		}
	}
	if n := m.Edge.Stats().Panics; n != 2 {
		t.Errorf("panics counted: %d; want 2", n)
	}
	if got := bystander.Request(t, "echo", 1, wait); got.Type != "echo" {
		t.Errorf("the bystander: %s", got.Type)
	}
}
