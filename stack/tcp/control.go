package tcp

import "time"

// --- RTT estimation (RFC 6298) ---

func (c *Conn) sampleRTT(r time.Duration) {
	if r <= 0 {
		r = time.Millisecond / 2
	}
	if c.srtt == 0 {
		c.srtt = r
		c.rttvar = r / 2
	} else {
		d := c.srtt - r
		if d < 0 {
			d = -d
		}
		c.rttvar = (3*c.rttvar + d) / 4
		c.srtt = (7*c.srtt + r) / 8
	}
	c.rto = max(min(c.srtt+max(time.Millisecond, 4*c.rttvar), c.cfg.MaxRTO), c.cfg.MinRTO)
}

// SRTT returns the smoothed round-trip time, 0 before the first sample.
func (c *Conn) SRTT() time.Duration { return c.srtt }

// RTO returns the current retransmission timeout.
func (c *Conn) RTO() time.Duration { return c.rto }

// tsNow is our timestamp clock: milliseconds since the connection began,
// plus an offset.
func (c *Conn) tsNow(now time.Time) uint32 {
	v := uint32(now.Sub(c.tsEpoch)/time.Millisecond) + c.tsOffset
	if c.tsLast != 0 && int32(v-c.tsLast) < 0 {
		// Never backwards: the peer's PAWS check drops such segments.
		v = c.tsLast
	}
	return v
}

// --- Congestion control (RFC 5681, 3465, 6582) and SACK recovery ---

func (c *Conn) flight() uint32 { return c.sndNxt.Sub(c.sndUna) }

func (c *Conn) onNewAck(acked uint32) {
	mss := uint32(c.mss())
	if c.inRecovery {
		if c.sndUna.GreaterEq(c.recover) {
			// Full acknowledgement: leave recovery (RFC 6582 3.2 step 3).
			c.inRecovery = false
			c.cwnd = max(min(c.ssthresh, c.flight()+mss), 2*mss)
			return
		}
		// Partial acknowledgement: the next hole is lost too; deflate by
		// what was acked, add back one segment (RFC 6582 3.2 step 4).
		c.fastRexmit = true
		if acked >= c.cwnd {
			c.cwnd = mss
		} else {
			c.cwnd -= acked
		}
		c.cwnd += mss
		return
	}
	if c.cwnd < c.ssthresh {
		c.cwnd += min(acked, 2*mss) // slow start, byte counting with L=2
		return
	}
	c.bytesAcked += acked
	if c.bytesAcked >= c.cwnd {
		c.bytesAcked -= c.cwnd
		c.cwnd += mss
	}
}

func (c *Conn) onDupAck() {
	mss := uint32(c.mss())
	c.dupAcks++
	if c.inRecovery {
		if !c.sackOK {
			c.cwnd += mss // inflate: a segment has left the network
		}
		return
	}
	// Enter recovery on three duplicates, or, with SACK, when more than
	// (DupThresh-1) segments' worth above SND.UNA have been SACKed (RFC
	// 6675's IsLost).
	// After a timeout, duplicates for data sent before it do not count
	// (RFC 6582 section 4.1, the "recover" guard).
	if c.dupAcks < 3 && !(c.sackOK && c.sackedBytes() > 2*mss) {
		return
	}
	if c.sndUna.Less(c.recover) && c.dupAcks < 3 {
		return
	}
	c.ssthresh = max(c.flight()/2, 2*mss)
	c.inRecovery = true
	c.recoveries++
	c.recover = c.sndNxt
	c.recoveryRexmit = c.sndUna
	c.fastRexmit = true
	if c.sackOK {
		c.cwnd = c.ssthresh
	} else {
		c.cwnd = c.ssthresh + 3*mss
	}
}

func (c *Conn) updateScoreboard(seg *Segment) {
	for i := range int(seg.NumSACK) {
		b := seg.SACK[i]
		// Ignore blocks that are empty, stale or beyond what we sent.
		if !b.Start.Less(b.End) || b.End.LessEq(c.sndUna) || b.End.Greater(c.sndNxt) {
			continue
		}
		r := seqRange{seqMax(b.Start, c.sndUna), b.End}
		c.sacked = insertRange(c.sacked, r, maxSACKRanges)
	}
}

// trimScoreboard drops SACKed ranges the cumulative ACK has passed.
func (c *Conn) trimScoreboard() {
	i := 0
	for i < len(c.sacked) && c.sacked[i].end.LessEq(c.sndUna) {
		i++
	}
	c.sacked = c.sacked[:copy(c.sacked, c.sacked[i:])]
	if len(c.sacked) > 0 && c.sacked[0].start.Less(c.sndUna) {
		c.sacked[0].start = c.sndUna
	}
}

func (c *Conn) sackedBytes() uint32 {
	var n uint32
	for _, r := range c.sacked {
		n += r.len()
	}
	return n
}

// maxSACKRanges bounds the scoreboard; a peer can't grow it beyond this.
const maxSACKRanges = 64

// insertRange adds r to the sorted, disjoint list rs, merging overlaps
// and touching ranges. A range that would make more than most is dropped.
func insertRange(rs []seqRange, r seqRange, most int) []seqRange {
	i := 0
	for i < len(rs) && rs[i].end.Less(r.start) {
		i++
	}
	j := i
	for j < len(rs) && rs[j].start.LessEq(r.end) {
		r.start = seqMin(r.start, rs[j].start)
		r.end = seqMax(r.end, rs[j].end)
		j++
	}
	if i == j {
		if len(rs) >= most {
			return rs
		}
		rs = append(rs, seqRange{})
		copy(rs[i+1:], rs[i:])
		rs[i] = r
		return rs
	}
	rs[i] = r
	return append(rs[:i+1], rs[j:]...)
}

// nextHole returns the first byte range at or after from that is not
// SACKed and lies below the highest SACKed byte: data presumed lost.
func (c *Conn) nextHole(from Seq) (seqRange, bool) {
	if len(c.sacked) == 0 {
		return seqRange{}, false
	}
	from = seqMax(from, c.sndUna)
	for _, r := range c.sacked {
		if from.Less(r.start) {
			return seqRange{from, r.start}, true
		}
		from = seqMax(from, r.end)
	}
	return seqRange{}, false
}

// pipe estimates the bytes in the network during SACK recovery (after
// RFC 6675): outstanding, less SACKed, less holes presumed lost, plus
// the holes already retransmitted.
func (c *Conn) pipe() uint32 {
	out := c.flight()
	if !c.sackOK || len(c.sacked) == 0 {
		return out
	}
	sacked := c.sackedBytes()
	high := c.sacked[len(c.sacked)-1].end
	holes := high.Sub(c.sndUna) - sacked
	var resent uint32
	if c.recoveryRexmit.Greater(c.sndUna) {
		lim := seqMin(c.recoveryRexmit, high)
		resent = lim.Sub(c.sndUna)
		for _, r := range c.sacked {
			if r.start.GreaterEq(lim) {
				break
			}
			resent -= seqMin(r.end, lim).Sub(r.start)
		}
	}
	p := int64(out) - int64(sacked) - int64(holes) + int64(resent)
	return uint32(max(p, 0))
}

// --- Timers ---

// NextDeadline returns when Tick next has work to do, or the zero time.
func (c *Conn) NextDeadline() time.Time {
	var d time.Time
	for _, t := range [...]time.Time{c.rtoAt, c.delackAt, c.persistAt, c.keepaliveAt, c.closeAt} {
		if !t.IsZero() && (d.IsZero() || t.Before(d)) {
			d = t
		}
	}
	return d
}

func due(t, now time.Time) bool { return !t.IsZero() && !now.Before(t) }

// Tick runs the timers that are due at now. Call Output afterwards.
func (c *Conn) Tick(now time.Time) {
	if c.standby {
		return
	}
	if due(c.closeAt, now) {
		c.closeAt = time.Time{}
		switch {
		case c.state == StateTimeWait, c.state == StateFinWait2 && c.readShutdown:
			c.finish(nil)
			return
		case c.state == StateFinWait2:
			// Half-closed: the application still reads, and the peer
			// may send for as long as it likes. Linux applies
			// tcp_fin_timeout to orphaned sockets only; check again later.
			c.closeAt = now.Add(c.cfg.FinWait2Timeout)
		}
	}
	if due(c.delackAt, now) {
		c.delackAt = time.Time{}
		c.ackNow = true
	}
	if due(c.rtoAt, now) {
		c.onRTO(now)
		if c.state == StateClosed {
			return
		}
	}
	if due(c.persistAt, now) {
		c.persistAt = time.Time{}
		// Probes a live peer answers reset probesOut (Handle); a peer
		// gone silent is given up on like an unanswered retransmission.
		if c.probesOut >= c.cfg.MaxRetries {
			c.finish(ErrTimeout)
			return
		}
		c.probesOut++
		c.probeNow = true
		c.persistBackoff++
	}
	if due(c.keepaliveAt, now) {
		c.keepaliveAt = time.Time{}
		if c.sndNxt != c.sndUna || c.sndNxt.Less(c.dataEnd()) {
			// Not idle: the retransmission or persist timer watches the
			// peer (as Linux's keepalive timer does).
			c.keepaliveAt = now.Add(c.cfg.KeepAlive)
		} else if now.Sub(c.lastRecv) >= c.cfg.KeepAlive {
			if c.keepaliveProbes >= c.cfg.KeepAliveCount {
				c.finish(ErrTimeout)
				return
			}
			c.keepaliveProbes++
			c.probeNow = true
			c.keepaliveAt = now.Add(c.cfg.KeepAliveInterval)
		} else {
			c.keepaliveAt = c.lastRecv.Add(c.cfg.KeepAlive)
		}
	}
}

func (c *Conn) onRTO(now time.Time) {
	c.rtoAt = time.Time{}
	// A peer that shrank its window to zero under our data but still
	// answers gets window probes, not retries: the connection must not
	// time out for them (RFC 9293 3.8.6; Linux's tcp_retransmit_timer
	// does the same).
	if !(c.sndWnd == 0 && c.state.synchronized() && now.Sub(c.lastRecv) < c.cfg.MaxRTO) {
		c.retries++
	}
	limit := c.cfg.MaxRetries
	if c.state == StateSynSent || c.state == StateSynReceived {
		limit = c.cfg.SynRetries
	}
	if c.retries > limit {
		c.finish(ErrTimeout)
		return
	}
	c.rto = min(2*c.rto, c.cfg.MaxRTO)
	c.timeouts++
	c.rttTiming = false // Karn: no samples from retransmitted data
	if c.state == StateSynSent || c.state == StateSynReceived {
		c.synPending = true
		return
	}
	mss := uint32(c.mss())
	if c.tsOK && !c.undoValid && !c.inRecovery {
		// The first timeout of an episode outside fast recovery: keep
		// what it takes away, in case it proves spurious.
		c.undoValid = true
		c.undoTS = c.tsNow(now)
		c.undoCwnd, c.undoSsthresh, c.undoRecover = c.cwnd, c.ssthresh, c.recover
	}
	if !c.inRecovery || c.retries == 1 {
		c.ssthresh = max(c.flight()/2, 2*mss)
	}
	c.cwnd = mss
	c.bytesAcked = 0
	c.inRecovery = false
	c.dupAcks = 0
	c.recover = c.sndNxt
	// Go back N: resend everything outstanding, SACKed or not (a
	// receiver may renege on SACKed data, RFC 2018 section 8).
	c.sacked = c.sacked[:0]
	c.rexmitNxt = c.sndUna
	c.rtoRecoveryHigh = c.sndNxt
}

// checkSpuriousRTO runs on the first acknowledgement of new data after a
// timeout (Eifel detection, RFC 3522, with the timestamp option). If it
// echoes a timestamp older than the timeout's retransmission, it answers
// the original transmission: the peer (or the path) was only late, as a
// process descheduled for some milliseconds is, and nothing was lost.
// The timeout's cuts are then undone (RFC 4015's response, as Linux's
// undo does): the congestion state comes back and the go-back-N stops,
// so the late peer does not cost a slow start and a resend of everything
// in flight. The RTO itself is left to the new RTT sample, which the
// late acknowledgement makes larger.
func (c *Conn) checkSpuriousRTO(seg *Segment, ack Seq) {
	c.undoValid = false
	if !seg.HasTS || seg.TSEcr == 0 || int32(seg.TSEcr-c.undoTS) >= 0 {
		return // the retransmission was needed, or nothing tells
	}
	c.spuriousRTOs++
	c.cwnd = max(c.cwnd, c.undoCwnd)
	c.ssthresh = max(c.ssthresh, c.undoSsthresh)
	c.recover = c.undoRecover
	c.rtoRecoveryHigh = ack
}
