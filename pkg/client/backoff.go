package client

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff paces reconnects: the wait before attempt n (counted from 0 after
// each drop) is a uniformly random duration in [0, min(Max, Initial*Factor^n)]
// ("full jitter"), so that clients dropped together by an edge do not come
// back together.
type Backoff struct {
	// Initial is the upper bound of the first wait. Default 250ms.
	Initial time.Duration
	// Max caps every wait. Default 10s.
	Max time.Duration
	// Factor multiplies the bound after each failed attempt. Default 2,
	// at least 1.
	Factor float64
	// Disabled turns reconnecting off: the first drop closes the client.
	Disabled bool
}

// Default backoff values.
const (
	DefaultBackoffInitial = 250 * time.Millisecond
	DefaultBackoffMax     = 10 * time.Second
	DefaultBackoffFactor  = 2
)

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Factor < 1 || math.IsNaN(b.Factor) || math.IsInf(b.Factor, 0) {
		b.Factor = DefaultBackoffFactor
	}
	return b
}

// Bound returns the upper bound of the wait before attempt n: Initial*Factor^n,
// capped at Max (with the defaults for zero fields).
func (b Backoff) Bound(n int) time.Duration {
	b = b.withDefaults()
	f := float64(b.Initial) * math.Pow(b.Factor, float64(max(n, 0)))
	if f >= float64(b.Max) || math.IsInf(f, 0) || math.IsNaN(f) {
		return b.Max
	}
	return time.Duration(f)
}

// Delay returns a random wait before attempt n, in [0, Bound(n)].
func (b Backoff) Delay(n int) time.Duration {
	return b.delay(n, rand.Float64)
}

func (b Backoff) delay(n int, rnd func() float64) time.Duration {
	return time.Duration(rnd() * float64(b.Bound(n)+1))
}
