package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Defaults of Worker.
const (
	DefaultWorkerLease = 30 * time.Second
	DefaultJobTimeout  = 30 * time.Minute
	DefaultStopTimeout = 10 * time.Second
)

// handlerGrace is how long a handler whose context was cancelled has to
// return before the worker leaves it behind; stopGrace is how long after
// StopTimeout a stopping worker goes on, for handlers cancelled then to
// return (handlerGrace) and their jobs to be released.
const (
	handlerGrace = time.Second
	stopGrace    = 2 * handlerGrace
)

// Handler does a job. It should return when ctx ends: the job's lease was
// lost, it ran past JobTimeout, or the worker is stopping.
type Handler func(ctx context.Context, job *Job) error

// Worker runs Handler on the jobs of Topic, Concurrency at a time. It
// extends each lease every third of its length while the handler runs,
// completes the job when the handler returns nil (asking, in the same
// request, for the next job of the completed job's shard: see
// Client.CompleteAndAcquire; only when that shard has none does it
// Acquire, which asks them all and waits; after eight jobs in a row from
// one shard, while heartbeats report others with ready jobs of Topic, it
// completes alone and acquires from one of those, so that a busy shard
// does not starve the rest), and fails it (to be retried with backoff, or
// to die after its last attempt) when the handler returns an error or
// panics; the worker itself survives panics.
//
// A handler that runs past JobTimeout loses its job: the worker stops
// extending the lease, cancels the handler's context and moves on, and the
// job goes to another worker when the lease runs out. When Run's context
// ends, the worker stops acquiring; handlers running get StopTimeout to
// finish, then their context is cancelled and their jobs are released.
// Run returns at most two seconds past StopTimeout after its context
// ends, even when no node answers: completions, failures and releases not
// done by then are given up, and their jobs run again when their leases
// run out.
type Worker struct {
	Client  *Client
	Topic   string
	Handler Handler
	// Concurrency is how many jobs run at once. If zero, 1.
	Concurrency int
	// Lease is the lease asked for each job. If zero, DefaultWorkerLease.
	Lease time.Duration
	// JobTimeout bounds one run of the handler. If zero,
	// DefaultJobTimeout.
	JobTimeout time.Duration
	// StopTimeout is how long running handlers may go on after Run's
	// context ends. If zero, DefaultStopTimeout.
	StopTimeout time.Duration
	// Logger receives the worker's logs. If nil, the client's.
	Logger *slog.Logger

	completed, failed, released, lost, abandoned atomic.Uint64
}

// WorkerCounters counts what a worker did with the jobs it acquired.
type WorkerCounters struct {
	// Completed, Failed and Released count jobs so ended; Lost counts
	// jobs whose lease was lost while the handler ran (ErrLeaseLost from
	// an extend or on completion); Abandoned counts handlers that ran
	// past JobTimeout and were left behind.
	Completed, Failed, Released, Lost, Abandoned uint64
}

// Counters returns the worker's counters.
func (w *Worker) Counters() WorkerCounters {
	return WorkerCounters{
		Completed: w.completed.Load(), Failed: w.failed.Load(), Released: w.released.Load(),
		Lost: w.lost.Load(), Abandoned: w.abandoned.Load(),
	}
}

// Run works until ctx ends or the client closes, and returns once every
// handler it started has returned or been abandoned.
func (w *Worker) Run(ctx context.Context) error {
	if w.Client == nil || w.Handler == nil || w.Topic == "" {
		return errors.New("client: a Worker needs a Client, a Topic and a Handler")
	}
	n := max(w.Concurrency, 1)
	if w.Lease <= 0 {
		w.Lease = DefaultWorkerLease
	}
	if w.JobTimeout <= 0 {
		w.JobTimeout = DefaultJobTimeout
	}
	if w.StopTimeout <= 0 {
		w.StopTimeout = DefaultStopTimeout
	}
	if w.Logger == nil {
		w.Logger = w.Client.log
	}
	// settleBy ends stopGrace past StopTimeout after ctx: requests that
	// settle jobs give up then, so that an outage cannot hold Run for a
	// lease.
	settleBy, cancelSettle := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSettle()
	stopAfter := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(w.StopTimeout+stopGrace, cancelSettle)
		context.AfterFunc(settleBy, func() { t.Stop() })
	})
	defer stopAfter()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(ctx, settleBy)
		}()
	}
	wg.Wait()
	return nil
}

// chainedJobs is how many jobs in a row a worker loop takes from one shard
// through CompleteAndAcquire before, if heartbeats report another shard
// with ready jobs of its topic, it completes alone and acquires elsewhere.
// The completion that brings the next job keeps a loop on its shard while
// the shard has jobs; this bound keeps a busy shard from starving the
// others. Eight costs a rotating loop one request more per eight jobs
// (about 12%), and holds it on a shard for at most eight jobs while others
// wait; a loop whose shard is the only one with ready jobs never pays it.
const chainedJobs = 8

// loop acquires and works jobs until ctx ends. In steady state each job
// costs one request: the completion of the one before, which brings it.
// Settling requests end with settleBy.
func (w *Worker) loop(ctx, settleBy context.Context) {
	var next *Job
	var avoid []shard.ID // the shard just left to let others be served
	chained := 0         // jobs in a row brought by completions
	for ctx.Err() == nil {
		job := next
		if job == nil {
			var err error
			job, err = w.Client.acquire(ctx, w.Topic, w.Lease, avoid)
			chained = 0
			switch {
			case err == nil:
			case ctx.Err() != nil, errors.Is(err, ErrClosed):
				return
			default:
				w.Logger.Warn("acquiring a job failed", "topic", w.Topic, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
		}
		next, avoid = w.work(ctx, settleBy, job, chained >= chainedJobs)
		if next != nil {
			chained++
		}
	}
	if next != nil {
		w.release(settleBy, next) // leased as Run's context ended
	}
}

// outcome is how a handler run ended.
type outcome struct {
	err      error
	panicked bool
	stack    []byte // of a panic
}

// work runs the handler on job, keeping its lease, and settles the job.
// It returns the next job, if the completion brought one; with mayLeave,
// a completion may instead leave job's shard for others with ready jobs,
// and then returns that shard, to be avoided by the next acquire.
func (w *Worker) work(runCtx, settleBy context.Context, job *Job, mayLeave bool) (*Job, []shard.ID) {
	// The handler's context outlives Run's by StopTimeout.
	jobCtx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), w.JobTimeout)
	defer cancel()
	stopping := atomic.Bool{}
	stopAfter := context.AfterFunc(runCtx, func() {
		stopping.Store(true)
		t := time.AfterFunc(w.StopTimeout, cancel)
		context.AfterFunc(jobCtx, func() { t.Stop() })
	})
	defer stopAfter()

	done := make(chan outcome, 1)
	held := *job // the handler's own copy; Extend updates job
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- outcome{err: fmt.Errorf("panic: %v", p), panicked: true, stack: debug.Stack()}
			}
		}()
		done <- outcome{err: w.Handler(jobCtx, &held)}
	}()
	// leave cancels the handler and gives it a moment to return; a job
	// whose handler does not is left to run out its lease, never released
	// or settled while the handler may still work on it.
	leave := func() (outcome, bool) {
		cancel()
		select {
		case o := <-done:
			return o, true
		case <-time.After(handlerGrace):
			w.abandoned.Add(1)
			return outcome{}, false
		}
	}

	tick := time.NewTicker(max(w.Lease/3, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case o := <-done:
			return w.settle(runCtx, settleBy, job, o, stopping.Load() && jobCtx.Err() != nil, mayLeave)
		case <-tick.C:
			err := w.Client.Extend(jobCtx, job, w.Lease)
			switch {
			case errors.Is(err, ErrLeaseLost), err != nil && time.Now().After(job.Deadline):
				// The job is someone else's now, or may be: the lease ran
				// out without an extension. Tell the handler.
				w.lost.Add(1)
				leave()
				return nil, nil
			case err != nil && jobCtx.Err() == nil:
				w.Logger.Warn("extending a lease failed; trying again", "job", job.ID, "err", err)
			}
		case <-jobCtx.Done():
			if stopping.Load() && !errors.Is(jobCtx.Err(), context.DeadlineExceeded) {
				// Stopping: the handler had its StopTimeout; if it
				// returns now, its job is settled (released if it gave up).
				if o, ok := leave(); ok {
					w.settle(runCtx, settleBy, job, o, true, false)
				}
				return nil, nil
			}
			// Past JobTimeout: leave the handler behind; the lease runs
			// out and the job goes to another worker.
			w.abandoned.Add(1)
			w.Logger.Warn("a handler ran past the job timeout; its job will go to another worker",
				"job", job.ID, "timeout", w.JobTimeout)
			return nil, nil
		}
	}
}

// settle completes, fails or releases job after its handler returned. A
// completion while runCtx goes on asks for the next job, which it returns,
// or, with mayLeave and other shards reported ready, completes alone and
// returns job's shard for the next acquire to avoid. Its requests end
// with settleBy.
func (w *Worker) settle(runCtx, settleBy context.Context, job *Job, o outcome, stopped, mayLeave bool) (*Job, []shard.ID) {
	ctx, cancel := context.WithTimeout(settleBy, w.Lease)
	defer cancel()
	var next *Job
	var left []shard.ID
	var err error
	switch {
	case o.err == nil:
		var elsewhere bool
		var id shard.ID
		if mayLeave {
			id, elsewhere = w.Client.readyElsewhere(w.Topic, job)
		}
		if elsewhere {
			err, left = w.Client.Complete(ctx, job), []shard.ID{id}
		} else {
			next, err = w.complete(runCtx, ctx, job)
		}
		if err == nil {
			w.completed.Add(1)
		}
	case stopped && !o.panicked:
		w.release(settleBy, job)
		return nil, nil
	default:
		if o.panicked {
			w.Logger.Error("a handler panicked; failing its job", "job", job.ID, "err", o.err, "stack", string(o.stack))
		}
		if err = w.Client.Fail(ctx, job, o.err.Error()); err == nil {
			w.failed.Add(1)
		}
	}
	if errors.Is(err, ErrLeaseLost) {
		w.lost.Add(1)
	} else if err != nil {
		w.Logger.Warn("settling a job failed; it runs again when its lease runs out", "job", job.ID, "err", err)
	}
	return next, left
}

// complete completes job within ctx and, unless runCtx has ended, leases
// the next job of its shard in the same request. A node that does not
// know that request refuses it having changed nothing (an unknown op):
// then job is completed alone.
func (w *Worker) complete(runCtx, ctx context.Context, job *Job) (*Job, error) {
	if runCtx.Err() != nil {
		return nil, w.Client.Complete(ctx, job)
	}
	next, err := w.Client.CompleteAndAcquire(ctx, job, w.Topic, w.Lease)
	if e := (*Error)(nil); errors.As(err, &e) && e.Code == wire.CodeUnknownOp {
		return nil, w.Client.Complete(ctx, job)
	}
	return next, err
}

// release gives job back, trying until its lease or settleBy ends.
func (w *Worker) release(settleBy context.Context, job *Job) {
	ctx, cancel := context.WithTimeout(settleBy, w.Lease)
	defer cancel()
	if err := w.Client.Release(ctx, job); err != nil {
		w.Logger.Warn("releasing a job failed; it runs again when its lease runs out", "job", job.ID, "err", err)
		return
	}
	w.released.Add(1)
}
