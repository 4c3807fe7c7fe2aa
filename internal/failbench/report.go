package failbench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/zppratt/rfsis/internal/workload"
)

// The systems compared.
const (
	SystemRFSIS      = "rfsis"
	SystemKeepalived = "keepalived"
)

// Systems are the systems in report order.
var Systems = []string{SystemRFSIS, SystemKeepalived}

// SystemLabel is a system's name for people.
func SystemLabel(s string) string {
	switch s {
	case SystemRFSIS:
		return "RFSIS"
	case SystemKeepalived:
		return "keepalived + kernel TCP"
	}
	return s
}

// Report is one run of the benchmark: what was measured, on what, and
// every trial's raw figures. It is written as JSON beside the pictures so
// that a later run can be compared with it, or the pictures redrawn.
// Times are in milliseconds.
type Report struct {
	Date    time.Time `json:"date"`
	Machine string    `json:"machine"`
	Code    string    `json:"code"`
	Command string    `json:"command"`
	// TrialsPerFault is K, the trials per fault and system asked for.
	TrialsPerFault int               `json:"trials_per_fault"`
	Workload       string            `json:"workload"`
	Detection      map[string]string `json:"detection"` // system → its detection settings
	Faults         []string          `json:"faults"`    // fault ids, in report order
	FaultLabels    map[string]string `json:"fault_labels"`
	Trials         []Trial           `json:"trials"`
	Timelines      []Timeline        `json:"timelines"`
	Steady         []Steady          `json:"steady_state"`
	Notes          []string          `json:"notes,omitempty"`
	DurationS      float64           `json:"duration_s"`
}

// Trial is one fault against one system.
type Trial struct {
	System string `json:"system"`
	Fault  string `json:"fault"`
	Index  int    `json:"trial"`
	// Conns connections ran the workload through the fault; Survived of
	// them echoed every byte exactly once, in order, and ended cleanly.
	Conns    int `json:"connections"`
	Survived int `json:"survived"`
	// BytesLost is what the clients wrote and never got back, summed over
	// the connections (0 for every connection that survived).
	BytesLost int64 `json:"bytes_lost"`
	// StallMS is the largest gap between two echoes that spans the fault,
	// over the surviving connections, and StallMedianMS the median over
	// them of each one's largest; both absent when none survived.
	StallMS       *float64 `json:"stall_ms,omitempty"`
	StallMedianMS *float64 `json:"stall_median_ms,omitempty"`
	// NewConnMS is the time from the fault until a new connection, dialled
	// every few milliseconds from the fault on, first completed an echo;
	// absent when none did within the probe's window.
	NewConnMS *float64 `json:"new_conn_ms,omitempty"`
	// TakeoverMS is when the backup logged that it took over, after the
	// fault; absent when it did not.
	TakeoverMS *float64 `json:"takeover_ms,omitempty"`
	// Errors are the distinct ways connections failed (a few at most).
	Errors []string `json:"errors,omitempty"`
	// Note is anything else seen (the old main reclaiming the address).
	Note string `json:"note,omitempty"`
}

// Timeline is the bytes echoed to all clients per bin around one fault.
type Timeline struct {
	System string  `json:"system"`
	Fault  string  `json:"fault"`
	BinMS  float64 `json:"bin_ms"`
	// StartMS is the first bin's start, relative to the fault (negative).
	StartMS float64 `json:"start_ms"`
	Bytes   []int64 `json:"bytes"`
	// TakeoverMS and NewConnMS mark the takeover and the first new
	// connection on the picture.
	TakeoverMS *float64 `json:"takeover_ms,omitempty"`
	NewConnMS  *float64 `json:"new_conn_ms,omitempty"`
}

// Steady is the steady-state cost of one server, no fault.
type Steady struct {
	Server string `json:"server"`
	// RTTP50US and RTTP99US are 64-byte round trips on one connection.
	RTTP50US      float64 `json:"rtt_p50_us"`
	RTTP99US      float64 `json:"rtt_p99_us"`
	RoundTripsSec float64 `json:"round_trips_per_s"`
	// EchoMBps is one connection's bulk echo, MB (10^6 bytes) echoed per s.
	EchoMBps float64 `json:"echo_mb_per_s"`
	Seconds  float64 `json:"seconds"` // measured per test
}

// Ms is d in milliseconds, for the report's optional figures.
func Ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1e3
	return &v
}

// Dist is a distribution's summary, in milliseconds.
type Dist struct {
	N                int
	Median, P99, Max float64
}

func (d Dist) String() string {
	if d.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f / %.0f / %.0f", d.Median, d.P99, d.Max)
}

// distOf summarises vs by nearest rank, as workload.Percentile does for
// the acceptance tests.
func distOf(vs []float64) Dist {
	if len(vs) == 0 {
		return Dist{}
	}
	ds := make([]time.Duration, len(vs))
	for i, v := range vs {
		ds[i] = time.Duration(v * float64(time.Millisecond))
	}
	ms := func(p float64) float64 { return float64(workload.Percentile(ds, p)) / float64(time.Millisecond) }
	return Dist{N: len(vs), Median: ms(0.5), P99: ms(0.99), Max: ms(1)}
}

// Summary is one system under one fault over all its trials.
type Summary struct {
	System, Fault   string
	Trials          int
	Conns, Survived int
	BytesLost       int64
	Stall           Dist // per trial: its largest stall
	NewConn         Dist
	Takeover        Dist
	// TrialsWithErrors is how many trials lost a connection.
	TrialsWithErrors int
}

// Summarise groups the trials by system and fault, in report order.
func (r *Report) Summarise() []Summary {
	var out []Summary
	for _, sys := range Systems {
		for _, f := range r.Faults {
			s := Summary{System: sys, Fault: f}
			var stall, newConn, takeover []float64
			for _, t := range r.Trials {
				if t.System != sys || t.Fault != f {
					continue
				}
				s.Trials++
				s.Conns += t.Conns
				s.Survived += t.Survived
				s.BytesLost += t.BytesLost
				if len(t.Errors) > 0 {
					s.TrialsWithErrors++
				}
				if t.StallMS != nil {
					stall = append(stall, *t.StallMS)
				}
				if t.NewConnMS != nil {
					newConn = append(newConn, *t.NewConnMS)
				}
				if t.TakeoverMS != nil {
					takeover = append(takeover, *t.TakeoverMS)
				}
			}
			if s.Trials == 0 {
				continue
			}
			s.Stall, s.NewConn, s.Takeover = distOf(stall), distOf(newConn), distOf(takeover)
			out = append(out, s)
		}
	}
	return out
}

// FaultLabel is fault f's name for people.
func (r *Report) FaultLabel(f string) string {
	if l, ok := r.FaultLabels[f]; ok {
		return l
	}
	return f
}

// Markdown renders the report's tables and the facts needed to read
// them; pictures are linked by the names given.
func (r *Report) Markdown(stallPNG, timelinePNG, jsonName string) string {
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	p("- date: %s; the run took %.0f s\n", r.Date.UTC().Format("2006-01-02 15:04 MST"), r.DurationS)
	p("- machine: %s\n", r.Machine)
	p("- code: %s\n", r.Code)
	p("- command: `%s`\n", r.Command)
	p("- trials: K = %d per fault and system; workload: %s\n", r.TrialsPerFault, r.Workload)
	for _, sys := range Systems {
		if d, ok := r.Detection[sys]; ok {
			p("- %s: %s\n", SystemLabel(sys), d)
		}
	}
	p("\n| system | fault | trials | connections surviving | bytes lost | stall median / p99 / max, ms | new connection median / p99 / max, ms | takeover logged, median, ms |\n")
	p("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Summarise() {
		takeover := "—"
		if s.Takeover.N > 0 {
			takeover = fmt.Sprintf("%.0f", s.Takeover.Median)
		}
		survived := fmt.Sprintf("%d of %d", s.Survived, s.Conns)
		if s.TrialsWithErrors > 0 {
			survived += fmt.Sprintf(" (%d trial(s) with failures)", s.TrialsWithErrors)
		}
		newConn := s.NewConn.String()
		if missing := s.Trials - s.NewConn.N; missing > 0 {
			newConn += fmt.Sprintf(" (%d trial(s) none)", missing)
		}
		p("| %s | %s | %d | %s | %d | %s | %s | %s |\n", SystemLabel(s.System), r.FaultLabel(s.Fault), s.Trials,
			survived, s.BytesLost, s.Stall, newConn, takeover)
	}
	if len(r.Steady) > 0 {
		p("\nSteady state, no fault (one connection each; 64-byte round trips, then a bulk echo):\n\n")
		p("| server | round trip p50 / p99, µs | round trips/s | bulk echo, MB/s |\n|---|---:|---:|---:|\n")
		for _, s := range r.Steady {
			p("| %s | %.0f / %.0f | %.0f | %.1f |\n", s.Server, s.RTTP50US, s.RTTP99US, s.RoundTripsSec, s.EchoMBps)
		}
	}
	if len(r.Notes) > 0 {
		p("\nNotes from the run:\n\n")
		for _, n := range r.Notes {
			// One line per note: log excerpts keep their line breaks
			// in the JSON only.
			p("- %s\n", strings.Join(strings.Fields(n), " "))
		}
	}
	p("\n![stall distribution per system and fault](%s)\n\n![one failover of each kind, bytes echoed over time](%s)\n\nRaw results: [%s](%s).\n",
		stallPNG, timelinePNG, jsonName, jsonName)
	return w.String()
}

// WriteJSON writes the report to path, indented.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("report: %s: %w", path, err)
	}
	return &r, nil
}

// TrialOf summarises one trial's workload results. fault is the fault's
// instant; survivors' stalls are computed as the acceptance tests do.
func TrialOf(rs []*workload.ConnResult, fault time.Time) Trial {
	t := Trial{Conns: len(rs)}
	var alive []*workload.ConnResult
	seen := map[string]bool{}
	for _, r := range rs {
		t.BytesLost += max(r.Sent-r.Recv, 0)
		if _, err := workload.Verify([]*workload.ConnResult{r}, fault); err != nil {
			// One line per distinct failure, without the connection's
			// name and numbers, so 51 resets make one entry.
			msg := errorKind(r.Err)
			if !seen[msg] && len(seen) < 4 {
				seen[msg] = true
				t.Errors = append(t.Errors, msg)
			}
			continue
		}
		alive = append(alive, r)
	}
	t.Survived = len(alive)
	if len(alive) > 0 {
		s := workload.ComputeStall(alive, fault)
		t.StallMS, t.StallMedianMS = Ms(s.Max), Ms(s.Median)
	}
	slices.Sort(t.Errors)
	return t
}

// errorKind is the kind of a connection's failure: the root cause of its
// error (ECONNRESET, a timeout, an early EOF), or that it went silent,
// with numbers (line counts, offsets) blanked so that one kind is one
// entry.
func errorKind(err error) string {
	if err == nil {
		return "no echo after the fault"
	}
	for {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			// errors.Join of the reader's and the writer's errors: the
			// reader's comes first and is the one the client noticed.
			if errs := u.Unwrap(); len(errs) > 0 {
				next = errs[0]
			}
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		}
		if next == nil {
			return digits.ReplaceAllString(err.Error(), "N")
		}
		err = next
	}
}

var digits = regexp.MustCompile(`[0-9]+`)

// TimelineOf bins the bytes echoed to all connections around the fault:
// from before ahead of it to after past it, in bins of bin.
func TimelineOf(rs []*workload.ConnResult, fault time.Time, before, after, bin time.Duration) Timeline {
	n := int((before + after) / bin)
	tl := Timeline{BinMS: float64(bin.Microseconds()) / 1e3, StartMS: -float64(before.Microseconds()) / 1e3, Bytes: make([]int64, n)}
	start := fault.Add(-before)
	for _, r := range rs {
		var prev int64
		for i, at := range r.Times {
			k := int(math.Floor(float64(at.Sub(start)) / float64(bin)))
			if k >= 0 && k < n {
				tl.Bytes[k] += r.Echoed[i] - prev
			}
			prev = r.Echoed[i]
		}
	}
	return tl
}
