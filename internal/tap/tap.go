package tap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// Record is one message as the tap shows it; with Config.JSON, one line of
// output.
type Record struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"dir"`  // in, out, ctl, evt
	Kind      string    `json:"kind"` // in, room, user, conn, all, durable, ctl, evt
	ID        string    `json:"id,omitempty"`
	Subject   string    `json:"subject"`
	Type      string    `json:"type,omitempty"` // the envelope's type; a control's op; an event's name
	Conn      string    `json:"conn,omitempty"`
	User      string    `json:"user,omitempty"`
	Edge      string    `json:"edge,omitempty"`
	Room      string    `json:"room,omitempty"` // a control's or an event's room
	// Request is set on inbound messages with a reply subject (RPC): the
	// reply goes to the edge's inbox, which the tap does not read.
	Request       bool   `json:"request,omitempty"`
	CorrelationID string `json:"cid,omitempty"`
	Seq           uint64 `json:"seq,omitempty"` // durable rooms: Nats-Sequence
	Size          int    `json:"size"`          // the whole body, in bytes
	// Undecodable is the decoding error of a body that is no envelope
	// (or control, or event); nothing else of it is shown.
	Undecodable string `json:"undecodable,omitempty"`
	PayloadSize int    `json:"payloadSize"`
	// Payload is the payload, with Config.Payloads, when it fits in
	// MaxPayload; otherwise PayloadText holds its first MaxPayload bytes.
	Payload     json.RawMessage `json:"payload,omitempty"`
	PayloadText string          `json:"payloadText,omitempty"`
	Truncated   bool            `json:"truncated,omitempty"`
}

// Tap shows live traffic of a Natter deployment.
type Tap struct {
	cfg  Config
	subs []string
}

// New checks cfg and returns a tap. Errors wrap ErrInvalidConfig.
func New(cfg Config) (*Tap, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Tap{cfg: cfg, subs: cfg.Subjects()}, nil
}

// Subjects returns the subscriptions Run makes.
func (t *Tap) Subjects() []string { return append([]string(nil), t.subs...) }

// Run subscribes (core NATS only: no JetStream state), writes a line to w
// per message that passes the filters, and returns when ctx ends (nil),
// after Config.Count messages (nil), or when a subscription fails. It
// returns how many messages NATS dropped because w was too slow.
func (t *Tap) Run(ctx context.Context, nc *nats.Conn, w io.Writer) (dropped int, err error) {
	ch := make(chan *nats.Msg, t.cfg.Buffer)
	subs := make([]*nats.Subscription, 0, len(t.subs))
	defer func() {
		for _, s := range subs {
			if n, derr := s.Dropped(); derr == nil {
				dropped += n
			}
			_ = s.Unsubscribe()
		}
	}()
	for _, s := range t.subs {
		sub, err := nc.ChanSubscribe(s, ch)
		if err != nil {
			return 0, fmt.Errorf("tap: subscribe %s: %w", s, err)
		}
		subs = append(subs, sub)
	}
	// A subscription the server refuses (permissions) fails here. nats.go
	// wants a deadline for a flush; the caller's ctx still ends it sooner.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = nc.FlushWithContext(fctx)
	cancel()
	if err != nil && ctx.Err() == nil {
		return 0, fmt.Errorf("tap: subscribe: %w", err)
	}
	if err := nc.LastError(); err != nil {
		return 0, fmt.Errorf("tap: subscribe: %w", err)
	}
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	shown := 0
	for {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			return dropped, nil
		case m = <-ch:
		}
		r, ok := t.record(m, time.Now())
		if !ok {
			continue
		}
		if err := t.write(bw, r); err != nil {
			return dropped, err
		}
		// Lines go out as they come, unless more are already waiting.
		if len(ch) == 0 {
			if err := bw.Flush(); err != nil {
				return dropped, err
			}
		}
		shown++
		if t.cfg.Count > 0 && shown >= t.cfg.Count {
			return dropped, nil
		}
	}
}

// record decodes m and applies the filters.
func (t *Tap) record(m *nats.Msg, now time.Time) (Record, bool) {
	c := &t.cfg
	p := c.Namespace.Prefix()
	r := Record{Time: now, Subject: m.Subject, Size: len(m.Data)}
	rest, _ := strings.CutPrefix(m.Subject, p+".")
	var body []byte // what counts as the payload
	switch {
	case strings.HasPrefix(rest, "in."):
		r.Direction, r.Kind = DirectionIn, "in"
		r.Type = strings.TrimPrefix(rest, "in.")
		r.Conn = m.Header.Get(envelope.HeaderConn)
		r.User = m.Header.Get(envelope.HeaderUser)
		r.Edge = m.Header.Get(envelope.HeaderEdge)
		r.Request = m.Reply != ""
		body = t.envelope(&r, m.Data)
	case strings.HasPrefix(rest, "durable.live."):
		r.Direction, r.Kind, r.ID = DirectionOut, "durable", strings.TrimPrefix(rest, "durable.live.")
		r.Seq, _ = strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		body = t.envelope(&r, m.Data)
	case strings.HasPrefix(rest, "evt."):
		r.Direction, r.Kind, r.Type = "evt", "evt", strings.TrimPrefix(rest, "evt.")
		var e presence.Event
		if err := json.Unmarshal(m.Data, &e); err != nil {
			r.Undecodable = err.Error()
		}
		r.Conn, r.User, r.Edge, r.Room = e.Conn, e.User, e.Edge, e.Room
		body = m.Data
	default:
		kind, id := c.Namespace.Parse(m.Subject)
		r.ID = id
		switch kind {
		case envelope.KindRoom:
			r.Direction, r.Kind = DirectionOut, "room"
		case envelope.KindUser:
			r.Direction, r.Kind = DirectionOut, "user"
			r.User = id
		case envelope.KindConn:
			r.Direction, r.Kind = DirectionOut, "conn"
			r.Conn = id
		case envelope.KindAll:
			r.Direction, r.Kind = DirectionOut, "all"
		case envelope.KindCtl:
			r.Direction, r.Kind = "ctl", "ctl"
			r.Conn = id
			var ctl envelope.Control
			if err := json.Unmarshal(m.Data, &ctl); err != nil {
				r.Undecodable = err.Error()
			}
			r.Type, r.Room = ctl.Op, ctl.Room
			body = m.Data
		default:
			return r, false // not a subject of this namespace
		}
		if kind != envelope.KindCtl {
			body = t.envelope(&r, m.Data)
		}
	}
	if !t.keep(&r) {
		return r, false
	}
	t.payload(&r, body)
	return r, true
}

// envelope decodes an envelope into r and returns its payload.
func (t *Tap) envelope(r *Record, data []byte) []byte {
	// Up to the largest body NATS carries: the tap shows, it does not
	// enforce the edge's limit.
	e, err := envelope.Decode(data, len(data)+1)
	if err != nil {
		r.Undecodable = err.Error()
		return nil
	}
	if r.Kind != "in" || r.Type == "" {
		r.Type = e.Type
	}
	r.CorrelationID = e.Meta.CorrelationID
	if r.Room == "" && e.Meta.Room != "" {
		r.Room = e.Meta.Room
	}
	return e.Payload
}

// keep applies the filters to r.
func (t *Tap) keep(r *Record) bool {
	c := &t.cfg
	switch c.Direction {
	case DirectionIn:
		if r.Direction != DirectionIn && r.Direction != "evt" {
			return false
		}
	case DirectionOut:
		if r.Direction == DirectionIn {
			return false
		}
	}
	if len(c.Types) > 0 && r.Kind != "evt" && !match(c.Types, r.Type) {
		return false
	}
	if len(c.Rooms)+len(c.Users)+len(c.Conns) == 0 {
		return true
	}
	roomKind := r.Kind == "room" || r.Kind == "durable"
	return roomKind && match(c.Rooms, r.ID) ||
		r.User != "" && match(c.Users, r.User) ||
		r.Conn != "" && match(c.Conns, r.Conn)
}

// payload fills r's payload fields from body, shown only with
// Config.Payloads.
func (t *Tap) payload(r *Record, body []byte) {
	r.PayloadSize = len(body)
	if !t.cfg.Payloads || r.Undecodable != "" || len(body) == 0 {
		return
	}
	// One line per message: a payload sent indented is shown compact.
	var compact bytes.Buffer
	if json.Compact(&compact, body) == nil {
		body = compact.Bytes()
	}
	if len(body) <= t.cfg.MaxPayload {
		r.Payload = json.RawMessage(body)
		return
	}
	r.PayloadText, r.Truncated = string(body[:t.cfg.MaxPayload]), true
}

// write writes r as one line.
func (t *Tap) write(w *bufio.Writer, r Record) error {
	if t.cfg.JSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, _ = w.Write(b)
		return w.WriteByte('\n')
	}
	_, err := io.WriteString(w, Format(r, t.cfg.Payloads))
	return err
}

// Format is r as one line of text, ending in a newline.
func Format(r Record, payloads bool) string {
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05.000"))
	fmt.Fprintf(&b, " %-3s %s", r.Direction, r.Kind)
	if r.ID != "" {
		b.WriteString(":" + r.ID)
	}
	kv := func(k, v string) {
		if v != "" {
			b.WriteString(" " + k + "=" + v)
		}
	}
	kv("type", r.Type)
	if r.Conn != r.ID { // out.conn and ctl name it already
		kv("conn", r.Conn)
	}
	if r.User != r.ID {
		kv("user", r.User)
	}
	if r.Kind != "room" && r.Kind != "durable" {
		kv("room", r.Room)
	}
	kv("cid", r.CorrelationID)
	if r.Request {
		b.WriteString(" request")
	}
	if r.Seq != 0 {
		kv("seq", strconv.FormatUint(r.Seq, 10))
	}
	fmt.Fprintf(&b, " size=%d", r.Size)
	switch {
	case r.Undecodable != "":
		fmt.Fprintf(&b, " undecodable (%s)", r.Undecodable)
	case r.PayloadSize == 0:
	case !payloads:
		fmt.Fprintf(&b, " payload=<redacted %d B>", r.PayloadSize)
	case r.Truncated:
		fmt.Fprintf(&b, " payload=%s...<truncated, %d B>", r.PayloadText, r.PayloadSize)
	default:
		fmt.Fprintf(&b, " payload=%s", r.Payload)
	}
	b.WriteByte('\n')
	return b.String()
}
