// Package failover keeps a live copy of every TCP connection of the main
// node on the backup node, and moves the service to the backup when the
// main dies, so that clients see a pause and nothing else.
//
// What works and what does not yet is listed in the README's status
// table.
//
// # Roles and epochs
//
// A node is Main, Backup, or Standalone (a main whose backup is gone: it
// serves, unprotected, and says so in its status). The role changes only
// through the role machine (role.go), a sans-I/O state machine in the
// style of etcd's raft: heartbeats and ticks go in with the time, actions
// come out (send a heartbeat, take over, stand down). Every takeover
// increments an epoch that both nodes persist in memory and carry in every
// message; a node that hears a higher epoch than its own while it believes
// it is the main stands down at once without sending anything to clients
// (no RST, no ARP for the service address). That, and a woken main
// holding all client output until its peer answers (or stays silent for
// two detection windows; role.go, "Pauses"), is what makes a frozen main
// that wakes up (SIGSTOP, then SIGCONT) harmless.
//
// Detection: heartbeats every heartbeat_timer, failover after
// heartbeat_misses intervals without one. Heartbeats travel over the same
// stack and TAP as the service (the node addresses main_addr and
// backup_addr), so a hung stack or a dead link fails over. A crashed main
// takes its user-space stack with it, so nothing resets the sync
// connection: detection is bounded by heartbeat_timer x heartbeat_misses,
// which is why fractional intervals (10 ms) are allowed.
//
// # The sync channel
//
// One TCP connection between the nodes' own addresses, on sync_port,
// carried by the RFSIS stack itself. Every message is a frame (proto.go):
//
//	length   uint32  bytes after this field
//	type     uint8
//	epoch    uint64  sender's epoch
//	seq      uint64  per-direction message counter, starts at 1, +1 each frame
//	body     ...     type-specific, fixed layout, big-endian
//	mac      [16]    GMAC under a key of the session and direction (HELLO:
//	                 HMAC-SHA256 under the shared key), over length..body
//
// A session starts with HELLO from each side carrying a random 16-byte
// nonce; both nonces are bound into every later MAC (proto.go), so frames cannot be
// replayed into another session, and seq must increase by exactly one, so
// they cannot be replayed or reordered within one. Frames over 1 MiB, with
// a bad MAC, a wrong seq, an unknown type or a malformed body are counted
// and logged and the connection is dropped; nothing of them is applied.
// Heartbeats share the connection with replication (the stack has no UDP).
// Without sync_key a pair runs only with insecure: true (an all-zero key).
//
// # Replication (the invariants of DESIGN.md)
//
// The main never lets the client know something the backup does not know.
// Each connection carries a tcp.Gate:
//
//  1. OPEN(conn id, tcp.Snapshot in SYN-RECEIVED) goes to the backup; the
//     SYN-ACK leaves only when the backup has acknowledged it (OpenOK).
//  2. IN(conn id, seq, bytes): in-order inbound bytes, shipped as soon as
//     they are in order; the ACK number on the wire never passes what the
//     backup acknowledged (AckLimit). The backup holds what its standby
//     application has no room for yet and delivers it as that
//     application reads; a copy whose application lags by more than
//     maxHeldIn (64 MiB) is dropped (DROPPED below) rather than held
//     without bound, and the connection goes on unprotected.
//  3. OUT(conn id, seq, bytes): bytes the application wrote; they go on
//     the wire only once the backup holds them (SendLimit). The backup's
//     own hot-standby handler writes are compared with them (divergence is
//     logged and counted) and held.
//     OUTSUM(conn id, seq, length, CRC-32C) stands for an OUT when the
//     backup runs the handler and the run is long (sumMin, 8 KiB; see
//     "Output by checksum" below): the bytes go on the wire only once the
//     backup has answered CHECKED(conn id, end), saying that its own
//     handler wrote those bytes and they matched. This is DESIGN.md's
//     hot-standby form of invariant 3.
//  4. A FIN goes out only once the backup knows the application closed
//     (CloseOK, raised by the acknowledgement of the ACKED that carries
//     FinQueued). CLOSE(conn id, kind) tells the backup a connection
//     ended (GONE), was aborted (RST: the abort's RST waits for this
//     CLOSE's acknowledgement, then leaves although the connection has
//     left the main's table), or is no longer replicated (DROPPED).
//  5. ACKED(conn id, tcp.Progress): the client's progress (snd.una,
//     snd.wnd, ts.recent, rcv.adv) so the backup trims what the client has
//     and knows the window and timestamps to continue with, plus the ends
//     of the received and written bytes and the two FIN flags, so the
//     backup places each FIN after exactly the right byte.
//
// # Acknowledgements
//
// The backup acknowledges log positions cumulatively, and the
// acknowledgement is its TCP's: the main opens a frame's gates when the
// sync connection's SND.UNA passes the frame's end in the stream
// (stack.Conn.OnAcked, called in the stack's input goroutine), and the
// sync connection acknowledges every segment at once (tcp.Config.QuickACK).
// Bytes the backup's stack has acknowledged are in its process's memory,
// in the sync connection's receive buffer; the backup applies them before
// it may take over (RoleMachine.PeerUnapplied: a reader that has not
// caught up defers the takeover). Under the single-failure model that is
// as good as applied, and it takes the backup's process scheduling, its
// reader, its MAC check and its reply off every replicated round trip:
// the backup's answer is the ACK its stack sends on receipt. (An
// application-level SYNCACK, sent after applying, cost about twice the
// added latency; BENCHMARKS.md, "Replication cost". The message type
// remains in the codec and is ignored.)
//
// What this gives up: TCP acknowledgements are not authenticated, so an
// attacker able to forge segments on the nodes' LAN could make the main
// believe the backup holds bytes it does not, and a failover then lose
// them. Such an attacker can already reset or hijack the clients' own
// TCP connections on that LAN; the MAC still keeps forged replication
// and forged takeovers out.
//
// What keeps the channel short and cheap:
//
//   - Frames are encoded and MAC'd by the goroutine that sends them (for
//     replication, the connection's own, from inside the stack's hook),
//     with one intermediate copy of the bytes; the writer goroutine only
//     writes. An acknowledgement raises each connection's gate once,
//     however many of its frames it covers.
//   - A connection's output goes at most outWindow (256 KiB) ahead of what
//     the backup acknowledged; the rest follows the acknowledgements.
//     Without the bound one bulk connection queued megabytes on the
//     channel, ahead of every other connection's updates and the
//     heartbeats. The client's window bounds the inbound side.
//   - ACKED is sent when a FIN flag changes, when the client has
//     acknowledged everything written, or every ackedSlack (64 KiB) of
//     progress, not per acknowledgement; the standby's send buffer is
//     tcp.StandbySendSlack larger than the main's to allow for it.
//
// # Output by checksum
//
// A hot standby writes the main's output itself, so shipping those bytes
// too doubles the sync channel's traffic for an echo-like service (and
// the sync channel's CPU, the pair's bottleneck on a shared machine:
// BENCHMARKS.md, "Replication cost"). For each long run of output the
// main ships a CRC-32C per 64 KiB instead (OUTSUM, computed in place in
// the send buffer); the backup checks its handler's held writes against
// it as they come (stack.Standby.WrittenSum, from its reader or from the
// handler's Write) and answers CHECKED, which opens the gate. So the
// backup holds every byte the client may have, because its own handler
// wrote it and it matched: at takeover it retransmits its own copy.
//
//   - Only once the backup has said it can check: its first CHECKED, sent
//     when it adopts a connection that an application on its side accepts
//     (a copy no application takes gets bytes).
//   - Short runs, the answers of request/response protocols, go as bytes:
//     the backup's TCP acknowledgement releases those in one sync round
//     trip, while a check waits for the backup's handler as well. OUT
//     bytes that follow an unchecked OUTSUM wait for its check as well.
//   - Up to sumWindow (1 MiB) of output may wait for checks.
//   - A mismatch, or a handler that closes without writing the output,
//     is counted as divergence, and the backup drops its copy (it never
//     had the main's bytes): the connection goes on unprotected with the
//     main's output. A handler that never writes it costs the
//     connection its protection: sumStall (1 s) after the backup holds
//     a checksum without checking anything.
//   - CRC-32C detects accidental differences, which is what is at stake
//     (a nondeterministic handler); the channel's MAC keeps forgeries out.
//
// One connection's trouble costs only that connection: a backup that
// cannot apply a message for it (a gap, a full accept queue), or a main
// that cannot ship it, sends CLOSE DROPPED, and the connection goes on
// unprotected (counted in Stats.ConnsDropped). Dropping the session
// instead would look like a dead main to the backup.
//
// Liveness: every frame from the peer counts, and so do bytes the stack
// has received on the sync connection that the reader has not parsed yet,
// and the peer's TCP acknowledgements of new bytes of ours
// (RoleMachine.PeerActivity), so that a node too busy to read does not
// declare a live peer dead, nor a main a backup that is late with its
// heartbeats while it keeps up with a bulk transfer. A starved peer that sends nothing for the
// whole detection window still looks dead: choose heartbeat_timer x
// heartbeat_misses above the machines' scheduling delays.
//
// # Rejoin
//
// A backup that joins while connections are open (after its own crash or
// restart, or after the main declared it lost) gets every open
// connection whose application has checkpointed (stack.Conn.Checkpoint):
// the main's stack offers each (stack.RejoinAll, and again at each later
// checkpoint of one it could not take) and the main ships a REJOIN: the
// connection as it is now, its receive side starting at the checkpoint
// with the input since, the position of the output at the checkpoint, and
// the checkpoint's state. The backup adopts it as a hot standby whose
// handler starts from that state (stack.Conn.Resumed) and whose output
// from the checkpoint on is compared with the main's, as for any standby.
// Until the backup acknowledges the REJOIN the connection is as
// unprotected as it was, so its gate opens at once as far as the
// connection had gone; from then on the gates hold what follows. A
// connection whose application never checkpoints stays unprotected.
//
// # Takeover
//
// The backup adds the service address, sends gratuitous ARPs, and turns
// every standby connection live with SND.NXT at the end of the outbound
// bytes it acknowledged (the main can have sent no more; an ACK above
// SND.NXT would stall the connection) and RCV.NXT at the end of the inbound
// bytes it holds. It retransmits unacknowledged output at once and sends
// five duplicate ACKs so the client's fast retransmit resends what the
// main never acknowledged, instead of waiting out its RTO (Linux treats the
// first duplicate after a window change as a window update, hence five).
package failover
