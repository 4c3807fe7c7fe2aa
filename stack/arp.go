package stack

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/zppratt/rfsis/stack/wire"
)

// arpEntry is one cache line: a resolved mapping, or an address being
// resolved with the packets waiting for it.
type arpEntry struct {
	mac       wire.MAC
	resolved  bool
	confirmed time.Time // resolved: when the mapping was last learned
	sent      time.Time // last request sent (broadcast or refresh probe)
	tries     int       // unresolved: requests sent so far
	queue     []*packet // unresolved: waiting packets, oldest first
}

// arpTable is the ARP cache as a pure data structure: it does no I/O and
// reads no clock. Callers pass the time, and receive the frames to send
// through callbacks, so every timing rule is testable with scripted time.
// It is not safe for concurrent use; the Stack guards it with arpMu.
type arpTable struct {
	cfg     ARPConfig
	entries map[netip.Addr]*arpEntry
}

func newARPTable(cfg ARPConfig) *arpTable {
	return &arpTable{cfg: cfg, entries: make(map[netip.Addr]*arpEntry)}
}

// refreshWindow is how long before expiry a mapping in use starts being
// re-confirmed by unicast requests: room for every retry.
func (t *arpTable) refreshWindow() time.Duration {
	return min(time.Duration(t.cfg.Retries)*t.cfg.RetryInterval, t.cfg.Lifetime/2)
}

// lookup returns the MAC for ip if a live mapping exists. probe asks the
// caller to send a unicast request to mac now, because the mapping is about
// to expire and is still in use.
func (t *arpTable) lookup(ip netip.Addr, now time.Time) (mac wire.MAC, ok, probe bool) {
	e := t.entries[ip]
	if e == nil || !e.resolved {
		return wire.MAC{}, false, false
	}
	age := now.Sub(e.confirmed)
	if age >= t.cfg.Lifetime {
		return wire.MAC{}, false, false
	}
	if age >= t.cfg.Lifetime-t.refreshWindow() && now.Sub(e.sent) >= t.cfg.RetryInterval {
		e.sent = now
		probe = true
	}
	return e.mac, true, probe
}

// hold queues p until ip resolves. request reports that this is the first
// packet for ip, so the caller must broadcast a request now (the table counts
// it as the first try). dropped is a packet the caller must discard: the
// oldest of a full queue, or p itself when the table has no room.
func (t *arpTable) hold(ip netip.Addr, p *packet, now time.Time) (request bool, dropped *packet) {
	e := t.entries[ip]
	if e == nil {
		if !t.makeRoom() {
			return false, p
		}
		e = &arpEntry{}
		t.entries[ip] = e
	}
	if e.resolved { // expired: resolve afresh
		e.resolved = false
		e.tries = 0
	}
	if e.queue == nil {
		e.queue = make([]*packet, 0, t.cfg.QueueLen)
	}
	if len(e.queue) >= t.cfg.QueueLen {
		dropped = e.queue[0]
		copy(e.queue, e.queue[1:])
		e.queue[len(e.queue)-1] = nil
		e.queue = e.queue[:len(e.queue)-1]
	}
	e.queue = append(e.queue, p)
	if e.tries == 0 {
		e.tries = 1
		e.sent = now
		request = true
	}
	return request, dropped
}

// learn merges the mapping ip -> mac (RFC 826): an existing entry is
// updated; a new one is made only when create is set (the packet was a
// request for one of our addresses, so the sender will talk to us). Packets
// waiting for ip are handed to send, oldest first. learn reports whether the
// table holds the mapping afterwards.
func (t *arpTable) learn(ip netip.Addr, mac wire.MAC, now time.Time, create bool, send func(*packet, wire.MAC)) bool {
	e := t.entries[ip]
	if e == nil {
		if !create || !t.makeRoom() {
			return false
		}
		e = &arpEntry{}
		t.entries[ip] = e
	}
	e.mac = mac
	e.resolved = true
	e.confirmed = now
	e.sent = time.Time{}
	e.tries = 0
	for i, p := range e.queue {
		e.queue[i] = nil
		send(p, mac)
	}
	e.queue = e.queue[:0]
	return true
}

// tick runs the timers: it asks request to re-send for unresolved addresses
// whose retry is due, hands the packets of addresses that used up their
// retries to fail, and forgets expired mappings.
func (t *arpTable) tick(now time.Time, request func(netip.Addr), fail func(*packet)) {
	for ip, e := range t.entries {
		if e.resolved {
			if now.Sub(e.confirmed) >= t.cfg.Lifetime {
				delete(t.entries, ip)
			}
			continue
		}
		if now.Sub(e.sent) < t.cfg.RetryInterval {
			continue
		}
		if e.tries >= t.cfg.Retries {
			for _, p := range e.queue {
				fail(p)
			}
			delete(t.entries, ip)
			continue
		}
		e.tries++
		e.sent = now
		request(ip)
	}
}

// makeRoom reports whether a new entry fits, evicting the least recently
// confirmed resolved entry if the table is full. Unresolved entries hold
// packets and an answer is due soon, so they are never evicted.
func (t *arpTable) makeRoom() bool {
	if len(t.entries) < t.cfg.MaxEntries {
		return true
	}
	var victim netip.Addr
	var oldest time.Time
	found := false
	for ip, e := range t.entries {
		if e.resolved && (!found || e.confirmed.Before(oldest)) {
			victim, oldest, found = ip, e.confirmed, true
		}
	}
	if found {
		delete(t.entries, victim)
	}
	return found
}

// purge empties the table, handing every waiting packet to fail.
func (t *arpTable) purge(fail func(*packet)) {
	for ip, e := range t.entries {
		for _, p := range e.queue {
			fail(p)
		}
		delete(t.entries, ip)
	}
}

// arpLoop drives the table's timers.
func (s *Stack) arpLoop() {
	defer s.wg.Done()
	tk := time.NewTicker(s.arpTick)
	defer tk.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tk.C:
			s.arpMu.Lock()
			s.arp.tick(s.now(), s.requestFn, s.failHeldFn)
			s.arpMu.Unlock()
		}
	}
}

// handleARP processes a received ARP packet following RFC 826: merge the
// sender's mapping, add it if the packet is a request for one of our
// addresses, and answer such a request.
func (s *Stack) handleARP(b []byte) {
	a, err := wire.ParseARP(b)
	if err != nil {
		s.drop(&s.stats.ARPMalformed, "malformed ARP", err)
		return
	}
	s.stats.ARPIn.Add(1)
	op := a.Op()
	switch op {
	case wire.ARPRequest:
		s.stats.ARPRequestsIn.Add(1)
	case wire.ARPReply:
		s.stats.ARPRepliesIn.Add(1)
	}
	sha, spa, tpa := a.SenderMAC(), a.SenderIP(), a.TargetIP()
	if sha == s.mac {
		return // our own frame, looped back by a bridge
	}
	if sha.IsMulticast() || sha.IsZero() {
		// No station has such an address; learning it would blackhole
		// traffic or turn unicast into floods.
		s.drop(&s.stats.ARPMalformed, "ARP sender MAC not unicast", nil)
		return
	}
	if s.HasAddress(spa) {
		s.conflict(spa, sha)
		return
	}
	isTarget := s.HasAddress(tpa)
	// Only on-link senders are worth keeping: we never resolve anything
	// else. Sender 0.0.0.0 is an RFC 5227 probe and teaches nothing. A new
	// entry is made only for a request to us (the sender is about to talk
	// to us); like Linux, an unsolicited reply only updates, which makes
	// cache poisoning with made-up replies harder.
	if s.prefix.Contains(spa) && !spa.IsUnspecified() {
		s.arpMu.Lock()
		s.arp.learn(spa, sha, s.now(), isTarget && op == wire.ARPRequest, s.sendHeldFn)
		s.arpMu.Unlock()
	}
	if isTarget && op == wire.ARPRequest && !s.Held(tpa) {
		if s.sendARP(wire.ARPReply, sha, tpa, sha, spa) == nil {
			s.stats.ARPRepliesOut.Add(1)
		}
	}
}

// conflict records another station claiming one of our addresses: after a
// failover, the old owner still announcing the service address, say. The
// failover layer decides what to do; the stack only counts and logs (at most
// once a second, so a flood cannot flood the log).
func (s *Stack) conflict(ip netip.Addr, mac wire.MAC) {
	s.stats.ARPConflicts.Add(1)
	now := s.now().UnixNano()
	last := s.lastConflictLog.Load()
	if now-last >= int64(time.Second) && s.lastConflictLog.CompareAndSwap(last, now) {
		s.log.Warn("address conflict: another station claims our address",
			slog.String("addr", ip.String()), slog.String("mac", mac.String()))
	}
}

// sendARP writes one ARP packet from our MAC: to ethDst on the wire, with
// sender (our MAC, senderIP) and target (targetMAC, targetIP).
func (s *Stack) sendARP(op uint16, ethDst wire.MAC, senderIP netip.Addr, targetMAC wire.MAC, targetIP netip.Addr) error {
	p := s.newPacket()
	defer s.putPacket(p)
	wire.EncodeEthernet(p.buf, ethDst, s.mac, wire.EtherTypeARP)
	if _, err := wire.EncodeARP(p.buf[wire.EthernetHeaderLen:], op, s.mac, senderIP, targetMAC, targetIP); err != nil {
		return err
	}
	return s.writeFrame(p.buf[:wire.EthernetHeaderLen+wire.ARPLen])
}

// sendARPRequest broadcasts a request for ip from the primary address.
// Requests always come from the primary address: as the target learns our
// sender address (RFC 826), a request from a service address would announce
// it, which only the failover layer may decide.
func (s *Stack) sendARPRequest(ip netip.Addr) { s.sendARPProbe(ip, wire.BroadcastMAC) }

// sendARPProbe asks mac directly whether it still owns ip, refreshing a
// mapping in use before it expires (Linux's unicast probe).
func (s *Stack) sendARPProbe(ip netip.Addr, mac wire.MAC) {
	if s.sendARP(wire.ARPRequest, mac, s.primary, wire.MAC{}, ip) == nil {
		s.stats.ARPRequestsOut.Add(1)
	}
}

// SendGratuitousARP announces that this stack's MAC now owns a: an ARP
// request with sender and target address a, broadcast, which makes every
// host that has a cached mapping for a update it. The first announcement is
// sent before SendGratuitousARP returns (its error is returned); the other
// count-1 follow every interval in the background (stopped by Close or by
// RemoveAddress(a)). count < 1 counts as 1.
func (s *Stack) SendGratuitousARP(a netip.Addr, count int, interval time.Duration) error {
	if s.Held(a) {
		return fmt.Errorf("stack: gratuitous ARP for %v: the address is held", a)
	}
	if !s.HasAddress(a) {
		return fmt.Errorf("stack: gratuitous ARP for %v: %w", a, ErrAddrNotOwned)
	}
	if s.closed.Load() {
		return ErrClosed
	}
	err := s.sendGratuitous(a)
	if count <= 1 {
		return err
	}
	if interval <= 0 {
		for range count - 1 {
			s.sendGratuitous(a)
		}
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() { // Close may be waiting on wg already
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for range count - 1 {
			select {
			case <-s.done:
				return
			case <-t.C:
				if !s.HasAddress(a) || s.Held(a) {
					return
				}
				s.sendGratuitous(a)
			}
		}
	}()
	return err
}

func (s *Stack) sendGratuitous(a netip.Addr) error {
	err := s.sendARP(wire.ARPRequest, wire.BroadcastMAC, a, wire.MAC{}, a)
	if err == nil {
		s.stats.ARPGratuitousOut.Add(1)
	}
	return err
}
