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
// Not yet supported: IFF_VNET_HDR offloads and multiqueue. water sets the
// TUNSETIFF flags itself and offers no IFF_VNET_HDR, so those will need our
// own TUNSETIFF (golang.org/x/sys/unix) in a _linux.go file here.
package tap
