package worker

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/presence"
)

// EventHandler handles one lifecycle event.
type EventHandler func(ctx context.Context, e presence.Event)

// OnEvent subscribes h to the lifecycle event name (presence.EventOnline,
// ...) on <prefix>.evt.<name>, in the worker's queue group: each event
// reaches one worker of the group. Events arrive in order per event name.
func (w *Worker) OnEvent(name string, h EventHandler) error {
	subj, err := w.cfg.Namespace.Event(name)
	if err != nil {
		return err
	}
	sub, err := w.nc.QueueSubscribe(subj.String(), w.cfg.Queue, func(msg *nats.Msg) {
		var e presence.Event
		if err := json.Unmarshal(msg.Data, &e); err != nil {
			w.cfg.Logger.Warn("worker: undecodable event", "subject", msg.Subject, "err", err)
			return
		}
		defer func() {
			if p := recover(); p != nil {
				w.cfg.Logger.Error("worker: event handler panic", "event", name, "panic", p)
			}
		}()
		h(w.ctx, e)
	})
	if err != nil {
		return fmt.Errorf("worker: subscribe %s: %w", subj, err)
	}
	w.keep(sub)
	return nil
}

// OnConnect handles a connection opening on any edge.
func (w *Worker) OnConnect(h EventHandler) error { return w.OnEvent(presence.EventConnect, h) }

// OnDisconnect handles a connection going away, closed or expired.
func (w *Worker) OnDisconnect(h EventHandler) error { return w.OnEvent(presence.EventDisconnect, h) }

// OnOnline handles a user's first connection anywhere in the cluster.
func (w *Worker) OnOnline(h EventHandler) error { return w.OnEvent(presence.EventOnline, h) }

// OnOffline handles a user's last connection going away.
func (w *Worker) OnOffline(h EventHandler) error { return w.OnEvent(presence.EventOffline, h) }

// OnJoin handles a connection joining a room.
func (w *Worker) OnJoin(h EventHandler) error { return w.OnEvent(presence.EventJoin, h) }

// OnLeave handles a connection leaving a room, also by closing or expiry.
func (w *Worker) OnLeave(h EventHandler) error { return w.OnEvent(presence.EventLeave, h) }
