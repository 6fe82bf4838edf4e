package worker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// The publisher takes connection ids as the edges give them, <edge>.<n>:
// ToConn publishes on natter.out.conn.<edge>.<n>, exclusions go whole into
// Natter-Exclude, and a control request for a connection no edge holds
// fails with NOT_FOUND. An id of any other shape is refused before
// anything is sent.
func TestPublisherConnIDs(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	nc := testenv.Connect(t, srv.ClientURL())
	spy := testenv.Connect(t, srv.ClientURL())
	seen, err := spy.SubscribeSync("natter.out.>") // not ctl: a subscriber there would be a responder
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := worker.NewPublisher(nc, envelope.DefaultNamespace)
	env, _ := envelope.New("dm", nil)
	ctx := t.Context()

	bad := []string{"", "c1", "e1.c1.x", "e1.*", "e1.>", "*.c1", "e1..c1", "e1.c 1", ".c1", "e1."}
	for _, id := range bad {
		for name, err := range map[string]error{
			"ToConn":         pub.ToConn(id, env),
			"ToRoom exclude": pub.ToRoom("r", env, "e1.c1", id),
			"ToUser exclude": pub.ToUser("u", env, id),
			"ToAll exclude":  pub.ToAll(env, id),
			"Join":           pub.Join(ctx, id, "r"),
			"Leave":          pub.Leave(ctx, id, "r"),
			"Close":          pub.Close(ctx, id, 0, ""),
			"RequireMember":  pub.RequireMember(ctx, id, "r"),
			"JoinAsClient":   pub.JoinAsClient(ctx, id, "r"),
		} {
			if !errors.Is(err, envelope.ErrInvalidID) {
				t.Errorf("%s(%q) = %v, want ErrInvalidID", name, id, err)
			}
		}
	}

	if err := pub.ToConn("e1.c1", env); err != nil {
		t.Fatal(err)
	}
	if err := pub.ToRoom("r", env, "e1.c1", "Cq7pT1XhQ6mQ3bZ9vN0aK2.2s9x"); err != nil {
		t.Fatal(err)
	}
	// No edge holds it: NOT_FOUND at once.
	if err := pub.Join(ctx, "e9.c1", "r"); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("Join of a connection no edge holds: %v", err)
	}
	want := []struct{ subject, exclude string }{
		{"natter.out.conn.e1.c1", ""},
		{"natter.out.room.r", "e1.c1,Cq7pT1XhQ6mQ3bZ9vN0aK2.2s9x"},
	}
	for _, w := range want {
		msg, err := seen.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %s: %v", w.subject, err)
		}
		if msg.Subject != w.subject || msg.Header.Get(envelope.HeaderExclude) != w.exclude {
			t.Fatalf("published %s (exclude %q), want %s (exclude %q)", msg.Subject, msg.Header.Get(envelope.HeaderExclude), w.subject, w.exclude)
		}
	}
	if msg, err := seen.NextMsg(100 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("also published %v (%v)", msg, err)
	}
}
