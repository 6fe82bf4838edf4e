package e2e_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
)

// waitExit waits up to within for p to exit and returns its exit code,
// failing if it is still running.
func waitExit(t *testing.T, p *testenv.Process, within time.Duration) int {
	t.Helper()
	start := time.Now()
	code := p.Wait(t, within)
	t.Logf("exited with %d after %s", code, time.Since(start).Round(time.Millisecond))
	return code
}

// An edge on --nats without authentication flags refuses to start, and
// says which flags to pass, not which Go fields to set.
func TestEdgeNoAuthNamesFlags(t *testing.T) {
	t.Parallel()
	p := testenv.Start(t, "edge", "--nats", testenv.NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()}),
		"--listen", "127.0.0.1:0")
	if code := waitExit(t, p, wait); code == 0 {
		t.Fatal("edge started without authentication")
	}
	log := p.Log()
	for _, flag := range []string{"--jwt-secret-file", "--jwks-url", "--auth-callout", "--anonymous", "--insecure-dev-users"} {
		if !strings.Contains(log, flag) {
			t.Errorf("the error does not name %s", flag)
		}
	}
	if strings.Contains(log, "set Auth") || strings.Contains(log, "Anonymous") {
		t.Errorf("the error names Go fields")
	}
	if t.Failed() {
		t.Logf("log:\n%s", log)
	}
}

// An edge whose NATS server (or account) cannot give it JetStream fails
// at once, says the server needs JetStream and names the flag that does
// without what needed it, instead of retrying for 30s per set-up step;
// the same for a NATS user that may not use the JetStream API. Following
// the hint (--presence=false --streams=false) starts an edge on the same
// server.
func TestEdgeWithoutJetStreamFailsAtOnce(t *testing.T) {
	t.Parallel()
	noJS := testenv.NATSServer(t, &server.Options{})
	acc := server.NewAccount("NOJS")
	noJSAccount := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(),
		Accounts: []*server.Account{acc},
		Users:    []*server.User{{Username: "edge", Password: "pw", Account: acc}},
	})
	denied := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{{Username: "edge", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"$JS.API.>"}},
		}}},
	})
	const within = 10 * time.Second // the old edge retried for 30s per step
	for _, tc := range []struct {
		name string
		url  string
		args []string
		want []string // in the log, besides no "edge listening"
	}{
		{"presence, server without JetStream", noJS, nil,
			[]string{"JetStream", "nats-server -js", "--presence=false"}},
		{"durable rooms, server without JetStream", noJS, []string{"--presence=false", "--durable-rooms", "support-*"},
			[]string{"JetStream", "nats-server -js", "--durable-rooms"}},
		{"response streams, server without JetStream", noJS, []string{"--presence=false"},
			[]string{"JetStream", "nats-server -js", "--streams=false"}},
		{"durable messages, server without JetStream", noJS, []string{"--presence=false", "--streams=false", "--durable-types", "orders.*"},
			[]string{"JetStream", "nats-server -js", "--durable-types"}},
		{"presence, account without JetStream", noJSAccount, []string{"--nats-user", "edge", "--nats-password", "pw"},
			[]string{"JetStream", "account", "--presence=false"}},
		{"presence, JetStream API denied", denied, []string{"--nats-user", "edge", "--nats-password", "pw"},
			[]string{"permission", "$JS.API", "--presence=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--nats", tc.url, "--insecure-dev-users", "--listen", "127.0.0.1:0"}, tc.args...)
			p := testenv.Start(t, "edge", args...)
			if code := waitExit(t, p, within); code == 0 {
				t.Fatalf("exit code 0\n%s", p.Log())
			}
			log := p.Log()
			if strings.Contains(log, `msg="edge listening"`) {
				t.Fatalf("the edge listened:\n%s", log)
			}
			for _, w := range tc.want {
				if !strings.Contains(log, w) {
					t.Errorf("the log does not say %q", w)
				}
			}
			if t.Failed() {
				t.Logf("log:\n%s", log)
			}
		})
	}
	t.Run("following the hint", func(t *testing.T) {
		t.Parallel()
		p := testenv.Start(t, "edge", "--nats", noJS, "--insecure-dev-users", "--listen", "127.0.0.1:0", "--presence=false", "--streams=false")
		m := p.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
		wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=alice")).Close()
	})
}

// A SIGTERM while the edge waits for JetStream (here a clustered server
// that never finds its peers, so JetStream answers "temporarily
// unavailable" or not at all) ends the process at once, instead of after
// the set-up's 30s per step.
func TestEdgeSIGTERMDuringSetup(t *testing.T) {
	t.Parallel()
	url := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(), ServerName: "lonely",
		Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: server.RANDOM_PORT},
		// Peers that never come: no quorum, no JetStream meta leader.
		Routes: server.RoutesFromStr("nats://127.0.0.1:1,nats://127.0.0.1:2"),
	})
	p := testenv.Start(t, "edge", "--nats", url, "--insecure-dev-users", "--listen", "127.0.0.1:0")
	// The edge is in its set-up, retrying: the first attempt has failed.
	p.WaitLog(t, `set-up attempt failed; retrying`, 2*wait)
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, p, 3*time.Second); code == 0 {
		t.Fatalf("exit code 0 without having served\n%s", p.Log())
	}
	if log := p.Log(); strings.Contains(log, `msg="edge listening"`) || !strings.Contains(log, "set-up interrupted") {
		t.Fatalf("log:\n%s", log)
	}
}

// portFree waits until addr can be listened on: the test needs that fixed
// port, since the default address is what it checks.
func portFree(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stays in use by another process, and this test checks the default address: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond) // polls, with the deadline above
	}
}

// A dev-mode edge (anyone may claim any user) listens on loopback unless
// --listen says otherwise, and warns when told to listen beyond it; an
// edge with authentication keeps listening on every interface. Each logs
// what it serves, on which address. Uses port 8080, the default.
func TestEdgeListenDefaults(t *testing.T) {
	t.Parallel()
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("listen-test-secret-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	const warning = "dev mode edge listens beyond loopback"
	for _, tc := range []struct {
		name     string
		args     []string
		addr     string // regexp of the listening address
		loopback bool
		warn     bool
	}{
		{"single-binary dev mode", nil, `127\.0\.0\.1:8080`, true, false},
		{"dev mode with an explicit --listen", []string{"--listen", ":0"}, `\[::\]:\d+`, false, true},
		{"with authentication", []string{"--jwt-secret-file", secret}, `\[::\]:8080`, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			portFree(t, ":8080")
			args := append([]string{"--nats-listen", "127.0.0.1:0", "--data-dir", t.TempDir()}, tc.args...)
			p := testenv.Start(t, "edge", args...)
			m := p.WaitLog(t, `msg="edge listening" addr=(\S+)`, wait)
			if !regexp.MustCompile(`^` + tc.addr + `$`).MatchString(m[1]) {
				t.Fatalf("listening on %s, want %s", m[1], tc.addr)
			}
			// The same line says what is exposed there.
			said := regexp.MustCompile(`msg="edge listening" .* devMode=(\S+) loopbackOnly=(\S+) serves="([^"]+)"`).FindStringSubmatch(p.Log())
			if said == nil || said[2] != strconv.FormatBool(tc.loopback) || !strings.Contains(said[3], "/ws (WebSocket)") ||
				strings.Contains(said[3], "demo") != (said[1] == "true") {
				t.Fatalf("the log does not say what is exposed (want loopbackOnly=%v):\n%s", tc.loopback, p.Log())
			}
			if tc.warn {
				// Logged just after the line above.
				p.WaitLog(t, regexp.QuoteMeta(warning), wait)
			}
			if got := strings.Contains(p.Log(), warning); got != tc.warn {
				t.Fatalf("warning %q logged: %v, want %v\n%s", warning, got, tc.warn, p.Log())
			}
			if tc.loopback {
				// It serves there: the demo page, on loopback.
				resp, err := http.Get("http://" + m[1] + "/")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<html") {
					t.Fatalf("GET /: %d %.200s", resp.StatusCode, body)
				}
				// And not beyond: another address of this machine, if it
				// has one, is refused.
				if ip := nonLoopbackIP(); ip != nil {
					c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), "8080"), time.Second)
					if err == nil {
						c.Close()
						t.Fatalf("accepted on %s", ip)
					}
					if !errors.Is(err, syscall.ECONNREFUSED) {
						t.Fatalf("dial %s: %v, want connection refused", ip, err)
					}
				}
			}
			if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := p.Wait(t, wait); code != 0 {
				t.Fatalf("exit code %d", code)
			}
		})
	}
}

// nonLoopbackIP returns an IPv4 address of this machine that is not
// loopback, or nil.
func nonLoopbackIP() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	return nil
}

// readmeWorkers returns the arguments of the edge and worker commands of
// the README's Workers section, as a reader copies them.
func readmeWorkers(t *testing.T) (edgeArgs, workerArgs []string) {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Workers\n")
	if !ok {
		t.Fatal("README.md has no Workers section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	inBlock := false
	for line := range strings.SplitSeq(section, "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			inBlock = true
			continue
		case strings.HasPrefix(line, "```"):
			inBlock = false
			continue
		case !inBlock:
			continue
		}
		cmd, _, _ := strings.Cut(line, " #") // a comment
		f := strings.Fields(cmd)
		if len(f) < 3 || f[0] != "go" || f[1] != "run" {
			continue
		}
		switch f[2] {
		case "./cmd/edge":
			if edgeArgs == nil {
				edgeArgs = f[3:]
			}
		case "./cmd/worker":
			if workerArgs == nil {
				workerArgs = f[3:]
			}
		}
	}
	if edgeArgs == nil || workerArgs == nil {
		t.Fatalf("the Workers section shows no `go run ./cmd/edge` and `go run ./cmd/worker`:\n%s", section)
	}
	return edgeArgs, workerArgs
}

// The commands of the README's Workers section, run as written against a
// nats-server with JetStream (the section says it needs one): ?user=
// works, echo and chat go through the worker process, and the demo page
// is served.
func TestREADMEWorkersCommands(t *testing.T) {
	t.Parallel()
	url := testenv.NATS(t).ClientURL()
	edgeArgs, workerArgs := readmeWorkers(t)
	t.Logf("README: edge %q, worker %q", edgeArgs, workerArgs)
	// The only changes: the NATS server is on a random port instead of
	// 4222, and the edge listens on a random port instead of its default
	// 127.0.0.1:8080, so that the test runs beside anything else.
	const readmeNATS = "nats://127.0.0.1:4222"
	for _, args := range [][]string{edgeArgs, workerArgs} {
		i := slices.Index(args, readmeNATS)
		if i < 0 {
			t.Fatalf("%q does not connect to %s", args, readmeNATS)
		}
		args[i] = url
	}
	if slices.Contains(edgeArgs, "--listen") {
		t.Fatalf("the README's edge has --listen now: substitute its port here (%q)", edgeArgs)
	}
	edgeArgs = append(edgeArgs, "--listen", "127.0.0.1:0")

	w := testenv.Start(t, "worker", workerArgs...)
	w.WaitLog(t, `msg="worker ready"`, wait)
	e := testenv.Start(t, "edge", edgeArgs...)
	m := e.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)

	alice := wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=alice"))
	bob := wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=bob"))
	if got := alice.Request(t, "echo", map[string]string{"hello": "world"}, wait); got.Type != "echo" || string(got.Payload) != `{"hello":"world"}` {
		t.Fatalf("echo: %s %s", got.Type, got.Payload)
	}
	got := chatInLobby(t, alice, bob, "hi from the README")
	if !strings.Contains(string(got.Payload), `"user":"alice"`) {
		t.Fatalf("chat.message: %s", got.Payload)
	}
	resp, err := http.Get("http://" + m[1] + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<html") {
		t.Fatalf("demo page: %d %.200s", resp.StatusCode, body)
	}
}
