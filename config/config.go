// Package config loads and validates an RFSIS node's configuration file,
// conf/config.json.
//
// The file is one JSON object. The nine keys of the original project keep
// their meaning (backup, backup_addr, ipv4_addr, port, netmask,
// heartbeat_timer, debug_mode, tap_device_name, main_heartbeats); the others
// are documented on the fields of [Config]. The same file, with "backup" set
// to true and otherwise identical, configures the second node.
//
// # Syntax
//
// The file is standard JSON (RFC 8259, UTF-8) with a single tolerance: a
// trailing comma before a closing brace or bracket is accepted, because the
// original project's documented example has one and existing files copied
// from it must keep loading. Anything else that is not JSON is rejected with
// its line and column. A leading UTF-8 byte order mark is ignored.
//
// Keys are case-sensitive. An unknown key is an error (with a suggestion
// when it looks like a misspelt known key), because a typo would otherwise
// silently fall back to a default; a key given twice is an error too, because
// which of the two wins is not obvious to a reader.
//
// # Errors
//
// [Parse] and [Load] either return a complete, validated [Config] or one
// error and a zero Config; nothing is ever half-configured. Every
// configuration error wraps [ErrInvalid]. Errors about one key are a
// [*FieldError] naming the JSON key (use [errors.As]) and also wrap a more
// specific sentinel where one applies ([ErrRequired], [ErrUnknownKey],
// [ErrDuplicateKey]); malformed JSON is a [*SyntaxError] and wraps
// [ErrSyntax]. [Load] wraps the operating system's error when the file
// cannot be read, so errors.Is(err, fs.ErrNotExist) works.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults for the optional keys.
const (
	DefaultNetmask         = "255.255.255.0"
	DefaultHeartbeatTimer  = time.Second
	DefaultTapDeviceName   = "tap0"
	DefaultHeartbeatMisses = 3
	DefaultSyncPort        = 7001
	DefaultLogFormat       = LogFormatText
)

// Limits enforced by Validate.
const (
	MaxHeartbeatTimer  = time.Hour
	MaxHeartbeatMisses = 1000
	// MinSyncKeyLen is the shortest accepted sync_key, in bytes.
	MinSyncKeyLen = 16
	// MaxInterfaceNameLen is IFNAMSIZ-1: Linux interface names are at most
	// 15 bytes plus the terminating NUL.
	MaxInterfaceNameLen = 15
)

// Values of Config.LogFormat.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// Sentinel errors, for errors.Is.
var (
	// ErrInvalid is wrapped by every configuration error (but not by I/O
	// errors from Load).
	ErrInvalid = errors.New("invalid configuration")
	// ErrSyntax is wrapped by errors about malformed JSON.
	ErrSyntax = errors.New("invalid JSON")
	// ErrRequired means a required key is missing (or, for a Config built
	// in code, a required field is unset).
	ErrRequired = errors.New("required")
	// ErrUnknownKey means the file has a key this package does not know.
	ErrUnknownKey = errors.New("unknown key")
	// ErrDuplicateKey means the file gives the same key twice.
	ErrDuplicateKey = errors.New("duplicate key")
)

// FieldError is an error about one configuration key.
type FieldError struct {
	Field string // the JSON key, e.g. "port"
	Err   error  // what is wrong with it
}

func (e *FieldError) Error() string {
	return quoteKey(e.Field) + ": " + e.Err.Error()
}

// Unwrap exposes both the cause and ErrInvalid to errors.Is and errors.As.
func (e *FieldError) Unwrap() []error { return []error{e.Err, ErrInvalid} }

func notSet(field string) *FieldError {
	return &FieldError{Field: field, Err: fmt.Errorf("%w but not set", ErrRequired)}
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// quoteKey prints ordinary keys bare and quotes anything odd, so a key with
// spaces or control characters cannot garble the message.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(k)
		}
	}
	return k
}

// Config is a node's configuration. The JSON key of each field is given in
// its comment. Start from Default when building one in code, and call
// Validate before use.
type Config struct {
	// Backup ("backup", default false) makes this node start as the backup.
	// The same application runs on both nodes; this key picks the role.
	Backup bool

	// BackupAddr ("backup_addr", required) is the backup node's own stack
	// address: the backup uses it until it takes over, and the main uses it
	// to reach the backup. It must differ from IPv4Addr and MainAddr and lie
	// inside IPv4Addr/Netmask.
	BackupAddr netip.Addr

	// IPv4Addr ("ipv4_addr", required) is the service address: clients
	// connect to it, the main serves on it, and the backup claims it at
	// takeover.
	IPv4Addr netip.Addr

	// Port ("port", required, 1..65535) is the application's TCP port on
	// IPv4Addr.
	Port uint16

	// Netmask ("netmask", default 255.255.255.0) is the dotted netmask of
	// the service subnet. It must be contiguous and not 0.0.0.0.
	Netmask netip.Addr

	// HeartbeatTimer ("heartbeat_timer", seconds, fractions allowed, e.g.
	// 0.01; default 1; > 0 and <= 3600) is the interval between heartbeats.
	HeartbeatTimer time.Duration

	// DebugMode ("debug_mode", default false) turns on debug-level logging.
	DebugMode bool

	// TapDeviceName ("tap_device_name", default "tap0") is the Linux TAP
	// interface the stack uses: 1..15 printable ASCII bytes, no '/', ':' or
	// space, not "." or "..".
	TapDeviceName string

	// MainHeartbeats ("main_heartbeats", default false): true means the main
	// sends heartbeats to the backup, false that the backup sends them to
	// the main.
	MainHeartbeats bool

	// MainAddr ("main_addr", optional) is the main node's own stack
	// address. When unset the main uses IPv4Addr, as in the original
	// project. It may equal IPv4Addr and must lie inside IPv4Addr/Netmask.
	MainAddr netip.Addr

	// MACAddr ("mac_addr", optional) is the stack's Ethernet address: a
	// 48-bit unicast address, not all zeros. When unset (nil) the stack uses
	// the derived address HardwareAddr returns.
	MACAddr net.HardwareAddr

	// Gateway ("gateway", optional) is the next hop for destinations
	// outside IPv4Addr/Netmask; it must lie inside that subnet and not be
	// one of the nodes' own addresses. Unset means no off-link routing.
	Gateway netip.Addr

	// HeartbeatMisses ("heartbeat_misses", default 3, 1..1000) is how many
	// consecutive heartbeat intervals may pass without one before the peer
	// is declared dead.
	HeartbeatMisses int

	// SyncPort ("sync_port", default 7001, 1..65535, not Port) is the TCP
	// port of the node-to-node replication and heartbeat channel.
	SyncPort uint16

	// SyncKey ("sync_key", optional, at least 16 bytes when set) is the
	// shared secret that authenticates the node-to-node channel. It is never
	// written out by MarshalJSON or LogValue.
	SyncKey string

	// Insecure ("insecure", default false) explicitly allows a pair to run
	// without SyncKey. See RequireSyncKey.
	Insecure bool

	// StatusAddr ("status_addr", optional, host:port such as
	// "127.0.0.1:9090") is where an HTTP status endpoint listens on the
	// host's own network (not the stack's). An empty host means all
	// interfaces. Empty disables the endpoint.
	StatusAddr string

	// LogFormat ("log_format", "text" or "json", default "text") selects
	// the log output format.
	LogFormat string
}

// Default returns the configuration with every optional key at its default.
// The required keys (ipv4_addr, backup_addr, port) are unset, so Default()
// alone does not validate.
func Default() Config {
	return Config{
		Netmask:         netip.MustParseAddr(DefaultNetmask),
		HeartbeatTimer:  DefaultHeartbeatTimer,
		TapDeviceName:   DefaultTapDeviceName,
		HeartbeatMisses: DefaultHeartbeatMisses,
		SyncPort:        DefaultSyncPort,
		LogFormat:       DefaultLogFormat,
	}
}

// Validate checks the configuration and returns the first problem found as
// an error wrapping a *FieldError, or nil.
func (c Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// validate is Validate without the package prefix, so Parse and Load can
// prefix the error with the file name instead.
func (c Config) validate() error {
	// ipv4_addr and netmask come first: the other addresses are checked
	// against the subnet they define.
	if err := checkUnicast("ipv4_addr", c.IPv4Addr, true); err != nil {
		return err
	}
	if c.Port == 0 {
		return notSet("port")
	}
	if !c.Netmask.IsValid() {
		return notSet("netmask")
	}
	bits, err := maskBits(c.Netmask)
	if err != nil {
		return &FieldError{Field: "netmask", Err: err}
	}
	subnet := netip.PrefixFrom(c.IPv4Addr, bits).Masked()
	if err := checkHost("ipv4_addr", c.IPv4Addr, subnet); err != nil {
		return err
	}

	if err := checkUnicast("backup_addr", c.BackupAddr, true); err != nil {
		return err
	}
	if err := checkHost("backup_addr", c.BackupAddr, subnet); err != nil {
		return err
	}
	if c.BackupAddr == c.IPv4Addr {
		return fieldErr("backup_addr", "%s is also ipv4_addr; the backup needs an address of its own", c.BackupAddr)
	}

	if c.MainAddr.IsValid() {
		if err := checkUnicast("main_addr", c.MainAddr, false); err != nil {
			return err
		}
		if err := checkHost("main_addr", c.MainAddr, subnet); err != nil {
			return err
		}
		if c.MainAddr == c.BackupAddr {
			return fieldErr("main_addr", "%s is also backup_addr; the two nodes need different addresses", c.MainAddr)
		}
	}

	if c.Gateway.IsValid() {
		if err := checkUnicast("gateway", c.Gateway, false); err != nil {
			return err
		}
		if err := checkHost("gateway", c.Gateway, subnet); err != nil {
			return err
		}
		for _, own := range []struct {
			key  string
			addr netip.Addr
		}{{"ipv4_addr", c.IPv4Addr}, {"backup_addr", c.BackupAddr}, {"main_addr", c.MainAddr}} {
			if c.Gateway == own.addr {
				return fieldErr("gateway", "%s is also %s; the gateway must be another host", c.Gateway, own.key)
			}
		}
	}

	if c.HeartbeatTimer <= 0 || c.HeartbeatTimer > MaxHeartbeatTimer {
		return fieldErr("heartbeat_timer", "%s out of range: must be more than 0 and at most %g seconds",
			formatSeconds(c.HeartbeatTimer), MaxHeartbeatTimer.Seconds())
	}
	if c.HeartbeatMisses < 1 || c.HeartbeatMisses > MaxHeartbeatMisses {
		return fieldErr("heartbeat_misses", "%d out of range 1..%d", c.HeartbeatMisses, MaxHeartbeatMisses)
	}
	if err := checkInterfaceName(c.TapDeviceName); err != nil {
		return &FieldError{Field: "tap_device_name", Err: err}
	}
	if c.MACAddr != nil {
		if err := checkMAC(c.MACAddr); err != nil {
			return &FieldError{Field: "mac_addr", Err: err}
		}
	}
	if c.SyncPort == 0 {
		return notSet("sync_port")
	}
	if c.SyncPort == c.Port {
		return fieldErr("sync_port", "%d is also port; the node-to-node channel needs its own port", c.SyncPort)
	}
	if c.SyncKey != "" && len(c.SyncKey) < MinSyncKeyLen {
		// Do not echo the secret.
		return fieldErr("sync_key", "too short (%d bytes): use at least %d", len(c.SyncKey), MinSyncKeyLen)
	}
	if c.StatusAddr != "" {
		if err := checkHostPort(c.StatusAddr); err != nil {
			return &FieldError{Field: "status_addr", Err: err}
		}
	}
	if c.LogFormat != LogFormatText && c.LogFormat != LogFormatJSON {
		return fieldErr("log_format", "%q: must be %q or %q", c.LogFormat, LogFormatText, LogFormatJSON)
	}
	return nil
}

// checkUnicast accepts an IPv4 address a node can own: not unspecified,
// "this network", broadcast, multicast or loopback.
func checkUnicast(key string, a netip.Addr, required bool) error {
	switch {
	case !a.IsValid():
		if required {
			return notSet(key)
		}
		return nil
	case !a.Is4():
		return fieldErr(key, "%s is not an IPv4 address", a)
	case a.IsUnspecified() || a.As4()[0] == 0:
		return fieldErr(key, "%s is not a usable address (0.0.0.0/8 means \"this host/network\")", a)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fieldErr(key, "%s is the broadcast address, not a host address", a)
	case a.IsMulticast():
		return fieldErr(key, "%s is a multicast address, not a host address", a)
	case a.IsLoopback():
		return fieldErr(key, "%s is a loopback address; the stack needs an address on the LAN", a)
	}
	return nil
}

// checkHost requires a to be a host address of subnet. On /31 links
// (RFC 3021) both addresses are hosts; otherwise the network and broadcast
// addresses are not.
func checkHost(key string, a netip.Addr, subnet netip.Prefix) error {
	if !subnet.Contains(a) {
		return fieldErr(key, "%s is outside the service subnet %s (ipv4_addr/netmask)", a, subnet)
	}
	if subnet.Bits() <= 30 {
		if a == subnet.Addr() {
			return fieldErr(key, "%s is the network address of %s, not a host address", a, subnet)
		}
		if a == broadcastOf(subnet) {
			return fieldErr(key, "%s is the broadcast address of %s, not a host address", a, subnet)
		}
	}
	return nil
}

func broadcastOf(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// maskBits returns the prefix length of a contiguous IPv4 netmask.
func maskBits(m netip.Addr) (int, error) {
	if !m.Is4() {
		return 0, fmt.Errorf("%s is not an IPv4 netmask", m)
	}
	b := m.As4()
	v := binary.BigEndian.Uint32(b[:])
	// A contiguous mask is ones then zeros, so its complement plus one is a
	// power of two (or zero for 255.255.255.255).
	if inv := ^v; inv&(inv+1) != 0 {
		return 0, fmt.Errorf("%s is not a contiguous netmask (ones must be followed only by zeros, e.g. 255.255.255.0)", m)
	}
	n := bits.OnesCount32(v)
	if n == 0 {
		return 0, fmt.Errorf("%s would put every address on the link", m)
	}
	return n, nil
}

func checkInterfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("empty: give the TAP interface's name, e.g. \"tap0\"")
	case len(name) > MaxInterfaceNameLen:
		return fmt.Errorf("%q is %d bytes; Linux interface names have at most %d", name, len(name), MaxInterfaceNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	// Linux also accepts some non-ASCII bytes, but printable ASCII keeps the
	// name safe in shell scripts, logs and /sys paths.
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == ':' {
			return fmt.Errorf("%q: interface names are printable ASCII without spaces, '/' or ':'", name)
		}
	}
	return nil
}

func checkMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%s is not a 48-bit Ethernet address", mac)
	case mac[0]&1 != 0:
		return fmt.Errorf("%s is a multicast address; the stack needs a unicast one", mac)
	case bytes.Equal(mac, make([]byte, 6)):
		return fmt.Errorf("%s is the all-zero address", mac)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: host:port expected (e.g. \"127.0.0.1:9090\"): %w", s, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("%q: port must be a number in 1..65535", s)
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%q: host must be an address or a name", s)
		}
	}
	return nil
}

// RequireSyncKey reports whether the node-to-node channel is acceptable as
// configured: nil when SyncKey is set or Insecure explicitly allows running
// without it, otherwise an error naming sync_key that wraps ErrRequired.
// Validate does not call it, so tools that never open the channel can load
// a file without a key; the failover code should.
func (c Config) RequireSyncKey() error {
	if c.SyncKey != "" || c.Insecure {
		return nil
	}
	return fmt.Errorf("config: %w", &FieldError{Field: "sync_key", Err: fmt.Errorf(
		"%w: set a shared secret of at least %d bytes on both nodes, or \"insecure\": true to run the node-to-node channel unauthenticated",
		ErrRequired, MinSyncKeyLen)})
}

// Prefix returns the stack's interface address: IPv4Addr with the netmask's
// length (not masked, e.g. 192.168.1.101/24). It is invalid if Netmask is
// not a valid mask.
func (c Config) Prefix() netip.Prefix {
	n, err := maskBits(c.Netmask)
	if err != nil {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(c.IPv4Addr, n)
}

// OwnAddr returns this node's own stack address: BackupAddr on the backup;
// on the main, MainAddr, or IPv4Addr when MainAddr is unset.
func (c Config) OwnAddr() netip.Addr {
	if c.Backup {
		return c.BackupAddr
	}
	return c.mainOwnAddr()
}

// PeerAddr returns the other node's own stack address (OwnAddr as the peer
// would compute it from the same file).
func (c Config) PeerAddr() netip.Addr {
	if c.Backup {
		return c.mainOwnAddr()
	}
	return c.BackupAddr
}

func (c Config) mainOwnAddr() netip.Addr {
	if c.MainAddr.IsValid() {
		return c.MainAddr
	}
	return c.IPv4Addr
}

// HardwareAddr returns the stack's Ethernet address: MACAddr when set,
// otherwise one derived from TapDeviceName and OwnAddr, so that a node keeps
// its address across restarts and the two nodes get different ones.
//
// Derivation: the first 6 bytes of
// SHA-256("rfsis-mac\x00" + tap_device_name + "\x00" + own address in
// dotted form), with the first byte's multicast bit (0x01) cleared and its
// locally administered bit (0x02) set.
func (c Config) HardwareAddr() net.HardwareAddr {
	if c.MACAddr != nil {
		return append(net.HardwareAddr(nil), c.MACAddr...)
	}
	return DeriveMAC(c.TapDeviceName, c.OwnAddr())
}

// DeriveMAC is the derivation HardwareAddr uses when mac_addr is unset.
func DeriveMAC(tapName string, own netip.Addr) net.HardwareAddr {
	sum := sha256.Sum256([]byte("rfsis-mac\x00" + tapName + "\x00" + own.String()))
	mac := net.HardwareAddr(sum[:6:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// LogLevel returns slog.LevelDebug when DebugMode is set, else
// slog.LevelInfo.
func (c Config) LogLevel() slog.Level {
	if c.DebugMode {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// LogValue implements slog.LogValuer so the configuration can be logged at
// start-up. SyncKey is shown only as set or not.
func (c Config) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Bool("backup", c.Backup),
		slog.String("ipv4_addr", c.IPv4Addr.String()),
		slog.String("backup_addr", c.BackupAddr.String()),
		slog.String("main_addr", c.mainOwnAddr().String()),
		slog.Int("port", int(c.Port)),
		slog.String("netmask", c.Netmask.String()),
		slog.String("gateway", addrOrNone(c.Gateway)),
		slog.String("heartbeat_timer", formatSeconds(c.HeartbeatTimer)+"s"),
		slog.Int("heartbeat_misses", c.HeartbeatMisses),
		slog.Bool("main_heartbeats", c.MainHeartbeats),
		slog.String("tap_device_name", c.TapDeviceName),
		slog.String("mac_addr", c.HardwareAddr().String()),
		slog.Int("sync_port", int(c.SyncPort)),
		slog.Bool("sync_key_set", c.SyncKey != ""),
		slog.Bool("insecure", c.Insecure),
		slog.String("status_addr", c.StatusAddr),
		slog.Bool("debug_mode", c.DebugMode),
		slog.String("log_format", c.LogFormat),
	}
	return slog.GroupValue(attrs...)
}

func addrOrNone(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// MarshalJSON writes the configuration in the file's format, one key per
// line in a fixed order, so that Parse of the result gives back the same
// Config. Optional keys that are unset are left out, and sync_key is never
// written: a secret must not leak through a status page or a log that
// serialises the configuration.
func (c Config) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	n := 0
	put := func(key, raw string) {
		if n > 0 {
			b.WriteString(",\n")
		}
		n++
		b.WriteString("    ")
		b.WriteString(strconv.Quote(key)) // keys are plain ASCII
		b.WriteString(": ")
		b.WriteString(raw)
	}
	str := func(s string) string {
		q, _ := json.Marshal(s) // cannot fail for a string
		return string(q)
	}
	addr := func(key string, a netip.Addr) {
		if a.IsValid() {
			put(key, str(a.String()))
		}
	}
	b.WriteString("{\n")
	put("backup", strconv.FormatBool(c.Backup))
	addr("backup_addr", c.BackupAddr)
	addr("ipv4_addr", c.IPv4Addr)
	put("port", strconv.Itoa(int(c.Port)))
	addr("netmask", c.Netmask)
	put("heartbeat_timer", formatSeconds(c.HeartbeatTimer))
	put("debug_mode", strconv.FormatBool(c.DebugMode))
	put("tap_device_name", str(c.TapDeviceName))
	put("main_heartbeats", strconv.FormatBool(c.MainHeartbeats))
	addr("main_addr", c.MainAddr)
	if c.MACAddr != nil {
		put("mac_addr", str(c.MACAddr.String()))
	}
	addr("gateway", c.Gateway)
	put("heartbeat_misses", strconv.Itoa(c.HeartbeatMisses))
	put("sync_port", strconv.Itoa(int(c.SyncPort)))
	put("insecure", strconv.FormatBool(c.Insecure))
	if c.StatusAddr != "" {
		put("status_addr", str(c.StatusAddr))
	}
	put("log_format", str(c.LogFormat))
	b.WriteString("\n}\n")
	return b.Bytes(), nil
}

// formatSeconds writes d as an exact decimal number of seconds ("0.01",
// "1.5", "3"), so that parsing it back yields d again.
func formatSeconds(d time.Duration) string {
	var sign string
	u := uint64(d)
	if d < 0 {
		sign, u = "-", uint64(-d) // -MinInt64 wraps to itself, still correct as uint64
	}
	s := strconv.FormatUint(u/1e9, 10)
	if frac := u % 1e9; frac != 0 {
		f := fmt.Sprintf("%09d", frac)
		s += "." + strings.TrimRight(f, "0")
	}
	return sign + s
}
