package client

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
)

// keysOn returns n keys of topic whose jobs go to shard id under m.
func keysOn(m *shard.Map, topic string, id shard.ID, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("k%d", i)
		if m.SlotShard(shard.JobKeySlot(topic, k)) == id {
			keys = append(keys, k)
		}
	}
	return keys
}

// A worker whose completions keep bringing jobs of one shard still serves
// another shard that heartbeats report with ready jobs: after a bounded
// run of jobs on one shard it completes alone and acquires from the other.
// It runs on the cluster TestMain starts.
func TestWorkerServesEveryShard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := New(ctx, Config{Seeds: strings.Split(os.Getenv("SHOAL_SEEDS"), ","),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	const topic, perShard = "two-shards", 3 * chainedJobs
	m := c.Map()
	var jobs []NewJob
	for _, s := range m.Shards[:2] {
		for _, k := range keysOn(m, topic, s.ID, perShard) {
			jobs = append(jobs, NewJob{Topic: topic, EnqueueOptions: EnqueueOptions{Key: k}})
		}
	}
	if _, err := c.EnqueueBatch(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 10*time.Second, "heartbeats reporting both shards ready", func() bool {
		_, shards := c.readyLeaders(topic, nil)
		return len(shards) == 2
	})
	var mu sync.Mutex
	var served []shard.ID // the shard of each job, in the order done
	runCtx, stop := context.WithCancel(ctx)
	w := &Worker{Client: c, Topic: topic, Handler: func(ctx context.Context, j *Job) error {
		mu.Lock()
		defer mu.Unlock()
		if served = append(served, m.SlotShard(shard.JobSlot(j.ID))); len(served) == perShard {
			stop()
		}
		return nil
	}}
	if err := w.Run(runCtx); err != nil {
		t.Fatal(err)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(served) < perShard {
		t.Fatalf("the worker did %d jobs before its context ended; want %d", len(served), perShard)
	}
	count := map[shard.ID]int{}
	for _, id := range served[:perShard] {
		count[id]++
	}
	if len(count) != 2 {
		t.Errorf("the first %d jobs came from shards %v; want both fed shards served", perShard, count)
	}
}
