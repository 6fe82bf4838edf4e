//go:build cluster

package cluster_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/pkg/presence"
)

// figures collects the measured figures of a run, to log and to write to
// figures.txt in the test's artifact directory.
type figures struct {
	mu    sync.Mutex
	lines []string
}

func (f *figures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
}

// report logs the figures and writes them to figures.txt.
func (f *figures) report(t *testing.T) {
	f.mu.Lock()
	text := strings.Join(f.lines, "\n") + "\n"
	f.mu.Unlock()
	t.Logf("figures:\n%s", text)
	path := filepath.Join(t.ArtifactDir(), "figures.txt")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Errorf("write figures: %v", err)
		return
	}
	t.Logf("figures written to %s (kept with -artifacts)", path)
}

// latencies summarizes a set of durations.
type latencies []time.Duration

// percentile returns the nearest-rank p-th percentile (0 < p <= 1).
func (l latencies) percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func (l latencies) String() string {
	if len(l) == 0 {
		return "no samples"
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("n=%d p50 %s, p90 %s, p99 %s, max %s",
		len(l), ms(l.percentile(0.5)), ms(l.percentile(0.9)), ms(l.percentile(0.99)), ms(l.percentile(1)))
}

// eventLog records lifecycle events from natter.evt.>.
type eventLog struct {
	mu  sync.Mutex
	all []presence.Event
}

func watchEvents(t testing.TB, nc *nats.Conn) *eventLog {
	t.Helper()
	l := &eventLog{}
	sub, err := nc.Subscribe("natter.evt.>", func(m *nats.Msg) {
		var e presence.Event
		if json.Unmarshal(m.Data, &e) == nil {
			l.mu.Lock()
			l.all = append(l.all, e)
			l.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// find returns the events for which f holds.
func (l *eventLog) find(f func(presence.Event) bool) []presence.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []presence.Event
	for _, e := range l.all {
		if f(e) {
			out = append(out, e)
		}
	}
	return out
}

// of matches events named name of user.
func of(name, user string) func(presence.Event) bool {
	return func(e presence.Event) bool { return e.Event == name && e.User == user }
}
