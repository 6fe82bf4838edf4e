package demo_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// TestBrowserEventSourceDurable checks the fallback stream (docs/protocol.md,
// "EventSource without an SDK, and Last-Event-ID") with Chromium's own
// EventSource and no SDK: a page on the edge's origin opens
// `/ws/sse?user=reader&room=es-a&room=es-b` on two durable rooms while a Go
// service publishes numbered messages into both. The stream is cut twice
// while messages keep coming: once by the edge (a ctl close 4000 on the
// connection: the browser reconnects by itself, sending Last-Event-ID), once
// by the page (es.close(), then a new EventSource with ?lastEventId=). The
// page must end up with every message of each room exactly once and in
// order, the re-joins must say recovered, and every message's event id must
// hold the positions of both rooms. Last, a stream with a room the reader
// may not join is refused with 403 and the EventSource gives up.
func TestBrowserEventSourceDurable(t *testing.T) {
	const (
		roomA, roomB = "es-a", "es-b"
		feedUser     = "feed"
		wait         = 30 * time.Second
	)
	rooms := []string{roomA, roomB}
	ns := testenv.NATS(t)
	addr := freeAddr(t)
	startEdgeProcess(t, []string{
		"--nats", ns.ClientURL(), "--insecure-dev-users", "--listen", addr,
		"--durable-rooms", "es-*", "--public-rooms", "es-*", "--shutdown-spread", "10ms",
	})
	pub := worker.NewPublisher(testenv.Connect(t, ns.ClientURL()), envelope.DefaultNamespace)
	page := startDriver(t)
	src := "/ws/sse?user=reader&room=" + roomA + "&room=" + roomB
	page.do(t, map[string]any{"op": "esOpen", "pageUrl": "http://" + addr + "/eventsource-test", "src": src})

	published := map[string]int{}
	// publish stores n more numbered messages in each room, alternating.
	publish := func(n int) {
		t.Helper()
		for range n {
			for _, room := range rooms {
				published[room]++
				env, err := envelope.New("chat.message", map[string]any{
					"room": room, "user": feedUser, "text": strconv.Itoa(published[room]), "ts": time.Now().UnixMilli(),
				})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = pub.ToDurableRoom(ctx, room, env)
				cancel()
				if err != nil {
					t.Fatalf("publish %d to %s: %v", published[room], room, err)
				}
			}
		}
	}
	var st esState
	read := func() {
		t.Helper()
		page.do(t, map[string]any{"op": "esLog"}, &st)
	}
	// until polls the page's record until cond holds.
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(wait)
		for read(); !cond(); read() {
			if time.Now().After(deadline) {
				t.Fatalf("not within %v: %s; the page's record:\n%s", wait, what, st.dump())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// connected waits for the stream's n-th $connected and for the
	// $joined of both rooms after it, and returns the connection id and
	// those $joined payloads.
	connected := func(n int) (string, []joinedPayload) {
		t.Helper()
		var id string
		var joined []joinedPayload
		until(fmt.Sprintf("$connected #%d and $joined of both rooms", n), func() bool {
			id, joined = st.connection(n)
			return len(joined) == len(rooms)
		})
		return id, joined
	}
	allArrived := func() bool {
		for _, room := range rooms {
			if len(st.texts(room)) < published[room] {
				return false
			}
		}
		return true
	}

	// The first stream: joined without since.
	conn, joined := connected(1)
	for _, j := range joined {
		if !j.Durable || j.Epoch == "" || j.Recovered != nil {
			t.Errorf("first $joined %+v: want durable with a position and no recovered", j)
		}
	}
	if st.count("session") != 1 {
		t.Errorf("%d session events on the first stream, want 1", st.count("session"))
	}
	publish(10)
	until("the first 10 messages of each room", allArrived)

	// The edge ends the stream (ctl close 4000); Chromium reconnects by
	// itself after its reconnection time (3 s: the edge sends no retry:),
	// sending the last event id as Last-Event-ID.
	lastID := st.lastID()
	errorsBefore := st.count("error")
	if err := pub.Close(context.Background(), conn, 4000, "test: reconnect"); err != nil {
		t.Fatalf("ctl close of %s: %v", conn, err)
	}
	until("the stream's close event and the EventSource's error", func() bool { return st.count("error") > errorsBefore })
	if c := st.closeEvents(); len(c) != 1 || c[0].Code != 4000 || c[0].Reason != "test: reconnect" {
		t.Errorf("close events %+v, want one with code 4000 and the ctl's reason", c)
	}
	if rs := st.lastReadyState(); rs != 0 {
		t.Fatalf("EventSource readyState %d after the stream ended, want 0 (CONNECTING: it reconnects by itself)", rs)
	}
	publish(15) // while the page is away
	read()
	if n := st.count("open"); n != 1 {
		t.Fatalf("the EventSource reopened (%d opens) before the 15 messages per room were stored: they were not published while it was away", n)
	}
	conn2, joined := connected(2)
	if conn2 == conn {
		t.Errorf("the reconnected stream has the old connection id %s", conn)
	}
	for _, j := range joined {
		if j.Recovered == nil || !*j.Recovered {
			t.Errorf("$joined after the automatic reconnect %+v: want recovered true", j)
		}
	}
	if len(st.Requests) < 2 {
		t.Fatalf("%d stream requests seen, want 2", len(st.Requests))
	}
	if got := st.Requests[1].LastEventID; got == nil || *got != lastID {
		t.Errorf("the reconnect's Last-Event-ID header is %s, want %q (the last event id before the cut)", str(got), lastID)
	}
	publish(10) // live again
	until("every message after the automatic reconnect", allArrived)

	// The page ends the stream itself and opens a new EventSource, which
	// sends no Last-Event-ID: the position goes in ?lastEventId=.
	lastID = st.lastID()
	page.do(t, map[string]any{"op": "esClose"})
	publish(15) // while the page is away
	page.do(t, map[string]any{"op": "esStart", "src": src + "&lastEventId=" + url.QueryEscape(lastID)})
	_, joined = connected(3)
	for _, j := range joined {
		if j.Recovered == nil || !*j.Recovered {
			t.Errorf("$joined after the reconnect with ?lastEventId= %+v: want recovered true", j)
		}
	}
	publish(10)
	until("every message after the reconnect with ?lastEventId=", allArrived)
	time.Sleep(300 * time.Millisecond) // late duplicates
	read()
	messages, streams := st.count("message"), len(st.Requests)
	for i, r := range st.Requests {
		if r.Status != http.StatusOK {
			t.Errorf("stream request %d answered %d, want 200", i+1, r.Status)
		}
	}

	// A room the connection may not join (not in --public-rooms) refuses
	// the request with 403 before the stream starts: the EventSource
	// fails for good (readyState CLOSED) instead of retrying.
	page.do(t, map[string]any{"op": "esClose"})
	errorsBefore = st.count("error")
	page.do(t, map[string]any{"op": "esStart", "src": src + "&room=private-1"})
	until("the refused stream's error", func() bool { return st.count("error") > errorsBefore })
	if rs := st.lastReadyState(); rs != 2 {
		t.Errorf("EventSource readyState %d after a room was refused, want 2 (CLOSED: it does not retry)", rs)
	}
	if len(st.Requests) != streams+1 || st.Requests[streams].Status != http.StatusForbidden {
		t.Errorf("the stream with a room not allowed: requests %+v, want one more, answered 403", st.Requests[streams:])
	}
	if n := st.count("message"); n != messages {
		t.Errorf("the refused stream delivered %d messages", n-messages)
	}

	for _, room := range rooms {
		if problems := checkSequence(st.texts(room), published[room]); len(problems) > 0 {
			t.Errorf("%s: the page got %d messages for %d published; %s", room, len(st.texts(room)), published[room], strings.Join(problems, "; "))
		}
	}
	t.Run("event ids", func(t *testing.T) {
		problems, replay := st.checkIDs(rooms)
		if len(problems) > 0 {
			t.Errorf("event ids: %s", strings.Join(problems, "; "))
		}
		if len(replay) > 0 {
			// A stream that resumes from Last-Event-ID keeps every room's
			// position in its ids while it replays one room, so that an
			// EventSource cut during that replay resumes the others too.
			t.Errorf("ids during a replay lack the rooms not re-joined yet: %s", strings.Join(replay, "; "))
		}
	})
	if streams != 3 {
		t.Errorf("%d stream requests, want 3: %+v", streams, st.Requests)
	}
	if len(st.PageErrors) > 0 {
		t.Errorf("uncaught errors in the page:\n%s", strings.Join(st.PageErrors, "\n"))
	}
	if t.Failed() {
		t.Logf("the page's record:\n%s", st.dump())
	}
	t.Logf("%d messages per room over 3 streams; Last-Event-ID %q", published[roomA], lastID)
}

// esState is the driver's esLog answer.
type esState struct {
	Log []struct {
		Kind       string `json:"kind"`
		Data       string `json:"data"`
		ID         string `json:"id"`
		ReadyState int    `json:"readyState"`
	} `json:"log"`
	Requests []struct {
		URL         string  `json:"url"`
		LastEventID *string `json:"lastEventId"`
		Status      int     `json:"status"`
	} `json:"requests"`
	PageErrors []string `json:"pageErrors"`
}

type joinedPayload struct {
	Room      string `json:"room"`
	Durable   bool   `json:"durable"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
}

// esMessage is a message event's envelope, as much as the test reads.
type esMessage struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
	Meta    struct {
		Room   string `json:"room"`
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	} `json:"meta"`
}

func (s *esState) count(kind string) int {
	n := 0
	for _, e := range s.Log {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// connection returns the id of the n-th $connected and the $joined
// payloads that came after it on the same stream.
func (s *esState) connection(n int) (string, []joinedPayload) {
	var id string
	var joined []joinedPayload
	seen := 0
	for _, e := range s.Log {
		if e.Kind != "message" {
			continue
		}
		var m esMessage
		if json.Unmarshal([]byte(e.Data), &m) != nil {
			continue
		}
		switch {
		case m.Type == "$connected":
			seen++
			if seen == n {
				var p struct {
					ConnectionID string `json:"connectionId"`
				}
				_ = json.Unmarshal(m.Payload, &p)
				id = p.ConnectionID
			}
		case m.Type == "$joined" && seen == n:
			var j joinedPayload
			if json.Unmarshal(m.Payload, &j) == nil {
				joined = append(joined, j)
			}
		}
	}
	return id, joined
}

// texts are the texts of room's chat messages, in the order they came.
func (s *esState) texts(room string) []string {
	var out []string
	for _, e := range s.Log {
		if e.Kind != "message" {
			continue
		}
		var m esMessage
		var p struct {
			Room string `json:"room"`
			Text string `json:"text"`
		}
		if json.Unmarshal([]byte(e.Data), &m) != nil || m.Type != "chat.message" || json.Unmarshal(m.Payload, &p) != nil {
			continue
		}
		if p.Room == room {
			out = append(out, p.Text)
		}
	}
	return out
}

// lastID is the id of the last message event: the EventSource's
// lastEventId.
func (s *esState) lastID() string {
	for i := len(s.Log) - 1; i >= 0; i-- {
		if s.Log[i].Kind == "message" {
			return s.Log[i].ID
		}
	}
	return ""
}

func (s *esState) lastReadyState() int {
	for i := len(s.Log) - 1; i >= 0; i-- {
		if s.Log[i].Kind == "error" {
			return s.Log[i].ReadyState
		}
	}
	return -1
}

type closeEvent struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

func (s *esState) closeEvents() []closeEvent {
	var out []closeEvent
	for _, e := range s.Log {
		if e.Kind == "close" {
			var c closeEvent
			_ = json.Unmarshal([]byte(e.Data), &c)
			out = append(out, c)
		}
	}
	return out
}

// checkIDs checks the event ids of the chat messages: each holds the epoch
// and a position for every room, its own room's position is the message's
// offset, and the positions never go back. A missing position of a room
// that the stream is about to re-join (a replay of another room, before
// the $joined of that one) goes to replay, every other problem to problems.
func (s *esState) checkIDs(rooms []string) (problems, replay []string) {
	last := map[string]uint64{}
	streams := 0
	joined := map[string]bool{} // on the current stream
	for i, e := range s.Log {
		var m esMessage
		if e.Kind != "message" || json.Unmarshal([]byte(e.Data), &m) != nil {
			continue
		}
		switch m.Type {
		case "$connected":
			streams++
			clear(joined)
			continue
		case "$joined":
			var j joinedPayload
			_ = json.Unmarshal(m.Payload, &j)
			joined[j.Room] = true
			continue
		case "chat.message":
		default:
			continue
		}
		v, err := url.ParseQuery(e.ID)
		if err != nil || v.Get("e") == "" {
			problems = append(problems, fmt.Sprintf("event %d (%s offset %d): id %q is not e=<epoch>&r.<room>=<offset>...", i, m.Meta.Room, m.Meta.Offset, e.ID))
			continue
		}
		if v.Get("e") != m.Meta.Epoch {
			problems = append(problems, fmt.Sprintf("event %d: id epoch %q, message epoch %q", i, v.Get("e"), m.Meta.Epoch))
		}
		if got := v.Get("r." + m.Meta.Room); got != strconv.FormatUint(m.Meta.Offset, 10) {
			problems = append(problems, fmt.Sprintf("event %d: id has r.%s=%q, the message's offset is %d (id %q)", i, m.Meta.Room, got, m.Meta.Offset, e.ID))
		}
		for _, room := range rooms {
			o, err := strconv.ParseUint(v.Get("r."+room), 10, 64)
			switch {
			case err != nil && streams > 1 && !joined[room]:
				replay = append(replay, fmt.Sprintf("stream %d, event %d (%s offset %d, before the $joined of %s): id %q", streams, i, m.Meta.Room, m.Meta.Offset, room, e.ID))
				continue
			case err != nil:
				problems = append(problems, fmt.Sprintf("event %d: id %q has no position of %s", i, e.ID, room))
				continue
			case o < last[room]:
				problems = append(problems, fmt.Sprintf("event %d: id %q moves %s back from %d", i, e.ID, room, last[room]))
			}
			last[room] = o
		}
		if len(problems) > 10 {
			return append(problems, "..."), replay
		}
	}
	if len(replay) > 3 {
		replay = append(replay[:3], fmt.Sprintf("and %d more", len(replay)-3))
	}
	return problems, replay
}

func (s *esState) dump() string {
	var b strings.Builder
	for _, e := range s.Log {
		switch e.Kind {
		case "error":
			fmt.Fprintf(&b, "  error (readyState %d)\n", e.ReadyState)
		case "open":
			b.WriteString("  open\n")
		default:
			fmt.Fprintf(&b, "  %s id=%q %s\n", e.Kind, e.ID, e.Data)
		}
	}
	for _, r := range s.Requests {
		fmt.Fprintf(&b, "  request %s Last-Event-ID %s: %d\n", r.URL, str(r.LastEventID), r.Status)
	}
	return b.String()
}

func str(s *string) string {
	if s == nil {
		return "(none)"
	}
	return strconv.Quote(*s)
}
