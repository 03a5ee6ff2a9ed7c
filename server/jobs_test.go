package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
)

func TestJobRoundTrip(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Raft: failoverTiming})
	cl := newClient(t, c, client.Config{})
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
	// The topic, left without jobs, is forgotten with its count of
	// completions.
	st, err = cl.Stats(ctx, "mail")
	if err != nil || st != (client.JobCounts{}) {
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
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3})
	first, second := newClient(t, c, client.Config{}), newClient(t, c, client.Config{})
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
	if j2.Deadline.Add(-10 * time.Second).Before(j1.Deadline) { // deadlines travel in whole milliseconds
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
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3})
	cl := newClient(t, c, client.Config{})
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
	// The leader's clock is this process's clock here; deadlines travel in
	// whole milliseconds.
	if got := j.Deadline.Add(-time.Second).Sub(start); got < delay-time.Millisecond {
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
	page, err := cl.DeadJobs(ctx, "flaky", client.DeadJobCursor{})
	dead := page.Jobs
	if err != nil || len(dead) != 1 || dead[0].ID != id || dead[0].LastError != "broke 2" || dead[0].Attempts != 2 {
		t.Fatalf("dead jobs %+v, %v", page, err)
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
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	worker := newClient(t, c, client.Config{LongPoll: time.Second})
	producer := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := worker.Counters().Attempts
	enqueued := make(chan time.Time, 1)
	go func() {
		time.Sleep(2 * time.Second) // the idle wait the test measures, not a synchronization
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
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	cl := newClient(t, c, client.Config{})
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
	// Every node's heartbeats report the ready jobs of the shards it leads:
	// the second one from now was sent after the enqueues.
	heard := map[string]uint64{}
	for _, n := range cl.Nodes() {
		heard[n.ID] = n.Heartbeats
	}
	servertest.WaitFor(t, 5*time.Second, "two heartbeats from every node", func() bool {
		for _, n := range cl.Nodes() {
			if n.Heartbeats < heard[n.ID]+2 {
				return false
			}
		}
		return true
	})
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

// An interval job appears once per interval, also across a change of the
// schedule shard's leader.
func TestEveryAcrossLeaderChange(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming}) // an interval (2 s) must outlast the failover
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const interval = 2 * time.Second
	// The schedule makes its first job in the interval it is registered
	// in, which begins before Every returns (under the race detector, an
	// interval may end meanwhile).
	start := time.Now()
	if err := cl.Every(ctx, "cron", "tick", interval, []byte("p")); err != nil {
		t.Fatal(err)
	}
	if err := cl.Every(ctx, "cron", "tick", interval, []byte("p")); err != nil { // again: no extra job
		t.Fatal(err)
	}
	// Jobs of two intervals come from the first leader, of two more from
	// the next.
	made := func(n int) func() bool {
		return func() bool {
			st, err := cl.Stats(ctx, "cron")
			return err == nil && st.Ready >= n
		}
	}
	servertest.WaitFor(t, 3*interval, "two interval jobs", made(2))
	kill(t, c, leader(t, c, c.Map().SlotShard(shard.JobKeySlot("cron", "tick"))).ID())
	servertest.WaitFor(t, 4*interval, "two more interval jobs after the failover", made(4))
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
		if !seen[fsm.IntervalJobID("cron", "tick", k)] {
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

// grant is one hand-out of a job, as the handler saw it.
type grant struct {
	worker int
	token  uint64
	start  time.Time // when the lease began: the first deadline less the lease
	job    *client.Job
}

// 10,000 jobs, 8 workers; workers are killed at random mid-job (their
// clients closed under them, as a crash would) and replaced, and one shard
// leader is killed. Every job ends done exactly once in the state machine,
// none is lost, and no two workers ever held a job at once.
func TestJobsSurviveWorkerAndLeaderKills(t *testing.T) {
	// A soak: SHOAL_LONG=1 runs 10,000 jobs, CI 4,000.
	jobs := 4000
	switch {
	case os.Getenv("SHOAL_LONG") != "":
		jobs = 10000
	case testing.Short():
		jobs = 2000
	}
	const workers = 8
	const lease = time.Second
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	producer := newClient(t, c, client.Config{})
	var wg sync.WaitGroup
	var emu sync.Mutex
	enqueued := map[string]bool{} // acknowledged
	failures := 0                 // enqueues that failed: they may have applied all the same
	// Producers enqueue in batches of 20, a failed batch again whole.
	const batch = 20
	for p := 0; p < 16; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := p * batch; first < jobs; first += 16 * batch {
				var b []client.NewJob
				for i := first; i < min(first+batch, jobs); i++ {
					b = append(b, client.NewJob{Topic: "work", Payload: []byte(fmt.Sprint(i))})
				}
				for ctx.Err() == nil {
					ids, err := producer.EnqueueBatch(ctx, b)
					emu.Lock()
					for _, id := range ids {
						if id != "" {
							enqueued[id] = true
						}
					}
					if err != nil {
						failures += len(b)
					}
					emu.Unlock()
					if err == nil {
						break
					}
				}
			}
		}()
	}
	wg.Wait()

	var mu sync.Mutex
	grants := map[string][]grant{}
	type running struct {
		cl     *client.Client
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(n int) *running {
		cl := newClient(t, c, client.Config{})
		wctx, wcancel := context.WithCancel(ctx)
		w := &client.Worker{
			Client: cl, Topic: "work", Lease: lease, Concurrency: 2,
			Handler: func(hctx context.Context, j *client.Job) error {
				mu.Lock()
				grants[j.ID] = append(grants[j.ID], grant{worker: n, token: j.Token, start: j.Deadline.Add(-lease), job: j})
				mu.Unlock()
				select { // a little work
				case <-time.After(time.Duration(rand.IntN(3)) * time.Millisecond):
				case <-hctx.Done():
				}
				return nil
			},
		}
		r := &running{cl: cl, cancel: wcancel, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			w.Run(wctx)
		}()
		return r
	}
	pool := make([]*running, workers)
	next := 0
	for i := range pool {
		pool[i] = start(next)
		next++
	}
	// Done when every shard's leader holds no job and has counted at least
	// the acknowledged ones complete.
	done := func() bool {
		var completed uint64
		for _, s := range c.Map().Shards {
			l := c.Leader(s.ID)
			if l == nil {
				return false
			}
			st := l.ShardStats(s.ID)
			if st.Jobs > 0 {
				return false
			}
			completed += st.JobsCompleted
		}
		return completed >= uint64(len(enqueued))
	}
	kills, leaderKilled := 0, false
	began := time.Now()
	for !done() {
		if ctx.Err() != nil {
			t.Fatal("the jobs did not all complete within 5 minutes")
		}
		time.Sleep(200 * time.Millisecond) // the pace of the crashes
		// Crash a worker: its client goes away mid-job, without a word.
		i := rand.IntN(workers)
		dead, stop := context.WithCancel(context.Background())
		stop()
		pool[i].cl.Close(dead)
		pool[i].cancel()
		<-pool[i].done
		pool[i] = start(next)
		next++
		kills++
		if !leaderKilled && time.Since(began) > time.Second {
			victim := leader(t, c, 0)
			t.Logf("killing %s, leader of shard 0", victim.ID())
			kill(t, c, victim.ID())
			leaderKilled = true
		}
	}
	for _, r := range pool {
		r.cancel()
		<-r.done
	}
	t.Logf("%d jobs done in %v with %d worker crashes (%d enqueues failed and were retried)",
		len(enqueued), time.Since(began), kills, failures)

	// Done exactly once, in the state machine: the shards count one
	// completion per job handed out (every job that exists was), and no
	// job is left in any state.
	waitReady(t, c)
	var completed uint64
	var left int
	for _, s := range c.Map().Shards {
		st := leader(t, c, s.ID).ShardStats(s.ID)
		completed += st.JobsCompleted
		left += st.Jobs
	}
	mu.Lock()
	defer mu.Unlock()
	if completed != uint64(len(grants)) || left != 0 {
		t.Errorf("%d completions and %d jobs left for %d jobs handed out", completed, left, len(grants))
	}
	// None lost: every acknowledged job was handed out; a job that was
	// not acknowledged can only come from a failed enqueue.
	for id := range enqueued {
		if len(grants[id]) == 0 {
			t.Errorf("job %s was never handed out", id)
		}
	}
	if extra := len(grants) - len(enqueued); extra < 0 || extra > failures {
		t.Errorf("%d jobs handed out for %d acknowledged and %d failed enqueues", len(grants), len(enqueued), failures)
	}
	// No two holds of a job overlap: each grant began after the lease
	// before it ended, as far as its holder had extended it.
	regrants := 0
	for id, gs := range grants {
		sort.Slice(gs, func(i, j int) bool { return gs[i].token < gs[j].token })
		for i := 1; i < len(gs); i++ {
			regrants++
			prev, cur := gs[i-1], gs[i]
			if cur.token == prev.token {
				t.Errorf("job %s granted twice with token %d", id, cur.token)
			}
			if cur.start.Before(prev.job.Deadline.Add(-time.Millisecond)) {
				t.Errorf("job %s: worker %d's lease (token %d) began at %v, before worker %d's (token %d) ended at %v",
					id, cur.worker, cur.token, cur.start, prev.worker, prev.token, prev.job.Deadline)
			}
		}
	}
	t.Logf("%d jobs were handed out again after a lease ran out", regrants)
}

// A lease that ran out while its shard was idle stays run out when the
// leader changes later: the leader ticks the clock past lease ends, so the
// new leader's grace goes only to leases live when the old one stopped.
func TestLapsedLeaseStaysLapsedAcrossLeaderChange(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3})
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.Enqueue(ctx, "t", nil, client.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	j, err := cl.Acquire(ctx, "t", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The lease runs out, and the leader ticks the state machine's clock
	// past it: the only entry applied after the acquire's.
	lead := leader(t, c, 0)
	after := lead.ShardStats(0).Applied
	servertest.WaitFor(t, 5*time.Second, "a tick past the lease's end", func() bool {
		return time.Now().After(j.Deadline) && lead.ShardStats(0).Applied > after
	})
	kill(t, c, lead.ID())
	waitReady(t, c)
	if err := cl.Complete(ctx, j); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("Complete on a lease that ran out before the leader changed: %v, want ErrLeaseLost", err)
	}
}

// Dead jobs list in pages that fit a datagram: ten dead jobs of 40 KiB on
// one shard, one to a page, can all be found and requeued.
func TestDeadJobsPageThroughLargePayloads(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Raft: failoverTiming})
	cl := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	payload := bytes.Repeat([]byte("x"), 40<<10)
	want := map[string]bool{}
	for range 10 {
		id, err := cl.Enqueue(ctx, "big", payload, client.EnqueueOptions{MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		want[id] = true
		j, err := cl.Acquire(ctx, "big", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.Fail(ctx, j, "too big to list"); err != nil {
			t.Fatal(err)
		}
	}
	pages, listed := 0, 0
	for cur := (&client.DeadJobCursor{}); cur != nil; {
		page, err := cl.DeadJobs(ctx, "big", *cur)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		for _, d := range page.Jobs {
			if !want[d.ID] || !bytes.Equal(d.Payload, payload) {
				t.Fatalf("listed %s (%d bytes), not one of the dead jobs", d.ID, len(d.Payload))
			}
			if err := cl.Requeue(ctx, d.ID); err != nil {
				t.Fatalf("requeue %s: %v", d.ID, err)
			}
			delete(want, d.ID)
			listed++
		}
		cur = page.Next
	}
	if listed != 10 || len(want) != 0 || pages < 10 {
		t.Errorf("listed and requeued %d of 10 in %d pages; left %v", listed, pages, want)
	}
	if st, err := cl.Stats(ctx, "big"); err != nil || st.Dead != 0 || st.Ready != 10 {
		t.Errorf("stats after requeueing: %+v, %v", st, err)
	}
}
