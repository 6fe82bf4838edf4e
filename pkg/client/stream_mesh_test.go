package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// A client reading a response stream whose edge goes away mid-stream
// reconnects to the edge that takes its place, joins the stream again
// from the last offset it got, and reads the whole text exactly once.
func TestStreamAcrossEdgeRestart(t *testing.T) {
	m := newMesh(t)
	addr := freeAddr(t)
	first := serveEdgeAt(t, addr, m.devEdge(t))
	st := newStates()
	c := dial(t, "ws://"+addr+"/ws", client.Options{User: "alice", OnState: st.record})
	pub := worker.NewPublisher(m.NC, envelope.DefaultNamespace)
	ctx := context.Background()
	w, err := pub.OpenStream(ctx, worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Stream(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	write := func(from, to int) {
		for i := from; i < to; i++ {
			fmt.Fprintf(&want, "token%d ", i)
			if _, err := fmt.Fprintf(w, "token%d ", i); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 100)
	var got strings.Builder
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for got.Len() < 200 {
		ch, err := s.Next(rctx)
		if err != nil {
			t.Fatal(err)
		}
		got.WriteString(ch.Text)
	}
	first.stop()
	st.await(t, client.StateReconnecting)
	write(100, 400) // written while the client is away
	serveEdgeAt(t, addr, m.devEdge(t))
	st.await(t, client.StateOpen)
	write(400, 500)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rest, err := s.Text(rctx)
	if err != nil {
		t.Fatal(err)
	}
	got.WriteString(rest)
	if got.String() != want.String() {
		t.Fatalf("read %d bytes, want %d: a gap or a duplicate across the reconnect", got.Len(), want.Len())
	}
	if s.Offset() != int64(want.Len()) {
		t.Fatalf("offset %d, want %d", s.Offset(), want.Len())
	}
}

// Cancel reaches the producer: its context ends and the reader gets
// CANCELLED after the text written before.
func TestStreamCancelFromClient(t *testing.T) {
	m := newMesh(t)
	c := dial(t, m.startEdge(t), client.Options{User: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	w, err := worker.NewPublisher(m.NC, envelope.DefaultNamespace).OpenStream(ctx, worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.WriteString("some ")
	s, err := c.Stream(ctx, w.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ch, err := s.Next(ctx); err != nil || ch.Text != "some " {
		t.Fatalf("%+v %v", ch, err)
	}
	if err := s.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Context().Done():
	case <-ctx.Done():
		t.Fatal("the producer did not see the cancel")
	}
	_ = w.Close()
	_, err = s.Next(ctx)
	if !errors.Is(err, rpc.ErrCanceled) {
		t.Fatalf("end %v, want CANCELLED", err)
	}
	// Another user may not read it.
	bob := dial(t, m.startEdge(t), client.Options{User: "bob"})
	if _, err := bob.Stream(ctx, w.ID(), 0); !errors.Is(err, rpc.ErrPermissionDenied) {
		t.Fatalf("bob: %v", err)
	}
	// Done: Next ends with io.EOF.
	w2, _ := worker.NewPublisher(m.NC, envelope.DefaultNamespace).OpenStream(ctx, worker.StreamTo{User: "alice"})
	_, _ = w2.WriteString("all")
	_ = w2.Close()
	s2, err := c.Stream(ctx, w2.ID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := s2.Text(ctx); err != nil || text != "all" {
		t.Fatalf("%q %v", text, err)
	}
	if _, err := s2.Next(ctx); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
}
