package failbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/zppratt/rfsis/internal/netns"
	"github.com/zppratt/rfsis/internal/takeover"
)

// VRRP settings of the keepalived baseline. advert_int 0.01 s is the
// smallest keepalived accepts (VRRPv3 counts in centiseconds; 0.005 is
// rejected as out of range), the same 10 ms as RFSIS's heartbeat. The
// backup declares the master down after 3 × advert_int + skew, with skew
// = (256 − priority) / 256 × advert_int: priority 249 makes it 0.27 ms.
const (
	vrrpAdvert         = "0.01"
	vrrpMainPriority   = 250
	vrrpBackupPriority = 249
	vrrpRouterID       = 51
)

// Log lines of keepalived's VRRP child (with -l, on its console).
const (
	logVRRPMaster = "Entering MASTER STATE"
	logVRRPBackup = "Entering BACKUP STATE"
)

// VRRPDetection describes the keepalived settings for the report.
var VRRPDetection = fmt.Sprintf("keepalived (VRRPv3) advert_int %s s, priorities %d (main) / %d (backup): "+
	"the backup takes over after 3 × 10 ms + 0.27 ms skew without adverts; preemption on (keepalived's default)",
	vrrpAdvert, vrrpMainPriority, vrrpBackupPriority)

// vrrpNode is one node of the baseline: a kernel echo server and
// keepalived, whose monitor process (started here) runs the VRRP work in
// a child process.
type vrrpNode struct {
	ns         *netns.NS
	echo       *netns.Process
	keepalived *netns.Process
	vrrpPID    string // the VRRP child's pid file
	child      proc   // the VRRP child, once known
}

// proc names a process by pid and start time, so that a pid reused by
// someone else is never signalled.
type proc struct {
	pid   int
	start string // field 22 of /proc/<pid>/stat
}

// vrrpPair is the keepalived baseline in a two-node topology with
// NodeKernelAddrs: node 0 is the main, node 1 the backup.
type vrrpPair struct {
	tp    *netns.Topology
	dir   string
	nodes [2]*vrrpNode
}

// vrrpConfig is node i's keepalived.conf. The service address goes on br0,
// where the node's kernel has its own address; the adverts go to the VRRP
// multicast group, which the bridges flood.
func (v *vrrpPair) vrrpConfig(i int) string {
	prio := vrrpMainPriority
	if i == 1 {
		prio = vrrpBackupPriority
	}
	return fmt.Sprintf(`global_defs {
	router_id rfsis-node%d
	vrrp_version 3
}
vrrp_instance service {
	state BACKUP
	interface %s
	virtual_router_id %d
	priority %d
	advert_int %s
	virtual_ipaddress {
		%s/24 dev %s
	}
}
`, i, netns.NodeBridge, vrrpRouterID, prio, vrrpAdvert, v.tp.ServiceAddr(), netns.NodeBridge)
}

// startVRRPPair starts both nodes' echo servers (echo is the command that
// runs one, listening on all addresses, printing ready when it does),
// then keepalived on the main and, once the main is master, on the
// backup. It returns the pair even on error, for its stop.
func startVRRPPair(ctx context.Context, tp *netns.Topology, dir string, echo func() *exec.Cmd, ready string) (*vrrpPair, error) {
	v := &vrrpPair{tp: tp, dir: dir}
	for i := range v.nodes {
		n := &vrrpNode{ns: tp.Node(i), vrrpPID: filepath.Join(dir, fmt.Sprintf("vrrp%d.pid", i))}
		v.nodes[i] = n
		var err error
		if n.echo, err = n.ns.StartCmd(echo()); err != nil {
			return v, err
		}
		if err := n.echo.WaitOutput(ctx, ready); err != nil {
			return v, err
		}
	}
	for i, n := range v.nodes {
		conf := filepath.Join(dir, fmt.Sprintf("keepalived%d.conf", i))
		if err := os.WriteFile(conf, []byte(v.vrrpConfig(i)), 0o644); err != nil {
			return v, fmt.Errorf("keepalived config: %w", err)
		}
		// -n: no daemon, so the process is ours; -l -D -G: detailed log on
		// the console, none to syslog; -P: VRRP only; -R: a dead child is
		// not respawned (the monitor exits), so kill -9 means dead; the
		// pid files are ours, not the system's.
		var err error
		n.keepalived, err = n.ns.Start(context.Background(), "keepalived", "-n", "-l", "-D", "-G", "-P", "-R",
			"-f", conf, "-p", filepath.Join(dir, fmt.Sprintf("keepalived%d.pid", i)), "-r", n.vrrpPID)
		if err != nil {
			return v, err
		}
		want := logVRRPMaster
		if i == 1 {
			want = logVRRPBackup
		}
		if err := n.keepalived.WaitOutput(ctx, want); err != nil {
			return v, err
		}
		if n.child, err = readProc(n.vrrpPID); err != nil {
			return v, err
		}
	}
	return v, nil
}

// readProc identifies the process whose pid is in file.
func readProc(file string) (proc, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return proc{}, fmt.Errorf("VRRP child: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return proc{}, fmt.Errorf("VRRP child: pid file %s: %w", file, err)
	}
	start, err := startTime(pid)
	if err != nil {
		return proc{}, err
	}
	return proc{pid: pid, start: start}, nil
}

// startTime is field 22 of /proc/pid/stat: the process's start time.
func startTime(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	// The command (field 2) may hold spaces; fields resume after ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 20 {
		return "", fmt.Errorf("process %d: unexpected /proc/%d/stat", pid, pid)
	}
	return f[19], nil
}

// inNamespace reports whether process pid is in network namespace ns.
func inNamespace(pid int, ns *netns.NS) bool {
	var p, n syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &p) != nil || syscall.Stat("/run/netns/"+ns.Name(), &n) != nil {
		return false
	}
	return p.Dev == n.Dev && p.Ino == n.Ino
}

// signal sends sig to p if it is still the process it was.
func (p proc) signal(sig syscall.Signal) error {
	if p.pid == 0 {
		return errors.New("no such process")
	}
	if s, err := startTime(p.pid); err != nil || s != p.start {
		return os.ErrProcessDone
	}
	if err := syscall.Kill(p.pid, sig); err != nil {
		return fmt.Errorf("signal %v to %d: %w", sig, p.pid, err)
	}
	return nil
}

// signalNode sends sig to every process of the node: the monitor first
// when stopping or killing (so it cannot react to its child's death),
// last when resuming.
func (n *vrrpNode) signalNode(sig syscall.Signal) error {
	mon := func() error { return n.keepalived.Signal(sig) }
	child := func() error { return n.child.signal(sig) }
	echo := func() error { return n.echo.Signal(sig) }
	order := []func() error{mon, child, echo}
	if sig == syscall.SIGCONT {
		order = []func() error{echo, child, mon}
	}
	if sig == syscall.SIGKILL {
		// Freeze the monitor, then kill: keepalived's monitor would
		// otherwise see its child die and shut down in order, which is
		// not a crash.
		if err := n.keepalived.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
	}
	var errs []error
	for _, f := range order {
		if err := f(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// inject hits the main node with f.
func (v *vrrpPair) inject(f takeover.Fault) error {
	switch f {
	case takeover.Kill:
		return v.nodes[0].signalNode(syscall.SIGKILL)
	case takeover.LinkDown:
		return v.tp.LinkDown(v.tp.Node(0))
	case takeover.Stop:
		return v.nodes[0].signalNode(syscall.SIGSTOP)
	}
	return fmt.Errorf("unknown fault %q", f)
}

// resume wakes a stopped main (SIGCONT).
func (v *vrrpPair) resume() error { return v.nodes[0].signalNode(syscall.SIGCONT) }

// mainHoldsAddress reports whether the main node's br0 has the service
// address.
func (v *vrrpPair) mainHoldsAddress() (bool, error) {
	out, err := v.tp.Node(0).Run("ip", "-4", "-o", "addr", "show", "dev", netns.NodeBridge)
	if err != nil {
		return false, err
	}
	return strings.Contains(out, " "+v.tp.ServiceAddr().String()+"/"), nil
}

// masterLines counts node i's "Entering MASTER STATE" lines.
func (v *vrrpPair) masterLines(i int) int {
	return strings.Count(v.nodes[i].keepalived.Output(), logVRRPMaster)
}

// stop kills the VRRP children (whatever state they are in: a stopped
// child would not die of its monitor's death), then the monitors and the
// echo servers. The topology's cleanup kills the processes it started
// too; this is for the children it does not know of. A child whose pid
// was never read (the pair failed to start before that) is looked up in
// its pid file now, and killed only if that process is in the node's
// namespace: a pid reused elsewhere is left alone.
func (v *vrrpPair) stop() {
	for _, n := range v.nodes {
		if n == nil {
			continue
		}
		if n.child.pid == 0 {
			if c, err := readProc(n.vrrpPID); err == nil && inNamespace(c.pid, n.ns) {
				n.child = c
			}
		}
		n.child.signal(syscall.SIGKILL)
		for _, p := range []*netns.Process{n.keepalived, n.echo} {
			if p != nil {
				p.Kill()
				<-p.Done()
			}
		}
	}
}
