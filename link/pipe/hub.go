package pipe

import (
	"sync"
	"sync/atomic"
)

// Hub is an in-memory Ethernet hub, the twin of a bridge for tests: every
// frame entering a port leaves by all the others (the stations filter by
// MAC address). Cut isolates a port, like a pulled cable.
type Hub struct {
	ports []*Device // the hub's ends
	cut   []atomic.Bool
	wg    sync.WaitGroup
}

// NewHub returns a hub with n ports and the host end of each.
func NewHub(n, mtu int) (*Hub, []*Device) {
	h := &Hub{cut: make([]atomic.Bool, n)}
	hosts := make([]*Device, 0, n)
	for range n {
		a, b := New(mtu)
		h.ports = append(h.ports, a)
		hosts = append(hosts, b)
	}
	for i, p := range h.ports {
		h.wg.Add(1)
		go h.forward(i, p, mtu)
	}
	return h, hosts
}

func (h *Hub) forward(i int, p *Device, mtu int) {
	defer h.wg.Done()
	buf := make([]byte, mtu+14)
	for {
		n, err := p.ReadFrame(buf)
		if err != nil {
			return
		}
		if h.cut[i].Load() {
			continue
		}
		for j, q := range h.ports {
			if j != i && !h.cut[j].Load() {
				q.WriteFrame(buf[:n])
			}
		}
	}
}

// Cut isolates port i (true) or reconnects it (false).
func (h *Hub) Cut(i int, cut bool) { h.cut[i].Store(cut) }

// Close stops the hub and waits for its goroutines.
func (h *Hub) Close() {
	for _, p := range h.ports {
		p.Close()
	}
	h.wg.Wait()
}

// Dropped counts the frames the hub could not deliver to a port because
// the station's queue was full (a congested switch port).
func (h *Hub) Dropped() uint64 {
	var n uint64
	for _, p := range h.ports {
		n += p.Stats().Dropped
	}
	return n
}

// Port returns the hub's end of port i: a filter set on it (SetFilter)
// sees, and may drop, every frame the hub delivers to station i.
func (h *Hub) Port(i int) *Device { return h.ports[i] }
