// Package bridgetest checks the repository's bridge.sh, which puts the
// RFSIS TAP device on a host's LAN. It holds tests only.
//
// The tests need root and iproute2. They never touch the machine's real
// interfaces: each builds its own network namespaces with internal/netns
// (a "host" with a veth uplink named eth0, and a "lan" on the other end of
// the veth), uses only addresses in 10.77.0.0/16, and deletes the
// namespaces when done, also after a failure (and a later run removes
// those of a test binary that was killed). The TCP helpers inside them
// are netns processes, which die with the test binary.
package bridgetest
