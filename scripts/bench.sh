#!/usr/bin/env bash
# Runs every cmd/bench scenario against a single-binary edge, as recorded in
# docs/benchmarks.md. Idle and idlecost get a fresh edge per run (Go keeps
# freed memory, so RSS per connection is only meaningful on a new process)
# and a median line from `natter-bench -median`; the other scenarios share
# one edge and use -runs, which prints a median line.
#
#   scripts/bench.sh                       # natter and the gws floor
#   EDGE=/tmp/old-edge SERVERS=natter scripts/bench.sh
#   SCENARIOS=idlecost scripts/bench.sh    # idle cost only, presence on and off
#
# Environment: EDGE (edge binary; default: built from this tree), SERVERS
# (natter,floor), RUNS (3), DURATION (10s), IDLE_CONNS (10000), EDGE_FLAGS
# (extra edge flags, e.g. --presence=false), SCENARIOS (idle idlecost
# fanout rpc), HOLD (idlecost's hold, 60s), PRESENCE (idlecost's edges:
# "true false", each run with --presence=<value> after EDGE_FLAGS).
#
# Time on the shared 2-core machine with the defaults (2026-12-07): idlecost
# 7 min 10 s (6 fresh edges, 10,000 connections held 60 s each), idle,
# fanout and rpc together 7 min 13 s: about 15 minutes, plus the builds.
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
SCENARIOS=${SCENARIOS:-idle idlecost fanout rpc}
HOLD=${HOLD:-60s}
PRESENCE=${PRESENCE:-true false}
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
pid=
# start_edge [flag...]: a fresh single-binary edge with EDGE_FLAGS and then
# the flags given.
start_edge() {
	rm -rf "$out/data"
	# Limits that would refuse the load itself: the per-IP handshake rate
	# and the per-connection message rate (the rpc max-rate phase).
	# shellcheck disable=SC2086
	"$EDGE" --listen 127.0.0.1:8080 --nats-listen 127.0.0.1:4222 --data-dir "$out/data" \
		--handshake-rate 0 --rate-limit -1 --log-level warn $EDGE_FLAGS "$@" >>"$out/edge.log" 2>&1 &
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

# median FILE: the median line of the runs in FILE when RUNS > 1.
median() {
	if [ "$RUNS" -gt 1 ]; then "$BENCH" -median <"$1"; fi
}

echo "# $(date -u +%FT%TZ) edge=$EDGE servers=$SERVERS runs=$RUNS duration=$DURATION hold=$HOLD flags=$EDGE_FLAGS"
if has idle; then
	: >"$out/idle.txt"
	for run in $(seq "$RUNS"); do
		start_edge
		"$BENCH" -scenario idle -server "$SERVERS" -conns "$IDLE_CONNS" -pid "$pid" |
			sed "s/^/run=$run /" | tee -a "$out/idle.txt"
		stop_edge
	done
	median "$out/idle.txt"
fi
if has idlecost; then
	# Presence is the edge's: each run gets a fresh edge with
	# --presence=true or false. The bench reads JetStream on the edge's
	# embedded NATS.
	for presence in $PRESENCE; do
		: >"$out/idlecost.txt"
		for run in $(seq "$RUNS"); do
			start_edge "--presence=$presence"
			"$BENCH" -scenario idlecost -conns "$IDLE_CONNS" -hold "$HOLD" -pid "$pid" \
				-nats nats://127.0.0.1:4222 | sed "s/^/run=$run presence=$presence /" | tee -a "$out/idlecost.txt"
			stop_edge
		done
		median "$out/idlecost.txt"
	done
fi
has fanout || has rpc || exit 0
start_edge
for shape in 1000:100 5000:40 100:500 1000:20; do
	has fanout || break
	"$BENCH" -scenario fanout -server "$SERVERS" -subs "${shape%%:*}" -rate "${shape##*:}" \
		-duration "$DURATION" -runs "$RUNS" -pid "$pid"
done
has rpc || exit 0
"$BENCH" -scenario rpc -rate 1000 -conns 20 -duration "$DURATION" -runs "$RUNS" -pid "$pid"
