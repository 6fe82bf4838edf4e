package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/app"
	"github.com/natter/natter/internal/edge"
)

// clearEnv unsets every NATTER_* variable for the test (restored after):
// the flags read them, and a developer's or CI's shell may set some.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "NATTER_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// With no flags, the command runs app.DefaultConfig (and so
// edge.DefaultConfig): the flags restate no default of their own.
func TestFlagDefaultsAreTheLibrarys(t *testing.T) {
	clearEnv(t)
	got, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := app.DefaultConfig()
	got.Edge.Logger, got.NATSOptions, got.Virtual = nil, nil, nil
	want.NATSOptions = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flag defaults differ from app.DefaultConfig:\n got %+v\nwant %+v", got, want)
	}
}

// A flag, its NATTER_* variable and its key in the --config file land in
// the same field of the grouped config; the optional groups are on when
// their flags say so, with their defaults where no flag is given.
func TestFlagsFillTheGroups(t *testing.T) {
	file := filepath.Join(t.TempDir(), "edge.yaml")
	yaml := "durable-rooms: [support-*, orders-*]\ndurable-max-age: 2h\npresence-ttl: 20s\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	clearEnv(t)
	t.Setenv("NATTER_MAX_CONNS_PER_USER", "7")
	t.Setenv("NATTER_DURABLE_REPLICAS", "3")
	rc, err := parseFlags([]string{"--config", file, "--durable-types", "job.*", "--rate-limit", "-1", "--prefix", "acme"})
	if err != nil {
		t.Fatal(err)
	}
	e := rc.Edge
	rooms := edge.DefaultDurableRoomsConfig("support-*", "orders-*")
	rooms.MaxAge, rooms.Replicas = 2*time.Hour, 3
	msgs := edge.DefaultDurableMessagesConfig("job.*")
	msgs.Replicas = 3
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"Limits.MaxConnsPerUser (env)", e.Limits.MaxConnsPerUser, 7},
		{"Limits.MessageRate (flag)", e.Limits.MessageRate, -1.0},
		{"Limits.UserMessageRate (default)", e.Limits.UserMessageRate, edge.DefaultConfig().Limits.UserMessageRate},
		{"Presence.TTL (file)", e.Presence.TTL, 20 * time.Second},
		{"DurableRooms (file, env)", *e.DurableRooms, *rooms},
		{"DurableMessages (flag, env)", *e.DurableMessages, *msgs},
		{"NATS.Namespace (flag)", e.NATS.Namespace.Prefix(), "acme"},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}

	rc, err = parseFlags([]string{"--presence=false"})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Edge.Presence != nil || rc.Edge.DurableRooms != nil || rc.Edge.DurableMessages != nil {
		t.Fatalf("groups on without their flags: %+v %+v %+v", rc.Edge.Presence, rc.Edge.DurableRooms, rc.Edge.DurableMessages)
	}
}
