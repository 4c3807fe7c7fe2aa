package bridgetest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary doubles as a tiny TCP server and client run inside the
// namespaces, so the connectivity check needs no nc, ping or python.
const helperEnv = "RFSIS_BRIDGETEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helper(h))
	}
	os.Exit(m.Run())
}

// helper runs "listen:ADDR" (print "ready", serve one connection with a
// greeting) or "dial:ADDR" (connect, retrying briefly, and print what the
// server says).
func helper(spec string) int {
	mode, addr, _ := strings.Cut(spec, ":")
	switch mode {
	case "listen":
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_, _ = io.WriteString(c, "hello from the lan\n")
		_ = c.Close()
		return 0
	case "dial":
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
			if err == nil {
				b, _ := io.ReadAll(c)
				fmt.Print(string(b))
				return 0
			}
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", spec)
	return 2
}

var nsSeq atomic.Int64

func requireRootAndIP(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("bridge.sh tests need root (they create network namespaces); run them as root")
	}
	for _, tool := range []string{"ip", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("bridge.sh tests need %q: %v", tool, err)
		}
	}
}

// script is bridge.sh's absolute path (tests run in the package directory).
func script(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../../bridge.sh")
	require.NoError(t, err)
	_, err = os.Stat(p)
	require.NoError(t, err)
	return p
}

// newNetns creates a namespace that is deleted when the test ends.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("rfsis-brtest-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	require.NoError(t, err, "ip netns add %s: %s", name, out)
	t.Cleanup(func() {
		// Deleting the namespace destroys its interfaces (veth pair, TAP,
		// bridge) with it.
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
	ip(t, name, "link", "set", "lo", "up")
	return name
}

// ip runs "ip -n NS args..." and returns its output, failing the test on error.
func ip(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	require.NoError(t, err, "ip -n %s %s: %s", ns, strings.Join(args, " "), out)
	return string(out)
}

// linkExists reports whether dev exists in ns.
func linkExists(ns, dev string) bool {
	return exec.Command("ip", "-n", ns, "link", "show", "dev", dev).Run() == nil
}

// bridgeSh runs bridge.sh inside ns and returns its exit error and output.
func bridgeSh(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "bash", script(t)}, args...)...)
	// Start from a clean environment so a UPLINK/TAP/BRIDGE variable in the
	// caller's shell cannot change what the test exercises.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	t.Logf("bridge.sh %s:\n%s", strings.Join(args, " "), out)
	return string(out), err
}

// lanSetup builds the test topology: ns "host" with uplink eth0
// (10.77.99.2/24 and a secondary 10.77.98.2/24, default route via
// 10.77.99.1, a static route to 10.77.50.0/24) whose veth peer lan0
// (10.77.99.1/24) is in ns "lan".
func lanSetup(t *testing.T) (host, lan string) {
	host = newNetns(t, "host")
	lan = newNetns(t, "lan")
	ip(t, host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
	ip(t, lan, "addr", "add", "10.77.99.1/24", "dev", "lan0")
	ip(t, lan, "link", "set", "lan0", "up")
	ip(t, host, "addr", "add", "10.77.99.2/24", "dev", "eth0")
	ip(t, host, "addr", "add", "10.77.98.2/24", "dev", "eth0")
	ip(t, host, "link", "set", "eth0", "up")
	ip(t, host, "route", "add", "default", "via", "10.77.99.1")
	ip(t, host, "route", "add", "10.77.50.0/24", "via", "10.77.99.1", "metric", "5")
	return host, lan
}

// snapshot is the namespace's links, IPv4 addresses and routes, in a form
// that does not change unless the configuration does.
func snapshot(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(ip(t, ns, "-o", "link", "show"), "\n") {
		// Keep name, configured flags, master and MAC; drop the carrier
		// flags, which follow the peer's state with a delay.
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		var flags []string
		for _, fl := range strings.Split(strings.Trim(f[2], "<>"), ",") {
			if fl != "NO-CARRIER" && fl != "LOWER_UP" && fl != "M-DOWN" {
				flags = append(flags, fl)
			}
		}
		b.WriteString(f[1] + " <" + strings.Join(flags, ",") + ">")
		for i, w := range f {
			if (w == "master" || w == "link/ether") && i+1 < len(f) {
				b.WriteString(" " + w + " " + f[i+1])
			}
		}
		b.WriteString("\n")
	}
	b.WriteString(ip(t, ns, "-4", "-o", "addr", "show"))
	b.WriteString(ip(t, ns, "-4", "route", "show", "table", "main"))
	return b.String()
}

// connect checks that the host namespace reaches the lan namespace over TCP.
func connect(t *testing.T, host, lan string) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)

	srv := exec.Command("ip", "netns", "exec", lan, self)
	srv.Env = append(os.Environ(), helperEnv+"=listen:10.77.99.1:7777")
	stdout, err := srv.StdoutPipe()
	require.NoError(t, err)
	srv.Stderr = os.Stderr
	require.NoError(t, srv.Start())
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)

	cli := exec.Command("ip", "netns", "exec", host, self)
	cli.Env = append(os.Environ(), helperEnv+"=dial:10.77.99.1:7777")
	out, err := cli.CombinedOutput()
	require.NoError(t, err, "no TCP connectivity from host to lan: %s", out)
	require.Equal(t, "hello from the lan\n", string(out))
}

func TestBridgeUpDownIdempotent(t *testing.T) {
	requireRootAndIP(t)
	host, lan := lanSetup(t)
	before := snapshot(t, host)
	connect(t, host, lan)
	eth0MAC := macOf(t, host, "eth0")

	// Up, with the defaults (eth0, tap0, br0 are ours inside the namespace).
	out, err := bridgeSh(t, host)
	require.NoError(t, err, out)
	checkUp(t, host, eth0MAC)
	connect(t, host, lan)
	afterUp := snapshot(t, host)

	// Again, with explicit arguments: nothing changes.
	out, err = bridgeSh(t, host, "-u", "eth0", "-t", "tap0", "-b", "br0")
	require.NoError(t, err, out)
	assert.NotContains(t, out, "created")
	assert.NotContains(t, out, "moved")
	assert.Equal(t, afterUp, snapshot(t, host), "second run changed the configuration")
	connect(t, host, lan)

	// Down restores the original configuration.
	out, err = bridgeSh(t, host, "--down")
	require.NoError(t, err, out)
	assert.False(t, linkExists(host, "br0"), "br0 still exists")
	assert.False(t, linkExists(host, "tap0"), "tap0 still exists")
	assert.Equal(t, before, snapshot(t, host), "--down did not restore the original configuration")
	connect(t, host, lan)

	// And down again is a no-op.
	out, err = bridgeSh(t, host, "--down")
	require.NoError(t, err, out)
	assert.Equal(t, before, snapshot(t, host))
}

func checkUp(t *testing.T, host, eth0MAC string) {
	t.Helper()
	br := ip(t, host, "-d", "-o", "link", "show", "dev", "br0")
	assert.Contains(t, br, "    bridge ", "br0 is not a bridge")
	assert.Contains(t, br, ",UP,", "br0 is not up")
	assert.Equal(t, eth0MAC, macOf(t, host, "br0"), "br0 should carry eth0's MAC")

	tap := ip(t, host, "-d", "-o", "link", "show", "dev", "tap0")
	assert.Contains(t, tap, " tun type tap ", "tap0 is not a TAP")
	assert.Contains(t, tap, " persist on ", "tap0 is not persistent")
	assert.Contains(t, tap, " master br0 ")
	assert.Contains(t, ip(t, host, "-o", "link", "show", "dev", "eth0"), " master br0 ")

	addrs := ip(t, host, "-4", "-o", "addr", "show")
	assert.Contains(t, addrs, "br0    inet 10.77.99.2/24 ")
	assert.Contains(t, addrs, "br0    inet 10.77.98.2/24 ")
	assert.Empty(t, strings.TrimSpace(ip(t, host, "-4", "-o", "addr", "show", "dev", "eth0")), "eth0 kept IPv4 addresses")

	routes := ip(t, host, "-4", "route", "show", "table", "main")
	assert.Contains(t, routes, "default via 10.77.99.1 dev br0")
	assert.Contains(t, routes, "10.77.50.0/24 via 10.77.99.1 dev br0 metric 5")
	assert.NotContains(t, routes, "dev eth0")
}

func macOf(t *testing.T, ns, dev string) string {
	t.Helper()
	f := strings.Fields(ip(t, ns, "-o", "link", "show", "dev", dev))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC for %s", dev)
	return ""
}

func TestBridgeRefusals(t *testing.T) {
	requireRootAndIP(t)
	host, _ := lanSetup(t)
	before := snapshot(t, host)

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-u", "nosuch0"}, "uplink nosuch0 does not exist"},
		{[]string{"-u", "eth0", "-t", "eth0"}, "three different interfaces"},
		{[]string{"-t", "bad/name"}, "invalid TAP name"},
		{[]string{"-b", "sixteen-chars-xx"}, "invalid BRIDGE name"},
		{[]string{"--frobnicate"}, "unknown argument"},
		{[]string{"-u"}, "needs an interface name"},
		{[]string{"-t", "lan0peer", "-u", "lo"}, "loopback"},
	} {
		out, err := bridgeSh(t, host, tc.args...)
		require.Error(t, err, "bridge.sh %v should fail", tc.args)
		assert.Contains(t, out, tc.msg, tc.args)
		assert.Equal(t, before, snapshot(t, host), "a refused run changed something: %v", tc.args)
	}

	// Existing interfaces of the wrong kind are not hijacked.
	ip(t, host, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	before = snapshot(t, host)
	out, err := bridgeSh(t, host, "-t", "other0")
	require.Error(t, err)
	assert.Contains(t, out, "other0 exists and is not a TAP device")
	out, err = bridgeSh(t, host, "-b", "other0")
	require.Error(t, err)
	assert.Contains(t, out, "other0 exists and is not a bridge")
	out, err = bridgeSh(t, host, "-b", "other0", "--down")
	require.Error(t, err)
	assert.Contains(t, out, "other0 exists and is not a bridge")
	out, err = bridgeSh(t, host, "-t", "other0", "--down")
	require.Error(t, err)
	assert.Contains(t, out, "other0 exists and is not a TAP device")
	assert.Equal(t, before, snapshot(t, host))
}

func TestBridgeRefusesNonRoot(t *testing.T) {
	requireRootAndIP(t)
	host, _ := lanSetup(t)
	before := snapshot(t, host)

	// "ip netns exec" needs root to enter the namespace, so privileges are
	// dropped after it, by setpriv, just for bash running the script.
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to run bridge.sh as an unprivileged user")
	}
	cmd := exec.Command("ip", "netns", "exec", host, setpriv,
		"--reuid=65534", "--regid=65534", "--clear-groups", "bash", script(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "must run as root")
	assert.Equal(t, before, snapshot(t, host))
}
