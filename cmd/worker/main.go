// Command worker runs Natter's built-in handlers (echo, ping, chat, and the
// demo's assistant) as a separate process on a NATS server or cluster. All
// but the assistant are stateless; the assistant keeps the answer it is
// writing in memory (internal/assistant), so the demo runs one worker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/natter/natter/internal/assistant"
	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/config"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/ops"
	"github.com/natter/natter/internal/telemetry"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

func main() {
	var (
		url       string
		prefix    string
		queue     string
		id        string
		admin     string
		logFormat string
		drainFor  time.Duration
		logLevel  slog.Level
		natsOpts  natsopt.Options
	)
	fs := flag.NewFlagSet("worker", flag.ExitOnError)
	config.Register(fs, "worker")
	fs.StringVar(&url, "nats", nats.DefaultURL, "NATS server URLs, comma-separated")
	fs.StringVar(&prefix, "prefix", envelope.DefaultPrefix, "NATS subject prefix")
	fs.StringVar(&queue, "queue", worker.DefaultQueue, "NATS queue group")
	fs.StringVar(&id, "worker-id", "", "id of this worker in logs and in the ping reply (default random)")
	fs.DurationVar(&drainFor, "drain-timeout", 10*time.Second, "bound on draining in-flight messages at shutdown")
	fs.StringVar(&admin, "admin-listen", "", "admin address serving /healthz, /readyz and /metrics, like :9090 (default: none)")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	natsOpts.Register(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	log, err := ops.NewLogger(logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal starts the drain, a second one kills at once.
	context.AfterFunc(ctx, stop)
	err = run(ctx, log, runConfig{url: url, natsOpts: &natsOpts, prefix: prefix, queue: queue, id: id, admin: admin, drainFor: drainFor})
	if err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

type runConfig struct {
	url, prefix, queue, id, admin string
	natsOpts                      *natsopt.Options
	drainFor                      time.Duration
}

func run(ctx context.Context, log *slog.Logger, rc runConfig) error {
	ns, err := envelope.NewNamespace(rc.prefix)
	if err != nil {
		return err
	}
	opts, err := rc.natsOpts.NATS()
	if err != nil {
		return err
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(rc.url, append(opts, nats.Name("natter-worker"), nats.MaxReconnects(-1),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
		// A permissions violation does not close the connection; say so.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("NATS error", "subject", sub.Subject, "err", err)
				return
			}
			log.Error("NATS error", "err", err)
		}))...)
	if err != nil {
		return fmt.Errorf("worker: connect NATS: %w", err)
	}
	defer nc.Close()
	// Tracing is the standard OTEL_* variables' to turn on
	// (docs/design/tracing.md); the buffered spans are flushed at exit.
	tp, stopTracing, err := telemetry.Setup(ctx, "natter-worker")
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = stopTracing(fctx)
	}()
	if tp == nil {
		tp = noop.NewTracerProvider() // off: no span at all, the context still passed on
	}
	w, err := worker.New(nc, worker.Config{Namespace: ns, Queue: rc.queue, Logger: log, ID: rc.id, TracerProvider: tp})
	if err != nil {
		return err
	}
	if err := chat.Register(w); err != nil {
		return err
	}
	asst, err := assistant.Register(w, assistant.Config{Logger: log})
	if err != nil {
		return err
	}
	if err := w.Flush(ctx); err != nil {
		return err
	}

	srv := ops.New(rc.admin, log)
	srv.Registry.MustRegister(ops.NATSCollector(nc))
	var draining ops.Draining
	srv.AddCheck("nats", ops.NATSCheck(nc))
	srv.AddCheck("drain", draining.Check)
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Shutdown(context.Background()) }()

	log.Info("worker ready", "nats", nc.ConnectedUrl(), "queue", rc.queue, "worker", w.ID())
	<-ctx.Done()
	// Readiness fails first; then in-flight handlers finish (up to
	// --drain-timeout) and their replies are flushed before NATS closes.
	draining.Start()
	log.Info("worker draining")
	dctx, cancel := context.WithTimeout(context.Background(), rc.drainFor)
	defer cancel()
	err = errors.Join(w.Drain(dctx), asst.Close(dctx))
	// Replies already handed to the connection go out before it closes.
	if derr := nc.Drain(); derr == nil {
		select {
		case <-closed:
		case <-dctx.Done():
		}
	}
	return err
}
