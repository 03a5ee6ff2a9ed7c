package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecode feeds arbitrary datagrams to the decoder. It must never panic,
// must fail only with ErrMalformed or ErrTooLarge, and whatever it accepts
// must survive a round trip through Encode.
//
// CI runs it briefly: go test -run '^$' -fuzz FuzzDecode -fuzztime 30s ./wire
func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages(f) {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"", "i00e", "d2:op99999999999:x", "de", "le", "d1:y1:qe",
		"d1:ad1:ki3ee1:q3:get1:ti7e1:y1:qe",
		"d1:eli404e9:not founde1:n2:n11:ti1e1:y1:ee",
		strings.Repeat("l", 20) + strings.Repeat("e", 20),
		"d1:n2:n11:rd2:tpd1:md1:rld1:ai0e1:bi4096e1:si0eee1:sld1:ii0e1:nl2:n1eee1:vi1ee1:nld1:a4:h:121:i2:n1eeee1:ti1e1:y1:re",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Decode(%q) = %v: neither ErrMalformed nor ErrTooLarge", b, err)
			}
			return
		}
		enc, err := Encode(&m)
		if err != nil {
			t.Fatalf("Decode(%q) accepted %+v, which does not encode: %v", b, m, err)
		}
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", enc, err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip of %q changed the message:\n%+v\n%+v", b, m, again)
		}
	})
}
