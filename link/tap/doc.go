// Package tap is the link.Device for a Linux TAP interface, opened through
// github.com/songgao/water.
//
// Open attaches to a TAP that already exists (made by bridge.sh or
// `ip tuntap add dev tap0 mode tap`, normally persistent and enslaved to a
// bridge) or creates one. It leaves the interface as it found it: a
// pre-made TAP stays after Close, a TAP that Open created disappears with
// it. Open brings the interface up so frames flow, and reads its MTU.
//
// Open acts in the network namespace of the calling OS thread. To open a
// TAP in another namespace, call it from a thread that has entered that
// namespace (internal/netns's NS.Do in tests); the descriptor keeps working
// from any thread afterwards.
//
// ReadFrame and WriteFrame go through the runtime's network poller and
// allocate nothing per frame; Close wakes a blocked ReadFrame, which then
// returns link.ErrClosed.
//
// With Config.Offload, Open makes the TUNSETIFF ioctl itself (water offers
// no IFF_VNET_HDR) and turns on the virtio-net header with TSO4 and
// checksum offload (vnet_linux.go): the Device is then a
// link.OffloadDevice whose Offload reports true, and frames of up to 64
// KiB go each way. Not supported: multiqueue.
package tap
