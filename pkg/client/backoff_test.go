package client_test

import (
	"testing"
	"time"

	"github.com/natter/natter/pkg/client"
)

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		b    client.Backoff
		want []time.Duration // Bound(0), Bound(1), ...
	}{
		{"defaults", client.Backoff{}, []time.Duration{
			250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second,
		}},
		{"custom", client.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Factor: 3}, []time.Duration{
			100 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond, time.Second,
		}},
		{"factor below 1 takes the default", client.Backoff{Initial: time.Second, Max: 3 * time.Second, Factor: 0.5}, []time.Duration{
			time.Second, 2 * time.Second, 3 * time.Second,
		}},
		{"max below initial", client.Backoff{Initial: time.Second, Max: time.Millisecond}, []time.Duration{
			time.Second, time.Second,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for n, want := range tc.want {
				if got := tc.b.Bound(n); got != want {
					t.Errorf("Bound(%d) = %s, want %s", n, got, want)
				}
			}
			if got, last := tc.b.Bound(1000), tc.want[len(tc.want)-1]; got != last && len(tc.want) > 2 {
				t.Errorf("Bound(1000) = %s, want the cap %s", got, last)
			}
		})
	}
}

func TestBackoffJitter(t *testing.T) {
	t.Parallel()
	b := client.Backoff{}
	for _, n := range []int{0, 3, 10} {
		bound := b.Bound(n)
		lo, hi := bound, time.Duration(0)
		seen := map[time.Duration]bool{}
		for range 2000 {
			d := b.Delay(n)
			if d < 0 || d > bound {
				t.Fatalf("Delay(%d) = %s outside [0, %s]", n, d, bound)
			}
			lo, hi = min(lo, d), max(hi, d)
			seen[d] = true
		}
		// Full jitter spreads waits over the whole range: 2000 uniform
		// samples all landing in one tenth of it has probability ~1e-90.
		if lo > bound/10 || hi < bound*9/10 || len(seen) < 100 {
			t.Fatalf("Delay(%d) over 2000 samples: min %s max %s, %d distinct; want spread over [0, %s]", n, lo, hi, len(seen), bound)
		}
	}
}
