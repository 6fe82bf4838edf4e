package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"go/format"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
)

// The README's examples are run as written: the blocks between
// <!-- name --> and <!-- /name --> markers are read from README.md (and
// docs/worker-module.md).

// readmeSection returns the README text between <!-- name --> and
// <!-- /name -->.
func readmeSection(t *testing.T, name string) string {
	t.Helper()
	return docSection(t, "README.md", name)
}

// docSection returns the text of file (relative to the repository root)
// between <!-- name --> and <!-- /name -->.
func docSection(t *testing.T, file, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(readmeRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	open, end := "<!-- "+name+" -->\n", "<!-- /"+name+" -->"
	i := strings.Index(s, open)
	j := strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no section between %q and %q", file, open, end)
	}
	return s[i+len(open) : j]
}

// readmeBlocks returns the contents of the fenced code blocks of section,
// dedented (blocks inside list items are indented).
func readmeBlocks(t *testing.T, section string) []string {
	t.Helper()
	var blocks []string
	var cur []string
	indent, in := "", false
	for line := range strings.Lines(section) {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && strings.HasPrefix(trimmed, "```"):
			in, cur = true, nil
			indent = line[:len(line)-len(strings.TrimLeft(line, " "))]
		case in && trimmed == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, ""))
		case in:
			cur = append(cur, strings.TrimPrefix(line, indent))
		}
	}
	if in {
		t.Fatal("README: unterminated code block")
	}
	return blocks
}

// readmeRoot is the repository root, where README.md and go.mod are.
func readmeRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestREADMEWorkerModule follows the README's "A handler of your own" as a
// newcomer would: the recipe's commands make a fresh module next to a
// "clone" (a symlink to this working tree) with the documented replace,
// the snippet is saved as main.go, and it must be gofmt-clean, build and
// pass go vet. The built worker then serves profile.get against a real
// embedded nats-server and edge, loaded with the README's .proto, and a
// WebSocket client gets the documented exchange.
func TestREADMEWorkerModule(t *testing.T) {
	t.Parallel()
	recipe := readmeBlocks(t, readmeSection(t, "worker-recipe"))
	snippet := readmeBlocks(t, readmeSection(t, "worker-snippet"))
	if len(recipe) != 1 || len(snippet) != 1 {
		t.Fatalf("README: want one recipe and one snippet block, got %d and %d", len(recipe), len(snippet))
	}
	src := snippet[0]
	if formatted, err := format.Source([]byte(src)); err != nil {
		t.Fatalf("README worker snippet does not parse: %v", err)
	} else if string(formatted) != src {
		t.Fatalf("README worker snippet is not gofmt-clean; gofmt says:\n%s", formatted)
	}

	// Run the recipe. GOFLAGS=-mod=mod as for any module with a replace;
	// GOWORK=off so that no workspace around the temp dir counts.
	env := append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	dir, runArgs := followRecipe(t, recipe[0], src, env)
	if runArgs == nil {
		t.Fatalf("README worker recipe: want a final `go run .`, got:\n%s", recipe[0])
	}
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^replace github\.com/natter/natter => \S+$`).Match(mod) {
		t.Fatalf("go.mod after the recipe has no replace of github.com/natter/natter:\n%s", mod)
	}
	bin := filepath.Join(t.TempDir(), "profile")
	goCommand(t, dir, env, "build", "-o", bin, ".")
	goCommand(t, dir, env, "vet", ".")

	// The mesh: embedded NATS, an edge with the README's profile schemas.
	srv := testenv.NATS(t)
	protoDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(protoDir, "profile.proto"), []byte(readmeProto(t, "message GetProfile")), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := schema.Load(schema.Config{Dirs: []string{protoDir}})
	if err != nil {
		t.Fatalf("README .proto: %v", err)
	}
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = testenv.Connect(t, srv.ClientURL())
	cfg.Auth.DevMode = true
	cfg.Schemas = reg
	e := testenv.StartEdge(t, cfg)

	// The worker, with the documented flags, the URL pointed at this server.
	for i, a := range runArgs {
		if i > 0 && runArgs[i-1] == "--nats" {
			runArgs[i] = srv.ClientURL()
		} else if strings.HasPrefix(a, "--nats=") {
			runArgs[i] = "--nats=" + srv.ClientURL()
		}
	}
	w := startReadmeWorker(t, bin, runArgs)
	w.waitFor(t, "profile worker ready")

	// The documented exchange: a progress frame, then the reply.
	var req, reply string
	if m := regexp.MustCompile("`(\\{\"type\":\"profile\\.get\".*?\\})`").FindStringSubmatch(readmeSection(t, "worker-snippet")); m != nil {
		req = m[1]
	}
	if m := regexp.MustCompile("`(\\{\"type\":\"profile\",.*?\\})`").FindStringSubmatch(readmeSection(t, "worker-snippet")); m != nil {
		reply = m[1]
	}
	if req == "" || reply == "" {
		t.Fatal("README: the worker section shows no profile.get request and profile reply")
	}
	c := wstest.Dial(t, e.URL+"?user=alice")
	// A heartbeat first: what the edge sends at connect is skipped, so
	// that the next frames answer the request.
	c.Request(t, envelope.TypeHeartbeat, nil, wait)
	c.SendRaw(t, gws.OpcodeText, []byte(req))
	if got := c.Next(t, wait); got.Type != envelope.TypeRPCProgress {
		t.Fatalf("profile.get: first frame %s %s; want %s", got.Type, got.Payload, envelope.TypeRPCProgress)
	}
	got, err := envelope.Encode(c.Next(t, wait))
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, got, []byte(reply)) {
		t.Fatalf("profile.get reply:\n got %s\nwant %s (README)", got, reply)
	}
	// An unknown id: the snippet's NOT_FOUND.
	unknown := c.Request(t, "profile.get", map[string]string{"id": "00000000-0000-4000-8000-000000000000"}, wait)
	var p envelope.ErrorPayload
	if err := json.Unmarshal(unknown.Payload, &p); err != nil || unknown.Type != envelope.TypeRPCError || p.Code != envelope.CodeNotFound {
		t.Fatalf("profile.get of an unknown id: %s %s; want RPC_ERROR NOT_FOUND", unknown.Type, unknown.Payload)
	}

	// SIGTERM: it drains and exits 0.
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
		if code := w.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("worker exit code %d after SIGTERM:\n%s", code, w.log())
		}
	case <-time.After(wait):
		t.Fatalf("worker still running %s after SIGTERM", wait)
	}
}

// TestWorkerModuleDocRecipes follows both recipes of docs/worker-module.md,
// the replace and the go.work workspace, with the README's worker as
// main.go: each must build and pass go vet.
func TestWorkerModuleDocRecipes(t *testing.T) {
	t.Parallel()
	snippet := readmeBlocks(t, readmeSection(t, "worker-snippet"))
	if len(snippet) != 1 {
		t.Fatalf("README: want one worker snippet, got %d", len(snippet))
	}
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"recipe-replace", []string{"GOFLAGS=-mod=mod", "GOWORK=off"}},
		// A workspace allows no -mod=mod; GOWORK stays unset, so the go
		// command finds the recipe's go.work.
		{"recipe-workspace", []string{"GOFLAGS=", "GOWORK="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			blocks := readmeBlocks(t, docSection(t, "docs/worker-module.md", tc.name))
			if len(blocks) != 1 {
				t.Fatalf("docs/worker-module.md %s: want one block, got %d", tc.name, len(blocks))
			}
			env := append(os.Environ(), tc.env...)
			dir, runArgs := followRecipe(t, blocks[0], snippet[0], env)
			if runArgs == nil {
				t.Fatalf("%s: want a final `go run .`", tc.name)
			}
			goCommand(t, dir, env, "build", "-o", filepath.Join(t.TempDir(), "profile"), ".")
			goCommand(t, dir, env, "vet", ".")
		})
	}
}

// followRecipe runs a documented shell recipe in a temp dir: `git clone`
// becomes a symlink to this working tree (so that the test checks the code
// as it is), `mkdir` and `cd` move around, src is saved as main.go before
// the first go command, and go commands run with env. It returns the
// directory the recipe ends in and the arguments of its `go run .`.
func followRecipe(t *testing.T, recipe, src string, env []string) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	var runArgs []string
	wroteMain := false
	for line := range strings.Lines(recipe) {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		for step := range strings.SplitSeq(line, "&&") {
			f := strings.Fields(step)
			switch {
			case len(f) == 0:
			case f[0] == "git" && len(f) > 2 && f[1] == "clone":
				if err := os.Symlink(readmeRoot(t), filepath.Join(dir, f[len(f)-1])); err != nil {
					t.Fatal(err)
				}
			case f[0] == "mkdir" && len(f) == 2:
				if err := os.MkdirAll(filepath.Join(dir, f[1]), 0o755); err != nil {
					t.Fatal(err)
				}
			case f[0] == "cd" && len(f) == 2:
				dir = filepath.Join(dir, f[1])
			case f[0] == "go" && len(f) > 2 && f[1] == "run" && f[2] == ".":
				runArgs = f[3:]
			case f[0] == "go":
				if !wroteMain {
					if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
						t.Fatal(err)
					}
					wroteMain = true
				}
				goCommand(t, dir, env, f[1:]...)
			default:
				t.Fatalf("a recipe step this test cannot follow: %q", step)
			}
		}
	}
	if !wroteMain {
		t.Fatalf("a recipe without go commands:\n%s", recipe)
	}
	return dir, runArgs
}

// goCommand runs the go command in dir with env.
func goCommand(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir, cmd.Env = dir, env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
	}
}

// readmeProto returns the README's ```proto block that contains marker.
func readmeProto(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(readmeRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, blk := range readmeBlocks(t, string(b)) {
		if strings.HasPrefix(blk, "syntax = \"proto3\"") && strings.Contains(blk, marker) {
			return blk
		}
	}
	t.Fatalf("README.md has no .proto block with %q", marker)
	return ""
}

// readmeWorker is the README's worker program, running.
type readmeWorker struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
	line chan struct{} // signalled after each line of output
}

func startReadmeWorker(t *testing.T, bin string, args []string) *readmeWorker {
	t.Helper()
	w := &readmeWorker{cmd: exec.Command(bin, args...), done: make(chan struct{}), line: make(chan struct{}, 1)}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stdout = io.Discard
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			w.mu.Lock()
			w.buf.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
			select {
			case w.line <- struct{}{}:
			default:
			}
		}
		_ = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		_ = w.cmd.Process.Kill()
		<-w.done
		if t.Failed() {
			t.Logf("README worker log:\n%s", w.log())
		}
	})
	return w
}

func (w *readmeWorker) log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the worker has written a line containing s.
func (w *readmeWorker) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(wait)
	for !strings.Contains(w.log(), s) {
		select {
		case <-w.line:
		case <-w.done:
			t.Fatalf("README worker exited before %q:\n%s", s, w.log())
		case <-timeout:
			t.Fatalf("README worker: no %q within %s:\n%s", s, wait, w.log())
		}
	}
}

// jsonEqual compares two JSON documents; in want, the string "…" stands for
// any value (the README's mark for values that change per run).
func jsonEqual(t *testing.T, got, want []byte) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got %s: %v", got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("README JSON %s: %v", want, err)
	}
	return jsonMatch(g, w)
}

func jsonMatch(got, want any) bool {
	if want == "…" {
		return true
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok || !jsonMatch(gv, wv) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !jsonMatch(g[i], w[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(got, want)
}

// TestREADMEWebSocketExample sends the README's websocat lines, as written,
// to the single-binary edge process (embedded NATS, built-in handlers) and
// checks that the replies are the ones the README shows: alice's, and the
// chat.message another member of the room gets.
func TestREADMEWebSocketExample(t *testing.T) {
	t.Parallel()
	// The example: `websocat '<url>'` then one envelope per line.
	b, err := os.ReadFile(filepath.Join(readmeRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rawURL string
	var lines []string
	for _, blk := range readmeBlocks(t, string(b)) {
		if strings.HasPrefix(blk, "websocat ") {
			first, rest, _ := strings.Cut(blk, "\n")
			rawURL = strings.Trim(strings.TrimPrefix(first, "websocat "), "'")
			for l := range strings.Lines(rest) {
				lines = append(lines, strings.TrimSpace(l))
			}
			break
		}
	}
	if rawURL == "" || len(lines) == 0 {
		t.Fatal("README.md has no websocat example")
	}
	section := readmeSection(t, "websocat-replies")
	replies := readmeBlocks(t, section)
	if len(replies) != 2 {
		t.Fatalf("README websocat replies: want 2 blocks (the sender's frames, another member's), got %d", len(replies))
	}
	notJoined := regexp.MustCompile("`(\\{\"type\":\"ERROR\".*?\\})`").FindStringSubmatch(section)
	if notJoined == nil {
		t.Fatal("README websocat replies: no ERROR for a chat.send from a connection outside the room")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}

	p := testenv.Start(t, "edge", "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0", "--data-dir", t.TempDir())
	m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	if m[2] != u.Path {
		t.Fatalf("README connects to path %s; the edge serves %s", u.Path, m[2])
	}
	base := "ws://" + m[1] + u.Path

	// Another member of the room, for the chat.message.
	var room struct{ Room string }
	var join envelope.Envelope
	if err := json.Unmarshal([]byte(lines[0]), &join); err != nil || join.Type != envelope.TypeJoin || json.Unmarshal(join.Payload, &room) != nil {
		t.Fatalf("README: the first websocat line is not a $join: %s", lines[0])
	}
	bob := wstest.Dial(t, base+"?user=bob")
	if got := bob.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: room.Room}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("bob $join: %s %s", got.Type, got.Payload)
	}

	alice := wstest.Dial(t, base+"?"+u.RawQuery)
	for _, l := range lines {
		alice.SendRaw(t, gws.OpcodeText, []byte(l))
	}
	check := func(who string, c *wstest.Client, block string) {
		t.Helper()
		for want := range strings.Lines(block) {
			next := func() *envelope.Envelope { return c.Next(t, wait) }
			if strings.Contains(want, `"$connected"`) {
				// wstest keeps the edge's first frame apart from the others.
				next = func() *envelope.Envelope {
					env, before := c.Welcome(t, wait)
					if before != 0 {
						t.Fatalf("%s: $connected after %d frames", who, before)
					}
					return env
				}
			}
			got, err := envelope.Encode(next())
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, got, []byte(want)) {
				t.Fatalf("%s got\n %s\nREADME shows\n %s", who, got, strings.TrimSpace(want))
			}
		}
	}
	check("alice", alice, replies[0])
	check("bob", bob, replies[1])
	// Nothing more reaches alice: the next frame she gets answers a request
	// to the worker sent after bob had the chat.message.
	alice.Send(t, "echo", envelope.Meta{CorrelationID: "sentinel"}, nil)
	if got := alice.Next(t, wait); got.Type != "echo" || got.Meta.CorrelationID != "sentinel" {
		t.Fatalf("alice, after the README's replies: %s %s; want only the sentinel's echo", got.Type, got.Payload)
	}

	// The same chat.send from a connection that has not joined the room.
	carol := wstest.Dial(t, base+"?user=carol")
	carol.Request(t, envelope.TypeHeartbeat, nil, wait) // past what the edge sends at connect
	carol.SendRaw(t, gws.OpcodeText, []byte(lines[len(lines)-1]))
	check("carol", carol, notJoined[1]+"\n")
}
