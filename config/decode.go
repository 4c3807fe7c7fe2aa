package config

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// MaxFileSize bounds the configuration file: a real one is well under a
// kilobyte, and a bound keeps a wrong path (a device, a log) from being
// slurped into memory.
const MaxFileSize = 1 << 20

// Load reads and parses the configuration file at path (conventionally
// conf/config.json). Errors name the path.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err) // *fs.PathError names the path
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// Parse parses and validates the contents of a configuration file.
func Parse(data []byte) (Config, error) {
	c, err := parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

func parse(data []byte) (Config, error) {
	if len(data) > MaxFileSize {
		return Config{}, fmt.Errorf("%w: larger than %d bytes; this is not a configuration file", ErrInvalid, MaxFileSize)
	}
	norm, err := normalize(data)
	if err != nil {
		return Config{}, err
	}
	// normalize is a full JSON validator, so this only guards against the
	// two validators ever disagreeing: gjson must not be fed what it
	// considers invalid.
	if !gjson.ValidBytes(norm) {
		return Config{}, &SyntaxError{Line: 1, Column: 1, Msg: "rejected by the JSON parser"}
	}
	root := gjson.ParseBytes(norm)
	if !root.IsObject() {
		return Config{}, fmt.Errorf("%w: the file must hold one JSON object ({...}), not %s", ErrInvalid, describe(root))
	}

	c := Default()
	seen := make(map[string]int, len(fields)) // key -> offset of first occurrence
	var ferr error
	root.ForEach(func(k, v gjson.Result) bool {
		key := k.Str
		if first, dup := seen[key]; dup {
			l1, _ := lineCol(norm, first)
			l2, _ := lineCol(norm, k.Index)
			ferr = &FieldError{Field: key, Err: fmt.Errorf("%w (lines %d and %d); give it once", ErrDuplicateKey, l1, l2)}
			return false
		}
		seen[key] = k.Index
		f := lookupField(key)
		if f == nil {
			err := ErrUnknownKey
			if s := suggest(key); s != "" {
				err = fmt.Errorf("%w (did you mean %q?)", ErrUnknownKey, s)
			}
			ferr = &FieldError{Field: key, Err: err}
			return false
		}
		if err := f.decode(&c, v); err != nil {
			ferr = &FieldError{Field: key, Err: err}
			return false
		}
		return true
	})
	if ferr != nil {
		return Config{}, ferr
	}
	for _, f := range fields {
		if _, ok := seen[f.name]; f.required && !ok {
			return Config{}, &FieldError{Field: f.name, Err: fmt.Errorf("%w key is missing", ErrRequired)}
		}
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// field describes one JSON key: how to decode it into a Config.
type field struct {
	name     string
	required bool
	decode   func(c *Config, v gjson.Result) error
}

// fields lists the keys in documentation order; unknown-key suggestions and
// the required check walk it.
var fields = []field{
	{"backup", false, func(c *Config, v gjson.Result) (err error) { c.Backup, err = boolValue(v); return }},
	{"backup_addr", true, func(c *Config, v gjson.Result) (err error) { c.BackupAddr, err = ipv4Value(v); return }},
	{"ipv4_addr", true, func(c *Config, v gjson.Result) (err error) { c.IPv4Addr, err = ipv4Value(v); return }},
	{"port", true, func(c *Config, v gjson.Result) (err error) { c.Port, err = portValue(v); return }},
	{"netmask", false, func(c *Config, v gjson.Result) (err error) { c.Netmask, err = ipv4Value(v); return }},
	{"heartbeat_timer", false, func(c *Config, v gjson.Result) (err error) { c.HeartbeatTimer, err = secondsValue(v); return }},
	{"debug_mode", false, func(c *Config, v gjson.Result) (err error) { c.DebugMode, err = boolValue(v); return }},
	{"tap_device_name", false, func(c *Config, v gjson.Result) (err error) { c.TapDeviceName, err = stringValue(v); return }},
	{"main_heartbeats", false, func(c *Config, v gjson.Result) (err error) { c.MainHeartbeats, err = boolValue(v); return }},
	{"main_addr", false, func(c *Config, v gjson.Result) (err error) { c.MainAddr, err = ipv4Value(v); return }},
	{"mac_addr", false, func(c *Config, v gjson.Result) (err error) { c.MACAddr, err = macValue(v); return }},
	{"gateway", false, func(c *Config, v gjson.Result) (err error) { c.Gateway, err = ipv4Value(v); return }},
	{"heartbeat_misses", false, func(c *Config, v gjson.Result) error {
		n, err := intValue(v, 1, MaxHeartbeatMisses)
		c.HeartbeatMisses = int(n)
		return err
	}},
	{"sync_port", false, func(c *Config, v gjson.Result) (err error) { c.SyncPort, err = portValue(v); return }},
	{"sync_key", false, func(c *Config, v gjson.Result) (err error) { c.SyncKey, err = stringValue(v); return }},
	{"insecure", false, func(c *Config, v gjson.Result) (err error) { c.Insecure, err = boolValue(v); return }},
	{"status_addr", false, func(c *Config, v gjson.Result) (err error) { c.StatusAddr, err = stringValue(v); return }},
	{"log_format", false, func(c *Config, v gjson.Result) (err error) { c.LogFormat, err = stringValue(v); return }},
}

func lookupField(name string) *field {
	for i := range fields {
		if fields[i].name == name {
			return &fields[i]
		}
	}
	return nil
}

// describe names a JSON value's type and shows it briefly, for "X
// expected, got Y" messages.
func describe(v gjson.Result) string {
	switch v.Type {
	case gjson.String:
		s := v.Str
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return "string " + strconv.Quote(s)
	case gjson.Number:
		return "number " + v.Raw
	case gjson.True, gjson.False:
		return "boolean " + v.Raw
	case gjson.Null:
		return "null"
	case gjson.JSON:
		if v.IsArray() {
			return "an array"
		}
		return "an object"
	}
	return "nothing"
}

func typeErr(want string, v gjson.Result) error {
	return fmt.Errorf("%s expected, got %s", want, describe(v))
}

func boolValue(v gjson.Result) (bool, error) {
	switch v.Type {
	case gjson.True:
		return true, nil
	case gjson.False:
		return false, nil
	}
	return false, typeErr("boolean (true or false)", v)
}

func stringValue(v gjson.Result) (string, error) {
	if v.Type != gjson.String {
		return "", typeErr("string", v)
	}
	return v.Str, nil
}

// intValue accepts only integer syntax: 8080, not 8080.0 or 8.08e3, so a
// fraction can never be silently truncated.
func intValue(v gjson.Result, lo, hi int64) (int64, error) {
	if v.Type != gjson.Number {
		return 0, typeErr("number", v)
	}
	if strings.ContainsAny(v.Raw, ".eE") {
		return 0, fmt.Errorf("integer expected, got %s", v.Raw)
	}
	n, err := strconv.ParseInt(v.Raw, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s out of range %d..%d", v.Raw, lo, hi)
	}
	return n, nil
}

func portValue(v gjson.Result) (uint16, error) {
	n, err := intValue(v, 1, math.MaxUint16)
	return uint16(n), err
}

// secondsValue converts a JSON number of seconds to a Duration, rounded to
// the nanosecond (0.01 -> 10ms exactly, although 0.01 is not exact in
// binary).
func secondsValue(v gjson.Result) (time.Duration, error) {
	if v.Type != gjson.Number {
		return 0, typeErr("number of seconds", v)
	}
	s, err := strconv.ParseFloat(v.Raw, 64)
	if err != nil || !(s > 0) || s > MaxHeartbeatTimer.Seconds() {
		return 0, fmt.Errorf("%s out of range: must be more than 0 and at most %g seconds", v.Raw, MaxHeartbeatTimer.Seconds())
	}
	d := time.Duration(math.Round(s * 1e9))
	if d <= 0 {
		return 0, fmt.Errorf("%s is below the 1ns resolution", v.Raw)
	}
	return d, nil
}

func ipv4Value(v gjson.Result) (netip.Addr, error) {
	s, err := stringValue(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("IPv4 address %w", err)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address in dotted form (e.g. \"192.168.1.101\")", s)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return a, nil
}

func macValue(v gjson.Result) (net.HardwareAddr, error) {
	s, err := stringValue(v)
	if err != nil {
		return nil, fmt.Errorf("MAC address %w", err)
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not a 48-bit MAC address (e.g. \"02:00:5e:10:00:01\")", s)
	}
	return mac, nil
}

// suggest returns the known key closest to an unknown one, or "" when none
// is close enough to be a plausible typo.
func suggest(key string) string {
	k := strings.NewReplacer("-", "_", " ", "_").Replace(strings.ToLower(key))
	if len(k) > 64 {
		return ""
	}
	best, bestD := "", math.MaxInt
	for _, f := range fields {
		d := editDistance(k, f.name)
		if d < bestD {
			best, bestD = f.name, d
		}
	}
	if bestD <= 2 || bestD <= len(best)/3 {
		return best
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// SyntaxError reports malformed JSON at a position in the file.
type SyntaxError struct {
	Line, Column int // 1-based; Column counts characters, not bytes
	Msg          string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("line %d, column %d: invalid JSON: %s", e.Line, e.Column, e.Msg)
}

// Is makes a SyntaxError match both ErrSyntax and ErrInvalid.
func (e *SyntaxError) Is(target error) bool {
	return target == ErrSyntax || target == ErrInvalid
}

// maxDepth bounds nesting. No key takes a nested value, so anything deep is
// garbage; the bound keeps the recursive scanner's stack small.
const maxDepth = 64

// normalize checks that data is JSON, allowing a trailing comma before '}'
// or ']' (one after at least one element; "[,]" and "[1,,]" stay invalid)
// and a leading byte order mark. It returns standard JSON: the input with
// those trailing commas and the BOM overwritten by spaces, so byte offsets
// (and so line and column numbers) are the same in both. data itself is
// never modified.
func normalize(data []byte) ([]byte, error) {
	s := scanner{data: data}
	bom := len(data) >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF
	if bom {
		s.pos = 3
	}
	s.skipSpace()
	if s.pos == len(data) {
		return nil, s.errorf("the file is empty; it must hold one JSON object")
	}
	if err := s.value(); err != nil {
		return nil, err
	}
	s.skipSpace()
	if s.pos != len(data) {
		return nil, s.errorf("unexpected %s after the end of the top-level value", s.found())
	}
	if !bom && len(s.commas) == 0 {
		return data, nil
	}
	out := append([]byte(nil), data...)
	if bom {
		copy(out, "   ")
	}
	for _, i := range s.commas {
		out[i] = ' '
	}
	return out, nil
}

// scanner is a recursive-descent JSON validator that records where the
// tolerated trailing commas are.
type scanner struct {
	data   []byte
	pos    int
	depth  int
	commas []int
}

func (s *scanner) errorf(format string, args ...any) error {
	line, col := lineCol(s.data, s.pos)
	return &SyntaxError{Line: line, Column: col, Msg: fmt.Sprintf(format, args...)}
}

// found describes the byte at the current position for error messages.
func (s *scanner) found() string {
	if s.pos >= len(s.data) {
		return "end of file"
	}
	r, _ := utf8.DecodeRune(s.data[s.pos:])
	if r == utf8.RuneError {
		return fmt.Sprintf("byte 0x%02x", s.data[s.pos])
	}
	return strconv.QuoteRune(r)
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) value() error {
	if s.pos >= len(s.data) {
		return s.errorf("unexpected end of file, a value was expected")
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		return s.object()
	case c == '[':
		return s.array()
	case c == '"':
		return s.str()
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '}' || c == ']' || c == ',':
		return s.errorf("unexpected %s, a value was expected", s.found())
	default:
		return s.errorf("unexpected %s, a value was expected (strings need double quotes)", s.found())
	}
}

func (s *scanner) enter() error {
	s.depth++
	if s.depth > maxDepth {
		return s.errorf("nested more than %d levels deep", maxDepth)
	}
	return nil
}

func (s *scanner) object() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++ // '{'
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.errorf("expected a key in double quotes, found %s", s.found())
		}
		if err := s.str(); err != nil {
			return err
		}
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.errorf("expected ':' after the key, found %s", s.found())
		}
		s.pos++
		s.skipSpace()
		if err := s.value(); err != nil {
			return err
		}
		if done, err := s.separator('}'); done || err != nil {
			return err
		}
	}
}

// separator reads what follows an item of an object or an array: the
// closing byte (done), or a comma before the next item, or a trailing comma
// before the closing byte, which is tolerated and remembered (done).
func (s *scanner) separator(closing byte) (done bool, err error) {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return false, s.errorf("unexpected end of file, expected ',' or '%c'", closing)
	}
	switch s.data[s.pos] {
	case closing:
		s.pos++
		s.depth--
		return true, nil
	case ',':
		comma := s.pos
		s.pos++
		s.skipSpace()
		if s.pos < len(s.data) && s.data[s.pos] == closing {
			s.commas = append(s.commas, comma)
			s.pos++
			s.depth--
			return true, nil
		}
		return false, nil
	default:
		return false, s.errorf("expected ',' or '%c' after a value, found %s", closing, s.found())
	}
}

func (s *scanner) array() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++ // '['
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if err := s.value(); err != nil {
			return err
		}
		if done, err := s.separator(']'); done || err != nil {
			return err
		}
	}
}

func (s *scanner) str() error {
	start := s.pos
	s.pos++ // opening quote
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return nil
		case c == '\\':
			s.pos++
			if s.pos >= len(s.data) {
				break
			}
			switch s.data[s.pos] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.pos++
			case 'u':
				for i := 1; i <= 4; i++ {
					if s.pos+i >= len(s.data) || !isHex(s.data[s.pos+i]) {
						s.pos += i
						return s.errorf("\\u must be followed by four hex digits")
					}
				}
				s.pos += 5
			default:
				return s.errorf(`invalid escape in a string (valid ones: \" \\ \/ \b \f \n \r \t \uXXXX)`)
			}
		case c < 0x20:
			return s.errorf("control character %s in a string (write it as an escape, e.g. \\n)", s.found())
		case c < utf8.RuneSelf:
			s.pos++
		default:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && n <= 1 {
				return s.errorf("invalid UTF-8 in a string")
			}
			s.pos += n
		}
	}
	s.pos = start
	return s.errorf("string never closed (missing '\"')")
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (s *scanner) digits() int {
	n := 0
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
		n++
	}
	return n
}

func (s *scanner) number() error {
	if s.data[s.pos] == '-' {
		s.pos++
	}
	switch {
	case s.pos < len(s.data) && s.data[s.pos] == '0':
		s.pos++
		if s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
			return s.errorf("numbers must not have leading zeros")
		}
	case s.digits() == 0:
		return s.errorf("expected a digit, found %s", s.found())
	}
	if s.pos < len(s.data) && s.data[s.pos] == '.' {
		s.pos++
		if s.digits() == 0 {
			return s.errorf("expected a digit after '.', found %s", s.found())
		}
	}
	if s.pos < len(s.data) && (s.data[s.pos] == 'e' || s.data[s.pos] == 'E') {
		s.pos++
		if s.pos < len(s.data) && (s.data[s.pos] == '+' || s.data[s.pos] == '-') {
			s.pos++
		}
		if s.digits() == 0 {
			return s.errorf("expected a digit in the exponent, found %s", s.found())
		}
	}
	return nil
}

func (s *scanner) literal(word string) error {
	if len(s.data)-s.pos < len(word) || string(s.data[s.pos:s.pos+len(word)]) != word {
		return s.errorf("unexpected %s, a value was expected (strings need double quotes)", s.found())
	}
	s.pos += len(word)
	return nil
}

// lineCol converts a byte offset to a 1-based line and character column.
func lineCol(data []byte, off int) (line, col int) {
	off = min(off, len(data))
	line, lineStart := 1, 0
	for i := 0; i < off; i++ {
		if data[i] == '\n' {
			line++
			lineStart = i + 1
		}
	}
	return line, utf8.RuneCount(data[lineStart:off]) + 1
}
