package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
)

func newClient(t *testing.T) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, client.Config{
		Seeds:  strings.Split(os.Getenv("SHOAL_SEEDS"), ","),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// runUntil runs w until cond holds (or 20s pass) and stops it.
func runUntil(t *testing.T, w *client.Worker, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("condition not met; worker counters %+v", w.Counters())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// A panicking handler fails its job, which runs again after its backoff;
// the worker goes on.
func TestWorkerSurvivesPanic(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	if _, err := c.Enqueue(ctx, "panicky", nil, client.EnqueueOptions{Backoff: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	w := &client.Worker{Client: c, Topic: "panicky", Handler: func(ctx context.Context, j *client.Job) error {
		if runs.Add(1) == 1 {
			panic("boom")
		}
		return nil
	}}
	runUntil(t, w, func() bool { return w.Counters().Completed == 1 })
	if got := w.Counters(); got.Failed != 1 || runs.Load() != 2 {
		t.Errorf("counters %+v after %d runs; want one failure, then success", got, runs.Load())
	}
}

// A handler that hangs past JobTimeout loses its job: the worker stops
// extending the lease, and the job goes to another worker with a larger
// token when the lease runs out.
func TestHungHandlerLosesItsJob(t *testing.T) {
	a, b := newClient(t), newClient(t)
	ctx := context.Background()
	if _, err := a.Enqueue(ctx, "hangs", nil, client.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	var hungToken atomic.Uint64
	hung := &client.Worker{Client: a, Topic: "hangs", Lease: 300 * time.Millisecond, JobTimeout: 300 * time.Millisecond,
		Handler: func(ctx context.Context, j *client.Job) error {
			hungToken.Store(j.Token)
			<-release // ignores its context
			return nil
		}}
	runUntil(t, hung, func() bool { return hung.Counters().Abandoned == 1 })
	var token uint64
	healthy := &client.Worker{Client: b, Topic: "hangs", Handler: func(ctx context.Context, j *client.Job) error {
		token = j.Token
		return nil
	}}
	runUntil(t, healthy, func() bool { return healthy.Counters().Completed == 1 })
	if token <= hungToken.Load() {
		t.Errorf("the second worker's token %d is not above the hung one's %d", token, hungToken.Load())
	}
}

// Stopping a worker lets a running handler finish within StopTimeout; one
// that does not is cancelled and its job released, to run again at once
// with its attempt not counted.
func TestStopReleasesUnfinishedJob(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	if _, err := c.Enqueue(ctx, "slow", nil, client.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	w := &client.Worker{Client: c, Topic: "slow", StopTimeout: 100 * time.Millisecond,
		Handler: func(ctx context.Context, j *client.Job) error {
			started <- struct{}{}
			<-ctx.Done() // a long job that honours cancellation
			return ctx.Err()
		}}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(runCtx) }()
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got := w.Counters(); got.Released != 1 || got.Failed != 0 {
		t.Errorf("counters %+v: want the job released, not failed", got)
	}
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	j, err := c.Acquire(actx, "slow", time.Second)
	if err != nil || j.Attempt != 1 {
		t.Errorf("after release: %+v, %v; want the job again at attempt 1", j, err)
	}
	if err := c.Complete(ctx, j); err != nil && !errors.Is(err, client.ErrLeaseLost) {
		t.Error(err)
	}
}

// In steady state a worker takes one request per job: the completion of
// each brings the next (CompleteAndAcquire), and only a shard left without
// jobs sends it to Acquire.
func TestWorkerTakesOneRequestPerJob(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	const n = 30
	jobs := make([]client.NewJob, n)
	for i := range jobs {
		jobs[i] = client.NewJob{Topic: "steady", Payload: []byte{byte(i)}}
	}
	if _, err := c.EnqueueBatch(ctx, jobs); err != nil { // keyless: all on one shard
		t.Fatal(err)
	}
	var order []byte
	w := &client.Worker{Client: c, Topic: "steady", Handler: func(ctx context.Context, j *client.Job) error {
		order = append(order, j.Payload[0])
		return nil
	}}
	before := c.Counters().Requests
	runUntil(t, w, func() bool { return w.Counters().Completed == n })
	// n completions, the first acquire and the one after the last job:
	// each a long poll of up to one request per node (3) when the
	// heartbeats report nothing ready.
	if got := c.Counters().Requests - before; got > n+6 {
		t.Errorf("%d requests for %d jobs, want at most %d", got, n, n+6)
	}
	for i, p := range order {
		if int(p) != i {
			t.Fatalf("jobs done in the order %v, want the order of the batch", order)
		}
	}
}
