package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/tap"
	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/internal/wstest"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// deployConf is the example server configuration the tests run against.
const deployConf = "../../deploy/nats/natter.conf"

// deployRoles are the users of deploy/nats/natter.conf, each with the
// environment variable that carries its public nkey.
var deployRoles = map[string]string{
	"edge":    "NATTER_EDGE_NKEY",
	"worker":  "NATTER_WORKER_NKEY",
	"auth":    "NATTER_AUTH_NKEY",
	"service": "NATTER_SERVICE_NKEY",
}

// deployServer makes an nkey per role (public keys in the environment, as
// the configuration expects them; seeds in files, as the commands read
// them), then starts a nats-server from deploy/nats/natter.conf with only
// the listener and the store moved to test places. It returns the client
// URL and the seed file of each role.
func deployServer(t *testing.T) (string, map[string]string) {
	t.Helper()
	return deployServerFrom(t, deployConf, deployRoles)
}

// deployServerFrom is deployServer with the configuration file conf and
// the users roles.
func deployServerFrom(t *testing.T, conf string, roles map[string]string) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	seeds := make(map[string]string)
	for role, env := range roles {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		t.Setenv(env, pub)
		seeds[role] = filepath.Join(dir, role+".nk")
		if err := os.WriteFile(seeds[role], seed, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	opts.StoreDir = t.TempDir()
	return testenv.NATSServer(t, opts), seeds
}

// asyncErrors collects the asynchronous errors of NATS connections, such
// as permission violations, which do not close a connection.
type asyncErrors struct {
	mu   sync.Mutex
	errs []string
}

func (a *asyncErrors) handler(role string) nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		where := ""
		if sub != nil {
			where = " (subscription " + sub.Subject + ")"
		}
		a.errs = append(a.errs, role+": "+err.Error()+where)
	})
}

func (a *asyncErrors) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.errs...)
}

// inboxPrefix is each role's private reply prefix (--nats-inbox-prefix):
// natter.conf lets a role subscribe only to its own.
var inboxPrefix = map[string]string{
	"edge": "_INBOX_EDGE", "worker": "_INBOX_WORKER", "auth": "_INBOX_AUTH", "service": "_INBOX_SERVICE",
}

// connectAs connects as role with the role's seed file and inbox prefix,
// through natsopt as the commands do.
func connectAs(t *testing.T, url string, seeds map[string]string, role string, extra ...nats.Option) *nats.Conn {
	t.Helper()
	opts, err := (&natsopt.Options{NKeySeedFile: seeds[role], InboxPrefix: inboxPrefix[role]}).NATS()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(append(opts, nats.MaxReconnects(-1)), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// authService answers the edge's auth callout as the auth user: the token
// is the user id, the token grants room "lobby", and room "vip" needs (and
// gets) natter.auth.join's consent.
func authService(t *testing.T, nc *nats.Conn) *sync.Map {
	t.Helper()
	var asked sync.Map // subject -> true
	_, err := nc.QueueSubscribe("natter.auth.>", "natter-auth", func(m *nats.Msg) {
		asked.Store(m.Subject, true)
		var reply any
		switch m.Subject {
		case "natter.auth.connect", "natter.auth.refresh":
			var req auth.ConnectRequest
			_ = json.Unmarshal(m.Data, &req)
			reply = auth.ConnectReply{Allow: req.Token != "", User: req.Token, Rooms: []string{"lobby"}}
		case "natter.auth.join":
			var req auth.JoinRequest
			_ = json.Unmarshal(m.Data, &req)
			reply = auth.JoinReply{Allow: req.Room == "vip" || req.Room == "dur-news"}
		}
		b, _ := json.Marshal(reply)
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	return &asked
}

// TestDeployPermissions runs the mesh against deploy/nats/natter.conf, each
// part with its own user: an edge with presence and the auth callout, a
// worker with the built-in handlers, an auth service and a backend
// service. Everything the mesh does (chat, RPC with progress and abort,
// server-side and authorized joins, presence, lifecycle events, service
// publishes and server-to-client requests) causes no permission violation,
// and what a role must not do is refused.
func TestDeployPermissions(t *testing.T) {
	url, seeds := deployServer(t)
	errs := &asyncErrors{}
	// Registered before anything starts, so it runs after everything stopped.
	t.Cleanup(func() {
		if all := errs.all(); len(all) > 0 {
			t.Errorf("NATS errors:\n%s", strings.Join(all, "\n"))
		}
	})
	edgeNC := connectAs(t, url, seeds, "edge", errs.handler("edge"))
	workerNC := connectAs(t, url, seeds, "worker", errs.handler("worker"))
	authNC := connectAs(t, url, seeds, "auth", errs.handler("auth"))
	serviceNC := connectAs(t, url, seeds, "service", errs.handler("service"))
	ns := envelope.DefaultNamespace

	asked := authService(t, authNC)

	w := testenv.Worker(t, workerNC)
	handlerStarted, handlerEnded := make(chan struct{}, 1), make(chan error, 1)
	if err := w.Handle("count", func(_ context.Context, m *worker.Message) error {
		for i := 1; i <= 2; i++ {
			if err := m.Progress(map[string]int{"done": i}); err != nil {
				return err
			}
		}
		return m.Reply("counted", map[string]int{"done": 3})
	}); err != nil {
		t.Fatal(err)
	}
	if err := w.Handle("wait", func(ctx context.Context, m *worker.Message) error {
		handlerStarted <- struct{}{}
		<-ctx.Done()
		handlerEnded <- ctx.Err()
		return ctx.Err()
	}); err != nil {
		t.Fatal(err)
	}
	onlineEvents := make(chan presence.Event, 16)
	if err := w.OnOnline(func(_ context.Context, e presence.Event) { onlineEvents <- e }); err != nil {
		t.Fatal(err)
	}
	if err := workerNC.Flush(); err != nil {
		t.Fatal(err)
	}

	callout := &auth.Callout{NATS: edgeNC, Namespace: ns, Edge: "edge1"}
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = edgeNC
	cfg.EdgeID = "edge1"
	cfg.Presence.TTL = 2 * time.Second
	cfg.Auth.Authenticator = callout
	cfg.Auth.JoinAuthorizer = callout
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig("dur-*")
	cfg.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
	e := testenv.StartEdge(t, cfg)
	// The edges create the work queue that durable handlers consume.
	jobs := make(chan string, 4)
	if err := w.HandleDurable(t.Context(), "job.run", func(_ context.Context, m *worker.Message) error {
		key, _ := m.Envelope.Meta.IdempotencyKey()
		jobs <- m.User + "/" + key
		return nil
	}, worker.DurableOptions{}); err != nil {
		t.Fatal(err)
	}
	alice := wstest.Dial(t, e.URL+"?token=alice")
	bob := wstest.Dial(t, e.URL+"?token=bob")

	// Server-side joins (the worker asks the edge on natter.ctl.conn.<id>),
	// then chat: a request to the worker, a room publish back.
	got := chatInLobby(t, alice, bob, "hi")
	var chatMsg struct{ Text, User, Conn string }
	if err := json.Unmarshal(got.Payload, &chatMsg); err != nil || chatMsg.Text != "hi" || chatMsg.User != "alice" {
		t.Fatalf("bob got %s", got.Payload)
	}
	aliceConn := chatMsg.Conn

	// RPC: echo, ping, progress frames before the reply.
	if got := alice.Request(t, "echo", map[string]string{"x": "y"}, wait); got.Type != "echo" || string(got.Payload) != `{"x":"y"}` {
		t.Fatalf("echo: %s %s", got.Type, got.Payload)
	}
	if got := alice.Request(t, "ping", nil, wait); got.Type != "pong" {
		t.Fatalf("ping: %s %s", got.Type, got.Payload)
	}
	alice.Send(t, "count", envelope.Meta{CorrelationID: "n1"}, nil)
	for i := 0; i < 2; i++ {
		if got := alice.Next(t, wait); got.Type != envelope.TypeRPCProgress || got.Meta.CorrelationID != "n1" {
			t.Fatalf("progress %d: %s %+v", i, got.Type, got.Meta)
		}
	}
	if got := alice.Next(t, wait); got.Type != "counted" || got.Meta.CorrelationID != "n1" {
		t.Fatalf("count reply: %s %+v", got.Type, got.Meta)
	}
	// Abort: the edge publishes natter.ctl.abort, the worker cancels.
	alice.Send(t, "wait", envelope.Meta{CorrelationID: "w1", TimeoutMs: 30_000}, nil)
	select {
	case <-handlerStarted: // the request reached the worker: the abort has something to cancel
	case <-time.After(wait):
		t.Fatal("the request did not reach the worker")
	}
	alice.Send(t, envelope.TypeAbort, envelope.Meta{CorrelationID: "w1"}, nil)
	if got := alice.Next(t, wait); got.Type != envelope.TypeRPCError || got.Meta.CorrelationID != "w1" {
		t.Fatalf("abort: %s %s", got.Type, got.Payload)
	}
	select {
	case err := <-handlerEnded:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ended with %v", err)
		}
	case <-time.After(wait):
		t.Fatal("the abort did not reach the worker")
	}

	// A client $join of a room no grant covers asks natter.auth.join.
	if got := alice.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "vip"}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("$join vip: %s %s", got.Type, got.Payload)
	}
	for _, s := range []string{"natter.auth.connect", "natter.auth.join"} {
		if _, ok := asked.Load(s); !ok {
			t.Fatalf("the auth service was not asked on %s", s)
		}
	}

	// Presence: the client's query, the worker's query, lifecycle events.
	testenv.Eventually(t, wait, "two members in lobby", func() bool {
		got := alice.Request(t, envelope.TypePresence, map[string]string{"room": "lobby"}, wait)
		var page presence.RoomPage
		return got.Type == envelope.TypePresence && json.Unmarshal(got.Payload, &page) == nil && page.Count == 2
	})
	info, err := presence.Online(t.Context(), workerNC, ns, "alice")
	if err != nil || !info.Online {
		t.Fatalf("worker's presence query: %+v %v", info, err)
	}
	seen := map[string]bool{}
	for !seen["alice"] || !seen["bob"] {
		select {
		case ev := <-onlineEvents:
			seen[ev.User] = true
		case <-time.After(wait):
			t.Fatalf("online events: got %v", seen)
		}
	}

	// A service publishes to a room and asks a client a question.
	env, _ := envelope.New("news", map[string]string{"headline": "up"})
	if err := worker.NewPublisher(serviceNC, ns).ToRoom("lobby", env); err != nil {
		t.Fatal(err)
	}
	if got := bob.AwaitType(t, "news", wait); string(got.Payload) != `{"headline":"up"}` {
		t.Fatalf("news: %s", got.Payload)
	}
	// Durable rooms: the edge's stream, capture lease, replay and history;
	// a service's acknowledged publish and a captured core publish.
	if got := bob.Request(t, envelope.TypeJoin, envelope.RoomPayload{Room: "dur-news"}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("$join dur-news: %s %s", got.Type, got.Payload)
	}
	svc := worker.NewPublisher(serviceNC, ns)
	if _, err := svc.ToDurableRoom(t.Context(), "dur-news", env); err != nil {
		t.Fatalf("service ToDurableRoom: %v", err)
	}
	if _, err := worker.NewPublisher(workerNC, ns).ToDurableRoom(t.Context(), "dur-news", env); err != nil {
		t.Fatalf("worker ToDurableRoom: %v", err)
	}
	captured, _ := envelope.New("captured", nil)
	if err := svc.ToRoom("dur-news", captured); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"news", "news", "captured"} {
		if got := bob.Next(t, wait); got.Type != typ || got.Meta.Extra["offset"] == nil {
			t.Fatalf("durable delivery: want %s with meta.offset, got %s %+v", typ, got.Type, got.Meta)
		}
	}
	if got := bob.Request(t, envelope.TypeHistory, map[string]any{"room": "dur-news", "since": 0}, wait); got.Type != envelope.TypeHistory {
		t.Fatalf("$history: %s %s", got.Type, got.Payload)
	}
	if got := bob.Request(t, envelope.TypeJoin, map[string]any{"room": "dur-news", "since": map[string]any{"offset": 1, "epoch": "x"}}, wait); got.Type != envelope.TypeJoined {
		t.Fatalf("$join dur-news since: %s %s", got.Type, got.Payload)
	}

	// Durable types: the edge's work queue, the worker's consumer, its
	// pull and its ack.
	alice.Send(t, "job.run", envelope.Meta{CorrelationID: "j1", Extra: map[string]json.RawMessage{envelope.MetaIdempotencyKey: json.RawMessage(`"k1"`)}}, nil)
	if got := alice.Await(t, wait, func(e *envelope.Envelope) bool { return e.Meta.CorrelationID == "j1" }); got.Type != envelope.TypeAccepted {
		t.Fatalf("durable job.run: %s %s", got.Type, got.Payload)
	}
	select {
	case job := <-jobs:
		if job != "alice/k1" {
			t.Fatalf("durable job handled as %s", job)
		}
	case <-time.After(wait):
		t.Fatal("the durable job did not reach the worker")
	}

	answer := make(chan error, 1)
	var where struct{ Lat float64 }
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		answer <- rpc.Ask(ctx, serviceNC, ns, aliceConn, "geo.where", nil, &where)
	}()
	q := alice.AwaitType(t, "geo.where", wait)
	alice.Send(t, "geo.here", envelope.Meta{CorrelationID: q.Meta.CorrelationID}, map[string]float64{"lat": 52.5})
	if err := <-answer; err != nil || where.Lat != 52.5 {
		t.Fatalf("rpc.Ask: %+v %v", where, err)
	}

	// Another edge writes 1.5 MB into the bucket, past the half of the 2 MB
	// window at which the server asks the edge's watch for flow control:
	// the edge answers on $JS.FC. (The entries are not presence entries; the
	// watch skips them.) Alice's removal below is watched after them.
	flood := connectAs(t, url, seeds, "edge", errs.handler("second edge"))
	junk := make([]byte, 64<<10)
	for range 24 {
		if err := flood.Publish("$KV.natter_presence.conn.flood", junk); err != nil {
			t.Fatal(err)
		}
	}
	if err := flood.Flush(); err != nil {
		t.Fatal(err)
	}

	// The worker takes alice out of the room; then she closes.
	if err := w.Publisher().Leave(t.Context(), aliceConn, "lobby"); err != nil {
		t.Fatal(err)
	}
	alice.Close()
	testenv.Eventually(t, wait, "alice offline", func() bool {
		info, err := presence.Online(t.Context(), workerNC, ns, "alice")
		return err == nil && !info.Online
	})
	for _, nc := range []*nats.Conn{edgeNC, workerNC, authNC, serviceNC, flood} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if all := errs.all(); len(all) > 0 {
		t.Fatalf("NATS errors during the flow:\n%s", strings.Join(all, "\n"))
	}

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			role, what string
			do         func(nc *nats.Conn) error
		}{
			{"edge", "publish natter.out.room.x", pub("natter.out.room.x")},
			{"edge", "publish natter.ctl.conn.x", pub("natter.ctl.conn.x")},
			{"edge", "subscribe natter.in.>", sub("natter.in.>", "")},
			{"edge", "subscribe natter.auth.>", sub("natter.auth.>", "")},
			{"edge", "delete another stream", pub("$JS.API.STREAM.DELETE.orders")},
			{"worker", "subscribe natter.out.>", sub("natter.out.>", "")},
			{"worker", "publish natter.in.x", pub("natter.in.x")},
			{"worker", "subscribe natter.in.> outside the queue group", sub("natter.in.>", "")},
			{"worker", "subscribe natter.in.> in another queue group", sub("natter.in.>", "spies")},
			{"worker", "publish $KV.natter_presence.conn.x", pub("$KV.natter_presence.conn.x")},
			{"worker", "publish $JS.API.STREAM.DELETE.KV_natter_presence", pub("$JS.API.STREAM.DELETE.KV_natter_presence")},
			{"auth", "publish natter.out.all", pub("natter.out.all")},
			{"auth", "subscribe natter.in.>", sub("natter.in.>", "")},
			{"service", "publish natter.in.x", pub("natter.in.x")},
			{"service", "publish natter.work.x (forge a durable message)", pub("natter.work.x")},
			{"worker", "publish natter.work.x (forge a durable message)", pub("natter.work.x")},
			{"service", "publish natter.ctl.conn.x", pub("natter.ctl.conn.x")},
			{"service", "subscribe natter.out.>", sub("natter.out.>", "")},
			// Private inbox prefixes: no role reads replies meant for
			// another, and only the auth service (and workers) answer
			// the edge.
			{"worker", "subscribe the edge's replies", sub("_INBOX_EDGE.>", "")},
			{"service", "subscribe the edge's replies", sub("_INBOX_EDGE.>", "")},
			{"auth", "subscribe the edge's replies", sub("_INBOX_EDGE.>", "")},
			{"edge", "subscribe the workers' replies", sub("_INBOX_WORKER.>", "")},
			{"service", "publish a reply to the edge", pub("_INBOX_EDGE.x")},
			{"edge", "subscribe the shared _INBOX", sub("_INBOX.>", "")},
		} {
			t.Run(tc.role+" "+tc.what, func(t *testing.T) {
				refused := make(chan error, 4)
				nc := connectAs(t, url, seeds, tc.role, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
					refused <- err
				}))
				if err := tc.do(nc); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-refused:
					if !errors.Is(err, nats.ErrPermissionViolation) {
						t.Fatalf("error %v, want a permissions violation", err)
					}
				case <-time.After(wait):
					t.Fatal("not refused")
				}
			})
		}
	})
}

func pub(subject string) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		if err := nc.Publish(subject, []byte("{}")); err != nil {
			return err
		}
		return nc.Flush()
	}
}

func sub(subject, queue string) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		if _, err := nc.QueueSubscribe(subject, queue, func(*nats.Msg) {}); err != nil {
			return err
		}
		return nc.Flush()
	}
}

// TestDeployProcesses runs cmd/edge and cmd/worker as the edge and worker
// users of deploy/nats/natter.conf, with --nats-nkey.
func TestDeployProcesses(t *testing.T) {
	url, seeds := deployServer(t)
	w := testenv.Start(t, "worker", "--nats", url, "--nats-nkey", seeds["worker"], "--nats-inbox-prefix", inboxPrefix["worker"])
	w.WaitLog(t, `msg="worker ready"`, wait)
	e := testenv.Start(t, "edge", "--nats", url, "--nats-nkey", seeds["edge"], "--nats-inbox-prefix", inboxPrefix["edge"], "--listen", "127.0.0.1:0",
		"--insecure-dev-users", "--shutdown-spread", "10ms")
	m := e.WaitLog(t, `msg="edge listening" addr=(\S+) path=(\S+)`, wait)
	alice := wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=alice"))
	bob := wstest.Dial(t, wstest.WSURL(m[1], m[2], "user=bob"))
	chatInLobby(t, alice, bob, "hi")
	if got := alice.Request(t, "echo", "hi", wait); got.Type != "echo" {
		t.Fatalf("echo: %s %s", got.Type, got.Payload)
	}
	testenv.Eventually(t, wait, "two members in lobby", func() bool {
		got := alice.Request(t, envelope.TypePresence, map[string]string{"room": "lobby"}, wait)
		var page presence.RoomPage
		return got.Type == envelope.TypePresence && json.Unmarshal(got.Payload, &page) == nil && page.Count == 2
	})
	if strings.Contains(w.Log(), "NATS error") {
		t.Fatalf("worker log:\n%s", w.Log())
	}
}

// TestDeployConfigNeedsKeys checks that the example configuration does not
// start without the users' public keys.
func TestDeployConfigNeedsKeys(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	for role, env := range deployRoles {
		t.Run(role, func(t *testing.T) {
			for _, e := range deployRoles {
				t.Setenv(e, pub)
			}
			_ = os.Unsetenv(env) // t.Setenv restores it
			if _, err := server.ProcessConfigFile(deployConf); err == nil || !strings.Contains(err.Error(), env) {
				t.Fatalf("config without $%s: %v", env, err)
			}
		})
	}
}

// tapLines are the lines of natter.conf's tap user, which is off until
// an operator removes their "#tap " prefixes.
var tapLines = regexp.MustCompile(`(?m)^( *)#tap `)

// deployServerWithTap is deployServer with the tap user of natter.conf
// enabled as its comment says, and its seed in seeds["tap"].
func deployServerWithTap(t *testing.T) (string, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(deployConf)
	if err != nil {
		t.Fatal(err)
	}
	if len(tapLines.FindAll(b, -1)) == 0 {
		t.Fatalf("%s has no tap user (lines starting with #tap)", deployConf)
	}
	conf := filepath.Join(t.TempDir(), "natter.conf")
	if err := os.WriteFile(conf, tapLines.ReplaceAll(b, []byte("$1")), 0o600); err != nil {
		t.Fatal(err)
	}
	roles := maps.Clone(deployRoles)
	roles["tap"] = "NATTER_TAP_NKEY"
	return deployServerFrom(t, conf, roles)
}

// TestDeployTap runs the mesh against natter.conf with its tap user
// enabled, and a tap (internal/tap, then the cmd/natter-tap binary) as
// that user: it subscribes to everything it shows without a permission
// violation, sees a room's traffic with payloads redacted, and may
// publish nothing nor read replies.
func TestDeployTap(t *testing.T) {
	url, seeds := deployServerWithTap(t)
	errs := &asyncErrors{}
	t.Cleanup(func() {
		if all := errs.all(); len(all) > 0 {
			t.Errorf("NATS errors:\n%s", strings.Join(all, "\n"))
		}
	})
	edgeNC := connectAs(t, url, seeds, "edge", errs.handler("edge"))
	workerNC := connectAs(t, url, seeds, "worker", errs.handler("worker"))
	serviceNC := connectAs(t, url, seeds, "service", errs.handler("service"))
	tapNC := connectAs(t, url, seeds, "tap", errs.handler("tap"))
	testenv.Worker(t, workerNC)
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = edgeNC
	cfg.EdgeID = "edge1"
	cfg.Auth.DevMode = true
	e := testenv.StartEdge(t, cfg)

	// No filter: every subscription a tap makes, events included.
	tp, err := tap.New(tap.Config{Events: true})
	if err != nil {
		t.Fatal(err)
	}
	out := &tapOutput{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := tp.Run(ctx, tapNC, out)
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tap: %v", err)
		}
	}()
	ready, _ := envelope.New("tap.ready", nil)
	readyBody, _ := envelope.Encode(ready)
	testenv.Eventually(t, wait, "the tap shows a service's publish", func() bool {
		_ = serviceNC.Publish("natter.out.room.lobby", readyBody)
		_ = serviceNC.Flush()
		time.Sleep(20 * time.Millisecond)
		return out.has("out room:lobby type=tap.ready")
	})

	alice := wstest.Dial(t, e.URL+"?user=alice")
	bob := wstest.Dial(t, e.URL+"?user=bob")
	chatInLobby(t, alice, bob, "tap-secret")
	for _, want := range []string{
		"in  in type=chat.send conn=edge1.", // a client's request, with its identity
		"out room:lobby type=chat.message",  // the room delivery
		"ctl ctl:edge1.",                    // the worker's join request
		"evt evt type=online conn=edge1.",   // a lifecycle event
		"payload=<redacted ",                // payloads hidden
	} {
		testenv.Eventually(t, wait, "a tap line with "+want, func() bool { return out.has(want) })
	}
	if out.has("tap-secret") {
		t.Fatalf("a payload was shown:\n%s", out.String())
	}

	// The binary, as the tap user, with a room filter and --json.
	dir := testenv.Build(t, []string{"-race"}, "./cmd/natter-tap")
	cmd := exec.Command(filepath.Join(dir, "natter-tap"), "--nats", url, "--nats-nkey", seeds["tap"],
		"--room", "lobby", "--type", "tap.*", "--json", "--count", "1", "--duration", "30s")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	func() {
		for {
			_ = serviceNC.Publish("natter.out.room.elsewhere", readyBody) // another room: not shown
			_ = serviceNC.Publish("natter.out.room.lobby", readyBody)
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("natter-tap: %v\n%s", err, stderr.String())
				}
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	var rec tap.Record
	if err := json.Unmarshal([]byte(stdout.String()), &rec); err != nil || rec.Kind != "room" || rec.ID != "lobby" || rec.Type != "tap.ready" {
		t.Fatalf("natter-tap printed %q (%v); stderr:\n%s", stdout.String(), err, stderr.String())
	}
	if strings.Contains(stderr.String(), "NATS:") {
		t.Fatalf("natter-tap stderr:\n%s", stderr.String())
	}

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			what string
			do   func(nc *nats.Conn) error
		}{
			{"publish natter.out.all", pub("natter.out.all")},
			{"publish natter.in.x", pub("natter.in.x")},
			{"publish natter.ctl.conn.e.1", pub("natter.ctl.conn.e.1")},
			{"subscribe the edge's replies", sub("_INBOX_EDGE.>", "")},
			{"subscribe natter.auth.>", sub("natter.auth.>", "")},
			{"subscribe natter.work.>", sub("natter.work.>", "")},
		} {
			t.Run(tc.what, func(t *testing.T) {
				refused := make(chan error, 4)
				nc := connectAs(t, url, seeds, "tap", nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
					refused <- err
				}))
				if err := tc.do(nc); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-refused:
					if !errors.Is(err, nats.ErrPermissionViolation) {
						t.Fatalf("error %v, want a permissions violation", err)
					}
				case <-time.After(wait):
					t.Fatal("not refused")
				}
			})
		}
	})
}

// tapOutput keeps what a tap wrote.
type tapOutput struct {
	mu sync.Mutex
	b  strings.Builder
}

func (o *tapOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *tapOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

func (o *tapOutput) has(s string) bool { return strings.Contains(o.String(), s) }
