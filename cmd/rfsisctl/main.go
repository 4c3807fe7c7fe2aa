// Command rfsisctl inspects a running RFSIS node through its status
// endpoint (config status_addr, package status).
//
//	rfsisctl status [-addr HOST:PORT] [-config conf/config.json] [-json]
//
// The endpoint is on the host's own network, not on the user-space stack,
// so rfsisctl runs on the node's host (or anywhere that reaches
// status_addr) with no special privileges.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zppratt/rfsis/config"
	"github.com/zppratt/rfsis/status"
)

const usage = `usage: rfsisctl <command> [flags]

Commands:
  status   show a node's role, peer, connections and counters
  help     show this help

Run "rfsisctl <command> -h" for a command's flags.
`

// maxBody bounds what rfsisctl reads from the endpoint: a Report is well
// under a kilobyte, so anything near this is not one.
const maxBody = 1 << 20

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command with its arguments (without the program name) and
// returns the exit status: 0, 1 on a failure, 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "status":
		return runStatus(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "rfsisctl: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rfsisctl status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "status endpoint `HOST:PORT` (default: status_addr from the configuration file)")
	path := fs.String("config", "conf/config.json", "configuration `file` to read status_addr from when -addr is not given")
	raw := fs.Bool("json", false, "print the endpoint's JSON as is")
	timeout := fs.Duration("timeout", 5*time.Second, "give up on the endpoint after this long")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: rfsisctl status [-addr HOST:PORT] [-config FILE] [-json] [-timeout D]\n\n"+
			"Show a node's status from its status endpoint.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "rfsisctl status: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}

	target := *addr
	if target == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "rfsisctl: %v\n(pass -addr HOST:PORT to skip the configuration file)\n", err)
			return 1
		}
		if cfg.StatusAddr == "" {
			fmt.Fprintf(stderr, "rfsisctl: no status_addr in %s: the node serves no status endpoint.\n"+
				"Set \"status_addr\" (e.g. \"127.0.0.1:9090\") in the configuration and restart the node, or pass -addr HOST:PORT.\n", *path)
			return 1
		}
		target = cfg.StatusAddr
	}
	url, err := statusURL(target)
	if err != nil {
		fmt.Fprintf(stderr, "rfsisctl: %v\n", err)
		return 1
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	body, rep, err := fetch(ctx, url)
	if err != nil {
		fmt.Fprintf(stderr, "rfsisctl: %v\n", err)
		return 1
	}
	if *raw {
		stdout.Write(body)
		if !bytes.HasSuffix(body, []byte("\n")) {
			fmt.Fprintln(stdout)
		}
		return 0
	}
	printReport(stdout, rep)
	return 0
}

// statusURL turns a status_addr into the /status URL. A status_addr that
// listens on all interfaces (empty or unspecified host) is reached on the
// loopback address, which is where rfsisctl usually runs from.
func statusURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("status address %q: want HOST:PORT: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/status", nil
}

// fetch gets and decodes the Report at url. It returns the body as
// received too, for -json.
func fetch(ctx context.Context, url string) ([]byte, status.Report, error) {
	var rep status.Report
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, rep, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, rep, explain(ctx, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, rep, fmt.Errorf("%s: reading the response: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, rep, fmt.Errorf("bad response from %s: %s%s", url, resp.Status, excerpt(body))
	}
	if len(body) > maxBody {
		return nil, rep, fmt.Errorf("bad response from %s: larger than %d bytes; is this an RFSIS status endpoint?", url, maxBody)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return nil, rep, fmt.Errorf("bad response from %s: Content-Type %q, not JSON; is this an RFSIS status endpoint?%s",
			url, resp.Header.Get("Content-Type"), excerpt(body))
	}
	if err := json.Unmarshal(body, &rep); err != nil {
		return nil, rep, fmt.Errorf("bad response from %s: %v", url, err)
	}
	if rep.Role == "" {
		// Valid JSON, but not a Report: every Report has a role.
		return nil, rep, fmt.Errorf("bad response from %s: no role; is this an RFSIS status endpoint?", url)
	}
	return body, rep, nil
}

// explain turns a request error into one that says what to check.
func explain(ctx context.Context, url string, err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach %s: connection refused (is the node running? is status_addr set?)", url)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("no answer from %s in time (is the address right? is a firewall in the way?)", url)
	}
	return fmt.Errorf("cannot reach %s: %w", url, err)
}

// excerpt quotes the start of an unexpected body, which usually tells what
// answered instead of the node.
func excerpt(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return ""
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	const limit = 120
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return fmt.Sprintf(": %q", s)
}

// printReport writes r as an aligned table: the failover state first (what
// one looks at during an incident), then the counters.
func printReport(w io.Writer, r status.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	row("role", r.Role)
	row("epoch", r.Epoch)
	row("peer", r.Peer)
	row("connections", r.Connections)
	row("protected", r.ProtectedConnections)
	row("replication lag", fmt.Sprintf("%.1f ms", r.ReplicationLag*1000))
	row("takeovers", r.Takeovers)
	row("stand-downs", r.StandDowns)
	row("uptime", formatUptime(r.Uptime))
	row("sync frames in/out/bad", fmt.Sprintf("%d / %d / %d", r.SyncFramesIn, r.SyncFramesOut, r.SyncFramesBad))
	row("standbys adopted", r.StandbysAdopted)
	row("diverged", r.Diverged)
	row("replication dropped", r.ConnsDropped)
	row("checksummed bytes", r.OutputSummed)
	row("frames in/out", fmt.Sprintf("%d / %d", r.FramesIn, r.FramesOut))
	row("drops", r.Drops)
	row("tcp segments in/out", fmt.Sprintf("%d / %d", r.TCPSegmentsIn, r.TCPSegmentsOut))
	row("tcp resets sent", r.ResetsSent)
	row("tcp syn backlog drops", r.SYNBacklogDrops)
	row("tcp send errors", r.TCPSendErrors)
	tw.Flush()
}

// formatUptime writes seconds as a duration to the second ("1h2m3s").
func formatUptime(sec float64) string {
	if math.IsNaN(sec) || sec < 0 || sec > math.MaxInt64/float64(time.Second) {
		return fmt.Sprint(sec, "s") // not a sane uptime: show it as is
	}
	return time.Duration(sec * float64(time.Second)).Round(time.Second).String()
}
