package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zppratt/rfsis/link"
	"github.com/zppratt/rfsis/stack/tcp"
	"github.com/zppratt/rfsis/stack/wire"
)

// Errors returned by the stack. ErrClosed matches net.ErrClosed.
var (
	ErrClosed       = fmt.Errorf("stack: %w", net.ErrClosed)
	ErrNoRoute      = errors.New("stack: no route to destination")
	ErrAddrNotOwned = errors.New("stack: address not owned by this stack")
	ErrTooBig       = errors.New("stack: packet larger than the MTU")
)

// Config is what a Stack needs. Zero ARP tunables take their defaults.
type Config struct {
	// Addr is the stack's primary IPv4 address. It sources ARP requests
	// and cannot be removed.
	Addr netip.Addr
	// Prefix is the on-link network, e.g. 10.77.250.0/24 (host bits are
	// ignored). Destinations inside it are resolved directly with ARP.
	Prefix netip.Prefix
	// MAC is the stack's Ethernet address (unicast, 6 bytes).
	MAC net.HardwareAddr
	// Gateway, if set, is the next hop for destinations outside Prefix.
	// Without it such destinations get ErrNoRoute.
	Gateway netip.Addr
	// Logger receives the stack's logs; nil discards them. Per-packet
	// drops are logged at Debug.
	Logger *slog.Logger
	// ARP tunes address resolution.
	ARP ARPConfig
	// TCP is the default configuration of TCP connections; a zero MSS
	// means the device's MTU less 40.
	TCP tcp.Config
}

// ARPConfig tunes the ARP cache. Zero fields take the values of Default.
type ARPConfig struct {
	// Lifetime is how long a learned mapping is used without being
	// confirmed again. Near its end, a mapping still in use is refreshed
	// by unicast requests so traffic never waits on it.
	Lifetime time.Duration
	// RetryInterval is the time between requests for an unresolved address.
	RetryInterval time.Duration
	// Retries is how many requests are sent before the packets waiting for
	// an address are dropped.
	Retries int
	// QueueLen bounds the packets held per unresolved address; the oldest
	// is dropped when a new one arrives at a full queue.
	QueueLen int
	// MaxEntries bounds the cache, so a flood of ARP traffic cannot grow it
	// without limit.
	MaxEntries int
}

// Default returns a Config holding the default tunables (the addresses are
// left for the caller). Lifetime follows Linux's base_reachable_time; retries
// follow its mcast_solicit, 3 requests a second apart.
func Default() Config {
	return Config{ARP: ARPConfig{
		Lifetime:      30 * time.Second,
		RetryInterval: time.Second,
		Retries:       3,
		QueueLen:      512, // a takeover sends hundreds of frames to a client it never spoke to
		MaxEntries:    1024,
	}}
}

func (c Config) withDefaults() Config {
	d := Default().ARP
	setIfZero(&c.ARP.Lifetime, d.Lifetime)
	setIfZero(&c.ARP.RetryInterval, d.RetryInterval)
	setIfZero(&c.ARP.Retries, d.Retries)
	setIfZero(&c.ARP.QueueLen, d.QueueLen)
	setIfZero(&c.ARP.MaxEntries, d.MaxEntries)
	return c
}

func setIfZero[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate reports the first invalid field of c, by name. Zero ARP tunables
// are valid (they mean the default).
func (c Config) Validate() error {
	switch {
	case !c.Addr.Is4() || !isUnicast(c.Addr):
		return fmt.Errorf("stack: Config.Addr %v is not an IPv4 unicast address", c.Addr)
	case !c.Prefix.IsValid() || !c.Prefix.Addr().Is4():
		return fmt.Errorf("stack: Config.Prefix %v is not an IPv4 prefix", c.Prefix)
	case !c.Prefix.Contains(c.Addr):
		return fmt.Errorf("stack: Config.Addr %v is outside Config.Prefix %v", c.Addr, c.Prefix)
	case isDirectedBroadcast(c.Prefix.Masked(), c.Addr):
		return fmt.Errorf("stack: Config.Addr %v is the broadcast address of Config.Prefix %v", c.Addr, c.Prefix)
	case len(c.MAC) != 6:
		return fmt.Errorf("stack: Config.MAC %v is not a 6-byte Ethernet address", c.MAC)
	case c.MAC[0]&1 != 0 || [6]byte(c.MAC) == [6]byte{}:
		return fmt.Errorf("stack: Config.MAC %v is not a unicast address", c.MAC)
	}
	if c.Gateway.IsValid() {
		switch {
		case !c.Gateway.Is4() || !isUnicast(c.Gateway):
			return fmt.Errorf("stack: Config.Gateway %v is not an IPv4 unicast address", c.Gateway)
		case !c.Prefix.Contains(c.Gateway):
			return fmt.Errorf("stack: Config.Gateway %v is outside Config.Prefix %v", c.Gateway, c.Prefix)
		case c.Gateway == c.Addr:
			return fmt.Errorf("stack: Config.Gateway %v is Config.Addr", c.Gateway)
		}
	}
	a := c.ARP
	switch {
	case a.Lifetime < 0:
		return fmt.Errorf("stack: Config.ARP.Lifetime %v is negative", a.Lifetime)
	case a.RetryInterval < 0:
		return fmt.Errorf("stack: Config.ARP.RetryInterval %v is negative", a.RetryInterval)
	case a.Retries < 0:
		return fmt.Errorf("stack: Config.ARP.Retries %d is negative", a.Retries)
	case a.QueueLen < 0:
		return fmt.Errorf("stack: Config.ARP.QueueLen %d is negative", a.QueueLen)
	case a.MaxEntries < 0:
		return fmt.Errorf("stack: Config.ARP.MaxEntries %d is negative", a.MaxEntries)
	}
	return nil
}

// isUnicast reports whether a is usable as a host address on the wire.
func isUnicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// isDirectedBroadcast reports whether a is the all-ones host of p. A /31 or
// /32 has no broadcast address (RFC 3021).
func isDirectedBroadcast(p netip.Prefix, a netip.Addr) bool {
	if p.Bits() > 30 || !p.Contains(a) {
		return false
	}
	v := a.As4()
	host := ^uint32(0) >> p.Bits()
	return (uint32(v[0])<<24|uint32(v[1])<<16|uint32(v[2])<<8|uint32(v[3]))&host == host
}

// Stack is the network stack on one link device: IPv4 with ARP and ICMP
// echo, TCP listeners and connections, the replication of those
// connections to a backup, and the hold and lease of addresses for
// failover (see the package doc). Its methods are safe for concurrent use.
type Stack struct {
	dev     link.Device
	offload link.OffloadDevice // dev, when it carries offload metadata
	mtu     int
	maxIP   int // largest IPv4 datagram we send: mtu, or with offloads as MaxFrame allows (64 KiB)
	mac     wire.MAC
	prefix  netip.Prefix
	gw      netip.Addr
	primary netip.Addr
	log     *slog.Logger
	now     func() time.Time // the clock of the ARP timers: time.Now, or a test's script

	// addrs is the immutable list of owned addresses, replaced whole under
	// mu, so the receive path reads it without a lock.
	addrs atomic.Pointer[[]netip.Addr]

	arpMu      sync.Mutex
	arp        *arpTable
	arpTick    time.Duration
	sendHeldFn func(*packet, wire.MAC) // bound once: a method value per call would allocate
	failHeldFn func(*packet)
	requestFn  func(netip.Addr)

	transport atomic.Pointer[transportBox]
	tcp       *tcpTable
	hold      atomic.Pointer[holdSpec]
	lease     atomic.Pointer[leaseSpec]
	ipID      atomic.Uint32
	pool      sync.Pool // of *packet

	stats           counters
	lastConflictLog atomic.Int64

	mu      sync.Mutex // guards closing and address changes
	closing bool       // Close has begun (under mu)
	closed  atomic.Bool
	done    chan struct{}
	wg      sync.WaitGroup
}

// New starts a stack on dev with cfg. On success the stack owns dev and
// closes it in Close; on error dev is left to the caller.
func New(dev link.Device, cfg Config) (*Stack, error) { return start(dev, cfg, time.Now) }

// start is New with the clock as a parameter, so tests can script time.
func start(dev link.Device, cfg Config, now func() time.Time) (*Stack, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mtu := dev.MTU()
	if mtu < 68 || mtu > wire.IPv4MaxLen {
		return nil, fmt.Errorf("stack: device %s MTU %d is outside 68..65535", dev.Name(), mtu)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stack{
		dev:     dev,
		mtu:     mtu,
		mac:     wire.MAC(cfg.MAC),
		prefix:  cfg.Prefix.Masked(),
		gw:      cfg.Gateway,
		primary: cfg.Addr,
		log:     log.With(slog.String("dev", dev.Name())),
		now:     now,
		arp:     newARPTable(cfg.ARP),
		done:    make(chan struct{}),
	}
	// Ticks a quarter of the retry interval apart keep retries close to
	// schedule at a few wake-ups a second.
	s.arpTick = max(cfg.ARP.RetryInterval/4, time.Millisecond)
	s.sendHeldFn = func(p *packet, mac wire.MAC) { s.sendHeld(p, mac) } // a failed write is a lost packet
	s.failHeldFn = s.failHeld
	s.requestFn = s.sendARPRequest
	s.maxIP = mtu
	if od, ok := dev.(link.OffloadDevice); ok && od.Offload() {
		maxIP := min(od.MaxFrame()-wire.EthernetHeaderLen, wire.IPv4MaxLen)
		if maxIP < mtu {
			return nil, fmt.Errorf("stack: device %s: offload frames of %d bytes are below MTU %d", dev.Name(), od.MaxFrame(), mtu)
		}
		s.offload = od
		s.maxIP = maxIP
	}
	s.addrs.Store(&[]netip.Addr{cfg.Addr})
	s.ipID.Store(rand.Uint32())
	s.pool.New = func() any { return &packet{buf: make([]byte, wire.EthernetHeaderLen+s.maxIP)} }

	tcfg := cfg.TCP
	if tcfg.MSS == 0 {
		tcfg.MSS = uint16(min(mtu-40, 0xffff))
	}
	if s.offload != nil && tcfg.GSOMaxSize == 0 {
		tcfg.GSOMaxSize = s.maxIP - wire.IPv4MinHeaderLen - 60 // room for the largest TCP header
	}
	if err := tcfg.Validate(); err != nil {
		return nil, fmt.Errorf("stack: Config.TCP: %w", err)
	}
	s.tcp = newTCPTable(s, tcfg)
	s.setTransport(s.tcp)

	s.wg.Add(2)
	go s.readLoop()
	go s.arpLoop()
	s.log.Info("stack started", slog.String("addr", cfg.Addr.String()), slog.String("prefix", s.prefix.String()),
		slog.String("mac", s.mac.String()), slog.Int("mtu", mtu))
	return s, nil
}

// Close stops the stack's goroutines, drops packets waiting for ARP and
// closes the device. It is idempotent: later calls, and calls made while
// the first is still closing, return nil at once.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	s.mu.Unlock()
	// Connections end first, while their resets can still go out.
	s.tcp.close()
	s.mu.Lock()
	s.closed.Store(true)
	close(s.done)
	s.mu.Unlock()

	err := s.dev.Close()
	s.wg.Wait()
	s.arpMu.Lock()
	s.arp.purge(s.putPacket)
	s.arpMu.Unlock()
	s.log.Info("stack closed")
	return err
}

// MTU is the largest IPv4 datagram the stack sends: the device's MTU.
func (s *Stack) MTU() int { return s.mtu }

// MAC is the stack's Ethernet address.
func (s *Stack) MAC() net.HardwareAddr { return net.HardwareAddr(slices.Clone(s.mac[:])) }

// Addr is the primary address (Config.Addr).
func (s *Stack) Addr() netip.Addr { return s.primary }

// Addresses lists the owned addresses, the primary first.
func (s *Stack) Addresses() []netip.Addr { return slices.Clone(*s.addrs.Load()) }

// HasAddress reports whether the stack owns a: it accepts packets to a,
// answers ARP for it and may send from it.
func (s *Stack) HasAddress(a netip.Addr) bool {
	for _, x := range *s.addrs.Load() {
		if x == a {
			return true
		}
	}
	return false
}

// AddAddress makes the stack own a too (a service address claimed at
// takeover, say). It does not announce it: call SendGratuitousARP. Adding an
// owned address is a no-op.
func (s *Stack) AddAddress(a netip.Addr) error {
	if !a.Is4() || !isUnicast(a) {
		return fmt.Errorf("stack: AddAddress %v: not an IPv4 unicast address", a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	cur := *s.addrs.Load()
	if slices.Contains(cur, a) {
		return nil
	}
	next := append(slices.Clip(cur), a)
	s.addrs.Store(&next)
	s.log.Info("address added", slog.String("addr", a.String()))
	return nil
}

// RemoveAddress gives up a, after which packets to it are dropped and
// sending from it fails with ErrAddrNotOwned. The primary address cannot be
// removed; removing an address not owned is a no-op.
func (s *Stack) RemoveAddress(a netip.Addr) error {
	if a == s.primary {
		return fmt.Errorf("stack: RemoveAddress %v: the primary address cannot be removed", a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.addrs.Load()
	i := slices.Index(cur, a)
	if i < 0 {
		return nil
	}
	next := slices.Delete(slices.Clone(cur), i, i+1)
	s.addrs.Store(&next)
	s.log.Info("address removed", slog.String("addr", a.String()))
	return nil
}

// readLoop is the one goroutine reading the device. Its buffer is reused
// for every frame, so whatever input hands on is valid only during the call.
func (s *Stack) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, wire.EthernetHeaderLen+s.maxIP)
	for {
		var n int
		var err error
		var off link.Offload
		if s.offload != nil {
			n, off, err = s.offload.ReadFrameOffload(buf)
		} else {
			n, err = s.dev.ReadFrame(buf)
		}
		if err != nil {
			if s.closed.Load() {
				return
			}
			if errors.Is(err, link.ErrClosed) {
				s.log.Error("device closed under the stack; receive stopped")
				return
			}
			s.stats.ReadErrors.Add(1)
			s.log.Warn("read frame", slog.Any("err", err))
			// Back off so a persistent error does not spin a core.
			select {
			case <-s.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		// A partial or verified checksum means the frame came from this
		// host's kernel, which vouches for it.
		s.inputFrame(buf[:n], off.NeedsCsum || off.DataValid)
	}
}

// input handles one received frame. It is the receive path's entry point
// (the fuzz target calls it directly) and must survive any bytes.
func (s *Stack) input(frame []byte) { s.inputFrame(frame, false) }

// inputFrame is input; trusted says the device vouches for the transport
// checksum (it may be partial, as offloads leave it).
func (s *Stack) inputFrame(frame []byte, trusted bool) {
	s.stats.FramesIn.Add(1)
	s.stats.BytesIn.Add(uint64(len(frame)))
	eth, err := wire.ParseEthernet(frame)
	if err != nil {
		s.drop(&s.stats.DropShortFrame, "short frame", err)
		return
	}
	dst := eth.Dst()
	bcast := dst == wire.BroadcastMAC
	if dst != s.mac && !bcast {
		s.drop(&s.stats.DropOtherMAC, "frame for another station", nil)
		return
	}
	switch eth.EtherType() {
	case wire.EtherTypeIPv4:
		s.handleIPv4(eth.Payload(), bcast, trusted)
	case wire.EtherTypeARP:
		s.handleARP(eth.Payload())
	default:
		s.drop(&s.stats.DropEtherType, "unsupported EtherType", nil)
	}
}

// writeFrame sends one frame and counts it.
func (s *Stack) writeFrame(b []byte) error { return s.writeFrameOffload(b, link.Offload{}) }

// writeFrameOffload sends one frame with offload metadata, which devices
// without offloads never get (the stack sends them no such frame).
func (s *Stack) writeFrameOffload(b []byte, o link.Offload) error {
	var err error
	if s.offload != nil {
		err = s.offload.WriteFrameOffload(b, o)
	} else {
		err = s.dev.WriteFrame(b)
	}
	if err != nil {
		if !s.closed.Load() {
			s.stats.WriteErrors.Add(1)
			s.log.Warn("write frame", slog.Any("err", err))
		}
		return err
	}
	s.stats.FramesOut.Add(1)
	s.stats.BytesOut.Add(uint64(len(b)))
	return nil
}

// debug reports whether Debug logs are wanted, so per-packet paths format
// nothing otherwise.
func (s *Stack) debug() bool { return s.log.Enabled(context.Background(), slog.LevelDebug) }

// drop counts a dropped packet and logs it at Debug. err may be nil.
func (s *Stack) drop(c *atomic.Uint64, reason string, err error) {
	c.Add(1)
	if s.debug() {
		if err != nil {
			s.log.LogAttrs(context.Background(), slog.LevelDebug, "drop", slog.String("reason", reason), slog.Any("err", err))
		} else {
			s.log.LogAttrs(context.Background(), slog.LevelDebug, "drop", slog.String("reason", reason))
		}
	}
}
