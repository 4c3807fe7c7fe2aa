package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// originalExample is the config.json example from the original project's
// README, verbatim, trailing comma included.
const originalExample = `{
    "backup": false,
    "backup_addr": "192.168.1.12",
    "ipv4_addr": "192.168.1.101",
    "port": 8080,
    "netmask": "255.255.255.0",
    "heartbeat_timer": 3,
    "debug_mode" : true,
    "tap_device_name" : "tap0",
    "main_heartbeats" : false,
}
`

// minimal sets only the required keys.
const minimal = `{"ipv4_addr": "192.168.1.101", "backup_addr": "192.168.1.12", "port": 8080}`

// with returns minimal plus extra raw members.
func with(members ...string) []byte {
	s := strings.TrimSuffix(minimal, "}")
	for _, m := range members {
		s += ", " + m
	}
	return []byte(s + "}")
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestOriginalExampleLoads(t *testing.T) {
	c, err := Parse([]byte(originalExample))
	require.NoError(t, err)

	want := Default()
	want.Backup = false
	want.BackupAddr = addr("192.168.1.12")
	want.IPv4Addr = addr("192.168.1.101")
	want.Port = 8080
	want.Netmask = addr("255.255.255.0")
	want.HeartbeatTimer = 3 * time.Second
	want.DebugMode = true
	want.TapDeviceName = "tap0"
	want.MainHeartbeats = false
	assert.Equal(t, want, c)

	// Through Load as well, from a file.
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, []byte(originalExample), 0o600))
	c2, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, want, c2)
}

func TestDefaults(t *testing.T) {
	d := Default()
	assert.False(t, d.Backup)
	assert.Equal(t, addr("255.255.255.0"), d.Netmask)
	assert.Equal(t, time.Second, d.HeartbeatTimer)
	assert.False(t, d.DebugMode)
	assert.Equal(t, "tap0", d.TapDeviceName)
	assert.False(t, d.MainHeartbeats)
	assert.Equal(t, 3, d.HeartbeatMisses)
	assert.Equal(t, uint16(7001), d.SyncPort)
	assert.Equal(t, "text", d.LogFormat)
	assert.False(t, d.Insecure)
	assert.False(t, d.MainAddr.IsValid())
	assert.False(t, d.Gateway.IsValid())
	assert.Nil(t, d.MACAddr)
	assert.Empty(t, d.SyncKey)
	assert.Empty(t, d.StatusAddr)

	// The required keys are unset, so Default alone is not valid.
	err := d.Validate()
	require.ErrorIs(t, err, ErrRequired)
	assert.Contains(t, err.Error(), "ipv4_addr")

	c, err := Parse([]byte(minimal))
	require.NoError(t, err)
	want := d
	want.IPv4Addr = addr("192.168.1.101")
	want.BackupAddr = addr("192.168.1.12")
	want.Port = 8080
	assert.Equal(t, want, c)
	require.NoError(t, want.Validate())
}

func TestAllFields(t *testing.T) {
	c, err := Parse([]byte(`{
		"backup": true,
		"backup_addr": "10.1.2.12",
		"ipv4_addr": "10.1.2.101",
		"port": 443,
		"netmask": "255.255.0.0",
		"heartbeat_timer": 0.25,
		"debug_mode": true,
		"tap_device_name": "rfsis-tap.1",
		"main_heartbeats": true,
		"main_addr": "10.1.2.11",
		"mac_addr": "02:AA:bb:cc:dd:ee",
		"gateway": "10.1.0.1",
		"heartbeat_misses": 5,
		"sync_port": 9000,
		"sync_key": "0123456789abcdef",
		"insecure": false,
		"status_addr": "127.0.0.1:9090",
		"log_format": "json"
	}`))
	require.NoError(t, err)
	assert.Equal(t, Config{
		Backup:          true,
		BackupAddr:      addr("10.1.2.12"),
		IPv4Addr:        addr("10.1.2.101"),
		Port:            443,
		Netmask:         addr("255.255.0.0"),
		HeartbeatTimer:  250 * time.Millisecond,
		DebugMode:       true,
		TapDeviceName:   "rfsis-tap.1",
		MainHeartbeats:  true,
		MainAddr:        addr("10.1.2.11"),
		MACAddr:         net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee},
		Gateway:         addr("10.1.0.1"),
		HeartbeatMisses: 5,
		SyncPort:        9000,
		SyncKey:         "0123456789abcdef",
		StatusAddr:      "127.0.0.1:9090",
		LogFormat:       "json",
	}, c)
}

func TestHeartbeatTimerFractional(t *testing.T) {
	for raw, want := range map[string]time.Duration{
		"0.01":     10 * time.Millisecond,
		"0.5":      500 * time.Millisecond,
		"1e-3":     time.Millisecond,
		"1.5":      1500 * time.Millisecond,
		"3600":     time.Hour,
		"0.000001": time.Microsecond,
		"1":        time.Second,
	} {
		c, err := Parse(with(`"heartbeat_timer": ` + raw))
		require.NoError(t, err, raw)
		assert.Equal(t, want, c.HeartbeatTimer, raw)
	}
}

// TestBadValues checks that each bad value yields one error that names the
// offending key, wraps ErrInvalid, is a *FieldError for that key, and comes
// with a zero Config.
func TestBadValues(t *testing.T) {
	tests := []struct {
		field  string
		member string // raw JSON member added to minimal (replacing the key if present)
		msg    string // expected substring besides the field name
	}{
		{"backup", `"backup": "yes"`, "boolean"},
		{"backup", `"backup": 1`, "boolean"},
		{"backup", `"backup": null`, "got null"},
		{"debug_mode", `"debug_mode": "true"`, "boolean"},
		{"main_heartbeats", `"main_heartbeats": []`, "array"},
		{"insecure", `"insecure": {}`, "object"},

		{"port", `"port": "8080"`, `number expected, got string "8080"`},
		{"port", `"port": 8080.5`, "integer expected"},
		{"port", `"port": 8.08e3`, "integer expected"},
		{"port", `"port": 0`, "out of range 1..65535"},
		{"port", `"port": 65536`, "out of range"},
		{"port", `"port": -1`, "out of range"},
		{"port", `"port": 99999999999999999999999`, "out of range"},
		{"port", `"port": true`, "number expected"},

		{"ipv4_addr", `"ipv4_addr": "192.168.1"`, "not an IPv4 address"},
		{"ipv4_addr", `"ipv4_addr": "192.168.001.101"`, "not an IPv4 address"},
		{"ipv4_addr", `"ipv4_addr": "fe80::1"`, "not an IPv4 address"},
		{"ipv4_addr", `"ipv4_addr": "::ffff:192.168.1.101"`, "not an IPv4 address"},
		{"ipv4_addr", `"ipv4_addr": "0.0.0.0"`, "not a usable address"},
		{"ipv4_addr", `"ipv4_addr": "255.255.255.255"`, "broadcast"},
		{"ipv4_addr", `"ipv4_addr": "224.0.0.1"`, "multicast"},
		{"ipv4_addr", `"ipv4_addr": "127.0.0.1"`, "loopback"},
		{"ipv4_addr", `"ipv4_addr": "192.168.1.0"`, "network address"},
		{"ipv4_addr", `"ipv4_addr": "192.168.1.255"`, "broadcast address of 192.168.1.0/24"},
		{"ipv4_addr", `"ipv4_addr": 3232235877`, "string expected"},

		{"backup_addr", `"backup_addr": "192.168.1.101"`, "also ipv4_addr"},
		{"backup_addr", `"backup_addr": "192.168.2.12"`, "outside the service subnet 192.168.1.0/24"},
		{"backup_addr", `"backup_addr": "224.1.1.1"`, "multicast"},
		{"backup_addr", `"backup_addr": "nope"`, "not an IPv4 address"},

		{"netmask", `"netmask": "255.0.255.0"`, "not a contiguous netmask"},
		{"netmask", `"netmask": "255.255.255.1"`, "not a contiguous netmask"},
		{"netmask", `"netmask": "0.0.0.0"`, "every address"},
		{"netmask", `"netmask": "24"`, "not an IPv4 address"},
		{"netmask", `"netmask": "ffff:ff00::"`, "not an IPv4 address"},

		{"heartbeat_timer", `"heartbeat_timer": 0`, "out of range"},
		{"heartbeat_timer", `"heartbeat_timer": -1`, "out of range"},
		{"heartbeat_timer", `"heartbeat_timer": 3600.001`, "out of range"},
		{"heartbeat_timer", `"heartbeat_timer": 1e400`, "out of range"},
		{"heartbeat_timer", `"heartbeat_timer": 1e-12`, "resolution"},
		{"heartbeat_timer", `"heartbeat_timer": "1s"`, "number of seconds expected"},

		{"tap_device_name", `"tap_device_name": ""`, "empty"},
		{"tap_device_name", `"tap_device_name": "a-very-long-name0"`, "at most 15"},
		{"tap_device_name", `"tap_device_name": "tap/0"`, "'/'"},
		{"tap_device_name", `"tap_device_name": "tap 0"`, "spaces"},
		{"tap_device_name", `"tap_device_name": "tap\t0"`, "spaces"},
		{"tap_device_name", `"tap_device_name": "tap:0"`, "':'"},
		{"tap_device_name", `"tap_device_name": "."`, "not a valid interface name"},
		{"tap_device_name", `"tap_device_name": ".."`, "not a valid interface name"},
		{"tap_device_name", `"tap_device_name": "täp0"`, "printable ASCII"},
		{"tap_device_name", `"tap_device_name": 0`, "string expected"},

		{"main_addr", `"main_addr": "192.168.1.12"`, "also backup_addr"},
		{"main_addr", `"main_addr": "10.0.0.1"`, "outside"},
		{"main_addr", `"main_addr": "127.0.0.2"`, "loopback"},

		{"mac_addr", `"mac_addr": "01:00:5e:00:00:01"`, "multicast"},
		{"mac_addr", `"mac_addr": "ff:ff:ff:ff:ff:ff"`, "multicast"},
		{"mac_addr", `"mac_addr": "00:00:00:00:00:00"`, "all-zero"},
		{"mac_addr", `"mac_addr": "02:00:00:00:00"`, "not a 48-bit MAC"},
		{"mac_addr", `"mac_addr": "02:00:00:00:00:00:00:01"`, "not a 48-bit MAC"},
		{"mac_addr", `"mac_addr": "zz:00:00:00:00:01"`, "not a 48-bit MAC"},

		{"gateway", `"gateway": "10.0.0.1"`, "outside"},
		{"gateway", `"gateway": "192.168.1.101"`, "also ipv4_addr"},
		{"gateway", `"gateway": "192.168.1.12"`, "also backup_addr"},
		{"gateway", `"gateway": "192.168.1.255"`, "broadcast"},

		{"heartbeat_misses", `"heartbeat_misses": 0`, "out of range 1..1000"},
		{"heartbeat_misses", `"heartbeat_misses": 1001`, "out of range 1..1000"},
		{"heartbeat_misses", `"heartbeat_misses": 2.5`, "integer expected"},

		{"sync_port", `"sync_port": 8080`, "also port"},
		{"sync_port", `"sync_port": 70000`, "out of range"},
		{"sync_port", `"sync_port": "7001"`, "number expected"},

		{"sync_key", `"sync_key": "short"`, "too short (5 bytes)"},
		{"sync_key", `"sync_key": 1234567890123456789`, "string expected"},

		{"status_addr", `"status_addr": "127.0.0.1"`, "host:port"},
		{"status_addr", `"status_addr": "127.0.0.1:0"`, "1..65535"},
		{"status_addr", `"status_addr": "127.0.0.1:http"`, "1..65535"},
		{"status_addr", `"status_addr": "127.0.0.1:65536"`, "1..65535"},

		{"log_format", `"log_format": "xml"`, `"xml": must be "text" or "json"`},
		{"log_format", `"log_format": "JSON"`, "must be"},
	}
	for _, tt := range tests {
		t.Run(tt.member, func(t *testing.T) {
			// Drop the key from minimal if it is there, so the test value is
			// the only one (no duplicate).
			var base map[string]any
			require.NoError(t, json.Unmarshal([]byte(minimal), &base))
			delete(base, tt.field)
			b, err := json.Marshal(base)
			require.NoError(t, err)
			data := strings.TrimSuffix(string(b), "}") + "," + tt.member + "}"

			c, err := Parse([]byte(data))
			require.Error(t, err, data)
			assert.Equal(t, Config{}, c, "nothing half-configured")
			assert.ErrorIs(t, err, ErrInvalid)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tt.field, fe.Field)
			assert.Contains(t, err.Error(), tt.field)
			assert.Contains(t, err.Error(), tt.msg)
			assert.True(t, strings.HasPrefix(err.Error(), "config: "+tt.field+": "), err.Error())
		})
	}
}

func TestRequiredKeys(t *testing.T) {
	for _, key := range []string{"ipv4_addr", "backup_addr", "port"} {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(minimal), &m))
		delete(m, key)
		data, err := json.Marshal(m)
		require.NoError(t, err)
		_, err = Parse(data)
		require.ErrorIs(t, err, ErrRequired, key)
		var fe *FieldError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, key, fe.Field)
	}
}

func TestAddressRules(t *testing.T) {
	// main_addr may equal ipv4_addr.
	c, err := Parse(with(`"main_addr": "192.168.1.101"`))
	require.NoError(t, err)
	assert.Equal(t, addr("192.168.1.101"), c.OwnAddr())

	// A /31 has no network or broadcast address (RFC 3021).
	_, err = Parse([]byte(`{"ipv4_addr": "10.77.0.0", "backup_addr": "10.77.0.1", "port": 1, "netmask": "255.255.255.254"}`))
	require.NoError(t, err)

	// A /32 leaves no room for the backup.
	_, err = Parse(with(`"netmask": "255.255.255.255"`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "backup_addr")
}

func TestUnknownKey(t *testing.T) {
	for key, hint := range map[string]string{
		"ipv4_adr":        `did you mean "ipv4_addr"?`,
		"ipv4_address":    `did you mean "ipv4_addr"?`,
		"Port":            `did you mean "port"?`,
		"heartbeat-timer": `did you mean "heartbeat_timer"?`,
		"tap_devce_name":  `did you mean "tap_device_name"?`,
		"frobnicate":      "",
	} {
		_, err := Parse(with(`"` + key + `": 1`))
		require.ErrorIs(t, err, ErrUnknownKey, key)
		require.ErrorIs(t, err, ErrInvalid, key)
		var fe *FieldError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, key, fe.Field)
		assert.Contains(t, err.Error(), key+": unknown key")
		if hint != "" {
			assert.Contains(t, err.Error(), hint)
		} else {
			assert.NotContains(t, err.Error(), "did you mean")
		}
	}

	// Odd keys are quoted so the message stays readable.
	_, err := Parse(with(`"a b\n": 1`))
	require.ErrorIs(t, err, ErrUnknownKey)
	assert.Contains(t, err.Error(), `"a b\n": unknown key`)
}

func TestDuplicateKey(t *testing.T) {
	data := "{\n\"ipv4_addr\": \"192.168.1.101\",\n\"backup_addr\": \"192.168.1.12\",\n\"port\": 8080,\n\"port\": 8081\n}"
	c, err := Parse([]byte(data))
	require.ErrorIs(t, err, ErrDuplicateKey)
	assert.Equal(t, Config{}, c)
	assert.Contains(t, err.Error(), "port: duplicate key (lines 4 and 5)")

	// The same key spelt with an escape is still the same key.
	_, err = Parse(with(`"\u0070ort": 8081`))
	require.ErrorIs(t, err, ErrDuplicateKey)
	assert.Contains(t, err.Error(), "port")

	// Even with equal values: the reader cannot know which one was meant.
	_, err = Parse(with(`"port": 8080`))
	require.ErrorIs(t, err, ErrDuplicateKey)
}

func TestTopLevelNotObject(t *testing.T) {
	for _, in := range []string{`[]`, `[{"port": 1}]`, `"x"`, `42`, `null`, `true`} {
		c, err := Parse([]byte(in))
		require.ErrorIs(t, err, ErrInvalid, in)
		assert.NotErrorIs(t, err, ErrSyntax, in)
		assert.Contains(t, err.Error(), "must hold one JSON object", in)
		assert.Equal(t, Config{}, c)
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		in        string
		line, col int
		msg       string
	}{
		{"", 1, 1, "empty"},
		{"  \n\t ", 2, 3, "empty"},
		{"{\n  \"port\": 80 80\n}", 2, 14, "expected ',' or '}'"},
		{"{\n  \"port\": 8080\n", 3, 1, "end of file"},
		{"{\"port\": 8080,,}", 1, 15, "expected a key"},
		{"{,}", 1, 2, "expected a key"},
		{"[,]", 1, 2, "a value was expected"},
		{"[1,,]", 1, 4, "a value was expected"},
		{"{port: 8080}", 1, 2, "expected a key in double quotes"},
		{"{'port': 8080}", 1, 2, "expected a key"},
		{"{\"tap\": 'tap0'}", 1, 9, "strings need double quotes"},
		{"{\"a\": 1} x", 1, 10, "after the end"},
		{"{\"a\": 1}{}", 1, 9, "after the end"},
		{"{\"a\": 01}", 1, 8, "leading zeros"},
		{"{\"a\": 1.}", 1, 9, "digit after '.'"},
		{"{\"a\": -}", 1, 8, "expected a digit"},
		{"{\"a\": 1e}", 1, 9, "exponent"},
		{"{\"a\": +1}", 1, 7, "a value was expected"},
		{"{\"a\": tru}", 1, 7, "a value was expected"},
		{"{\"a\": \"x\ny\"}", 1, 9, "control character"},
		{"{\"a\": \"\\x\"}", 1, 9, "invalid escape"},
		{"{\"a\": \"\\u12g4\"}", 1, 12, "four hex digits"},
		{"{\"a\": \"abc}", 1, 7, "never closed"},
		{"{\"a\": \"\xff\"}", 1, 8, "invalid UTF-8"},
		{"{\"é\": x}", 1, 7, "a value was expected"}, // column counts characters
		{"{\"a\": 1 // comment\n}", 1, 9, "expected ',' or '}'"},
		{"{\"a\" 1}", 1, 6, "expected ':'"},
		{"{\"a\": [1, 2}", 1, 12, "expected ',' or ']'"},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), 1, 65, "nested more than 64"},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(tt.in))
		require.Error(t, err, tt.in)
		assert.Equal(t, Config{}, c)
		assert.ErrorIs(t, err, ErrSyntax, tt.in)
		assert.ErrorIs(t, err, ErrInvalid, tt.in)
		var se *SyntaxError
		require.ErrorAs(t, err, &se, tt.in)
		assert.Equal(t, [2]int{tt.line, tt.col}, [2]int{se.Line, se.Column}, "%q: %v", tt.in, err)
		assert.Contains(t, err.Error(), tt.msg, tt.in)
		assert.Contains(t, err.Error(), "invalid JSON", tt.in)
	}
}

func TestTrailingCommas(t *testing.T) {
	tests := []struct{ in, out string }{
		{`{"a":1,}`, `{"a":1 }`},
		{"{\"a\":[1,2,\n],\n}", "{\"a\":[1,2 \n] \n}"},
		{`[1,]`, `[1 ]`},
		{`[[],]`, `[[] ]`},
		// Commas inside strings are data, never touched.
		{`{"a":"x,}","b":"y, ]",}`, `{"a":"x,}","b":"y, ]" }`},
		{`{"a":"\",}"}`, `{"a":"\",}"}`},
		{"\xEF\xBB\xBF{}", "   {}"},
	}
	for _, tt := range tests {
		in := []byte(tt.in)
		out, err := normalize(in)
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.out, string(out), tt.in)
		assert.Equal(t, tt.in, string(in), "input must not be modified")
		assert.True(t, json.Valid(out), tt.out)
	}
}

func TestTrailingCommaInsideStringPreserved(t *testing.T) {
	c, err := Parse(with(`"tap_device_name": "a,}"`, `"sync_key": "0123456789abcdef, }"`))
	require.NoError(t, err)
	assert.Equal(t, "a,}", c.TapDeviceName)
	assert.Equal(t, "0123456789abcdef, }", c.SyncKey)

	// And next to a real trailing comma.
	c, err = Parse([]byte(`{"ipv4_addr": "192.168.1.101", "backup_addr": "192.168.1.12", "port": 8080, "tap_device_name": "b,]",}`))
	require.NoError(t, err)
	assert.Equal(t, "b,]", c.TapDeviceName)
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.json")
	c, err := Load(missing)
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.NotErrorIs(t, err, ErrInvalid, "an I/O error is not a configuration error")
	assert.Contains(t, err.Error(), missing)
	assert.Equal(t, Config{}, c)

	_, err = Load(dir) // a directory
	require.Error(t, err)
	assert.Contains(t, err.Error(), dir)

	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"ipv4_addr": "192.168.1.101", "backup_addr": "192.168.1.12", "port": "8080"}`), 0o600))
	_, err = Load(bad)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "config: "+bad+": port: number expected")

	bad2 := filepath.Join(dir, "bad2.json")
	require.NoError(t, os.WriteFile(bad2, []byte("{\n\"port\": 8080\n"), 0o600))
	_, err = Load(bad2)
	require.ErrorIs(t, err, ErrSyntax)
	assert.Contains(t, err.Error(), bad2+": line 3, column 1: invalid JSON")

	big := filepath.Join(dir, "big.json")
	require.NoError(t, os.WriteFile(big, bytes.Repeat([]byte(" "), MaxFileSize+1), 0o600))
	_, err = Load(big)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "larger than")
}

func TestShippedConfigs(t *testing.T) {
	main, err := Load("../conf/config.json")
	require.NoError(t, err)
	backup, err := Load("../conf/backup.json")
	require.NoError(t, err)

	assert.False(t, main.Backup)
	assert.True(t, backup.Backup)
	assert.Equal(t, addr("192.168.1.101"), main.IPv4Addr)
	assert.Equal(t, addr("192.168.1.12"), main.BackupAddr)
	assert.Equal(t, uint16(8080), main.Port)

	// The two files describe the same pair and differ only in the role.
	backup.Backup = false
	assert.Equal(t, main, backup)

	// Shipped as standard JSON, not relying on the trailing-comma tolerance.
	for _, p := range []string{"../conf/config.json", "../conf/backup.json"} {
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.True(t, json.Valid(data), p)
	}
}

func TestHelpers(t *testing.T) {
	c, err := Parse([]byte(originalExample))
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("192.168.1.101/24"), c.Prefix())
	assert.Equal(t, addr("192.168.1.101"), c.OwnAddr())
	assert.Equal(t, addr("192.168.1.12"), c.PeerAddr())
	assert.Equal(t, slog.LevelDebug, c.LogLevel())

	c.DebugMode = false
	assert.Equal(t, slog.LevelInfo, c.LogLevel())

	c.MainAddr = addr("192.168.1.11")
	assert.Equal(t, addr("192.168.1.11"), c.OwnAddr())
	assert.Equal(t, addr("192.168.1.12"), c.PeerAddr())

	c.Backup = true
	assert.Equal(t, addr("192.168.1.12"), c.OwnAddr())
	assert.Equal(t, addr("192.168.1.11"), c.PeerAddr())
	c.MainAddr = netip.Addr{}
	assert.Equal(t, addr("192.168.1.101"), c.PeerAddr())

	c.Netmask = addr("255.0.255.0")
	assert.False(t, c.Prefix().IsValid())
}

func TestHardwareAddr(t *testing.T) {
	main, err := Parse([]byte(minimal))
	require.NoError(t, err)
	backup, err := Parse(with(`"backup": true`))
	require.NoError(t, err)

	m := main.HardwareAddr()
	require.Len(t, m, 6)
	assert.Zero(t, m[0]&0x01, "unicast")
	assert.NotZero(t, m[0]&0x02, "locally administered")
	assert.Equal(t, m, main.HardwareAddr(), "stable")
	assert.NotEqual(t, m, backup.HardwareAddr(), "the two nodes differ")

	// The documented derivation, recomputed here.
	sum := sha256.Sum256([]byte("rfsis-mac\x00tap0\x00192.168.1.101"))
	want := net.HardwareAddr(sum[:6])
	want[0] = want[0]&^1 | 2
	assert.Equal(t, want, m)

	// Another TAP name gives another address.
	other := main
	other.TapDeviceName = "tap1"
	assert.NotEqual(t, m, other.HardwareAddr())

	// An explicit mac_addr wins, and callers get a copy.
	c, err := Parse(with(`"mac_addr": "02-00-5E-10-00-01"`))
	require.NoError(t, err)
	got := c.HardwareAddr()
	assert.Equal(t, "02:00:5e:10:00:01", got.String())
	got[5] = 0x99
	assert.Equal(t, "02:00:5e:10:00:01", c.MACAddr.String())
}

func TestRequireSyncKey(t *testing.T) {
	c, err := Parse([]byte(minimal))
	require.NoError(t, err)
	err = c.RequireSyncKey()
	require.ErrorIs(t, err, ErrRequired)
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "sync_key", fe.Field)
	assert.Contains(t, err.Error(), "insecure")

	c.Insecure = true
	assert.NoError(t, c.RequireSyncKey())
	c.Insecure = false
	c.SyncKey = "0123456789abcdef"
	assert.NoError(t, c.RequireSyncKey())
}

func TestValidateProgrammatic(t *testing.T) {
	good := Default()
	good.IPv4Addr = addr("10.77.1.10")
	good.BackupAddr = addr("10.77.1.11")
	good.Port = 7
	require.NoError(t, good.Validate())

	for name, mut := range map[string]func(*Config){
		"port":             func(c *Config) { c.Port = 0 },
		"netmask":          func(c *Config) { c.Netmask = netip.Addr{} },
		"heartbeat_timer":  func(c *Config) { c.HeartbeatTimer = 2 * time.Hour },
		"heartbeat_misses": func(c *Config) { c.HeartbeatMisses = 0 },
		"sync_port":        func(c *Config) { c.SyncPort = 0 },
		"log_format":       func(c *Config) { c.LogFormat = "" },
		"tap_device_name":  func(c *Config) { c.TapDeviceName = "" },
		"ipv4_addr":        func(c *Config) { c.IPv4Addr = addr("fe80::1") },
		"backup_addr":      func(c *Config) { c.BackupAddr = addr("::ffff:10.77.1.11") },
		"mac_addr":         func(c *Config) { c.MACAddr = net.HardwareAddr{2, 0, 0, 0, 0, 0, 0, 1} },
	} {
		c := good
		mut(&c)
		err := c.Validate()
		var fe *FieldError
		require.ErrorAs(t, err, &fe, name)
		assert.Equal(t, name, fe.Field)
		assert.True(t, strings.HasPrefix(err.Error(), "config: "+name+": "), err.Error())
	}
}

func TestMarshalJSONRoundTrip(t *testing.T) {
	c, err := Parse(with(
		`"heartbeat_timer": 0.01`, `"main_addr": "192.168.1.11"`, `"mac_addr": "02:00:5e:10:00:01"`,
		`"gateway": "192.168.1.1"`, `"status_addr": "[::1]:9090"`, `"sync_key": "0123456789abcdef-secret"`,
		`"log_format": "json"`, `"tap_device_name": "t<&>"`))
	require.NoError(t, err)
	out, err := json.Marshal(c)
	require.NoError(t, err)
	assert.NotContains(t, string(out), "secret", "sync_key is never written")
	assert.Contains(t, string(out), `"heartbeat_timer":0.01`)

	back, err := Parse(out)
	require.NoError(t, err, string(out))
	c.SyncKey = ""
	assert.Equal(t, c, back)
}

func TestFormatSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second:             "1",
		10 * time.Millisecond:   "0.01",
		1500 * time.Millisecond: "1.5",
		time.Nanosecond:         "0.000000001",
		-time.Millisecond:       "-0.001",
		time.Hour:               "3600",
	} {
		assert.Equal(t, want, formatSeconds(d))
	}
}

func TestLogValueRedactsKey(t *testing.T) {
	c, err := Parse(with(`"sync_key": "0123456789abcdef-secret"`))
	require.NoError(t, err)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("start", "config", c)
	assert.NotContains(t, buf.String(), "secret")
	assert.Contains(t, buf.String(), "config.sync_key_set=true")
	assert.Contains(t, buf.String(), "config.ipv4_addr=192.168.1.101")
}

func TestErrorWrapping(t *testing.T) {
	// FieldError works with errors.As through several layers of wrapping.
	_, err := Parse(with(`"port": 0`))
	wrapped := errors.Join(errors.New("starting"), err)
	var fe *FieldError
	require.ErrorAs(t, wrapped, &fe)
	assert.Equal(t, "port", fe.Field)
	assert.ErrorIs(t, wrapped, ErrInvalid)
	assert.NotErrorIs(t, wrapped, ErrSyntax)
}
