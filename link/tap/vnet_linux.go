package tap

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zppratt/rfsis/link"
)

// This file opens a TAP with IFF_VNET_HDR and TSO/checksum offloads.
// water cannot do it: the flag must be given to TUNSETIFF, which water
// issues itself. So Open, when Config.Offload is set, makes the ioctls
// here; the behaviour around them (persist flag, bringing the link up,
// non-blocking descriptor, Close) is the same as water's path.

// vnetHdrLen is the size of struct virtio_net_hdr, the kernel's default
// for TUNSETVNETHDRSZ. Its fields are in native byte order on a legacy
// (non-virtio-1.0) TAP, which is little-endian on every platform we run.
const vnetHdrLen = 10

// virtio_net_hdr flags and GSO types (linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1
	vnetFlagDataValid = 2
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
)

// maxOffloadFrame is the largest frame with offloads: a 64 KiB IPv4
// datagram plus its Ethernet header.
const maxOffloadFrame = 14 + 65535

// openOffload opens /dev/net/tun as TAP name with a virtio-net header and
// TSO4 plus checksum offload turned on.
func openOffload(name string, persist bool) (*os.File, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: %w", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: TUNSETIFF %q: %w", name, err)
	}
	name = ifr.Name()
	p := 0
	if persist {
		p = 1
	}
	// Like water: state the persist flag explicitly, so a TAP we created
	// goes away with us and a pre-made one stays.
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, p); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: TUNSETPERSIST: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: TUNSETOFFLOAD: %w", err)
	}
	sz := vnetHdrLen
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETVNETHDRSZ, uintptr(unsafe.Pointer(&sz))); errno != 0 {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: TUNSETVNETHDRSZ: %w", errno)
	}
	runtime.KeepAlive(&sz)
	// os.NewFile sees O_NONBLOCK and registers the descriptor with the
	// runtime poller, so reads park goroutines and Close wakes them.
	return os.NewFile(uintptr(fd), "/dev/net/tun"), name, nil
}

// MaxFrame is the largest frame with offloads; without them, MTU+14.
func (d *Device) MaxFrame() int {
	if d.vnet != nil {
		return maxOffloadFrame
	}
	return d.mtu + 14
}

// Offload reports whether the device carries offload metadata.
func (d *Device) Offload() bool { return d.vnet != nil }

// vnetIO holds the state of offload reads and writes: iovecs and poller
// callbacks bound once, so a frame costs no allocation.
type vnetIO struct {
	rmu  sync.Mutex
	rhdr [vnetHdrLen]byte
	riov [2]unix.Iovec
	rn   int
	rerr unix.Errno
	rfn  func(uintptr) bool

	wmu  sync.Mutex
	whdr [vnetHdrLen]byte
	wiov [2]unix.Iovec
	wn   int
	werr unix.Errno
	wfn  func(uintptr) bool
}

// init binds the read and write functions once (no closure allocated per
// frame).
//
// They make raw system calls, which the Go scheduler does not see. The
// descriptor is non-blocking, so neither call ever waits: a read with no
// frame returns EAGAIN (the poller then parks the goroutine), and a write
// only does work, although a write delivers the frame through the
// bridge, and often into the receiving stack, before it returns, tens of
// microseconds. Announced to the scheduler (unix.Syscall), such a call
// lets the runtime's monitor hand the goroutine's P to another thread and
// keeps the monitor waking every 20 µs; on a virtual machine, where every
// thread switch is expensive, that was most of a replicated round trip's
// CPU time (BENCHMARKS.md, "Replication cost"). gVisor's fdbased link
// writes with raw calls for the same reason.
func (v *vnetIO) init() {
	v.rfn = func(fd uintptr) bool {
		n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&v.riov[0])), 2)
		v.rn, v.rerr = int(n), e
		return e != unix.EAGAIN
	}
	v.wfn = func(fd uintptr) bool {
		n, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&v.wiov[0])), 2)
		v.wn, v.werr = int(n), e
		return e != unix.EAGAIN
	}
}

// ReadFrameOffload reads a frame and its offload metadata. Without
// offloads the metadata is empty.
func (d *Device) ReadFrameOffload(buf []byte) (int, link.Offload, error) {
	if d.vnet == nil {
		n, err := d.ReadFrame(buf)
		return n, link.Offload{}, err
	}
	if len(buf) == 0 {
		return 0, link.Offload{}, fmt.Errorf("tap %s: empty read buffer", d.name)
	}
	v := d.vnet
	v.rmu.Lock()
	defer v.rmu.Unlock()
	v.riov[0].Base, v.riov[0].Len = &v.rhdr[0], vnetHdrLen
	v.riov[1].Base, v.riov[1].Len = &buf[0], uint64(len(buf))
	err := d.rc.Read(v.rfn)
	v.riov[1].Base = nil // do not keep the caller's buffer reachable
	if err == nil && v.rerr != 0 {
		err = v.rerr
	}
	if err != nil {
		return 0, link.Offload{}, d.ioErr("read", err)
	}
	n := v.rn
	if n < vnetHdrLen {
		return 0, link.Offload{}, fmt.Errorf("tap %s: short read of %d bytes", d.name, n)
	}
	hdr := v.rhdr
	var o link.Offload
	o.NeedsCsum = hdr[0]&vnetFlagNeedsCsum != 0
	o.DataValid = hdr[0]&vnetFlagDataValid != 0
	if hdr[1]&^0x80 == vnetGSOTCPv4 { // 0x80 is the ECN bit
		o.GSOSize = binary.LittleEndian.Uint16(hdr[4:])
	}
	o.HdrLen = binary.LittleEndian.Uint16(hdr[2:])
	o.CsumStart = binary.LittleEndian.Uint16(hdr[6:])
	o.CsumOffset = binary.LittleEndian.Uint16(hdr[8:])
	return min(n-vnetHdrLen, len(buf)), o, nil
}

// WriteFrameOffload writes a frame with offload metadata.
func (d *Device) WriteFrameOffload(frame []byte, o link.Offload) error {
	if d.vnet == nil {
		return d.WriteFrame(frame)
	}
	if len(frame) < 14 || len(frame) > maxOffloadFrame {
		return fmt.Errorf("tap %s: frame of %d bytes: %w", d.name, len(frame), unix.EINVAL)
	}
	v := d.vnet
	v.wmu.Lock()
	defer v.wmu.Unlock()
	v.whdr = [vnetHdrLen]byte{}
	if o.NeedsCsum {
		v.whdr[0] = vnetFlagNeedsCsum
	}
	if o.GSOSize > 0 {
		v.whdr[1] = vnetGSOTCPv4
		binary.LittleEndian.PutUint16(v.whdr[4:], o.GSOSize)
	}
	binary.LittleEndian.PutUint16(v.whdr[2:], o.HdrLen)
	binary.LittleEndian.PutUint16(v.whdr[6:], o.CsumStart)
	binary.LittleEndian.PutUint16(v.whdr[8:], o.CsumOffset)
	v.wiov[0].Base, v.wiov[0].Len = &v.whdr[0], vnetHdrLen
	v.wiov[1].Base, v.wiov[1].Len = &frame[0], uint64(len(frame))
	err := d.rc.Write(v.wfn)
	v.wiov[1].Base = nil
	if err == nil && v.werr != 0 {
		err = v.werr
	}
	if err != nil {
		return d.ioErr("write", err)
	}
	return nil
}
