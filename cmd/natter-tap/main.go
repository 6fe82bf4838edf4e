// Command natter-tap shows the live traffic of a Natter deployment, decoded
// and filtered, one line per message: client messages to workers
// (<prefix>.in.<type>, with the sender's connection and user), deliveries
// toward clients (out.room, out.user, out.conn, out.all, durable.live),
// control requests (ctl.conn) and, with --events, lifecycle events.
//
//	natter-tap --nats nats://nats:4222 --nats-nkey tap.nk --room general
//	natter-tap --type 'chat.*' --direction in --payloads --max-payload 200
//	natter-tap --user alice --json --count 100 | jq .
//
// Payloads are redacted ("payload=<redacted 42 B>") unless --payloads is
// given. --room, --user and --conn select the traffic of any of them;
// --type and --direction narrow it. The tap holds core NATS subscriptions
// only, as narrow as the filters allow, and needs only subscribe
// permissions (the tap user of deploy/nats/natter.conf). Replies to
// requests go to the edges' inboxes and are not shown. It stops on SIGINT
// or SIGTERM, after --count messages or after --duration. Flags can also
// come from NATTER_<FLAG> variables or a --config file, as for the other
// commands (internal/config). See internal/tap.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/config"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/tap"
	"github.com/natter/natter/pkg/envelope"
)

// list is a repeatable, comma-separated flag.
type list []string

func (l *list) String() string { return strings.Join(*l, ",") }
func (l *list) Set(v string) error {
	*l = append(*l, config.SplitList(v)...)
	return nil
}

func main() {
	var (
		url, prefix string
		duration    time.Duration
		natsOpts    natsopt.Options
		cfg         tap.Config
		rooms       list
		users       list
		conns       list
		types       list
	)
	fs := flag.NewFlagSet("natter-tap", flag.ExitOnError)
	config.Register(fs, "natter-tap")
	fs.StringVar(&url, "nats", nats.DefaultURL, "NATS server URLs, comma-separated")
	fs.StringVar(&prefix, "prefix", envelope.DefaultPrefix, "NATS subject prefix")
	fs.Var(&rooms, "room", "show this room's deliveries (`glob`; repeatable or comma-separated)")
	fs.Var(&users, "user", "show this Natter user's messages, in and out (`glob`; repeatable); NATS auth is --nats-user")
	fs.Var(&conns, "conn", "show this connection's messages, in and out (`glob` of <edge>.<n>; repeatable)")
	fs.Var(&types, "type", "show only these message types (`glob`, like chat.*; repeatable)")
	fs.StringVar(&cfg.Direction, "direction", tap.DirectionBoth, "in (client to worker), out (toward clients, and control) or both")
	fs.BoolVar(&cfg.Events, "events", false, "also show lifecycle events (<prefix>.evt.>)")
	fs.BoolVar(&cfg.Payloads, "payloads", false, "show payloads (default: only their size)")
	fs.IntVar(&cfg.MaxPayload, "max-payload", tap.DefaultMaxPayload, "truncate shown payloads at this many `bytes`")
	fs.BoolVar(&cfg.JSON, "json", false, "one JSON object per line")
	fs.IntVar(&cfg.Count, "count", 0, "stop after this many messages (default: no limit)")
	fs.DurationVar(&duration, "duration", 0, "stop after this long (default: no limit)")
	natsOpts.Register(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "natter-tap: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	cfg.Rooms, cfg.Users, cfg.Conns, cfg.Types = rooms, users, conns, types

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	if err := run(ctx, url, prefix, &natsOpts, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "natter-tap:", err)
		if errors.Is(err, tap.ErrInvalidConfig) || errors.Is(err, natsopt.ErrInvalidOptions) || errors.Is(err, envelope.ErrInvalidPrefix) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, url, prefix string, o *natsopt.Options, cfg tap.Config) error {
	ns, err := envelope.NewNamespace(prefix)
	if err != nil {
		return err
	}
	cfg.Namespace = ns
	t, err := tap.New(cfg)
	if err != nil {
		return err
	}
	opts, err := o.NATS()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(url, append(opts, nats.Name("natter-tap"), nats.MaxReconnects(-1),
		// A refused subscription does not close the connection; say so.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			fmt.Fprintln(os.Stderr, "natter-tap: NATS:", err)
		}))...)
	if err != nil {
		return fmt.Errorf("connect NATS: %w", err)
	}
	defer nc.Close()
	fmt.Fprintf(os.Stderr, "natter-tap: listening on %s\n", strings.Join(t.Subjects(), " "))
	dropped, err := t.Run(ctx, nc, os.Stdout)
	if dropped > 0 {
		fmt.Fprintf(os.Stderr, "natter-tap: %d messages dropped (output too slow)\n", dropped)
	}
	return err
}
