package fsm

import (
	"math"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"
	"github.com/shoal-kv/shoal/shard"
)

// DefaultMaxSchedules is the number of schedules a shard holds by default
// (Config.MaxSchedules).
const DefaultMaxSchedules = 1000

// Schedule makes one job of Topic per Interval: for interval number k (the
// k-th multiple of Interval since the Unix epoch) a job whose id is made
// from the schedule and k. The state machine makes it when the first
// command with a time in interval k is applied, so no two jobs are made for
// one interval, whichever leader proposes, and an interval the shard slept
// through entirely is skipped, not made up.
type Schedule struct {
	Topic, Key  string
	Payload     string
	Interval    int64 // nanoseconds
	MaxAttempts int
	// Last is the last interval number a job was made for, in units of
	// Interval.
	Last int64
}

// due returns when the schedule makes its next job.
func (s *Schedule) due() int64 {
	if s.Last+1 > math.MaxInt64/s.Interval {
		return math.MaxInt64
	}
	return (s.Last + 1) * s.Interval
}

// IntervalJobID returns the id of the job that schedule (topic, key) makes
// for interval number k.
func IntervalJobID(topic, key string, k int64) string {
	h := xxhash.Sum64String(shard.JobKey(topic, key))
	return shard.NewJobID(shard.JobKeySlot(topic, key), "e"+strconv.FormatUint(h, 16)+"."+strconv.FormatInt(k, 10))
}

// every creates, updates or restarts a schedule. A new one makes its first
// job at once, unless the job of its interval still exists (a schedule
// stopped and started again within an interval). An update makes no job
// for the interval it happens in if one was made: registering the same
// schedule again (each worker process at start, say) makes no extra job. A
// new interval length starts counting at the next of its intervals. An
// interval under shard.MinScheduleInterval is invalid, and a new schedule
// past Config.MaxSchedules fails with StatusFull.
func (f *FSM) every(op *Op) Result {
	if shard.CheckTopic(op.Topic) != nil || shard.CheckJobKey(op.Unique) != nil || op.Interval < int64(shard.MinScheduleInterval) {
		return Result{Status: StatusInvalid}
	}
	k := shard.JobKey(op.Topic, op.Unique)
	s := f.jobs.schedules[k]
	switch {
	case s == nil && len(f.jobs.schedules) >= f.maxSchedules:
		return Result{Status: StatusFull}
	case s == nil:
		s = &Schedule{Topic: op.Topic, Key: op.Unique, Last: -1}
		f.jobs.schedules[k] = s
	case s.Interval != op.Interval:
		s.Last = f.clock / op.Interval
	}
	s.Payload, s.Interval, s.MaxAttempts = op.Value, op.Interval, op.MaxAttempts
	f.jobs.scheduleDue = 0 // run at once
	f.runSchedules()
	return Result{JobID: IntervalJobID(s.Topic, s.Key, f.clock/s.Interval)}
}

// unevery deletes a schedule; the jobs it made stay.
func (f *FSM) unevery(op *Op) Result {
	k := shard.JobKey(op.Topic, op.Unique)
	if f.jobs.schedules[k] == nil {
		return Result{Status: StatusNotFound}
	}
	delete(f.jobs.schedules, k)
	f.jobs.scheduleDue = f.jobs.nextScheduleDue()
	return Result{}
}

// runSchedules makes the jobs of the intervals the clock has entered; while
// the shard holds Config.MaxJobs jobs, the intervals pass without one. It
// visits schedules in key order: job creation order is replicated state.
func (f *FSM) runSchedules() {
	t := &f.jobs
	if len(t.schedules) == 0 || f.clock < t.scheduleDue {
		return
	}
	var keys []string // of the schedules due
	for k, s := range t.schedules {
		if f.clock/s.Interval > s.Last {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		s := t.schedules[key]
		k := f.clock / s.Interval
		s.Last = k
		id := IntervalJobID(s.Topic, s.Key, k)
		if _, exists := t.jobs[id]; !exists && len(t.jobs) < f.maxJobs {
			f.createJob(id, s.Topic, s.Payload, f.clock, s.MaxAttempts, 0, "")
		}
	}
	t.scheduleDue = t.nextScheduleDue()
}

// nextScheduleDue returns when the next running schedule fires.
func (t *jobTable) nextScheduleDue() int64 {
	at := int64(math.MaxInt64)
	for _, s := range t.schedules {
		at = min(at, s.due())
	}
	return at
}

// NextScheduleDue returns the earliest time a schedule makes its next job,
// and false if none runs. A leader proposes a command then, so the job
// appears even when nothing else is written.
func (f *FSM) NextScheduleDue() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.jobs.scheduleDue, f.jobs.scheduleDue != math.MaxInt64
}
