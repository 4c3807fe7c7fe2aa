package netns

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"sync"
	"testing"
)

// Host numbers (last octet) in a topology's subnet.
const (
	ServiceHost     = 1   // the service address the main node serves on
	firstNodeHost   = 2   // NodeAddr(i) = .2+i: a node stack's own address
	ClientHost      = 10  // the client's kernel address
	firstKernelHost = 100 // NodeKernelAddr(i) = .100+i: a node kernel's br0 address
	// MaxNodes keeps node addresses (.2-.9) clear of the client (.10).
	MaxNodes = 8
)

// Options shapes a topology. The zero value is a switch and a client.
type Options struct {
	// Nodes is the number of node namespaces (0..MaxNodes); two for a main
	// and a backup.
	Nodes int
	// NodeKernelAddrs puts NodeKernelAddr(i)/24 on each node's br0, so the
	// node's kernel is reachable too (kernel-TCP baselines, bridge checks).
	NodeKernelAddrs bool
	// IPv6 leaves IPv6 enabled in the namespaces. By default it is off, so
	// links carry no router solicitations, MLD or DAD frames.
	IPv6 bool
}

// Topology is a switch, a client and Options.Nodes nodes; see the package
// doc for the picture. Its methods are safe for concurrent use.
type Topology struct {
	own    *owner
	opts   Options
	subnet netip.Prefix
	sw     *NS
	client *NS
	nodes  []*NS

	mu      sync.Mutex
	used    map[byte]bool // host numbers taken
	nftInit bool
}

// New builds a topology, or skips the test when it cannot (not root, no
// `ip`). Any failure while building is fatal to the test. Everything is
// torn down by t.Cleanup: processes started through it are killed, then its
// namespaces (and so all their links) are deleted.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	if opts.Nodes < 0 || opts.Nodes > MaxNodes {
		t.Fatalf("netns: Options.Nodes = %d, want 0..%d", opts.Nodes, MaxNodes)
	}
	own := newOwner(t)
	tp := &Topology{own: own, opts: opts, used: map[byte]bool{0: true, 255: true, ServiceHost: true, ClientHost: true}}
	// The third octet only has to differ between topologies of one process
	// (they are isolated from other processes anyway); mixing in the pid
	// spreads parallel test binaries apart, which helps when reading logs.
	octet := byte(1 + (uint32(os.Getpid())+own.seq)%254)
	tp.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, octet, 0}), 24)
	for i := range opts.Nodes {
		tp.used[byte(firstNodeHost+i)] = true
		tp.used[byte(firstKernelHost+i)] = true
	}
	if err := tp.build(); err != nil {
		t.Fatalf("netns: build topology %s: %v", own.prefix, err)
	}
	t.Logf("netns: topology %s* subnet %s, %d node(s)", own.prefix, tp.subnet, opts.Nodes)
	return tp
}

func (tp *Topology) build() error {
	var err error
	if tp.sw, err = tp.own.add("switch", tp.opts.IPv6); err != nil {
		return err
	}
	// forward_delay 0: ports forward as soon as they are up. mcast_snooping
	// 0: a dumb switch floods multicast instead of learning groups.
	if err := tp.sw.ip(
		"link add "+SwitchBridge+" type bridge forward_delay 0 mcast_snooping 0",
		"link set "+SwitchBridge+" up",
	); err != nil {
		return err
	}
	if tp.client, err = tp.addHost("client", ClientHost); err != nil {
		return err
	}
	for i := range tp.opts.Nodes {
		node, err := tp.addNode(i)
		if err != nil {
			return err
		}
		tp.nodes = append(tp.nodes, node)
	}
	return nil
}

// plug creates a veth pair straight into the switch and ns (never through
// the host namespace) and enslaves the switch end to the switch bridge.
func (tp *Topology) plug(ns *NS, port, link string) error {
	ns.port = port
	return tp.sw.ip(
		fmt.Sprintf("link add %s type veth peer name %s netns %s", port, link, ns.name),
		fmt.Sprintf("link set %s master %s up", port, SwitchBridge),
	)
}

func (tp *Topology) addHost(role string, host byte) (*NS, error) {
	ns, err := tp.own.add(role, tp.opts.IPv6)
	if err != nil {
		return nil, err
	}
	ns.addr = tp.Addr(host)
	if err := tp.plug(ns, fmt.Sprintf("h%d", host), HostLink); err != nil {
		return nil, err
	}
	return ns, ns.ip(
		"link set "+HostLink+" up",
		fmt.Sprintf("addr add %s dev %s", netip.PrefixFrom(ns.addr, 24), HostLink),
	)
}

func (tp *Topology) addNode(i int) (*NS, error) {
	ns, err := tp.own.add(fmt.Sprintf("node%d", i), tp.opts.IPv6)
	if err != nil {
		return nil, err
	}
	if err := tp.plug(ns, fmt.Sprintf("n%d", i), NodeUplink); err != nil {
		return nil, err
	}
	// The TAP is persistent and has no owner process yet, so it has no
	// carrier and its bridge port stays disabled until the stack opens it.
	lines := []string{
		"link add " + NodeBridge + " type bridge forward_delay 0 mcast_snooping 0",
		"tuntap add dev " + NodeTAP + " mode tap",
		"link set " + NodeUplink + " master " + NodeBridge + " up",
		"link set " + NodeTAP + " master " + NodeBridge + " up",
		"link set " + NodeBridge + " up",
	}
	if tp.opts.NodeKernelAddrs {
		ns.addr = tp.NodeKernelAddr(i)
		lines = append(lines, fmt.Sprintf("addr add %s dev %s", netip.PrefixFrom(ns.addr, 24), NodeBridge))
	}
	return ns, ns.ip(lines...)
}

// AddHost adds a plain namespace (a kernel TCP server for a benchmark, a
// second client) plugged into the switch, with address Addr(host)/24 on its
// HostLink. name must be a short word unique in the topology; host must be
// free (not 0, 255, the service, node or client numbers). Failure is fatal
// to the test, so call it from the test goroutine.
func (tp *Topology) AddHost(name string, host byte) *NS {
	t := tp.own.t
	t.Helper()
	tp.mu.Lock()
	if tp.used[host] {
		tp.mu.Unlock()
		t.Fatalf("netns: AddHost(%q, %d): host number taken or reserved", name, host)
	}
	tp.used[host] = true
	tp.mu.Unlock()
	ns, err := tp.addHost(name, host)
	if err != nil {
		t.Fatalf("netns: AddHost(%q, %d): %v", name, host, err)
	}
	return ns
}

// Switch is the switch namespace holding the bridge SwitchBridge.
func (tp *Topology) Switch() *NS { return tp.sw }

// Client is the client namespace; its kernel address is ClientAddr.
func (tp *Topology) Client() *NS { return tp.client }

// Node is node namespace i, holding NodeBridge, NodeUplink and NodeTAP.
func (tp *Topology) Node(i int) *NS { return tp.nodes[i] }

// Nodes is the number of nodes.
func (tp *Topology) Nodes() int { return len(tp.nodes) }

// Prefix is the name prefix of this topology's namespaces.
func (tp *Topology) Prefix() string { return tp.own.prefix }

// Subnet is the topology's /24, 10.77.N.0/24.
func (tp *Topology) Subnet() netip.Prefix { return tp.subnet }

// Addr is host number host in the subnet: Addr(7) is 10.77.N.7.
func (tp *Topology) Addr(host byte) netip.Addr {
	a := tp.subnet.Addr().As4()
	a[3] = host
	return netip.AddrFrom4(a)
}

// ClientAddr is the client kernel's address, 10.77.N.10.
func (tp *Topology) ClientAddr() netip.Addr { return tp.Addr(ClientHost) }

// ServiceAddr is the service address, 10.77.N.1, for the stacks to claim
// (nothing in the kernel has it).
func (tp *Topology) ServiceAddr() netip.Addr { return tp.Addr(ServiceHost) }

// NodeAddr is node i's own stack address, 10.77.N.(2+i) (not configured in
// any kernel; the stack answers for it on tap0).
func (tp *Topology) NodeAddr(i int) netip.Addr { return tp.Addr(byte(firstNodeHost + i)) }

// NodeKernelAddr is the address node i's kernel has on br0,
// 10.77.N.(100+i), when Options.NodeKernelAddrs is set.
func (tp *Topology) NodeKernelAddr(i int) netip.Addr { return tp.Addr(byte(firstKernelHost + i)) }

// nftTable is our bridge-family table in the switch namespace. The bridge
// family's forward hook sees every frame the bridge forwards from one port
// to another (a flooded frame once per output port), with iifname and
// oifname set to the ports; ip/inet-family tables never see bridged frames
// unless br_netfilter is loaded and enabled, so they would not work here.
const nftTable = "bridge rfsis"

func (tp *Topology) ensureNFT() error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.nftInit {
		return nil
	}
	// Two base chains on the same hook: a frame is dropped if either
	// drops it, and each fault can be flushed on its own.
	err := tp.sw.nft(`table ` + nftTable + ` {
	chain partition { type filter hook forward priority -10; policy accept; }
	chain loss { type filter hook forward priority 0; policy accept; }
}
`)
	if err == nil {
		tp.nftInit = true
	}
	return err
}

// SetLoss makes the switch drop each forwarded frame with probability
// percent/100 (resolution 0.1%), independently per frame and per direction:
// a request/response round trip is lost with probability 1-(1-p)². ARP and
// broadcasts are dropped like the rest. SetLoss(0) stops the loss. It needs
// nft (Debian package nftables).
func (tp *Topology) SetLoss(percent float64) error {
	if !(percent >= 0 && percent <= 100) {
		return fmt.Errorf("netns: SetLoss(%v): want 0..100", percent)
	}
	if err := tp.ensureNFT(); err != nil {
		return err
	}
	script := "flush chain " + nftTable + " loss\n"
	switch perMille := int(math.Round(percent * 10)); {
	case perMille >= 1000:
		// nft rejects "numgen random mod 1000 < 1000" as out of range.
		script += "add rule " + nftTable + " loss counter drop\n"
	case perMille > 0:
		script += fmt.Sprintf("add rule %s loss numgen random mod 1000 < %d counter drop\n", nftTable, perMille)
	}
	return tp.sw.nft(script)
}

// ClearLoss is SetLoss(0).
func (tp *Topology) ClearLoss() error { return tp.SetLoss(0) }

// Partition makes the switch drop every frame between a and b (members of
// this topology: the client, nodes, AddHost hosts), both ways, until Heal.
// Both stay connected to everyone else.
func (tp *Topology) Partition(a, b *NS) error {
	if err := tp.checkMember(a); err != nil {
		return err
	}
	if err := tp.checkMember(b); err != nil {
		return err
	}
	if err := tp.ensureNFT(); err != nil {
		return err
	}
	return tp.sw.nft(fmt.Sprintf(
		"add rule %[1]s partition iifname %[2]q oifname %[3]q counter drop\n"+
			"add rule %[1]s partition iifname %[3]q oifname %[2]q counter drop\n",
		nftTable, a.port, b.port))
}

// Heal removes all partitions.
func (tp *Topology) Heal() error {
	if err := tp.ensureNFT(); err != nil {
		return err
	}
	return tp.sw.nft("flush chain " + nftTable + " partition\n")
}

// LinkDown pulls ns's cable at the switch: its port on the switch bridge is
// set down. The member's own namespace is left untouched; its veth (uplink
// or eth0) loses carrier, as with an unplugged cable, and the switch forgets
// the MAC addresses it learnt on that port.
func (tp *Topology) LinkDown(ns *NS) error { return tp.setPort(ns, "down") }

// LinkUp plugs the cable back in (undoes LinkDown).
func (tp *Topology) LinkUp(ns *NS) error { return tp.setPort(ns, "up") }

func (tp *Topology) setPort(ns *NS, state string) error {
	if err := tp.checkMember(ns); err != nil {
		return err
	}
	return tp.sw.ip("link set " + ns.port + " " + state)
}

func (tp *Topology) checkMember(ns *NS) error {
	if ns == nil || ns.own != tp.own || ns.port == "" {
		return fmt.Errorf("netns: %v is not a namespace plugged into this topology's switch", ns)
	}
	return nil
}
