package status

// Report is what a node says about itself: its failover state and the
// counters an operator looks at first. The Source fills every field; this
// package only serves it (as JSON on /status and as Prometheus metrics on
// /metrics), so the meaning of each field is fixed here, for both sides.
//
// Counters are monotonic since the process started (they reset on restart,
// as Prometheus counters may). Durations are float64 seconds, the unit
// Prometheus and most JSON consumers expect, so no field needs a unit
// conversion between the two encodings; they must be finite (JSON has no
// NaN or infinity: /status answers 500 for such a Report).
type Report struct {
	// Role is the node's failover role: "main", "backup", "standalone",
	// "joining" or "stood-down" (failover.Role.String).
	Role string `json:"role"`
	// Epoch is the role machine's epoch: it grows on every takeover, so
	// the node serving in the higher epoch is the rightful server.
	Epoch uint64 `json:"epoch"`
	// Peer is "up" while a sync session with the other node is live,
	// "down" otherwise.
	Peer string `json:"peer"`

	// Connections is the number of TCP connections in the stack's table
	// now (stack.TCPStats.CurrentConnections).
	Connections uint64 `json:"connections"`
	// ProtectedConnections is the number of connections a live backup
	// holds a standby copy of (failover.Node.ProtectedConns); 0 unless
	// the node is the main with a backup.
	ProtectedConnections uint64 `json:"protected_connections"`
	// ReplicationLag is, in seconds, how far the backup's acknowledgement
	// trails what the main has shipped: the age of the oldest replication
	// update the backup has not yet acknowledged, 0 when everything
	// shipped is acknowledged or when there is no backup to ship to. A lag
	// that keeps growing means a takeover now would lose that much.
	ReplicationLag float64 `json:"replication_lag"`

	// Takeovers counts the times this node took over the service.
	Takeovers uint64 `json:"takeovers"`
	// StandDowns counts the times this node stood down because the other
	// node served in a higher epoch (at most 1: the process then exits).
	StandDowns uint64 `json:"stand_downs"`
	// SyncFramesIn, SyncFramesOut and SyncFramesBad count frames on the
	// node-to-node sync channel: received, sent, and received but
	// rejected (malformed or failing authentication), which drops the
	// sync session (failover.Stats FramesIn, FramesOut, BadFrames).
	SyncFramesIn  uint64 `json:"sync_frames_in"`
	SyncFramesOut uint64 `json:"sync_frames_out"`
	SyncFramesBad uint64 `json:"sync_frames_bad"`
	// StandbysAdopted counts the standby copies of connections this node
	// took on, as the backup, from the main's replication
	// (failover.Stats.StandbysAdopted).
	StandbysAdopted uint64 `json:"standbys_adopted"`
	// Diverged counts the times a hot-standby application's output
	// differed from the main's (stack.TCPStats.Diverged).
	Diverged uint64 `json:"diverged"`
	// ConnsDropped counts the connections one node stopped replicating
	// because it could not ship or apply their changes; each went on
	// unprotected (failover.Stats.ConnsDropped).
	ConnsDropped uint64 `json:"conns_dropped"`
	// OutputSummed counts the output bytes the main shipped to the backup
	// as checksums for its hot standby to check, rather than as bytes
	// (failover.Stats.OutputSummed).
	OutputSummed uint64 `json:"output_summed_bytes"`

	// FramesIn and FramesOut count Ethernet frames read from and written
	// to the stack's device (stack.Stats).
	FramesIn  uint64 `json:"frames_in"`
	FramesOut uint64 `json:"frames_out"`
	// Drops counts input packets the stack dropped, all reasons summed
	// (the Drop*, malformed, bad checksum, not-ours... counters of
	// stack.Stats); /status keeps one number, the stack's Stats has the
	// breakdown.
	Drops uint64 `json:"drops"`
	// TCPSegmentsIn and TCPSegmentsOut count TCP segments received and
	// sent (stack.TCPStats).
	TCPSegmentsIn  uint64 `json:"tcp_segments_in"`
	TCPSegmentsOut uint64 `json:"tcp_segments_out"`
	// ResetsSent counts RSTs sent for segments that matched no
	// connection (stack.TCPStats.ResetsSent).
	ResetsSent uint64 `json:"tcp_resets_sent"`
	// SYNBacklogDrops counts SYNs dropped because a listener's SYN
	// backlog was full (stack.TCPStats.SYNBacklogDrops).
	SYNBacklogDrops uint64 `json:"tcp_syn_backlog_drops"`
	// TCPSendErrors counts TCP segments that never reached the device
	// (stack.TCPStats.SendErrors).
	TCPSendErrors uint64 `json:"tcp_send_errors"`

	// Uptime is, in seconds, how long the node has been running.
	Uptime float64 `json:"uptime"`
}

// Source gives the current Report. Snapshot is called once per /status
// request and once per /metrics scrape, possibly from several goroutines at
// once, so it must be safe for concurrent use; it should be cheap and must
// not block for long, since it runs on the request path.
type Source interface {
	Snapshot() Report
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Report

// Snapshot calls f.
func (f SourceFunc) Snapshot() Report { return f() }
