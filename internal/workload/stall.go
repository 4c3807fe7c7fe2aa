package workload

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Stall summarises the client-visible stall of one fault.
type Stall struct {
	Max     time.Duration // the largest gap ending after the fault, any connection
	MaxConn string        // which connection
	Median  time.Duration // the median over connections of each one's largest such gap
	MaxAt   time.Duration // when that gap ended, after the fault
	// Before is the largest gap before the fault (the baseline jitter),
	// BeforeConn its connection and BeforeAt when it ended, before the fault.
	Before     time.Duration
	BeforeConn string
	BeforeAt   time.Duration
}

func (s Stall) String() string {
	return fmt.Sprintf("stall %v (%s, ending %v after the fault), median over connections %v; largest gap before the fault %v (%s, ending %v before it)",
		s.Max.Round(time.Millisecond), s.MaxConn, s.MaxAt.Round(time.Millisecond), s.Median.Round(time.Millisecond),
		s.Before.Round(time.Millisecond), s.BeforeConn, s.BeforeAt.Round(time.Millisecond))
}

// ComputeStall computes the client-visible stall: for each connection the
// largest gap between two consecutive echoes where the later one arrived
// after the fault (the gap that spans the fault, or any later hiccup it
// caused).
func ComputeStall(rs []*ConnResult, fault time.Time) Stall {
	var s Stall
	var per []time.Duration
	for _, r := range rs {
		var worst time.Duration
		var worstAt time.Time
		for i := 1; i < len(r.Times); i++ {
			gap := r.Times[i].Sub(r.Times[i-1])
			switch {
			case !r.Times[i].After(fault):
				if gap > s.Before {
					s.Before, s.BeforeConn, s.BeforeAt = gap, r.Name, fault.Sub(r.Times[i])
				}
			case gap > worst:
				worst, worstAt = gap, r.Times[i]
			}
		}
		per = append(per, worst)
		if worst > s.Max {
			s.Max, s.MaxConn, s.MaxAt = worst, r.Name, worstAt.Sub(fault)
		}
	}
	if len(per) > 0 {
		slices.Sort(per)
		s.Median = per[len(per)/2]
	}
	return s
}

// Percentile returns the p-quantile (0..1) of ds by nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Durations formats ds rounded to the millisecond.
func Durations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(parts, " ")
}
