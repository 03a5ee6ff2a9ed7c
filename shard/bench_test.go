package shard

import (
	"fmt"
	"testing"
)

// BenchmarkShardOf is key → shard: xxhash of the key, then the slot's
// shard in an 8-shard map.
func BenchmarkShardOf(b *testing.B) {
	m, err := NewEvenMap([]string{"n1", "n2", "n3"}, 8, 3)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%08d", i*97)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var sink ID
	for i := 0; i < b.N; i++ {
		sink ^= m.ShardOf(keys[i%len(keys)])
	}
	_ = sink
}
