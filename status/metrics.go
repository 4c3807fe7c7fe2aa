package status

import (
	"github.com/prometheus/client_golang/prometheus"
)

// roles are the values of Report.Role. rfsis_role has one series per role,
// 1 for the current one and 0 for the others, so that a role change is a
// value change rather than a series appearing and another vanishing (which
// PromQL sees as a gap).
var roles = [...]string{"main", "backup", "standalone", "joining", "stood-down"}

// metric is one Report field exposed as a Prometheus metric.
type metric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*Report) float64
}

// collector exposes a Source's Report as metrics. It reads the Report at
// scrape time, so the numbers are those of the scrape's moment and nothing
// is kept between scrapes.
type collector struct {
	src     Source
	role    *prometheus.Desc
	metrics []metric
}

func newCollector(src Source) *collector {
	g := func(name, help string, f func(*Report) float64) metric {
		return metric{prometheus.NewDesc("rfsis_"+name, help, nil, nil), prometheus.GaugeValue, f}
	}
	c := func(name, help string, f func(*Report) float64) metric {
		return metric{prometheus.NewDesc("rfsis_"+name, help, nil, nil), prometheus.CounterValue, f}
	}
	u := func(v uint64) float64 { return float64(v) }
	return &collector{
		src: src,
		role: prometheus.NewDesc("rfsis_role",
			"Failover role of the node: 1 for the current role, 0 for the others.",
			[]string{"role"}, nil),
		metrics: []metric{
			g("epoch", "Failover epoch; it grows on every takeover.",
				func(r *Report) float64 { return u(r.Epoch) }),
			g("peer_up", "1 while a sync session with the other node is live, 0 otherwise.",
				func(r *Report) float64 { return boolValue(r.Peer == "up") }),
			g("connections", "TCP connections in the stack now.",
				func(r *Report) float64 { return u(r.Connections) }),
			g("protected_connections", "TCP connections of which a live backup holds a standby copy.",
				func(r *Report) float64 { return u(r.ProtectedConnections) }),
			g("replication_lag_seconds", "Age of the oldest replication update the backup has not acknowledged; 0 when none.",
				func(r *Report) float64 { return r.ReplicationLag }),
			g("uptime_seconds", "Time since the node started.",
				func(r *Report) float64 { return r.Uptime }),

			c("takeovers_total", "Times this node took over the service.",
				func(r *Report) float64 { return u(r.Takeovers) }),
			c("stand_downs_total", "Times this node stood down because the other node served in a higher epoch.",
				func(r *Report) float64 { return u(r.StandDowns) }),
			c("sync_frames_in_total", "Frames received on the node-to-node sync channel.",
				func(r *Report) float64 { return u(r.SyncFramesIn) }),
			c("sync_frames_out_total", "Frames sent on the node-to-node sync channel.",
				func(r *Report) float64 { return u(r.SyncFramesOut) }),
			c("sync_frames_bad_total", "Sync channel frames rejected as malformed or unauthenticated.",
				func(r *Report) float64 { return u(r.SyncFramesBad) }),
			c("standbys_adopted_total", "Standby connection copies taken on from the main's replication.",
				func(r *Report) float64 { return u(r.StandbysAdopted) }),
			c("diverged_total", "Hot-standby application writes that differed from the main's output.",
				func(r *Report) float64 { return u(r.Diverged) }),
			c("conns_dropped_total", "Connections that stopped being replicated (the main could not ship or the backup could not apply their changes) and went on unprotected.",
				func(r *Report) float64 { return u(r.ConnsDropped) }),
			c("output_summed_bytes_total", "Output bytes the main shipped to the backup as checksums for its hot standby to check, rather than as bytes.",
				func(r *Report) float64 { return u(r.OutputSummed) }),

			c("frames_in_total", "Ethernet frames read from the stack's device.",
				func(r *Report) float64 { return u(r.FramesIn) }),
			c("frames_out_total", "Ethernet frames written to the stack's device.",
				func(r *Report) float64 { return u(r.FramesOut) }),
			c("drops_total", "Input packets the stack dropped, all reasons.",
				func(r *Report) float64 { return u(r.Drops) }),
			c("tcp_segments_in_total", "TCP segments received.",
				func(r *Report) float64 { return u(r.TCPSegmentsIn) }),
			c("tcp_segments_out_total", "TCP segments sent.",
				func(r *Report) float64 { return u(r.TCPSegmentsOut) }),
			c("tcp_resets_sent_total", "TCP resets sent for segments that matched no connection.",
				func(r *Report) float64 { return u(r.ResetsSent) }),
			c("tcp_syn_backlog_drops_total", "SYNs dropped because a listener's SYN backlog was full.",
				func(r *Report) float64 { return u(r.SYNBacklogDrops) }),
			c("tcp_send_errors_total", "TCP segments that never reached the device (too big, no route, address gone).",
				func(r *Report) float64 { return u(r.TCPSendErrors) }),
		},
	}
}

// Describe sends every metric's description, so that the registry checks
// names and help texts once, at NewServer, instead of failing scrapes.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.role
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect takes one Report and sends every metric from it, so that one
// scrape's numbers are consistent with each other (as far as the Source's
// snapshot is).
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	r := c.src.Snapshot()
	known := false
	for _, role := range roles {
		known = known || role == r.Role
		ch <- prometheus.MustNewConstMetric(c.role, prometheus.GaugeValue, boolValue(role == r.Role), role)
	}
	if !known {
		// A role this package does not list (a newer failover layer)
		// still shows, rather than every series reading 0.
		ch <- prometheus.MustNewConstMetric(c.role, prometheus.GaugeValue, 1, r.Role)
	}
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(&r))
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
