#!/usr/bin/env bash
# The scale model's runs (docs/scale.md): VIRTUAL connections (in-memory,
# not TCP; internal/virtual) held by two edge processes on a 3-node NATS
# cluster with JetStream and the presence bucket R3, everything on
# loopback, started and stopped by this script.
#
#   scripts/scale.sh                                   # every phase, 2 x 50,000 connections
#   EDGE=/tmp/natter-edge PHASES=hold scripts/scale.sh # a prebuilt edge, the hold only
#
# Phases (PHASES, default "calibrate hold kill churn"):
#   calibrate  one single-binary edge, presence on: CAL_CONNS (10,000) virtual
#              connections held CAL_HOLD s, then as many real WebSockets over
#              loopback (cmd/bench -scenario idlecost), each on a fresh edge:
#              RSS per connection both ways, and the kernel's memory per real
#              socket (/proc/net/sockstat, Slab in /proc/meminfo)
#   hold       edge a opens CONNS (50,000), then edge b CONNS more: heap and RSS
#              per own connection, mirror memory per remote connection; then
#              both held HOLD s (60): CPU and RSS of every process, KV writes/s,
#              the edges' NATS traffic, NATS interest (/subsz, /connz), JetStream
#              storage; then SIGTERM and the time the edges take to stop
#   kill       (after the hold, instead of stopping edge-b) SIGKILL edge-b:
#              how long until edge-a removes its keys and presence is quiet,
#              KV writes, CPU, lease lapses; then CONNS connections reconnect
#              to a new edge-b: how long until held and quiet, lapses
#   churn      for each rate in CHURN (per edge, replacements/s: each one a
#              disconnect and a connect), fresh edges holding CHURN_CONNS each
#              (opened one edge after the other, on a fresh NATS cluster)
#              churn together for CHURN_WARM s, then are measured CHURN_FOR s
#              (30): achieved rate, CPU, KV writes/s,
#              presence latency (handshake to the connection's own join in
#              its room's $presence.diff)
#
# Environment: EDGE and BENCH (cmd/edge and cmd/bench binaries; default
# built from this tree), NATS_SERVER (default built from go.mod's
# nats-server), CONNS, USERS (users over both edges, default 0.8 x 2 x
# CONNS), ROOMS (default 2 x CONNS / 100), HOLD, SETTLE (s before a hold,
# 10), CHURN ("50 100 200 400"), CHURN_CONNS (CONNS), CHURN_WARM (s of churn before the window, 20: more than the TTL, after
# which disconnects' purges begin), CHURN_FOR, CAL_CONNS, CAL_HOLD (30),
# PRESENCE_TTL (15s), OUT (directory for logs and results; default a new
# temporary one), WAIT (bound on every wait, 900 s).
#
# Lines of results are key=value, prefixed by their phase, in
# $OUT/results.txt; raw samples and every process's log are in $OUT.
# Time on the shared 2-core machine with the defaults: see docs/scale.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SCALE_COPY:-}" ]; then
	# bash reads a script as it runs it, and this checkout is shared: run
	# from a copy, so that a change to this file meanwhile changes nothing.
	copy=$(mktemp /tmp/natter-scale-sh.XXXXXX)
	cp "$0" "$copy"
	SCALE_COPY=$copy SCALE_ROOT=$(pwd) exec bash "$copy" "$@"
fi
cd "$SCALE_ROOT"
OUT=${OUT:-$(mktemp -d /tmp/natter-scale.XXXXXX)}
mkdir -p "$OUT"
PHASES=${PHASES:-calibrate hold kill churn}
CONNS=${CONNS:-50000}
USERS=${USERS:-$((CONNS * 2 * 4 / 5))}
ROOMS=${ROOMS:-$((CONNS * 2 / 100))}
HOLD=${HOLD:-60}
SETTLE=${SETTLE:-10}
CHURN=${CHURN:-50 100 200 400}
CHURN_CONNS=${CHURN_CONNS:-$CONNS}
CHURN_FOR=${CHURN_FOR:-30}
CHURN_WARM=${CHURN_WARM:-20}
CAL_CONNS=${CAL_CONNS:-10000}
CAL_HOLD=${CAL_HOLD:-30}
PRESENCE_TTL=${PRESENCE_TTL:-15s}
WAIT=${WAIT:-900} # bound on every wait, seconds
has() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }

started=$(date +%s)
note() { echo "# $(date -u +%T) $*" >&2; }
fail() {
	note "FAILED: $*"
	exit 1
}
result() { echo "$*" | tee -a "$OUT/results.txt"; }

# Every process this script starts, stopped at exit: SIGTERM, then SIGKILL
# after 90 s.
pids=()
stop_pids() {
	local p
	unlive "$@"
	for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "$@"; do
		for _ in $(seq 900); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}
cleanup() {
	stop_pids "${pids[@]}"
	rm -rf "$OUT"/n?/js "$OUT"/cal-data # JetStream stores; the logs stay
	rm -f "$SCALE_COPY"
	note "stopped everything after $(($(date +%s) - started)) s; logs and results in $OUT"
}
trap cleanup EXIT

# Binaries.
if [ -z "${EDGE:-}" ]; then
	go build -o "$OUT/natter-edge" ./cmd/edge
	EDGE=$OUT/natter-edge
fi
if [ -z "${NATS_SERVER:-}" ]; then
	go build -o "$OUT/nats-server" github.com/nats-io/nats-server/v2
	NATS_SERVER=$OUT/nats-server
fi
if [ -z "${BENCH:-}" ] && has calibrate; then
	go build -o "$OUT/natter-bench" ./cmd/bench
	BENCH=$OUT/natter-bench
fi

# free_port prints a loopback port nothing listens on, from 20000 up to
# the kernel's ephemeral range, so that no outgoing connection takes it.
used_ports=" "
ephemeral=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range)
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % (ephemeral - 20000)))
		case "$used_ports" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			used_ports="$used_ports$p "
			echo "$p"
			return
		fi
	done
}

# wait_for WHAT CMD...: runs CMD every 0.5 s until it succeeds, for WAIT
# s, and fails if a process in $live ("pid:name ...") dies meanwhile.
live=""
wait_for() {
	local what=$1 pn
	shift
	local deadline=$(($(date +%s) + WAIT))
	until "$@"; do
		[ "$(date +%s)" -lt "$deadline" ] || fail "no $what within $WAIT s"
		for pn in $live; do kill -0 "${pn%%:*}" 2>/dev/null || fail "${pn#*:} died (pid ${pn%%:*}); see $OUT"; done
		sleep 0.5
	done
}
unlive() { # unlive PID...: processes this script stops on purpose
	local p
	for p in "$@"; do live=$(tr ' ' '\n' <<<"$live" | grep -v "^$p:" | tr '\n' ' '); done
}
in_log() { grep -q -- "$2" "$1"; }

# /proc readings: CPU ticks (utime+stime, 100 Hz) and VmRSS in KiB.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# metric ADMIN NAME [LABELS]: a sample of the edge's /metrics (0 if none).
metric() {
	curl -sf -m 60 "http://$1/metrics" | awk -v m="$2" -v l="${3:-}" 'BEGIN {n = l == "" ? m : m "{" l "}"} $1 == n {v = $2} END {printf "%.0f\n", v + 0}'
}
# hist ADMIN NAME: "<sum> <count>" of a histogram, then its buckets "le count".
hist() { curl -sf -m 60 "http://$1/metrics" | awk -v n="$2" '$1 == n"_sum" || $1 == n"_count" {printf "%s ", $2} END {print ""}'; }
buckets() { curl -sf -m 60 "http://$1/metrics" | awk -v n="$2_bucket" 'index($1, n"{le=") == 1 {split($1, a, "\""); print a[2], $2}'; }
# heap ADMIN: HeapAlloc in bytes right after a GC (pprof's heap with gc=1).
heap() { curl -sf -m 60 "http://$1/debug/pprof/heap?debug=1&gc=1" | awk '/^# HeapAlloc = /{print $4}'; }

# NATS monitoring. streams MON: "<stream> <last_seq> <bytes> <msgs>" per stream.
streams() {
	curl -sf -m 60 "http://$1/jsz?accounts=true&streams=true" |
		jq -r '[.account_details[]?.stream_detail[]?] | .[] | "\(.name) \(.state.last_seq) \(.state.bytes) \(.state.messages)"'
}
last_seq() { streams "$1" | awk -v s="$2" '$1 == s {print $2}'; }
subsz() { curl -sf -m 60 "http://$1/subsz" | jq .num_subscriptions; }
jsmem() { curl -sf -m 60 "http://$1/jsz" | jq -r '"js_memory_mib=\(.memory / 1048576 | . * 10 | round / 10) js_storage_mib=\(.storage / 1048576 | . * 10 | round / 10)"'; }
# gomem ADMIN: the Go runtime's memory split, from the edge's /metrics.
gomem() {
	curl -sf -m 60 "http://$1/metrics" | awk '
		$1 == "go_memstats_heap_inuse_bytes" {h = $2} $1 == "go_memstats_heap_idle_bytes" {i = $2}
		$1 == "go_memstats_heap_released_bytes" {r = $2} $1 == "go_memstats_stack_inuse_bytes" {s = $2}
		$1 == "go_memstats_next_gc_bytes" {g = $2} $1 == "go_goroutines" {n = $2}
		END {printf "heap_inuse_mib=%.1f heap_idle_unreleased_mib=%.1f stack_inuse_mib=%.1f next_gc_mib=%.1f goroutines=%d", h / 1048576, (i - r) / 1048576, s / 1048576, g / 1048576, n}'
}
# interest MON: per edge client of the node, its subscriptions in all and
# by their first three subject tokens.
interest() {
	curl -sf -m 60 "http://$1/connz?auth=true&subs=1&limit=1024" | jq -r '.connections[] | select(.authorized_user | startswith("edge-")) |
		"client=\(.authorized_user) subscriptions=\(.subscriptions) " +
		((.subscriptions_list // []) | map(split(".")[0:3] | join(".")) | group_by(.) | map("subs_\(.[0])=\(length)") | join(" "))'
}

# quiet MON [SECONDS]: waits until the presence bucket and the event
# stream take no write for 3 s: every mirror has applied every change.
# Without SECONDS it fails after WAIT; with it, it returns 1 after SECONDS.
quiet() {
	local prev="" cur n=0
	local deadline=$(($(date +%s) + ${2:-$WAIT}))
	while [ $n -lt 3 ]; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			[ -n "${2:-}" ] && return 1
			fail "presence still writing after $WAIT s"
		fi
		cur="$(last_seq "$1" KV_natter_presence) $(last_seq "$1" natter_events)"
		if [ "$cur" = "$prev" ]; then n=$((n + 1)); else n=0; fi
		prev=$cur
		sleep 1
	done
}

pct() { awk -v t="$1" -v s="$2" 'BEGIN {printf "%.1f", t / s}'; } # ticks over s seconds: percent of one core
div() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN {if (b == 0) print "-"; else printf "%.*f", d, a / b}'; }

note "out=$OUT edge=$EDGE phases=[$PHASES] conns=$CONNS x2 users=$USERS rooms=$ROOMS hold=${HOLD}s churn=[$CHURN]/s/edge for ${CHURN_FOR}s"
note "commit $(git rev-parse --short HEAD) $(git status --porcelain --untracked-files=no | wc -l) files modified in the tree; load average $(cut -d' ' -f1-3 /proc/loadavg)"
result "run commit=$(git rev-parse --short HEAD) edge=$EDGE conns_per_edge=$CONNS users=$USERS rooms=$ROOMS hold_s=$HOLD presence_ttl=$PRESENCE_TTL nproc=$(nproc) mem_gib=$(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo) nofile=$(ulimit -n)"

# ---------------------------------------------------------------- calibrate
if has calibrate; then
	note "calibrate: $CAL_CONNS virtual connections on a single-binary edge, then $CAL_CONNS real ones"
	cal_edge() { # cal_edge NAME FLAG...: a fresh single-binary edge; sets cpid, cnats, cadmin
		rm -rf "$OUT/cal-data"
		cnats=$(free_port)
		cadmin=127.0.0.1:$(free_port)
		"$EDGE" --listen 127.0.0.1:0 --nats-listen "127.0.0.1:$cnats" --data-dir "$OUT/cal-data" --admin-listen "$cadmin" --pprof \
			--handshake-rate 0 --rate-limit -1 --shutdown-timeout 60s "${@:2}" >"$OUT/cal-$1.log" 2>&1 &
		cpid=$!
		pids+=("$cpid")
		live="$live $cpid:calibration-edge-$1"
		wait_for "calibration edge $1" in_log "$OUT/cal-$1.log" 'msg="edge listening"'
	}
	# Virtual: RSS before opening (the edge waits 5 s), after the joins and
	# SETTLE, and after the hold. One room, no presence diffs: as idlecost.
	cal_edge virtual --virtual-conns "$CAL_CONNS" --virtual-rooms 1 --virtual-presence-diffs=false --virtual-delay 5s
	sleep 1
	r0=$(rss "$cpid")
	wait_for "virtual connections held" in_log "$OUT/cal-virtual.log" 'msg="edge holds'
	sleep "$SETTLE"
	r1=$(rss "$cpid") t0=$(ticks "$cpid")
	sleep "$CAL_HOLD"
	r2=$(rss "$cpid") t1=$(ticks "$cpid")
	held=$(metric "$cadmin" natter_virtual_connections)
	closed=$(metric "$cadmin" natter_virtual_closed_by_edge_total)
	stop_pids "$cpid"
	result "calibrate kind=virtual conns=$held closed=$closed rss_base_mib=$(div "$r0" 1024 1) rss_per_conn_joined_kib=$(div $((r1 - r0)) "$held" 2)" \
		"rss_per_conn_kib=$(div $((r2 - r0)) "$held" 2) edge_cpu_pct=$(pct $((t1 - t0)) "$CAL_HOLD")"

	# Real sockets, both ends on this machine: the kernel's share is read
	# from sockstat and Slab before dialling and in the middle of the hold.
	cal_edge real
	sock() { awk '$1 == "TCP:" {print $3, $11}' /proc/net/sockstat; } # inuse, mem pages
	slab() { awk '$1 == "Slab:" {print $2}' /proc/meminfo; }
	read -r s0 m0 <<<"$(sock)"
	k0=$(slab)
	"$BENCH" -scenario idlecost -conns "$CAL_CONNS" -hold "${CAL_HOLD}s" -pid "$cpid" -nats "nats://127.0.0.1:$cnats" \
		-url "ws://$(grep 'msg="edge listening"' "$OUT/cal-real.log" | grep -o 'addr=[^ ]*' | cut -d= -f2)/ws" >"$OUT/cal-bench.txt" 2>"$OUT/cal-bench.log" &
	bpid=$!
	pids+=("$bpid")
	joined() {
		kill -0 "$bpid" 2>/dev/null || fail "idlecost ended early: $(cat "$OUT/cal-bench.log")"
		[ "$(metric "$cadmin" natter_edge_connections)" -ge "$CAL_CONNS" ]
	}
	wait_for "idlecost's connections" joined
	sleep $((SETTLE + CAL_HOLD / 2))
	read -r s1 m1 <<<"$(sock)"
	k1=$(slab)
	wait "$bpid" || fail "idlecost failed: $(cat "$OUT/cal-bench.log")"
	stop_pids "$cpid"
	line=$(cat "$OUT/cal-bench.txt")
	field() { tr ' ' '\n' <<<"$line" | awk -F= -v k="$1" '$1 == k {print $2}'; }
	sockets=$((s1 - s0))
	result "calibrate kind=real conns=$(field joined) closed=$(field closed) rss_per_conn_joined_kib=$(field rss_per_conn_joined_kib) rss_per_conn_kib=$(field rss_per_conn_kib)" \
		"edge_cpu_pct=$(field server_cpu_pct) tcp_sockets=$sockets sockstat_mem_kib_per_socket=$(div $(((m1 - m0) * 4)) "$sockets" 2)" \
		"slab_kib_per_socket=$(div $((k1 - k0)) "$sockets" 2)"
fi

# ---------------------------------------------------------------- the NATS cluster
declare -A mon
npids=()
urls=""
start_nats() {
	local routes="" i name
	local -a cports hports rports
	urls=""
	for i in 1 2 3; do
		cports[i]=$(free_port) hports[i]=$(free_port) rports[i]=$(free_port)
		routes="$routes\"nats-route://127.0.0.1:${rports[i]}\", "
	done
	for i in 1 2 3; do
		name=n$i
		mkdir -p "$OUT/$name"
		cat >"$OUT/$name/$name.conf" <<-EOF
			server_name: "$name"
			listen: "127.0.0.1:${cports[i]}"
			http: "127.0.0.1:${hports[i]}"
			jetstream {
			  store_dir: "$OUT/$name/js"
			  max_memory_store: 1GB
			  max_file_store: 20GB
			}
			cluster {
			  name: "natter-scale"
			  listen: "127.0.0.1:${rports[i]}"
			  routes: [${routes%, }]
			}
			authorization {
			  users: [{user: "svc", password: "pw-svc"}, {user: "edge-a", password: "pw-edge-a"}, {user: "edge-b", password: "pw-edge-b"}]
			}
			no_auth_user: "svc"
		EOF
		"$NATS_SERVER" -c "$OUT/$name/$name.conf" >"$OUT/$name/log" 2>&1 &
		npids[i]=$!
		pids+=("${npids[i]}")
		live="$live ${npids[i]}:$name"
		mon[$name]=127.0.0.1:${hports[i]}
		urls="$urls,nats://127.0.0.1:${cports[i]}"
	done
	urls=${urls#,}
	meta() { curl -sf -m 60 "http://$1/jsz" | jq -e '.meta_cluster.leader != null and .meta_cluster.cluster_size == 3' >/dev/null; }
	for i in 1 2 3; do wait_for "n$i with a JetStream meta leader" meta "${mon[n$i]}"; done
	note "NATS cluster: $urls"
}
# restart_nats: a fresh cluster (new stores): what an earlier phase left
# in the bucket (delete markers waiting for their purge, which the first
# edge to start would purge in one burst) stays out of the next phase.
restart_nats() {
	stop_pids "${npids[@]}"
	rm -rf "$OUT"/n?/js
	start_nats
	M=${mon[n1]}
}
if has hold || has churn; then start_nats; fi
M=${mon[n1]:-}
nats_used=""

# ---------------------------------------------------------------- edges
declare -A epid eadmin
# start_edge NAME FIRST FLAG...: edge-NAME holding virtual connections from
# FIRST on; its admin address in eadmin[NAME].
start_edge() {
	local name=$1 first=$2
	shift 2
	eadmin[$name]=127.0.0.1:$(free_port)
	"$EDGE" --nats "$urls" --nats-user "edge-$name" --nats-password "pw-edge-$name" --edge-id "edge-$name" \
		--listen 127.0.0.1:0 --insecure-dev-users --presence-replicas 3 --presence-ttl "$PRESENCE_TTL" \
		--admin-listen "${eadmin[$name]}" --pprof --shutdown-timeout 120s \
		--virtual-users "$USERS" --virtual-rooms "$ROOMS" --virtual-first "$first" "$@" >>"$OUT/edge-$name.log" 2>&1 &
	epid[$name]=$!
	pids+=("${epid[$name]}")
	live="$live ${epid[$name]}:edge-$name"
	wait_for "edge-$name serving" in_log "$OUT/edge-$name.log" 'msg="edge listening"'
}
held_line() { grep 'msg="edge holds' "$OUT/edge-$1.log" | tail -1; }
kv() { grep -o "$2=[^ ]*" <<<"$1" | head -1 | cut -d= -f2; }
# out_rate NAME: the edge's NATS messages out per second over 5 s, now:
# writes JetStream refuses (a purge expecting a revision that moved on)
# do not show in a stream's last sequence, but show here.
out_rate() {
	local m0 m1
	m0=$(metric "${eadmin[$1]}" natter_nats_messages_total 'direction="out"')
	sleep 5
	m1=$(metric "${eadmin[$1]}" natter_nats_messages_total 'direction="out"')
	echo "edge_$1_nats_msgs_out_per_s_then=$(div $((m1 - m0)) 5 0)"
}

# stop_edges NAME...: SIGTERM; stopped lists the seconds until each exited.
stop_edges() {
	local n t0
	stopped=""
	t0=$(date +%s.%N)
	for n in "$@"; do
		unlive "${epid[$n]}"
		kill -TERM "${epid[$n]}"
	done
	for n in "$@"; do
		wait_for "edge-$n to stop" bash -c "! kill -0 ${epid[$n]} 2>/dev/null"
		wait "${epid[$n]}" 2>/dev/null || note "edge-$n exited with $?: see $OUT/edge-$n.log"
		stopped="$stopped$n=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') "
	done
}
# snap PREFIX: every reading of the hold or churn window, as shell variables.
snap() {
	local p=$1 n s
	for n in a b; do
		eval "${p}_${n}_ticks=$(ticks "${epid[$n]}") ${p}_${n}_rss=$(rss "${epid[$n]}")"
		for s in messages bytes; do
			eval "${p}_${n}_${s}_in=$(metric "${eadmin[$n]}" natter_nats_${s}_total 'direction="in"')"
			eval "${p}_${n}_${s}_out=$(metric "${eadmin[$n]}" natter_nats_${s}_total 'direction="out"')"
		done
		eval "${p}_${n}_opened=$(metric "${eadmin[$n]}" natter_virtual_opened_total)"
		eval "${p}_${n}_client_closed=$(metric "${eadmin[$n]}" natter_virtual_closed_by_client_total)"
		eval "${p}_${n}_edge_closed=$(metric "${eadmin[$n]}" natter_virtual_closed_by_edge_total)"
		eval "${p}_${n}_pongs=$(metric "${eadmin[$n]}" natter_virtual_pongs_total)"
		eval "${p}_${n}_probes=$(metric "${eadmin[$n]}" natter_virtual_presence_probes_total)"
		read -r "${p}_${n}_psum" "${p}_${n}_pcount" <<<"$(hist "${eadmin[$n]}" natter_virtual_presence_seconds)"
		buckets "${eadmin[$n]}" natter_virtual_presence_seconds >"$OUT/$p-$n-buckets.txt"
		# Presence warnings (sampled: at most one a second). A second
		# publish of an event while the first copy, with the same message
		# id, is still being stored gets 409 "in process" (R3): counted
		# apart, as it loses nothing.
		eval "${p}_${n}_dups=$(grep 'level=WARN msg="presence' "$OUT/edge-$n.log" | grep -c 'err_code=10158' || true)"
		eval "${p}_${n}_warns=$(grep 'level=WARN msg="presence' "$OUT/edge-$n.log" | grep -vc 'err_code=10158' || true)"
		eval "${p}_${n}_drops=$(grep -c 'presence: event queue full, dropped' "$OUT/edge-$n.log" || true)"
		eval "${p}_${n}_lapses=$(grep -c "this edge's lease had lapsed" "$OUT/edge-$n.log" || true)"
	done
	for n in 1 2 3; do eval "${p}_n${n}_ticks=$(ticks "${npids[n]}") ${p}_n${n}_rss=$(rss "${npids[n]}")"; done
	streams "$M" >"$OUT/$p-streams.txt"
	eval "${p}_kv=$(awk '$1 == "KV_natter_presence" {print $2}' "$OUT/$p-streams.txt")"
	eval "${p}_ev=$(awk '$1 == "natter_events" {print $2}' "$OUT/$p-streams.txt")"
	eval "${p}_at=$(date +%s.%N)"
}
v() { eval "echo \${$1}"; }               # v NAME: the variable's value
d() { echo $(($(v "$2_$1") - $(v "$3_$1"))); } # d FIELD T1 T0: a delta
# window T1 T0 PHASE: the figures of a window, one line per process and one
# for the cluster.
window() {
	local t1=$1 t0=$2 ph=$3 secs n kvw evw
	secs=$(awk -v a="$(v "${t0}_at")" -v b="$(v "${t1}_at")" 'BEGIN {printf "%.2f", b - a}')
	for n in a b; do
		local pc pp p50 p99
		pc=$(awk -v a="$(v "${t1}_${n}_pcount")" -v b="$(v "${t0}_${n}_pcount")" 'BEGIN {print a - b}')
		pp=$(awk -v a="$(v "${t1}_${n}_psum")" -v b="$(v "${t0}_${n}_psum")" -v c="$pc" 'BEGIN {if (c > 0) printf "%.1f", (a - b) / c * 1000; else print "-"}')
		# Quantiles from the bucket deltas: the upper bound of the bucket.
		read -r p50 p99 <<<"$(paste -d' ' "$OUT/$t0-$n-buckets.txt" "$OUT/$t1-$n-buckets.txt" |
			awk -v c="$pc" '{x = $4 - $2; le = ($1 == "+Inf") ? "inf" : $1 * 1000} c > 0 && !a && x >= c * 0.5 {a = le} c > 0 && !b && x >= c * 0.99 {b = le} END {printf "%s %s\n", (a ? a : "-"), (b ? b : "-")}')"
		result "$ph edge=$n secs=$secs cpu_pct=$(pct "$(d ticks "${t1}_$n" "${t0}_$n")" "$secs") rss_mib=$(div "$(v "${t1}_${n}_rss")" 1024 1)" \
			"connects_per_s=$(div "$(d opened "${t1}_$n" "${t0}_$n")" "$secs" 1) disconnects_per_s=$(div "$(d client_closed "${t1}_$n" "${t0}_$n")" "$secs" 1)" \
			"closed_by_edge=$(d edge_closed "${t1}_$n" "${t0}_$n") pongs_per_s=$(div "$(d pongs "${t1}_$n" "${t0}_$n")" "$secs" 1)" \
			"nats_msgs_in_per_s=$(div "$(d messages_in "${t1}_$n" "${t0}_$n")" "$secs" 1) nats_kib_in_per_s=$(div "$(d bytes_in "${t1}_$n" "${t0}_$n")" "$(awk -v s="$secs" 'BEGIN {print s * 1024}')" 1)" \
			"nats_msgs_out_per_s=$(div "$(d messages_out "${t1}_$n" "${t0}_$n")" "$secs" 1) nats_kib_out_per_s=$(div "$(d bytes_out "${t1}_$n" "${t0}_$n")" "$(awk -v s="$secs" 'BEGIN {print s * 1024}')" 1)" \
			"presence_probes=$(d probes "${t1}_$n" "${t0}_$n") presence_seen=$pc presence_mean_ms=$pp presence_p50_ms_le=$p50 presence_p99_ms_le=$p99" \
			"presence_warnings=$(d warns "${t1}_$n" "${t0}_$n") presence_event_dup_in_process_warnings=$(d dups "${t1}_$n" "${t0}_$n")" \
			"event_queue_full_drops_logged=$(d drops "${t1}_$n" "${t0}_$n") lease_lapses=$(d lapses "${t1}_$n" "${t0}_$n")"
	done
	for n in 1 2 3; do
		result "$ph node=n$n secs=$secs cpu_pct=$(pct "$(d ticks "${t1}_n$n" "${t0}_n$n")" "$secs") rss_mib=$(div "$(v "${t1}_n${n}_rss")" 1024 1)" \
			"subscriptions=$(subsz "${mon[n$n]}") $(jsmem "${mon[n$n]}")"
	done
	kvw=$(d kv "$t1" "$t0") evw=$(d ev "$t1" "$t0")
	result "$ph cluster secs=$secs kv_writes=$kvw kv_writes_per_s=$(div "$kvw" "$secs" 1) event_writes=$evw event_writes_per_s=$(div "$evw" "$secs" 1)" \
		"$(awk '{printf "stream_%s_mib=%.1f stream_%s_msgs=%s ", $1, $3 / 1048576, $1, $4}' "$OUT/$t1-streams.txt")"
}

# ---------------------------------------------------------------- hold
if has hold; then
	nats_used=yes
	for n in 1 2 3; do result "base node=n$n rss_mib=$(div "$(rss "${npids[n]}")" 1024 1) subscriptions=$(subsz "${mon[n$n]}") $(jsmem "${mon[n$n]}")"; done
	note "hold: edge-a opens $CONNS virtual connections"
	start_edge a 0 --virtual-conns "$CONNS" --virtual-delay 5s
	sleep 1
	a0_heap=$(heap "${eadmin[a]}") a0_rss=$(rss "${epid[a]}")
	wait_for "edge-a's connections held" in_log "$OUT/edge-a.log" 'msg="edge holds'
	quiet "$M"
	a1_heap=$(heap "${eadmin[a]}") a1_rss=$(rss "${epid[a]}")
	note "hold: edge-b opens $CONNS more"
	start_edge b "$CONNS" --virtual-conns "$CONNS" --virtual-delay 5s
	sleep 1
	b0_heap=$(heap "${eadmin[b]}") b0_rss=$(rss "${epid[b]}")
	wait_for "edge-b's connections held" in_log "$OUT/edge-b.log" 'msg="edge holds'
	quiet "$M"
	a2_heap=$(heap "${eadmin[a]}") a2_rss=$(rss "${epid[a]}")
	b1_heap=$(heap "${eadmin[b]}") b1_rss=$(rss "${epid[b]}")
	for n in a b; do
		l=$(held_line $n)
		result "open edge=$n held=$(kv "$l" held) failed=$(kv "$l" failed) join_refused=$(kv "$l" joinRefused) seconds=$(kv "$l" seconds) per_s=$(kv "$l" perSecond)"
	done
	# Own connections: each edge's growth while it opened them (its mirror
	# of them included). Remote: edge-a's growth while edge-b opened.
	result "memory edge=a own_heap_b_per_conn=$(div $((a1_heap - a0_heap)) "$CONNS" 0) own_rss_kib_per_conn=$(div $((a1_rss - a0_rss)) "$CONNS" 2)" \
		"remote_heap_b_per_conn=$(div $((a2_heap - a1_heap)) "$CONNS" 0) remote_rss_kib_per_conn=$(div $((a2_rss - a1_rss)) "$CONNS" 2)" \
		"heap_mib=$(div "$a2_heap" 1048576 1) base_heap_mib=$(div "$a0_heap" 1048576 1)"
	result "memory edge=b own_heap_b_per_conn=$(div $((b1_heap - b0_heap)) "$CONNS" 0) own_rss_kib_per_conn=$(div $((b1_rss - b0_rss)) "$CONNS" 2)" \
		"heap_mib=$(div "$b1_heap" 1048576 1) base_heap_mib=$(div "$b0_heap" 1048576 1) (its base holds the mirror of edge-a's)"
	note "hold: both edges hold; settle ${SETTLE}s, then ${HOLD}s measured"
	sleep "$SETTLE"
	snap h0
	sleep "$HOLD"
	snap h1
	window h1 h0 hold
	for n in a b; do
		result "hold edge=$n rss_after_mib=$(div "$(rss "${epid[$n]}")" 1024 1) heap_after_gc_mib=$(div "$(heap "${eadmin[$n]}")" 1048576 1) $(gomem "${eadmin[$n]}")" \
			"edge_connections=$(metric "${eadmin[$n]}" natter_edge_connections) virtual_connections=$(metric "${eadmin[$n]}" natter_virtual_connections)"
	done
	for n in 1 2 3; do
		interest "${mon[n$n]}" | while read -r l; do result "interest node=n$n $l"; done
	done
	if has kill; then
		# An edge dies: SIGKILL edge-b. edge-a finds its lease expired and
		# removes its keys; then CONNS connections reconnect, to a new
		# edge-b process (as they would to the edges left).
		note "kill: SIGKILL edge-b"
		lapses() { grep -c "this edge's lease had lapsed" "$OUT/edge-$1.log" || true; }
		drops() { grep -c 'presence: event queue full, dropped' "$OUT/edge-$1.log" || true; }
		k0_kv=$(last_seq "$M" KV_natter_presence) k0_ev=$(last_seq "$M" natter_events) k0_a=$(ticks "${epid[a]}") k0_lapses=$(lapses a) k0_drops=$(drops a)
		for n in 1 2 3; do eval "k0_n$n=$(ticks "${npids[n]}")"; done
		k0_at=$(date +%s.%N)
		unlive "${epid[b]}"
		kill -KILL "${epid[b]}"
		wait "${epid[b]}" 2>/dev/null || true
		mv "$OUT/edge-b.log" "$OUT/edge-b.hold.log"
		wait_for "edge-a removing edge-b's keys" in_log "$OUT/edge-a.log" 'removing another edge.s connection keys: its lease lapsed" edge=edge-b'
		detect=$(awk -v a="$k0_at" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
		settled=yes
		quiet "$M" 300 || settled=no-after-300s
		secs=$(awk -v a="$k0_at" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a - 3}') # quiet waits 3 s without writes
		kvw=$(($(last_seq "$M" KV_natter_presence) - k0_kv)) evw=$(($(last_seq "$M" natter_events) - k0_ev))
		result "kill edge=b removal_began_s=$detect presence_quiet_s=$secs quiet=$settled $(out_rate a) kv_writes=$kvw event_writes=$evw edge_a_cpu_pct=$(pct $(($(ticks "${epid[a]}") - k0_a)) "$secs")" \
			"nodes_cpu_pct=$(pct $(($(ticks "${npids[1]}") + $(ticks "${npids[2]}") + $(ticks "${npids[3]}") - k0_n1 - k0_n2 - k0_n3)) "$secs") edge_a_lease_lapses=$(($(lapses a) - k0_lapses))" \
			"edge_a_event_queue_full_drops=$(($(drops a) - k0_drops))"
		note "kill: $CONNS connections reconnect to a new edge-b"
		k0_kv=$(last_seq "$M" KV_natter_presence) k0_lapses=$(lapses a)
		k0_at=$(date +%s.%N)
		start_edge b "$CONNS" --virtual-conns "$CONNS"
		wait_for "edge-b's connections held" in_log "$OUT/edge-b.log" 'msg="edge holds'
		held_s=$(awk -v a="$k0_at" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
		settled=yes
		quiet "$M" 300 || settled=no-after-300s
		secs=$(awk -v a="$k0_at" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a - 3}')
		l=$(held_line b)
		result "reconnect edge=b held=$(kv "$l" held) open_per_s=$(kv "$l" perSecond) held_s=$held_s presence_quiet_s=$secs quiet=$settled $(out_rate a)" \
			"kv_writes=$(($(last_seq "$M" KV_natter_presence) - k0_kv))" \
			"lease_lapses_a=$(($(lapses a) - k0_lapses)) lease_lapses_b=$(lapses b) write_warnings_b=$(grep -c 'presence: write failed' "$OUT/edge-b.log" || true)"
		mv "$OUT/edge-b.log" "$OUT/edge-b.reconnect.log" # it keeps writing there
	fi
	note "hold: SIGTERM to both edges"
	stop_edges a b
	result "stop ${stopped}seconds"
	mv "$OUT/edge-a.log" "$OUT/edge-a.hold.log"
	if [ -f "$OUT/edge-b.log" ]; then mv "$OUT/edge-b.log" "$OUT/edge-b.hold.log"; fi
	quiet "$M"
fi

# ---------------------------------------------------------------- churn
if has churn; then
	for rate in $CHURN; do
		if [ -n "$nats_used" ]; then restart_nats; fi
		nats_used=yes
		note "churn: fresh edges with $CHURN_CONNS each, replacing $rate per second each"
		# One edge opens at a time, and presence settles after each, as in
		# the hold: opening both at once overloads this machine (see
		# docs/scale.md). Then SIGUSR1 starts both churns at one moment.
		for n in a b; do
			first=0
			[ $n = b ] && first=$CHURN_CONNS
			start_edge $n "$first" --virtual-conns "$CHURN_CONNS" --virtual-churn "$rate" --virtual-churn-on-signal
			wait_for "edge-$n's connections held" in_log "$OUT/edge-$n.log" 'msg="edge holds'
			quiet "$M"
			l=$(held_line $n)
			result "churn rate=$rate open edge=$n held=$(kv "$l" held) failed=$(kv "$l" failed) seconds=$(kv "$l" seconds) per_s=$(kv "$l" perSecond)"
		done
		kill -USR1 "${epid[a]}" "${epid[b]}"
		for n in a b; do wait_for "edge-$n churning" in_log "$OUT/edge-$n.log" 'msg="virtual churn started"'; done
		sleep "$CHURN_WARM"
		snap c0
		sleep "$CHURN_FOR"
		snap c1
		result "churn rate_per_edge=$rate target_connects_plus_disconnects_per_s=$((rate * 4))"
		window c1 c0 "churn rate=$rate"
		stop_edges a b
		result "churn rate=$rate stop ${stopped}seconds"
		mv "$OUT/edge-a.log" "$OUT/edge-a.churn$rate.log"
		mv "$OUT/edge-b.log" "$OUT/edge-b.churn$rate.log"
	done # the next rate gets a fresh cluster: no need to wait for this one
fi
note "done in $(($(date +%s) - started)) s"
result "run seconds=$(($(date +%s) - started))"
