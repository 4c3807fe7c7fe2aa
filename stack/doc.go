// Package stack is the user-space network stack on a link.Device (a TAP
// device, or link/pipe in tests): Ethernet, ARP, IPv4, ICMP echo, and TCP
// for applications, with the sans-I/O connections of stack/tcp bound to
// the wire and the clock here. Listener and Conn are a net.Listener and
// net.Conn (ListenTCP, DialTCP). For failover it also carries the
// stack's side of replication (ReplicationHook and Replica on the main,
// AdoptStandby and Standby on the backup; see replication.go), and the
// means to keep an address silent (Hold) or to let it send only under a
// lease the failover layer renews (SetLease).
//
// # Threading
//
// One goroutine reads frames into a single reused buffer and runs the whole
// receive path, up to TCP's handling of the segment. A second drives ARP
// timers. SendGratuitousARP with a count above one sends the repeats from
// a goroutine of its own, which ends after the last, at Close, or when the
// address is given up or held. Each TCP connection's timers (retransmission,
// delayed ACK, keepalive, TIME-WAIT...) run from one time.AfterFunc timer
// re-armed to its next deadline, whose callback takes the connection's
// lock like any other call into it; a Conn's read and write deadlines are
// time.AfterFunc timers too, which only wake the waiting call.
// Applications' Read and Write run on their own goroutines and wait on the
// connection's wake-ups. Sending (sendIPv4) is safe from any goroutine.
// Outbound frames come from a pool, so neither direction allocates per
// packet in steady state.
//
// # Addresses
//
// The stack owns a primary address (Config.Addr) and any added with
// AddAddress: the failover layer adds the service address at takeover,
// announces it with SendGratuitousARP and gives it up with RemoveAddress.
// Packets are sent only from owned addresses, so a node that has given up the
// service address cannot speak for it. ARP requests always come from the
// primary address, so resolving a neighbour never announces a service address
// as a side effect.
//
// # Decisions
//
//   - IPv4 fragments (MF set or a non-zero offset) are dropped and counted,
//     never reassembled. TCP sizes its segments by MSS and path MTU and sets
//     DF, so it never needs them, and reassembly buffers are a well-known
//     attack surface (memory exhaustion, overlapping fragments).
//   - Only unicast datagrams to our own addresses are accepted; broadcast and
//     multicast destinations, and unicast datagrams carried in an Ethernet
//     broadcast (RFC 1122 3.3.6), are dropped. IP options are accepted and
//     ignored. Protocols other than TCP and ICMP are dropped without an ICMP
//     error.
//   - ARP follows RFC 826's merge rule: a mapping is updated by any ARP packet
//     from its address (so a peer's gratuitous ARP after its own failover takes
//     effect at once), and created only by a request for one of our addresses
//     (as in Linux, an unsolicited reply creates nothing). A mapping
//     lives Config.ARP.Lifetime; while still in use near its end it is
//     refreshed with unicast requests, so traffic never stalls on expiry.
//     Unresolved destinations hold a bounded queue of packets (oldest dropped
//     first), sent in order when the reply comes and dropped (counted) after
//     Config.ARP.Retries unanswered requests. The cache is bounded too.
//   - An ARP packet from another MAC claiming one of our addresses is counted
//     as a conflict and logged; the stack does not defend the address (that
//     is the failover layer's call).
//   - The ARP cache (arpTable) does no I/O and reads no clock: the glue passes
//     the time in, so its timing rules are tested with scripted time.
//   - Per-packet drops are logged at Debug only, behind a level check, so a
//     disabled logger costs nothing on the hot path.
package stack
