package config

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// FuzzParse checks that Parse never panics, that everything it accepts is
// valid and parses the same way twice and after a MarshalJSON round trip,
// that every rejection is a configuration error, and that the JSON
// pre-check agrees with encoding/json and gjson.
func FuzzParse(f *testing.F) {
	f.Add([]byte(originalExample))
	f.Add([]byte(minimal))
	f.Add(with(`"heartbeat_timer": 0.01`, `"tap_device_name": "a,}"`, `"mac_addr": "02:00:5e:10:00:01"`))
	f.Add(with(`"main_addr": "192.168.1.11"`, `"gateway": "192.168.1.1"`, `"status_addr": ":9090"`,
		`"sync_key": "0123456789abcdef"`, `"log_format": "json"`, `"heartbeat_misses": 1000`))
	f.Add([]byte(`{"a":[1,2,],"b":{"c":null,},}`))
	f.Add([]byte(`{"port": "8080"}`))
	f.Add([]byte(`[1,,]`))
	f.Add([]byte("\xEF\xBB\xBF{\"\\u0070ort\": 1e400}"))
	for _, p := range []string{"../conf/config.json", "../conf/backup.json"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		orig := string(data)
		c, err := Parse(data)
		if string(data) != orig {
			t.Fatal("Parse modified its input")
		}
		checkNormalize(t, data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error lacks the package prefix: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects: %v\n%q", err, data)
		}
		again, err := Parse(data)
		if err != nil || !equal(c, again) {
			t.Fatalf("second parse differs: %v\n%+v\n%+v", err, c, again)
		}
		out, err := c.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("MarshalJSON output does not parse: %v\n%s", err, out)
		}
		want := c
		want.SyncKey = "" // never written out
		if !equal(want, back) {
			t.Fatalf("round trip differs:\n%+v\n%+v\n%s", want, back, out)
		}
	})
}

// checkNormalize compares the tolerant pre-check with two strict JSON
// validators: its output must be standard JSON, and it must accept all
// standard JSON except what it rejects on purpose (invalid UTF-8, deep
// nesting).
func checkNormalize(t *testing.T, data []byte) {
	norm, err := normalize(data)
	if err == nil {
		if !json.Valid(norm) || !gjson.ValidBytes(norm) {
			t.Fatalf("normalize accepted %q but produced invalid JSON %q", data, norm)
		}
		if len(norm) != len(data) {
			t.Fatalf("normalize changed the length: %q -> %q", data, norm)
		}
		return
	}
	var se *SyntaxError
	if !errors.As(err, &se) || se.Line < 1 || se.Column < 1 {
		t.Fatalf("normalize error without a position: %v", err)
	}
	if json.Valid(data) && utf8.Valid(data) && !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("normalize rejected valid JSON %q: %v", data, err)
	}
}

// equal compares configs; reflect.DeepEqual also tells a nil MACAddr from
// an empty one, which matters because nil means "derive it".
func equal(a, b Config) bool { return reflect.DeepEqual(a, b) }
