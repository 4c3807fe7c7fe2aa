package tcp

import (
	"errors"
	"fmt"
	"time"
)

// Config holds a connection's tunables. The zero value of a field means
// its default (see DefaultConfig), so Config{} is usable.
type Config struct {
	// MSS is the largest segment payload we accept, advertised in our
	// SYN; default 1460 (Ethernet MTU less IPv4 and TCP headers).
	MSS uint16
	// SendBufferSize and ReceiveBufferSize bound the bytes buffered each
	// way; buffers grow on demand up to these. The receive size is the
	// window we offer. Defaults 4 MiB (send) and 1 MiB (receive).
	SendBufferSize, ReceiveBufferSize int
	// NoDelay turns Nagle's algorithm off.
	NoDelay bool
	// DisableWindowScaling, DisableSACK, DisableTimestamps turn options off.
	DisableWindowScaling, DisableSACK, DisableTimestamps bool
	// DelayedACK is the longest an ACK waits; default 40 ms (Linux's minimum).
	DelayedACK time.Duration
	// QuickACK acknowledges every in-order data segment at once, like
	// Linux's TCP_QUICKACK held on. For a connection whose peer acts on
	// our acknowledgements (the failover sync channel: the main's output
	// waits for them), a delayed ACK is added latency.
	QuickACK bool
	// InitialRTO, MinRTO, MaxRTO bound the retransmission timeout;
	// defaults 1 s (RFC 6298), 200 ms and 120 s (Linux's).
	InitialRTO, MinRTO, MaxRTO time.Duration
	// MaxRetries is how many timeouts in a row end the connection;
	// default 15 (Linux's tcp_retries2). SynRetries likewise for the
	// handshake; default 6.
	MaxRetries, SynRetries int
	// TimeWait is how long TIME-WAIT lasts; default 60 s (2 MSL, as Linux).
	TimeWait time.Duration
	// FinWait2Timeout ends a connection whose peer never sends its FIN;
	// default 60 s (Linux's tcp_fin_timeout). Negative disables.
	FinWait2Timeout time.Duration
	// KeepAlive is the idle time before keepalive probes; 0 disables.
	// KeepAliveInterval (default 75 s) and KeepAliveCount (default 9)
	// pace the probes and end the connection when all go unanswered.
	KeepAlive, KeepAliveInterval time.Duration
	KeepAliveCount               int
	// InitialWindow is the initial congestion window in segments;
	// default 10 (RFC 6928).
	InitialWindow uint32
	// ChallengeACKLimit caps RFC 5961 challenge ACKs per second per
	// connection; default 10.
	ChallengeACKLimit int
	// GSOMaxSize, when above the MSS, lets new data leave in segments of
	// up to this many payload bytes (rounded down to whole MSS-sized
	// segments) for a link with segmentation offload to cut; 0 is off.
	// Retransmissions are always MSS-sized.
	GSOMaxSize int
	// TimestampOffset is added to our timestamp clock, so that values are
	// not predictable across connections (RFC 7323 5.4) and a restored
	// connection can continue the clock it had.
	TimestampOffset uint32
}

// DefaultConfig returns the defaults, filled in.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MSS == 0 {
		c.MSS = 1460
	}
	if c.SendBufferSize == 0 {
		c.SendBufferSize = 4 << 20 // grows on demand: idle connections hold little
	}
	if c.ReceiveBufferSize == 0 {
		c.ReceiveBufferSize = 1 << 20
	}
	def(&c.DelayedACK, 40*time.Millisecond)
	def(&c.InitialRTO, time.Second)
	def(&c.MinRTO, 200*time.Millisecond)
	def(&c.MaxRTO, 120*time.Second)
	def(&c.TimeWait, 60*time.Second)
	def(&c.FinWait2Timeout, 60*time.Second)
	def(&c.KeepAliveInterval, 75*time.Second)
	if c.MaxRetries == 0 {
		c.MaxRetries = 15
	}
	if c.SynRetries == 0 {
		c.SynRetries = 6
	}
	if c.KeepAliveCount == 0 {
		c.KeepAliveCount = 9
	}
	if c.InitialWindow == 0 {
		c.InitialWindow = 10
	}
	if c.ChallengeACKLimit == 0 {
		c.ChallengeACKLimit = 10
	}
}

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("invalid TCP config")

// Validate checks the fields, naming the first bad one.
func (c Config) Validate() error {
	bad := func(field string, v any, why string) error {
		return fmt.Errorf("%w: %s = %v: %s", ErrInvalidConfig, field, v, why)
	}
	c.setDefaults()
	switch {
	case c.MSS < 88:
		return bad("MSS", c.MSS, "below 88")
	case c.SendBufferSize < 4096 || c.SendBufferSize > 1<<30:
		return bad("SendBufferSize", c.SendBufferSize, "must be 4 KiB to 1 GiB")
	case c.ReceiveBufferSize < 4096 || c.ReceiveBufferSize > 1<<30:
		return bad("ReceiveBufferSize", c.ReceiveBufferSize, "must be 4 KiB to 1 GiB")
	case c.MinRTO <= 0 || c.MinRTO > c.MaxRTO:
		return bad("MinRTO", c.MinRTO, "must be positive and at most MaxRTO")
	case c.InitialRTO < c.MinRTO || c.InitialRTO > c.MaxRTO:
		return bad("InitialRTO", c.InitialRTO, "must lie within MinRTO..MaxRTO")
	case c.MaxRetries < 1:
		return bad("MaxRetries", c.MaxRetries, "must be at least 1")
	case c.SynRetries < 1:
		return bad("SynRetries", c.SynRetries, "must be at least 1")
	case c.KeepAlive < 0:
		return bad("KeepAlive", c.KeepAlive, "must not be negative")
	case c.InitialWindow > 100:
		return bad("InitialWindow", c.InitialWindow, "above 100 segments")
	}
	return nil
}
