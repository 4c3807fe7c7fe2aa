package tcp

import "time"

// Output hands every segment the connection wants to send now to emit, in
// order. The segment and its payload are valid only during the call: emit
// must serialise them before returning. Call Output after every Handle,
// Tick, Write, Read and Close.
func (c *Conn) Output(now time.Time, emit func(*Segment)) {
	if c.standby {
		return
	}
	if c.rstPending && (!c.rstAbort || !c.gate.Enabled || c.gate.CloseOK) {
		c.rstPending = false
		s := c.newSegment()
		s.Seq = c.rstSeq
		s.Flags = FlagRST
		if c.rstAbort {
			s.Flags |= FlagACK
			s.Ack = c.ackNumber()
		}
		emit(s)
	}
	switch c.state {
	case StateClosed:
		return
	case StateSynSent, StateSynReceived:
		if c.synPending && (c.state == StateSynSent || !c.gate.Enabled || c.gate.OpenOK) {
			c.sendSYN(now, emit)
		}
		return
	}
	c.sentAck = false
	c.outputRetransmissions(now, emit)
	c.outputNewData(now, emit)
	if c.probeNow {
		// A window probe or keepalive: an old sequence number makes the
		// peer answer with an ACK carrying its current window.
		c.probeNow = false
		s := c.newSegment()
		s.Seq = c.sndUna - 1
		s.Flags = FlagACK
		c.emitWithAck(now, emit, s)
	}
	if c.ackNow && !c.sentAck {
		s := c.newSegment()
		s.Seq = c.sndNxt
		s.Flags = FlagACK
		c.emitWithAck(now, emit, s)
	}
	for ; c.dupAcksToSend > 0; c.dupAcksToSend-- {
		s := c.newSegment()
		s.Seq = c.sndNxt
		s.Flags = FlagACK
		c.emitWithAck(now, emit, s)
	}
	c.armPersist(now)
}

func (c *Conn) newSegment() *Segment {
	c.out = Segment{SrcPort: c.id.LocalPort, DstPort: c.id.RemotePort, WScale: -1}
	return &c.out
}

// ackNumber is RCV.NXT, held back to what the backup holds (invariant 2).
func (c *Conn) ackNumber() Seq {
	if c.gate.Enabled && c.rcvNxt.Greater(c.gate.AckLimit) {
		return c.gate.AckLimit
	}
	return c.rcvNxt
}

func (c *Conn) sendSYN(now time.Time, emit func(*Segment)) {
	c.synPending = false
	s := c.newSegment()
	s.Seq = c.iss
	s.Flags = FlagSYN
	s.MSS = c.cfg.MSS
	// A SYN offers every option we have on; a SYN-ACK answers only those
	// the peer offered (RFC 7323, 2018).
	active := c.state == StateSynSent
	if !c.cfg.DisableWindowScaling && (active || c.wsOK) {
		s.WScale = int8(c.rcvShift)
	}
	s.SACKPermitted = !c.cfg.DisableSACK && (active || c.sackOK)
	if !c.cfg.DisableTimestamps && (active || c.tsOK) {
		s.HasTS = true
		s.TSVal = c.tsNow(now)
		s.TSEcr = c.tsRecent
		c.tsLast = s.TSVal
	}
	win := min(c.cfg.ReceiveBufferSize, 0xffff) // never scaled in a SYN
	s.Window = uint16(win)
	if !active {
		s.Flags |= FlagACK
		s.Ack = c.rcvNxt
		c.rcvAdvEdge = c.rcvNxt.Add(uint32(win))
		c.lastAckSent = c.rcvNxt
	}
	c.sndNxt = c.iss + 1
	if c.rtoAt.IsZero() {
		c.rtoAt = now.Add(c.rto)
	}
	if c.retries == 0 && !c.rttTiming {
		c.rttTiming, c.rttSeq, c.rttStart = true, c.iss, now
	}
	emit(s)
}

// emitWithAck fills the ACK, window, timestamp and SACK fields of s and
// emits it, noting that the peer has now heard our latest ACK.
func (c *Conn) emitWithAck(now time.Time, emit func(*Segment), s *Segment) {
	ack := c.ackNumber()
	s.Flags |= FlagACK
	s.Ack = ack
	s.Window = c.windowField(ack)
	if c.tsOK {
		s.HasTS = true
		s.TSVal = c.tsNow(now)
		s.TSEcr = c.tsRecent
		c.tsLast = s.TSVal
	}
	if c.sackOK && (len(c.ooo) > 0 || c.dsackPending) {
		c.fillSACK(s, ack)
	}
	c.lastAckSent = ack
	c.ackHeld = ack != c.rcvNxt
	c.ackNow = false
	c.sentAck = true
	c.delackAt = time.Time{}
	c.segsSinceAck = 0
	emit(s)
}

// windowField computes the window to advertise with ACK number ack and
// records the right edge it offers. The edge never moves left (RFC 9293
// 3.8.6.2.2) and moves right only in steps of at least a segment or half
// the buffer, whichever is smaller (receiver silly-window avoidance).
func (c *Conn) windowField(ack Seq) uint16 {
	edge := c.rcvRead.Add(uint32(c.cfg.ReceiveBufferSize))
	if c.readShutdown {
		edge = c.rcvNxt.Add(uint32(c.cfg.ReceiveBufferSize))
	}
	step := uint32(min(c.cfg.ReceiveBufferSize/2, c.mss()))
	// Measured from the current right edge, or from RCV.NXT when the
	// window is closed: a closed window reopens by a step or not at all.
	if base := seqMax(c.rcvAdvEdge, c.rcvNxt); edge.Greater(base) && edge.Sub(base) < step {
		edge = c.rcvAdvEdge
	}
	edge = seqMax(edge, c.rcvAdvEdge)
	if edge.LessEq(ack) {
		return 0
	}
	// Round up to the scale's granularity: rounding down would show the
	// peer an edge left of one already offered (RFC 7323 2.4; Linux's
	// tcp_select_window does the same). At most 2^scale-1 bytes past
	// the buffer: processData keeps them (the ring has that slack).
	g := uint32(1)<<c.rcvShift - 1
	wnd := min((edge.Sub(ack)+g)>>c.rcvShift, 0xffff)
	if adv := ack.Add(wnd << c.rcvShift); adv.Greater(c.rcvAdvEdge) {
		c.rcvAdvEdge = adv
	}
	return uint16(wnd)
}

// fillSACK reports out-of-order ranges, the most recent arrival first
// (RFC 2018 section 4), never beyond the gate's ACK limit: a SACKed byte
// is one the client may never resend. A duplicate that arrived since the
// last ACK goes first, as a D-SACK block (RFC 2883), once, and only as far
// as the ACK number.
func (c *Conn) fillSACK(s *Segment, ack Seq) {
	maxBlocks := 4
	if s.HasTS {
		maxBlocks = 3
	}
	if c.dsackPending {
		c.dsackPending = false
		// Only what lies below the ACK number: a duplicate the gate has
		// not let us acknowledge yet is, to the peer, not received, and
		// must stay that way (invariant 2).
		if end := seqMin(c.dsack.end, ack); c.dsack.start.Less(end) {
			s.SACK[0] = SACKBlock{c.dsack.start, end}
			s.NumSACK = 1
		}
	}
	add := func(r seqRange) {
		if int(s.NumSACK) >= maxBlocks || !ack.Less(r.start) {
			return
		}
		if c.gate.Enabled {
			r.end = seqMin(r.end, c.gate.AckLimit)
		}
		if !r.start.Less(r.end) {
			return
		}
		for i := range int(s.NumSACK) {
			if s.SACK[i].Start == r.start {
				return
			}
		}
		s.SACK[s.NumSACK] = SACKBlock{r.start, r.end}
		s.NumSACK++
	}
	// lastOOO may have been merged into a larger range: report that one.
	for _, r := range c.ooo {
		if r.start.LessEq(c.lastOOO.start) && c.lastOOO.start.Less(r.end) {
			add(r)
		}
	}
	for i := len(c.ooo) - 1; i >= 0; i-- {
		add(c.ooo[i])
	}
	// The blocks ride in the option space the payload leaves: a
	// full-sized segment has none, and one that outgrew the peer's MSS
	// (our MTU) would be dropped before the wire while the connection
	// counts it sent. (Each segment cut from a super-segment carries the
	// same options, hence at most mss of payload counts.)
	for s.NumSACK > 0 && s.OptionsLen()+min(len(s.Payload), c.mss()) > int(c.sendMSS) {
		s.NumSACK--
	}
}

// sendData emits n bytes starting at seq, with a FIN when fin is set.
func (c *Conn) sendData(now time.Time, emit func(*Segment), seq Seq, n int, fin bool) {
	s := c.newSegment()
	s.Seq = seq
	if n > 0 {
		if len(c.scratch) < n {
			c.scratch = make([]byte, max(n, c.mss(), int(c.cfg.MSS), c.cfg.GSOMaxSize))
		}
		s.Payload = c.sndBuf.peek(int(seq.Sub(c.sndBufSeq)), n, c.scratch)
		s.Flags |= FlagPSH
	}
	if fin {
		s.Flags |= FlagFIN
	}
	if c.rtoAt.IsZero() {
		c.rtoAt = now.Add(c.rto)
	}
	c.emitWithAck(now, emit, s)
}

// dataEnd is the sequence number after the last byte written.
func (c *Conn) dataEnd() Seq { return c.sndBufSeq.Add(uint32(c.sndBuf.size)) }

// closeAllowed reports whether the gate lets a FIN out (invariant 4).
func (c *Conn) closeAllowed() bool { return !c.gate.Enabled || c.gate.CloseOK }

// resend retransmits from seq: up to n data bytes, or the FIN when seq is
// its sequence number. It returns the sequence space sent.
func (c *Conn) resend(now time.Time, emit func(*Segment), seq Seq, n uint32) uint32 {
	end := c.dataEnd()
	if c.finSent && seq == c.finSeq {
		c.sendData(now, emit, seq, 0, true)
		return 1
	}
	// Never past SND.NXT: bytes beyond it were never sent, and the peer's
	// ACK for them would be dropped as acknowledging unsent data.
	end = seqMin(end, c.sndNxt)
	if !seq.Less(end) {
		return 0
	}
	n = min(n, end.Sub(seq), uint32(c.mss()))
	fin := c.finSent && seq.Add(n) == c.finSeq
	c.rttTiming = false // Karn
	c.rexmitSegs++
	c.sendData(now, emit, seq, int(n), fin)
	if fin {
		return n + 1
	}
	return n
}

func (c *Conn) outputRetransmissions(now time.Time, emit func(*Segment)) {
	mss := uint32(c.mss())
	if c.fastRexmit {
		c.fastRexmit = false
		from := c.sndUna
		length := mss
		if h, ok := c.nextHole(c.sndUna); ok {
			from, length = h.start, min(h.len(), mss)
		}
		if n := c.resend(now, emit, from, length); n > 0 {
			c.recoveryRexmit = seqMax(c.recoveryRexmit, from.Add(n))
		}
	}
	if c.inRecovery && c.sackOK {
		for c.pipe()+mss <= c.cwnd {
			h, ok := c.nextHole(c.recoveryRexmit)
			if !ok {
				break
			}
			n := c.resend(now, emit, h.start, min(h.len(), mss))
			if n == 0 {
				break
			}
			c.recoveryRexmit = h.start.Add(n)
		}
	}
	// Go-back-N after a timeout, paced by the congestion window: bytes
	// from SND.UNA to rexmitNxt are the ones in flight again.
	for c.rexmitNxt.Less(c.rtoRecoveryHigh) && c.rexmitNxt.Less(c.sndNxt) {
		inflight := c.rexmitNxt.Sub(c.sndUna)
		if inflight > 0 && inflight+mss > c.cwnd {
			break
		}
		n := c.resend(now, emit, c.rexmitNxt, mss)
		if n == 0 {
			c.rexmitNxt = c.sndNxt
			break
		}
		c.rexmitNxt = c.rexmitNxt.Add(n)
	}
}

func (c *Conn) outputNewData(now time.Time, emit func(*Segment)) {
	if c.rexmitNxt.Less(c.rtoRecoveryHigh) && c.rexmitNxt.Less(c.sndNxt) {
		return // finish resending before sending anything new
	}
	mss := uint32(c.mss())
	segMax := mss
	if g := uint32(c.cfg.GSOMaxSize); g > mss {
		segMax = g / mss * mss
	}
	for {
		end := c.dataEnd()
		if !c.sndNxt.Less(end) {
			break
		}
		avail := end.Sub(c.sndNxt)
		var win uint32
		if wndEnd := c.sndUna.Add(c.sndWnd); c.sndNxt.Less(wndEnd) {
			win = wndEnd.Sub(c.sndNxt)
		}
		inflight := c.flight()
		if c.inRecovery && c.sackOK {
			inflight = c.pipe()
		}
		var cw uint32
		if inflight < c.cwnd {
			cw = c.cwnd - inflight
		}
		n := min(avail, segMax, win, cw)
		if c.gate.Enabled {
			if !c.sndNxt.Less(c.gate.SendLimit) {
				n = 0
			} else {
				n = min(n, c.gate.SendLimit.Sub(c.sndNxt))
			}
		}
		if n == 0 {
			break
		}
		if n > mss && n < avail {
			n = n / mss * mss // whole segments on the wire, no runt per burst
		}
		if n < mss {
			if n < avail {
				// Limited by a window: sender silly-window avoidance
				// (RFC 9293 3.8.6.2.1) sends a small segment only when
				// it is at least half the largest window seen, or when
				// nothing is in flight: no ACK would come to release it.
				if n < c.maxSndWnd/2 && c.sndNxt != c.sndUna {
					break
				}
			} else if !c.cfg.NoDelay && c.sndNxt != c.sndUna && !c.finQueued {
				break // Nagle: a small segment waits for the ACK of the last
			}
		}
		fin := c.finQueued && !c.finSent && n == avail && c.closeAllowed()
		if !c.rttTiming && !c.tsOK && c.retries == 0 {
			c.rttTiming, c.rttSeq, c.rttStart = true, c.sndNxt, now
		}
		c.sendData(now, emit, c.sndNxt, int(n), fin)
		c.sndNxt = c.sndNxt.Add(n)
		if fin {
			c.finSent, c.finSeq = true, c.sndNxt
			c.sndNxt++
		}
	}
	if c.finQueued && !c.finSent && c.sndNxt == c.dataEnd() && c.closeAllowed() {
		c.sendData(now, emit, c.sndNxt, 0, true)
		c.finSent, c.finSeq = true, c.sndNxt
		c.sndNxt++
	}
}

// armPersist starts the persist timer when data waits on a zero window
// with nothing in flight to bring a window update (RFC 9293 3.8.6.1).
func (c *Conn) armPersist(now time.Time) {
	if c.sndWnd != 0 || c.sndNxt != c.sndUna || !c.sndNxt.Less(c.dataEnd()) {
		return
	}
	if c.persistAt.IsZero() {
		d := min(c.rto<<min(c.persistBackoff, 10), c.cfg.MaxRTO)
		c.persistAt = now.Add(max(d, c.cfg.MinRTO))
	}
}
