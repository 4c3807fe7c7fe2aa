package tcp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// State is a connection state of RFC 9293 section 3.3.2.
type State uint8

// Connection states. LISTEN is not a connection state here: the stack
// keeps listeners and creates a Conn per SYN with NewPassive.
const (
	StateClosed State = iota
	StateSynSent
	StateSynReceived
	StateEstablished
	StateFinWait1
	StateFinWait2
	StateCloseWait
	StateClosing
	StateLastAck
	StateTimeWait
)

var stateNames = [...]string{"CLOSED", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// synchronized reports whether the state is past the handshake.
func (s State) synchronized() bool { return s >= StateEstablished }

// FourTuple identifies a connection.
type FourTuple struct {
	LocalAddr  netip.Addr
	LocalPort  uint16
	RemoteAddr netip.Addr
	RemotePort uint16
}

func (t FourTuple) String() string {
	return fmt.Sprintf("%v:%d<->%v:%d", t.LocalAddr, t.LocalPort, t.RemoteAddr, t.RemotePort)
}

// Events tell the owner what changed; TakeEvents returns and clears them.
type Events uint8

// The events.
const (
	EventEstablished Events = 1 << iota // handshake completed
	EventReadable                       // new in-order data, or EOF
	EventWritable                       // send buffer space freed
	EventClosed                         // connection finished: remove it; Err says why if abnormal
)

// Errors a connection ends with. They are sentinels for errors.Is.
var (
	ErrConnReset   = errors.New("connection reset by peer")
	ErrRefused     = errors.New("connection refused")
	ErrTimeout     = errors.New("connection timed out")
	ErrAborted     = errors.New("connection aborted")
	ErrWriteClosed = errors.New("write side closed")
	ErrNotOpen     = errors.New("connection not open")
)

// Gate holds back what the client may learn until a backup node knows it
// (DESIGN.md, replication invariants 1 to 4). A disabled gate passes all.
type Gate struct {
	Enabled bool
	// OpenOK lets the SYN-ACK go out (invariant 1).
	OpenOK bool
	// AckLimit is the highest sequence number the ACK field may carry:
	// inbound bytes and FIN the backup holds (invariant 2).
	AckLimit Seq
	// SendLimit is the end of the outbound bytes the backup holds
	// (invariant 3): data beyond it is not sent.
	SendLimit Seq
	// CloseOK lets a FIN or RST go out (invariant 4).
	CloseOK bool
}

// Conn is one TCP connection. It is not safe for concurrent use: the owner
// serialises calls, typically under a mutex per connection.
type Conn struct {
	cfg   Config
	id    FourTuple
	state State

	iss, irs Seq

	// Send sequence space. sndNxt is the next new byte; retransmissions
	// never move it back (an ACK above it would be dropped as acking
	// unsent data), rexmitNxt walks the go-back-N after a timeout.
	sndUna, sndNxt Seq
	rexmitNxt      Seq
	sndWnd         uint32
	maxSndWnd      uint32
	sndWL1, sndWL2 Seq
	sndShift       uint8
	sndBuf         ring
	sndBufSeq      Seq // sequence number of sndBuf's first byte
	finQueued      bool
	finSent        bool
	finSeq         Seq

	// Receive sequence space. rcvBuf's head is rcvRead; in-order bytes
	// end at rcvNxt; out-of-order bytes sit ahead, listed in ooo.
	rcvNxt     Seq
	rcvRead    Seq
	rcvAdvEdge Seq // right window edge we have advertised: never shrinks
	rcvShift   uint8
	rcvBuf     ring
	ooo        []seqRange
	// dsack is a duplicate that arrived, reported once in the next ACK
	// (RFC 2883): it tells the sender its retransmission was not needed,
	// so the duplicate ACK it rides on is no sign of a loss.
	dsack         seqRange
	dsackPending  bool
	lastOOO       seqRange // most recent out-of-order arrival, SACKed first
	rcvFinSeq     Seq
	rcvFinKnown   bool
	peerFin       bool
	segsSinceAck  int
	quickAcks     int // ACK every segment at first, as Linux's quickack does
	lastAckSent   Seq
	readShutdown  bool
	challengeAt   time.Time
	challengeSent int

	// Options.
	sendMSS  uint16 // peer's MSS, capped by ours
	wsOK     bool
	sackOK   bool
	tsOK     bool
	tsRecent uint32
	tsOffset uint32
	tsEpoch  time.Time
	tsLast   uint32

	// Congestion control and loss recovery.
	cwnd, ssthresh  uint32
	bytesAcked      uint32 // congestion-avoidance byte counter
	dupAcks         int
	inRecovery      bool
	recover         Seq
	recoveryRexmit  Seq // holes below this were resent in this recovery
	sacked          []seqRange
	fastRexmit      bool
	rtoRecoveryHigh Seq // retransmissions after a timeout run up to here

	// Spurious timeout detection (Eifel, RFC 3522): what a timeout took
	// away, given back if the first new acknowledgement after it echoes
	// a timestamp older than the retransmission (undoTS), i.e. answers
	// the original transmission: the peer was late, nothing was lost.
	undoValid              bool
	undoTS                 uint32
	undoCwnd, undoSsthresh uint32
	undoRecover            Seq

	// RTT estimation (RFC 6298).
	srtt, rttvar, rto time.Duration
	rttTiming         bool
	rttSeq            Seq
	rttStart          time.Time
	retries           int

	// Counters for Info.
	timeouts, spuriousRTOs, recoveries, rexmitSegs uint64

	// Timers: the zero time is unarmed.
	rtoAt, delackAt, persistAt, keepaliveAt, closeAt time.Time
	persistBackoff                                   int
	keepaliveProbes                                  int
	probesOut                                        int // unanswered window probes
	lastRecv                                         time.Time

	// Output requests.
	synPending bool
	ackNow     bool
	sentAck    bool // Output already carried the latest ACK
	probeNow   bool
	rstPending bool
	rstSeq     Seq

	rstAbort bool // the pending RST ends the connection: gated by CloseOK
	ackHeld  bool // the last ACK sent was held back by the gate

	standby       bool // a backup's copy: sends nothing, runs no timers
	dupAcksToSend int  // extra duplicate ACKs to send (takeover)

	gate    Gate
	out     Segment // reused for every emitted segment
	events  Events
	err     error
	scratch []byte
}

type seqRange struct{ start, end Seq }

func (r seqRange) len() uint32 { return r.end.Sub(r.start) }

func newConn(cfg Config, id FourTuple, iss Seq, now time.Time) *Conn {
	cfg.setDefaults()
	c := &Conn{
		cfg:             cfg,
		id:              id,
		iss:             iss,
		sndUna:          iss,
		sndNxt:          iss,
		rexmitNxt:       iss,
		sndBufSeq:       iss + 1,
		sndBuf:          newRing(cfg.SendBufferSize),
		rcvBuf:          newRing(cfg.ReceiveBufferSize + rcvSlack),
		rto:             cfg.InitialRTO,
		ssthresh:        ^uint32(0) >> 2,
		tsEpoch:         now,
		tsOffset:        cfg.TimestampOffset,
		quickAcks:       16,
		lastRecv:        now,
		sendMSS:         536,
		recover:         iss,
		recoveryRexmit:  iss,
		rtoRecoveryHigh: iss,
	}
	c.rcvShift = windowShift(cfg.ReceiveBufferSize)
	return c
}

// rcvSlack is receive-buffer room beyond ReceiveBufferSize for the bytes
// a window rounded up to the scale granularity may let in.
const rcvSlack = 1 << 14

// windowShift is the smallest window scale that advertises n bytes.
func windowShift(n int) uint8 {
	var s uint8
	for s < 14 && n>>s > 0xffff {
		s++
	}
	return s
}

// NewActive starts an active open: its first Output is the SYN.
func NewActive(cfg Config, id FourTuple, iss Seq, now time.Time) *Conn {
	c := newConn(cfg, id, iss, now)
	c.state = StateSynSent
	c.synPending = true
	return c
}

// NewPassive answers the SYN syn that arrived for a listener: the
// connection starts in SYN-RECEIVED and its first Output is the SYN-ACK.
// syn must be a SYN without ACK, RST or FIN.
func NewPassive(cfg Config, id FourTuple, iss Seq, syn *Segment, now time.Time) *Conn {
	c := newConn(cfg, id, iss, now)
	c.state = StateSynReceived
	c.irs = syn.Seq
	c.rcvNxt = syn.Seq + 1
	c.rcvRead = c.rcvNxt
	c.rcvAdvEdge = c.rcvNxt
	c.lastAckSent = c.rcvNxt
	c.negotiate(syn)
	c.sndWnd = uint32(syn.Window) // never scaled in a SYN
	c.maxSndWnd = c.sndWnd
	c.sndWL1 = syn.Seq
	c.sndWL2 = iss
	c.synPending = true
	c.lastRecv = now
	return c
}

// negotiate takes the options of the peer's SYN.
func (c *Conn) negotiate(syn *Segment) {
	mss := uint16(536) // RFC 9293 3.7.1 default when the option is absent
	if syn.MSS != 0 {
		mss = syn.MSS
	}
	c.sendMSS = min(mss, c.cfg.MSS)
	c.wsOK = !c.cfg.DisableWindowScaling && syn.WScale >= 0
	if c.wsOK {
		c.sndShift = uint8(syn.WScale)
	} else {
		c.rcvShift = 0
	}
	c.sackOK = !c.cfg.DisableSACK && syn.SACKPermitted
	c.tsOK = !c.cfg.DisableTimestamps && syn.HasTS
	if c.tsOK {
		c.tsRecent = syn.TSVal
	}
	c.cwnd = c.cfg.InitialWindow * uint32(c.mss())
}

// ID returns the connection's four-tuple.
func (c *Conn) ID() FourTuple { return c.id }

// State returns the connection state.
func (c *Conn) State() State { return c.state }

// Err returns why the connection ended abnormally, or nil.
func (c *Conn) Err() error { return c.err }

// TakeEvents returns the events since the last call and clears them.
func (c *Conn) TakeEvents() Events {
	e := c.events
	c.events = 0
	return e
}

// SetGate installs the replication gate; see Gate.
func (c *Conn) SetGate(g Gate) {
	// An ACK the old limit held back is owed as soon as the limit passes
	// it: nothing else would send it.
	if c.ackHeld && g.Enabled && c.lastAckSent.Less(seqMin(g.AckLimit, c.rcvNxt)) || c.ackHeld && !g.Enabled {
		c.ackNow = true
	}
	c.gate = g
}

// Gate returns the installed gate.
func (c *Conn) Gate() Gate { return c.gate }

// AbortHeld reports whether the RST of an abort waits for the gate's
// CloseOK. The connection is already CLOSED: its owner must keep it
// around (or at least its Output) until the gate lets the RST go.
func (c *Conn) AbortHeld() bool {
	return c.rstPending && c.rstAbort && c.gate.Enabled && !c.gate.CloseOK
}

// mss is the most payload one segment carries: the negotiated MSS less
// the timestamp option every segment carries when it is on.
func (c *Conn) mss() int {
	m := int(c.sendMSS)
	if c.tsOK {
		m -= 12
	}
	return max(m, 64)
}

// MSS returns the payload size of a full-sized segment.
func (c *Conn) MSS() int { return c.mss() }

// --- Application side ---

// Write queues p for sending and returns how much of it fitted in the
// send buffer. Zero with a nil error means the buffer is full: wait for
// EventWritable. Call Output afterwards.
func (c *Conn) Write(p []byte) (int, error) {
	switch {
	case c.err != nil:
		return 0, c.err
	case c.standby:
		// A standby's outbound bytes come from the main (StandbyWritten);
		// its own application's output is compared by the caller.
		return 0, fmt.Errorf("%w: write on a standby connection", ErrStandby)
	case c.finQueued:
		return 0, ErrWriteClosed
	case c.state == StateEstablished, c.state == StateCloseWait,
		c.state == StateSynSent, c.state == StateSynReceived:
	default:
		return 0, ErrNotOpen
	}
	return c.sndBuf.append(p), nil
}

// Writable is how many bytes Write would take now.
func (c *Conn) Writable() int { return c.sndBuf.free() }

// Unsent is the number of written bytes not yet acknowledged by the peer.
func (c *Conn) Unsent() int { return c.sndBuf.size }

// Read moves received in-order bytes into p. It returns 0 when nothing is
// buffered; EOF tells whether the peer has finished sending. Reading may
// open the window: call Output afterwards.
func (c *Conn) Read(p []byte) int {
	n := c.rcvBuf.read(p)
	if n == 0 {
		return 0
	}
	c.rcvRead = c.rcvRead.Add(uint32(n))
	// Tell the peer once the window we could offer has at least doubled
	// and grown by a segment (RFC 9293 3.8.6.2.2, as Linux does).
	if c.state.synchronized() && !c.peerFin {
		cur := c.advertisedWindow()
		next := c.rcvRead.Add(uint32(c.cfg.ReceiveBufferSize)).Sub(c.rcvNxt)
		if next >= 2*cur && next-cur >= uint32(c.mss()) {
			c.ackNow = true
		}
	}
	return n
}

// Readable is how many received bytes Read would return now.
func (c *Conn) Readable() int { return c.rcvBuf.size }

// EOF reports whether the peer's FIN has arrived and every byte before it
// has been read.
func (c *Conn) EOF() bool { return c.peerFin && c.rcvBuf.size == 0 }

// Close closes both directions, as close(2) does: reading stops and a FIN
// follows the data already written. Unread received data turns the close
// into a reset, as RFC 2525 asks, so the peer learns its data was not
// consumed. CloseWrite is the half-close.
func (c *Conn) Close(now time.Time) {
	if c.rcvBuf.size > 0 {
		c.Abort(now)
		return
	}
	c.CloseRead()
	c.CloseWrite(now)
}

// CloseWrite queues a FIN after the data already written.
func (c *Conn) CloseWrite(now time.Time) {
	if c.finQueued {
		return
	}
	switch c.state {
	case StateSynSent:
		c.finish(nil)
		return
	case StateSynReceived:
		// The FIN waits for the handshake (RFC 9293 3.10.4): Handle moves
		// to FIN-WAIT-1 when the SYN-ACK is acknowledged.
	case StateEstablished:
		c.state = StateFinWait1
	case StateCloseWait:
		c.state = StateLastAck
	default:
		return
	}
	c.finQueued = true
}

// CloseRead marks the read side closed: buffered and later data is
// discarded (acknowledged, never read).
func (c *Conn) CloseRead() {
	c.readShutdown = true
	c.rcvRead = c.rcvRead.Add(uint32(c.rcvBuf.size))
	c.rcvBuf.discard(c.rcvBuf.size)
}

// Abort resets the connection: an RST goes out (when synchronised) and the
// connection ends with ErrAborted.
func (c *Conn) Abort(now time.Time) {
	if c.state == StateClosed {
		return
	}
	if c.state != StateSynSent && c.state != StateTimeWait {
		c.rstPending, c.rstAbort = true, true
		c.rstSeq = c.sndNxt
	}
	c.finish(ErrAborted)
}

// finish moves to CLOSED and reports it.
func (c *Conn) finish(err error) {
	if c.err == nil {
		c.err = err
	}
	c.state = StateClosed
	c.stopTimers()
	c.events |= EventClosed | EventReadable | EventWritable
}

func (c *Conn) stopTimers() {
	c.rtoAt, c.delackAt, c.persistAt, c.keepaliveAt, c.closeAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
}

// --- Segment arrival (RFC 9293 section 3.10.7) ---

// Handle processes a segment that arrived for this connection. Call
// Output afterwards.
func (c *Conn) Handle(now time.Time, seg *Segment) {
	switch c.state {
	case StateClosed:
		return
	case StateSynSent:
		c.handleSynSent(now, seg)
		return
	}
	c.lastRecv = now
	c.keepaliveProbes = 0
	c.probesOut = 0
	rst := seg.Flags&FlagRST != 0

	// A retransmitted SYN in SYN-RECEIVED: our SYN-ACK was lost.
	if c.state == StateSynReceived && seg.Flags&(FlagSYN|FlagACK|FlagRST) == FlagSYN && seg.Seq == c.irs {
		c.synPending = true
		c.rttTiming = false // Karn: the answer to the resent SYN-ACK is ambiguous
		return
	}
	// Simultaneous open (RFC 9293 figure 8): the peer's SYN-ACK crossed
	// ours. Its SYN is the one we hold already; take the rest (a copy: the
	// caller's segment is not ours to change) as the ACK that completes
	// the handshake. Its window is unscaled, as in any SYN.
	wndShift := c.sndShift
	if c.state == StateSynReceived && seg.Flags&(FlagSYN|FlagACK|FlagRST) == FlagSYN|FlagACK &&
		seg.Seq == c.irs && seg.Ack == c.sndNxt {
		ack := *seg
		ack.Flags &^= FlagSYN
		ack.Seq++
		seg = &ack
		wndShift = 0
	}

	// PAWS (RFC 7323 5.3): an older timestamp means an old duplicate.
	if c.tsOK && seg.HasTS && !rst && int32(seg.TSVal-c.tsRecent) < 0 {
		c.ackNow = true
		return
	}

	// 1. Sequence number check.
	if !c.acceptable(seg) {
		if !rst {
			c.ackNow = true
			c.noteDuplicate(seg.Seq, len(seg.Payload))
		}
		// RFC 9293 3.10.7.4: with our window at zero no text is
		// acceptable, but valid ACKs must still be processed (the peer's
		// window probes carry them), or we resend what the peer already
		// has and miss the ACK of our FIN. Such a segment goes on without
		// its text: at RCV.NXT whatever else it carries, elsewhere only as
		// a plain ACK once synchronised.
		if c.advertisedWindow() != 0 ||
			seg.Seq != c.rcvNxt && !(c.state.synchronized() && seg.Flags&(FlagACK|FlagSYN|FlagRST) == FlagACK) {
			return
		}
		hdr := *seg
		hdr.Payload = nil
		hdr.Flags &^= FlagFIN
		seg = &hdr
	}

	// 2. RST (RFC 5961 3.2): only an exact match resets; an in-window
	// guess gets a challenge ACK.
	if rst {
		if seg.Seq != c.rcvNxt {
			c.challengeACK(now)
			return
		}
		switch c.state {
		case StateSynReceived:
			c.finish(ErrRefused)
		case StateClosing, StateLastAck, StateTimeWait:
			c.finish(nil)
		default:
			c.finish(ErrConnReset)
		}
		return
	}

	// Timestamps (RFC 7323 4.3): remember the newest from a segment that
	// covers the last ACK we sent.
	if c.tsOK && seg.HasTS && seg.Seq.LessEq(c.lastAckSent) {
		c.tsRecent = seg.TSVal
	}

	// 4. SYN in a synchronised state (RFC 5961 4.2): challenge ACK.
	if seg.Flags&FlagSYN != 0 {
		c.challengeACK(now)
		return
	}

	// 5. ACK.
	if seg.Flags&FlagACK == 0 {
		return
	}
	wnd := uint32(seg.Window) << wndShift
	if c.state == StateSynReceived {
		if !(c.sndUna.Less(seg.Ack) && seg.Ack.LessEq(c.sndNxt)) {
			c.rstPending, c.rstSeq = true, seg.Ack
			return
		}
		c.establishOn(now, c.iss+1, seg, wnd) // processAck takes any more
	}
	// RFC 5961 5.2: ACKs outside [SND.UNA - MAX.SND.WND, SND.NXT] are
	// blind injections or confusion: answer with an ACK and drop.
	if seg.Ack.Greater(c.sndNxt) || seg.Ack.Less(c.sndUna-Seq(c.maxSndWnd)) {
		c.challengeACK(now)
		return
	}
	c.processAck(now, seg, wnd)
	if c.state == StateClosed {
		return
	}
	switch c.state {
	case StateFinWait1, StateClosing, StateLastAck:
		if c.finSent && seg.Ack.Greater(c.finSeq) {
			c.ourFinAcked(now)
			if c.state == StateClosed {
				return
			}
		}
	case StateTimeWait:
		if seg.Flags&FlagFIN != 0 {
			c.ackNow = true
			c.enterTimeWait(now)
		}
		return
	}

	// 7. Segment text, 8. FIN.
	switch c.state {
	case StateEstablished, StateFinWait1, StateFinWait2:
		c.processData(now, seg)
	default:
		if len(seg.Payload) > 0 || seg.Flags&FlagFIN != 0 {
			// Data or FIN again after the peer's FIN: it retransmits
			// because our ACK was lost.
			c.ackNow = true
		}
	}
}

// acceptable is the RFC 9293 segment acceptance test.
func (c *Conn) acceptable(seg *Segment) bool {
	wnd := c.advertisedWindow()
	n := seg.Len()
	switch {
	case n == 0 && wnd == 0:
		return seg.Seq == c.rcvNxt
	case n == 0:
		return seg.Seq.InWindow(c.rcvNxt, wnd)
	case wnd == 0:
		return false // Handle still takes its ACK
	default:
		return seg.Seq.InWindow(c.rcvNxt, wnd) || seg.Seq.Add(n-1).InWindow(c.rcvNxt, wnd)
	}
}

// advertisedWindow is what remains of the window we last offered.
func (c *Conn) advertisedWindow() uint32 {
	if c.rcvAdvEdge.LessEq(c.rcvNxt) {
		return 0
	}
	return c.rcvAdvEdge.Sub(c.rcvNxt)
}

// challengeACK sends an ACK in answer to a suspicious segment, at most
// ChallengeACKLimit a second (RFC 5961 section 7).
func (c *Conn) challengeACK(now time.Time) {
	if now.Sub(c.challengeAt) >= time.Second {
		c.challengeAt, c.challengeSent = now, 0
	}
	if c.challengeSent >= c.cfg.ChallengeACKLimit {
		return
	}
	c.challengeSent++
	c.ackNow = true
}

func (c *Conn) handleSynSent(now time.Time, seg *Segment) {
	ackOK := false
	if seg.Flags&FlagACK != 0 {
		if seg.Ack.LessEq(c.iss) || seg.Ack.Greater(c.sndNxt) {
			if seg.Flags&FlagRST == 0 {
				c.rstPending, c.rstSeq = true, seg.Ack
			}
			return
		}
		ackOK = true
	}
	if seg.Flags&FlagRST != 0 {
		if ackOK {
			c.finish(ErrRefused)
		}
		return
	}
	if seg.Flags&FlagSYN == 0 {
		return
	}
	c.irs = seg.Seq
	c.rcvNxt = seg.Seq + 1
	c.rcvRead = c.rcvNxt
	c.rcvAdvEdge = c.rcvNxt
	c.negotiate(seg)
	c.lastRecv = now
	if ackOK {
		// A SYN-ACK's window is never scaled (RFC 7323 2.2).
		c.establishOn(now, seg.Ack, seg, uint32(seg.Window))
		c.ackNow = true
		return
	}
	// Simultaneous open: answer with a SYN-ACK.
	c.state = StateSynReceived
	c.sndWnd = uint32(seg.Window)
	c.maxSndWnd = c.sndWnd
	c.sndWL1 = seg.Seq
	c.synPending = true
	c.sndNxt = c.iss
}

// establish completes the handshake: the peer has acknowledged our SYN,
// and SND.UNA moves to una.
func (c *Conn) establish(una Seq) {
	c.sndUna = una
	c.rexmitNxt = una
	c.state = StateEstablished
	if c.finQueued {
		c.state = StateFinWait1 // closed during the handshake (RFC 9293 3.10.4)
	}
	c.events |= EventEstablished | EventWritable
}

// establishOn is establish on the arrival of seg, whose window, scaled as
// the segment requires, is wnd.
func (c *Conn) establishOn(now time.Time, una Seq, seg *Segment, wnd uint32) {
	c.establish(una)
	c.retries = 0
	c.rtoAt = time.Time{}
	if c.rttTiming { // the SYN or SYN-ACK was timed (sendSYN)
		c.sampleRTT(now.Sub(c.rttStart))
		c.rttTiming = false
	}
	c.sndWnd = wnd
	c.maxSndWnd = max(c.maxSndWnd, wnd)
	c.sndWL1, c.sndWL2 = seg.Seq, seg.Ack
	if c.cfg.KeepAlive > 0 {
		c.keepaliveAt = now.Add(c.cfg.KeepAlive)
	}
}

// processAck handles the acknowledgement and window fields (RFC 9293
// section 3.10.7.4, fifth check) and drives congestion control. wnd is
// the segment's window, scaled.
func (c *Conn) processAck(now time.Time, seg *Segment, wnd uint32) {
	ack := seg.Ack
	windowChanged := false
	if c.sndWL1.Less(seg.Seq) || (c.sndWL1 == seg.Seq && c.sndWL2.LessEq(ack)) {
		windowChanged = wnd != c.sndWnd
		c.sndWnd = wnd
		c.sndWL1, c.sndWL2 = seg.Seq, ack
		c.maxSndWnd = max(c.maxSndWnd, wnd)
		if wnd > 0 {
			c.persistAt = time.Time{}
			c.persistBackoff = 0
		}
	}
	newlySACKed := false
	if c.sackOK && seg.NumSACK > 0 {
		before := c.sackedBytes()
		c.updateScoreboard(seg)
		newlySACKed = c.sackedBytes() > before
	}

	if ack.Greater(c.sndUna) {
		acked := ack.Sub(c.sndUna)
		// RTT sample: from the echoed timestamp when on (RFC 7323 4.1),
		// else from the one timed segment, never a retransmitted one.
		if c.tsOK && seg.HasTS && seg.TSEcr != 0 {
			if d := int32(c.tsNow(now) - seg.TSEcr); d >= 0 {
				c.sampleRTT(time.Duration(d) * time.Millisecond)
			}
		} else if c.rttTiming && ack.Greater(c.rttSeq) {
			c.sampleRTT(now.Sub(c.rttStart))
			c.rttTiming = false
		}
		if c.undoValid {
			c.checkSpuriousRTO(seg, ack)
		}
		if c.dropAcked(ack) {
			c.events |= EventWritable
		}
		c.sndUna = ack
		if c.rexmitNxt.Less(ack) {
			c.rexmitNxt = ack
		}
		c.trimScoreboard()
		c.onNewAck(acked)
		c.retries = 0
		c.dupAcks = 0
		if c.sndUna == c.sndNxt {
			c.rtoAt = time.Time{}
		} else {
			c.rtoAt = now.Add(c.rto)
		}
		return
	}
	// A duplicate ACK (RFC 5681 section 2): nothing new, no data, no
	// window change, data outstanding.
	// With SACK, only an ACK that SACKs new data counts (RFC 6675 section
	// 2): a D-SACK for a duplicate we sent is no news of a loss, and
	// counting it feeds a storm of spurious retransmissions. Such an ACK
	// counts even when the window changed: Linux's grows on almost every
	// ACK, and the strict RFC 5681 rule would then never fire.
	if ack == c.sndUna && len(seg.Payload) == 0 && seg.Flags&(FlagSYN|FlagFIN) == 0 &&
		(!windowChanged || newlySACKed) && c.sndNxt != c.sndUna && (!c.sackOK || seg.NumSACK == 0 || newlySACKed) {
		c.onDupAck()
	}
}

// dropAcked drops the bytes before ack from the send buffer and reports
// whether there were any.
func (c *Conn) dropAcked(ack Seq) bool {
	if !ack.Greater(c.sndBufSeq) {
		return false
	}
	n := min(int(ack.Sub(c.sndBufSeq)), c.sndBuf.size)
	c.sndBuf.discard(n)
	c.sndBufSeq = c.sndBufSeq.Add(uint32(n))
	return n > 0
}

// ourFinAcked leaves the states that wait for the peer to acknowledge
// our FIN, which it now has.
func (c *Conn) ourFinAcked(now time.Time) {
	switch c.state {
	case StateFinWait1:
		c.state = StateFinWait2
		c.armCloseTimer(now)
	case StateClosing:
		c.enterTimeWait(now)
	case StateLastAck:
		c.finish(nil)
	}
}

// peerFinArrived takes the peer's FIN, every byte before it being in
// (RFC 9293 3.10.7.4, eighth check). An ACK of our FIN must have been
// applied first (ourFinAcked): in FIN-WAIT-1 ours is still unacknowledged.
func (c *Conn) peerFinArrived(now time.Time) {
	c.rcvNxt++
	c.peerFin = true
	c.ackNow = true
	c.events |= EventReadable
	switch c.state {
	case StateEstablished:
		c.state = StateCloseWait
	case StateFinWait1:
		c.state = StateClosing
	case StateFinWait2:
		c.enterTimeWait(now)
	}
}

func (c *Conn) enterTimeWait(now time.Time) {
	c.state = StateTimeWait
	c.rtoAt, c.persistAt, c.keepaliveAt = time.Time{}, time.Time{}, time.Time{}
	c.armCloseTimer(now)
}

// armCloseTimer starts the timer of the states that end by time alone.
func (c *Conn) armCloseTimer(now time.Time) {
	switch {
	case c.state == StateTimeWait:
		c.closeAt = now.Add(c.cfg.TimeWait)
	case c.state == StateFinWait2 && c.cfg.FinWait2Timeout > 0:
		c.closeAt = now.Add(c.cfg.FinWait2Timeout)
	}
}

// processData stores segment text and handles the FIN.
func (c *Conn) processData(now time.Time, seg *Segment) {
	payload := seg.Payload
	seq := seg.Seq
	if seg.Flags&FlagFIN != 0 {
		end := seq.Add(uint32(len(payload)))
		if !c.rcvFinKnown || end != c.rcvFinSeq {
			c.rcvFinSeq, c.rcvFinKnown = end, true
		}
	}
	if seq.Less(c.rcvNxt) { // trim what we already have
		d := c.rcvNxt.Sub(seq)
		c.noteDuplicate(seq, min(int(d), len(payload)))
		if int(d) >= len(payload) {
			payload = nil
		} else {
			payload = payload[d:]
		}
		seq = c.rcvNxt
		c.ackNow = true
	}
	// Trim to the buffer's edge; the advertised window never exceeds it.
	// (The advertised edge may lie up to rcvSlack past the buffer: see
	// windowField.)
	edge := seqMin(seqMax(c.rcvRead.Add(uint32(c.cfg.ReceiveBufferSize)), c.rcvAdvEdge),
		c.rcvRead.Add(uint32(c.rcvBuf.limit)))
	if len(payload) > 0 && seq.Add(uint32(len(payload))).Greater(edge) {
		if seq.GreaterEq(edge) {
			payload = nil
		} else {
			payload = payload[:edge.Sub(seq)]
		}
		c.ackNow = true
	}
	if len(payload) > 0 {
		c.rcvBuf.writeAt(int(seq.Sub(c.rcvRead)), payload)
		end := seq.Add(uint32(len(payload)))
		if seq == c.rcvNxt {
			hadOOO := len(c.ooo) > 0
			c.rcvNxt = end
			for len(c.ooo) > 0 && c.ooo[0].start.LessEq(c.rcvNxt) {
				c.rcvNxt = seqMax(c.rcvNxt, c.ooo[0].end)
				c.ooo = c.ooo[:copy(c.ooo, c.ooo[1:])]
			}
			c.rcvBuf.extend(int(c.rcvNxt.Sub(c.rcvRead)) - c.rcvBuf.size)
			c.events |= EventReadable
			c.segsSinceAck++
			switch {
			case hadOOO || c.cfg.QuickACK || c.quickAcks > 0 || c.segsSinceAck >= 2 || len(payload) > c.mss():
				// (A payload above the MSS is several segments the
				// link glued together: it counts as two.)
				// Every second full segment (RFC 9293 3.8.6.3), at
				// once when a hole fills (RFC 5681 4.2).
				c.ackNow = true
				if c.quickAcks > 0 {
					c.quickAcks--
				}
			case c.delackAt.IsZero():
				c.delackAt = now.Add(c.cfg.DelayedACK)
			}
		} else {
			c.addOOO(seqRange{seq, end})
			c.ackNow = true // a duplicate ACK tells the sender of the hole
		}
	}
	if c.readShutdown && c.rcvBuf.size > 0 {
		// The application will never read: consume what is in order at
		// once (it was queued, merged and acknowledged as usual).
		c.rcvRead = c.rcvRead.Add(uint32(c.rcvBuf.size))
		c.rcvBuf.discard(c.rcvBuf.size)
	}
	if c.rcvFinKnown && !c.peerFin && c.rcvNxt == c.rcvFinSeq {
		c.peerFinArrived(now)
	}
}

// noteDuplicate records that the n bytes from seq arrived again, for the
// next ACK's D-SACK block. Only bytes below RCV.NXT count.
func (c *Conn) noteDuplicate(seq Seq, n int) {
	if !c.sackOK || n <= 0 || !seq.Less(c.rcvNxt) {
		return
	}
	c.dsack = seqRange{seq, seqMin(seq.Add(uint32(n)), c.rcvNxt)}
	c.dsackPending = true
}

// maxOOO bounds the out-of-order list: a peer cannot make us keep more
// ranges than this; segments making more are dropped (and resent later).
const maxOOO = 64

// addOOO records an out-of-order arrival. (fillSACK finds the range that
// r merged into by r's start.)
func (c *Conn) addOOO(r seqRange) {
	c.lastOOO = r
	c.ooo = insertRange(c.ooo, r, maxOOO)
}

// SetNoDelay turns Nagle's algorithm off (true) or back on. It sends
// nothing itself: a segment Nagle held goes out on the next Output, which
// the owner should call at once, as Linux's TCP_NODELAY pushes pending
// data.
func (c *Conn) SetNoDelay(noDelay bool) { c.cfg.NoDelay = noDelay }

// SndUna is the oldest unacknowledged sequence number: the peer has
// acknowledged everything before it.
func (c *Conn) SndUna() Seq { return c.sndUna }

// Info is a snapshot of a connection's send and receive state, as
// Linux's TCP_INFO gives one: for logs and status pages, not for
// decisions.
type Info struct {
	State State
	// SndUna, SndNxt: the oldest unacknowledged and the next new byte.
	SndUna, SndNxt Seq
	// SndWnd is the peer's latest window; Cwnd the congestion window.
	SndWnd, Cwnd uint32
	// Unacked is the bytes written and not yet acknowledged, sent or not.
	Unacked int
	// Unread is the bytes received in order and not yet read.
	Unread int
	// RTO, SRTT: the retransmission timeout and the smoothed round trip.
	RTO, SRTT time.Duration
	// Retries counts the consecutive timeouts without progress.
	Retries int
	// ProbesOut counts the window probes unanswered by an open window.
	ProbesOut int
	// Timeouts, Recoveries, RexmitSegs count since the connection began
	// the retransmission timeouts, the fast recoveries entered and the
	// segments sent again; SpuriousTimeouts, the timeouts found spurious
	// and undone (a late peer, not a loss: see checkSpuriousRTO).
	Timeouts, SpuriousTimeouts, Recoveries, RexmitSegs uint64
}

// Info returns the connection's state now.
func (c *Conn) Info() Info {
	return Info{
		State: c.state, SndUna: c.sndUna, SndNxt: c.sndNxt,
		SndWnd: c.sndWnd, Cwnd: c.cwnd,
		Unacked: c.sndBuf.size, Unread: c.rcvBuf.size,
		RTO: c.rto, SRTT: c.srtt, Retries: c.retries, ProbesOut: c.probesOut,
		Timeouts: c.timeouts, SpuriousTimeouts: c.spuriousRTOs, Recoveries: c.recoveries, RexmitSegs: c.rexmitSegs,
	}
}

// String renders the snapshot for a log line.
func (i Info) String() string {
	return fmt.Sprintf("%v una=%d nxt=%d wnd=%d cwnd=%d unacked=%d unread=%d rto=%v srtt=%v retries=%d probes=%d timeouts=%d spurious=%d recoveries=%d rexmit=%d",
		i.State, i.SndUna, i.SndNxt, i.SndWnd, i.Cwnd, i.Unacked, i.Unread, i.RTO, i.SRTT, i.Retries, i.ProbesOut,
		i.Timeouts, i.SpuriousTimeouts, i.Recoveries, i.RexmitSegs)
}
