// Package wire owns the byte layouts the stack speaks below TCP: Ethernet II,
// ARP, IPv4 and ICMP echo, plus the Internet checksum. Parsers are views over
// the caller's buffer: they validate and read in place and allocate nothing,
// so the receive path can run per packet without garbage.
//
// Why our own parsers rather than a library such as gVisor's tcpip/header:
// these formats are small and stable, the views here cost nothing per packet
// (see the benchmarks), and they keep the module's dependency graph to a few
// small libraries. Every parser has a fuzz target.
package wire
