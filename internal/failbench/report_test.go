package failbench

import (
	"errors"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zppratt/rfsis/internal/workload"
)

// synthetic is a report as a run would write it: three faults, two
// systems, five trials each; RFSIS keeps every connection, keepalived
// none.
func synthetic() *Report {
	r := &Report{
		Date: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC), Machine: "test", Code: "abc", Command: "make bench-failover",
		TrialsPerFault: 5, Workload: "test workload",
		Detection:   map[string]string{SystemRFSIS: "10 ms x 3", SystemKeepalived: "advert_int 0.01"},
		Faults:      []string{"kill", "link-down", "stop"},
		FaultLabels: map[string]string{"kill": "kill -9", "link-down": "link down", "stop": "SIGSTOP"},
		Steady:      []Steady{{Server: "kernel TCP", RTTP50US: 30, RTTP99US: 90, RoundTripsSec: 25000, EchoMBps: 900}},
	}
	for fi, f := range r.Faults {
		for i := range 5 {
			v := func(base float64) *float64 { x := base + float64(10*i+fi); return &x }
			r.Trials = append(r.Trials,
				Trial{System: SystemRFSIS, Fault: f, Index: i, Conns: 51, Survived: 51, StallMS: v(40), StallMedianMS: v(35), NewConnMS: v(35), TakeoverMS: v(30)},
				Trial{System: SystemKeepalived, Fault: f, Index: i, Conns: 51, BytesLost: 100, NewConnMS: v(50), TakeoverMS: v(32),
					Errors: []string{"connection reset by peer"}})
		}
		for _, sys := range Systems {
			tl := Timeline{System: sys, Fault: f, BinMS: 10, StartMS: -500, TakeoverMS: Ms(40 * time.Millisecond)}
			for i := range 200 {
				b := int64(12000)
				if i >= 50 && (sys == SystemKeepalived || i < 55) {
					b = 0
				}
				tl.Bytes = append(tl.Bytes, b)
			}
			r.Timelines = append(r.Timelines, tl)
		}
	}
	return r
}

func TestSummarise(t *testing.T) {
	r := synthetic()
	ss := r.Summarise()
	require.Len(t, ss, 6)
	s := ss[0]
	assert.Equal(t, SystemRFSIS, s.System)
	assert.Equal(t, "kill", s.Fault)
	assert.Equal(t, 5, s.Trials)
	assert.Equal(t, 255, s.Survived)
	assert.Equal(t, Dist{N: 5, Median: 60, P99: 80, Max: 80}, s.Stall)
	k := ss[3]
	assert.Equal(t, SystemKeepalived, k.System)
	assert.Equal(t, 0, k.Survived)
	assert.Equal(t, int64(500), k.BytesLost)
	assert.Zero(t, k.Stall.N, "no survivor, no stall")
	assert.Equal(t, 5, k.TrialsWithErrors)
}

func TestMarkdown(t *testing.T) {
	md := synthetic().Markdown("s.png", "t.png", "r.json")
	assert.Contains(t, md, "| RFSIS | kill -9 | 5 | 255 of 255 | 0 | 60 / 80 / 80 | 55 / 75 / 75 | 50 |")
	assert.Contains(t, md, "| keepalived + kernel TCP | SIGSTOP | 5 | 0 of 255 (5 trial(s) with failures) | 500 | — | 72 / 92 / 92 | 54 |")
	assert.Contains(t, md, "| kernel TCP | 30 / 90 | 25000 | 900.0 |")
	assert.Contains(t, md, "![stall distribution per system and fault](s.png)")
}

func TestJSONRoundTrip(t *testing.T) {
	r := synthetic()
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, r.WriteJSON(path))
	back, err := ReadJSON(path)
	require.NoError(t, err)
	assert.Equal(t, r.Summarise(), back.Summarise())
	assert.Equal(t, r.Timelines, back.Timelines)
}

func TestPlots(t *testing.T) {
	r := synthetic()
	dir := t.TempDir()
	for name, draw := range map[string]func(string) error{"stall.png": r.PlotStalls, "timeline.png": r.PlotTimelines} {
		path := filepath.Join(dir, name)
		require.NoError(t, draw(path), name)
		f, err := os.Open(path)
		require.NoError(t, err)
		img, err := png.Decode(f)
		f.Close()
		require.NoError(t, err, name)
		assert.Greater(t, img.Bounds().Dx(), 500, name)
	}
	// Rendering the committed pictures again from another report's JSON:
	// RFSIS_FAILBENCH_RENDER names it (see TestRender).
	empty := &Report{Faults: []string{"kill"}}
	assert.Error(t, empty.PlotTimelines(filepath.Join(dir, "none.png")), "a report without timelines")
}

// conn is a connection whose 32-byte echoes arrived ms milliseconds after
// fault, that wrote sent bytes and ended with err.
func conn(fault time.Time, sent int64, err error, ms ...int) *workload.ConnResult {
	r := &workload.ConnResult{Sent: sent, Err: err}
	for _, m := range ms {
		r.Recv += 32
		r.Times = append(r.Times, fault.Add(time.Duration(m)*time.Millisecond))
		r.Echoed = append(r.Echoed, r.Recv)
	}
	return r
}

func TestTrialOf(t *testing.T) {
	fault := time.Unix(100, 0)
	reset := fmt.Errorf("read of line 9: %w", &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET})
	rs := []*workload.ConnResult{
		conn(fault, 128, nil, -20, -10, 40, 50),
		conn(fault, 96, nil, -20, -10, 70),
		conn(fault, 160, errors.Join(reset, errors.New("write: broken pipe")), -20, -10),
		conn(fault, 64, reset, -20),
	}
	tr := TrialOf(rs, fault)
	assert.Equal(t, 4, tr.Conns)
	assert.Equal(t, 2, tr.Survived)
	assert.Equal(t, int64(96+32), tr.BytesLost)
	require.NotNil(t, tr.StallMS)
	assert.Equal(t, 80.0, *tr.StallMS)
	assert.Equal(t, []string{"connection reset by peer"}, tr.Errors)

	tl := TimelineOf(rs, fault, 30*time.Millisecond, 90*time.Millisecond, 10*time.Millisecond)
	require.Len(t, tl.Bytes, 12)
	assert.Equal(t, int64(32*4), tl.Bytes[1], "four echoes at -20 ms")
	assert.Equal(t, int64(32*3), tl.Bytes[2], "three at -10 ms")
	assert.Equal(t, int64(32), tl.Bytes[10], "b's at 70 ms")
	assert.Equal(t, -30.0, tl.StartMS)
}
