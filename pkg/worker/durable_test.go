package worker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// crashWorkerEnv makes the test binary a worker process (see
// TestMain) that handles job.run durably on the NATS URL it holds, and
// prints "start <key> <attempt>" and "done <key> <attempt>" around each
// message's 20 ms of work.
const crashWorkerEnv = "NATTER_TEST_DURABLE_WORKER"

func TestMain(m *testing.M) {
	if url := os.Getenv(crashWorkerEnv); url != "" {
		os.Exit(runCrashWorker(url))
	}
	if url := os.Getenv(streamProducerEnv); url != "" {
		os.Exit(runStreamProducer(url))
	}
	os.Exit(m.Run())
}

func runCrashWorker(url string) int {
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w, err := worker.New(nc, worker.Config{MaxConcurrent: 4})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var out sync.Mutex
	say := func(what, key string, attempt int) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf("%s %s %d\n", what, key, attempt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.HandleDurable(ctx, "job.run", func(ctx context.Context, m *worker.Message) error {
		key, _ := m.Envelope.Meta.IdempotencyKey()
		say("start", key, m.Attempt)
		time.Sleep(20 * time.Millisecond) // the work each message takes, so that a kill lands mid-stream
		say("done", key, m.Attempt)
		return nil
	}, worker.DurableOptions{AckWait: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	say("ready", "-", 0)
	select {} // until killed
}

// crashWorker is a worker process and what it printed.
type crashWorker struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	ready chan struct{}
	eof   chan struct{} // closed when all its output is read
}

func startCrashWorker(t *testing.T, url string) *crashWorker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashWorkerEnv+"="+url)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &crashWorker{cmd: cmd, ready: make(chan struct{}), eof: make(chan struct{})}
	go func() {
		defer close(w.eof)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready - 0" {
				close(w.ready)
				continue
			}
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		<-w.eof
	})
	select {
	case <-w.ready:
	case <-time.After(15 * time.Second):
		t.Fatal("worker process not ready")
	}
	return w
}

// tally counts, per key, the messages a worker started and finished.
func (w *crashWorker) tally() (started, done map[string][]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	started, done = map[string][]int{}, map[string][]int{}
	for _, l := range w.lines {
		var what, key string
		var attempt int
		if _, err := fmt.Sscanf(l, "%s %s %d", &what, &key, &attempt); err != nil {
			continue
		}
		if what == "start" {
			started[key] = append(started[key], attempt)
		} else {
			done[key] = append(done[key], attempt)
		}
	}
	return started, done
}

// durableEdge starts an edge with durable job.* messages on a NATS server
// of the test's own, and a client of it.
func durableEdge(t *testing.T) (*natsd.Server, *wstest.Client) {
	t.Helper()
	srv := testenv.NATS(t)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.DevMode = true
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
	e := testenv.StartEdge(t, cfg)
	return srv, wstest.Dial(t, e.URL+"?user=alice")
}

// TestDurableWorkerCrashLosesNothing: a worker process is SIGKILLed while
// it handles durable messages; another worker process gets the messages
// it held, after the ack wait, and every message a client was told was
// accepted is handled.
func TestDurableWorkerCrashLosesNothing(t *testing.T) {
	t.Parallel()
	srv, c := durableEdge(t)

	const total = 300
	keys := make([]string, total)
	for i := range keys {
		keys[i] = fmt.Sprintf("job-%03d", i)
		// As a client would: resend with the same key when told to wait
		// (the connection's rate limit).
		for try := 0; ; try++ {
			cid := fmt.Sprintf("c%d-%d", i, try)
			c.Send(t, "job.run", envelope.Meta{CorrelationID: cid, Extra: map[string]json.RawMessage{envelope.MetaIdempotencyKey: wstest.JSON(t, keys[i])}}, map[string]int{"n": i})
			got := c.Await(t, 5*time.Second, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == cid })
			if got.Type == envelope.TypeAccepted {
				break
			}
			var p envelope.ErrorPayload
			if err := json.Unmarshal(got.Payload, &p); err != nil || p.RetryAfterMs <= 0 || try == 100 {
				t.Fatalf("message %d: %s %s", i, got.Type, got.Payload)
			}
			time.Sleep(time.Duration(p.RetryAfterMs) * time.Millisecond) // as a client must: retryAfterMs paces the retry
		}
	}
	// Worker A handles 4 at a time, 20 ms each: kill it mid-stream.
	a := startCrashWorker(t, srv.ClientURL())
	testenv.Eventually(t, 20*time.Second, "worker A at work", func() bool {
		_, done := a.tally()
		return len(done) >= 40
	})
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.eof // every line it wrote, before Wait closes the pipe
	_ = a.cmd.Wait()
	startedA, doneA := a.tally()
	var cut []string // started by A, never finished
	for k := range startedA {
		if _, ok := doneA[k]; !ok {
			cut = append(cut, k)
		}
	}
	if len(doneA) >= total {
		t.Fatalf("worker A finished everything before the kill")
	}
	t.Logf("worker A killed after finishing %d; %d cut mid-handler: %v", len(doneA), len(cut), cut)

	b := startCrashWorker(t, srv.ClientURL())
	testenv.Eventually(t, 30*time.Second, "every accepted message handled", func() bool {
		_, doneB := b.tally()
		for _, k := range keys {
			if len(doneA[k]) == 0 && len(doneB[k]) == 0 {
				return false
			}
		}
		return true
	})
	_, doneB := b.tally()
	for _, k := range cut {
		if len(doneB[k]) == 0 || doneB[k][0] < 2 {
			t.Errorf("%s, cut short in worker A, handled by B at attempts %v (want a redelivery, attempt >= 2)", k, doneB[k])
		}
	}
	// At least once: only a message whose acknowledgement the kill cut
	// off may be handled twice, so at most the 4 in flight.
	twice := 0
	for _, k := range keys {
		if n := len(doneA[k]) + len(doneB[k]); n > 1 {
			twice++
		}
	}
	if twice > 4 {
		t.Errorf("%d messages handled twice; at most the 4 in flight may be", twice)
	}
	svc := testenv.Connect(t, srv.ClientURL())
	testenv.Eventually(t, 10*time.Second, "an empty work queue", func() bool {
		return testenv.StreamMsgs(t, svc, envelope.DefaultNamespace.WorkStream()) == 0
	})
	if t.Failed() {
		t.Logf("worker B:\n%s", strings.Join(b.lines, "\n"))
	}
}

// TestDurableWorkerReconnects: a worker cut off from NATS while durable
// messages are accepted handles them once its connection is back. The
// puller waits for nats.go to report the connection up again, not on a
// timer, so a missed wake-up would leave the messages unhandled.
func TestDurableWorkerReconnects(t *testing.T) {
	t.Parallel()
	srv, c := durableEdge(t)

	px := testenv.StartProxy(t, srv.ClientURL())
	nc, err := nats.Connect(px.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w, err := worker.New(nc, worker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 16)
	err = w.HandleDurable(t.Context(), "job.run", func(_ context.Context, m *worker.Message) error {
		key, _ := m.Envelope.Meta.IdempotencyKey()
		handled <- key
		return nil
	}, worker.DurableOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Drain(context.Background()) })
	send := func(key string) {
		t.Helper()
		c.Send(t, "job.run", envelope.Meta{CorrelationID: key, Extra: map[string]json.RawMessage{envelope.MetaIdempotencyKey: wstest.JSON(t, key)}}, map[string]string{"k": key})
		if got := c.Await(t, 5*time.Second, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == key }); got.Type != envelope.TypeAccepted {
			t.Fatalf("%s: %s %s", key, got.Type, got.Payload)
		}
	}
	await := func(key string) {
		t.Helper()
		select {
		case got := <-handled:
			if got != key {
				t.Fatalf("handled %q, want %q", got, key)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s not handled", key)
		}
	}
	send("before")
	await("before")

	px.Cut()
	testenv.Eventually(t, 5*time.Second, "the worker disconnected", func() bool { return !nc.IsConnected() })
	send("during") // stored in the work stream while the worker is away
	select {
	case got := <-handled:
		t.Fatalf("handled %q while cut off", got)
	default:
	}
	px.Restore()
	await("during")
}
