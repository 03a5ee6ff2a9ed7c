package server_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
)

// BenchmarkSet measures one set, end to end, on an in-process cluster of 3
// nodes with one shard of 3 replicas: client, UDP, forwarding, raft with
// fsync, state machine. Requests in flight: GOMAXPROCS (set it with -cpu).
func BenchmarkSet(b *testing.B) {
	c := servertest.New(b, servertest.Options{})
	cl := newClient(b, c, client.Config{})
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

// BenchmarkJobRoundTrip measures the job round trip of ../shared/peerbench:
// enqueue a job, acquire it, complete it, by 64 workers each on a topic of
// its own, on an in-process cluster of 3 nodes with 1 or 3 shards of 3
// replicas (fsync on). Put beside beanstalkd -f0's put+reserve+delete from
// the same machine. In one process every replica shares the CPUs and the
// disk, so more shards mean smaller raft batches for the same load.
func BenchmarkJobRoundTrip(b *testing.B) {
	for _, shards := range []int{1, 3} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) { benchJobs(b, shards) })
	}
}

func benchJobs(b *testing.B, shards int) {
	const workers = 64
	c := servertest.New(b, servertest.Options{Shards: shards})
	clients := make([]*client.Client, 8)
	for i := range clients {
		clients[i] = newClient(b, c, client.Config{})
	}
	ctx := context.Background()
	payload := make([]byte, 100)
	var next, errs atomic.Int64
	b.SetParallelism((workers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	// Like peerbench, a round trip that fails is counted, not fatal: a
	// failed enqueue is tried again, a job whose completion failed runs
	// out its lease.
	b.RunParallel(func(pb *testing.PB) {
		w := next.Add(1)
		cl := clients[int(w)%len(clients)]
		topic := fmt.Sprint("t", w)
		for pb.Next() {
			if _, err := cl.Enqueue(ctx, topic, payload, client.EnqueueOptions{}); err != nil {
				errs.Add(1)
				continue
			}
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			j, err := cl.Acquire(actx, topic, 30*time.Second)
			cancel()
			if err != nil {
				errs.Add(1)
				continue
			}
			if err := cl.Complete(ctx, j); err != nil {
				errs.Add(1)
			}
		}
	})
	b.ReportMetric(float64(b.N-int(errs.Load()))/time.Since(start).Seconds(), "roundtrips/s")
	b.ReportMetric(float64(errs.Load()), "errors")
}
