// Package takeover holds the failover acceptance tests: a main and a backup
// running the real cmd/echoserver in their own network namespaces, kernel
// TCP clients in a third, and faults injected mid-stream. Its only code
// outside the _test.go files is the harness of such a pair (Pair: configs,
// start-up, the start-up race, the faults), which the benchmarks share
// (internal/failbench, and internal/bench's BenchmarkReplicated); the
// client traffic is package workload's.
//
// Every test builds a throw-away LAN with internal/netns (a switch, a client
// namespace, node 0 for the main and node 1 for the backup, each with its
// tap0), writes one config.json per node (same service address, main_addr,
// backup_addr and sync_key; only "backup" differs), starts the main, then
// the backup, and waits until the main logs that its backup joined: only
// connections opened after that are protected. Then it runs the workload
// from the client namespace, checks that the pair is still as it started
// (a false failover during the warm-up is reported as such, not mistaken
// for the fault's effect), and injects one fault:
//
//	TestKillMain            kill -9 of the main mid-stream
//	TestMainLinkDown        the main's uplink taken down at the switch
//	TestStopContMain        SIGSTOP of the main, SIGCONT after the takeover:
//	                        the old main must stand down without a trace
//	TestKillBackup          kill -9 of the backup: the main goes on alone
//	TestConnectDuringKill   connections opened while the main dies;
//	                        those dialled after the takeover must work
//	TestKillMainUnderLoss, TestMainLinkDownUnderLoss, TestStopContMainUnderLoss
//	                        the same three faults of the main with 1%
//	                        random frame loss on the switch
//	TestKillStall, TestLinkDownStall, TestStopContStall
//	                        repeated trials of each fault of the main:
//	                        the client-visible stall's distribution
//	TestBackupRestartWhileMainServes
//	                        a crashed backup restarted while the main
//	                        serves: it must rejoin, not take over
//	TestBackupPauseThenKillMain
//	                        the main drops a stalled backup and takes it
//	                        back, then dies: connections it served
//	                        unprotected must end cleanly, not hang
//
// The workload is 50 connections each echoing one 32-byte line every 10 ms
// plus one bulk connection streaming a seeded byte stream (1 MiB/s), every
// byte checked: exactly once, in order, then a clean EOF after the client's
// half-close. Every echo's arrival time is recorded so the client-visible
// stall (the largest gap between consecutive echoes that ends after the
// fault) can be computed per connection. Every client operation has a
// deadline, so a stuck connection fails the test instead of hanging it.
//
// When a test fails, both nodes' complete logs are written to
// $TMPDIR/<test>-{main,backup}.log (the path is logged) and the client
// kernel's TCP counters are logged: the tail netns prints is too short to
// follow a takeover.
//
// A backup that cannot reach the main within one detection window of its
// start takes the service over; on this topology its first frames are
// sometimes lost while the kernel brings its TAP's bridge port up. Where
// that start-up race is not the subject, the pair is restarted and the race
// logged (startPair); TestBackupRestartWhileMainServes is about it.
//
// Only addresses in the topology's 10.77.N.0/24 are used, and only from
// inside its namespaces; nothing is sent from the host namespace. netns's
// t.Cleanup kills every process and deletes every namespace, failed or not.
//
// The tests need root (they skip otherwise) and the Debian packages
// iproute2 (ip, nstat) and nftables (nft, for the three *UnderLoss
// tests); tcpdump only for RFSIS_TAKEOVER_PCAP.
//
// Environment knobs:
//
//	RFSIS_TAKEOVER_TRIALS=20    each of the three *Stall tests runs this
//	                            many trials of its fault (default 2) and,
//	                            from 20 on, asserts the criteria:
//	                            median stall <= 100 ms, no trial over 300 ms
//	RFSIS_TAKEOVER_DEBUG=1      run both nodes with debug_mode true
//	RFSIS_TAKEOVER_LOGDIR=dir   write both nodes' full logs to
//	                            dir/<test>-{main,backup}.log (always, not
//	                            only on failure)
//	RFSIS_TAKEOVER_CRASH=quit   kill the main with SIGQUIT instead of
//	                            SIGKILL: its log ends with every
//	                            goroutine's stack
//	RFSIS_TAKEOVER_PCAP=dir     tcpdump the client's eth0 and both nodes'
//	                            uplinks into dir/<test>-<ns>.pcap
//	RFSIS_TAKEOVER_RACE_SERVER=1  build the echo server with -race too
//	RFSIS_TAKEOVER_ECHOSERVER=path  use this echoserver binary
//
// Run them as make test does, alone and without the race detector (its
// slowdown of the client workload starves the 10 ms heartbeats on two
// cores; the processes under test are not race-built anyway):
//
//	go test -count=1 -p 1 -v ./internal/takeover
package takeover
