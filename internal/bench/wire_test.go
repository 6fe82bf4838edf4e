package bench_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/natter/natter/internal/bench"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/schema"
)

// benchEdge is an edge with the bench's schemas, as the docs run it
// (--schemas internal/bench/schemas).
func benchEdge(t *testing.T) edge.Config {
	t.Helper()
	reg, err := schema.Load(schema.Config{Dirs: []string{"schemas"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := edge.DefaultConfig()
	cfg.Schemas = reg
	return cfg
}

// TestWireBytesScenario: both members get every message of every kind,
// and the schema kinds travel as protobuf payloads.
func TestWireBytesScenario(t *testing.T) {
	e, natsURL := startEdge(t, benchEdge(t))
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"wirebytes"}, NATSURL: natsURL,
		Messages: 20, Rate: 200,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	checkLine(t, r, "wirebytes", "natter", "messages", "chat_json_bytes", "chat_protobuf_bytes", "chat_pct",
		"text1k_pct", "dash1k_pct", "dash1k_rounded_pct", "dash1k_payload_json_bytes")
	for _, k := range []string{"chat", "text1k", "tick", "dash1k", "dash1k_rounded"} {
		if got := r.Get(k + "_protobuf_body"); got != "payload" {
			t.Errorf("%s_protobuf_body = %q, want payload", k, got)
		}
		wantPositive(t, r, k+"_json_bytes", k+"_protobuf_bytes", k+"_payload_json_bytes")
	}
	if p := number(t, r, "dash1k_pct"); p >= 60 {
		t.Errorf("dash1k_pct = %v", p)
	}
}

// TestFanoutProtobuf: members on both wires get every tick, read from a
// protobuf payload on the binary wire.
func TestFanoutProtobuf(t *testing.T) {
	e, natsURL := startEdge(t, benchEdge(t))
	var out strings.Builder
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"fanout"}, NATSURL: natsURL, Wires: []string{"json", "protobuf"},
		Subs: 20, Rate: 50, Duration: time.Second, Warmup: 200 * time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("output %q", out.String())
	}
	for i, w := range []string{"json", "protobuf"} {
		r := rs[i]
		checkLine(t, r, "fanout", "natter", "cpu_s_per_million")
		if r.Get("wire") != w {
			t.Fatalf("line %d: wire %q, want %s", i, r.Get("wire"), w)
		}
		wantEqual(t, r, map[string]float64{"subs": 20, "sent": 50, "expected": 1000, "lost": 0, "closed": 0})
	}
}

// TestFanoutDashboard: ticks that carry a dashboard refresh reach members
// on both wires.
func TestFanoutDashboard(t *testing.T) {
	e, natsURL := startEdge(t, benchEdge(t))
	rs, err := bench.Run(t.Context(), bench.Config{
		URL: e.URL, Pid: os.Getpid(), Scenarios: []string{"fanout"}, NATSURL: natsURL, Wires: []string{"json", "protobuf"},
		FanoutPayload: "dashboard", Subs: 10, Rate: 50, Duration: time.Second, Warmup: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		checkLine(t, r, "fanout", "natter", "cpu_s_per_million")
		if r.Get("kind") != "dashboard" {
			t.Fatalf("line %q", r)
		}
		wantEqual(t, r, map[string]float64{"subs": 10, "sent": 50, "expected": 500, "lost": 0, "closed": 0})
	}
}

func TestWireConfigErrors(t *testing.T) {
	for _, cfg := range []bench.Config{
		{Wires: []string{"xml"}},
		{Wires: []string{"protobuf"}, Servers: []string{"floor"}, Scenarios: []string{"fanout"}, FloorCommand: []string{"x"}},
		{Scenarios: []string{"wirebytes"}, Servers: []string{"floor"}, FloorCommand: []string{"x"}},
		{Scenarios: []string{"fanout"}, FanoutPayload: "xml"},
		{Scenarios: []string{"fanout"}, FanoutPayload: "dashboard", Servers: []string{"floor"}, FloorCommand: []string{"x"}},
	} {
		if _, err := bench.Run(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "invalid config") {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}
