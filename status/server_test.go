package status

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sample has a distinct value in every field, so that a field wired to the
// wrong one shows.
var sample = Report{
	Role: "main", Epoch: 7, Peer: "up",
	Connections: 3, ProtectedConnections: 2, ReplicationLag: 0.0125,
	Takeovers: 1, StandDowns: 0,
	SyncFramesIn: 100, SyncFramesOut: 120, SyncFramesBad: 4,
	StandbysAdopted: 5, Diverged: 6, ConnsDropped: 7, OutputSummed: 15,
	FramesIn: 1000, FramesOut: 900, Drops: 11,
	TCPSegmentsIn: 800, TCPSegmentsOut: 700, ResetsSent: 12, SYNBacklogDrops: 13, TCPSendErrors: 14,
	Uptime: 3723.5,
}

// fakeSource returns a settable Report and counts its calls.
type fakeSource struct {
	r     atomic.Pointer[Report]
	calls atomic.Int64
}

func newFake(r Report) *fakeSource {
	f := &fakeSource{}
	f.r.Store(&r)
	return f
}

func (f *fakeSource) Snapshot() Report {
	f.calls.Add(1)
	return *f.r.Load()
}

// start runs a server for src on 127.0.0.1:0 and returns its base URL.
func start(t *testing.T, src Source) (*Server, string) {
	t.Helper()
	s, err := NewServer("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := s.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, "http://" + addr.String()
}

func do(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	// No keep-alive: the server's Close in Cleanup then leaves no client
	// connection goroutines for goleak to find.
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestStatusJSON(t *testing.T) {
	_, url := start(t, newFake(sample))
	resp, body := do(t, "GET", url+"/status")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}

	var got Report
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if got != sample {
		t.Errorf("got %+v\nwant %+v", got, sample)
	}

	// The field names are an interface (scripts, rfsisctl): pin them.
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"role": "main", "epoch": 7.0, "peer": "up",
		"connections": 3.0, "protected_connections": 2.0, "replication_lag": 0.0125,
		"takeovers": 1.0, "stand_downs": 0.0,
		"sync_frames_in": 100.0, "sync_frames_out": 120.0, "sync_frames_bad": 4.0,
		"standbys_adopted": 5.0, "diverged": 6.0, "conns_dropped": 7.0, "output_summed_bytes": 15.0,
		"frames_in": 1000.0, "frames_out": 900.0, "drops": 11.0,
		"tcp_segments_in": 800.0, "tcp_segments_out": 700.0,
		"tcp_resets_sent": 12.0, "tcp_syn_backlog_drops": 13.0, "tcp_send_errors": 14.0,
		"uptime": 3723.5,
	}
	for k, v := range want {
		if raw[k] != v {
			t.Errorf("%s = %v, want %v", k, raw[k], v)
		}
	}
	for k := range raw {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected field %q", k)
		}
	}
}

// TestStatusCurrent checks that each request reads the Source anew.
func TestStatusCurrent(t *testing.T) {
	src := newFake(sample)
	_, url := start(t, src)
	r := sample
	r.Role, r.Connections = "standalone", 9
	src.r.Store(&r)
	_, body := do(t, "GET", url+"/status")
	var got Report
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Role != "standalone" || got.Connections != 9 {
		t.Errorf("got role %q, connections %d: a stale report", got.Role, got.Connections)
	}
}

func TestStatusHead(t *testing.T) {
	_, url := start(t, newFake(sample))
	resp, body := do(t, "HEAD", url+"/status")
	if resp.StatusCode != http.StatusOK || body != "" {
		t.Errorf("HEAD: status %d, body %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("HEAD: Content-Type %q", ct)
	}
}

// TestStatusNonFinite checks that a Report JSON cannot carry fails cleanly.
func TestStatusNonFinite(t *testing.T) {
	r := sample
	r.ReplicationLag = 1 / zero()
	_, url := start(t, newFake(r))
	if resp, body := do(t, "GET", url+"/status"); resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("status %d, want 500: %s", resp.StatusCode, body)
	}
}

func zero() float64 { return 0 }

func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, body)
	}
	return fams
}

func TestMetrics(t *testing.T) {
	src := newFake(sample)
	_, url := start(t, src)
	resp, body := do(t, "GET", url+"/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("one scrape called Snapshot %d times; want 1 (a consistent set)", n)
	}

	for _, line := range []string{
		"rfsis_connections 3",
		"rfsis_protected_connections 2",
		`rfsis_role{role="main"} 1`,
		`rfsis_role{role="backup"} 0`,
		`rfsis_role{role="stood-down"} 0`,
		"rfsis_peer_up 1",
		"rfsis_epoch 7",
		"rfsis_replication_lag_seconds 0.0125",
		"rfsis_takeovers_total 1",
		"rfsis_sync_frames_bad_total 4",
		"rfsis_tcp_syn_backlog_drops_total 13",
		"rfsis_uptime_seconds 3723.5",
		"# HELP rfsis_connections TCP connections in the stack now.",
		"# TYPE rfsis_connections gauge",
		"# TYPE rfsis_takeovers_total counter",
	} {
		if !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("no line %q in\n%s", line, body)
		}
	}

	fams := parseMetrics(t, body)
	want := map[string]struct {
		typ dto.MetricType
		v   float64
	}{
		"rfsis_epoch":                       {dto.MetricType_GAUGE, 7},
		"rfsis_peer_up":                     {dto.MetricType_GAUGE, 1},
		"rfsis_connections":                 {dto.MetricType_GAUGE, 3},
		"rfsis_protected_connections":       {dto.MetricType_GAUGE, 2},
		"rfsis_replication_lag_seconds":     {dto.MetricType_GAUGE, 0.0125},
		"rfsis_uptime_seconds":              {dto.MetricType_GAUGE, 3723.5},
		"rfsis_takeovers_total":             {dto.MetricType_COUNTER, 1},
		"rfsis_stand_downs_total":           {dto.MetricType_COUNTER, 0},
		"rfsis_sync_frames_in_total":        {dto.MetricType_COUNTER, 100},
		"rfsis_sync_frames_out_total":       {dto.MetricType_COUNTER, 120},
		"rfsis_sync_frames_bad_total":       {dto.MetricType_COUNTER, 4},
		"rfsis_standbys_adopted_total":      {dto.MetricType_COUNTER, 5},
		"rfsis_diverged_total":              {dto.MetricType_COUNTER, 6},
		"rfsis_conns_dropped_total":         {dto.MetricType_COUNTER, 7},
		"rfsis_output_summed_bytes_total":   {dto.MetricType_COUNTER, 15},
		"rfsis_frames_in_total":             {dto.MetricType_COUNTER, 1000},
		"rfsis_frames_out_total":            {dto.MetricType_COUNTER, 900},
		"rfsis_drops_total":                 {dto.MetricType_COUNTER, 11},
		"rfsis_tcp_segments_in_total":       {dto.MetricType_COUNTER, 800},
		"rfsis_tcp_segments_out_total":      {dto.MetricType_COUNTER, 700},
		"rfsis_tcp_resets_sent_total":       {dto.MetricType_COUNTER, 12},
		"rfsis_tcp_syn_backlog_drops_total": {dto.MetricType_COUNTER, 13},
		"rfsis_tcp_send_errors_total":       {dto.MetricType_COUNTER, 14},
	}
	for name, w := range want {
		f := fams[name]
		if f == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if f.GetType() != w.typ || f.GetHelp() == "" || len(f.Metric) != 1 {
			t.Errorf("%s: type %v, help %q, %d series", name, f.GetType(), f.GetHelp(), len(f.Metric))
			continue
		}
		m := f.Metric[0]
		var v float64
		if w.typ == dto.MetricType_COUNTER {
			v = m.GetCounter().GetValue()
		} else {
			v = m.GetGauge().GetValue()
		}
		if v != w.v {
			t.Errorf("%s = %v, want %v", name, v, w.v)
		}
	}

	role := fams["rfsis_role"]
	if role == nil {
		t.Fatal("rfsis_role missing")
	}
	got := map[string]float64{}
	for _, m := range role.Metric {
		got[m.Label[0].GetValue()] = m.GetGauge().GetValue()
	}
	wantRoles := map[string]float64{"main": 1, "backup": 0, "standalone": 0, "joining": 0, "stood-down": 0}
	if len(got) != len(wantRoles) {
		t.Errorf("rfsis_role series %v, want %v", got, wantRoles)
	}
	for k, v := range wantRoles {
		if got[k] != v {
			t.Errorf("rfsis_role{role=%q} = %v, want %v", k, got[k], v)
		}
	}

	// Everything with our prefix is listed above, so a new metric gets a test.
	for name := range fams {
		if _, ok := want[name]; strings.HasPrefix(name, "rfsis_") && !ok && name != "rfsis_role" {
			t.Errorf("untested metric %s", name)
		}
	}
	// The runtime's metrics come along.
	if fams["go_goroutines"] == nil {
		t.Error("go_goroutines missing")
	}
}

// TestMetricsUnknownRole checks that a role this package does not list
// still shows as the current one.
func TestMetricsUnknownRole(t *testing.T) {
	r := sample
	r.Role, r.Peer = "observer", "down"
	_, url := start(t, newFake(r))
	_, body := do(t, "GET", url+"/metrics")
	fams := parseMetrics(t, body)
	got := map[string]float64{}
	for _, m := range fams["rfsis_role"].GetMetric() {
		got[m.Label[0].GetValue()] = m.GetGauge().GetValue()
	}
	if got["observer"] != 1 || got["main"] != 0 || len(got) != 6 {
		t.Errorf("rfsis_role = %v", got)
	}
	if !strings.Contains(body, "\nrfsis_peer_up 0\n") {
		t.Error("peer down is not rfsis_peer_up 0")
	}
}

func TestNotFound(t *testing.T) {
	_, url := start(t, newFake(sample))
	for _, path := range []string{"/", "/status/", "/statusx", "/metrics/x", "/debug/pprof/"} {
		if resp, _ := do(t, "GET", url+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, resp.StatusCode)
		}
	}
}

func TestMethodNotAllowed(t *testing.T) {
	src := newFake(sample)
	_, url := start(t, src)
	for _, method := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
		for _, path := range []string{"/status", "/metrics"} {
			resp, _ := do(t, method, url+path)
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status %d, want 405", method, path, resp.StatusCode)
			}
			if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") {
				t.Errorf("%s %s: Allow %q", method, path, allow)
			}
		}
	}
	if n := src.calls.Load(); n != 0 {
		t.Errorf("refused requests read the source %d times", n)
	}
}

func TestCloseIdempotent(t *testing.T) {
	s, err := NewServer("127.0.0.1:0", newFake(sample), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := s.Start()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Close: %v", err)
	}
	if _, err := s.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
	c := &http.Client{Timeout: 2 * time.Second}
	if resp, err := c.Get("http://" + addr.String() + "/status"); err == nil {
		resp.Body.Close()
		t.Error("closed server still answers")
	}
}

func TestCloseUnstarted(t *testing.T) {
	s, err := NewServer("127.0.0.1:0", newFake(sample), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestShutdown(t *testing.T) {
	s, url := start(t, newFake(sample))
	if resp, _ := do(t, "GET", url+"/status"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after Shutdown: %v", err)
	}
}

// TestShutdownDeadline checks that Shutdown forces the close when a client
// keeps a request open past ctx.
func TestShutdownDeadline(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	src := SourceFunc(func() Report {
		entered <- struct{}{}
		<-release
		return sample
	})
	s, url := start(t, src)
	defer close(release)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Get(url + "/status")
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Errorf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	if err := <-errc; err == nil {
		t.Error("the pending request got an answer from a closed server")
	}
}

func TestNewServerErrors(t *testing.T) {
	if _, err := NewServer("127.0.0.1:0", nil, nil); err == nil {
		t.Error("nil source accepted")
	}
	for _, addr := range []string{"", "127.0.0.1", "localhost:9090:1"} {
		if _, err := NewServer(addr, newFake(sample), nil); err == nil {
			t.Errorf("address %q accepted", addr)
		}
	}
	// Two servers in one process: the registries are private.
	a, _ := start(t, newFake(sample))
	b, _ := start(t, newFake(sample))
	if a.Addr() == b.Addr() {
		t.Error("two servers on one port")
	}
	// A busy port fails at Start, with the address in the error.
	c, err := NewServer(a.Addr(), newFake(sample), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Start(); err == nil || !strings.Contains(err.Error(), a.Addr()) {
		t.Errorf("Start on a busy port: %v", err)
	}
}
