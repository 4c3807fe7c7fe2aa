package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zppratt/rfsis/status"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var sample = status.Report{
	Role: "main", Epoch: 7, Peer: "up",
	Connections: 3, ProtectedConnections: 2, ReplicationLag: 0.0125,
	Takeovers: 1, SyncFramesIn: 100, SyncFramesOut: 120, SyncFramesBad: 4,
	FramesIn: 1000, FramesOut: 900, Drops: 11,
	TCPSegmentsIn: 800, TCPSegmentsOut: 700, ResetsSent: 12, SYNBacklogDrops: 13,
	Uptime: 3723.4,
}

// serve starts a status server with a fixed Report on 127.0.0.1:0 and
// returns its address.
func serve(t *testing.T, r status.Report) string {
	t.Helper()
	s, err := status.NewServer("127.0.0.1:0", status.SourceFunc(func() status.Report { return r }), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := s.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		// rfsisctl's keep-alive connection ends with the server; let its
		// goroutines notice before goleak looks.
		http.DefaultClient.CloseIdleConnections()
	})
	return addr.String()
}

// writeConfig writes a valid configuration file with the given status_addr
// (none when empty) and returns its path.
func writeConfig(t *testing.T, statusAddr string) string {
	t.Helper()
	extra := ""
	if statusAddr != "" {
		extra = fmt.Sprintf(",\n  \"status_addr\": %q", statusAddr)
	}
	data := `{
  "backup": false,
  "backup_addr": "192.168.1.12",
  "ipv4_addr": "192.168.1.101",
  "port": 8080,
  "netmask": "255.255.255.0",
  "tap_device_name": "tap0"` + extra + "\n}\n"
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestStatusTable(t *testing.T) {
	addr := serve(t, sample)
	code, out, errs := runCmd("status", "-addr", addr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	t.Logf("output:\n%s", out)
	for _, want := range []string{
		"role                    main\n",
		"epoch                   7\n",
		"peer                    up\n",
		"connections             3\n",
		"protected               2\n",
		"replication lag         12.5 ms\n",
		"takeovers               1\n",
		"uptime                  1h2m3s\n",
		"sync frames in/out/bad  100 / 120 / 4\n",
		"tcp syn backlog drops   13\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if errs != "" {
		t.Errorf("stderr: %s", errs)
	}
}

func TestStatusJSON(t *testing.T) {
	addr := serve(t, sample)
	code, out, errs := runCmd("status", "-json", "-addr", addr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got status.Report
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got != sample {
		t.Errorf("got %+v, want %+v", got, sample)
	}
}

func TestStatusFromConfig(t *testing.T) {
	addr := serve(t, sample)
	code, out, errs := runCmd("status", "-config", writeConfig(t, addr))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "main") {
		t.Errorf("output:\n%s", out)
	}

	// A status_addr on all interfaces is reached on the loopback.
	_, port, _ := net.SplitHostPort(addr)
	code, _, errs = runCmd("status", "-config", writeConfig(t, ":"+port))
	if code != 0 {
		t.Fatalf("status_addr %q: exit %d: %s", ":"+port, code, errs)
	}

	// -addr wins over the file.
	code, _, errs = runCmd("status", "-config", writeConfig(t, "127.0.0.1:1"), "-addr", addr)
	if code != 0 {
		t.Fatalf("-addr with a config: exit %d: %s", code, errs)
	}
}

func TestStatusErrors(t *testing.T) {
	// A port nobody listens on: bind one, then free it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()

	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html>hello</html>")
	}))
	defer html.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"role": "main", "epoch": "seven"}`)
	}))
	defer broken.Close()
	notReport := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"hello": "world"}`)
	}))
	defer notReport.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "cannot encode the status report", http.StatusInternalServerError)
	}))
	defer failing.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	host := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"refused", []string{"status", "-addr", refused}, 1, "connection refused (is the node running? is status_addr set?)"},
		{"no status_addr", []string{"status", "-config", writeConfig(t, "")}, 1, "no status_addr in"},
		{"no config file", []string{"status", "-config", filepath.Join(t.TempDir(), "nope.json")}, 1, "pass -addr"},
		{"bad addr", []string{"status", "-addr", "localhost"}, 1, "want HOST:PORT"},
		{"html", []string{"status", "-addr", host(html)}, 1, `bad response from http://` + host(html) + `/status: Content-Type "text/html", not JSON`},
		{"bad json", []string{"status", "-addr", host(broken)}, 1, "bad response from"},
		{"not a report", []string{"status", "-addr", host(notReport)}, 1, "no role"},
		{"http error", []string{"status", "-addr", host(failing)}, 1, `500 Internal Server Error: "cannot encode the status report"`},
		{"timeout", []string{"status", "-timeout", "100ms", "-addr", host(slow)}, 1, "no answer from"},
		{"stray argument", []string{"status", "extra"}, 2, `unexpected argument "extra"`},
		{"bad flag", []string{"status", "-bogus"}, 2, "flag provided but not defined"},
		{"unknown command", []string{"stat"}, 2, `unknown command "stat"`},
		{"no args", nil, 2, "usage: rfsisctl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if !strings.Contains(errs, tc.want) {
				t.Errorf("stderr %q does not say %q", errs, tc.want)
			}
			if out != "" {
				t.Errorf("stdout on error: %q", out)
			}
		})
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}} {
		code, out, errs := runCmd(args...)
		if code != 0 || !strings.Contains(out, "usage: rfsisctl") || !strings.Contains(out, "status") || errs != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	code, _, errs := runCmd("status", "-h")
	if code != 0 || !strings.Contains(errs, "-addr") {
		t.Errorf("status -h: exit %d, stderr %q", code, errs)
	}
}
