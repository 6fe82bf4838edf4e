package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
)

const wait = 10 * time.Second

// mesh is testenv's mesh without an edge: an embedded NATS server with
// the built-in worker, and a service connection (NC) for tests to act as a
// service. The tests start the edges they need.
type mesh struct{ *testenv.Mesh }

func newMesh(t *testing.T) *mesh {
	t.Helper()
	return &mesh{testenv.NewMesh(t, testenv.MeshOptions{NoEdge: true})}
}

// devEdge is the edge config of these tests: dev mode, presence on, a NATS
// connection of the edge's own.
func (m *mesh) devEdge(t *testing.T) edge.Config {
	cfg := testenv.DevEdge()
	cfg.NATS.Conn = m.Connect(t)
	return cfg
}

// startEdge serves a dev-mode edge on a random port and returns its URL.
func (m *mesh) startEdge(t *testing.T) string {
	t.Helper()
	return m.StartEdge(t, testenv.DevEdge()).URL
}

// servedEdge is an edge on an address the test chose, so that a new edge
// can take its place.
type servedEdge struct {
	stopOnce sync.Once
	stopFn   func()
}

func (s *servedEdge) stop() { s.stopOnce.Do(s.stopFn) }

// serveEdgeAt serves an edge with cfg on addr until stop (or cleanup).
func serveEdgeAt(t *testing.T, addr string, cfg edge.Config) *servedEdge {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	cfg.WebSocket.ShutdownSpread = time.Millisecond
	e, err := edge.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	deadline := time.Now().Add(wait)
	for {
		ln, err = net.Listen("tcp", addr)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // polls, with the deadline above
	}
	mux := http.NewServeMux()
	mux.Handle(e.Path(), e)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	s := &servedEdge{stopFn: func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("edge shutdown: %v", err)
		}
	}}
	t.Cleanup(s.stop)
	return s
}

// freeAddr returns a loopback address nothing listens on (yet).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// fastBackoff keeps reconnect tests short.
var fastBackoff = &client.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}

// dial connects a client and closes it at cleanup.
func dial(t *testing.T, url string, opts client.Options) *client.Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testenv.Logger(t)
	}
	if opts.Reconnect == nil {
		opts.Reconnect = fastBackoff
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// states records a client's state changes.
type states struct {
	mu   sync.Mutex
	list []stateEvent
	ch   chan stateEvent
}

type stateEvent struct {
	State client.State
	Info  client.CloseInfo
}

func newStates() *states { return &states{ch: make(chan stateEvent, 64)} }

func (s *states) record(st client.State, info client.CloseInfo) {
	s.mu.Lock()
	s.list = append(s.list, stateEvent{st, info})
	s.mu.Unlock()
	s.ch <- stateEvent{st, info}
}

// await returns the next state change of state st, skipping others.
func (s *states) await(t *testing.T, st client.State) stateEvent {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case e := <-s.ch:
			if e.State == st {
				return e
			}
		case <-timeout:
			t.Fatalf("no state %s within %s; seen %v", st, wait, s.seen())
		}
	}
}

func (s *states) seen() []client.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]client.State, len(s.list))
	for i, e := range s.list {
		out[i] = e.State
	}
	return out
}

// frames collects the frames of one type a client receives.
type frames chan *envelope.Envelope

func collect(c *client.Client, typ string) frames {
	ch := make(frames, 256)
	c.On(typ, func(e *envelope.Envelope) { ch <- e })
	return ch
}

func (f frames) next(t *testing.T) *envelope.Envelope {
	t.Helper()
	select {
	case e := <-f:
		return e
	case <-time.After(wait):
		t.Fatalf("no frame within %s", wait)
		return nil
	}
}

// connID learns a client's connection id from the Natter-Conn header of a
// message it sends.
func (m *mesh) connID(t *testing.T, c *client.Client) string {
	t.Helper()
	sub, err := m.NC.SubscribeSync("natter.in.whoami")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send("whoami", nil); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatalf("whoami: %v", err)
	}
	return msg.Header.Get(envelope.HeaderConn)
}

// ctl sends a control request for a connection and fails on a refusal.
func (m *mesh) ctl(t *testing.T, conn string, ctl envelope.Control) {
	t.Helper()
	body, _ := json.Marshal(ctl)
	msg, err := m.NC.Request("natter.ctl.conn."+conn, body, wait)
	if err != nil {
		t.Fatalf("ctl %s: %v", ctl.Op, err)
	}
	var rep envelope.ControlReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || !rep.OK {
		t.Fatalf("ctl %s: %s", ctl.Op, msg.Data)
	}
}

// inbox subscribes to natter.in.<typ> as a service and flushes.
func (m *mesh) inbox(t *testing.T, typ string) *nats.Subscription {
	t.Helper()
	sub, err := m.NC.SubscribeSync("natter.in." + typ)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

func nextEnv(t *testing.T, sub *nats.Subscription) (*envelope.Envelope, *nats.Msg) {
	t.Helper()
	msg, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatalf("next on %s: %v", sub.Subject, err)
	}
	env, err := envelope.Decode(msg.Data, 0)
	if err != nil {
		t.Fatal(err)
	}
	return env, msg
}
