package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// streamProducerEnv makes the test binary a producer process (see
// TestMain): it answers story.tell by opening a stream for the sender,
// replying {"stream": id}, and writing "t0 t1 ..." every 5 ms until
// killed.
const streamProducerEnv = "NATTER_TEST_STREAM_PRODUCER"

func runStreamProducer(url string) int {
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w, err := worker.New(nc, worker.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = w.Handle("story.tell", func(ctx context.Context, m *worker.Message) error {
		s, err := m.OpenStream(ctx, worker.StreamTo{})
		if err != nil {
			return err
		}
		go func() {
			for i := 0; s.Context().Err() == nil; i++ {
				_, _ = fmt.Fprintf(s, "t%d ", i)
				time.Sleep(5 * time.Millisecond)
			}
		}()
		return m.Reply("story.stream", map[string]string{"stream": s.ID()})
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {} // until killed
}

// streamEdge starts an edge with response streams (a short idle check)
// on a NATS server of the test's own.
func streamEdge(t *testing.T) (string, *testenv.Edge) {
	t.Helper()
	srv := testenv.NATS(t)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.DevMode = true
	cfg.Streams.IdleCheck = 300 * time.Millisecond
	return srv.ClientURL(), testenv.StartEdge(t, cfg)
}

// TestStreamProducerKilled: a producer process SIGKILLed mid-stream leaves
// its reader an UNAVAILABLE end after the text it stored, not a hang.
func TestStreamProducerKilled(t *testing.T) {
	t.Parallel()
	url, e := streamEdge(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), streamProducerEnv+"="+url)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make([]byte, 6)
	if _, err := out.Read(ready); err != nil || string(ready) != "ready\n" {
		t.Fatalf("producer: %q %v", ready, err)
	}
	c := wstest.Dial(t, e.URL+"?user=alice")
	got := c.Request(t, "story.tell", nil, 5*time.Second)
	var p struct{ Stream string }
	if err := json.Unmarshal(got.Payload, &p); err != nil || p.Stream == "" {
		t.Fatalf("story.tell: %s %s", got.Type, got.Payload)
	}
	if j := c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: p.Stream}, 5*time.Second); j.Type != envelope.TypeStreamJoined {
		t.Fatalf("join: %s %s", j.Type, j.Payload)
	}
	var text strings.Builder
	killed := false
	for {
		env := c.Await(t, 10*time.Second, func(e *envelope.Envelope) bool {
			return e.Type == envelope.TypeStreamChunk || e.Type == envelope.TypeStreamEnd
		})
		if env.Type == envelope.TypeStreamEnd {
			var end envelope.StreamEnd
			_ = json.Unmarshal(env.Payload, &end)
			if !killed || end.Status != envelope.StreamError || end.Error.Code != envelope.CodeUnavailable {
				t.Fatalf("end %s (killed %v)", env.Payload, killed)
			}
			break
		}
		var chunk string
		_ = json.Unmarshal(env.Payload, &chunk)
		text.WriteString(chunk)
		if !killed && text.Len() > 500 {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	var want strings.Builder
	for i := 0; want.Len() < text.Len(); i++ {
		fmt.Fprintf(&want, "t%d ", i)
	}
	if text.String() != want.String() {
		t.Fatalf("read %q..., not the tokens in order", text.String()[:40])
	}
}

// TestStreamWriterAPI: a handler's stream is the sender's by default, a
// reused id is ALREADY_EXISTS, Fail ends with the error's code,
// Publisher.CancelStream cancels the writer's context, and a stream
// without a producer cannot be cancelled that way (NOT_FOUND).
func TestStreamWriterAPI(t *testing.T) {
	t.Parallel()
	url, e := streamEdge(t)
	nc := testenv.Connect(t, url)
	pub := worker.NewPublisher(nc, envelope.DefaultNamespace)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	s, err := pub.OpenStreamID(ctx, "fixed-id", worker.StreamTo{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.OpenStreamID(ctx, "fixed-id", worker.StreamTo{User: "alice"}); !errors.Is(err, rpc.ErrAlreadyExists) {
		t.Fatalf("reused id: %v", err)
	}
	if _, err := pub.OpenStream(ctx, worker.StreamTo{User: "a", Room: "b"}); !errors.Is(err, rpc.ErrInvalidArgument) {
		t.Fatalf("two audiences: %v", err)
	}
	if err := pub.CancelStream(ctx, s.ID()); err != nil {
		t.Fatal(err)
	}
	<-s.Context().Done()
	if err := s.Fail(rpc.Errorf(envelope.CodeInternal, "model crashed")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteString("late"); !errors.Is(err, worker.ErrStreamEnded) {
		t.Fatalf("write after the end: %v", err)
	}
	if err := pub.CancelStream(ctx, s.ID()); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("cancel after the end: %v", err)
	}
	c := wstest.Dial(t, e.URL+"?user=alice")
	c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: s.ID()}, 5*time.Second)
	end := c.AwaitType(t, envelope.TypeStreamEnd, 5*time.Second)
	// Cancelled first: the end is CANCELLED whatever Fail said.
	if !strings.Contains(string(end.Payload), `"CANCELLED"`) {
		t.Fatalf("end %s", end.Payload)
	}

	f, _ := pub.OpenStream(ctx, worker.StreamTo{User: "alice"})
	_, _ = f.WriteString("half")
	_ = f.Fail(rpc.Errorf(envelope.CodeResourceExhausted, "quota"))
	c.Request(t, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: f.ID()}, 5*time.Second)
	end = c.AwaitType(t, envelope.TypeStreamEnd, 5*time.Second)
	if !strings.Contains(string(end.Payload), `"RESOURCE_EXHAUSTED"`) || !strings.Contains(string(end.Payload), "quota") {
		t.Fatalf("end %s", end.Payload)
	}
}
