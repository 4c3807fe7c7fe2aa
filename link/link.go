// Package link defines the boundary between the stack and the medium that
// carries its Ethernet frames. The real medium is a Linux TAP device
// (link/tap); tests use an in-memory twin (link/pipe).
package link

import "errors"

// ErrClosed is returned by a Device's methods after Close.
var ErrClosed = errors.New("link: device closed")

// Device carries whole Ethernet frames (no preamble, no FCS).
//
// ReadFrame and WriteFrame may be called concurrently with each other
// (one reader goroutine, any number of writers). Close unblocks a pending
// ReadFrame, which then returns ErrClosed.
type Device interface {
	// ReadFrame blocks until a frame arrives and copies it into buf,
	// returning its length. A frame longer than buf is truncated to len(buf).
	ReadFrame(buf []byte) (int, error)
	// WriteFrame sends one frame. The device does not retain frame.
	WriteFrame(frame []byte) error
	// MTU is the largest IP packet the medium carries (1500 for Ethernet);
	// frames are at most MTU+14 bytes.
	MTU() int
	// Name identifies the device in logs (the TAP interface name, say).
	Name() string
	// Close releases the device. It is idempotent.
	Close() error
}
