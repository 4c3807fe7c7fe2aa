package link

// Offload is the metadata a frame carries across a device with
// segmentation and checksum offload (Linux's virtio_net_hdr): it lets one
// 64 KiB TCP frame stand for many wire-sized ones, so a bulk transfer costs
// one system call per 64 KiB instead of one per 1.5 KiB.
type Offload struct {
	// GSOSize, when non-zero, marks a TCP/IPv4 super-segment: its payload
	// is to be cut into segments of GSOSize bytes, each with a copy of
	// the headers (the kernel does it on output; on input it tells that
	// the kernel glued several segments together).
	GSOSize uint16
	// HdrLen is the length of the Ethernet, IP and TCP headers of a
	// super-segment.
	HdrLen uint16
	// NeedsCsum says the transport checksum is partial: the field at
	// CsumStart+CsumOffset holds only the pseudo-header sum, to be
	// completed over the bytes from CsumStart on. On input it means the
	// frame came from this host's kernel and was never on a wire.
	NeedsCsum             bool
	CsumStart, CsumOffset uint16
	// DataValid says the kernel already verified the checksum (input).
	DataValid bool
}

// OffloadDevice is a Device that can carry offload metadata and frames
// larger than the MTU. Whether it does is fixed when it is opened: a TAP
// opened without offloads implements the interface but reports false
// from Offload, and is then used through Device's methods only. Devices
// that never offload (link/pipe) implement Device only.
type OffloadDevice interface {
	Device
	// Offload reports whether the device carries offload metadata; when
	// false, the methods below are not used.
	Offload() bool
	// MaxFrame is the largest frame ReadFrameOffload may return and
	// WriteFrameOffload may take.
	MaxFrame() int
	// ReadFrameOffload is ReadFrame, with the frame's offload metadata.
	ReadFrameOffload(buf []byte) (int, Offload, error)
	// WriteFrameOffload is WriteFrame with offload metadata.
	WriteFrameOffload(frame []byte, o Offload) error
}
