package tap

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/songgao/water"
	"golang.org/x/sys/unix"

	"github.com/zppratt/rfsis/link"
)

// Config says which TAP to open.
type Config struct {
	// Name is the interface name, at most 15 bytes ("tap0"). If an
	// interface of that name exists it must be a TAP, and Open attaches to
	// it; otherwise Open creates it. Empty lets the kernel pick a name
	// (tapN) for a new TAP.
	Name string
	// Offload turns on the virtio-net header with TSO and checksum
	// offload (see link.OffloadDevice): 64 KiB frames each way instead of
	// MTU-sized ones. The stack uses it when the device offers it.
	Offload bool
}

// Device is an open TAP interface. It implements link.Device.
type Device struct {
	f       *os.File
	rc      syscall.RawConn
	vnet    *vnetIO // non-nil with offloads
	name    string
	mtu     int
	created bool

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ link.OffloadDevice = (*Device)(nil)

// Open opens the TAP interface cfg.Name in the calling thread's network
// namespace, creating it if it does not exist, and sets it up.
//
// Known limitation from water: if the TUNSETIFF ioctl fails (the name
// belongs to a TAP another process holds open, say), water returns the
// error without closing /dev/net/tun, leaking one descriptor. Open checks
// beforehand that an existing interface is a TAP, which avoids the common
// cases.
func Open(cfg Config) (*Device, error) {
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap: interface name %q longer than %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	// Every step below must see the same network namespace: pin the
	// goroutine to its thread (a no-op nesting if the caller already did).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// Any socket will do for interface ioctls; it lives in this thread's
	// namespace.
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap: socket for ioctls: %w", err)
	}
	defer unix.Close(sock)

	existed := false
	if cfg.Name != "" {
		if existed, err = checkExistingTAP(sock, cfg.Name); err != nil {
			return nil, err
		}
	}

	// water always issues TUNSETPERSIST with its Persist flag, so Persist
	// false would clear the persist flag of a pre-made TAP, and the TAP
	// (with its place in the bridge) would vanish when we close it. Ask to
	// persist exactly when the TAP was there before us. (A TAP created by
	// someone else between the check above and this call would lose its
	// flag; the window is tiny and only concerns racing creators.)
	if cfg.Offload {
		f, name, err := openOffload(cfg.Name, existed)
		if err != nil {
			return nil, err
		}
		d := &Device{f: f, name: name, created: !existed, vnet: &vnetIO{}}
		d.vnet.init()
		if err := d.setup(sock); err != nil {
			f.Close()
			return nil, err
		}
		return d, nil
	}
	wcfg := water.Config{DeviceType: water.TAP}
	wcfg.Name = cfg.Name
	wcfg.Persist = existed
	ifce, err := water.New(wcfg)
	if err != nil {
		return nil, fmt.Errorf("tap: open %q: %w", cfg.Name, err)
	}
	d := &Device{name: ifce.Name(), created: !existed}

	// water opens /dev/net/tun with O_NONBLOCK and wraps it with
	// os.NewFile, which then registers it with the runtime poller: reads
	// park the goroutine instead of a thread, and Close wakes them. Check
	// rather than trust, since Close unblocking ReadFrame depends on it.
	// (Never call f.Fd(): it switches the descriptor to blocking mode, and
	// a blocked ReadFrame would then hold Close forever.)
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, fmt.Errorf("tap: water returned a %T, want *os.File", ifce.ReadWriteCloser)
	}
	d.f = f
	if err := d.setup(sock); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// checkExistingTAP reports whether name exists, failing if it exists but is
// not a TAP: TUNSETIFF would fail on it and water would leak the fd.
func checkExistingTAP(sock int, name string) (bool, error) {
	drv, err := unix.IoctlGetEthtoolDrvinfo(sock, name)
	if errors.Is(err, unix.ENODEV) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("tap: query interface %s: %w", name, err)
	}
	// The tun driver reports bus "tap" for TAP and "tun" for TUN devices.
	driver, bus := unix.ByteSliceToString(drv.Driver[:]), unix.ByteSliceToString(drv.Bus_info[:])
	if driver != "tun" || bus != "tap" {
		return false, fmt.Errorf("tap: interface %s exists but is not a TAP (driver %q, bus %q)", name, driver, bus)
	}
	return true, nil
}

// setup checks the descriptor is non-blocking, brings the interface up and
// reads its MTU.
func (d *Device) setup(sock int) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: %w", d.name, err)
	}
	d.rc = rc
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		return fmt.Errorf("tap %s: %w", d.name, err)
	}
	if ferr != nil {
		return fmt.Errorf("tap %s: fcntl: %w", d.name, ferr)
	}
	if flags&unix.O_NONBLOCK == 0 {
		return fmt.Errorf("tap %s: descriptor is in blocking mode, so Close could not unblock ReadFrame", d.name)
	}

	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", d.name, err)
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("tap %s: SIOCGIFFLAGS: %w", d.name, err)
	}
	// A TAP made by `ip tuntap add` is down; nothing flows until it is up.
	// Close does not take it down again.
	if fl := ifr.Uint16(); fl&unix.IFF_UP == 0 {
		ifr.SetUint16(fl | unix.IFF_UP)
		if err := unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("tap %s: set up: %w", d.name, err)
		}
	}
	ifr, _ = unix.NewIfreq(d.name)
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFMTU, ifr); err != nil {
		return fmt.Errorf("tap %s: SIOCGIFMTU: %w", d.name, err)
	}
	d.mtu = int(ifr.Uint32())
	return nil
}

// ReadFrame blocks until the kernel sends a frame out of the TAP and copies
// it into buf. A frame longer than buf is truncated; the rest is lost.
//
// On a device opened with Offload, frames may exceed the MTU and carry
// partial checksums: use ReadFrameOffload to learn which.
func (d *Device) ReadFrame(buf []byte) (int, error) {
	if d.vnet != nil {
		n, _, err := d.ReadFrameOffload(buf)
		return n, err
	}
	n, err := d.f.Read(buf)
	if err != nil {
		return 0, d.ioErr("read", err)
	}
	// A frame longer than buf is cut by the tun driver and, on the kernels
	// we tested (6.18), read(2) returns the cut length. The clamp keeps the
	// n <= len(buf) contract should a kernel report the full length (tun's
	// recvmsg path does, for MSG_TRUNC), since os.File passes n on as is.
	if n > len(buf) {
		n = len(buf)
	}
	return n, nil
}

// WriteFrame hands one Ethernet frame (at least 14 bytes) to the kernel, as
// if it had arrived on the TAP's wire. It does not block.
func (d *Device) WriteFrame(frame []byte) error {
	if d.vnet != nil {
		return d.WriteFrameOffload(frame, link.Offload{})
	}
	if _, err := d.f.Write(frame); err != nil {
		return d.ioErr("write", err)
	}
	return nil
}

func (d *Device) ioErr(op string, err error) error {
	if d.closed.Load() || errors.Is(err, os.ErrClosed) {
		return link.ErrClosed
	}
	// EBADFD here means the interface was deleted under us (ip link del,
	// its namespace destroyed); it does not recover.
	return fmt.Errorf("tap %s: %s: %w", d.name, op, err)
}

// MTU is the interface's MTU when it was opened (1500 unless set
// otherwise); changes made later are not seen.
func (d *Device) MTU() int { return d.mtu }

// Name is the interface name.
func (d *Device) Name() string { return d.name }

// Created reports whether Open created the interface (and Close will
// delete it) rather than attaching to a pre-made one (which Close leaves).
func (d *Device) Created() bool { return d.created }

// Close releases the TAP, waking a blocked ReadFrame. A TAP that Open
// created is deleted; a pre-made one stays, without carrier until opened
// again. Close is idempotent: later calls return nil.
func (d *Device) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.closed.Store(true)
		// For a pollable file, Close waits for blocked readers to leave and
		// for the descriptor to be really closed, so a created TAP is gone
		// when it returns.
		err = d.f.Close()
	})
	return err
}
