package edge_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/testenv"
)

// New fails at once when what it sets up needs JetStream and the server,
// or the edge's account, has none: the error wraps natsopt.ErrNoJetStream
// and says what to change on the server, instead of being retried until
// ctx ends.
func TestNewWithoutJetStream(t *testing.T) {
	t.Parallel()
	noJS := testenv.NATSServer(t, &server.Options{})
	acc := server.NewAccount("NOJS")
	noJSAccount := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(),
		Accounts: []*server.Account{acc},
		Users:    []*server.User{{Username: "edge", Password: "pw", Account: acc}},
	})
	for _, tc := range []struct {
		name string
		url  string
		set  func(*edge.Config)
		want []string // in the error
	}{
		{"presence", noJS, func(*edge.Config) {},
			[]string{"presence needs JetStream", "nats-server -js", "jetstream block"}},
		{"durable rooms", noJS, func(c *edge.Config) {
			c.Presence = nil
			c.DurableRooms = edge.DefaultDurableRoomsConfig("dur-*")
		}, []string{"durable rooms needs JetStream", "nats-server -js"}},
		{"response streams", noJS, func(c *edge.Config) {
			c.Presence = nil
		}, []string{"response streams needs JetStream", "nats-server -js"}},
		{"durable messages", noJS, func(c *edge.Config) {
			c.Presence, c.Streams = nil, nil
			c.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
		}, []string{"durable messages needs JetStream", "nats-server -js"}},
		{"account without JetStream", "nats://edge:pw@" + strings.TrimPrefix(noJSAccount, "nats://"), func(*edge.Config) {},
			[]string{"presence needs JetStream", "account", "accounts block"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = testenv.Connect(t, tc.url)
			cfg.Auth.Anonymous = true
			cfg.Logger = testenv.Logger(t)
			tc.set(&cfg)
			// The deadline only keeps a broken New from hanging the test;
			// New must end long before it.
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			start := time.Now()
			e, err := edge.New(ctx, cfg)
			if err == nil {
				_ = e.Shutdown(t.Context())
				t.Fatal("New succeeded without JetStream")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("New failed after %s; want at once", d)
			}
			if !errors.Is(err, natsopt.ErrNoJetStream) {
				t.Errorf("error does not wrap natsopt.ErrNoJetStream: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
		})
	}
}

// New fails with natsopt.ErrRefused, not after retrying until its ctx
// ends, when JetStream refuses a stream for good: here three replicas on
// a server that is not clustered. The error names the feature's flags.
func TestNewRefusedStream(t *testing.T) {
	t.Parallel()
	url := testenv.NATS(t).ClientURL()
	for _, tc := range []struct {
		name string
		set  func(*edge.Config)
	}{
		{"presence", func(c *edge.Config) { c.Presence.Replicas = 3 }},
		{"durable rooms", func(c *edge.Config) {
			c.Presence = nil
			c.DurableRooms = edge.DefaultDurableRoomsConfig("dur-*")
			c.DurableRooms.Replicas = 3
		}},
		{"durable messages", func(c *edge.Config) {
			c.Presence = nil
			c.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
			c.DurableMessages.Replicas = 3
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = testenv.Connect(t, url)
			cfg.Auth.Anonymous = true
			cfg.Logger = testenv.Logger(t)
			tc.set(&cfg)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			e, err := edge.New(ctx, cfg)
			if err == nil {
				_ = e.Shutdown(t.Context())
				t.Fatal("New succeeded with three replicas on one server")
			}
			if !errors.Is(err, natsopt.ErrRefused) || ctx.Err() != nil {
				t.Fatalf("error: %v (ctx: %v); want natsopt.ErrRefused before the deadline", err, ctx.Err())
			}
			if !strings.Contains(err.Error(), tc.name+" flags") {
				t.Errorf("error does not name the %s flags: %v", tc.name, err)
			}
		})
	}
}

// New ends as soon as its ctx does, with ctx's cause: before it starts,
// and in a set-up step that would otherwise retry (here a clustered
// server that never finds its peers, so JetStream never answers).
func TestNewHonoursContext(t *testing.T) {
	t.Parallel()
	errStop := errors.New("stop: SIGTERM")
	lonely := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(), ServerName: "lonely",
		Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: server.RANDOM_PORT},
		// Peers that never come: no quorum, no JetStream meta leader.
		Routes: server.RoutesFromStr("nats://127.0.0.1:1,nats://127.0.0.1:2"),
	})
	for _, tc := range []struct {
		name  string
		after time.Duration // cancel this long after New starts; 0: before
	}{
		{"cancelled before", 0},
		{"cancelled while retrying", 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = testenv.Connect(t, lonely)
			cfg.Auth.Anonymous = true
			cfg.Logger = testenv.Logger(t)
			ctx, cancel := context.WithCancelCause(t.Context())
			if tc.after == 0 {
				cancel(errStop)
			} else {
				time.AfterFunc(tc.after, func() { cancel(errStop) })
			}
			start := time.Now()
			e, err := edge.New(ctx, cfg)
			if err == nil {
				_ = e.Shutdown(t.Context())
				t.Fatal("New succeeded without a JetStream meta leader")
			}
			if d := time.Since(start) - tc.after; d > 2*time.Second {
				t.Errorf("New returned %s after ctx ended; want promptly", d)
			}
			if !errors.Is(err, errStop) {
				t.Errorf("error does not wrap ctx's cause: %v", err)
			}
			if !strings.Contains(err.Error(), "interrupted") {
				t.Errorf("error does not say the set-up was interrupted: %v", err)
			}
		})
	}
}

// New refuses configs out of range with an error wrapping
// edge.ErrInvalidConfig that names the field, before it touches NATS.
func TestNewInvalidConfig(t *testing.T) {
	t.Parallel()
	nc := testenv.Connect(t, testenv.NATS(t).ClientURL())
	for _, tc := range []struct {
		name  string
		set   func(*edge.Config)
		field string
	}{
		{"no NATS", func(c *edge.Config) { c.NATS.Conn = nil }, "NATS.Conn"},
		{"no authentication", func(c *edge.Config) { c.Auth.Anonymous = false }, "Auth.Authenticator"},
		{"path", func(c *edge.Config) { c.WebSocket.Path = "ws" }, "WebSocket.Path"},
		{"message size", func(c *edge.Config) { c.WebSocket.MaxMessageSize = 17 << 20 }, "WebSocket.MaxMessageSize"},
		{"write queue", func(c *edge.Config) { c.WebSocket.WriteQueueBytes = 1024 }, "WebSocket.WriteQueueBytes"},
		{"negative limit", func(c *edge.Config) { c.Limits.MaxConnsPerUser = -1 }, "limits"},
		{"public room pattern", func(c *edge.Config) { c.Auth.PublicRooms = []string{"room-["} }, "Auth.PublicRooms"},
		{"presence TTL", func(c *edge.Config) { c.Presence.TTL = 1500 * time.Millisecond }, "Presence.TTL"},
		{"durable rooms without patterns", func(c *edge.Config) { c.DurableRooms = edge.DefaultDurableRoomsConfig() }, "DurableRooms.Patterns"},
		{"durable messages without types", func(c *edge.Config) { c.DurableMessages = edge.DefaultDurableMessagesConfig() }, "DurableMessages.Types"},
		{"negative dedupe window", func(c *edge.Config) {
			c.DurableMessages = edge.DefaultDurableMessagesConfig("job.*")
			c.DurableMessages.DedupeWindow = -time.Second
		}, "DurableMessages.DedupeWindow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := edge.DefaultConfig()
			cfg.NATS.Conn = nc
			cfg.Auth.Anonymous = true
			tc.set(&cfg)
			e, err := edge.New(t.Context(), cfg)
			if err == nil {
				_ = e.Shutdown(t.Context())
				t.Fatal("New accepted the config")
			}
			if !errors.Is(err, edge.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v: want edge.ErrInvalidConfig naming %s", err, tc.field)
			}
		})
	}
}
