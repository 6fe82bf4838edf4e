package tap_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/tap"
	"github.com/natter/natter/internal/testenv"
)

// TestRecords publishes what each part of the mesh publishes, by hand, and
// checks the line the tap prints for it.
func TestRecords(t *testing.T) {
	t.Parallel()
	url := testenv.NATS(t).ClientURL()
	pub := testenv.Connect(t, url)
	tp, err := tap.New(tap.Config{Events: true, Payloads: true, MaxPayload: 13})
	if err != nil {
		t.Fatal(err)
	}
	out := &lines{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := tp.Run(ctx, testenv.Connect(t, url), out)
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	testenv.Eventually(t, wait, "the tap subscribed", func() bool {
		_ = pub.Publish("natter.out.all", []byte(`{"type":"ready"}`))
		_ = pub.Flush()
		return len(out.grep("type=ready")) > 0
	})

	msg := func(subject, reply, body string, hdr ...string) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Reply, m.Data = reply, []byte(body)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		return m
	}
	for _, tc := range []struct {
		name string
		m    *nats.Msg
		want string // the line after its time
	}{
		{"request", msg("natter.in.chat.send", "_INBOX_EDGE.x", `{"type":"chat.send","meta":{"correlationId":"c1"},"payload":{"text": "hi"}}`,
			"Natter-Conn", "e1.7", "Natter-User", "alice", "Natter-Edge", "e1"),
			`in  in type=chat.send conn=e1.7 user=alice cid=c1 request size=75 payload={"text":"hi"}`},
		{"anonymous publish", msg("natter.in.typing", "", `{"type":"typing"}`, "Natter-Conn", "e1.8"),
			`in  in type=typing conn=e1.8 size=17`},
		{"user", msg("natter.out.user.bob", "", `{"type":"note","payload":"a long payload"}`),
			`out user:bob type=note size=42 payload="a long paylo...<truncated, 16 B>`},
		{"conn", msg("natter.out.conn.e1.7", "", `{"type":"x"}`), `out conn:e1.7 type=x size=12`},
		{"durable", msg("natter.durable.live.news", "", `{"type":"n","payload":1}`, "Nats-Sequence", "42"),
			`out durable:news type=n seq=42 size=24 payload=1`},
		{"control", msg("natter.ctl.conn.e1.7", "", `{"op":"join","room":"lobby"}`), `ctl ctl:e1.7 type=join room=lobby size=28 payload={"op":"join",...<truncated, 28 B>`},
		{"event", msg("natter.evt.online", "", `{"event":"online","conn":"e1.7","user":"alice","revision":3}`),
			`evt evt type=online conn=e1.7 user=alice size=60 payload={"event":"onl...<truncated, 60 B>`},
		{"undecodable", msg("natter.out.room.r1", "", `{"type":`), `out room:r1 size=8 undecodable (`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := pub.PublishMsg(tc.m); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if t.Failed() {
					t.Logf("want %s\ngot:\n%s", tc.want, strings.Join(out.all(), "\n"))
				}
			}()
			testenv.Eventually(t, 2*time.Second, tc.name, func() bool { return has(out, tc.want) })
		})
	}
}

// has reports whether a line of out contains want after its time stamp.
func has(out *lines, want string) bool {
	for _, l := range out.all() {
		if _, rest, ok := strings.Cut(l, " "); ok && strings.HasPrefix(rest, want) {
			return true
		}
	}
	return false
}
