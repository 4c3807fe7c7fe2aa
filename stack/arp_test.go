package stack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/zppratt/rfsis/stack/wire"
)

// These tests script time: the table reads no clock.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testTable() *arpTable {
	return newARPTable(ARPConfig{Lifetime: 30 * time.Second, RetryInterval: time.Second, Retries: 3, QueueLen: 3, MaxEntries: 4})
}

type tickLog struct {
	requests []netip.Addr
	failed   []*packet
	sent     []*packet
}

func (l *tickLog) request(ip netip.Addr)        { l.requests = append(l.requests, ip) }
func (l *tickLog) fail(p *packet)               { l.failed = append(l.failed, p) }
func (l *tickLog) send(p *packet, mac wire.MAC) { l.sent = append(l.sent, p) }

func TestTableResolve(t *testing.T) {
	tb, l := testTable(), &tickLog{}
	p1, p2 := &packet{n: 1}, &packet{n: 2}
	if req, drop := tb.hold(peerIP, p1, t0); !req || drop != nil {
		t.Fatalf("first hold: request %v dropped %v", req, drop)
	}
	if req, _ := tb.hold(peerIP, p2, t0.Add(time.Millisecond)); req {
		t.Fatal("second packet asked for another request")
	}
	if _, ok, _ := tb.lookup(peerIP, t0); ok {
		t.Fatal("unresolved entry looked up")
	}
	// Learning from a packet we were not the target of updates the entry
	// (it exists) and releases the packets in order.
	if !tb.learn(peerIP, peerMAC, t0.Add(time.Second/2), false, l.send) {
		t.Fatal("learn refused")
	}
	if len(l.sent) != 2 || l.sent[0] != p1 || l.sent[1] != p2 {
		t.Fatalf("released %v", l.sent)
	}
	mac, ok, probe := tb.lookup(peerIP, t0.Add(time.Second))
	if !ok || mac != peerMAC || probe {
		t.Fatalf("lookup %v %v %v", mac, ok, probe)
	}
	// Nothing pending: ticks send nothing.
	tb.tick(t0.Add(10*time.Second), l.request, l.fail)
	if len(l.requests) != 0 || len(l.failed) != 0 {
		t.Fatal("tick acted on a resolved entry")
	}
}

func TestTableLearnCreatesOnlyWhenTarget(t *testing.T) {
	tb, l := testTable(), &tickLog{}
	if tb.learn(peerIP, peerMAC, t0, false, l.send) {
		t.Fatal("created an entry for an ARP packet not aimed at us")
	}
	if !tb.learn(peerIP, peerMAC, t0, true, l.send) {
		t.Fatal("target: entry not created")
	}
	if _, ok, _ := tb.lookup(peerIP, t0); !ok {
		t.Fatal("not found")
	}
}

func TestTableRetriesThenFails(t *testing.T) {
	tb, l := testTable(), &tickLog{}
	p := &packet{}
	tb.hold(otherIP, p, t0) // request 1 is the caller's
	for i, at := range []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond, 2 * time.Second, 2999 * time.Millisecond} {
		tb.tick(t0.Add(at), l.request, l.fail)
		want := []int{0, 1, 1, 2, 2}[i] // retries at 1s and 2s
		if len(l.requests) != want {
			t.Fatalf("at %v: %d retries, want %d", at, len(l.requests), want)
		}
	}
	if len(l.failed) != 0 {
		t.Fatal("failed early")
	}
	tb.tick(t0.Add(3*time.Second), l.request, l.fail)
	if len(l.requests) != 2 || len(l.failed) != 1 || l.failed[0] != p {
		t.Fatalf("at 3s: %d requests, failed %v", len(l.requests), l.failed)
	}
	if len(tb.entries) != 0 {
		t.Fatal("failed entry kept")
	}
}

func TestTableQueueBound(t *testing.T) {
	tb := testTable()
	ps := []*packet{{n: 0}, {n: 1}, {n: 2}, {n: 3}, {n: 4}}
	for i, p := range ps {
		_, drop := tb.hold(peerIP, p, t0)
		switch {
		case i < 3 && drop != nil:
			t.Fatalf("packet %d dropped %v", i, drop)
		case i >= 3 && drop != ps[i-3]:
			t.Fatalf("packet %d: dropped %v, want the oldest %v", i, drop, ps[i-3])
		}
	}
	q := tb.entries[peerIP].queue
	if len(q) != 3 || q[0] != ps[2] || q[2] != ps[4] {
		t.Fatalf("queue %v", q)
	}
}

func TestTableExpiryAndProbe(t *testing.T) {
	tb, l := testTable(), &tickLog{}
	tb.learn(peerIP, peerMAC, t0, true, l.send)
	// Refresh window: the last Retries*RetryInterval = 3s of the lifetime.
	if _, ok, probe := tb.lookup(peerIP, t0.Add(26*time.Second)); !ok || probe {
		t.Fatal("probe before the window")
	}
	if _, ok, probe := tb.lookup(peerIP, t0.Add(27*time.Second)); !ok || !probe {
		t.Fatal("no probe at the window's start")
	}
	if _, _, probe := tb.lookup(peerIP, t0.Add(27500*time.Millisecond)); probe {
		t.Fatal("probed again within RetryInterval")
	}
	if _, _, probe := tb.lookup(peerIP, t0.Add(28*time.Second)); !probe {
		t.Fatal("no second probe a RetryInterval later")
	}
	if _, ok, _ := tb.lookup(peerIP, t0.Add(30*time.Second)); ok {
		t.Fatal("expired mapping still valid")
	}
	// Holding on an expired entry resolves afresh.
	if req, _ := tb.hold(peerIP, &packet{}, t0.Add(31*time.Second)); !req {
		t.Fatal("no request for an expired entry")
	}
	// tick forgets expired, unused entries.
	tb.learn(otherIP, peerMAC, t0, true, l.send)
	tb.tick(t0.Add(30*time.Second), l.request, l.fail)
	if _, ok := tb.entries[otherIP]; ok {
		t.Fatal("expired entry not swept")
	}
	// A reply refreshes the mapping for a whole lifetime.
	tb.learn(peerIP, peerMAC, t0.Add(40*time.Second), true, l.send)
	if _, ok, probe := tb.lookup(peerIP, t0.Add(60*time.Second)); !ok || probe {
		t.Fatal("refreshed mapping")
	}
}

func TestTableBoundAndEviction(t *testing.T) {
	tb, l := testTable(), &tickLog{} // MaxEntries 4
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 77, 1, byte(10 + i)}) }
	// Two unresolved, two resolved (the older one learned first).
	tb.hold(addr(0), &packet{}, t0)
	tb.hold(addr(1), &packet{}, t0)
	tb.learn(addr(2), peerMAC, t0, true, l.send)
	tb.learn(addr(3), peerMAC, t0.Add(time.Second), true, l.send)
	// A fifth evicts the least recently confirmed resolved entry.
	if !tb.learn(addr(4), peerMAC, t0.Add(2*time.Second), true, l.send) {
		t.Fatal("no room made")
	}
	if _, ok := tb.entries[addr(2)]; ok {
		t.Fatal("evicted the wrong entry")
	}
	tb.hold(addr(5), &packet{}, t0) // evicts addr(3)
	tb.hold(addr(6), &packet{}, t0) // evicts addr(4)
	// Only unresolved entries are left: they hold packets and are not evicted.
	p := &packet{}
	if _, drop := tb.hold(addr(7), p, t0); drop != p {
		t.Fatal("full table of pending entries accepted another")
	}
	if tb.learn(addr(8), peerMAC, t0, true, l.send) {
		t.Fatal("full table learned")
	}
	if len(tb.entries) != 4 {
		t.Fatalf("%d entries", len(tb.entries))
	}
	n := 0
	tb.purge(func(*packet) { n++ })
	if n != 4 || len(tb.entries) != 0 {
		t.Fatalf("purge released %d packets, %d entries left", n, len(tb.entries))
	}
}
