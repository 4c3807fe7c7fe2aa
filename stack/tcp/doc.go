// Package tcp is a sans-I/O TCP (RFC 9293): a connection is a value, and
// everything that happens to it comes in through a method call with the
// current time — an arriving segment (Handle), an application read or
// write (Read, Write, Close), or the passage of time (Tick) — and what it
// wants to send comes out through Output. The package does no I/O, starts
// no goroutine and reads no clock. That is what lets tests script every
// packet and tick, and what lets a connection's whole state be captured as
// a Snapshot, shipped to a backup node and resumed there.
//
// Implemented: the RFC 9293 state machine including simultaneous open and
// close and TIME-WAIT; MSS, window scale, SACK-permitted, SACK and
// timestamp options (RFC 7323, 2018) with PAWS; RTO per RFC 6298 with
// Karn's algorithm and exponential backoff; NewReno fast retransmit and
// recovery (RFC 6582) with SACK-driven hole retransmission (after RFC
// 6675); D-SACK for duplicates (RFC 2883); spurious timeouts detected
// with timestamps and undone (Eifel, RFC 3522); slow start and congestion avoidance with appropriate byte
// counting (RFC 5681, 3465) and a ten-segment initial window (RFC 6928);
// delayed ACKs; Nagle's algorithm; sender and receiver silly-window
// avoidance; zero-window probes; keepalive; the RFC 5961 defences
// against blind RST, SYN and data injection; keyed-hash initial sequence
// numbers (RFC 6528).
//
// Replication support: a Gate holds back what the wire may learn until a
// backup knows it (see DESIGN.md, "Replication: the invariants"). On the
// main, AppendReceived, AppendWritten and Progress read back what is to
// be shipped; on the backup (standby.go), RestoreStandby makes a copy
// that sends nothing, StandbyReceive, StandbyWritten and StandbyProgress
// keep it current, and GoLive turns it live at takeover ("Takeover").
package tcp
