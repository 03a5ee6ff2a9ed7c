package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/shoal-kv/shoal/client"
)

// BenchmarkSet measures one set, end to end, on an in-process cluster of 3
// nodes with one shard of 3 replicas: client, UDP, forwarding, raft with
// fsync, state machine. Requests in flight: GOMAXPROCS (set it with -cpu).
func BenchmarkSet(b *testing.B) {
	c := newTestCluster(b, 3, 1, 3)
	cl := c.client(client.Config{})
	ctx := context.Background()
	value := make([]byte, 100)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if _, err := cl.Set(ctx, fmt.Sprintf("k%08d", i%100000), value); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
