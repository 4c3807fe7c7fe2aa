package stack

import "sync/atomic"

// Stats is a snapshot of the stack's counters, all monotonic since New.
// Each packet dropped on input is counted once, under the first reason that
// applies.
type Stats struct {
	// Link.
	FramesIn    uint64 // frames read from the device
	FramesOut   uint64 // frames written to the device
	BytesIn     uint64 // bytes read, Ethernet header included
	BytesOut    uint64 // bytes written
	ReadErrors  uint64 // device read errors other than closing
	WriteErrors uint64 // device write errors

	// Ethernet drops.
	DropShortFrame uint64 // shorter than an Ethernet header
	DropOtherMAC   uint64 // addressed to another station or a multicast group
	DropEtherType  uint64 // neither IPv4 nor ARP (IPv6, VLAN-tagged, ...)

	// ARP.
	ARPIn            uint64 // well-formed Ethernet/IPv4 ARP packets received
	ARPMalformed     uint64 // truncated, not Ethernet/IPv4, or a non-unicast sender MAC
	ARPRequestsIn    uint64 // requests received (any target)
	ARPRepliesIn     uint64 // replies received
	ARPRequestsOut   uint64 // requests sent to resolve or refresh a mapping
	ARPRepliesOut    uint64 // replies sent for our addresses
	ARPGratuitousOut uint64 // gratuitous announcements sent
	ARPConflicts     uint64 // ARP packets from another MAC claiming one of our addresses
	ARPResolveFailed uint64 // packets dropped because their next hop never answered
	ARPQueueDrops    uint64 // packets pushed out of a full per-address wait queue
	ARPTableFull     uint64 // packets dropped because the cache had no room for their next hop

	// IPv4.
	IPv4In            uint64 // datagrams accepted for a protocol handler
	IPv4Out           uint64 // datagrams written to the device
	IPv4Malformed     uint64 // bad version, header length or total length
	IPv4BadChecksum   uint64 // header checksum mismatch
	IPv4NotOurs       uint64 // destination is not one of our addresses (incl. broadcast, multicast)
	IPv4LinkBroadcast uint64 // to one of our addresses, but in an Ethernet broadcast
	IPv4BadSource     uint64 // source is not a unicast address of another host
	IPv4Fragments     uint64 // fragments, dropped by design (see the package doc)
	IPv4UnknownProto  uint64 // protocol other than TCP and ICMP
	IPv4NoRoute       uint64 // outbound datagrams with no usable next hop

	// ICMP.
	ICMPIn           uint64 // well-formed ICMP messages received
	ICMPMalformed    uint64 // short or with a bad checksum
	ICMPEchoRequests uint64 // echo requests received
	ICMPEchoReplies  uint64 // echo replies sent (or queued for ARP)
	ICMPOtherIn      uint64 // other ICMP types, ignored

	// TCP hand-off.
	TCPIn        uint64 // segments handed to the transport
	TCPNoHandler uint64 // segments dropped because no transport was set
	HeldDrops    uint64 // datagrams from a held address, dropped (see Stack.Hold)
}

// counters mirrors Stats with atomic fields.
type counters struct {
	FramesIn, FramesOut, BytesIn, BytesOut, ReadErrors, WriteErrors atomic.Uint64

	DropShortFrame, DropOtherMAC, DropEtherType atomic.Uint64

	ARPIn, ARPMalformed, ARPRequestsIn, ARPRepliesIn, ARPRequestsOut, ARPRepliesOut,
	ARPGratuitousOut, ARPConflicts, ARPResolveFailed, ARPQueueDrops, ARPTableFull atomic.Uint64

	IPv4In, IPv4Out, IPv4Malformed, IPv4BadChecksum, IPv4NotOurs, IPv4LinkBroadcast,
	IPv4BadSource, IPv4Fragments, IPv4UnknownProto, IPv4NoRoute atomic.Uint64

	ICMPIn, ICMPMalformed, ICMPEchoRequests, ICMPEchoReplies, ICMPOtherIn atomic.Uint64

	TCPIn, TCPNoHandler, HeldDrops atomic.Uint64
}

// Stats returns a snapshot of the counters. Counters are read one by one, so
// a snapshot taken under traffic is not an instant.
func (s *Stack) Stats() Stats {
	c := &s.stats
	return Stats{
		FramesIn: c.FramesIn.Load(), FramesOut: c.FramesOut.Load(),
		BytesIn: c.BytesIn.Load(), BytesOut: c.BytesOut.Load(),
		ReadErrors: c.ReadErrors.Load(), WriteErrors: c.WriteErrors.Load(),

		DropShortFrame: c.DropShortFrame.Load(), DropOtherMAC: c.DropOtherMAC.Load(),
		DropEtherType: c.DropEtherType.Load(),

		ARPIn: c.ARPIn.Load(), ARPMalformed: c.ARPMalformed.Load(),
		ARPRequestsIn: c.ARPRequestsIn.Load(), ARPRepliesIn: c.ARPRepliesIn.Load(),
		ARPRequestsOut: c.ARPRequestsOut.Load(), ARPRepliesOut: c.ARPRepliesOut.Load(),
		ARPGratuitousOut: c.ARPGratuitousOut.Load(), ARPConflicts: c.ARPConflicts.Load(),
		ARPResolveFailed: c.ARPResolveFailed.Load(), ARPQueueDrops: c.ARPQueueDrops.Load(),
		ARPTableFull: c.ARPTableFull.Load(),

		IPv4In: c.IPv4In.Load(), IPv4Out: c.IPv4Out.Load(),
		IPv4Malformed: c.IPv4Malformed.Load(), IPv4BadChecksum: c.IPv4BadChecksum.Load(),
		IPv4NotOurs: c.IPv4NotOurs.Load(), IPv4LinkBroadcast: c.IPv4LinkBroadcast.Load(),
		IPv4BadSource: c.IPv4BadSource.Load(), IPv4Fragments: c.IPv4Fragments.Load(),
		IPv4UnknownProto: c.IPv4UnknownProto.Load(), IPv4NoRoute: c.IPv4NoRoute.Load(),

		ICMPIn: c.ICMPIn.Load(), ICMPMalformed: c.ICMPMalformed.Load(),
		ICMPEchoRequests: c.ICMPEchoRequests.Load(), ICMPEchoReplies: c.ICMPEchoReplies.Load(),
		ICMPOtherIn: c.ICMPOtherIn.Load(),

		TCPIn: c.TCPIn.Load(), TCPNoHandler: c.TCPNoHandler.Load(), HeldDrops: c.HeldDrops.Load(),
	}
}
