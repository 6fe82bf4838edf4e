// Command edge runs a Natter edge. With no --nats it is the whole mesh in one
// binary: an embedded nats-server with JetStream, the edge, and the built-in
// worker handlers.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter/natter/internal/app"
)

func main() {
	rc, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal starts the drain, a second one kills at once.
	context.AfterFunc(ctx, stop)
	err = app.Run(ctx, rc)
	stop()
	if err != nil {
		rc.Edge.Logger.Error("edge stopped", "err", err)
		os.Exit(1)
	}
}
