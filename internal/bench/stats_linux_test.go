//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/zppratt/rfsis/internal/netns"
)

// procCPU is the user+system CPU time of process pid and all its threads
// (fields utime and stime of /proc/<pid>/stat). Time the kernel spends in
// softirq context on the process's packets is not charged to it.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields resume after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * clockTick, nil
}

// procSwitches is the number of context switches (voluntary and not) of all
// threads of process pid so far: each wake-up of a sleeping thread is one.
func procSwitches(pid int) (int64, error) {
	dirs, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, d := range dirs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, d.Name()))
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err == nil {
					n += x
				}
			}
		}
	}
	return n, nil
}

// tcpCounters are the kernel's TCP counters worth watching in a benchmark:
// losses and retransmissions, reordering, duplicates received (DSACKs sent,
// DelayedACKLost: the peer resent data we had already acknowledged),
// segments refused (PAWS: a timestamp older than one seen before), and
// receive-side pressure. RFSIS_BENCH_ALLCOUNTERS=1 records every counter.
var tcpCounters = []string{
	"Tcp:RetransSegs", "Tcp:InErrs", "Tcp:OutRsts",
	"TcpExt:TCPTimeouts", "TcpExt:TCPLossProbes", "TcpExt:TCPSackRecovery",
	"TcpExt:TCPLostRetransmit", "TcpExt:TCPSACKReorder", "TcpExt:TCPTSReorder",
	"TcpExt:TCPDSACKUndo", "TcpExt:TCPSpuriousRtxHostQueues",
	"TcpExt:TCPOFOQueue", "TcpExt:TCPOFODrop", "TcpExt:TCPDSACKRecv",
	"TcpExt:TCPDSACKOldSent", "TcpExt:DelayedACKLost", "TcpExt:PAWSEstab",
	"TcpExt:TCPZeroWindowDrop", "TcpExt:TCPRcvQDrop", "TcpExt:TCPBacklogDrop",
	"TcpExt:PruneCalled", "TcpExt:TCPToZeroWindowAdv", "TcpExt:TCPAbortOnData",
	"TcpExt:ListenDrops",
}

// nsTCPCounters reads tcpCounters in namespace ns (the namespace's kernel
// TCP: the client's, or a node's for the kernel baseline).
func nsTCPCounters(ns *netns.NS) (map[string]int64, error) {
	all := map[string]int64{}
	err := ns.Do(func() error {
		for _, f := range []string{"snmp", "netstat"} {
			// thread-self: Do's thread is in ns; /proc/self/net would be
			// the namespace of the process's main thread.
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return err
			}
			parseNetstat(b, all)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if os.Getenv("RFSIS_BENCH_ALLCOUNTERS") != "" {
		return all, nil
	}
	m := make(map[string]int64, len(tcpCounters))
	for _, k := range tcpCounters {
		m[k] = all[k]
	}
	return m, nil
}

// parseNetstat parses /proc/net/{snmp,netstat}: pairs of lines, names then
// values, each starting with "Proto:".
func parseNetstat(b []byte, into map[string]int64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	var names []string
	var proto string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if names == nil || f[0] != proto {
			proto, names = f[0], f[1:]
			continue
		}
		for i, v := range f[1:] {
			if i < len(names) {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					into[proto+names[i]] = n
				}
			}
		}
		names = nil
	}
}

// linkCounters reads the drop and error counters of every interface in ns,
// keyed "role/ifname:rx_dropped" and so on.
func linkCounters(ns *netns.NS, into map[string]int64) error {
	out, err := ns.Run("ip", "-s", "-j", "link", "show")
	if err != nil {
		return err
	}
	var v []struct {
		Ifname  string                      `json:"ifname"`
		Stats64 map[string]map[string]int64 `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return fmt.Errorf("ip -j link show in %s: %v: %q", ns.Role(), err, out)
	}
	for _, l := range v {
		for dir, s := range l.Stats64 {
			for _, k := range []string{"dropped", "errors", "over_errors", "fifo_errors", "missed"} {
				if n, ok := s[k]; ok {
					into[ns.Role()+"/"+l.Ifname+":"+dir+"_"+k] = n
				}
			}
		}
	}
	return nil
}

// softnetDropped is the machine's count of packets dropped because a CPU's
// input backlog was full (second column of /proc/net/softnet_stat).
func softnetDropped() (int64, error) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 16, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/net/softnet_stat: %q: %w", f[1], err)
		}
		n += v
	}
	return n, nil
}

// snapshot is the state of the counters around one measurement.
type snapshot struct {
	server  time.Duration    // CPU time of the server process
	ctxsw   int64            // context switches of the server's threads
	machine time.Duration    // busy CPU time of the whole machine
	client  map[string]int64 // client namespace TCP counters
	node    map[string]int64 // node namespace TCP counters (kernel baseline)
	links   map[string]int64 // link drop/error counters, all namespaces
}

// takeSnapshot reads the counters. The CPU times are read last before a
// measurement and first after it, so the other reads (which fork `ip`)
// stay outside the measured window.
func takeSnapshot(tp *netns.Topology, serverPid int, after bool) (snapshot, error) {
	var s snapshot
	readCPU := func() error {
		var err error
		if s.server, err = procCPU(serverPid); err != nil {
			return err
		}
		if s.machine, err = MachineCPU(); err != nil {
			return err
		}
		s.ctxsw, err = procSwitches(serverPid)
		return err
	}
	if after {
		if err := readCPU(); err != nil {
			return s, err
		}
	}
	var err error
	if s.client, err = nsTCPCounters(tp.Client()); err != nil {
		return s, err
	}
	if s.node, err = nsTCPCounters(tp.Node(0)); err != nil {
		return s, err
	}
	s.links = map[string]int64{}
	for _, ns := range []*netns.NS{tp.Client(), tp.Switch(), tp.Node(0)} {
		if err := linkCounters(ns, s.links); err != nil {
			return s, err
		}
	}
	if s.links["softnet_dropped"], err = softnetDropped(); err != nil {
		return s, err
	}
	if !after {
		if err := readCPU(); err != nil {
			return s, err
		}
	}
	return s, nil
}

// addDelta adds to sum, under prefix+name, the counters that changed
// between a and b. "Tcp:RetransSegs" is shortened to "RetransSegs"; link
// counters ("node0/tap0:tx_dropped") keep their names.
func addDelta(sum map[string]int64, prefix string, a, b map[string]int64) {
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			name := k
			if i := strings.IndexByte(k, ':'); i >= 0 && !strings.Contains(k, "/") {
				name = k[i+1:]
			}
			sum[prefix+name] += d
		}
	}
}

// formatCounters renders counters sorted by name, "name=+n".
func formatCounters(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s=%+d", k, m[k]))
	}
	return strings.Join(out, " ")
}
