package demo_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/assistant"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// TestBrowserAssistant runs browser-test/assistant.test.mjs: the demo's
// "assistant" room in Chromium against a real edge process, with the
// assistant worker in this process (a word every 40 ms: an answer takes
// about ten seconds). The page asks; one tab reloads mid-answer and two
// more join mid-answer (the same user's second tab, another user); then
// the edge restarts (SIGTERM, started again on the same port, which the
// script asks for with POST <control>/restart-edge?ask=<question>) and
// the tabs reconnect. While the edge is down a service asks another
// question, whose announcement no tab gets: they find it with
// assistant.current after the reconnect. Every tab must end with both
// whole answers, once, in order, and "done". Then a stop cancels an
// answer for every tab. The expected answers are assistant.Answer's,
// handed to the script.
func TestBrowserAssistant(t *testing.T) {
	chromium := cmp.Or(os.Getenv("CHROMIUM"), "/usr/bin/chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the browser test needs Debian's Chromium at %s: apt-get install chromium (.ci/run does)", chromium)
	}
	ns := testenv.NATS(t)
	svc := testenv.Connect(t, ns.ClientURL()) // a service's connection
	w, err := worker.New(testenv.Connect(t, ns.ClientURL()), worker.Config{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	asst, err := assistant.Register(w, assistant.Config{WordDelay: 40 * time.Millisecond, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Drain(ctx); err != nil {
			t.Errorf("worker drain: %v", err)
		}
		if err := asst.Close(ctx); err != nil {
			t.Errorf("assistant close: %v", err)
		}
	})
	addr := freeAddr(t)
	edgeArgs := []string{"--nats", ns.ClientURL(), "--insecure-dev-users", "--listen", addr, "--shutdown-spread", "10ms"}
	edge := startEdgeProcess(t, edgeArgs)

	// The script's restarts are done here, on the test's goroutine; the
	// handler waits for them (or for the script to go away).
	type restart struct {
		ask  string // a question to ask while the edge is down
		done chan struct{}
	}
	restarts := make(chan restart)
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/restart-edge" {
			http.NotFound(w, r)
			return
		}
		done := make(chan struct{})
		select {
		case restarts <- restart{ask: r.URL.Query().Get("ask"), done: done}:
		case <-r.Context().Done():
			return
		}
		select {
		case <-done:
			w.WriteHeader(http.StatusNoContent)
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(control.Close)

	type qa struct {
		Question string `json:"question"`
		Answer   string `json:"answer"`
	}
	cases := map[string]qa{}
	for name, q := range map[string]string{
		"reload": "How does an answer survive a reload?",
		"away":   "Who asks while the edge is down?",
		"stop":   "Will you stop when I ask? (naïve “question”)",
	} {
		cases[name] = qa{Question: q, Answer: assistant.Answer(q)}
	}
	casesJSON, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}

	dir, err := filepath.Abs("browser-test")
	if err != nil {
		t.Fatal(err)
	}
	npmCI(t, dir)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", "assistant.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "CHROMIUM="+chromium,
		"ASSISTANT_DEMO_URL=http://"+addr, "ASSISTANT_CONTROL_URL="+control.URL, "ASSISTANT_CASES="+string(casesJSON))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("node: %v (the browser test needs Node 20+)", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for err = nil; ; {
		select {
		case r := <-restarts:
			if err := edge.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := edge.Wait(t, 15*time.Second); code != 0 {
				t.Fatalf("edge exited with %d after SIGTERM:\n%s", code, lastLog(edge.Log(), 30))
			}
			if r.ask != "" {
				// As a service (no connection): allowed without the room.
				var reply struct{ Stream string }
				if err := rpc.Call(ctx, svc, envelope.DefaultNamespace, assistant.TypeAsk, map[string]string{"question": r.ask}, &reply); err != nil {
					t.Fatalf("ask while the edge is down: %v", err)
				}
				t.Logf("asked %q while the edge was down: stream %s", r.ask, reply.Stream)
			}
			edge = startEdgeProcess(t, edgeArgs)
			t.Log("edge restarted")
			close(r.done)
			continue
		case err = <-exited:
		}
		break
	}
	if err != nil {
		t.Fatalf("node --test assistant.test.mjs: %v\n%s\nedge log (last lines):\n%s", err, out.String(), lastLog(edge.Log(), 30))
	}
	t.Logf("node --test assistant.test.mjs:\n%s", out.String())
}

// lastLog is the last n lines of a process's log.
func lastLog(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
