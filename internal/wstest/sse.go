package wstest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natter/natter/pkg/envelope"
)

// SSE is a test client of the fallback transport: the event stream read
// the way a browser's EventSource reads it, and POSTs of envelopes.
type SSE struct {
	// Base is the edge's http://host:port; Path its WebSocket path.
	Base, Path string
	// HTTP sends the POSTs; tests may replace it (a proxy, another edge).
	HTTP *http.Client

	cancel context.CancelFunc
	resp   *http.Response

	mu      sync.Mutex
	cond    *sync.Cond
	events  []Event
	ended   bool
	readErr error // how the stream ended: nil for a proper end
	session string
	seq     uint64
	nextCID int
}

// Event is one server-sent event.
type Event struct {
	Name, ID string
	Data     []byte
}

// DialSSE opens the event stream at base+path+"/sse?"+query with extra
// request headers, and fails the test unless it answers 200 with the
// session event first.
func DialSSE(t testing.TB, base, path, query string, hdr http.Header) *SSE {
	t.Helper()
	s, status, body := OpenSSE(t, base, path, query, hdr)
	if s == nil {
		t.Fatalf("wstest: event stream: %d %s", status, body)
	}
	return s
}

// OpenSSE is DialSSE that returns the refusal instead: a nil client, the
// status and the body.
func OpenSSE(t testing.TB, base, path, query string, hdr http.Header) (*SSE, int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path+"/sse?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("wstest: event stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode, strings.TrimSpace(string(b))
	}
	s := &SSE{Base: base, Path: path, HTTP: &http.Client{Timeout: 10 * time.Second}, cancel: cancel, resp: resp}
	s.cond = sync.NewCond(&s.mu)
	go s.read()
	t.Cleanup(s.Close)
	hello := s.awaitEvent(t, 5*time.Second, func(ev Event) bool { return ev.Name == "session" })
	var h struct{ Session, Send string }
	if err := json.Unmarshal(hello.Data, &h); err != nil || h.Session == "" || h.Send != path+"/send" {
		t.Fatalf("wstest: session event %s", hello.Data)
	}
	s.session = h.Session
	return s, resp.StatusCode, ""
}

// read parses the stream as the HTML standard's event stream
// interpretation does (data lines joined with "\n", comments skipped).
func (s *SSE) read() {
	sc := bufio.NewScanner(s.resp.Body)
	defer func() {
		s.mu.Lock()
		s.ended, s.readErr = true, sc.Err()
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var ev Event
	var data [][]byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if data != nil {
				ev.Data = bytes.Join(data, []byte("\n"))
				s.mu.Lock()
				s.events = append(s.events, ev)
				s.cond.Broadcast()
				s.mu.Unlock()
			}
			ev, data = Event{}, nil
		case line[0] == ':':
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				ev.Name = string(value)
			case "id":
				ev.ID = string(value)
			case "data":
				data = append(data, append([]byte(nil), value...))
			}
		}
	}
}

// Session is the session token.
func (s *SSE) Session() string { return s.session }

// ConnID is the connection id, the token's first part.
func (s *SSE) ConnID() string { return s.session[:strings.LastIndexByte(s.session, '.')] }

// Close ends the stream, as a browser does.
func (s *SSE) Close() {
	s.cancel()
	_ = s.resp.Body.Close()
}

// EndErr is how the stream ended: nil when the response ended properly,
// an error when it was cut (or is still open).
func (s *SSE) EndErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		return io.ErrNoProgress
	}
	return s.readErr
}

// Ended reports whether the stream has ended.
func (s *SSE) Ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// awaitEvent returns the first event matching f, dropping those before it.
func (s *SSE) awaitEvent(t testing.TB, timeout time.Duration, f func(Event) bool) Event {
	t.Helper()
	timer := time.AfterFunc(timeout, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for len(s.events) > 0 {
			ev := s.events[0]
			s.events = s.events[1:]
			if f(ev) {
				return ev
			}
		}
		if s.ended || !time.Now().Before(deadline) {
			t.Fatalf("wstest: no matching event within %s (ended %v)", timeout, s.ended)
		}
		s.cond.Wait()
	}
}

// AwaitEvent returns the first event matching f.
func (s *SSE) AwaitEvent(t testing.TB, timeout time.Duration, f func(Event) bool) Event {
	t.Helper()
	return s.awaitEvent(t, timeout, f)
}

// Await returns the first message event whose envelope matches f.
func (s *SSE) Await(t testing.TB, timeout time.Duration, f func(*envelope.Envelope) bool) *envelope.Envelope {
	t.Helper()
	var env *envelope.Envelope
	s.awaitEvent(t, timeout, func(ev Event) bool {
		if ev.Name != "" {
			return false
		}
		e, err := envelope.Decode(ev.Data, 1<<30)
		if err != nil {
			t.Errorf("wstest: undecodable event %q: %v", ev.Data, err)
			return false
		}
		if f(e) {
			env = e
			return true
		}
		return false
	})
	return env
}

// AwaitType returns the next message of type typ.
func (s *SSE) AwaitType(t testing.TB, typ string, timeout time.Duration) *envelope.Envelope {
	t.Helper()
	return s.Await(t, timeout, func(e *envelope.Envelope) bool { return e.Type == typ })
}

// AwaitClose returns the code and reason of the close event.
func (s *SSE) AwaitClose(t testing.TB, timeout time.Duration) (int, string) {
	t.Helper()
	ev := s.awaitEvent(t, timeout, func(ev Event) bool { return ev.Name == "close" })
	var c struct {
		Code   int
		Reason string
	}
	if err := json.Unmarshal(ev.Data, &c); err != nil {
		t.Fatalf("wstest: close event %s", ev.Data)
	}
	return c.Code, c.Reason
}

// PostRaw posts body with the given session token and seq, to the edge at
// base (another edge, or a proxy), and returns the status and body.
func (s *SSE) PostRaw(t testing.TB, base, session string, seq uint64, body []byte) (int, string) {
	t.Helper()
	u := fmt.Sprintf("%s%s/send?session=%s&seq=%d", base, s.Path, session, seq)
	resp, err := s.HTTP.Post(u, "text/plain", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("wstest: post: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// Post sends envelopes in one POST with the next seq, to base ("" for the
// stream's edge), and fails the test unless it answers 204.
func (s *SSE) Post(t testing.TB, base string, envs ...*envelope.Envelope) {
	t.Helper()
	var body []byte
	for _, e := range envs {
		b, err := envelope.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		body = append(append(body, b...), '\n')
	}
	if base == "" {
		base = s.Base
	}
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	if status, msg := s.PostRaw(t, base, s.session, seq, body); status != http.StatusNoContent {
		t.Fatalf("wstest: post %d: %d %s", seq, status, msg)
	}
}

// Request posts typ with a fresh correlation id and returns the message
// that carries it back.
func (s *SSE) Request(t testing.TB, typ string, payload any, timeout time.Duration) *envelope.Envelope {
	t.Helper()
	s.mu.Lock()
	s.nextCID++
	cid := "s" + strconv.Itoa(s.nextCID)
	s.mu.Unlock()
	env, err := envelope.New(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	env.Meta.CorrelationID = cid
	s.Post(t, "", env)
	return s.Await(t, timeout, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid })
}
