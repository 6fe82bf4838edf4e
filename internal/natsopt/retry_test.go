package natsopt_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/testenv"
)

// TestRetryNoJetStream: set-up calls against a server or account without
// JetStream fail at once with ErrNoJetStream, whichever way the server
// says it (API error 10076 or 10039, or no responders), instead of being
// retried until the context ends.
func TestRetryNoJetStream(t *testing.T) {
	t.Parallel()
	acc := server.NewAccount("NOJS")
	accountURL := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(),
		Accounts: []*server.Account{acc},
		Users:    []*server.User{{Username: "u", Password: "p", Account: acc}},
	})
	noJSURL := testenv.NATSServer(t, &server.Options{})
	kv := func(js jetstream.JetStream) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
			return err
		}
	}
	stream := func(js jetstream.JetStream) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "s", Subjects: []string{"s.>"}})
			return err
		}
	}
	for _, tc := range []struct {
		name string
		url  string
		opts []nats.Option
		op   func(jetstream.JetStream) func(context.Context) error
		want error
	}{
		{"server without JetStream, bucket (10076)", noJSURL, nil, kv, jetstream.ErrJetStreamNotEnabled},
		{"server without JetStream, stream (no responders)", noJSURL, nil, stream, jetstream.ErrJetStreamNotEnabled},
		{"account without JetStream, bucket (10039)", accountURL, []nats.Option{nats.UserInfo("u", "p")}, kv, jetstream.ErrJetStreamNotEnabledForAccount},
		{"account without JetStream, stream (10039)", accountURL, []nats.Option{nats.UserInfo("u", "p")}, stream, jetstream.ErrJetStreamNotEnabledForAccount},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(tc.url, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			// The context outlives the test's patience: only a permanent
			// error ends Retry in time.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- natsopt.Retry(ctx, slog.New(slog.DiscardHandler), "test", tc.op(js)) }()
			select {
			case err = <-done:
			case <-time.After(3 * time.Second):
				cancel()
				t.Fatalf("Retry still retrying after 3s: %v", <-done)
			}
			if !errors.Is(err, natsopt.ErrNoJetStream) || !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v and %v", err, natsopt.ErrNoJetStream, tc.want)
			}
		})
	}
}

// TestRetryStopsWithContext: a set-up that keeps failing for a passing
// reason (here a JetStream cluster that never elects a leader) ends when
// the caller's context does, with the caller's cause and the last
// attempt's error.
func TestRetryStopsWithContext(t *testing.T) {
	t.Parallel()
	url := testenv.NATSServer(t, &server.Options{
		JetStream: true, StoreDir: t.TempDir(), ServerName: "lonely",
		Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: server.RANDOM_PORT},
		// Peers that never come: no quorum, no meta leader.
		Routes: server.RoutesFromStr("nats://127.0.0.1:1,nats://127.0.0.1:2"),
	})
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	attempted := make(chan struct{})
	errStop := errors.New("stop requested")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() {
		done <- natsopt.Retry(ctx, slog.New(slog.DiscardHandler), "test", func(ctx context.Context) error {
			select {
			case <-attempted:
			default:
				close(attempted)
			}
			_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "s", Subjects: []string{"s.>"}})
			return err
		})
	}()
	<-attempted
	cancel(errStop)
	select {
	case err = <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Retry did not stop within 2s of its context")
	}
	if !errors.Is(err, errStop) || errors.Is(err, natsopt.ErrNoJetStream) {
		t.Fatalf("err = %v, want the cause %v", err, errStop)
	}
}
