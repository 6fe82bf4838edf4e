package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/wire"
	"github.com/natter/natter/pkg/worker"
)

// shipped are the shipped schemas, compiled once for every test (the edge
// and the protobuf clients each take them).
var shipped = sync.OnceValues(func() (*schema.Registry, error) { return schema.Load(schema.Config{}) })

func shippedSchemas(t *testing.T) *schema.Registry {
	t.Helper()
	reg, err := shipped()
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// schemaEdge is devEdge with the shipped schemas, which the binary wire
// needs to carry their types as protobuf.
func (m *mesh) schemaEdge(t *testing.T) edge.Config {
	cfg := m.devEdge(t)
	cfg.Schemas = shippedSchemas(t)
	return cfg
}

// pbOptions are the options of a client on the binary wire.
func pbOptions(t *testing.T, user string) client.Options {
	return client.Options{User: user, Wire: client.WireProtobuf, Schemas: shippedSchemas(t)}
}

// TestProtobufSameMessages: a JSON client and a protobuf client in one
// room get the same messages: a chat message the worker sends (a schema
// type, protobuf on the binary wire), a service's message without a schema
// (JSON text on it) with meta keys of its own, and a chat message with a
// 64-bit integer past 2^53.
func TestProtobufSameMessages(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	url := m.StartEdge(t, m.schemaEdge(t)).URL
	jc := dial(t, url, client.Options{User: "bob"})
	pc := dial(t, url, pbOptions(t, "carol"))
	sender := dial(t, url, pbOptions(t, "alice"))
	ctx := context.Background()
	for _, c := range []*client.Client{jc, pc, sender} {
		if err := c.Join(ctx, "room1"); err != nil {
			t.Fatal(err)
		}
	}
	jm, pm := collect(jc, "chat.message"), collect(pc, "chat.message")
	jn, pn := collect(jc, "svc.note"), collect(pc, "svc.note")

	same := func(what string, j, p *envelope.Envelope, into func() any) {
		t.Helper()
		if j.Type != p.Type || j.Meta.Room != p.Meta.Room || !reflect.DeepEqual(j.Meta.Extra, p.Meta.Extra) {
			t.Fatalf("%s: envelopes differ:\njson     %s %+v\nprotobuf %s %+v", what, j.Type, j.Meta, p.Type, p.Meta)
		}
		var jv, pv any
		if err := json.Unmarshal(j.Payload, &jv); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(p.Payload, &pv); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(jv, pv) {
			t.Fatalf("%s: payloads differ:\njson     %s\nprotobuf %s", what, j.Payload, p.Payload)
		}
		if into != nil {
			js, ps := into(), into()
			if err := json.Unmarshal(j.Payload, js); err != nil {
				t.Fatalf("%s: json payload into %T: %v", what, js, err)
			}
			if err := json.Unmarshal(p.Payload, ps); err != nil {
				t.Fatalf("%s: protobuf payload into %T: %v", what, ps, err)
			}
			if !reflect.DeepEqual(js, ps) {
				t.Fatalf("%s: decoded payloads differ:\njson     %+v\nprotobuf %+v", what, js, ps)
			}
		}
	}

	// Sent on the binary wire, handled by the worker, delivered to both.
	text := `héllo <b>&</b> ☃ "quoted"`
	if err := sender.Send("chat.send", map[string]string{"room": "room1", "text": text}); err != nil {
		t.Fatal(err)
	}
	j, p := jm.next(t), pm.next(t)
	same("chat.message", j, p, func() any { return new(chat.Message) })
	var msg chat.Message
	if err := json.Unmarshal(p.Payload, &msg); err != nil || msg.Text != text || msg.User != "alice" || msg.TS == 0 || msg.Conn == "" {
		t.Fatalf("chat.message %+v %v", msg, err)
	}

	// A service's message of a type without a schema, with meta of its own.
	if err := m.NC.Publish("natter.out.room.room1", []byte(`{"type":"svc.note","meta":{"trace":"t-1","n":[1,2]},"payload":{"a":[1,2.5,"x"],"b":{"c":null}}}`)); err != nil {
		t.Fatal(err)
	}
	same("svc.note", jn.next(t), pn.next(t), nil)

	// 64-bit integers: exact on both wires when decoded into int64.
	big, _ := envelope.New("chat.message", chat.Message{Room: "room1", Text: "t", User: "svc", Conn: "x.1", TS: 1<<53 + 1})
	b, _ := envelope.Encode(big)
	if err := m.NC.Publish("natter.out.room.room1", b); err != nil {
		t.Fatal(err)
	}
	j, p = jm.next(t), pm.next(t)
	same("chat.message with a 64-bit ts", j, p, func() any { return new(chat.Message) })
	if err := json.Unmarshal(p.Payload, &msg); err != nil || msg.TS != 1<<53+1 {
		t.Fatalf("ts %d %v", msg.TS, err)
	}
}

// TestProtobufCall: RPC on the binary wire, answered by the worker: a type
// without a schema (echo), replies with 64-bit integers (ping, chat.send),
// a payload that breaks its schema (refused by the edge with the JSON path
// of the violation), and a type no one serves.
func TestProtobufCall(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	c := dial(t, m.StartEdge(t, m.schemaEdge(t)).URL, pbOptions(t, "alice"))
	ctx := context.Background()

	var out map[string]any
	if err := c.Call(ctx, "echo", map[string]any{"hello": "world", "n": 1.5}, &out); err != nil || out["hello"] != "world" || out["n"] != 1.5 {
		t.Fatalf("echo: %v %v", out, err)
	}
	var pong struct {
		Time   int64  `json:"time"`
		Worker string `json:"worker"`
	}
	if err := c.Call(ctx, "ping", nil, &pong); err != nil || pong.Time < time.Now().Add(-time.Minute).UnixMilli() {
		t.Fatalf("ping: %+v %v", pong, err)
	}
	if err := c.Join(ctx, "general"); err != nil {
		t.Fatal(err)
	}
	var sent struct {
		TS int64 `json:"ts"`
	}
	if err := c.Call(ctx, "chat.send", map[string]string{"room": "general", "text": "hi"}, &sent); err != nil || sent.TS == 0 {
		t.Fatalf("chat.send: %+v %v", sent, err)
	}

	err := c.Call(ctx, "chat.send", map[string]string{"room": "general", "text": ""}, nil)
	var re *rpc.Error
	if !errors.Is(err, rpc.ErrInvalidArgument) || !errors.As(err, &re) {
		t.Fatalf("empty text: %v, want INVALID_ARGUMENT", err)
	}
	var details struct {
		Violations []schema.Violation `json:"violations"`
	}
	if err := json.Unmarshal(re.Details, &details); err != nil || len(details.Violations) != 1 ||
		details.Violations[0].Field != "text" || details.Violations[0].Rule != "string.min_len" {
		t.Fatalf("details %s (%v), want one violation of text string.min_len", re.Details, err)
	}
	// A JSON type the message cannot hold goes as JSON text: the edge's
	// validation names the path.
	err = c.Call(ctx, "chat.send", map[string]any{"room": "general", "text": 5}, nil)
	if !errors.Is(err, rpc.ErrInvalidArgument) || !errors.As(err, &re) || !strings.Contains(string(re.Details), `"field":"text"`) {
		t.Fatalf("text 5: %v %s", err, detailsOf(err))
	}

	if err := c.Call(ctx, "nobody.listens", nil, nil); !errors.Is(err, rpc.ErrUnavailable) {
		t.Fatalf("no worker: %v", err)
	}
}

func detailsOf(err error) string {
	var re *rpc.Error
	if errors.As(err, &re) {
		return string(re.Details)
	}
	return ""
}

// TestProtobufCallAbort: cancelling a call on the binary wire sends
// $ws:abort, which the edge turns into the service's abort.
func TestProtobufCallAbort(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	reqs := m.silent(t, "slow")
	aborts, err := m.NC.SubscribeSync("natter.ctl.abort")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, m.StartEdge(t, m.schemaEdge(t)).URL, pbOptions(t, "alice"))

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Call(ctx, "slow", map[string]int{"n": 1}, nil) }()
	select {
	case req := <-reqs:
		if env, err := envelope.Decode(req.Data, 0); err != nil || string(env.Payload) != `{"n":1}` {
			t.Fatalf("request %s: %v", req.Data, err)
		}
		cancel()
		if err := <-errc; !errors.Is(err, rpc.ErrCanceled) {
			t.Fatalf("got %v, want CANCELLED", err)
		}
		msg, err := aborts.NextMsg(wait)
		if err != nil {
			t.Fatalf("no abort: %v", err)
		}
		if string(msg.Data) != req.Reply {
			t.Fatalf("abort of %q, want %q", msg.Data, req.Reply)
		}
	case <-time.After(wait):
		t.Fatal("request did not reach the service")
	}
}

// TestProtobufServerRequest: a service's request to a protobuf client is
// answered by its Handle handler.
func TestProtobufServerRequest(t *testing.T) {
	t.Parallel()
	m := newMesh(t)
	c := dial(t, m.StartEdge(t, m.schemaEdge(t)).URL, pbOptions(t, "alice"))
	c.Handle("confirm", func(_ context.Context, env *envelope.Envelope) (any, error) {
		var q map[string]string
		_ = json.Unmarshal(env.Payload, &q)
		return map[string]string{"answer": "yes to " + q["q"]}, nil
	})
	// A round trip first, as TestHandleServerRequest does: the edge queues
	// $connected before it adds the connection to its table (register), so
	// an Ask right after Dial may find "no such connection" (reported).
	conn := m.connID(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var out map[string]string
	if err := rpc.Ask(ctx, m.NC, envelope.DefaultNamespace, conn, "confirm", map[string]string{"q": "deploy?"}, &out); err != nil {
		t.Fatal(err)
	}
	if out["answer"] != "yes to deploy?" {
		t.Fatalf("reply %v", out)
	}
}

// TestProtobufDurablePositions: deliveries of a durable room carry their
// position (meta.offset, meta.epoch) on the binary wire as on JSON, and
// the client tracks it.
func TestProtobufDurablePositions(t *testing.T) {
	t.Parallel()
	const room = "dur-pb"
	m := newMesh(t)
	cfg := m.durableEdge(t, 0)
	cfg.Schemas = shippedSchemas(t)
	url := testenv.StartEdge(t, cfg).URL
	jc := dial(t, url, client.Options{User: "bob"})
	pc := dial(t, url, pbOptions(t, "carol"))
	ctx := context.Background()
	for _, c := range []*client.Client{jc, pc} {
		if err := c.Join(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	jf, pf := collect(jc, "chat.msg"), collect(pc, "chat.msg")
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	var offsets []uint64
	for i := range 3 {
		off, err := publishDurable(ctx, pub, room, i)
		if err != nil {
			t.Fatal(err)
		}
		offsets = append(offsets, off)
	}
	for i, off := range offsets {
		j, p := jf.next(t), pf.next(t)
		jp, jok := client.OffsetOf(j)
		pp, pok := client.OffsetOf(p)
		if !jok || !pok || jp != pp || pp.Offset != off || pp.Epoch == "" || string(j.Payload) != string(p.Payload) {
			t.Fatalf("message %d: json %+v %s, protobuf %+v %s, want offset %d", i, jp, j.Payload, pp, p.Payload, off)
		}
	}
	testenv.Eventually(t, wait, "position tracked", func() bool {
		pos, ok := pc.Position(room)
		return ok && pos.Offset == offsets[len(offsets)-1]
	})
	// History pages come as a reply frame: same on both wires.
	jh, err := jc.History(ctx, room, client.HistoryQuery{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	ph, err := pc.History(ctx, room, client.HistoryQuery{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(ph.Messages) != 3 || ph.Epoch != jh.Epoch || len(jh.Messages) != 3 {
		t.Fatalf("history: json %d %q, protobuf %d %q", len(jh.Messages), jh.Epoch, len(ph.Messages), ph.Epoch)
	}
}

// TestProtobufOptions: LoadSchemas, and the Wire option's validation.
func TestProtobufOptions(t *testing.T) {
	t.Parallel()
	types, err := client.LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	if types.Message(wire.Client, "chat.send") == nil || types.Message(wire.Server, "chat.message") == nil {
		t.Fatal("shipped schemas missing")
	}
	if _, err := client.LoadSchemas("/nonexistent-natter-dir"); err == nil {
		t.Fatal("LoadSchemas of a missing dir passed")
	}
	if _, err := client.New("ws://127.0.0.1:1/ws", client.Options{Wire: "xml"}); !errors.Is(err, client.ErrInvalidOptions) {
		t.Fatalf("Wire xml: %v", err)
	}
}

// TestProtobufMaxMessageSize: on the binary wire a send must fit the limit
// as a binary frame (the edge closes with 1009 past it), and its JSON form
// 4 times the limit (the edge refuses a frame whose JSON form is past it).
func TestProtobufMaxMessageSize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const proto = `syntax = "proto3";
package sizetest.v1;
import "natter/v1/options.proto";
message Samples {
  option (natter.v1.client_type) = "samples";
  repeated double v = 1;
}
`
	if err := os.WriteFile(filepath.Join(dir, "s.proto"), []byte(proto), 0o644); err != nil {
		t.Fatal(err)
	}
	types, err := client.LoadSchemas(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New("ws://127.0.0.1:1/ws", client.Options{Wire: client.WireProtobuf, Schemas: types, MaxMessageSize: 1024, Reconnect: &client.Backoff{Initial: time.Hour, Max: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	zeros := func(n int) map[string][]float64 { return map[string][]float64{"v": make([]float64, n)} }
	tests := []struct {
		name    string
		typ     string
		payload any
		want    error
	}{
		{"small", "samples", zeros(10), nil},
		{"binary over, JSON under", "samples", zeros(200), client.ErrTooLarge}, // 8 bytes a zero against 2
		// A control character is 6 bytes of JSON (\u0001) and 1 of protobuf.
		{"JSON under 4 times, binary under", "chat.send", map[string]string{"room": "r", "text": strings.Repeat("\x01", 600)}, nil},
		{"JSON over 4 times, binary under", "chat.send", map[string]string{"room": "r", "text": strings.Repeat("\x01", 800)}, client.ErrTooLarge},
	}
	for _, tt := range tests {
		if err := c.Send(tt.typ, tt.payload); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestProtobufReconnect: a protobuf client's buffered sends and re-joins
// go out on the binary wire of the next connection, after an edge
// restart.
func TestProtobufReconnect(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.schemaEdge(t))
	st := newStates()
	opts := pbOptions(t, "alice")
	opts.OnState = st.record
	c := dial(t, "ws://"+addr+"/ws", opts)
	st.await(t, client.StateOpen)
	news := collect(c, "news")
	if err := c.Join(context.Background(), "general"); err != nil {
		t.Fatal(err)
	}
	first.stop()
	st.await(t, client.StateReconnecting)
	in := m.inbox(t, "chat.send")
	for i := range 3 {
		if err := c.Send("chat.send", map[string]string{"room": "general", "text": "m" + string(rune('0'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	serveEdgeAt(t, addr, m.schemaEdge(t))
	st.await(t, client.StateOpen)
	for i := range 3 {
		env, _ := nextEnv(t, in)
		var p map[string]string
		if err := json.Unmarshal(env.Payload, &p); err != nil || p["room"] != "general" || p["text"] != "m"+string(rune('0'+i)) {
			t.Fatalf("sent %d: %s %v", i, env.Payload, err)
		}
	}
	if err := m.NC.Publish("natter.out.room.general", []byte(`{"type":"news","payload":"after"}`)); err != nil {
		t.Fatal(err)
	}
	if got := news.next(t); string(got.Payload) != `"after"` {
		t.Fatalf("got %s", got.Payload)
	}
}
