package edge

import (
	"reflect"
	"testing"

	"github.com/nats-io/nats.go"
)

// DefaultConfig is complete: New's defaults change nothing in it but what
// they derive (the edge id, the bursts, the logger). A Config written from
// scratch gets DefaultConfig's sizes and timeouts, and its limits where
// zero means "the default".
func TestDefaultConfigIsTheOneSource(t *testing.T) {
	t.Parallel()
	conn := new(nats.Conn) // never used: setDefaults only checks it is set
	d := DefaultConfig()
	d.NATS.Conn, d.Auth.Anonymous = conn, true
	got := d
	if err := got.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if got.EdgeID == "" || got.Logger == nil || got.Limits.MessageBurst != 200 ||
		got.Limits.UserMessageBurst != 400 || got.Limits.HandshakeBurst != 100 {
		t.Fatalf("derived defaults: id %q, logger %v, bursts %d %d %d", got.EdgeID, got.Logger,
			got.Limits.MessageBurst, got.Limits.UserMessageBurst, got.Limits.HandshakeBurst)
	}
	got.EdgeID, got.Logger = "", nil
	got.Limits.MessageBurst, got.Limits.UserMessageBurst, got.Limits.HandshakeBurst = 0, 0, 0
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("setDefaults changed DefaultConfig:\n got %+v\nwant %+v", got, d)
	}

	zero := Config{NATS: NATSConfig{Conn: conn}, Auth: AuthConfig{Anonymous: true}}
	if err := zero.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if zero.NATS.Namespace != d.NATS.Namespace || zero.NATS.MaxOutboundSize != d.NATS.MaxOutboundSize ||
		zero.NATS.RPCTimeout != d.NATS.RPCTimeout || zero.NATS.RPCMaxTimeout != d.NATS.RPCMaxTimeout ||
		zero.WebSocket != d.WebSocket || zero.Auth.TokenSources != d.Auth.TokenSources ||
		zero.Auth.Timeout != d.Auth.Timeout || zero.Auth.RefreshWindow != d.Auth.RefreshWindow ||
		zero.Limits.MessageRate != d.Limits.MessageRate || zero.Limits.MaxRoomsPerConn != d.Limits.MaxRoomsPerConn ||
		zero.Limits.MaxInflightRPC != d.Limits.MaxInflightRPC {
		t.Fatalf("a zero Config's defaults differ from DefaultConfig:\n got %+v\nwant %+v", zero, d)
	}
	// Zero means off for these, and for the optional groups.
	if zero.Limits.UserMessageRate != 0 || zero.Limits.MaxConnsPerUser != 0 || zero.Limits.HandshakeRate != 0 ||
		zero.Presence != nil || zero.DurableRooms != nil || zero.DurableMessages != nil {
		t.Fatalf("a zero Config turned something on: %+v", zero)
	}
}

// setDefaults fills copies of the optional groups: a Config shared by two
// edges (or reused) is never written to.
func TestSetDefaultsLeavesTheCallersGroups(t *testing.T) {
	t.Parallel()
	p := &PresenceConfig{}
	r := &DurableRoomsConfig{Patterns: []string{"dur-*"}}
	m := &DurableMessagesConfig{Types: []string{"job.*"}}
	c := Config{NATS: NATSConfig{Conn: new(nats.Conn)}, Auth: AuthConfig{DevMode: true}, Presence: p, DurableRooms: r, DurableMessages: m}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if *p != (PresenceConfig{}) || r.MaxAge != 0 || m.MaxBytes != 0 {
		t.Fatalf("the caller's groups were written to: %+v %+v %+v", p, r, m)
	}
	if c.Presence.TTL != DefaultPresenceConfig().TTL || c.DurableRooms.MaxAge != DefaultDurableRoomsConfig().MaxAge ||
		c.DurableMessages.MaxBytes != DefaultDurableMessagesConfig().MaxBytes {
		t.Fatalf("the groups' defaults are not set: %+v %+v %+v", c.Presence, c.DurableRooms, c.DurableMessages)
	}
}
