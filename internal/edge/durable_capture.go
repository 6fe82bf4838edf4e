package edge

// Durable rooms, capture: the lease (its bucket and the goroutine that
// holds it) that makes one edge at a time the capturer, and the capturer
// that stores core publishes to durable rooms in the stream.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/tracing"
)

const (
	// leaseTTL is how long a capture lease outlives its holder.
	leaseTTL   = 3 * time.Second
	leaseRenew = time.Second
	// leaseMargin: a holder stops capturing this long before its lease
	// could expire, for clock rates and the server's expiry timer.
	leaseMargin = 500 * time.Millisecond
	leaseKey    = "leader"
)

// createLease creates the bucket of the capture lease, or updates it.
func (d *durable) createLease(ctx context.Context) error {
	bucket := strings.ReplaceAll(d.e.ns.Prefix(), ".", "_") + "_capture"
	err := natsopt.Retry(ctx, d.e.cfg.Logger, "durable capture lease", func(ctx context.Context) (err error) {
		d.lease, err = d.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "Natter: which edge captures core publishes to durable rooms",
			History:     1,
			TTL:         leaseTTL,
			Storage:     jetstream.MemoryStorage,
			Replicas:    d.e.cfg.DurableRooms.Replicas,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("edge: durable capture lease %s: %w", bucket, err)
	}
	return nil
}

// lead holds the capture lease when it can and runs the capturer while it
// does, until ctx ends (stop): then it gives the lease up. A lease not
// renewed expires after leaseTTL; until then no other edge captures, and
// core publishes to durable rooms are not stored.
func (d *durable) lead(ctx context.Context) {
	var rev uint64
	var renewed time.Time // when the last successful renewal was sent
	tick := time.NewTicker(leaseRenew)
	defer tick.Stop()
	for {
		if rev != 0 && time.Since(renewed) > leaseTTL-leaseMargin {
			// Ours may run out before another renewal gets through: stop
			// before another edge can start.
			rev = 0
			d.stopCapture()
		}
		if rev == 0 {
			rctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
			sent := time.Now()
			if r, err := d.lease.Create(rctx, leaseKey, []byte(d.e.cfg.EdgeID)); err == nil {
				rev, renewed = r, sent
				d.startCapture()
			}
			cancel()
		} else {
			rctx, cancel := context.WithDeadline(context.Background(), renewed.Add(leaseTTL-leaseMargin))
			sent := time.Now()
			r, err := d.lease.Update(rctx, leaseKey, []byte(d.e.cfg.EdgeID), rev)
			cancel()
			switch {
			case err == nil:
				rev, renewed = r, sent
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyNotFound):
				rev = 0 // another edge holds it, or ours ran out
				d.stopCapture()
			}
		}
		select {
		case <-ctx.Done():
			d.stopCapture()
			if rev != 0 {
				dctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
				_ = d.lease.Delete(dctx, leaseKey, jetstream.LastRevision(rev))
				cancel()
			}
			return
		case <-tick.C:
		}
	}
}

func (d *durable) startCapture() {
	// One subscription stores in arrival order: async publishes on one
	// connection reach the stream in the order they were made.
	sub, err := d.e.nc.Subscribe(d.e.ns.RoomAll().String(), d.captureMsg)
	if err != nil {
		d.e.cfg.Logger.Warn("edge: durable capture", "err", err)
		return
	}
	d.capture = sub
	d.e.cfg.Logger.Info("edge: capturing core publishes to durable rooms")
}

func (d *durable) stopCapture() {
	if d.capture != nil {
		_ = d.capture.Unsubscribe()
		d.capture = nil
	}
}

// captureMsg stores a core publish to a durable room in the stream.
func (d *durable) captureMsg(msg *nats.Msg) {
	kind, room := d.e.ns.Parse(msg.Subject)
	if kind != envelope.KindRoom || !d.isDurable(room) {
		return
	}
	subj, _ := d.e.ns.DurableRoom(room)
	out := &nats.Msg{Subject: subj.String(), Data: msg.Data}
	if x := msg.Header.Get(envelope.HeaderExclude); x != "" {
		out.Header = nats.Header{envelope.HeaderExclude: []string{x}}
	}
	if sc := tracing.FromHeader(msg.Header); sc.IsValid() {
		// Stored with the message, for its live deliveries and replays.
		if out.Header == nil {
			out.Header = nats.Header{}
		}
		tracing.InjectContext(sc, out.Header)
	}
	if _, err := d.js.PublishMsgAsync(out); err != nil {
		if d.e.logLimit.Allow() {
			d.e.cfg.Logger.Warn("edge: durable capture failed", "room", room, "err", err)
		}
		return
	}
	d.e.stats.captured.Add(1)
}
