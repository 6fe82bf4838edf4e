package natsopt

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Retry runs op with a 5s deadline per attempt until it succeeds or ctx
// ends, for setting up JetStream streams and buckets. Edges starting
// together on a fresh cluster race to create the same replicated stream,
// and a create can wait forever on a reply lost in the meta leader's
// churn; a new attempt gets through. Each failed attempt is logged with
// what; the error returned is the last one that is not a timeout.
func Retry(ctx context.Context, log *slog.Logger, what string, op func(context.Context) error) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if last == nil || !errors.Is(err, context.DeadlineExceeded) {
			last = err
		}
		log.Warn(what+": set-up attempt failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return last
		case <-time.After(250 * time.Millisecond):
		}
	}
}
