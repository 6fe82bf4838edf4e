// Command worker runs Natter's built-in handlers (echo, ping, chat) as a
// separate, stateless process on a NATS server or cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

func main() {
	var (
		url      string
		prefix   string
		queue    string
		drainFor time.Duration
		logLevel slog.Level
		natsOpts natsopt.Options
	)
	flag.StringVar(&url, "nats", nats.DefaultURL, "NATS server URLs, comma-separated")
	flag.StringVar(&prefix, "prefix", envelope.DefaultPrefix, "NATS subject prefix")
	flag.StringVar(&queue, "queue", worker.DefaultQueue, "NATS queue group")
	flag.DurationVar(&drainFor, "drain-timeout", 10*time.Second, "bound on draining in-flight messages at shutdown")
	flag.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	natsOpts.Register(flag.CommandLine)
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, url, &natsOpts, prefix, queue, drainFor); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, url string, natsOpts *natsopt.Options, prefix, queue string, drainFor time.Duration) error {
	ns, err := envelope.NewNamespace(prefix)
	if err != nil {
		return err
	}
	opts, err := natsOpts.NATS()
	if err != nil {
		return err
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(url, append(opts, nats.Name("natter-worker"), nats.MaxReconnects(-1),
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
	w, err := worker.New(nc, worker.Config{Namespace: ns, Queue: queue, Logger: log})
	if err != nil {
		return err
	}
	if err := chat.Register(w); err != nil {
		return err
	}
	if err := w.Flush(ctx); err != nil {
		return err
	}
	log.Info("worker ready", "nats", nc.ConnectedUrl(), "queue", queue)
	<-ctx.Done()
	log.Info("worker draining")
	dctx, cancel := context.WithTimeout(context.Background(), drainFor)
	defer cancel()
	err = w.Drain(dctx)
	// Replies already handed to the connection go out before it closes.
	if derr := nc.Drain(); derr == nil {
		select {
		case <-closed:
		case <-dctx.Done():
		}
	}
	return err
}
