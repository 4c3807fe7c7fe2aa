package stack

import (
	"net/netip"
	"testing"

	"github.com/zppratt/rfsis/link/pipe"
)

// FuzzStackInput feeds arbitrary frames to the receive path. Nothing reads
// the peer's end: the pipe drops what the stack sends once its queue fills.
func FuzzStackInput(f *testing.F) {
	for _, tpl := range templates() {
		f.Add(tpl)
	}
	a, b := pipe.New(1500)
	cfg := testConfig(f)
	cfg.Logger = nil
	s, err := New(a, cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close(); b.Close() })
	s.setTransport(touchTransport{})
	if err := s.AddAddress(svcIP); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		s.input(frame)
	})
}

// touchTransport reads every byte it is given, so an out-of-bounds segment
// shows up under the race detector or as a panic.
type touchTransport struct{}

func (touchTransport) handleTCP(_, _ netip.Addr, segment []byte, _ bool) {
	var x byte
	for _, c := range segment {
		x ^= c
	}
	_ = x
}
