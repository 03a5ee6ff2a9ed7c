package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Job is a job leased to the caller by Acquire. Its Token fences the lease:
// Extend, Complete, Fail and Release present it, and once the lease is
// lost (run out, and perhaps granted to another worker with a larger
// token) they fail with ErrLeaseLost and change nothing. A holder doing
// work elsewhere can pass the token along for the same check.
type Job struct {
	ID      string
	Topic   string
	Payload []byte
	// Attempt counts the times the job was handed out, this one included.
	Attempt int
	Token   uint64
	// Grant is the lease's proof, random: Complete, Fail, Extend and
	// Release need it with Token, so that no one who was not granted the
	// lease can end it by guessing its token.
	Grant uint64
	// Deadline is when the lease runs out, by the shard leader's clock.
	Deadline time.Time
}

// EnqueueOptions are the options of Enqueue. The zero value runs the job
// now with the default attempts and backoff.
type EnqueueOptions struct {
	// Delay or RunAt hold the job back: Delay counts from the shard
	// leader's clock when the job is stored, RunAt is absolute.
	Delay time.Duration
	RunAt time.Time
	// MaxAttempts is how many times the job is handed out before it is
	// dead. If zero, shard.DefaultMaxAttempts (25).
	MaxAttempts int
	// Backoff is the base of the delay before a failed job runs again:
	// Backoff·2^(attempt-1), at most an hour, jittered to between half and
	// all of that. If zero, one second.
	Backoff time.Duration
	// Key makes the job unique: while a job of the topic enqueued with
	// the same key is not done (or dead), Enqueue returns that job's id
	// instead of creating another.
	Key string
}

// JobCounts counts a topic's jobs by state; Stats sums it over all shards.
type JobCounts = shard.JobCounts

// DeadJob is a job that used up its attempts.
type DeadJob struct {
	ID, Topic string
	Payload   []byte
	Attempts  int
	LastError string
}

// DefaultLongPoll bounds how long one acquire request waits at a node for a
// job; Acquire asks again until its context ends.
const DefaultLongPoll = 5 * time.Second

// Enqueue stores a job of topic and returns its id. A job without a Key
// goes to a shard at random; one with a Key to the shard the key hashes
// to, where its uniqueness is kept.
func (c *Client) Enqueue(ctx context.Context, topic string, payload []byte, opts EnqueueOptions) (string, error) {
	suffix, err := randomID()
	if err != nil {
		return "", fmt.Errorf("client: making a job id: %w", err)
	}
	slot := mrand.IntN(shard.SlotCount)
	if opts.Key != "" {
		slot = shard.JobKeySlot(topic, opts.Key)
	}
	id := shard.NewJobID(slot, suffix)
	args := wire.Args{
		Topic: topic, JobID: id, Value: string(payload), Delay: opts.Delay, RunAt: opts.RunAt,
		MaxAttempts: opts.MaxAttempts, Backoff: opts.Backoff, Unique: opts.Key,
	}
	r, err := c.call(ctx, wire.OpEnqueue, args)
	if err != nil {
		return "", err
	}
	if r.Result.Job == nil {
		return "", fmt.Errorf("client: enqueue answered without a job id")
	}
	return r.Result.Job.ID, nil
}

// NewJob is a job for EnqueueBatch: what Enqueue takes.
type NewJob struct {
	Topic   string
	Payload []byte
	EnqueueOptions
}

// EnqueueBatch stores jobs and returns their ids in order, as Enqueue does
// for each, in one request per shard instead of one per job: each
// request is one raft entry there, applied at most once. The jobs without
// a Key go together to one shard chosen at random (spread over shards
// across calls, not within one); those with a Key to the shard the key
// hashes to. A request carries as many jobs as fit a datagram, at most
// wire.MaxBatchJobs (50); more take more requests. A request that a
// change of the shard map leaves spanning shards is split on the new map.
// The parts are new requests: should an attempt before the split have
// been applied on the old shard, a job of it that has run since may be
// stored and run again (at least once, as after ErrUnavailable).
//
// Every job is checked before anything is sent: one that Enqueue would
// refuse fails the whole call with its error (ErrInvalidKey,
// ErrValueTooLarge, ErrInvalidArgument), naming the job's index. Each
// request is all or none: a shard without room for all of its jobs
// refuses them all with ErrFull, as it refuses another id's job with
// ErrJobExists. When some requests fail, the others' jobs are stored
// still: the error joins the failures, and the ids of the jobs not stored
// (or, after ErrUnavailable, perhaps stored) are empty. A node of a version
// without the op refuses it, storing nothing, with an *Error of Code
// wire.CodeUnknownOp.
func (c *Client) EnqueueBatch(ctx context.Context, jobs []NewJob) ([]string, error) {
	for i, j := range jobs {
		args := wire.Args{Topic: j.Topic, JobID: "j", Value: string(j.Payload), Unique: j.Key}
		if err := checkArgs(wire.OpEnqueue, &args); err != nil {
			return nil, fmt.Errorf("job %d: %w", i, err)
		}
	}
	batches, err := c.batches(jobs)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(jobs))
	return ids, c.sendBatches(ctx, batches, ids)
}

// sendBatches sends batches at once, each in a request of its own, and
// sets the ids of their jobs in ids. It returns the batches' errors
// joined.
func (c *Client) sendBatches(ctx context.Context, batches []*jobBatch, ids []string) error {
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	for b, batch := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[b] = c.sendBatch(ctx, batch, ids)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// errBatchSplit is what routing a batch answers when the shard map puts its
// jobs on more than one shard: the map changed since the batch was made.
var errBatchSplit = errors.New("client: the batch's jobs belong to more than one shard")

// sendBatch sends batch and sets the ids of its jobs in ids. A batch that
// the shard map, as it changes, spreads over shards (a node refuses it
// with CodeWrongShard, and the client fetches the new map) is split by
// shard on the new map and its parts sent instead. Each split needs a new
// map, so the splitting ends.
func (c *Client) sendBatch(ctx context.Context, batch *jobBatch, ids []string) error {
	args := wire.Args{Batch: batch.jobs}
	if err := checkArgs(wire.OpEnqueueBatch, &args); err != nil {
		return err
	}
	r, err := c.request(ctx, wire.OpEnqueueBatch, args, c.routeBatch(batch), 0)
	switch {
	case errors.Is(err, errBatchSplit):
		return c.sendBatches(ctx, splitBatch(batch, c.view.Load().smap), ids)
	case err != nil:
		return err
	case len(r.Result.Jobs) != len(batch.jobs):
		return fmt.Errorf("client: a batch of %d jobs answered with %d ids", len(batch.jobs), len(r.Result.Jobs))
	}
	for k, j := range r.Result.Jobs {
		ids[batch.index[k]] = j.ID
	}
	return nil
}

// routeBatch routes the attempts of batch as writes to the shard of its
// first job, and fails with errBatchSplit once the shard map puts its jobs
// on more than one shard.
func (c *Client) routeBatch(batch *jobBatch) router {
	first := shard.JobSlot(batch.jobs[0].ID)
	write := c.routeWrite(first)
	return func(tried []netip.AddrPort) (target, error) {
		smap := c.view.Load().smap
		id := smap.SlotShard(first)
		for _, j := range batch.jobs[1:] {
			if smap.SlotShard(shard.JobSlot(j.ID)) != id {
				return target{}, fmt.Errorf("%w (map version %d)", errBatchSplit, smap.Version)
			}
		}
		return write(tried)
	}
}

// splitBatch groups batch's jobs by their shard on smap, keeping their
// order and ids. A job's id routes it where its uniqueness key, if any,
// lives (batches), so the id alone decides its shard.
func splitBatch(batch *jobBatch, smap *shard.Map) []*jobBatch {
	var out []*jobBatch
	of := map[shard.ID]*jobBatch{}
	for k := range batch.jobs {
		id := smap.SlotShard(shard.JobSlot(batch.jobs[k].ID))
		b := of[id]
		if b == nil {
			b = &jobBatch{}
			of[id] = b
			out = append(out, b)
		}
		b.add(&batch.jobs[k], batch.index[k])
	}
	return out
}

// jobBatch is the jobs of one OpEnqueueBatch request, and the index of
// each among those of the EnqueueBatch call.
type jobBatch struct {
	jobs  []wire.BatchJob
	index []int
	size  int
}

// batches gives jobs their ids and groups them into requests: those with a
// Key by their shard, those without in batches of a shard each chosen at
// random, each batch as large as fits one datagram.
func (c *Client) batches(jobs []NewJob) ([]*jobBatch, error) {
	smap := c.view.Load().smap
	var out []*jobBatch
	open := map[shard.ID]*jobBatch{} // the batch of each shard being filled
	var keyless *jobBatch
	keylessSlot := 0
	for i, j := range jobs {
		suffix, err := randomID()
		if err != nil {
			return nil, fmt.Errorf("client: making a job id: %w", err)
		}
		bj := wire.BatchJob{Topic: j.Topic, Payload: string(j.Payload), Delay: j.Delay, RunAt: j.RunAt,
			MaxAttempts: j.MaxAttempts, Backoff: j.Backoff, Unique: j.Key}
		if j.Key != "" {
			slot := shard.JobKeySlot(j.Topic, j.Key)
			bj.ID = shard.NewJobID(slot, suffix)
			id := smap.SlotShard(slot)
			b := open[id]
			if b == nil || !b.fits(&bj) {
				b = &jobBatch{}
				open[id] = b
				out = append(out, b)
			}
			b.add(&bj, i)
			continue
		}
		bj.ID = shard.NewJobID(keylessSlot, suffix)
		if keyless == nil || !keyless.fits(&bj) {
			keylessSlot = mrand.IntN(shard.SlotCount)
			bj.ID = shard.NewJobID(keylessSlot, suffix)
			keyless = &jobBatch{}
			out = append(out, keyless)
		}
		keyless.add(&bj, i)
	}
	return out, nil
}

func (b *jobBatch) fits(j *wire.BatchJob) bool {
	return len(b.jobs) < wire.MaxBatchJobs && b.size+wire.BatchJobSize(j) <= wire.MaxMessageSize-wire.BatchOverhead
}

func (b *jobBatch) add(j *wire.BatchJob, index int) {
	b.jobs = append(b.jobs, *j)
	b.index = append(b.index, index)
	b.size += wire.BatchJobSize(j)
}

// Acquire leases the next ready job of topic for lease. When nothing is
// ready it waits, without polling the network: it asks the nodes to hold
// its request until a job appears, until ctx ends, and then fails with
// ErrNoJob.
//
// The shards to ask come from the nodes' heartbeats, which report the
// topics with ready jobs per shard; among those the picker chooses by the
// leaders' load. With none reported, one long-poll request per node
// needed to watch every shard waits for the first job.
func (c *Client) Acquire(ctx context.Context, topic string, lease time.Duration) (*Job, error) {
	return c.acquire(ctx, topic, lease, nil)
}

// acquire is Acquire, asking the shards in avoid only when heartbeats
// report no other shard with ready jobs of topic.
func (c *Client) acquire(ctx context.Context, topic string, lease time.Duration, avoid []shard.ID) (*Job, error) {
	if err := checkArgs(wire.OpAcquire, &wire.Args{Topic: topic, Lease: lease}); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	for {
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return nil, fmt.Errorf("%w for %q: %w", ErrNoJob, topic, context.DeadlineExceeded)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("shoal: %w", err)
		}
		// A shard reported to have the topic's jobs ready is asked alone,
		// without waiting; otherwise nodes covering every shard wait for
		// one.
		var polls []poll
		var wait time.Duration
		id, n, ready := c.readyShard(topic, avoid)
		if !ready && avoid != nil {
			id, n, ready = c.readyShard(topic, nil)
		}
		if ready {
			polls = []poll{{node: n, shards: []shard.ID{id}}}
		} else {
			polls, wait = c.cover(), c.cfg.LongPoll
			if d, ok := ctx.Deadline(); ok {
				wait = min(wait, time.Until(d))
			}
		}
		j, err := c.acquireFirst(ctx, topic, lease, wait, polls)
		switch {
		case err != nil && (ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded)):
			continue // the wait is over: ErrNoJob above
		case j != nil || (err != nil && !errors.Is(err, ErrUnavailable)):
			return j, err
		case ready:
			c.markEmpty(topic, id)
		case err != nil: // no node answered: pause before asking again
			if err := c.backoff(ctx, 2); err != nil {
				return nil, fmt.Errorf("shoal: %w", err)
			}
		}
	}
}

// acquireFirst sends an acquire request to each poll's node at once, for
// its shards, each held there up to wait. The first grant wins. The
// requests run on past ctx: every other grant, also one that arrives after
// ctx ended, is released, not left leased to nobody. A nil job without
// error means the nodes had nothing.
func (c *Client) acquireFirst(ctx context.Context, topic string, lease, wait time.Duration, polls []poll) (*Job, error) {
	if len(polls) == 0 {
		return nil, fmt.Errorf("%w: no live node", ErrUnavailable)
	}
	type answer struct {
		job *Job
		err error
	}
	answers := make(chan answer, len(polls))
	budget := wait + c.cfg.MaxAttemptTimeout*time.Duration(min(c.cfg.Attempts, DefaultAttempts))
	for _, p := range polls {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
		if !c.background(func() {
			defer cancel()
			args := wire.Args{Topic: topic, Lease: lease, Shards: p.shards, Wait: wait}
			r, err := c.do(rctx, wire.OpAcquire, args, fixed(p.node.addr, p.node), untilDeadline(c.cfg.Attempts), wait)
			answers <- answer{jobOf(r.Result.Job), err}
		}) {
			cancel()
			answers <- answer{err: ErrClosed}
		}
	}
	releaseLate := func(n int) {
		c.background(func() {
			for range n {
				if a := <-answers; a.job != nil {
					c.releaseQuietly(a.job)
				}
			}
		})
	}
	var lastErr error
	for received := 0; received < len(polls); received++ {
		select {
		case a := <-answers:
			if a.job != nil {
				releaseLate(len(polls) - received - 1)
				return a.job, nil
			}
			if a.err != nil {
				lastErr = a.err
			}
		case <-ctx.Done():
			releaseLate(len(polls) - received)
			return nil, fmt.Errorf("shoal: %w", ctx.Err())
		}
	}
	return nil, lastErr
}

func jobOf(j *wire.JobInfo) *Job {
	if j == nil || j.ID == "" || j.Token == 0 {
		return nil
	}
	return &Job{ID: j.ID, Topic: j.Topic, Payload: []byte(j.Payload), Attempt: j.Attempt, Token: j.Token,
		Grant: j.Grant, Deadline: j.Deadline}
}

// releaseQuietly gives back a job the caller did not ask for.
func (c *Client) releaseQuietly(j *Job) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.MaxAttemptTimeout)
	defer cancel()
	args := wire.Args{JobID: j.ID, Token: j.Token, Grant: j.Grant}
	if _, err := c.do(ctx, wire.OpRelease, args, c.routeOp(wire.OpRelease, &args), untilDeadline(c.cfg.Attempts), 0); err != nil {
		c.log.Warn("releasing a surplus job failed; it returns when its lease runs out", "job", j.ID, "err", err)
	}
}

// poll is one long-poll request: a node and the shards it watches for it.
type poll struct {
	node   *node
	shards []shard.ID
}

// cover chooses live nodes that between them hold every shard, each
// watching shards no other one watches: picked by the picker, one at a
// time, among the nodes that hold shards not yet covered.
func (c *Client) cover() []poll {
	v := c.view.Load()
	now := time.Now()
	left := map[shard.ID]bool{}
	for _, s := range v.smap.Shards {
		left[s.ID] = true
	}
	var out []poll
	for len(left) > 0 {
		var cands []*node
		var holds [][]shard.ID
		for _, n := range v.order {
			if !n.alive(now, c.cfg.NodeTimeout) {
				continue
			}
			var mine []shard.ID
			for _, id := range v.smap.ShardsOf(n.id) {
				if left[id] {
					mine = append(mine, id)
				}
			}
			if len(mine) > 0 {
				cands = append(cands, n)
				holds = append(holds, mine)
			}
		}
		if len(cands) == 0 {
			break // the rest have no live replica
		}
		i := c.pick(cands)
		for _, id := range holds[i] {
			delete(left, id)
		}
		out = append(out, poll{node: cands[i], shards: holds[i]})
	}
	return out
}

// readyReport is what a node's last heartbeat said was ready.
type readyReport struct {
	at     time.Time
	counts []wire.ReadyCount
}

// readyShard returns a shard not in avoid that its leader's last heartbeat
// says has a ready job of topic, and that node, chosen by the picker among
// such leaders.
func (c *Client) readyShard(topic string, avoid []shard.ID) (shard.ID, *node, bool) {
	nodes, shards := c.readyLeaders(topic, avoid)
	if len(nodes) == 0 {
		return 0, nil, false
	}
	i := c.pick(nodes)
	return shards[i], nodes[i], true
}

// readyLeaders returns the shards not in avoid that their leaders' last
// heartbeats say have ready jobs of topic, each with its leader.
func (c *Client) readyLeaders(topic string, avoid []shard.ID) ([]*node, []shard.ID) {
	v := c.view.Load()
	now := time.Now()
	var nodes []*node
	var shards []shard.ID
	for _, n := range v.order {
		r := n.ready.Load()
		if r == nil || !n.alive(now, c.cfg.NodeTimeout) {
			continue
		}
		for _, rc := range r.counts {
			if rc.Topic == topic && rc.Count > 0 && !slices.Contains(avoid, rc.Shard) &&
				!c.emptySince(topic, rc.Shard, r.at) {
				nodes = append(nodes, n)
				shards = append(shards, rc.Shard)
			}
		}
	}
	return nodes, shards
}

// readyElsewhere reports whether heartbeats say a shard other than the one
// holding job has ready jobs of topic, and returns job's shard.
func (c *Client) readyElsewhere(topic string, job *Job) (shard.ID, bool) {
	id := c.view.Load().smap.SlotShard(shard.JobSlot(job.ID))
	nodes, _ := c.readyLeaders(topic, []shard.ID{id})
	return id, len(nodes) > 0
}

// emptyMarks remembers when an acquire last found a shard empty, so that
// heartbeats older than that do not send another acquire there.
type emptyMarks struct {
	mu sync.Mutex
	at map[emptyKey]time.Time
}

type emptyKey struct {
	topic string
	shard shard.ID
}

func (c *Client) markEmpty(topic string, id shard.ID) {
	c.empty.mu.Lock()
	defer c.empty.mu.Unlock()
	if c.empty.at == nil {
		c.empty.at = make(map[emptyKey]time.Time)
	}
	now := time.Now()
	if len(c.empty.at) > 4096 { // forget old marks; heartbeats have replaced them
		for k, t := range c.empty.at {
			if now.Sub(t) > c.cfg.NodeTimeout {
				delete(c.empty.at, k)
			}
		}
	}
	c.empty.at[emptyKey{topic, id}] = now
}

func (c *Client) emptySince(topic string, id shard.ID, report time.Time) bool {
	c.empty.mu.Lock()
	defer c.empty.mu.Unlock()
	t, ok := c.empty.at[emptyKey{topic, id}]
	return ok && !report.After(t)
}

// onJob sends an op on a leased job and updates job from the reply.
func (c *Client) onJob(ctx context.Context, op wire.Op, job *Job, args wire.Args) (*wire.JobInfo, error) {
	if job == nil {
		return nil, errors.New("client: no job")
	}
	args.JobID, args.Token, args.Grant = job.ID, job.Token, job.Grant
	r, err := c.call(ctx, op, args)
	if err != nil {
		return nil, err
	}
	return r.Result.Job, nil
}

// Extend moves the end of job's lease to lease from now (by the leader's
// clock); zero keeps the lease's length. It updates job.Deadline.
func (c *Client) Extend(ctx context.Context, job *Job, lease time.Duration) error {
	j, err := c.onJob(ctx, wire.OpExtend, job, wire.Args{Lease: lease})
	if err == nil && j != nil {
		job.Deadline = j.Deadline
	}
	return err
}

// Complete finishes job. It counts once: a retry of it is answered from
// the first; a holder whose lease was lost gets ErrLeaseLost.
func (c *Client) Complete(ctx context.Context, job *Job) error {
	_, err := c.onJob(ctx, wire.OpComplete, job, wire.Args{})
	return err
}

// CompleteAndAcquire completes job and, in the same request, leases the
// next ready job of topic for lease from the shard that held job, if that
// shard has one: what a worker does between two jobs, in one round trip
// and one raft entry instead of two of each. It returns the next job, or
// nil when the shard had none ready (it does not wait for one: then
// Acquire, which asks every shard and waits). Like Complete it counts
// once: a retry of the request is answered from the first, with the same
// next job. After ErrLeaseLost job was not completed and no job was
// leased. After ErrUnavailable or an error of ctx, an attempt may have
// been applied: job may be completed, and the next job leased to no one;
// that job runs again when its lease runs out, that run charged as
// another attempt.
//
// A node of a version without the op refuses it, having changed nothing,
// with an *Error of Code wire.CodeUnknownOp: complete with Complete then,
// as Worker does.
func (c *Client) CompleteAndAcquire(ctx context.Context, job *Job, topic string, lease time.Duration) (*Job, error) {
	j, err := c.onJob(ctx, wire.OpCompleteAcquire, job, wire.Args{Topic: topic, Lease: lease})
	if err != nil {
		return nil, err
	}
	return jobOf(j), nil
}

// Fail records reason and queues job to run again after its backoff, or
// makes it dead after its last attempt.
func (c *Client) Fail(ctx context.Context, job *Job, reason string) error {
	_, err := c.onJob(ctx, wire.OpFail, job, wire.Args{Reason: reason})
	return err
}

// Release gives job back to run again now; the attempt does not count.
func (c *Client) Release(ctx context.Context, job *Job) error {
	_, err := c.onJob(ctx, wire.OpRelease, job, wire.Args{})
	return err
}

// Requeue gives a dead job its attempts back and queues it to run now.
func (c *Client) Requeue(ctx context.Context, id string) error {
	_, err := c.call(ctx, wire.OpRequeue, wire.Args{JobID: id})
	return err
}

// Every makes one job of topic with payload per interval, cluster-wide:
// for each interval of the Unix epoch, the first moment the schedule's
// shard sees in it. Calling it again with the same topic and key updates
// the schedule without making another job, so every worker process can
// call it at start. An interval with no moment seen (the shard was down
// throughout) gets no job. An interval under shard.MinScheduleInterval (a
// second) fails with ErrInvalidArgument; a new schedule on a shard that
// holds its most (1,000) with ErrFull. While the shard holds its most jobs,
// intervals pass without one.
func (c *Client) Every(ctx context.Context, topic, key string, interval time.Duration, payload []byte) error {
	args := wire.Args{Topic: topic, Unique: key, Interval: interval, Value: string(payload)}
	_, err := c.call(ctx, wire.OpEvery, args)
	return err
}

// StopEvery deletes the schedule of topic and key; jobs it made stay. Made
// again within an interval, the schedule makes that interval's job again
// unless the job is still held.
func (c *Client) StopEvery(ctx context.Context, topic, key string) error {
	_, err := c.call(ctx, wire.OpUnevery, wire.Args{Topic: topic, Unique: key})
	return err
}

// perShard runs op for every shard, concurrently, and returns the replies.
// args are those of each request but the shard it names.
func (c *Client) perShard(ctx context.Context, op wire.Op, args wire.Args) ([]wire.Message, error) {
	shards := c.view.Load().smap.Shards
	first := args
	first.Shards = []shard.ID{shards[0].ID}
	if err := checkArgs(op, &first); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	out := make([]wire.Message, len(shards))
	errs := make([]error, len(shards))
	var wg sync.WaitGroup
	for i, s := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := args
			a.Shards = []shard.ID{s.ID}
			out[i], errs[i] = c.do(ctx, op, a, c.routeShard(s.ID), untilDeadline(c.cfg.Attempts), 0)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// Stats counts topic's jobs by state, over every shard, linearizably. The
// node answering for a shard, which may be a follower, splits its jobs
// waiting to run into Scheduled and Ready by its own clock (the nodes'
// clocks are assumed synchronized), so a job due about now may be counted
// as either.
func (c *Client) Stats(ctx context.Context, topic string) (JobCounts, error) {
	replies, err := c.perShard(ctx, wire.OpJobStats, wire.Args{Topic: topic})
	if err != nil {
		return JobCounts{}, err
	}
	var t JobCounts
	for _, r := range replies {
		if x := r.Result.Counts; x != nil {
			t.Scheduled += x.Scheduled
			t.Ready += x.Ready
			t.Leased += x.Leased
			t.Dead += x.Dead
			t.Done += x.Done
		}
	}
	return t, nil
}

// DeadJobCursor is where a listing of dead jobs goes on: a shard, and the
// position in its listing. The zero value starts a listing.
type DeadJobCursor struct {
	Shard shard.ID
	After uint64
}

// DeadJobPage is one page of a listing of a topic's dead jobs.
type DeadJobPage struct {
	Jobs []DeadJob
	// Next is where the listing goes on; nil after its last page.
	Next *DeadJobCursor
}

// DeadJobs lists a page of topic's dead jobs from cursor (the zero cursor
// for the first page): the next of one shard's dead jobs, in the order
// they were enqueued, as many as one reply datagram carries (at most 100;
// of 40 KiB payloads, one). Shards are listed one after another in the
// order of their ids; a shard without dead jobs is passed over within the
// call. Page on with the page's Next until it is nil, requeueing as you
// go if you like: a requeued job leaves the listing without moving it.
func (c *Client) DeadJobs(ctx context.Context, topic string, cursor DeadJobCursor) (DeadJobPage, error) {
	args := wire.Args{Topic: topic, Limit: 100, Shards: []shard.ID{cursor.Shard}}
	if err := checkArgs(wire.OpDeadJobs, &args); err != nil {
		return DeadJobPage{}, err
	}
	if err := c.enter(); err != nil {
		return DeadJobPage{}, err
	}
	defer c.calls.Done()
	cur := cursor
	for {
		ids := c.shardIDs()
		i := slices.IndexFunc(ids, func(id shard.ID) bool { return id >= cur.Shard })
		if i < 0 {
			return DeadJobPage{}, nil
		}
		if ids[i] != cur.Shard { // the shard went away; go on with the next
			cur = DeadJobCursor{Shard: ids[i]}
		}
		args.Shards, args.After = []shard.ID{cur.Shard}, cur.After
		r, err := c.do(ctx, wire.OpDeadJobs, args, c.routeShard(cur.Shard), untilDeadline(c.cfg.Attempts), 0)
		if err != nil {
			return DeadJobPage{}, err
		}
		var page DeadJobPage
		for _, j := range r.Result.Jobs {
			page.Jobs = append(page.Jobs, DeadJob{ID: j.ID, Topic: j.Topic, Payload: []byte(j.Payload), Attempts: j.Attempt, LastError: j.LastError})
		}
		switch {
		case r.Result.Next != 0:
			page.Next = &DeadJobCursor{Shard: cur.Shard, After: r.Result.Next}
		case i+1 < len(ids):
			page.Next = &DeadJobCursor{Shard: ids[i+1]}
		}
		if len(page.Jobs) > 0 || page.Next == nil {
			return page, nil
		}
		cur = *page.Next
	}
}

// shardIDs returns the ids of the shards of the client's map, in order.
func (c *Client) shardIDs() []shard.ID {
	shards := c.view.Load().smap.Shards
	ids := make([]shard.ID, len(shards))
	for i, s := range shards {
		ids[i] = s.ID
	}
	slices.Sort(ids)
	return ids
}

// randomID returns 8 random bytes in hex, from the system's secure source.
func randomID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
