// Package e2e holds end-to-end tests of RFSIS with the Linux kernel as the
// real TCP peer. It has no code of its own; the tests are in the _test.go
// files.
//
// TestMain builds the real cmd/echoserver binary once. Each test builds a
// throw-away LAN with internal/netns (a switch, a client namespace, one node
// namespace holding tap0), writes a config.json for it, starts the echo
// server inside the node namespace (`ip netns exec`, so the test holds the
// server's own pid) and drives kernel TCP clients from the client
// namespace. Only addresses in the topology's 10.77.N.0/24 are used, and only
// from inside its namespaces; nothing is sent from the host namespace.
// Everything is torn down by t.Cleanup, failed or not.
//
// The tests need root (they skip otherwise) and the Debian packages iproute2
// (ip) and nftables (nft, for the loss tests); tcpdump only for RFSIS_E2E_PCAP.
//
// Environment knobs, for diagnosing a failure:
//
//	RFSIS_E2E_DEBUG=1       run the echo server with debug_mode true
//	                        (per-packet drop logs; slow)
//	RFSIS_E2E_RACE_SERVER=1 build the echo server with -race as well
//	RFSIS_E2E_ECHOSERVER=path  use this echoserver binary instead of building
//	                        one (say, built from another checkout)
//	RFSIS_E2E_PCAP=dir      tcpdump the client's eth0 and node0's uplink
//	                        into dir/<test>-{client,node0}.pcap (headers)
//	RFSIS_E2E_SS=1          log the client kernel's `ss -tino` every 5 s
//	                        in the loss and slow-reader tests
//	                        (RFSIS_E2E_SS=500ms: at that interval)
//	RFSIS_E2E_BASELINE=1    run the *KernelBaseline tests: the loss and
//	                        slow-reader workloads against a kernel echo
//	                        server, for comparison
//	RFSIS_E2E_SHORT=1       smaller transfers (same as go test -short)
//
// Run with: go test -race -count=1 -v ./internal/e2e
package e2e
