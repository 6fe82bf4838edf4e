package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/envelope"
)

// A payload kind of the wirebytes scenario: how one message is sent, and
// the type its receivers get.
type byteKind struct {
	name string
	typ  string // the type members receive
	// chat: the text a client sends as chat.send, which the built-in chat
	// worker turns into chat.message for the room's other members.
	chat string
	// payload: the JSON payload a service publishes to the room.
	payload []byte
}

// chatText is a chat line of ordinary length.
const chatText = "Are we still on for the 3pm review? I pushed the fixes to the branch."

// proseText is about 1 KB of prose: a long chat message.
var proseText = strings.Repeat("The deploy went out at noon and the error rate stayed flat, but the p99 latency of the search endpoint doubled for about ten minutes while the caches warmed up. ", 7)[:999] + "."

// dashboardPayload is one refresh of a monitoring panel, JSON as a Go
// service's encoding/json writes it: three series of samples of a
// latency. With decimals < 0 the samples keep the full float64 precision
// that computed values (rates, averages, quantiles) have; else they are
// rounded to that many decimals.
func dashboardPayload(samples, decimals int) []byte {
	type series struct {
		Name   string    `json:"name"`
		Unit   string    `json:"unit"`
		Values []float64 `json:"values"`
	}
	r := rand.New(rand.NewPCG(1, 2)) // the same samples every run
	p := struct {
		Panel   string   `json:"panel"`
		Host    string   `json:"host"`
		Region  string   `json:"region"`
		StartMs int64    `json:"startMs"`
		StepMs  int32    `json:"stepMs"`
		Series  []series `json:"series"`
	}{Panel: "api-latency", Host: "web-17.prod.internal", Region: "eu-west-1", StartMs: 1765090800000, StepMs: 15000}
	for _, name := range []string{"p50", "p95", "p99"} {
		s := series{Name: name, Unit: "ms"}
		v := 20 + 40*r.Float64()
		for range samples {
			v = max(1, v+r.NormFloat64()*3)
			x := v
			if decimals >= 0 {
				f := math.Pow10(decimals)
				x = math.Round(v*f) / f
			}
			s.Values = append(s.Values, x)
		}
		p.Series = append(p.Series, s)
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	return b
}

func byteKinds() []byteKind {
	return []byteKind{
		{name: "chat", typ: "chat.message", chat: chatText},
		{name: "text1k", typ: "chat.message", chat: proseText},
		// The fanout scenario's tick with its default padding.
		{name: "tick", typ: tickType, payload: appendTick(nil, 1765090800123456789, 12345, strings.Repeat("x", 64))},
		{name: "dash1k", typ: "bench.dashboard", payload: dashboardPayload(15, -1)},
		{name: "dash1k_rounded", typ: "bench.dashboard", payload: dashboardPayload(45, 2)},
	}
}

// probe is a connection of the wirebytes scenario: it joins the room and
// counts what it receives.
type probe struct {
	proto  bool
	read   atomic.Int64 // bytes read from the socket
	frames atomic.Int64 // messages received after the join
	joined chan struct{}
	failed chan string
	state  atomic.Int32 // 0 joining, 1 joined, 2 failed

	mu   sync.Mutex
	last map[string][]byte // the last message of each type
}

func newProbe(proto bool) *probe {
	return &probe{proto: proto, joined: make(chan struct{}), failed: make(chan string, 1), last: map[string][]byte{}}
}

func (p *probe) OnOpen(*gws.Conn)             {}
func (p *probe) OnClose(*gws.Conn, error)     {}
func (p *probe) OnPing(c *gws.Conn, b []byte) { _ = c.WritePong(b) }
func (p *probe) OnPong(*gws.Conn, []byte)     {}
func (p *probe) OnMessage(_ *gws.Conn, m *gws.Message) {
	defer m.Close()
	b := m.Bytes()
	var typ string
	if p.proto {
		e, ok := parseEnvelope(b)
		if !ok {
			p.fail("undecodable frame")
			return
		}
		typ = string(e.typ)
	} else {
		env, err := envelope.Decode(b, len(b)+1)
		if err != nil {
			p.fail("undecodable frame")
			return
		}
		typ = env.Type
	}
	switch p.state.Load() {
	case 0:
		switch typ {
		case envelope.TypeConnected:
		case envelope.TypeJoined:
			if p.state.CompareAndSwap(0, 1) {
				close(p.joined)
			}
		default:
			p.fail("join: " + truncate(fmt.Sprintf("%q", b), 120))
		}
	case 1:
		p.mu.Lock()
		p.last[typ] = append([]byte(nil), b...)
		p.mu.Unlock()
		p.frames.Add(1)
	}
}

func (p *probe) fail(reason string) {
	if p.state.CompareAndSwap(0, 2) {
		p.failed <- reason
	}
}

// lastOf returns the last message of type typ.
func (p *probe) lastOf(typ string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last[typ]
}

// dialProbe connects p, joins room and waits for $joined.
func dialProbe(ctx context.Context, d *dialer, p *probe, room string, wg *sync.WaitGroup) (*gws.Conn, error) {
	conn, err := d.dial(0, p, wg, &p.read)
	if err != nil {
		return nil, fmt.Errorf("dial: %s", errorKind(err))
	}
	op, frame := gws.OpcodeText, []byte(joinFrame(room))
	if p.proto {
		op, frame = gws.OpcodeBinary, protoJoinFrame(room)
	}
	if err := conn.WriteMessage(op, frame); err != nil {
		_ = conn.NetConn().Close()
		return nil, fmt.Errorf("join: write: %s", errorKind(err))
	}
	t := time.NewTimer(joinTimeout)
	defer t.Stop()
	select {
	case <-p.joined:
		return conn, nil
	case reason := <-p.failed:
		err = errors.New(reason)
	case <-t.C:
		err = errors.New("join: no $joined in time")
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = conn.WriteClose(1000, nil)
	return nil, err
}

// runWireBytes: a JSON member and a protobuf member join Room; for each
// payload kind Messages messages are sent at Rate, and each member's
// socket bytes per delivery are read.
func runWireBytes(ctx context.Context, cfg *Config, t *target, run int) (*Result, error) {
	jd, err := newDialer(t.url, 1)
	if err != nil {
		return nil, err
	}
	pd := *jd
	pd.wire = WireProtobuf
	senderURL := t.url + "?user=alice"
	if strings.Contains(t.url, "?") {
		senderURL = t.url + "&user=alice"
	}
	sd := *jd
	sd.url = senderURL

	var loops sync.WaitGroup
	var conns []*gws.Conn
	defer func() {
		for _, c := range conns {
			_ = c.WriteClose(1000, nil)
		}
		waitBounded(&loops, closeWait)
	}()
	jp, pp, sp := newProbe(false), newProbe(true), newProbe(false)
	for _, x := range []struct {
		d *dialer
		p *probe
	}{{jd, jp}, {&pd, pp}, {&sd, sp}} {
		c, err := dialProbe(ctx, x.d, x.p, cfg.Room, &loops)
		if err != nil {
			return nil, fmt.Errorf("bench: wirebytes: %w", err)
		}
		conns = append(conns, c)
	}
	sender := conns[2]

	ns, err := envelope.NewNamespace(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	s, err := ns.Room(cfg.Room)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	subject := string(s)
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("natter-bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("bench: connect NATS %s: %w", cfg.NATSURL, err)
	}
	defer nc.Close()

	var l line
	l.add("scenario", ScenarioWireBytes)
	l.add("server", t.name)
	if cfg.Runs > 1 {
		l.int("run", int64(run))
	}
	l.int("messages", int64(cfg.Messages))
	k := int64(cfg.Messages)
	for _, kind := range byteKinds() {
		jr0, pr0 := jp.read.Load(), pp.read.Load()
		jf0, pf0 := jp.frames.Load(), pp.frames.Load()
		env := &envelope.Envelope{Type: kind.typ, Payload: kind.payload}
		if kind.chat != "" {
			if env, err = envelope.New("chat.send", map[string]string{"room": cfg.Room, "text": kind.chat}); err != nil {
				return nil, err
			}
		}
		frame, err := envelope.Encode(env)
		if err != nil {
			return nil, err
		}
		_, err = pace(ctx, time.Now(), cfg.Rate, k, func(int64, time.Time) error {
			if kind.chat != "" {
				return sender.WriteMessage(gws.OpcodeText, frame)
			}
			return nc.Publish(subject, frame)
		})
		if err != nil {
			return nil, fmt.Errorf("bench: wirebytes: send: %w", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for jp.frames.Load()-jf0 < k || pp.frames.Load()-pf0 < k {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("bench: wirebytes: %s: json member got %d, protobuf member %d of %d messages", kind.name, jp.frames.Load()-jf0, pp.frames.Load()-pf0, k)
			}
			if !sleepCtx(ctx, 5*time.Millisecond) {
				return nil, ctx.Err()
			}
		}
		// Anything else arriving would be counted as bytes: wait a
		// moment and make sure nothing did.
		sleepCtx(ctx, 200*time.Millisecond)
		if jn, pn := jp.frames.Load()-jf0, pp.frames.Load()-pf0; jn != k || pn != k {
			return nil, fmt.Errorf("bench: wirebytes: %s: json member got %d, protobuf member %d messages, want %d each", kind.name, jn, pn, k)
		}
		jb := float64(jp.read.Load()-jr0) / float64(k)
		pb := float64(pp.read.Load()-pr0) / float64(k)
		l.num(kind.name+"_json_bytes", jb, 1, "")
		l.num(kind.name+"_protobuf_bytes", pb, 1, "")
		l.num(kind.name+"_pct", pb/jb*100, 1, "")
		var payloadLen int
		if env, err := envelope.Decode(jp.lastOf(kind.typ), 0); err == nil {
			payloadLen = len(env.Payload)
		}
		l.int(kind.name+"_payload_json_bytes", int64(payloadLen))
		body := "none"
		if e, ok := parseEnvelope(pp.lastOf(kind.typ)); ok {
			switch {
			case e.payload != nil:
				body = "payload"
			case e.json != nil:
				body = "json"
			}
		}
		l.add(kind.name+"_protobuf_body", body)
	}
	return &Result{Scenario: ScenarioWireBytes, Server: t.name, Fields: l.fields}, nil
}
