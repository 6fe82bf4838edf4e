//go:build cluster

package cluster_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

const (
	// wait bounds every wait for an event: generous, for a 2-core machine
	// running race-enabled binaries.
	wait = 30 * time.Second
	// edgeSetup bounds an edge's start: it creates five R3 JetStream
	// streams and buckets one after the other (presence, durable rooms,
	// the capture lease, response streams, durable messages), and on a
	// fresh cluster the first request for each new one often waits out
	// its 5 s attempt while the group elects a leader; the retry finds it.
	edgeSetup   = 90 * time.Second
	clusterName = "natter-cluster-test"
	// svcUser is the NATS user of connections without credentials
	// (no_auth_user): the test's own services.
	svcUser = "svc"
)

// presenceTTL is the edges' --presence-ttl: the default, 15s, unless
// given (go test -tags cluster ./internal/cluster/ -args -presence-ttl 5s).
// A TTL shorter than a stream leader election after a SIGKILL (several
// seconds) plus a refresh period lets keys expire in NATSNodeKill.
var presenceTTL = flag.Duration("presence-ttl", 15*time.Second, "the edges' --presence-ttl (whole seconds)")

// The NATS users of the processes, one each, so that /connz attributes
// connections and message counts to processes.
var natsUsers = []string{svcUser, "edge-a", "edge-b", "worker-1", "worker-2"}

func natsPassword(user string) string { return "pw-" + user }

// natsNode is one nats-server process of the cluster.
type natsNode struct {
	name      string
	proc      *testenv.Process
	clientURL string // nats://127.0.0.1:port
	monURL    string // http://127.0.0.1:port
	conf      string // its configuration file
	dead      bool   // killed by a test
}

// edgeProc is one cmd/edge process.
type edgeProc struct {
	id   string // --edge-id, also its NATS user
	args []string
	proc *testenv.Process
	addr string // HTTP listen address
	url  string // ws://addr/ws
}

// workerProc is one cmd/worker process.
type workerProc struct {
	user string // its NATS user
	proc *testenv.Process
}

// Cluster is the running set of processes.
type Cluster struct {
	nodes   []*natsNode
	edges   []*edgeProc
	workers []*workerProc
	urls    string     // every node's client URL, comma-separated
	t       *testing.T // the test that started the cluster: processes restarted by subtests outlive them
}

// startCluster starts three NATS nodes, then two edges and two workers
// connected to all of them, and waits until each is ready. Everything is
// killed by t's cleanup; process logs are printed if t failed.
func startCluster(t *testing.T) *Cluster {
	t.Helper()
	c := &Cluster{nodes: startNATS(t), t: t}
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.clientURL)
	}
	c.urls = strings.Join(urls, ",")

	// The edges start together: two edges creating the R3 presence bucket
	// at the same moment on a fresh cluster once both hung (a stream
	// update that got no reply); presence now retries each attempt.
	// Workers run with --worker-id <their NATS user>, so a pong names the
	// worker that answered. Each process gets its own admin port.
	for _, user := range []string{"worker-1", "worker-2"} {
		args := []string{"--nats", c.urls, "--nats-user", user, "--nats-password", natsPassword(user),
			"--worker-id", user, "--admin-listen", "127.0.0.1:0"}
		c.workers = append(c.workers, &workerProc{user: user, proc: testenv.Start(t, "worker", args...)})
	}
	for _, id := range []string{"edge-a", "edge-b"} {
		args := []string{
			"--nats", c.urls, "--nats-user", id, "--nats-password", natsPassword(id),
			"--edge-id", id, "--listen", "127.0.0.1:0", "--insecure-dev-users",
			"--presence-replicas", "3", "--presence-ttl", presenceTTL.String(),
			"--shutdown-spread", "200ms", "--admin-listen", "127.0.0.1:0",
			"--durable-rooms", "dur-*", "--durable-types", "job.*", "--durable-replicas", "3",
			// JetStream reserves each stream's max bytes on every
			// replica: the 1 GiB rooms stream already fills these
			// nodes' 1 GB file stores.
			"--durable-max-bytes", "268435456", "--durable-work-max-bytes", "134217728",
			"--stream-max-bytes", "134217728",
			// The resume tests publish 1,500 messages to one room and check
			// the seam. With the default 1,000 per room, a client that
			// re-joins late (CI once took until the 1,300th message after a
			// leader node was killed) is rightly told that messages were
			// lost, and the seam is not tested at all.
			"--durable-room-max-msgs", "10000",
		}
		c.edges = append(c.edges, &edgeProc{id: id, args: args, proc: testenv.Start(t, "edge", args...)})
	}
	for _, e := range c.edges {
		m := e.proc.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, edgeSetup)
		e.addr, e.url = m[1], "ws://"+m[1]+m[2]
	}
	for _, w := range c.workers {
		w.proc.WaitLog(t, `msg="worker ready"`, wait)
	}
	t.Logf("cluster: nodes %s; edges %s at %s, %s at %s",
		c.urls, c.edges[0].id, c.edges[0].url, c.edges[1].id, c.edges[1].url)
	return c
}

// natsServerBinary builds nats-server (the module's version, from go.mod,
// without the race detector) with testenv.Build, so that testenv.Start runs
// it like the cmd binaries.
func natsServerBinary(t *testing.T) {
	t.Helper()
	testenv.Build(t, nil, "github.com/nats-io/nats-server/v2")
}

// startNATS starts a three-node cluster and waits until every node is
// healthy and sees the JetStream meta group of three with a leader.
func startNATS(t *testing.T) []*natsNode {
	t.Helper()
	natsServerBinary(t)
	ports := freePorts(t, 9) // client, monitor, route per node
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("%q", fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3*i+2])))
	}
	var users []string
	for _, u := range natsUsers {
		users = append(users, fmt.Sprintf("{user: %q, password: %q}", u, natsPassword(u)))
	}
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		name := fmt.Sprintf("n%d", i+1)
		dir := t.TempDir()
		conf := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 1GB
}
cluster {
  name: %q
  listen: "127.0.0.1:%d"
  routes: [%s]
}
authorization {
  users: [%s]
}
no_auth_user: %q
`, name, ports[3*i], ports[3*i+1], filepath.Join(dir, "js"), clusterName, ports[3*i+2],
			strings.Join(routes, ", "), strings.Join(users, ", "), svcUser)
		path := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes[i] = &natsNode{
			name:      name,
			proc:      testenv.Start(t, "nats-server", "-c", path),
			clientURL: fmt.Sprintf("nats://127.0.0.1:%d", ports[3*i]),
			monURL:    fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+1]),
			conf:      path,
		}
	}
	for _, n := range nodes {
		n.proc.WaitLog(t, `Server is ready`, wait)
	}
	for _, n := range nodes {
		testenv.Eventually(t, wait, "node "+n.name+" healthy with a JetStream meta leader of 3", func() bool {
			var jsz struct {
				Meta *struct {
					Leader string `json:"leader"`
					Size   int    `json:"cluster_size"`
				} `json:"meta_cluster"`
			}
			if getJSON(n.monURL+"/healthz", nil) != nil || getJSON(n.monURL+"/jsz", &jsz) != nil {
				return false
			}
			return jsz.Meta != nil && jsz.Meta.Leader != "" && jsz.Meta.Size == 3
		})
	}
	return nodes
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return ports
}

// getJSON GETs url and decodes a 200 answer into v (if not nil).
func getJSON(url string, v any) error {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if v == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// live returns the nodes not killed.
func (c *Cluster) live() []*natsNode {
	var out []*natsNode
	for _, n := range c.nodes {
		if !n.dead {
			out = append(out, n)
		}
	}
	return out
}

// connInfo is a client connection as /connz shows it.
type connInfo struct {
	CID     uint64 `json:"cid"`
	Name    string `json:"name"`
	User    string `json:"authorized_user"`
	InMsgs  int64  `json:"in_msgs"`
	OutMsgs int64  `json:"out_msgs"`
}

// connz lists the node's client connections.
func (n *natsNode) connz(t testing.TB) []connInfo {
	t.Helper()
	var z struct {
		Connections []connInfo `json:"connections"`
	}
	if err := getJSON(n.monURL+"/connz?auth=true&limit=4096", &z); err != nil {
		t.Fatalf("%s connz: %v", n.name, err)
	}
	return z.Connections
}

// delivered sums, per NATS user, the messages the live nodes delivered to
// that user's connections (out_msgs).
func (c *Cluster) delivered(t testing.TB) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, n := range c.live() {
		for _, ci := range n.connz(t) {
			out[ci.User] += ci.OutMsgs
		}
	}
	return out
}

// where returns, per live node name, the NATS users connected to it.
func (c *Cluster) where(t testing.TB) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, n := range c.live() {
		for _, ci := range n.connz(t) {
			out[n.name] = append(out[n.name], ci.User)
		}
		slices.Sort(out[n.name])
	}
	return out
}

// connectNode opens a plain nats.go connection to one node (a service in
// any language would do the same).
func connectNode(t testing.TB, n *natsNode, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.clientURL, append([]nats.Option{nats.Name("cluster-test-svc"), nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		t.Fatalf("connect %s: %v", n.name, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// publish publishes an envelope of type typ to subject and flushes.
func publish(t testing.TB, nc *nats.Conn, subject, typ string, payload any) {
	t.Helper()
	env, err := envelope.New(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Encode(env)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subject, b); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// userInfo asks natter.presence.query about user over nc.
func userInfo(t testing.TB, nc *nats.Conn, user string) *presence.UserInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	u, err := presence.Online(ctx, nc, envelope.DefaultNamespace, user)
	if err != nil {
		t.Fatalf("presence of %s: %v", user, err)
	}
	return u
}

// connEdges maps each of the user's connections to its edge, from a
// presence query.
func connEdges(u *presence.UserInfo) map[string]string {
	out := map[string]string{}
	for _, e := range u.Connections {
		out[e.Conn] = e.Edge
	}
	return out
}

// member is a WebSocket client (pkg/client) that records every frame that
// is not a reply, and every state change.
type member struct {
	name   string
	c      *client.Client
	frames chan *envelope.Envelope

	mu     sync.Mutex
	states []stateChange
}

type stateChange struct {
	at    time.Time
	state client.State
	info  client.CloseInfo
}

// dial connects user to url (an edge's, or a front's) with dev-mode
// identity; t's cleanup closes the client.
func dial(t testing.TB, url, user string) *member {
	t.Helper()
	m := &member{name: user, frames: make(chan *envelope.Envelope, 1<<14)}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, url, client.Options{
		User:       user,
		RPCTimeout: wait,
		Reconnect:  &client.Backoff{Initial: 250 * time.Millisecond, Max: 2 * time.Second},
		Logger:     slog.New(slog.DiscardHandler),
		OnState: func(s client.State, info client.CloseInfo) {
			m.mu.Lock()
			m.states = append(m.states, stateChange{time.Now(), s, info})
			m.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("dial %s as %s: %v", url, user, err)
	}
	m.c = c
	t.Cleanup(func() { _ = c.Close() })
	c.On("*", func(env *envelope.Envelope) {
		if env.Meta.CorrelationID != "" {
			return // replies go to their Call
		}
		select {
		case m.frames <- env:
		default: // a test that lets 16k frames pile up fails on what it misses
		}
	})
	return m
}

// join joins room and waits for the edge's ack.
func (m *member) join(t testing.TB, room string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := m.c.Join(ctx, room); err != nil {
		t.Fatalf("%s: join %s: %v", m.name, room, err)
	}
}

// await returns the first recorded frame of type typ for which match (if
// not nil) holds, dropping the frames before it.
func (m *member) await(t testing.TB, typ string, match func(*envelope.Envelope) bool) *envelope.Envelope {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case env := <-m.frames:
			if env.Type == typ && (match == nil || match(env)) {
				return env
			}
		case <-timer.C:
			t.Fatalf("%s: no %s frame within %s (state %s)", m.name, typ, wait, m.c.State())
			return nil
		}
	}
}

// stateLog returns the state changes so far.
func (m *member) stateLog() []stateChange {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.states)
}

// payloadField decodes the payload's string field key.
func payloadField(env *envelope.Envelope, key string) string {
	var p map[string]any
	if json.Unmarshal(env.Payload, &p) != nil {
		return ""
	}
	s, _ := p[key].(string)
	return s
}

// sigterm sends SIGTERM to p.
func sigterm(t testing.TB, p *testenv.Process) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// sigkill kills p with SIGKILL and waits until it is gone.
func sigkill(t testing.TB, p *testenv.Process) {
	t.Helper()
	if err := p.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait(t, wait)
}
