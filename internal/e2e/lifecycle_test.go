//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/netns"
)

// TestGracefulShutdown sends SIGTERM to the echo server while connections
// are open, one of them in the middle of a transfer. The server must exit
// with status 0 within a few seconds, and every client must see the end of
// its connection (EOF or a reset), not hang.
func TestGracefulShutdown(t *testing.T) {
	s := startEchoServer(t)

	// Idle connections, each known to be accepted (one echo done).
	const idle = 5
	cs := make([]*net.TCPConn, idle)
	for i := range cs {
		cs[i] = s.mustDial(t, 30*time.Second)
		msg := fmt.Sprintf("conn %d\n", i)
		_, err := io.WriteString(cs[i], msg)
		require.NoError(t, err)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(cs[i], got)
		require.NoError(t, err)
		require.Equal(t, msg, string(got))
	}

	// A busy connection: the client streams and drains until the end.
	busy := s.mustDial(t, 30*time.Second)
	var busyRead, busyWritten int64
	var busyReadErr error
	writerDone, readerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(writerDone)
		buf := make([]byte, 16<<10)
		for {
			n, err := busy.Write(buf)
			busyWritten += int64(n)
			if err != nil {
				return // reset, EPIPE, or the deadline set below
			}
		}
	}()
	go func() {
		defer close(readerDone)
		n, err := io.Copy(io.Discard, busy)
		busyRead, busyReadErr = n, err
		if err == nil {
			busyReadErr = io.EOF // io.Copy hides EOF
		}
	}()
	// Let the transfer get going.
	time.Sleep(300 * time.Millisecond)

	start := time.Now()
	require.NoError(t, s.proc.Signal(syscall.SIGTERM))
	select {
	case <-s.proc.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("echoserver still running 5s after SIGTERM")
	}
	exitErr := s.proc.Wait()
	t.Logf("echoserver exited %v after SIGTERM: %v", time.Since(start).Round(time.Millisecond), exitErr)
	assert.NoError(t, exitErr, "exit status after SIGTERM")
	assert.Contains(t, s.proc.Output(), "echo server stopped")

	// Every idle client sees the end at once; 10s is "not a hang".
	for i, c := range cs {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
		n, err := c.Read(make([]byte, 1))
		assert.Equal(t, 0, n, "conn %d", i)
		assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET),
			"conn %d: read after the server stopped: %v; want EOF or connection reset", i, err)
	}
	// The busy client's reader must see the end too.
	select {
	case <-readerDone:
	case <-time.After(10 * time.Second):
		t.Errorf("busy connection: read still blocked 10s after the server stopped")
	}
	// Its writer may legitimately block on a full window after a FIN
	// (nobody is left to reset it): unblock it.
	busy.SetDeadline(time.Now())
	<-readerDone
	<-writerDone
	t.Logf("busy connection: wrote %d, read %d bytes, ended with %v", busyWritten, busyRead, busyReadErr)
	assert.True(t, errors.Is(busyReadErr, io.EOF) || errors.Is(busyReadErr, syscall.ECONNRESET),
		"busy connection: read ended with %v; want EOF or connection reset", busyReadErr)
}

// TestBadConfigExitsNonZero runs the binary on broken configurations: it
// must exit non-zero and say what is wrong, naming the key.
func TestBadConfigExitsNonZero(t *testing.T) {
	requireBinary(t)
	valid := `"ipv4_addr": "10.77.0.1", "backup_addr": "10.77.0.50", "netmask": "255.255.255.0", "tap_device_name": "tap0"`
	for _, tc := range []struct {
		name   string
		config string // "" means no file at all
		want   []string
	}{
		{"bad JSON", `{` + valid + `, "port": 8080,, }`, []string{"invalid JSON", "line 1"}},
		{"truncated JSON", `{` + valid + `, "port": 80`, []string{"invalid JSON"}},
		{"wrong type", `{` + valid + `, "port": "eighty"}`, []string{"port", "number"}},
		{"wrong type bool", `{` + valid + `, "port": 8080, "debug_mode": "yes"}`, []string{"debug_mode"}},
		{"unknown key", `{` + valid + `, "port": 8080, "prot": 8081}`, []string{"prot", "unknown key"}},
		{"missing key", `{` + valid + `}`, []string{"port", "required"}},
		{"bad address", `{"ipv4_addr": "10.77.0.300", "backup_addr": "10.77.0.50", "port": 8080}`, []string{"ipv4_addr"}},
		{"port out of range", `{` + valid + `, "port": 70000}`, []string{"port"}},
		{"missing file", "", []string{"no such file"}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.json")
			if tc.config != "" {
				require.NoError(t, os.WriteFile(path, []byte(tc.config), 0o644))
			}
			code, stderr := runEchoServer(t, path)
			t.Logf("exit %d, stderr: %s", code, strings.TrimSpace(stderr))
			assert.NotEqual(t, 0, code, "exit status")
			assert.Contains(t, stderr, path, "the message should name the file")
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
		})
	}
}

// runEchoServer runs the binary to completion with -config path and returns
// its exit status and standard error. As root it runs in a fresh, empty
// namespace, so that if a broken config were accepted by mistake the TAP it
// opened would not be in the host namespace; as another user it cannot open
// a TAP anyway.
func runEchoServer(t *testing.T, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, echoserverBin, "-config", path)
	cmd.Stderr = &stderr
	var err error
	if os.Geteuid() == 0 {
		p, serr := netns.NewNS(t).StartCmd(cmd)
		require.NoError(t, serr)
		err = p.Wait()
	} else {
		err = cmd.Run()
	}
	require.NoError(t, ctx.Err(), "echoserver did not exit within 20s on a bad config; stderr:\n%s", stderr.String())
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running echoserver: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}
