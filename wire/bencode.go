package wire

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/shoal-kv/shoal/shard"
)

// appendValue appends the bencoding of v. Encoding is the easy half of
// bencode, and bencode-go's Marshal is slow at it: it formats every value
// through fmt and reflection (7 µs and 53 allocations for a set request,
// a quarter of the benchmark client's CPU). Decoding, the half that meets
// untrusted input, stays with bencode-go; TestEncodeMatchesBencodeGo holds
// this encoder to its Marshal.
//
// v is built by Encode, so only the types below occur; any other is a
// programming error, reported as one.
func appendValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case string:
		return appendBytes(b, v), nil
	case int64:
		return appendInt(b, v), nil
	case int:
		return appendInt(b, int64(v)), nil
	case uint64:
		b = append(b, 'i')
		b = strconv.AppendUint(b, v, 10)
		return append(b, 'e'), nil
	case shard.ID:
		return appendInt(b, int64(v)), nil
	case []shard.ID:
		b = append(b, 'l')
		for _, id := range v {
			b = appendInt(b, int64(id))
		}
		return append(b, 'e'), nil
	case []any:
		b = append(b, 'l')
		for _, e := range v {
			var err error
			if b, err = appendValue(b, e); err != nil {
				return nil, err
			}
		}
		return append(b, 'e'), nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys) // bencode dicts are sorted by their raw keys
		b = append(b, 'd')
		for _, k := range keys {
			b = appendBytes(b, k)
			var err error
			if b, err = appendValue(b, v[k]); err != nil {
				return nil, err
			}
		}
		return append(b, 'e'), nil
	default:
		return nil, fmt.Errorf("wire: encode: cannot encode a %T", v)
	}
}

func appendBytes(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

func appendInt(b []byte, n int64) []byte {
	b = append(b, 'i')
	b = strconv.AppendInt(b, n, 10)
	return append(b, 'e')
}

// encodeMap is the dict form of a shard map; decodeMap reads it back.
func encodeMap(m *shard.Map) map[string]any {
	shards := make([]any, len(m.Shards))
	for i, s := range m.Shards {
		replicas := make([]any, len(s.Replicas))
		for j, r := range s.Replicas {
			replicas[j] = r
		}
		shards[i] = map[string]any{"i": s.ID, "n": replicas}
	}
	ranges := make([]any, len(m.Ranges))
	for i, r := range m.Ranges {
		ranges[i] = map[string]any{"a": r.Start, "b": r.End, "s": r.Shard}
	}
	return map[string]any{"v": m.Version, "s": shards, "r": ranges}
}
