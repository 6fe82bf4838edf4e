// Package bench generates load against a running edge over loopback and
// prints one line of results per scenario and run; cmd/bench is its
// command (its doc gives the edge command line the bench expects). Lines
// are space-separated key=value fields; numbers carry their unit (12.5ms,
// 100/s, 10s) or, without one, a unit in the key (_s seconds, _kib KiB of
// 1024 bytes, _mib MiB, _pct percent of one core). With Runs > 1 every run
// has run=N and a last line has run=median and the median of each numeric
// field (docs quote medians of at least 3 runs).
//
// Server figures come from /proc of the server's process: RSS is VmRSS of
// /proc/<pid>/status, CPU is utime+stime of /proc/<pid>/stat in 100 Hz
// ticks (getconf CLK_TCK), so CPU figures have 10 ms resolution. The edge's
// pid is Config.Pid or found from its listening port. A single-binary edge
// holds the embedded nats-server and the built-in worker too, so its
// figures include theirs. The bench itself shares the machine: bench_cpu_s
// and max_bench_cpu_pct say how much it took.
//
// Connections are spread over loopback source addresses 127.0.0.1..N
// (SourceAddrs), dialled DialConcurrency at a time, each sending
// {"type":"$join","meta":{"correlationId":"j"},"payload":{"room":Room}}
// and waiting for $joined before its dialler moves on. Nothing is retried:
// failures are counted and their kinds written to Log.
//
// Scenario idle: Conns connections join Room. handshakes_per_s is the
// joined connections over the time from the first dial to the last
// $joined. After Settle, rss_per_conn_kib is (VmRSS now - rss_base) /
// joined, where rss_base is the server's VmRSS before its first idle run in
// this Run: a Go heap keeps freed memory for a while, so later runs reuse
// what the first one grew and measuring from their own start would give
// near zero. Start a fresh server for idle figures. server_cpu_s covers the
// dials.
//
// Scenario idlecost: Conns connections join Room as in idle; after Settle
// they are held idle for Hold (nothing is sent but the pongs that answer
// the edge's pings) and the line reports what the hold cost.
// server_cpu_s is the edge process's utime+stime over the hold and
// server_cpu_pct that over the hold's wall time, in percent of one core.
// With NATSPids (external NATS servers, an edge run with --nats),
// nats_cpu_s and nats_cpu_pct are the same summed over those processes and
// nats_cpu_pct_max is the busiest one's; a single-binary edge's figures
// hold its embedded NATS. rss_per_conn_kib is (VmRSS after the hold -
// rss_base) / joined, rss_per_conn_joined_kib the same at the start of
// the hold, rss_base as in idle. js_writes is the number of messages
// JetStream stored during the hold: the sum over all streams of the change
// of State.LastSeq, read with ListStreams over a NATS connection to
// NATSURL (the edge's NATS) just before and just after the CPU window. A
// stream's sequence counts every message stored, removed since or not,
// and the server's own markers; a stream created during the hold counts
// from 0; a replicated stream's message counts once, not once per
// replica. js_writes_<stream> (lower case, bytes other than a-z, 0-9 and _
// as _) breaks it down per stream, for every stream of the account:
// js_writes_kv_natter_presence, js_writes_natter_events, and so on;
// js_streams counts them. Without JetStream js_writes is 0. closed counts
// connections the server ended by the end of the hold.
//
// Scenario fanout: Subs members join Room, then a publisher sends Rate
// messages per second for Warmup+Duration on an absolute schedule (open
// loop: late sends go at once, pub_lag_max says how late). Against natter
// it publishes {"type":"bench.tick","payload":{"t":<unix ns>,"n":<seq>,
// "pad":"x..."}} on NATS subject <prefix>.out.room.<Room> (the edge adds
// meta.room, as for any service's message), t being the time of the
// publish; against the floor, the floor server generates the frame the
// edge would deliver itself, t being the time the tick was due (a floor
// behind schedule is charged for it, as an edge whose NATS input queues
// up is). Members read t
// and n with bytes.Index and no decoding, and count the messages sent in
// the window after the warm-up. delivered counts those received by the
// last expected delivery or 2 s after the last tick was due, whichever
// comes first (also when the publisher is behind); deliveries_per_s is
// delivered over Duration. An overloaded server
// may deliver later: late counts what still arrives while deliveries keep
// coming (each within 1 s of the previous one, for at most 20 s), and lost
// = subs x sent - delivered - late. Latency p50/p99/max = receive time - t
// over delivered and late messages. server_cpu_s spans from the window's
// start to the end of delivered; cpu_s_per_million is server_cpu_s per
// million delivered. closed counts members the server closed (4001: slow
// consumer).
//
// Scenario rpc: Conns connections send request envelopes of Type at a
// steady total Rate (open loop) for Duration after Warmup; p50..max are
// round trips from send to reply. Then a closed loop on the same
// connections keeps Inflight requests in flight on each, the next sent
// from the read loop as soon as a reply arrives; max_rate is the replies
// per second in its Duration window. The edge's --rate-limit (100/s per
// connection by default) caps it: max_errors counts the refusals; run the
// edge with --rate-limit -1 for the maximum.
//
// Trace context: with Traceparent, every fanout message published on
// NATS carries a Traceparent header and every rpc request (both phases) a
// meta.traceparent after its correlationId, each a new random W3C
// context (version 00, sampled flag set), and the lines say
// traceparent=sampled. An edge propagates it, and with tracing on makes
// its spans of it: a delivery span per fanout message (not per member),
// receive, validate and rpc spans per request. Members do not read it.
//
// Wires: the members of idle, idlecost and fanout speak JSON (subprotocol
// natter) or the binary wire (natter.protobuf: they offer it, join with a
// natter.v1.Envelope binary frame, and read ticks from a bench.v1.Tick
// payload with protowire, or from the tick's JSON text when the edge has
// no schema for it). Config.Wires runs each scenario once per wire, like
// Servers; every line says wire=. The bench's schemas are in
// internal/bench/schemas: start the edge with --schemas
// internal/bench/schemas so that bench.tick and bench.dashboard travel as
// protobuf. Wire sse makes the members fallback streams instead (GET
// <path>/sse?room=, joined at open, envelopes read from the data events):
// fanout then gives the fallback's latency, idle the memory of an idle
// fallback session.
//
// Scenario wirebytes: a JSON member and a protobuf member join Room, and
// a third connection (?user=alice, which a dev-mode edge takes as its
// user) joins to send. For each payload kind, Messages messages are sent
// at Rate and each member's bytes read from its socket (a counting
// net.Conn under gws: frame headers and payloads, as the edge wrote them)
// are divided by Messages: <kind>_json_bytes and <kind>_protobuf_bytes,
// <kind>_pct the second in percent of the first. Each member must receive
// exactly Messages frames (so nothing else is counted), or the run fails.
// <kind>_payload_json_bytes is the JSON payload's size as the JSON member
// received it, and <kind>_protobuf_body says what carried the protobuf
// member's payload: payload (protobuf) or json (no schema at the edge).
// The kinds: chat, a 69-character chat.send that the built-in chat worker
// fans out as chat.message; text1k, the same with 1,000 bytes of text;
// tick, the fanout scenario's message; dash1k, about 1 KB of a dashboard
// refresh (three series of float64 samples with full precision) published
// on NATS as bench.dashboard; dash1k_rounded, the same with samples
// rounded to 2 decimals.
//
// The floor (Servers "floor") is the baseline: ServeFloor, a server that
// answers $join and broadcasts with gws's Broadcaster, nothing else. The
// bench starts it as a child process (FloorCommand; cmd/bench runs itself
// with -serve-floor) so that its RSS and CPU are read as the edge's are,
// kills it when Run returns, and the kernel kills it if the bench dies.
// idle and fanout run against it with the same settings and print
// server=floor. For fanout it is told over HTTP what to publish (see
// ServeFloor).
//
// Run is not safe for concurrent use with itself in one process: it
// raises the process's open-file limit and reads process-wide CPU time.
package bench
