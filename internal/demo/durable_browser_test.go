package demo_test

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// TestBrowserDurableRoomAcrossEdgeRestarts checks the demo page in Chromium
// against real edge processes: while a Go service publishes a numbered
// stream into a durable room with ToDurableRoom (every 20 ms), the edge is
// stopped twice (SIGTERM, then SIGKILL) and started again on the same port.
// The page reconnects by itself, re-joins with since, and must show every
// number exactly once and in order, with a "recovered" notice (never a
// "gap") for each re-join.
func TestBrowserDurableRoomAcrossEdgeRestarts(t *testing.T) {
	const (
		room     = "durable-e2e"
		feedUser = "feed"           // the messages' user, as the page shows it
		downFor  = 50               // messages published while the edge is down (>= 1 s)
		liveFor  = 20               // messages published between the restarts
		wait     = 20 * time.Second // for the publisher
	)
	ns := testenv.NATS(t)
	addr := freeAddr(t)
	args := []string{
		"--nats", ns.ClientURL(), "--insecure-dev-users", "--listen", addr,
		"--durable-rooms", "durable-*", "--shutdown-spread", "10ms",
	}
	edge := startEdgeProcess(t, args)
	page := startDriver(t)
	page.do(t, map[string]any{"op": "open", "url": "http://" + addr + "/?user=watcher", "room": room})

	// The publisher: a numbered chat.message every 20 ms, each stored
	// before the next (ToDurableRoom retries until acknowledged).
	pub := worker.NewPublisher(testenv.Connect(t, ns.ClientURL()), envelope.DefaultNamespace)
	var (
		published atomic.Int64
		pubErr    error // set before done closes
	)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			env, err := envelope.New("chat.message", map[string]any{
				"room": room, "user": feedUser, "text": strconv.Itoa(n), "ts": time.Now().UnixMilli(),
			})
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = pub.ToDurableRoom(ctx, room, env)
				cancel()
			}
			if err != nil {
				pubErr = fmt.Errorf("publish %d: %w", n, err)
				return
			}
			published.Store(int64(n))
		}
	}()
	stopPublisher := sync.OnceValue(func() error {
		close(stop)
		<-done
		return pubErr
	})
	t.Cleanup(func() { _ = stopPublisher() })
	// publishedAtLeast waits for the publisher, which must keep going.
	publishedAtLeast := func(n int64) {
		t.Helper()
		testenv.Eventually(t, wait, fmt.Sprintf("%d messages published", n), func() bool {
			select {
			case <-done:
				t.Fatalf("publisher stopped: %v", pubErr)
			default:
			}
			return published.Load() >= n
		})
	}

	publishedAtLeast(liveFor)
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := edge.Cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d published: %v to the edge", published.Load(), sig)
		code := edge.Wait(t, 15*time.Second)
		if sig == syscall.SIGTERM && code != 0 {
			t.Fatalf("edge exited with %d after SIGTERM:\n%s", code, edge.Log())
		}
		page.do(t, map[string]any{"op": "waitState", "state": "reconnecting"})
		publishedAtLeast(published.Load() + downFor) // the page misses these
		t.Logf("%d published: edge exited (%d); starting it again", published.Load(), code)
		edge = startEdgeProcess(t, args)
		t.Logf("%d published: edge listening", published.Load())
		// The client's backoff may wait up to 10 s after the failed
		// attempts while the edge was down.
		page.do(t, map[string]any{"op": "waitState", "state": "open", "timeoutMs": 30_000})
		t.Logf("%d published: page connected", published.Load())
		// The client reports the recovery when $joined comes, before it
		// says open. Not fatal: the messages are still checked below.
		if _, err := page.try(map[string]any{"op": "waitNotices", "recovery": "recovered", "count": i + 1, "timeoutMs": 5000}); err != nil {
			t.Errorf("after the restart by %v: no recovery notice: %v", sig, err)
		}
		publishedAtLeast(published.Load() + liveFor)
	}
	if err := stopPublisher(); err != nil {
		t.Fatalf("publisher: %v", err)
	}
	n := int(published.Load())

	var got struct {
		Texts      []string `json:"texts"`
		Recoveries []string `json:"recoveries"`
		PageErrors []string `json:"pageErrors"`
	}
	page.do(t, map[string]any{"op": "messages", "user": feedUser, "count": n, "timeoutMs": 10_000}, &got)
	if problems := checkSequence(got.Texts, n); len(problems) > 0 {
		t.Errorf("the page rendered %d messages for %d published into the durable room; %s", len(got.Texts), n, strings.Join(problems, "; "))
	}
	if want := []string{"recovered", "recovered"}; !slices.Equal(got.Recoveries, want) {
		t.Errorf("recovery notices %q, want %q", got.Recoveries, want)
	}
	if len(got.PageErrors) > 0 {
		t.Errorf("uncaught errors in the page:\n%s", strings.Join(got.PageErrors, "\n"))
	}
	t.Logf("%d messages, edge stopped twice (SIGTERM, SIGKILL), recoveries %q", n, got.Recoveries)
}

// checkSequence describes how texts differs from "1".."n": missing numbers,
// duplicates and the first out-of-order one. Empty when they are the same.
func checkSequence(texts []string, n int) []string {
	var problems []string
	seen := make(map[int]int, len(texts))
	prev := 0
	outOfOrder := ""
	for i, s := range texts {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > n {
			problems = append(problems, fmt.Sprintf("unexpected message %q at %d", s, i))
			continue
		}
		seen[v]++
		if v <= prev && outOfOrder == "" {
			outOfOrder = fmt.Sprintf("%d after %d at %d", v, prev, i)
		}
		prev = v
	}
	var missing []int
	var dups []string
	for v := 1; v <= n; v++ {
		switch c := seen[v]; {
		case c == 0:
			missing = append(missing, v)
		case c > 1:
			dups = append(dups, fmt.Sprintf("%d (%d times)", v, c))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("missing %d: %s", len(missing), runs(missing)))
	}
	if len(dups) > 0 {
		problems = append(problems, "duplicates: "+strings.Join(dups, ", "))
	}
	if outOfOrder != "" {
		problems = append(problems, "out of order: "+outOfOrder)
	}
	return problems
}

// runs writes ascending numbers as runs: "3-7, 9".
func runs(nums []int) string {
	var out []string
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && nums[j+1] == nums[j]+1 {
			j++
		}
		if j == i {
			out = append(out, strconv.Itoa(nums[i]))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", nums[i], nums[j]))
		}
		i = j + 1
	}
	return strings.Join(out, ", ")
}

func TestCheckSequence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		texts []string
		n     int
		want  string
	}{
		{name: "complete", texts: []string{"1", "2", "3"}, n: 3},
		{name: "runs missing", texts: []string{"1", "5", "7"}, n: 9, want: "missing 6: 2-4, 6, 8-9"},
		{name: "duplicate", texts: []string{"1", "2", "2", "3"}, n: 3, want: "duplicates: 2 (2 times); out of order: 2 after 2 at 2"},
		{name: "swapped", texts: []string{"1", "3", "2", "4"}, n: 4, want: "out of order: 2 after 3 at 2"},
		{name: "foreign", texts: []string{"1", "x", "2"}, n: 2, want: `unexpected message "x" at 1`},
		{name: "beyond n", texts: []string{"1", "2", "3"}, n: 2, want: `unexpected message "3" at 2`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(checkSequence(tc.texts, tc.n), "; "); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago; the edge listens there, and again there after a restart.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// startEdgeProcess runs the edge binary and waits until it listens.
func startEdgeProcess(t *testing.T, args []string) *testenv.Process {
	t.Helper()
	p := testenv.Start(t, "edge", args...)
	p.WaitLog(t, `msg="edge listening"`, 60*time.Second)
	return p
}

// driver is browser-test/driver.mjs: Chromium with the demo page, driven
// over the driver's stdin and stdout.
type driver struct {
	in      io.WriteCloser
	answers chan []byte // stdout lines; closed at EOF
	mu      sync.Mutex
	log     strings.Builder // the driver's stderr
}

// startDriver starts the driver (after `npm ci` when node_modules is
// missing or older than the lock file). Cleanup saves a screenshot when the
// test failed, closes Chromium and logs the driver's stderr on failure.
func startDriver(t *testing.T) *driver {
	t.Helper()
	chromium := cmp.Or(os.Getenv("CHROMIUM"), "/usr/bin/chromium")
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the browser test needs Debian's Chromium at %s: apt-get install chromium (.ci/run does)", chromium)
	}
	dir, err := filepath.Abs("browser-test")
	if err != nil {
		t.Fatal(err)
	}
	npmCI(t, dir)
	cmd := exec.Command("node", "driver.mjs")
	cmd.Dir = dir
	d := &driver{answers: make(chan []byte, 1)}
	if d.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("node: %v (the browser test needs Node 20+)", err)
	}
	var readers sync.WaitGroup
	readers.Go(func() {
		defer close(d.answers)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			d.answers <- append([]byte(nil), sc.Bytes()...)
		}
	})
	readers.Go(func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			shot := filepath.Join(dir, "artifacts", "failure-durable.png")
			if err := os.MkdirAll(filepath.Dir(shot), 0o755); err == nil {
				if _, err := d.try(map[string]any{"op": "screenshot", "path": shot}); err == nil {
					t.Logf("failure screenshot: %s", shot)
				}
			}
		}
		_, _ = d.try(map[string]any{"op": "close"})
		_ = d.in.Close()
		exited := make(chan struct{})
		go func() {
			for range d.answers { // unread answers of abandoned commands
			}
			readers.Wait()
			_ = cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			d.mu.Lock()
			t.Logf("browser driver stderr:\n%s", d.log.String())
			d.mu.Unlock()
		}
	})
	return d
}

// try sends one command and reads its answer; an answer with ok false is
// an error. The driver bounds its own waits; a driver that does not answer
// within a minute is given up on.
func (d *driver) try(cmd map[string]any) (json.RawMessage, error) {
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	if _, err := d.in.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("browser driver: %w", err)
	}
	var line []byte
	select {
	case l, ok := <-d.answers:
		if !ok {
			return nil, fmt.Errorf("browser driver exited before answering %s", b)
		}
		line = l
	case <-time.After(time.Minute):
		return nil, fmt.Errorf("browser driver did not answer %s within a minute", b)
	}
	var answer struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(line, &answer); err != nil {
		return nil, fmt.Errorf("browser driver: %q: %w", line, err)
	}
	if !answer.OK {
		return nil, fmt.Errorf("browser: %s", answer.Error)
	}
	return line, nil
}

// do is try that fails the test on an error, and decodes the answer into
// into (if given).
func (d *driver) do(t *testing.T, cmd map[string]any, into ...any) {
	t.Helper()
	line, err := d.try(cmd)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range into {
		if err := json.Unmarshal(line, v); err != nil {
			t.Fatal(err)
		}
	}
}

// npmCI installs browser-test's node_modules when they are missing or
// older than package-lock.json, as testenv.NPM does before a script.
func npmCI(t *testing.T, dir string) {
	t.Helper()
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if mods, err := os.Stat(filepath.Join(dir, "node_modules")); err == nil && !mods.ModTime().Before(lock.ModTime()) {
		return
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CI=1", "NO_COLOR=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
}
