package wire

import (
	"fmt"
	"math"
	"time"
)

// fields reads typed values out of a decoded bencode dict. The first missing
// required field or wrong type is recorded in *err, with its path, and every
// later read returns a zero value, so decoders read straight through and
// check once.
type fields struct {
	d    map[string]any
	path string
	err  *error
}

func (f fields) at(key string) string {
	if f.path == "" {
		return key
	}
	return f.path + "." + key
}

func (f fields) fail(key, want string, got any) {
	if *f.err == nil {
		*f.err = fmt.Errorf("%w: field %s: want %s, got %s", ErrMalformed, f.at(key), want, typeName(got))
	}
}

func (f fields) get(key string, required bool) (any, bool) {
	if *f.err != nil {
		return nil, false
	}
	v, ok := f.d[key]
	if !ok && required {
		*f.err = fmt.Errorf("%w: missing field %s", ErrMalformed, f.at(key))
	}
	return v, ok
}

func (f fields) str(key string, required bool) string {
	v, ok := f.get(key, required)
	if !ok {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		f.fail(key, "a string", v)
	}
	return s
}

func (f fields) int(key string, required bool) int64 {
	v, ok := f.get(key, required)
	if !ok {
		return 0
	}
	n, ok := v.(int64)
	if !ok {
		f.fail(key, "an integer", v)
	}
	return n
}

func (f fields) uint(key string, required bool) uint64 {
	v, ok := f.get(key, required)
	if !ok {
		return 0
	}
	n, ok := v.(int64)
	if !ok || n < 0 {
		f.fail(key, "a non-negative integer", v)
		return 0
	}
	return uint64(n)
}

// uint32 reads an integer in [0, MaxUint32]: a shard id, a slot, a count
// or an attempt number.
func (f fields) uint32(key string, required bool) uint32 {
	n := f.uint(key, required)
	if n > math.MaxUint32 {
		f.fail(key, "an integer below 2^32", n)
		return 0
	}
	return uint32(n)
}

// millis reads an optional duration in milliseconds, at most MaxDuration.
func (f fields) millis(key string, max time.Duration) time.Duration {
	n := f.uint(key, false)
	if n > uint64(max/time.Millisecond) {
		f.fail(key, fmt.Sprintf("at most %v in milliseconds", max), n)
		return 0
	}
	return time.Duration(n) * time.Millisecond
}

// time reads an optional time in Unix milliseconds; absent, the zero time.
func (f fields) time(key string) time.Time {
	n := f.uint(key, false)
	if n == 0 {
		return time.Time{}
	}
	if n > maxUnixMilli {
		f.fail(key, "Unix milliseconds before the year 3000", n)
		return time.Time{}
	}
	return time.UnixMilli(int64(n))
}

// maxUnixMilli is the start of the year 3000 in Unix milliseconds.
const maxUnixMilli = 32503680000000

func (f fields) dict(key string) (fields, bool) {
	v, ok := f.get(key, false)
	if !ok {
		return fields{}, false
	}
	d, ok := v.(map[string]any)
	if !ok {
		f.fail(key, "a dict", v)
		return fields{}, false
	}
	return fields{d: d, path: f.at(key), err: f.err}, true
}

func (f fields) list(key string, required bool) []any {
	v, ok := f.get(key, required)
	if !ok {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		f.fail(key, "a list", v)
	}
	return l
}

// elemDict reads an element of a list that must be a dict; name is its
// path below f, like "n[3]".
func (f fields) elemDict(name string, v any) (fields, bool) {
	if *f.err != nil {
		return fields{}, false
	}
	d, ok := v.(map[string]any)
	if !ok {
		f.fail(name, "a dict", v)
		return fields{}, false
	}
	return fields{d: d, path: f.at(name), err: f.err}, true
}

func typeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string"
	case int64, uint64:
		return fmt.Sprintf("the integer %d", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a dict"
	default:
		return fmt.Sprintf("a %T", v)
	}
}
