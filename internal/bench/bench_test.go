package bench_test

import (
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/testenv"
)

func TestRPCScenario(t *testing.T) {
	srv := testenv.NATS(t)
	testenv.Worker(t, testenv.Connect(t, srv.ClientURL()))
	e := testenv.StartEdge(t, edge.Config{NATS: testenv.Connect(t, srv.ClientURL()), Anonymous: true})
	var out strings.Builder
	r, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Scenario: "rpc", Conns: 4, Rate: 200,
		Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent < 50 || r.OK != r.Sent || r.Errors != 0 || r.Lost != 0 {
		t.Fatalf("result %+v", r)
	}
	if p50, p99 := r.Percentile(50), r.Percentile(99); p50 <= 0 || p99 < p50 {
		t.Fatalf("percentiles p50 %s p99 %s", p50, p99)
	}
	if !strings.HasPrefix(out.String(), "scenario=rpc ") || !strings.Contains(out.String(), "p99=") {
		t.Fatalf("line: %q", out.String())
	}
	if _, err := bench.Run(t.Context(), bench.Config{URL: e.URL, Scenario: "nope"}); err == nil {
		t.Fatal("unknown scenario accepted")
	}
}
