// Package failbench is `make bench-failover`: RFSIS's failover against the
// way users get failover today, keepalived (VRRPv3) moving a virtual IP
// between two kernel-TCP servers, on the same client workload and the same
// faults, and the steady-state cost of RFSIS's replication.
//
// The benchmark itself is TestFailoverBench (skipped unless
// RFSIS_FAILBENCH=1; the Makefile target sets it). For each system and
// each fault of the main (kill -9, its uplink down at the switch,
// SIGSTOP), it runs K trials, each in a fresh topology of internal/netns
// (a switch, a kernel-TCP client, two node namespaces):
//
//   - RFSIS: cmd/echoserver as main and backup (internal/takeover's Pair),
//     heartbeat_timer 0.01 × heartbeat_misses 3, as in the acceptance
//     tests.
//   - keepalived: in each node namespace a kernel-TCP echo server (the
//     test binary re-executed as internal/bench's KernelServer, listening
//     on all addresses) and keepalived 2.2 (VRRPv3, advert_int 0.01, the
//     minimum it accepts) holding the service address on br0; the main
//     has priority 250, the backup 249, so the backup's
//     Master_Down_Interval is 3 × 10 ms + a skew of 0.3 ms, as close to
//     RFSIS's 3 × 10 ms as VRRP allows. The faults hit the main node's
//     echo server and both keepalived processes (its monitor and its VRRP
//     child) together, as they hit RFSIS's one process.
//
// The client workload is package workload's (50 connections echoing a
// 32-byte line every 10 ms plus a 1 MiB/s bulk stream, every byte
// verified). From the fault on, the client also dials a new connection
// every 5 ms until one completes an echo. Per trial it records the
// connections that survived, the bytes the clients wrote and never got
// back, the stall of the survivors (as the acceptance tests measure it),
// the time until the first new connection worked, and when the backup
// logged its takeover. The steady-state part measures 64-byte round trips
// and a bulk echo (internal/bench's MeasureRR and MeasureEcho) against the
// node kernel's TCP, RFSIS unreplicated (a lone main) and RFSIS
// replicated.
//
// The results go to RFSIS_FAILBENCH_OUT (docs/bench from make): the raw
// figures as failover.json, the pictures failover-stall.png and
// failover-timeline.png (gonum.org/v1/plot), and failover.md, the
// Markdown that BENCHMARKS.md quotes. With RFSIS_FAILBENCH_RENDER=file,
// TestRender draws the pictures and the Markdown again from a stored
// JSON file instead, next to it (a relative path is taken from the
// repository's root):
//
//	RFSIS_FAILBENCH_RENDER=docs/bench/failover.json go test -run TestRender ./internal/failbench
//
// Environment knobs (the Makefile sets the first three):
//
//	RFSIS_FAILBENCH=1             run TestFailoverBench (it skips otherwise)
//	RFSIS_FAILBENCH_TRIALS=K      trials per fault and system (default 20;
//	                              make bench-failover TRIALS=K)
//	RFSIS_FAILBENCH_OUT=dir       where the results go (default: a
//	                              temporary directory; only the report is
//	                              printed)
//	RFSIS_FAILBENCH_STEADY=d      time per server per steady-state test,
//	                              a Go duration (default 4s)
//	RFSIS_FAILBENCH_RENDER=file   TestRender's report to draw again
//	RFSIS_FAILBENCH_ECHOSERVER=path  use that cmd/echoserver binary
//	                              instead of building one from the
//	                              working tree
//
// Everything runs inside namespaces the benchmark creates (10.77.N.0/24);
// nothing is sent from the host namespace. Every namespace and process is
// removed at the end of each trial, also when the run fails or is
// interrupted (the first Ctrl-C stops the run and cleans up; a second one
// exits at once, and the processes die with the test binary).
//
// Needs root, iproute2 and keepalived (Debian packages iproute2 and
// keepalived).
package failbench
