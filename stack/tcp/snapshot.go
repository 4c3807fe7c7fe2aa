package tcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Snapshot is a connection's whole state as a plain value: enough to
// resume the connection in another process or on another node, where
// it carries on with the same sequence numbers, windows, options,
// timestamp clock, congestion state and buffered bytes. Timers are not
// part of it: Restore re-arms them from the state.
type Snapshot struct {
	Version int
	Config  Config
	ID      FourTuple
	State   State

	ISS, IRS Seq

	SndUna, SndNxt Seq
	SndWnd         uint32
	MaxSndWnd      uint32
	SndWL1, SndWL2 Seq
	SndShift       uint8
	SndBufSeq      Seq
	SendData       []byte // written, unacknowledged bytes from SndBufSeq
	FinQueued      bool
	FinSent        bool
	FinSeq         Seq

	RcvNxt       Seq
	RcvRead      Seq
	RcvAdvEdge   Seq
	RcvShift     uint8
	RecvData     []byte // received bytes from RcvRead, in order and ahead
	OutOfOrder   []SeqRange
	RcvFinSeq    Seq
	RcvFinKnown  bool
	PeerFin      bool
	ReadShutdown bool

	SendMSS    uint16
	WScaleOK   bool
	SACKOK     bool
	TSOK       bool
	TSRecent   uint32
	TSLastSent uint32

	Cwnd, Ssthresh uint32
	InRecovery     bool
	Recover        Seq
	SRTT, RTTVar   time.Duration
	RTO            time.Duration
}

// SeqRange is a range [Start, End) of sequence space.
type SeqRange struct{ Start, End Seq }

// snapshotVersion changes whenever Snapshot's meaning does.
const snapshotVersion = 1

// Snapshot captures the connection's state. The byte slices are copies.
func (c *Conn) Snapshot() Snapshot {
	s := Snapshot{
		Version: snapshotVersion, Config: c.cfg, ID: c.id, State: c.state,
		ISS: c.iss, IRS: c.irs,
		SndUna: c.sndUna, SndNxt: c.sndNxt, SndWnd: c.sndWnd, MaxSndWnd: c.maxSndWnd,
		SndWL1: c.sndWL1, SndWL2: c.sndWL2, SndShift: c.sndShift, SndBufSeq: c.sndBufSeq,
		SendData:  c.sndBuf.bytes(0),
		FinQueued: c.finQueued, FinSent: c.finSent, FinSeq: c.finSeq,
		RcvNxt: c.rcvNxt, RcvRead: c.rcvRead, RcvAdvEdge: c.rcvAdvEdge, RcvShift: c.rcvShift,
		RcvFinSeq: c.rcvFinSeq, RcvFinKnown: c.rcvFinKnown, PeerFin: c.peerFin, ReadShutdown: c.readShutdown,
		SendMSS: c.sendMSS, WScaleOK: c.wsOK, SACKOK: c.sackOK, TSOK: c.tsOK,
		TSRecent: c.tsRecent, TSLastSent: c.tsLast,
		Cwnd: c.cwnd, Ssthresh: c.ssthresh, InRecovery: c.inRecovery, Recover: c.recover,
		SRTT: c.srtt, RTTVar: c.rttvar, RTO: c.rto,
	}
	ahead := 0
	for _, r := range c.ooo {
		s.OutOfOrder = append(s.OutOfOrder, SeqRange{r.start, r.end})
	}
	if n := len(c.ooo); n > 0 { // the bytes up to the last range's end
		ahead = int(c.ooo[n-1].end.Sub(c.rcvRead)) - c.rcvBuf.size
	}
	s.RecvData = c.rcvBuf.bytes(ahead)
	return s
}

// ErrBadSnapshot is wrapped by Restore's and UnmarshalBinary's errors.
var ErrBadSnapshot = errors.New("tcp: invalid snapshot")

// Validate checks that the snapshot is self-consistent, so that a
// corrupt or hostile one is refused rather than resumed.
func (s *Snapshot) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadSnapshot}, args...)...)
	}
	cfg := s.Config
	if err := cfg.Validate(); err != nil {
		return bad("config: %v", err)
	}
	cfg.setDefaults()
	switch {
	case s.Version != snapshotVersion:
		return bad("version %d, want %d", s.Version, snapshotVersion)
	case s.State > StateTimeWait:
		return bad("state %d", s.State)
	case !s.ID.LocalAddr.Is4() || !s.ID.RemoteAddr.Is4():
		return bad("four-tuple %v", s.ID)
	case s.SndShift > 14 || s.RcvShift > 14:
		return bad("window shift %d/%d", s.SndShift, s.RcvShift)
	case s.SndUna.Greater(s.SndNxt):
		return bad("SND.UNA %d after SND.NXT %d", s.SndUna, s.SndNxt)
	case len(s.SendData) > cfg.SendBufferSize:
		return bad("send data %d bytes over buffer %d", len(s.SendData), cfg.SendBufferSize)
	case s.SndBufSeq.Greater(s.SndUna.Add(1)) || s.SndUna.Greater(s.SndBufSeq.Add(uint32(len(s.SendData))+1)):
		return bad("send buffer at %d does not cover SND.UNA %d", s.SndBufSeq, s.SndUna)
	case s.State.synchronized() && s.SndBufSeq.Greater(s.SndUna):
		// Only a SYN (SYN-SENT, SYN-RECEIVED) lies before the buffer.
		return bad("send buffer at %d after SND.UNA %d", s.SndBufSeq, s.SndUna)
	case s.SndNxt.Greater(s.SndBufSeq.Add(uint32(len(s.SendData)) + 1)):
		return bad("SND.NXT %d beyond written data", s.SndNxt)
	case s.RcvRead.Greater(s.RcvNxt):
		return bad("RCV read point %d after RCV.NXT %d", s.RcvRead, s.RcvNxt)
	case len(s.RecvData) > cfg.ReceiveBufferSize+rcvSlack:
		return bad("receive data %d bytes over buffer %d", len(s.RecvData), cfg.ReceiveBufferSize)
	case len(s.OutOfOrder) > maxOOO:
		return bad("%d out-of-order ranges", len(s.OutOfOrder))
	case s.SendMSS < 64:
		return bad("MSS %d", s.SendMSS)
	case s.RTO <= 0 || s.SRTT < 0 || s.RTTVar < 0:
		return bad("RTT state %v/%v/%v", s.SRTT, s.RTTVar, s.RTO)
	}
	inOrder := s.RcvNxt.Sub(s.RcvRead)
	if s.PeerFin {
		inOrder-- // the FIN takes a sequence number, no buffer byte
	}
	if inOrder > uint32(len(s.RecvData)) {
		return bad("in-order bytes %d but %d buffered", inOrder, len(s.RecvData))
	}
	prev := s.RcvNxt
	for _, r := range s.OutOfOrder {
		if !prev.Less(r.Start) || !r.Start.Less(r.End) || r.End.Sub(s.RcvRead) > uint32(len(s.RecvData)) {
			return bad("out-of-order range [%d,%d)", r.Start, r.End)
		}
		prev = r.End
	}
	return nil
}

// Restore resumes a connection from a snapshot at now. Retransmission
// starts from the restored state: call Output to send what is due.
func Restore(s Snapshot, now time.Time) (*Conn, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	c := newConn(s.Config, s.ID, s.ISS, now)
	c.state, c.irs = s.State, s.IRS
	c.sndUna, c.sndNxt, c.sndWnd, c.maxSndWnd = s.SndUna, s.SndNxt, s.SndWnd, s.MaxSndWnd
	c.sndWL1, c.sndWL2, c.sndShift, c.sndBufSeq = s.SndWL1, s.SndWL2, s.SndShift, s.SndBufSeq
	c.rexmitNxt, c.rtoRecoveryHigh, c.recoveryRexmit = s.SndUna, s.SndUna, s.SndUna
	c.sndBuf.append(s.SendData)
	c.finQueued, c.finSent, c.finSeq = s.FinQueued, s.FinSent, s.FinSeq
	c.rcvNxt, c.rcvRead, c.rcvAdvEdge, c.rcvShift = s.RcvNxt, s.RcvRead, s.RcvAdvEdge, s.RcvShift
	inOrder := int(s.RcvNxt.Sub(s.RcvRead))
	if s.PeerFin {
		inOrder--
	}
	c.rcvBuf.writeAt(0, s.RecvData)
	c.rcvBuf.extend(inOrder)
	for _, r := range s.OutOfOrder {
		c.ooo = append(c.ooo, seqRange{r.Start, r.End})
	}
	c.rcvFinSeq, c.rcvFinKnown, c.peerFin, c.readShutdown = s.RcvFinSeq, s.RcvFinKnown, s.PeerFin, s.ReadShutdown
	c.sendMSS, c.wsOK, c.sackOK, c.tsOK = s.SendMSS, s.WScaleOK, s.SACKOK, s.TSOK
	c.tsRecent, c.tsLast = s.TSRecent, s.TSLastSent
	// Continue the timestamp clock where it was: the peer's PAWS check
	// drops segments whose timestamps go backwards.
	c.tsEpoch, c.tsOffset = now, s.TSLastSent+1
	c.cwnd, c.ssthresh, c.inRecovery, c.recover = s.Cwnd, s.Ssthresh, s.InRecovery, s.Recover
	c.srtt, c.rttvar, c.rto = s.SRTT, s.RTTVar, s.RTO
	c.quickAcks = 0
	if c.cwnd == 0 {
		c.cwnd = c.cfg.InitialWindow * uint32(c.mss())
	}
	c.armCloseTimer(now)
	if c.state == StateSynSent || c.state == StateSynReceived {
		c.synPending = true
	}
	if c.sndUna != c.sndNxt {
		c.rtoAt = now.Add(c.rto)
	}
	if c.cfg.KeepAlive > 0 && c.state.synchronized() {
		c.keepaliveAt = now.Add(c.cfg.KeepAlive)
	}
	return c, nil
}

// MarshalBinary encodes the snapshot.
func (s Snapshot) MarshalBinary() ([]byte, error) { return json.Marshal(s) }

// UnmarshalBinary decodes and validates a snapshot.
func (s *Snapshot) UnmarshalBinary(b []byte) error {
	var v Snapshot
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if err := v.Validate(); err != nil {
		return err
	}
	*s = v
	return nil
}
