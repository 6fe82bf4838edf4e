package presencekv

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter/natter/pkg/presence"
)

// entry is a KeyValueEntry as the watcher gets it: the key a slice of the
// message's subject, the value its own bytes.
type entry struct {
	key string
	val []byte
	rev uint64
	op  jetstream.KeyValueOp
}

func (e *entry) Bucket() string                  { return presence.Bucket }
func (e *entry) Key() string                     { return e.key }
func (e *entry) Value() []byte                   { return e.val }
func (e *entry) Revision() uint64                { return e.rev }
func (e *entry) Created() time.Time              { return time.Time{} }
func (e *entry) Delta() uint64                   { return 0 }
func (e *entry) Operation() jetstream.KeyValueOp { return e.op }

func put(key string, v any, rev uint64) *entry {
	b, _ := json.Marshal(v)
	subject := "$KV." + presence.Bucket + "." + key
	return &entry{key: subject[len("$KV."+presence.Bucket+"."):], val: b, rev: rev}
}

// mirrorBytes loads n remote connections (ids of the <edge>.<n> shape,
// a user for every 1.25 connections, rooms of 100 members, on 4 edges) into an empty mirror and
// returns the heap it grew by, per connection.
func mirrorBytes(n int) float64 {
	s := &Service{
		cfg:   Config{Edge: "local"},
		conns: make(map[string]*record),
		users: make(map[string][]string),
		rooms: make(roomIndex),
		edges: make(map[string]*edgeState),
		tombs: make(map[string]*tomb),
	}
	edges := []string{"Hx9Q2lR8kC7nV1bT4yZ0aP", "Mq3W8eR5tY1uI6oP9aS2dF", "Zx7C4vB9nM2qW5eR8tY3uI", "Lk1J6hG3fD8sA4pO0iU7yT"}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		edge := edges[i%len(edges)]
		id := fmt.Sprintf("%s.%d", edge, 100000+i)
		s.apply(put("conn."+id, presence.Entry{
			Conn: id, User: fmt.Sprintf("user-%06d", i%(n*4/5)), Edge: edge,
			Rooms: []string{fmt.Sprintf("room-%05d", i/100)}, ConnectedAt: 1_760_000_000_000 + int64(i),
		}, uint64(i+1)), false)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	if len(s.conns) != n {
		panic(fmt.Sprintf("mirror holds %d of %d", len(s.conns), n))
	}
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// BenchmarkMirrorMemory reports the mirror's heap per remote connection
// (B/conn), loading 100,000 connections per run:
//
//	go test -run '^$' -bench MirrorMemory -benchtime 3x ./internal/presencekv/
func BenchmarkMirrorMemory(b *testing.B) {
	var per float64
	for b.Loop() {
		per = mirrorBytes(100_000)
	}
	b.ReportMetric(per, "B/conn")
}

// The mirror's memory per remote connection stays bounded (the figure is in
// docs/design/presence.md; this only catches a regression by a wide
// margin).
func TestMirrorMemoryBounded(t *testing.T) {
	per := mirrorBytes(50_000)
	t.Logf("mirror: %.0f bytes of heap per remote connection", per)
	if per > 1024 {
		t.Fatalf("mirror: %.0f bytes per remote connection", per)
	}
}
