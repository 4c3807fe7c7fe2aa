package tcp

import (
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// This file holds what replication needs from a connection (see package
// failover): on the main, reading back what arrived and what the
// application wrote, so it can be shipped to the backup; on the backup, a
// standby connection that is fed the same bytes and the client's
// progress, sends nothing, and goes live at takeover.

// ErrStandby is wrapped by errors of the standby methods.
var ErrStandby = errors.New("tcp: standby")

// ReceivedEnd is the sequence number after the last in-order byte
// received (a received FIN is not counted).
func (c *Conn) ReceivedEnd() Seq { return c.rcvRead.Add(uint32(c.rcvBuf.size)) }

// AppendReceived appends the in-order received bytes from sequence number
// from (not yet read by the application, so from >= the read point) to
// dst.
func (c *Conn) AppendReceived(dst []byte, from Seq) ([]byte, error) {
	end := c.ReceivedEnd()
	if from.Less(c.rcvRead) || from.Greater(end) {
		return dst, fmt.Errorf("%w: received bytes from %d not held (%d..%d)", ErrStandby, from, c.rcvRead, end)
	}
	off, n := int(from.Sub(c.rcvRead)), int(end.Sub(from))
	return c.rcvBuf.appendTo(dst, off, n), nil
}

// WrittenEnd is the sequence number after the last byte the application
// wrote.
func (c *Conn) WrittenEnd() Seq { return c.dataEnd() }

// AppendWritten appends the written bytes from sequence number from (not
// yet acknowledged by the peer) to dst.
func (c *Conn) AppendWritten(dst []byte, from Seq) ([]byte, error) {
	return c.AppendWrittenMax(dst, from, c.sndBuf.size)
}

// AppendWrittenMax is AppendWritten of at most max bytes.
func (c *Conn) AppendWrittenMax(dst []byte, from Seq, max int) ([]byte, error) {
	end := c.dataEnd()
	if from.Less(c.sndBufSeq) || from.Greater(end) {
		return dst, fmt.Errorf("%w: written bytes from %d not held (%d..%d)", ErrStandby, from, c.sndBufSeq, end)
	}
	off, n := int(from.Sub(c.sndBufSeq)), int(end.Sub(from))
	return c.sndBuf.appendTo(dst, off, min(n, max)), nil
}

// WrittenChecksum is the CRC-32C of the n written bytes from sequence
// number from (not yet acknowledged by the peer), computed in place: the
// main ships a checksum of its output instead of the bytes when the
// backup's hot standby produces them too (package failover).
func (c *Conn) WrittenChecksum(from Seq, n int) (uint32, error) {
	end := c.dataEnd()
	if from.Less(c.sndBufSeq) || from.Greater(end) || n < 0 || n > int(end.Sub(from)) {
		return 0, fmt.Errorf("%w: written bytes %d+%d not held (%d..%d)", ErrStandby, from, n, c.sndBufSeq, end)
	}
	return c.sndBuf.checksum(0, int(from.Sub(c.sndBufSeq)), n), nil
}

// OutputChecksum is the checksum WrittenChecksum computes, of p: the
// standby's side of the comparison.
func OutputChecksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// Progress is what the backup needs to know of the client's side of the
// connection to continue it: kept current with StandbyProgress.
type Progress struct {
	SndUna     Seq    // the client has acknowledged everything before
	SndWnd     uint32 // the client's window, scaled
	TSRecent   uint32 // the client's latest timestamp
	RcvAdvEdge Seq    // the right edge of the window we advertised
	PeerFin    bool   // the client's FIN has arrived
	FinQueued  bool   // the application closed its side
	// ReceivedEnd and WrittenEnd place the FINs: the standby applies
	// PeerFin and FinQueued only once it holds every byte before them.
	ReceivedEnd, WrittenEnd Seq
}

// Progress returns the connection's progress for the backup.
func (c *Conn) Progress() Progress {
	return Progress{SndUna: c.sndUna, SndWnd: c.sndWnd, TSRecent: c.tsRecent, RcvAdvEdge: c.rcvAdvEdge,
		PeerFin: c.peerFin, FinQueued: c.finQueued, ReceivedEnd: c.ReceivedEnd(), WrittenEnd: c.dataEnd()}
}

// StandbySendSlack is how far the client's acknowledgements reported to a
// standby (StandbyProgress) may trail the main's, in bytes: a standby's
// send buffer is this much larger than the main's, so that it can always
// take the main's output (StandbyWritten). The replicating layer must
// report progress at least this often.
const StandbySendSlack = 1 << 20

// RestoreStandby makes a standby copy of a connection from the snapshot
// the main took when it opened: it sends nothing and runs no timers until
// GoLive.
func RestoreStandby(s Snapshot, now time.Time) (*Conn, error) {
	c, err := Restore(s, now)
	if err != nil {
		return nil, err
	}
	c.standby = true
	c.synPending = false
	// The standby keeps what the main keeps plus what the client has
	// acknowledged since the backup last heard of it.
	c.sndBuf.limit += StandbySendSlack
	c.stopTimers()
	return c, nil
}

// Standby reports whether the connection is a standby copy.
func (c *Conn) Standby() bool { return c.standby }

// StandbyReceive appends inbound bytes the main received, starting at
// seq, which must be the end of what the standby holds. It takes what
// fits in the receive buffer and returns how much: the backup
// acknowledges only that, which holds the main's ACKs (and so the
// client) back until the standby's application has read.
func (c *Conn) StandbyReceive(seq Seq, data []byte) (int, error) {
	if !c.standby {
		return 0, fmt.Errorf("%w: not a standby connection", ErrStandby)
	}
	if end := c.ReceivedEnd(); seq != end {
		return 0, fmt.Errorf("%w: inbound bytes at %d, expected %d", ErrStandby, seq, end)
	}
	if c.peerFin {
		return 0, fmt.Errorf("%w: inbound bytes after the peer's FIN", ErrStandby)
	}
	n := c.rcvBuf.append(data)
	c.rcvNxt = c.ReceivedEnd()
	if n > 0 {
		c.events |= EventReadable
	}
	return n, nil
}

// StandbyWritten appends outbound bytes the main's application wrote,
// starting at seq, which must be the end of what the standby holds.
func (c *Conn) StandbyWritten(seq Seq, data []byte) (int, error) {
	if !c.standby {
		return 0, fmt.Errorf("%w: not a standby connection", ErrStandby)
	}
	if end := c.dataEnd(); seq != end {
		return 0, fmt.Errorf("%w: outbound bytes at %d, expected %d", ErrStandby, seq, end)
	}
	if c.finQueued {
		return 0, fmt.Errorf("%w: outbound bytes after the FIN", ErrStandby)
	}
	return c.sndBuf.append(data), nil
}

// StandbyProgress applies the client's progress as the main saw it.
func (c *Conn) StandbyProgress(p Progress) error {
	if !c.standby {
		return fmt.Errorf("%w: not a standby connection", ErrStandby)
	}
	if c.state == StateSynReceived && p.SndUna.Greater(c.iss) {
		// The client completed the handshake with the main.
		c.establish(c.iss + 1)
		c.sndNxt = c.sndUna
	}
	if end := c.sendEnd(); p.SndUna.Less(c.sndUna) || p.SndUna.Greater(end) {
		return fmt.Errorf("%w: acknowledged %d outside %d..%d", ErrStandby, p.SndUna, c.sndUna, end)
	}
	c.dropAcked(p.SndUna)
	c.sndUna = p.SndUna
	c.sndNxt = seqMax(c.sndNxt, p.SndUna)
	c.sndWnd = p.SndWnd
	c.maxSndWnd = max(c.maxSndWnd, p.SndWnd)
	c.tsRecent = p.TSRecent
	c.rcvAdvEdge = seqMax(c.rcvAdvEdge, p.RcvAdvEdge)
	if p.FinQueued && !c.finQueued && c.dataEnd() == p.WrittenEnd {
		c.CloseWrite(time.Time{})
	}
	// The state changes of Handle, in its order: the ACK of our FIN, then
	// the peer's FIN. (The standby sends nothing, so finSent is unset.)
	if c.finQueued && c.sndUna == c.sendEnd() {
		c.ourFinAcked(time.Time{})
	}
	if p.PeerFin && !c.peerFin && c.ReceivedEnd() == p.ReceivedEnd {
		c.rcvFinKnown, c.rcvFinSeq = true, c.ReceivedEnd()
		c.rcvNxt = c.ReceivedEnd()
		c.peerFinArrived(time.Time{})
	}
	c.stopTimers() // those the state changes armed: GoLive arms them
	return nil
}

// sendEnd is the end of the send sequence space: the bytes written, then
// the FIN once queued.
func (c *Conn) sendEnd() Seq {
	if c.finQueued {
		return c.dataEnd() + 1
	}
	return c.dataEnd()
}

// takeoverTSMargin is added to the timestamp clock at takeover: the
// standby's clock runs beside the main's but may trail it by the time the
// snapshot took to arrive, and a timestamp below the one the client last
// saw would be dropped by its PAWS check. Jumping ahead is harmless.
const takeoverTSMargin = 1000

// GoLive turns a standby connection into a live one at takeover. sent is
// the end of the outbound bytes the backup acknowledged to the main: the
// main can have sent no more, and it must be SND.NXT (an ACK above SND.NXT
// is dropped, which would stall the connection for good). Everything not
// acknowledged by the client is retransmitted at once, and dupAcks
// duplicate ACKs prompt the client to resend at once what only the main
// had received (Linux counts the first after a window change as a window
// update: send five).
func (c *Conn) GoLive(now time.Time, sent Seq, dupAcks int) error {
	if !c.standby {
		return fmt.Errorf("%w: not a standby connection", ErrStandby)
	}
	finEnd := c.sendEnd()
	if sent.Less(c.sndUna) || sent.Greater(finEnd) {
		return fmt.Errorf("%w: sent up to %d outside %d..%d", ErrStandby, sent, c.sndUna, finEnd)
	}
	c.standby = false
	if c.state == StateClosed {
		return nil // it ended with the main's copy (StandbyProgress)
	}
	c.sndNxt = sent
	if c.finQueued && sent == finEnd {
		c.finSent, c.finSeq = true, c.dataEnd()
	}
	c.rexmitNxt = c.sndUna
	c.rtoRecoveryHigh = c.sndNxt
	c.recover = c.sndNxt
	c.inRecovery, c.dupAcks, c.fastRexmit = false, 0, false
	c.sacked = c.sacked[:0]
	c.retries = 0
	c.tsOffset += takeoverTSMargin
	if c.srtt == 0 {
		// A standby never sampled the round trip: its RTO is still the
		// handshake's initial one (1 s). The pair shares a LAN with the
		// client, so start from the minimum and let samples raise it.
		c.rto = c.cfg.MinRTO
	}
	if c.sndUna != c.sndNxt {
		c.rtoAt = now.Add(c.rto)
	}
	if c.cfg.KeepAlive > 0 {
		c.keepaliveAt = now.Add(c.cfg.KeepAlive)
	}
	c.armCloseTimer(now) // FIN-WAIT-2 or TIME-WAIT, reached in StandbyProgress
	c.lastRecv = now
	c.ackNow = true
	c.dupAcksToSend = max(dupAcks-1, 0)
	c.events |= EventWritable
	return nil
}
