#!/usr/bin/env bash
# Runs every cmd/bench scenario against a single-binary edge, as recorded in
# docs/benchmarks.md. Idle gets a fresh edge per run (Go keeps freed memory,
# so RSS per connection is only meaningful on a new process); the other
# scenarios share one edge and use -runs, which prints a median line.
#
#   scripts/bench.sh                       # natter and the gws floor
#   EDGE=/tmp/old-edge SERVERS=natter scripts/bench.sh
#
# Environment: EDGE (edge binary; default: built from this tree), SERVERS
# (natter,floor), RUNS (3), DURATION (10s), IDLE_CONNS (10000), EDGE_FLAGS
# (extra edge flags, e.g. --presence=false), SCENARIOS (idle fanout rpc).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
EDGE=${EDGE:-}
if [ -z "$EDGE" ]; then
	go build -o "$out/natter-edge" ./cmd/edge
	EDGE=$out/natter-edge
fi
go build -o "$out/natter-bench" ./cmd/bench
BENCH=$out/natter-bench
SERVERS=${SERVERS:-natter,floor}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
IDLE_CONNS=${IDLE_CONNS:-10000}
EDGE_FLAGS=${EDGE_FLAGS:-}
SCENARIOS=${SCENARIOS:-idle fanout rpc}
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
pid=
start_edge() {
	rm -rf "$out/data"
	# Limits that would refuse the load itself: the per-IP handshake rate
	# and the per-connection message rate (the rpc max-rate phase).
	# shellcheck disable=SC2086
	"$EDGE" --listen 127.0.0.1:8080 --nats-listen 127.0.0.1:4222 --data-dir "$out/data" \
		--handshake-rate 0 --rate-limit -1 --log-level warn $EDGE_FLAGS >>"$out/edge.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then return; fi
		sleep 0.1
	done
	echo "edge did not start; see $out/edge.log" >&2
	exit 1
}
stop_edge() {
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
trap stop_edge EXIT

echo "# $(date -u +%FT%TZ) edge=$EDGE servers=$SERVERS runs=$RUNS duration=$DURATION flags=$EDGE_FLAGS"
for run in $(seq "$RUNS"); do
	has idle || break
	start_edge
	"$BENCH" -scenario idle -server "$SERVERS" -conns "$IDLE_CONNS" -pid "$pid" | sed "s/^/run=$run /"
	stop_edge
done
has fanout || has rpc || exit 0
start_edge
for shape in 1000:100 5000:40 100:500 1000:20; do
	has fanout || break
	"$BENCH" -scenario fanout -server "$SERVERS" -subs "${shape%%:*}" -rate "${shape##*:}" \
		-duration "$DURATION" -runs "$RUNS" -pid "$pid"
done
has rpc || exit 0
"$BENCH" -scenario rpc -rate 1000 -conns 20 -duration "$DURATION" -runs "$RUNS" -pid "$pid"
