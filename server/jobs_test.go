package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/shard"
)

func TestJobRoundTrip(t *testing.T) {
	c := newTestCluster(t, 3, 4, 3)
	cl := c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := cl.Enqueue(ctx, "mail", []byte("hello"), client.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	j, err := cl.Acquire(ctx, "mail", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != id || string(j.Payload) != "hello" || j.Attempt != 1 || j.Token == 0 || time.Until(j.Deadline) < 5*time.Second {
		t.Fatalf("acquired %+v, enqueued %s", j, id)
	}
	before := j.Deadline
	if err := cl.Extend(ctx, j, 20*time.Second); err != nil || !j.Deadline.After(before) {
		t.Fatalf("extend: %v, deadline %v → %v", err, before, j.Deadline)
	}
	st, err := cl.Stats(ctx, "mail")
	if err != nil || st != (client.JobCounts{Leased: 1}) {
		t.Errorf("stats while leased: %+v, %v", st, err)
	}
	if err := cl.Complete(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := cl.Complete(ctx, j); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("a second Complete: %v, want ErrLeaseLost", err)
	}
	st, err = cl.Stats(ctx, "mail")
	if err != nil || st != (client.JobCounts{Done: 1}) {
		t.Errorf("stats after completion: %+v, %v", st, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if j, err := cl.Acquire(short, "mail", time.Second); !errors.Is(err, client.ErrNoJob) {
		t.Errorf("acquire with nothing queued: %+v, %v; want ErrNoJob", j, err)
	}
}

// A worker that stops extending loses the job when its lease runs out;
// another gets it with a larger token; the first one's Complete fails with
// ErrLeaseLost, the second's succeeds.
func TestStaleHolderIsRefused(t *testing.T) {
	c := newTestCluster(t, 3, 2, 3)
	first, second := c.client(client.Config{}), c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := first.Enqueue(ctx, "t", []byte("x"), client.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	j1, err := first.Acquire(ctx, "t", 400*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	j2, err := second.Acquire(ctx, "t", 10*time.Second) // waits for the lease to run out
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the second acquire waited %v", time.Since(t0))
	if j2.ID != j1.ID || j2.Token <= j1.Token || j2.Attempt != 2 {
		t.Fatalf("second grant %+v after %+v", j2, j1)
	}
	if !j2.Deadline.Add(-10 * time.Second).After(j1.Deadline) {
		t.Errorf("the second lease began at %v, before the first ran out at %v", j2.Deadline.Add(-10*time.Second), j1.Deadline)
	}
	if err := first.Complete(ctx, j1); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("stale holder's Complete: %v, want ErrLeaseLost", err)
	}
	if err := first.Extend(ctx, j1, time.Minute); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("stale holder's Extend: %v, want ErrLeaseLost", err)
	}
	if err := second.Complete(ctx, j2); err != nil {
		t.Errorf("current holder's Complete: %v", err)
	}
}

func TestDelayedFailedAndDeadJobs(t *testing.T) {
	c := newTestCluster(t, 3, 2, 3)
	cl := c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const delay = 700 * time.Millisecond
	start := time.Now()
	if _, err := cl.Enqueue(ctx, "later", nil, client.EnqueueOptions{Delay: delay}); err != nil {
		t.Fatal(err)
	}
	if st, _ := cl.Stats(ctx, "later"); st.Scheduled != 1 {
		t.Errorf("a delayed job counts %+v, want scheduled", st)
	}
	j, err := cl.Acquire(ctx, "later", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The leader's clock is this process's clock here.
	if got := j.Deadline.Add(-time.Second).Sub(start); got < delay {
		t.Errorf("a job delayed %v was handed out after %v", delay, got)
	}

	id, err := cl.Enqueue(ctx, "flaky", []byte("p"), client.EnqueueOptions{MaxAttempts: 2, Backoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		j, err := cl.Acquire(ctx, "flaky", time.Second)
		if err != nil || j.Attempt != attempt {
			t.Fatalf("attempt %d: %+v, %v", attempt, j, err)
		}
		if err := cl.Fail(ctx, j, fmt.Sprint("broke ", attempt)); err != nil {
			t.Fatal(err)
		}
	}
	dead, err := cl.DeadJobs(ctx, "flaky", 10)
	if err != nil || len(dead) != 1 || dead[0].ID != id || dead[0].LastError != "broke 2" || dead[0].Attempts != 2 {
		t.Fatalf("dead jobs %+v, %v", dead, err)
	}
	if st, _ := cl.Stats(ctx, "flaky"); st.Dead != 1 || st.Ready+st.Scheduled != 0 {
		t.Errorf("stats %+v", st)
	}
	if err := cl.Requeue(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.Requeue(ctx, id); err == nil {
		t.Error("requeued a job that is not dead")
	}
	if j, err := cl.Acquire(ctx, "flaky", time.Second); err != nil || j.ID != id || j.Attempt != 1 {
		t.Errorf("after requeue: %+v, %v", j, err)
	}
	// Uniqueness: a second enqueue with the key returns the first job.
	a, _ := cl.Enqueue(ctx, "u", nil, client.EnqueueOptions{Key: "k"})
	b, _ := cl.Enqueue(ctx, "u", nil, client.EnqueueOptions{Key: "k"})
	if a == "" || a != b {
		t.Errorf("enqueues with one key gave %q and %q", a, b)
	}
}

// An idle worker waits at a node, not on the network: one Acquire waiting
// two seconds sends a handful of requests, and a job enqueued meanwhile
// reaches it at once.
func TestAcquireWaitsWithoutSpinning(t *testing.T) {
	c := newTestCluster(t, 3, 4, 3)
	worker := c.client(client.Config{LongPoll: time.Second})
	producer := c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := worker.Counters().Attempts
	enqueued := make(chan time.Time, 1)
	go func() {
		time.Sleep(2 * time.Second)
		if _, err := producer.Enqueue(ctx, "idle", []byte("x"), client.EnqueueOptions{}); err == nil {
			enqueued <- time.Now()
		}
	}()
	j, err := worker.Acquire(ctx, "idle", time.Second)
	got := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	sent := worker.Counters().Attempts - before
	t.Logf("an Acquire that waited 2s sent %d requests; the job reached it %v after its enqueue returned", sent, got.Sub(<-enqueued))
	if sent > 6 {
		t.Errorf("an idle Acquire sent %d requests in 2s", sent)
	}
	if j.Topic != "idle" {
		t.Errorf("acquired %+v", j)
	}
}

// With four shards and ready jobs on only one, Acquire finds a job on its
// first or second request in at least 95% of calls: nodes report ready
// counts per shard in their heartbeats, and clients go where the jobs are.
func TestAcquireGoesWhereJobsAre(t *testing.T) {
	c := newTestCluster(t, 3, 4, 3)
	cl := c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	smap := cl.Map()
	const jobs = 200
	const target = shard.ID(2)
	for i, n := 0, 0; n < jobs; i++ {
		key := fmt.Sprint("k", i)
		if smap.SlotShard(shard.JobKeySlot("one", key)) != target {
			continue
		}
		if _, err := cl.Enqueue(ctx, "one", nil, client.EnqueueOptions{Key: key}); err != nil {
			t.Fatal(err)
		}
		n++
	}
	time.Sleep(2 * server250ms) // let heartbeats report the ready jobs
	within2 := 0
	var worst uint64
	for i := 0; i < jobs; i++ {
		before := cl.Counters().Requests
		j, err := cl.Acquire(ctx, "one", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		reqs := cl.Counters().Requests - before
		worst = max(worst, reqs)
		if reqs <= 2 {
			within2++
		}
		if err := cl.Complete(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d acquires found a job on their first or second request (worst: %d)", within2, jobs, worst)
	if within2*100 < jobs*95 {
		t.Errorf("only %d of %d acquires found a job within two requests", within2, jobs)
	}
}

const server250ms = DefaultHeartbeatInterval

// An interval job appears once per interval, also across a change of the
// schedule shard's leader.
func TestEveryAcrossLeaderChange(t *testing.T) {
	c := newTestCluster(t, 3, 2, 3)
	cl := c.client(client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const interval = 2 * time.Second
	if err := cl.Every(ctx, "cron", "tick", interval, []byte("p")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cl.Every(ctx, "cron", "tick", interval, []byte("p")); err != nil { // again: no extra job
		t.Fatal(err)
	}
	time.Sleep(interval + interval/2)
	victim := c.leader(cl.Map().SlotShard(shard.JobKeySlot("cron", "tick")))
	c.stop(victim.ID())
	time.Sleep(2 * interval)
	end := time.Now()
	if err := cl.StopEvery(ctx, "cron", "tick"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		short, cancelShort := context.WithTimeout(ctx, time.Second)
		j, err := cl.Acquire(short, "cron", time.Minute)
		cancelShort()
		if errors.Is(err, client.ErrNoJob) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	sort.Strings(ids)
	first, last := start.UnixNano()/int64(interval), end.UnixNano()/int64(interval)
	t.Logf("intervals %d to %d made jobs %v", first, last, ids)
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("two jobs with id %s", id)
		}
		seen[id] = true
	}
	for k := first; k <= last; k++ {
		if !seen[shard.IntervalJobID("cron", "tick", k)] {
			t.Errorf("no job for interval %d", k)
		}
	}
	if len(ids) != int(last-first+1) {
		t.Errorf("%d jobs for %d intervals", len(ids), last-first+1)
	}
	if !strings.HasPrefix(ids[0], "j") {
		t.Errorf("interval job id %q", ids[0])
	}
}
