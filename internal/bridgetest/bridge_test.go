//go:build linux

package bridgetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zppratt/rfsis/internal/netns"
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

func requireTools(t *testing.T) {
	t.Helper()
	netns.RequireTools(t, "ip", "bash")
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

// newNetns creates a namespace (internal/netns: skipped unless root,
// deleted when the test ends with its interfaces, veth pair, TAP and
// bridge, and removed by a later run if this test binary dies first) and
// turns IPv6 back on in it: bridge.sh is for real hosts, which have it,
// and turns it off on the TAP itself.
func newNetns(t *testing.T) *netns.NS {
	t.Helper()
	ns := netns.NewNS(t)
	require.NoError(t, ns.Do(func() error {
		for _, f := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("0"), 0); err != nil {
				return err
			}
		}
		return nil
	}))
	return ns
}

// ip runs "ip args..." inside ns and returns its output, failing the test
// on error.
func ip(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	out, err := ns.Run(append([]string{"ip"}, args...)...)
	require.NoError(t, err)
	return out
}

// linkExists reports whether dev exists in ns.
func linkExists(ns *netns.NS, dev string) bool {
	_, err := ns.Run("ip", "link", "show", "dev", dev)
	return err == nil
}

// bridgeSh runs bridge.sh inside ns and returns its exit error and output.
func bridgeSh(t *testing.T, ns *netns.NS, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name(), "bash", script(t)}, args...)...)
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
func lanSetup(t *testing.T) (host, lan *netns.NS) {
	requireTools(t)
	host = newNetns(t)
	lan = newNetns(t)
	ip(t, host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan.Name())
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
func snapshot(t *testing.T, ns *netns.NS) string {
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

// connect checks that the host namespace reaches the lan namespace over
// TCP. The helpers are netns processes: killed with the test binary
// (Pdeathsig) and by the test's cleanup.
func connect(t *testing.T, host, lan *netns.NS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := lan.StartCmd(helperCmd("listen:10.77.99.1:7777"))
	require.NoError(t, err)
	defer func() {
		_ = srv.Kill()
		_ = srv.Wait()
	}()
	require.NoError(t, srv.WaitOutput(ctx, "ready\n"))

	cli, err := host.StartCmd(helperCmd("dial:10.77.99.1:7777"))
	require.NoError(t, err)
	select {
	case <-cli.Done():
	case <-ctx.Done():
		t.Fatalf("the client helper did not finish: %v", ctx.Err())
	}
	require.NoError(t, cli.Wait(), "no TCP connectivity from host to lan: %s", cli.Output())
	require.Equal(t, "hello from the lan\n", cli.Output())
}

// helperCmd re-executes the test binary as helper spec.
func helperCmd(spec string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+spec)
	return cmd
}

func TestBridgeUpDownIdempotent(t *testing.T) {
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

func checkUp(t *testing.T, host *netns.NS, eth0MAC string) {
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

func macOf(t *testing.T, ns *netns.NS, dev string) string {
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
	host, _ := lanSetup(t)
	before := snapshot(t, host)

	// "ip netns exec" needs root to enter the namespace, so privileges are
	// dropped after it, by setpriv, just for bash running the script.
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to run bridge.sh as an unprivileged user")
	}
	cmd := exec.Command("ip", "netns", "exec", host.Name(), setpriv,
		"--reuid=65534", "--regid=65534", "--clear-groups", "bash", script(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "must run as root")
	assert.Equal(t, before, snapshot(t, host))
}
