package edge

import (
	"github.com/prometheus/client_golang/prometheus"
)

// statsCollector exports Stats as Prometheus metrics at scrape time, so the
// message path only bumps atomics. No label comes from a user, room or
// subject.
type statsCollector struct{ e *Edge }

var statDescs = []struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(Stats) int64
}{
	{prometheus.NewDesc("natter_edge_connections", "WebSocket connections open now.", nil, nil), prometheus.GaugeValue, func(s Stats) int64 { return s.Connections }},
	{prometheus.NewDesc("natter_edge_connections_accepted_total", "WebSocket connections accepted.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Accepted }},
	{prometheus.NewDesc("natter_edge_read_panics_total", "Connections closed with 1011 after a panic in their read loop (logged with its stack).", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Panics }},
	{prometheus.NewDesc("natter_edge_frames_in_total", "Client frames read.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.FramesIn }},
	{prometheus.NewDesc("natter_edge_frames_out_total", "Frames written to sockets.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.FramesOut }},
	{prometheus.NewDesc("natter_edge_bytes_in_total", "Payload bytes of client frames read.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.BytesIn }},
	{prometheus.NewDesc("natter_edge_bytes_out_total", "Bytes written to sockets, WebSocket frame headers included.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.BytesOut }},
	{prometheus.NewDesc("natter_edge_published_total", "Client messages published to NATS.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Published }},
	{prometheus.NewDesc("natter_edge_rpcs_total", "Client requests forwarded to workers.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.RPCs }},
	{prometheus.NewDesc("natter_edge_outbound_dropped_total", "Envelopes from NATS dropped: malformed or breaking their schema.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.OutboundDropped }},
	{prometheus.NewDesc("natter_edge_inbound_invalid_total", "Client messages rejected by their schema.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.InboundInvalid }},
	{prometheus.NewDesc("natter_edge_rate_limited_total", "Client messages refused by a rate limit.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.RateLimited }},
	{prometheus.NewDesc("natter_edge_slow_consumer_closes_total", "Connections closed with 4001 as slow consumers.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.SlowConsumerCloses }},
	{prometheus.NewDesc("natter_edge_durable_recoveries_total", "Joins of durable rooms from a position answered recovered.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Recoveries }},
	{prometheus.NewDesc("natter_edge_durable_recovery_gaps_total", "Joins of durable rooms from a position answered recovered false (incomplete).", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.RecoveryGaps }},
	{prometheus.NewDesc("natter_edge_durable_recovery_retries_total", "Joins of durable rooms from a position failed UNAVAILABLE: history unreadable, the client retries.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.RecoveryRetries }},
	{prometheus.NewDesc("natter_edge_durable_backfills_total", "Holes in a durable room's live messages filled from the stream.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Backfills }},
	{prometheus.NewDesc("natter_edge_durable_backfill_failures_total", "Attempts to fill a hole that failed (retried).", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.BackfillFails }},
	{prometheus.NewDesc("natter_edge_durable_captured_total", "Core publishes to durable rooms this edge stored in the stream.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.Captured }},
	{prometheus.NewDesc("natter_edge_stream_joins_total", "Joins of response streams answered $stream.joined.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.StreamJoins }},
	{prometheus.NewDesc("natter_edge_streams_ended_total", "Response streams this edge ended UNAVAILABLE or CANCELLED because their producer was gone.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.StreamsEnded }},
	{prometheus.NewDesc("natter_edge_durable_work_stored_total", "Client messages of durable types stored in the work stream, duplicates included.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.WorkStored }},
	{prometheus.NewDesc("natter_edge_durable_work_duplicates_total", "Client messages of durable types recognized as resends by their idempotency key.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.WorkDuplicates }},
	{prometheus.NewDesc("natter_edge_durable_work_refused_total", "Client messages of durable types the work stream did not store.", nil, nil), prometheus.CounterValue, func(s Stats) int64 { return s.WorkRefused }},
}

// refusedDesc counts refused handshakes by reason, one of refusalNames.
var refusedDesc = prometheus.NewDesc("natter_edge_handshakes_refused_total",
	"Handshakes refused, by reason: bad_handshake (400, 405, 426), handshake_rate (429), origin (403), unauthenticated (401), forbidden (403), auth_unavailable (503), connection_limit (429), draining (503).",
	[]string{"reason"}, nil)

// The connections by transport: websocket (natter), websocket_protobuf
// (natter.protobuf), sse (the fallback stream).
var (
	transportOpenDesc = prometheus.NewDesc("natter_edge_transport_connections",
		"Connections open now, by transport: websocket, websocket_protobuf, sse.", []string{"transport"}, nil)
	transportAcceptedDesc = prometheus.NewDesc("natter_edge_transport_connections_accepted_total",
		"Connections accepted, by transport.", []string{"transport"}, nil)
	transportRefusedDesc = prometheus.NewDesc("natter_edge_transport_handshakes_refused_total",
		"Handshakes (fallback: stream requests) refused, by transport; natter_edge_handshakes_refused_total splits them by reason.", []string{"transport"}, nil)
)

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range statDescs {
		ch <- d.desc
	}
	ch <- refusedDesc
	ch <- transportOpenDesc
	ch <- transportAcceptedDesc
	ch <- transportRefusedDesc
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.e.Stats()
	for _, d := range statDescs {
		ch <- prometheus.MustNewConstMetric(d.desc, d.kind, float64(d.value(s)))
	}
	for i, name := range refusalNames {
		ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.CounterValue, float64(c.e.stats.refusedBy[i].Load()), name)
	}
	for i, name := range transportNames {
		t := &c.e.stats.transports[i]
		ch <- prometheus.MustNewConstMetric(transportOpenDesc, prometheus.GaugeValue, float64(t.open.Load()), name)
		ch <- prometheus.MustNewConstMetric(transportAcceptedDesc, prometheus.CounterValue, float64(t.accepted.Load()), name)
		ch <- prometheus.MustNewConstMetric(transportRefusedDesc, prometheus.CounterValue, float64(t.refused.Load()), name)
	}
}

// registerMetrics registers the stats collector and the RPC latency
// histogram.
func (e *Edge) registerMetrics(reg prometheus.Registerer) error {
	e.rpcLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "natter_edge_rpc_duration_seconds",
		Help:    "Client RPCs from forwarding to the reply sent to the client (errors and timeouts included).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	for _, c := range []prometheus.Collector{statsCollector{e}, e.rpcLatency} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
