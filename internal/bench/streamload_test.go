package bench_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/testenv"
)

// TestStreamScenarios runs streams and resume, small, against a dev-mode
// edge (a reader names its user with ?user=): every chunk arrives once and
// in place, every stream ends, every join reads its whole backlog from
// its offset.
func TestStreamScenarios(t *testing.T) {
	t.Parallel()
	m := testenv.NewMesh(t, testenv.MeshOptions{NoWorker: true})
	var out, log strings.Builder
	rs, err := bench.RunStreamScenarios(t.Context(), bench.Config{
		URL: m.Edge.URL, Pid: os.Getpid(), NATSURL: m.URL, SourceAddrs: 1,
		Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Settle: 10 * time.Millisecond,
		Out: &out, Log: &log,
	}, bench.StreamLoad{Streams: 5, ChunkRate: 20, Behind: 300, Read: 40, Joins: 3}, []string{bench.ScenarioStreams, bench.ScenarioResume})
	if err != nil {
		t.Fatalf("%v (log: %s)", err, log.String())
	}
	if len(rs) != 2 || strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("want a line per scenario, got %q", out.String())
	}
	s := rs[0]
	checkLine(t, s, "streams", "natter", "p50", "p99", "max", "server_cpu_s", "cpu_s_per_million", "js_kib_open", "js_kib_ended")
	wantEqual(t, s, map[string]float64{
		"streams": 5, "expected": 50, "lost": 0, "gaps": 0, "bad": 0, "write_errors": 0, "closed": 0,
		"ended": 5, "end_refused": 0, "js_msgs_ended": 5, // one rollup per stream
	})
	if d, l := number(t, s, "delivered"), number(t, s, "late"); d+l != 50 || d == 0 {
		t.Fatalf("delivered %v + late %v", d, l)
	}
	wantPositive(t, s, "p50", "js_kib_open", "js_msgs_open", "js_kib_ended")
	if len(s.Latencies) != 50 {
		t.Fatalf("%d latencies", len(s.Latencies))
	}

	r := rs[1]
	checkLine(t, r, "resume", "natter", "first_p50", "first_p99", "backlog_p99", "ended_first_p50", "cpu_ms_per_join")
	wantEqual(t, r, map[string]float64{"behind": 300, "read": 40, "joins": 3, "failed": 0, "ended_joins": 3})
	wantPositive(t, r, "joined_p50", "first_p50", "backlog_p50", "ended_first_p50", "frames_p50")
	if lo, st := number(t, r, "read_min"), number(t, r, "stored"); lo < 40 || st < 340 {
		t.Fatalf("read_min %v, stored %v", lo, st)
	}
	if first, backlog := number(t, r, "first_p50"), number(t, r, "backlog_p50"); first > backlog {
		t.Fatalf("first chunk at %v ms after the whole backlog at %v ms", first, backlog)
	}
}

func TestStreamScenariosConfig(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		sl        bench.StreamLoad
		scenarios []string
	}{
		"not a stream scenario": {bench.StreamLoad{}, []string{"fanout"}},
		"chunk too small":       {bench.StreamLoad{ChunkSize: 10}, []string{"streams"}},
	} {
		if _, err := bench.RunStreamScenarios(t.Context(), bench.Config{URL: "ws://127.0.0.1:1/ws", Pid: os.Getpid()}, tc.sl, tc.scenarios); !errors.Is(err, bench.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}
