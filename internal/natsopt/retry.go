package natsopt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoJetStream is returned by Retry when the NATS server, or the
// account the connection is in, has no JetStream: no retry can help.
var ErrNoJetStream = errors.New("natsopt: JetStream is not enabled")

// ErrRefused is returned by Retry when JetStream refused a set-up request
// for a reason that no retry mends: more replicas than the servers can
// hold, a stream of that name or those subjects with another
// configuration, an invalid configuration, or the account's or server's
// limits. The operator has to change a flag or the server.
var ErrRefused = errors.New("natsopt: JetStream refused the set-up")

// refusedCodes are the JetStream API error codes ErrRefused stands for
// (nats-server's errors.json).
var refusedCodes = map[jetstream.ErrorCode]bool{
	10023: true, // insufficient resources
	10027: true, // maximum number of streams reached
	10028: true, // insufficient memory resources
	10047: true, // insufficient storage resources
	10052: true, // invalid stream configuration
	10058: true, // stream name already in use with a different configuration
	10065: true, // subjects overlap with an existing stream
	10074: true, // replicas > 1 not supported in non-clustered mode
}

// Retry runs op with a 5s deadline per attempt until it succeeds, fails
// for good, or ctx ends, for setting up JetStream streams and buckets.
// Edges starting together on a fresh cluster race to create the same
// replicated stream, and a create can wait forever on a reply lost in the
// meta leader's churn; a new attempt gets through. Each failed attempt is
// logged with what.
//
// An error that no retry can mend ends Retry at once: JetStream not
// enabled on the server (API error 10076, or no responders to its API) or
// for the account (10039) comes back wrapping ErrNoJetStream and the
// jetstream package's sentinel; the API errors of refusedCodes wrapping
// ErrRefused. When ctx ends, the error wraps
// context.Cause(ctx) (so an owner can end the set-up with its own reason,
// such as a permissions violation its error handler saw) and names the
// last attempt's error that was not a timeout.
func Retry(ctx context.Context, log *slog.Logger, what string, op func(context.Context) error) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if err := noJetStream(err); err != nil {
			return err
		}
		if api := (*jetstream.APIError)(nil); errors.As(err, &api) && refusedCodes[api.ErrorCode] {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if ctx.Err() != nil {
			return stopped(ctx, last)
		}
		if last == nil || !errors.Is(err, context.DeadlineExceeded) {
			last = err
		}
		log.Warn(what+": set-up attempt failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return stopped(ctx, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// noJetStream returns err wrapped in ErrNoJetStream when it says that
// JetStream is not there, else nil.
func noJetStream(err error) error {
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w: %w", ErrNoJetStream, err)
	case errors.Is(err, nats.ErrNoResponders):
		// Every server with JetStream answers its API, so a request to
		// it that nobody receives means that no server of the account
		// runs JetStream; nats.go's AccountInfo reads it the same way.
		return fmt.Errorf("%w: %w: %w", ErrNoJetStream, jetstream.ErrJetStreamNotEnabled, err)
	}
	return nil
}

// stopped is Retry's error when ctx ended.
func stopped(ctx context.Context, last error) error {
	cause := context.Cause(ctx)
	if last == nil || errors.Is(last, cause) {
		return cause
	}
	return fmt.Errorf("%w (last attempt: %v)", cause, last)
}
