package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/wire"
)

// Requeue takes dead jobs only: one that is not dead fails with its own
// sentinel, not with a version conflict, and an unknown one is not found.
func TestRequeueOfALiveJob(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	id, err := c.Enqueue(ctx, "requeue-live", []byte("p"), client.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Requeue(ctx, id)
	if !errors.Is(err, client.ErrWrongState) {
		t.Errorf("requeue of a queued job: %v, want ErrWrongState", err)
	}
	if errors.Is(err, client.ErrVersionConflict) {
		t.Errorf("requeue of a queued job matches ErrVersionConflict: %v", err)
	}
	if err := c.Requeue(ctx, "j000.no-such-job"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("requeue of an unknown job: %v, want ErrNotFound", err)
	}
}

// EnqueueBatch sends the keyless jobs of a call together, in as many
// requests as datagrams they need, and returns their ids in order.
func TestEnqueueBatchSplitsByDatagram(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		jobs     int
		payload  int
		requests uint64
	}{
		{"small jobs, by count", 2*wire.MaxBatchJobs + 20, 10, 3},
		{"large jobs, by size", 3, 40 << 10, 3},
		{"two fit", 2, 30 << 10, 1},
	} {
		topic := "batch-" + tc.name
		var jobs []client.NewJob
		for i := range tc.jobs {
			p := make([]byte, tc.payload)
			copy(p, fmt.Sprint(i))
			jobs = append(jobs, client.NewJob{Topic: topic, Payload: p})
		}
		before := c.Counters().Requests
		ids, err := c.EnqueueBatch(ctx, jobs)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := c.Counters().Requests - before; got != tc.requests {
			t.Errorf("%s: %d requests, want %d", tc.name, got, tc.requests)
		}
		if len(ids) != tc.jobs || slices.Contains(ids, "") || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != tc.jobs {
			t.Errorf("%s: ids %v", tc.name, ids)
		}
		if st, err := c.Stats(ctx, topic); err != nil || st.Ready != tc.jobs {
			t.Errorf("%s: stats %+v, %v", tc.name, st, err)
		}
		// In the order of the call: the first acquired is the first job.
		j, err := c.Acquire(ctx, topic, time.Second)
		if err == nil && tc.requests == 1 && (j.ID != ids[0] || !bytes.HasPrefix(j.Payload, []byte("0"))) {
			t.Errorf("%s: acquired %s first, want %s", tc.name, j.ID, ids[0])
		}
	}
	if ids, err := c.EnqueueBatch(ctx, nil); ids == nil || len(ids) != 0 || err != nil {
		t.Errorf("an empty batch: %v, %v", ids, err)
	}
}
