// Package netns builds throw-away network topologies out of Linux network
// namespaces for integration tests and benchmarks. It is a test helper: every
// constructor takes a testing.TB, skips the test when it cannot run (not root,
// `ip` missing) and registers a t.Cleanup that kills the processes it started
// and deletes every namespace it made, even when the test fails.
//
// # Topology
//
// New builds the LAN of DESIGN.md ("Test topology"): two servers and a client
// on one switch.
//
//	client ns                switch ns                    node ns (one per node)
//	eth0 10.77.N.10/24 ---- h10 ┐                ┌ n0 ---- uplink ┐
//	                            ├ sw0 (bridge) ──┤                 ├ br0 (bridge) [10.77.N.100+i]
//	host ns (AddHost)           │                └ n1 ...  tap0 ──┘  <- the RFSIS stack opens this
//	eth0 10.77.N.H/24 ----- hH ─┘
//
// Each node namespace holds a bridge br0 enslaving its uplink veth and a
// persistent TAP tap0, as bridge.sh does on a real host. The RFSIS stack opens
// tap0 from inside the node namespace (NS.Do) and answers on its own addresses
// (ServiceAddr, NodeAddr), which are never configured on the kernel side. With
// Options.NodeKernelAddrs the node's kernel also gets an address on br0
// (NodeKernelAddr), for kernel-TCP comparison servers.
//
// All addresses are in 10.77.N.0/24 with N unique per topology within the test
// process. Namespaces are fully isolated from each other and from the host, so
// two test processes that happen to pick the same N do not interfere; the
// distinct N only makes captures and logs easy to tell apart.
//
// Namespace names start with "rfsis-<pid>-<counter>-". Interfaces are created
// directly inside their namespaces (never in the host namespace), so their
// names need only be unique per namespace and the host's interfaces are never
// touched. A namespace left behind by a test binary that was killed (say by
// `go test -timeout`, which exits without running cleanups) is removed by the
// next New or NewNS in any process once the pid in its name is dead.
//
// # Running code inside a namespace
//
// NS.Do runs a function on an OS thread that has entered the namespace.
// Sockets and TAP descriptors opened there stay in that namespace after the
// thread leaves it, so a test can hold kernel TCP clients (NS.Dial), servers
// (NS.Listen) and the stack's TAP in several namespaces at once, all from
// the test process. NS.Start runs a program inside the namespace with
// `ip netns exec`, which execs the program, so Process.Pid is the program's
// own pid and kill -9 / SIGSTOP faults hit it and nothing else.
//
// # Faults
//
// Topology.SetLoss drops a random share of the frames the switch forwards
// (nftables `numgen random` in a bridge-family table; there is no netem on the
// kernels we run on). Partition drops frames between two members. LinkDown
// and LinkUp take a member's switch port down and up. Killing and stopping
// node processes is done through Process.
//
// Debian packages needed: iproute2 (ip) always, nftables (nft) for SetLoss
// and Partition.
package netns
