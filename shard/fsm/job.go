package fsm

import (
	"container/heap"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/shoal-kv/shoal/shard"
)

// JobState is where a job stands. Queued jobs are "scheduled" until their
// run-at time and "ready" after it; a leased job whose lease has run out is
// ready again, for anyone to acquire.
type JobState string

// The states of a job as callers see them.
const (
	JobScheduled JobState = "scheduled"
	JobReady     JobState = "ready"
	JobLeased    JobState = "leased"
	JobDone      JobState = "done"
	JobDead      JobState = "dead"
)

// Defaults of job options.
const (
	// DefaultMaxAttempts is how many times a job is handed out before it
	// is dead: failed, or its lease run out, that many times.
	DefaultMaxAttempts = 25
	// DefaultBackoff is the base of the delay before a failed job runs
	// again: base·2^(attempt-1), at most MaxBackoff, jittered to between
	// half and all of that.
	DefaultBackoff = time.Second
	// MaxBackoff caps the retry delay.
	MaxBackoff = time.Hour
	// DefaultMaxJobs is the number of jobs of every state a shard holds
	// by default (Config.MaxJobs): with payloads of shard.MaxValueSize, up
	// to 6 GiB.
	DefaultMaxJobs = 100_000
)

// jobState is the stored state; scheduled, ready and an expired lease are
// told apart from it by time.
type jobState uint8

const (
	stateQueued jobState = iota
	stateLeased
	stateDead
)

// Job is a job as the state machine holds it.
type Job struct {
	ID      string
	Topic   string
	Payload string
	state   jobState
	// Attempt counts the times the job was handed out (a release gives
	// one back).
	Attempt     int
	MaxAttempts int
	// RunAt is when a queued job may run, Unix nanoseconds.
	RunAt int64
	// Lease is the length of the current or last lease; Deadline its
	// end; Holder the client that acquired it; Token its fencing token,
	// which grows with every grant of the shard; Grant its proof (Op.Grant).
	Lease    int64
	Deadline int64
	Holder   string
	Token    uint64
	Grant    uint64
	// Unique is the uniqueness key the job was enqueued with.
	Unique string
	// Backoff is the base retry delay after a failure, nanoseconds.
	Backoff int64
	// LastError is the reason of the last failure or expiry.
	LastError string
	Created   int64
	// Seq is the job's enqueue order on its shard: it orders jobs that
	// become available at the same time, and dead-job listings.
	Seq uint64
	// index is the job's position in its topic's queued or leased heap.
	index int
}

// State returns the job's state at time now (Unix nanoseconds).
func (j *Job) State(now int64) JobState {
	switch j.state {
	case stateQueued:
		if j.RunAt > now {
			return JobScheduled
		}
		return JobReady
	case stateLeased:
		if j.Deadline < now {
			return JobReady
		}
		return JobLeased
	default:
		return JobDead
	}
}

// available returns when the job can next be handed out: its run-at time
// when queued, just past its lease when leased.
func (j *Job) available() int64 {
	if j.state == stateLeased {
		return j.Deadline + 1
	}
	return j.RunAt
}

// jobHeap orders a topic's queued or leased jobs by when they become
// available, then by enqueue order, so every replica hands out the same job.
type jobHeap []*Job

func (h jobHeap) Len() int { return len(h) }
func (h jobHeap) Less(i, j int) bool {
	a, b := h[i].available(), h[j].available()
	return a < b || (a == b && h[i].Seq < h[j].Seq)
}
func (h jobHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *jobHeap) Push(x any) {
	j := x.(*Job)
	j.index = len(*h)
	*h = append(*h, j)
}
func (h *jobHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	j.index = -1
	return j
}

// countDue counts the jobs available at or before now, up to limit, visiting
// only those and their children.
func (h jobHeap) countDue(now int64, limit int) int {
	n := 0
	var visit func(i int)
	visit = func(i int) {
		if i >= len(h) || n >= limit || h[i].available() > now {
			return
		}
		n++
		visit(2*i + 1)
		visit(2*i + 2)
	}
	visit(0)
	return n
}

// topicQueue holds one topic's jobs: queued ones and leased ones, each in a
// heap by availability, and dead ones by id.
//
// Invariant: a topic with no job of any state is not held (jobTable.settle
// forgets it), and a topic is in jobTable.active, at index at, exactly when
// it has a queued or leased job.
type topicQueue struct {
	name           string
	queued, leased jobHeap
	dead           map[string]*Job
	// done counts completions since the topic was last forgotten.
	done uint64
	at   int
}

// nextAt is when the topic's next queued or leased job becomes available.
func (q *topicQueue) nextAt() int64 {
	j, _ := q.next()
	return j.available()
}

// topicHeap orders the topics with queued or leased jobs by when their next
// job becomes available, so that the topics with a job ready now are found
// without visiting the others.
type topicHeap []*topicQueue

func (h topicHeap) Len() int           { return len(h) }
func (h topicHeap) Less(i, j int) bool { return h[i].nextAt() < h[j].nextAt() }
func (h topicHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *topicHeap) Push(x any) {
	q := x.(*topicQueue)
	q.at = len(*h)
	*h = append(*h, q)
}
func (h *topicHeap) Pop() any {
	old := *h
	q := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	q.at = -1
	return q
}

// jobTable is the job half of the state machine.
type jobTable struct {
	jobs      map[string]*Job
	topics    map[string]*topicQueue
	active    topicHeap         // the topics with queued or leased jobs
	unique    map[string]string // topic \x00 unique key → id of a live job
	schedules map[string]*Schedule
	// scheduleDue is when the next schedule fires (max int64 if none).
	scheduleDue int64
	seq         uint64 // last enqueue order handed out
	completed   uint64 // completions over the shard's history
}

func newJobTable() jobTable {
	return jobTable{
		jobs:        make(map[string]*Job),
		topics:      make(map[string]*topicQueue),
		unique:      make(map[string]string),
		schedules:   make(map[string]*Schedule),
		scheduleDue: 1<<63 - 1,
	}
}

func (t *jobTable) topic(name string) *topicQueue {
	q := t.topics[name]
	if q == nil {
		q = &topicQueue{name: name, dead: make(map[string]*Job), at: -1}
		t.topics[name] = q
	}
	return q
}

// settle restores the invariants of topicQueue after q's jobs changed: it
// puts q in, moves it within, or takes it out of the active heap, and
// forgets q if it holds no job.
func (t *jobTable) settle(q *topicQueue) {
	live := len(q.queued)+len(q.leased) > 0
	switch {
	case live && q.at < 0:
		heap.Push(&t.active, q)
	case live:
		heap.Fix(&t.active, q.at)
	case q.at >= 0:
		heap.Remove(&t.active, q.at)
	}
	if !live && len(q.dead) == 0 {
		delete(t.topics, q.name)
	}
}

// backoff returns the delay before attempt+1 of a job that failed attempt:
// exponential, capped, and jittered by a hash of the job and attempt, so
// every replica computes the same.
func backoff(j *Job) int64 {
	base := j.Backoff
	if base <= 0 {
		base = int64(DefaultBackoff)
	}
	d := base
	for i := 1; i < j.Attempt && d < int64(MaxBackoff); i++ {
		d *= 2
	}
	d = min(d, int64(MaxBackoff))
	h := xxhash.Sum64String(j.ID + "\x00" + strconv.Itoa(j.Attempt))
	return d/2 + int64(h%uint64(d/2+1))
}

// enqueue creates a job, or, when a live job already has op's uniqueness
// key, returns that job's id.
func (f *FSM) enqueue(op *Op) Result {
	t := &f.jobs
	if shard.CheckJobID(op.JobID) != nil || shard.CheckTopic(op.Topic) != nil ||
		op.Unique != "" && shard.CheckJobKey(op.Unique) != nil {
		return Result{Status: StatusInvalid}
	}
	if op.Unique != "" {
		if id, ok := t.unique[shard.JobKey(op.Topic, op.Unique)]; ok {
			return Result{JobID: id}
		}
	}
	if j, ok := t.jobs[op.JobID]; ok {
		// Clients make ids at random: the same job is the same enqueue
		// again, retried after its session was forgotten. Another job
		// under the id is not this one.
		if j.Topic != op.Topic || j.Payload != op.Value {
			return Result{Status: StatusJobExists, JobID: op.JobID}
		}
		return Result{JobID: op.JobID}
	}
	if len(t.jobs) >= f.maxJobs {
		return Result{Status: StatusFull}
	}
	f.createJob(op.JobID, op.Topic, op.Value, max(op.RunAt, f.clock+op.Delay), op.MaxAttempts, op.Backoff, op.Unique)
	return Result{JobID: op.JobID}
}

func (f *FSM) createJob(id, topic, payload string, runAt int64, maxAttempts int, backoff int64, unique string) {
	t := &f.jobs
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	t.seq++
	j := &Job{
		ID: id, Topic: topic, Payload: payload, RunAt: runAt, MaxAttempts: maxAttempts,
		Backoff: backoff, Unique: unique, Created: f.clock, Seq: t.seq,
	}
	t.jobs[id] = j
	if unique != "" {
		t.unique[shard.JobKey(topic, unique)] = id
	}
	q := t.topic(topic)
	heap.Push(&q.queued, j)
	t.settle(q)
	f.observer.JobsChanged(topic)
}

// acquire hands out the topic's next available job: the one that became
// available first. A job whose lease ran out MaxAttempts times is dead
// instead.
func (f *FSM) acquire(op *Op) Result {
	if op.Lease <= 0 || shard.CheckTopic(op.Topic) != nil {
		return Result{Status: StatusInvalid}
	}
	q := f.jobs.topics[op.Topic]
	if q == nil {
		return Result{Status: StatusEmpty}
	}
	defer f.jobs.settle(q)
	for {
		j, h := q.next()
		if j == nil || j.available() > f.clock {
			return Result{Status: StatusEmpty}
		}
		heap.Remove(h, j.index)
		if j.state == stateLeased && j.Attempt >= j.MaxAttempts {
			j.LastError = fmt.Sprintf("lease ran out on attempt %d of %d", j.Attempt, j.MaxAttempts)
			f.bury(q, j)
			continue
		}
		j.state = stateLeased
		j.Attempt++
		j.Lease = op.Lease
		j.Deadline = f.clock + op.Lease
		j.Holder = op.Client
		f.rev++
		j.Token = f.rev
		j.Grant = op.Grant
		heap.Push(&q.leased, j)
		return grantResult(j)
	}
}

// next returns the topic's job that becomes available first, and its heap.
func (q *topicQueue) next() (*Job, *jobHeap) {
	var j *Job
	var h *jobHeap
	if len(q.queued) > 0 {
		j, h = q.queued[0], &q.queued
	}
	if len(q.leased) > 0 && (j == nil || jobHeap{q.leased[0], j}.Less(0, 1)) {
		j, h = q.leased[0], &q.leased
	}
	return j, h
}

func grantResult(j *Job) Result {
	return Result{JobID: j.ID, Topic: j.Topic, Payload: j.Payload, Attempt: j.Attempt, Token: j.Token, Grant: j.Grant,
		Deadline: j.Deadline}
}

// held returns the job op names if op's token and grant are its live
// lease.
func (f *FSM) held(op *Op) (*Job, Result, bool) {
	j := f.jobs.jobs[op.JobID]
	switch {
	case j == nil:
		return nil, Result{Status: StatusLeaseLost}, false
	case j.state != stateLeased || j.Token != op.Token || j.Grant != op.Grant || j.Deadline < f.clock:
		return nil, Result{Status: StatusLeaseLost, Token: j.Token}, false
	}
	return j, Result{}, true
}

// extend moves the lease's end to now + op.Lease (or the lease's own length).
func (f *FSM) extend(op *Op) Result {
	j, res, ok := f.held(op)
	if !ok {
		return res
	}
	if op.Lease > 0 {
		j.Lease = op.Lease
	}
	j.Deadline = f.clock + j.Lease
	q := f.jobs.topics[j.Topic]
	heap.Fix(&q.leased, j.index)
	f.jobs.settle(q)
	return grantResult(j)
}

// complete ends the job: it is forgotten, and counted done.
func (f *FSM) complete(op *Op) Result {
	j, q, res, ok := f.takeLeased(op)
	if !ok {
		return res
	}
	f.forget(j)
	q.done++
	f.jobs.completed++
	f.jobs.settle(q)
	return Result{JobID: j.ID, Token: j.Token}
}

// completeAcquire completes the job op names and, if that succeeded,
// leases the topic's next available job under op.NextGrant. Its result is
// the completion's status, with the job leased next, if any.
func (f *FSM) completeAcquire(op *Op) Result {
	if op.Lease <= 0 || shard.CheckTopic(op.Topic) != nil || op.NextGrant == 0 {
		return Result{Status: StatusInvalid}
	}
	if res := f.complete(op); res.Status != StatusOK {
		return res
	}
	next := *op
	next.Grant = op.NextGrant
	if res := f.acquire(&next); res.Status == StatusOK {
		return res
	}
	return Result{}
}

// enqueueBatch enqueues op.Batch, all or none: it checks every job first,
// as enqueue would, and that the shard has room for all of them (those
// that would add no job, being already held or sharing a uniqueness key
// with a live job, included, so the check needs no second pass).
func (f *FSM) enqueueBatch(op *Op) Result {
	if len(op.Batch) == 0 || len(op.Batch) > MaxBatch {
		return Result{Status: StatusInvalid}
	}
	ids := make(map[string]bool, len(op.Batch))
	for i := range op.Batch {
		j := &op.Batch[i]
		if j.Kind != KindEnqueue || len(j.Batch) > 0 || ids[j.JobID] || shard.CheckJobID(j.JobID) != nil ||
			shard.CheckTopic(j.Topic) != nil || j.Unique != "" && shard.CheckJobKey(j.Unique) != nil {
			return Result{Status: StatusInvalid}
		}
		ids[j.JobID] = true
		if held, ok := f.jobs.jobs[j.JobID]; ok && (held.Topic != j.Topic || held.Payload != j.Value) {
			if _, dedup := f.jobs.unique[shard.JobKey(j.Topic, j.Unique)]; j.Unique == "" || !dedup {
				return Result{Status: StatusJobExists, JobID: j.JobID}
			}
		}
	}
	if len(f.jobs.jobs)+len(op.Batch) > f.maxJobs {
		return Result{Status: StatusFull}
	}
	res := Result{JobIDs: make([]string, len(op.Batch))}
	for i := range op.Batch {
		// Invariant: the checks above leave no job that can fail here
		// (the enqueues before it only add jobs and uniqueness keys), so
		// the batch is never applied in part.
		res.JobIDs[i] = f.enqueue(&op.Batch[i]).JobID
	}
	return res
}

// fail queues the job again after a backoff, or buries it after its last
// attempt.
func (f *FSM) fail(op *Op) Result {
	j, q, res, ok := f.takeLeased(op)
	if !ok {
		return res
	}
	j.LastError = op.Reason
	if j.Attempt >= j.MaxAttempts {
		f.bury(q, j)
		f.jobs.settle(q)
		return Result{JobID: j.ID}
	}
	f.queue(q, j, f.clock+backoff(j))
	return Result{JobID: j.ID, Deadline: j.RunAt}
}

// release queues the job again at once; the attempt does not count.
func (f *FSM) release(op *Op) Result {
	j, q, res, ok := f.takeLeased(op)
	if !ok {
		return res
	}
	j.Attempt--
	f.queue(q, j, f.clock)
	return Result{JobID: j.ID}
}

// requeue gives a dead job its attempts back and queues it now.
func (f *FSM) requeue(op *Op) Result {
	j := f.jobs.jobs[op.JobID]
	switch {
	case j == nil:
		return Result{Status: StatusNotFound}
	case j.state != stateDead:
		return Result{Status: StatusWrongState}
	}
	q := f.jobs.topics[j.Topic]
	delete(q.dead, j.ID)
	j.Attempt = 0
	if j.Unique != "" {
		k := shard.JobKey(j.Topic, j.Unique)
		if _, taken := f.jobs.unique[k]; taken {
			// Another live job has the key now; at most one may.
			j.Unique = ""
		} else {
			f.jobs.unique[k] = j.ID
		}
	}
	f.queue(q, j, f.clock)
	return Result{JobID: j.ID}
}

// takeLeased takes the job op names out of its topic's leased heap, if op's
// token is its live lease.
func (f *FSM) takeLeased(op *Op) (*Job, *topicQueue, Result, bool) {
	j, res, ok := f.held(op)
	if !ok {
		return nil, nil, res, false
	}
	q := f.jobs.topics[j.Topic]
	heap.Remove(&q.leased, j.index)
	return j, q, Result{}, true
}

// queue puts a job (out of every heap) in its topic's queue to run at runAt.
func (f *FSM) queue(q *topicQueue, j *Job, runAt int64) {
	j.state = stateQueued
	j.RunAt = runAt
	j.Holder = ""
	heap.Push(&q.queued, j)
	f.jobs.settle(q)
	f.observer.JobsChanged(j.Topic)
}

// bury makes a job dead: kept, out of every queue, until requeued. The
// caller settles q.
func (f *FSM) bury(q *topicQueue, j *Job) {
	j.state = stateDead
	j.Holder = ""
	q.dead[j.ID] = j
	f.dropUnique(j)
}

// forget removes a finished job from the table.
func (f *FSM) forget(j *Job) {
	delete(f.jobs.jobs, j.ID)
	f.dropUnique(j)
}

// dropUnique frees j's uniqueness key, if j holds it.
func (f *FSM) dropUnique(j *Job) {
	if j.Unique == "" {
		return
	}
	if k := shard.JobKey(j.Topic, j.Unique); f.jobs.unique[k] == j.ID {
		delete(f.jobs.unique, k)
	}
}

// promote runs before the first command of a new leader. Every lease that
// was live when the previous leader last spoke (at before, by its clock)
// ends the grace (the election timeout) after the later of its deadline and
// the new leader's time: its holder, who could not extend it while the
// shard had no leader, gets that long to do so now, and a lease is never
// cut short by the new leader's clock running ahead by less than the
// grace. Leases that had run out before are left alone. (Each change of
// leader adds the grace again: a shard that changes leader more often than
// that keeps its leases live.)
func (f *FSM) promote(before int64) {
	moved := false
	for _, q := range f.jobs.topics {
		changed := false
		for _, j := range q.leased {
			if j.Deadline >= before {
				j.Deadline = max(j.Deadline, f.clock) + f.leaseGrace
				changed = true
			}
		}
		if changed {
			heap.Init(&q.leased)
			moved = true
		}
	}
	// Many topics may have moved at once: the heap of them is rebuilt,
	// not fixed one by one.
	if moved {
		heap.Init(&f.jobs.active)
	}
}

// JobCounts returns the counts of topic's jobs at time now.
func (f *FSM) JobCounts(topic string, now int64) shard.JobCounts {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.jobs.topics[topic]
	if q == nil {
		return shard.JobCounts{}
	}
	c := shard.JobCounts{Done: q.done, Dead: len(q.dead)}
	for _, h := range []jobHeap{q.queued, q.leased} {
		for _, j := range h {
			switch j.State(now) {
			case JobScheduled:
				c.Scheduled++
			case JobReady:
				c.Ready++
			case JobLeased:
				c.Leased++
			}
		}
	}
	return c
}

// ReadyCount returns how many of topic's jobs can be acquired at now,
// counting at most limit.
func (f *FSM) ReadyCount(topic string, now int64, limit int) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.jobs.topics[topic]
	if q == nil {
		return 0
	}
	return q.ready(now, limit)
}

// ready counts the queue's jobs that can be acquired at now, up to limit.
func (q *topicQueue) ready(now int64, limit int) int {
	n := q.queued.countDue(now, limit)
	return n + q.leased.countDue(now, limit-n)
}

// ReadyTopics returns, for every topic with a job that can be acquired at
// now, how many (each counted up to limit). It visits only those topics
// (and the children of their entries in the active heap): its cost grows
// with the ready topics, not with all the topics of the shard.
func (f *FSM) ReadyTopics(now int64, limit int) map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := map[string]int{}
	h := f.jobs.active
	var visit func(i int)
	visit = func(i int) {
		if i >= len(h) || h[i].nextAt() > now {
			return
		}
		if n := h[i].ready(now, limit); n > 0 {
			out[h[i].name] = n
		}
		visit(2*i + 1)
		visit(2*i + 2)
	}
	visit(0)
	return out
}

// NextAvailable returns when the next of topic's jobs can be acquired, and
// false if the topic has none queued or leased.
func (f *FSM) NextAvailable(topic string) (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.jobs.topics[topic]
	if q == nil {
		return 0, false
	}
	j, _ := q.next()
	if j == nil {
		return 0, false
	}
	return j.available(), true
}

// NextLeaseEnd returns the earliest end of a lease that the state machine
// has not seen pass (its deadline is after the clock), and false if none. A
// leader proposes a command after it, so that the state machine's clock,
// which a new leader measures lease extensions from, keeps up with the
// leases running out.
func (f *FSM) NextLeaseEnd() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	best := int64(math.MaxInt64)
	for _, q := range f.jobs.topics {
		h := q.leased
		var visit func(i int)
		visit = func(i int) {
			if i >= len(h) || h[i].Deadline >= best {
				return
			}
			if h[i].Deadline > f.clock {
				best = h[i].Deadline // its children end later still
				return
			}
			visit(2*i + 1)
			visit(2*i + 2)
		}
		visit(0)
	}
	return best, best != math.MaxInt64
}

// DeadJobs returns topic's dead jobs enqueued after the job of order after
// (Job.Seq; 0 for all), in enqueue order, as long as fits (if not nil)
// accepts each one, at most limit of them; more reports whether some were left out. A
// listing pages through them by passing the last one's Seq as the next
// after.
func (f *FSM) DeadJobs(topic string, after uint64, limit int, fits func(*Job) bool) (jobs []Job, more bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.jobs.topics[topic]
	if q == nil {
		return nil, false
	}
	var dead []Job
	for _, j := range q.dead {
		if j.Seq > after {
			dead = append(dead, *j)
		}
	}
	sortJobs(dead)
	for i := range dead {
		if len(jobs) == limit || fits != nil && !fits(&dead[i]) {
			return jobs, true
		}
		jobs = append(jobs, dead[i])
	}
	return jobs, false
}

// GetJob returns a copy of the job with the given id, also of one frozen
// for a move away.
func (f *FSM) GetJob(id string) (Job, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if j, ok := f.jobs.jobs[id]; ok {
		return *j, true
	}
	if m := f.slots.frozenMove(shard.JobSlot(id)); m != nil {
		for _, j := range m.jobs {
			if j.ID == id {
				return *j, true
			}
		}
	}
	return Job{}, false
}

// sortJobs orders jobs by enqueue order, the same on every replica.
func sortJobs(js []Job) {
	sort.Slice(js, func(a, b int) bool { return js[a].Seq < js[b].Seq })
}
