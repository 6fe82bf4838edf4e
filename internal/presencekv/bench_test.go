package presencekv_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/natter/natter/internal/testenv"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/presence"
)

// BenchmarkRoomQuery lists a page of a 10,000-member room: from the edge's
// mirror directly, and as any service would, over NATS.
func BenchmarkRoomQuery(b *testing.B) {
	srv := testenv.NATS(b)
	s := start(b, srv.ClientURL(), "edgeA", 30*time.Second)
	const members = 10_000
	for i := range members {
		s.Set(presence.Entry{Conn: fmt.Sprintf("conn%05d", i), User: fmt.Sprintf("u%d", i%3000), Rooms: []string{"big"}})
	}
	testenv.Eventually(b, 60*time.Second, "10,000 members in the mirror", func() bool { return s.Room("big", "", 1).Count == members })
	nc := testenv.Connect(b, srv.ClientURL())

	b.Run("mirror/first-page", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if p := s.Room("big", "", 100); len(p.Members) != 100 {
				b.Fatal(len(p.Members))
			}
		}
	})
	b.Run("mirror/all-pages", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n, cursor := 0, ""
			for {
				p := s.Room("big", cursor, 1000)
				n += len(p.Members)
				if cursor = p.Next; cursor == "" {
					break
				}
			}
			if n != members {
				b.Fatal(n)
			}
		}
	})
	b.Run("nats/first-page", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := presence.Room(b.Context(), nc, envelope.DefaultNamespace, "big", "", 100)
			if err != nil || len(p.Members) != 100 {
				b.Fatal(err)
			}
		}
	})
}
