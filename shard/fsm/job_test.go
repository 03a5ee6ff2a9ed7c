package fsm

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

const sec = int64(time.Second)

func (a *applier) enqueue(id, topic string, opts ...func(*Op)) Result {
	a.t.Helper()
	op := Op{Kind: KindEnqueue, JobID: id, Topic: topic, Value: "payload-" + id}
	for _, o := range opts {
		o(&op)
	}
	return a.one(op)
}

// acquire acquires under a grant that, like the random one of a node, no
// one would guess, and that is the same for the same history.
func (a *applier) acquire(topic, client string, lease int64) Result {
	a.t.Helper()
	return a.one(Op{Kind: KindAcquire, Topic: topic, Client: client, Lease: lease, Grant: testGrant(a.index)})
}

func testGrant(i uint64) uint64 { return (i + 1) * 0x9e3779b97f4a7c15 }

func (a *applier) onJob(kind Kind, g Result, opts ...func(*Op)) Result {
	a.t.Helper()
	op := Op{Kind: kind, JobID: g.JobID, Token: g.Token, Grant: g.Grant}
	for _, o := range opts {
		o(&op)
	}
	return a.one(op)
}

func TestJobLifecycle(t *testing.T) {
	a := newApplier(t)
	for _, id := range []string{"j1", "j2", "j3"} {
		if r := a.enqueue(id, "mail"); r.Status != StatusOK || r.JobID != id {
			t.Fatalf("enqueue %s: %+v", id, r)
		}
	}
	a.enqueue("other", "sms")
	if r := a.enqueue("j1", "mail"); r.Status != StatusOK || r.JobID != "j1" {
		t.Errorf("enqueue of an existing id (a retry): %+v", r)
	}
	if st := a.fsm.Stats(); st.Jobs != 4 {
		t.Errorf("%d jobs after a repeated enqueue, want 4", st.Jobs)
	}
	if c := a.fsm.JobCounts("mail", a.now); c != (shard.JobCounts{Ready: 3}) {
		t.Errorf("counts %+v", c)
	}
	// First in, first out.
	g := a.acquire("mail", "w1", 10*sec)
	if g.Status != StatusOK || g.JobID != "j1" || g.Attempt != 1 || g.Payload != "payload-j1" || g.Topic != "mail" ||
		g.Deadline != a.now+10*sec || g.Token == 0 {
		t.Fatalf("grant %+v", g)
	}
	g2 := a.acquire("mail", "w2", 10*sec)
	if g2.JobID != "j2" || g2.Token <= g.Token {
		t.Errorf("second grant %+v after %+v: want j2 with a larger token", g2, g)
	}
	if c := a.fsm.JobCounts("mail", a.now); c != (shard.JobCounts{Ready: 1, Leased: 2}) {
		t.Errorf("counts %+v", c)
	}
	if r := a.onJob(KindComplete, g); r.Status != StatusOK {
		t.Fatalf("complete: %+v", r)
	}
	if r := a.onJob(KindComplete, g); r.Status != StatusLeaseLost {
		t.Errorf("second complete (a new request): %+v, want StatusLeaseLost", r)
	}
	if _, ok := a.fsm.GetJob("j1"); ok {
		t.Error("a completed job is still held")
	}
	a.acquire("mail", "w3", 10*sec)
	if r := a.acquire("mail", "w4", 10*sec); r.Status != StatusEmpty {
		t.Errorf("acquire with nothing ready: %+v", r)
	}
	if c := a.fsm.JobCounts("mail", a.now); c != (shard.JobCounts{Leased: 2, Done: 1}) {
		t.Errorf("counts %+v", c)
	}
	if st := a.fsm.Stats(); st.Jobs != 3 || st.JobsCompleted != 1 {
		t.Errorf("stats %+v", st)
	}
	if r := a.acquire("", "w", sec); r.Status != StatusInvalid {
		t.Errorf("acquire without a topic: %+v", r)
	}
	if r := a.acquire("mail", "w", 0); r.Status != StatusInvalid {
		t.Errorf("acquire without a lease: %+v", r)
	}
}

func TestDelayedJob(t *testing.T) {
	a := newApplier(t)
	a.enqueue("later", "t", func(o *Op) { o.Delay = 60 * sec })
	a.enqueue("now", "t")
	if c := a.fsm.JobCounts("t", a.now); c != (shard.JobCounts{Scheduled: 1, Ready: 1}) {
		t.Errorf("counts %+v", c)
	}
	if g := a.acquire("t", "w", sec); g.JobID != "now" {
		t.Fatalf("acquired %+v, want the job without delay", g)
	}
	if g := a.acquire("t", "w", sec); g.Status != StatusEmpty {
		t.Fatalf("acquired %+v before its time", g)
	}
	if at, ok := a.fsm.NextAvailable("t"); !ok || at != a.now+sec+1 {
		t.Errorf("NextAvailable = %d, %v; want the lease's end", at, ok)
	}
	a.now += 59 * sec
	if g := a.acquire("t", "w", sec); g.Status != StatusOK || g.JobID != "now" {
		// the first lease ran out: that job comes back first
		t.Fatalf("after 59s: %+v", g)
	}
	a.now += 2 * sec
	g := a.acquire("t", "w", sec)
	if g.JobID != "later" {
		t.Errorf("at its time: %+v, want the delayed job", g)
	}
}

// The lease semantics of the issue: a holder that stops extending loses the
// job when its lease runs out; another gets it with a larger token; the
// first one's Complete fails with ErrLeaseLost and changes nothing; the
// second's succeeds.
func TestLeaseRunsOut(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j", "t")
	first := a.acquire("t", "w1", 10*sec)
	if r := a.onJob(KindExtend, first, func(o *Op) { o.Lease = 20 * sec }); r.Status != StatusOK || r.Deadline != a.now+20*sec {
		t.Fatalf("extend: %+v", r)
	}
	a.now += 15 * sec
	if r := a.acquire("t", "w2", 10*sec); r.Status != StatusEmpty {
		t.Fatalf("acquired a job under an extended lease: %+v", r)
	}
	a.now += 6 * sec // past the extended deadline
	if c := a.fsm.JobCounts("t", a.now); c.Ready != 1 {
		t.Errorf("an expired lease counts %+v, want ready", c)
	}
	second := a.acquire("t", "w2", 10*sec)
	if second.JobID != "j" || second.Token <= first.Token || second.Attempt != 2 {
		t.Fatalf("second grant %+v after %+v", second, first)
	}
	for _, k := range []Kind{KindComplete, KindExtend, KindFail, KindRelease} {
		if r := a.onJob(k, first); r.Status != StatusLeaseLost {
			t.Errorf("%s with the stale token: %+v, want StatusLeaseLost", k, r)
		}
	}
	if j, _ := a.fsm.GetJob("j"); j.Token != second.Token || j.Holder != "w2" || j.Attempt != 2 {
		t.Errorf("a stale holder changed the job: %+v", j)
	}
	if r := a.onJob(KindComplete, second); r.Status != StatusOK {
		t.Errorf("the current holder's complete: %+v", r)
	}
	// An extend after the deadline, before anyone else took the job, is
	// refused too: the lease is over.
	a.enqueue("k", "t")
	g := a.acquire("t", "w", sec)
	a.now += 2 * sec
	if r := a.onJob(KindExtend, g); r.Status != StatusLeaseLost {
		t.Errorf("extend after the deadline: %+v", r)
	}
}

func TestFailBackoffAndDeath(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j", "t", func(o *Op) { o.MaxAttempts = 3; o.Backoff = 10 * sec })
	for attempt := 1; attempt <= 2; attempt++ {
		g := a.acquire("t", "w", sec)
		if g.JobID != "j" || g.Attempt != attempt {
			t.Fatalf("attempt %d: %+v", attempt, g)
		}
		r := a.onJob(KindFail, g, func(o *Op) { o.Reason = fmt.Sprint("boom ", attempt) })
		// base·2^(attempt-1), jittered to between half and all of it
		full := 10 * sec << (attempt - 1)
		if d := r.Deadline - a.now; r.Status != StatusOK || d < full/2 || d > full {
			t.Fatalf("fail %d: %+v, delay %v not in [%v, %v]", attempt, r, time.Duration(d), time.Duration(full/2), time.Duration(full))
		}
		if g := a.acquire("t", "w", sec); g.Status != StatusEmpty {
			t.Fatalf("acquired during the backoff: %+v", g)
		}
		a.now = r.Deadline
	}
	g := a.acquire("t", "w", sec)
	if r := a.onJob(KindFail, g, func(o *Op) { o.Reason = "last" }); r.Status != StatusOK || r.Deadline != 0 {
		t.Fatalf("last failure: %+v, want dead (no next run)", r)
	}
	if c := a.fsm.JobCounts("t", a.now); c != (shard.JobCounts{Dead: 1}) {
		t.Errorf("counts %+v", c)
	}
	dead, _ := a.fsm.DeadJobs("t", 0, 10, nil)
	if len(dead) != 1 || dead[0].LastError != "last" || dead[0].Attempt != 3 {
		t.Fatalf("dead jobs %+v", dead)
	}
	if r := a.one(Op{Kind: KindRequeue, JobID: "j"}); r.Status != StatusOK {
		t.Fatalf("requeue: %+v", r)
	}
	if r := a.one(Op{Kind: KindRequeue, JobID: "j"}); r.Status != StatusWrongState {
		t.Errorf("requeue of a queued job: %+v", r)
	}
	if r := a.one(Op{Kind: KindRequeue, JobID: "nope"}); r.Status != StatusNotFound {
		t.Errorf("requeue of an unknown job: %+v", r)
	}
	if g := a.acquire("t", "w", sec); g.JobID != "j" || g.Attempt != 1 {
		t.Errorf("after requeue: %+v, want attempt 1 again", g)
	}
}

// A job whose workers keep dying (their leases run out) is dead after
// MaxAttempts grants, not handed out forever.
func TestExpiredLeasesCountAsAttempts(t *testing.T) {
	a := newApplier(t)
	a.enqueue("poison", "t", func(o *Op) { o.MaxAttempts = 2 })
	a.enqueue("fine", "t")
	a.acquire("t", "w", sec) // poison, attempt 1
	a.now += 2 * sec
	if g := a.acquire("t", "w", sec); g.JobID != "fine" {
		t.Fatalf("%+v", g) // fine was queued before poison's lease ran out
	}
	a.now += 2 * sec
	if g := a.acquire("t", "w", sec); g.JobID != "poison" || g.Attempt != 2 {
		t.Fatalf("%+v", g)
	}
	a.now += 2 * sec
	if g := a.acquire("t", "w", sec); g.JobID != "fine" || g.Attempt != 2 {
		t.Fatalf("%+v", g)
	}
	// Poison's second lease has run out: the next acquire finds it first,
	// buries it, and hands out the next job instead.
	a.now += 2 * sec
	if g := a.acquire("t", "w", sec); g.JobID != "fine" || g.Attempt != 3 {
		t.Errorf("%+v: want fine, with poison buried", g)
	}
	if dead, _ := a.fsm.DeadJobs("t", 0, 10, nil); len(dead) != 1 || dead[0].ID != "poison" || dead[0].LastError == "" {
		t.Errorf("dead %+v", dead)
	}
}

func TestRelease(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j", "t")
	g := a.acquire("t", "w1", 10*sec)
	if r := a.onJob(KindRelease, g); r.Status != StatusOK {
		t.Fatal(r)
	}
	g2 := a.acquire("t", "w2", 10*sec)
	if g2.JobID != "j" || g2.Attempt != 1 {
		t.Errorf("after release: %+v, want the job at attempt 1", g2)
	}
}

func TestUniqueKey(t *testing.T) {
	a := newApplier(t)
	key := func(o *Op) { o.Unique = "daily-report" }
	a.enqueue("first", "t", key)
	if r := a.enqueue("second", "t", key); r.Status != StatusOK || r.JobID != "first" {
		t.Errorf("second enqueue with the key: %+v, want the first job's id", r)
	}
	if r := a.enqueue("other-topic", "u", key); r.JobID != "other-topic" {
		t.Errorf("the key is per topic: %+v", r)
	}
	g := a.acquire("t", "w", sec)
	if r := a.enqueue("third", "t", key); r.JobID != "first" {
		t.Errorf("while leased: %+v", r)
	}
	a.onJob(KindComplete, g)
	if r := a.enqueue("fourth", "t", key); r.JobID != "fourth" {
		t.Errorf("after the first is done: %+v, want a new job", r)
	}
}

func TestEverySchedule(t *testing.T) {
	a := newApplier(t)
	const interval = 60 * sec
	a.now = 1000 * interval // at the start of interval 1000
	every := func() Result {
		return a.one(Op{Kind: KindEvery, Topic: "cron", Unique: "cleanup", Interval: interval, Value: "p"})
	}
	if r := every(); r.Status != StatusOK || r.JobID != IntervalJobID("cron", "cleanup", 1000) {
		t.Fatalf("every: %+v", r)
	}
	every() // registering again makes nothing new
	a.now += interval / 2
	a.one(Op{Kind: KindTick})
	if st := a.fsm.Stats(); st.Jobs != 1 {
		t.Fatalf("%d jobs in the first interval, want 1", st.Jobs)
	}
	if due, ok := a.fsm.NextScheduleDue(); !ok || due != 1001*interval {
		t.Errorf("NextScheduleDue = %d, %v", due, ok)
	}
	a.now = 1001*interval + 1
	a.one(Op{Kind: KindTick})
	a.one(Op{Kind: KindTick})
	a.now = 1005*interval + 7 // four intervals pass unseen: one job, not four
	a.one(Op{Kind: KindTick})
	if st := a.fsm.Stats(); st.Jobs != 3 {
		t.Errorf("%d jobs, want 3 (intervals 1000, 1001, 1005)", st.Jobs)
	}
	for _, k := range []int64{1000, 1001, 1005} {
		if j, ok := a.fsm.GetJob(IntervalJobID("cron", "cleanup", k)); !ok || j.Payload != "p" || j.Topic != "cron" {
			t.Errorf("job of interval %d: %+v %v", k, j, ok)
		}
	}
	if r := a.one(Op{Kind: KindUnevery, Topic: "cron", Unique: "cleanup"}); r.Status != StatusOK {
		t.Fatal(r)
	}
	a.now += 3 * interval
	a.one(Op{Kind: KindTick})
	if st := a.fsm.Stats(); st.Jobs != 3 {
		t.Errorf("a removed schedule made a job: %d", st.Jobs)
	}
	if _, ok := a.fsm.NextScheduleDue(); ok {
		t.Error("a schedule is still due")
	}
}

// The first command of a new term (a new leader) gives every lease live
// under the old leader the grace after the later of its deadline and the
// new leader's time; leases that had run out stay out.
func TestNewLeaderExtendsLiveLeases(t *testing.T) {
	a := newApplier(t)
	a.enqueue("live", "t")
	a.enqueue("expired", "t")
	a.enqueue("lapsed", "t")
	expired := a.acquire("t", "w1", 10*sec)
	a.now += 5 * sec
	live := a.acquire("t", "w2", 10*sec)  // until now+10s
	lapsed := a.acquire("t", "w3", 7*sec) // until now+7s
	a.now += 6 * sec                      // expired ran out 1s ago
	a.one(Op{Kind: KindTick})             // the old leader's last word
	a.now += 2 * sec                      // lapsed runs out while there is no leader
	a.term++
	a.one(Op{Kind: KindTick}) // the new leader's first command
	grace := int64(DefaultLeaseGrace)
	if j, _ := a.fsm.GetJob(live.JobID); j.Deadline != live.Deadline+grace {
		t.Errorf("live lease ends at %d, want its deadline %d plus the grace", j.Deadline, live.Deadline)
	}
	if j, _ := a.fsm.GetJob(lapsed.JobID); j.Deadline != a.now+grace {
		t.Errorf("a lease that ran out while there was no leader ends at %d, want the grace from now %d", j.Deadline, a.now+grace)
	}
	if r := a.onJob(KindExtend, lapsed); r.Status != StatusOK {
		t.Errorf("the holder of the lapsed lease could not extend it: %+v", r)
	}
	if j, _ := a.fsm.GetJob(expired.JobID); j.Deadline != expired.Deadline {
		t.Errorf("a lease that had run out under the old leader was extended: %+v", j)
	}
	a.term++ // the same term again changes nothing
	a.one(Op{Kind: KindTick})
	j, _ := a.fsm.GetJob(live.JobID)
	a.one(Op{Kind: KindTick})
	if j2, _ := a.fsm.GetJob(live.JobID); j2.Deadline != j.Deadline {
		t.Errorf("a second command of one term extended leases again")
	}
}

// The leases the state machine has not yet seen run out, so the leader can
// tick the clock past them.
func TestNextLeaseEnd(t *testing.T) {
	a := newApplier(t)
	if _, ok := a.fsm.NextLeaseEnd(); ok {
		t.Error("a lease end with no leases")
	}
	a.enqueue("a", "t")
	a.enqueue("b", "t")
	ga := a.acquire("t", "w", 5*sec)
	gb := a.acquire("t", "w", 9*sec)
	if end, ok := a.fsm.NextLeaseEnd(); !ok || end != ga.Deadline {
		t.Errorf("NextLeaseEnd = %d, %v; want %d", end, ok, ga.Deadline)
	}
	a.now += 6 * sec
	a.one(Op{Kind: KindTick})
	if end, ok := a.fsm.NextLeaseEnd(); !ok || end != gb.Deadline {
		t.Errorf("after a's lease was seen to end: %d, %v; want %d", end, ok, gb.Deadline)
	}
}

// Ending a lease takes its grant as well as its token: the token, which
// grows by one with every grant of the shard, can be guessed.
func TestGrantProvesTheLease(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j1", "t")
	g := a.acquire("t", "w", 10*sec)
	if g.Status != StatusOK || g.Grant == 0 {
		t.Fatalf("grant %+v", g)
	}
	for _, k := range []Kind{KindExtend, KindFail, KindRelease, KindComplete} {
		for _, grant := range []uint64{0, g.Grant + 1} {
			if r := a.onJob(k, g, func(o *Op) { o.Grant = grant }); r.Status != StatusLeaseLost {
				t.Errorf("%s with grant %d for %d: %+v, want StatusLeaseLost", k, grant, g.Grant, r)
			}
		}
	}
	if r := a.onJob(KindExtend, g); r.Status != StatusOK || r.Grant != g.Grant || r.Token != g.Token {
		t.Errorf("extend with the grant: %+v", r)
	}
	if r := a.onJob(KindComplete, g); r.Status != StatusOK {
		t.Errorf("complete with the grant: %+v", r)
	}
}

func TestAcquireRetryGetsSameGrant(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j1", "t")
	a.enqueue("j2", "t")
	op := Op{Kind: KindAcquire, Topic: "t", Client: "c", Seq: 5, Ack: 5, Lease: sec, Grant: 7}
	g1, g2 := a.one(op), a.one(op)
	if !reflect.DeepEqual(g1, g2) {
		t.Errorf("a retried acquire got %+v, then %+v", g1, g2)
	}
	if c := a.fsm.JobCounts("t", a.now); c.Leased != 1 {
		t.Errorf("a retried acquire leased %d jobs", c.Leased)
	}
}

func TestReadyCount(t *testing.T) {
	a := newApplier(t)
	for i := 0; i < 50; i++ {
		a.enqueue(fmt.Sprint("j", i), "t", func(o *Op) { o.RunAt = a.now + int64(i)*sec })
	}
	if n := a.fsm.ReadyCount("t", a.now+9*sec, 100); n != 10 {
		t.Errorf("ReadyCount at +9s = %d, want 10", n)
	}
	if n := a.fsm.ReadyCount("t", a.now+100*sec, 20); n != 20 {
		t.Errorf("ReadyCount capped at 20 = %d", n)
	}
	if got := a.fsm.ReadyTopics(a.now, 100); got["t"] != 1 || len(got) != 1 {
		t.Errorf("ReadyTopics = %v", got)
	}
}

func TestIntervalJobID(t *testing.T) {
	id := IntervalJobID("t", "k", 7)
	if shard.JobSlot(id) != shard.JobKeySlot("t", "k") || id == IntervalJobID("t", "k", 8) {
		t.Errorf("interval job id %q", id)
	}
}

// Two replicas applying the same commands hold the same jobs and write the
// same snapshot; a replica restored from it goes on identically.
func TestJobSnapshotRestore(t *testing.T) {
	build := func() *applier {
		a := newApplier(t)
		a.one(Op{Kind: KindEvery, Topic: "cron", Unique: "k", Interval: 60 * sec, Value: "p", Client: "c", Seq: 1, Ack: 1})
		for i := 0; i < 20; i++ {
			a.enqueue(fmt.Sprint("j", i), fmt.Sprint("t", i%3), func(o *Op) { o.Unique = fmt.Sprint("u", i%5); o.RunAt = a.now + int64(i%4)*sec })
		}
		a.now += 2 * sec
		g := a.one(Op{Kind: KindAcquire, Topic: "t0", Client: "w", Seq: 2, Ack: 1, Lease: 30 * sec, Grant: 11})
		a.one(Op{Kind: KindFail, JobID: g.JobID, Token: g.Token, Grant: g.Grant, Reason: "x"})
		a.one(Op{Kind: KindAcquire, Topic: "t1", Client: "w", Seq: 3, Ack: 1, Lease: 30 * sec, Grant: 12})
		g = a.acquire("t2", "w", 30*sec)
		a.onJob(KindComplete, g)
		return a
	}
	x, y := build(), build()
	data := snapshotBytes(t, x.fsm)
	if !bytes.Equal(data, snapshotBytes(t, y.fsm)) {
		t.Fatal("two replicas of the same history wrote different snapshots")
	}
	r := New(Config{})
	if err := r.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, snapshotBytes(t, r)) {
		t.Fatal("the restored replica's snapshot differs")
	}
	z := &applier{t: t, fsm: r, index: r.Applied(), now: x.now}
	for _, a := range []*applier{x, z} {
		a.now += 5 * sec
	}
	for i := 0; i < 10; i++ {
		topic := fmt.Sprint("t", i%3)
		if gx, gz := x.acquire(topic, "w", sec), z.acquire(topic, "w", sec); !reflect.DeepEqual(gx, gz) {
			t.Fatalf("after restore, acquire %d gives %+v, the original %+v", i, gz, gx)
		}
	}
	if x.fsm.Stats() != z.fsm.Stats() {
		t.Errorf("stats differ: %+v, %+v", x.fsm.Stats(), z.fsm.Stats())
	}
	// The session's stored grant survives: a retry returns it, with the
	// payload read from the job, while the job is leased under it.
	retry := z.one(Op{Kind: KindAcquire, Topic: "t1", Client: "w", Seq: 3, Ack: 1, Lease: 30 * sec, Grant: 99})
	if retry.Status != StatusOK || retry.Token == 0 || retry.Grant != 12 || retry.Payload == "" {
		t.Errorf("retried acquire after restore: %+v", retry)
	}
	// The grant of a job failed since is lost: its retry finds nothing.
	retry = z.one(Op{Kind: KindAcquire, Topic: "t0", Client: "w", Seq: 2, Ack: 1, Lease: 30 * sec})
	if retry.Status != StatusEmpty {
		t.Errorf("retried acquire of a job failed since: %+v, want StatusEmpty", retry)
	}
}

// An acquire that found nothing is not remembered: tried again (the same
// request, once a job is there) it acquires.
func TestEmptyAcquireIsNotRemembered(t *testing.T) {
	a := newApplier(t)
	op := Op{Kind: KindAcquire, Topic: "t", Client: "c", Seq: 5, Ack: 5, Lease: sec}
	if r := a.one(op); r.Status != StatusEmpty {
		t.Fatalf("%+v", r)
	}
	a.enqueue("j", "t")
	if r := a.one(op); r.Status != StatusOK || r.JobID != "j" {
		t.Errorf("the same acquire once a job was there: %+v", r)
	}
}

// At most one live job holds a uniqueness key, also after a dead job that
// had it is requeued while another took it; a restored replica agrees.
func TestUniqueKeyAfterRequeue(t *testing.T) {
	a := newApplier(t)
	key := func(o *Op) { o.Unique = "k"; o.MaxAttempts = 1 }
	a.enqueue("jz", "t", key)
	g := a.acquire("t", "w", sec)
	a.onJob(KindFail, g) // dead: the key is free
	a.enqueue("ja", "t", key)
	if r := a.one(Op{Kind: KindRequeue, JobID: "jz"}); r.Status != StatusOK {
		t.Fatal(r)
	}
	if r := a.enqueue("jb", "t", key); r.JobID != "ja" {
		t.Errorf("enqueue with the key gives %q, want ja's", r.JobID)
	}
	r := New(Config{})
	if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.fsm)))); err != nil {
		t.Fatal(err)
	}
	b := &applier{t: t, fsm: r, index: r.Applied(), term: a.term, now: a.now}
	if res := b.enqueue("jc", "t", key); res.JobID != "ja" {
		t.Errorf("after restore, enqueue with the key gives %q, want ja's", res.JobID)
	}
}

// Changing a schedule's interval neither breaks it nor makes an extra job;
// stopping deletes it, and starting it again makes its interval's job
// unless that job is still held.
func TestScheduleUpdates(t *testing.T) {
	a := newApplier(t)
	every := func(interval int64) Result {
		return a.one(Op{Kind: KindEvery, Topic: "cron", Unique: "k", Interval: interval})
	}
	every(60 * sec)
	every(3600 * sec) // a minute to an hour
	due, ok := a.fsm.NextScheduleDue()
	if !ok || due <= a.now || due > a.now+3600*sec {
		t.Errorf("after a change to an hour, next due at %d (now %d)", due, a.now)
	}
	every(60 * sec) // and back to a minute: the current minute makes nothing new
	if st := a.fsm.Stats(); st.Jobs != 1 {
		t.Errorf("%d jobs after interval changes, want 1", st.Jobs)
	}
	// The interval's job completes (and is forgotten); stop, start again.
	g := a.acquire("cron", "w", sec)
	a.onJob(KindComplete, g)
	a.one(Op{Kind: KindUnevery, Topic: "cron", Unique: "k"})
	if r := a.one(Op{Kind: KindUnevery, Topic: "cron", Unique: "k"}); r.Status != StatusNotFound {
		t.Errorf("stopping a stopped schedule: %+v", r)
	}
	if n := len(a.fsm.jobs.schedules); n != 0 {
		t.Errorf("%d schedules held after the only one stopped", n)
	}
	every(60 * sec)
	if st := a.fsm.Stats(); st.Jobs != 1 {
		t.Errorf("restarting after the interval's job completed made %d jobs, want 1", st.Jobs)
	}
	a.one(Op{Kind: KindUnevery, Topic: "cron", Unique: "k"})
	every(60 * sec)
	if st := a.fsm.Stats(); st.Jobs != 1 {
		t.Errorf("restarting while the interval's job is held made %d jobs, want 1", st.Jobs)
	}
	a.now += 60 * sec
	a.one(Op{Kind: KindTick})
	if st := a.fsm.Stats(); st.Jobs != 2 {
		t.Errorf("the next interval made %d jobs in all, want 2", st.Jobs)
	}
}

// An enqueue that names the id of a held job is that enqueue again if the
// job has its topic and payload, and refused otherwise.
func TestEnqueueOfAnExistingID(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j1", "mail")
	if r := a.enqueue("j1", "mail"); r.Status != StatusOK || r.JobID != "j1" {
		t.Errorf("the same enqueue again: %+v", r)
	}
	if r := a.enqueue("j1", "sms"); r.Status != StatusJobExists {
		t.Errorf("an enqueue of another topic under the id: %+v, want StatusJobExists", r)
	}
	if r := a.one(Op{Kind: KindEnqueue, JobID: "j1", Topic: "mail", Value: "other"}); r.Status != StatusJobExists {
		t.Errorf("an enqueue of another payload under the id: %+v, want StatusJobExists", r)
	}
	if c := a.fsm.JobCounts("mail", a.now); c.Ready != 1 {
		t.Errorf("counts %+v, want the one job", c)
	}
}

// recorder is an Observer that writes down what it hears.
type recorder struct {
	applied uint64
	changed []string
}

func (r *recorder) Applied(index uint64)     { r.applied = index }
func (r *recorder) JobsChanged(topic string) { r.changed = append(r.changed, topic) }

// The observer hears of every applied index, and of each change that may
// make a topic's job available other than by time passing; not of those
// that take one away.
func TestObserver(t *testing.T) {
	rec := &recorder{}
	a := newApplier(t)
	a.fsm = New(Config{Observer: rec})
	step := func(what string, want []string, do func()) {
		t.Helper()
		rec.changed = nil
		do()
		if !slices.Equal(rec.changed, want) || rec.applied != a.index {
			t.Errorf("%s: heard %q and applied %d, want %q and %d", what, rec.changed, rec.applied, want, a.index)
		}
	}
	var g Result
	step("enqueue", []string{"t"}, func() { a.enqueue("j", "t") })
	step("acquire", nil, func() { g = a.acquire("t", "w", 10*sec) })
	step("release", []string{"t"}, func() { a.onJob(KindRelease, g) })
	step("acquire again", nil, func() { g = a.acquire("t", "w", 10*sec) })
	step("fail", []string{"t"}, func() { a.onJob(KindFail, g, func(op *Op) { op.Reason = "x" }) })
	step("set", nil, func() { a.one(Op{Kind: KindSet, Key: "k", Value: "v"}) })

	data := snapshotBytes(t, a.fsm)
	rec2 := &recorder{}
	r := New(Config{Observer: rec2})
	if err := r.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec2.changed, []string{""}) || rec2.applied != a.index {
		t.Errorf("restore: heard %q and applied %d, want every topic and %d", rec2.changed, rec2.applied, a.index)
	}
}

// A complete-and-acquire completes the job and leases the next in one op;
// its retry (the same client and sequence number) answers the same grant,
// completes nothing twice and leases no second job.
func TestCompleteAcquire(t *testing.T) {
	a := newApplier(t)
	for _, id := range []string{"j1", "j2", "j3"} {
		a.enqueue(id, "t")
	}
	g := a.acquire("t", "w", 10*sec)
	op := Op{Kind: KindCompleteAcquire, Client: "w", Seq: 7, Ack: 7, JobID: g.JobID, Token: g.Token, Grant: g.Grant,
		Topic: "t", Lease: 10 * sec, NextGrant: 99}
	next := a.one(op)
	if next.Status != StatusOK || next.JobID != "j2" || next.Grant != 99 || next.Token <= g.Token || next.Payload != "payload-j2" {
		t.Fatalf("complete-and-acquire: %+v", next)
	}
	if again := a.one(op); !reflect.DeepEqual(again, next) {
		t.Errorf("a retry got %+v, want %+v", again, next)
	}
	if c := a.fsm.JobCounts("t", a.now); c != (shard.JobCounts{Ready: 1, Leased: 1, Done: 1}) {
		t.Errorf("counts after a retried complete-and-acquire: %+v", c)
	}
	// Its lease works as an acquire's; the last job leaves nothing next.
	last := a.one(Op{Kind: KindCompleteAcquire, Client: "w", Seq: 8, JobID: next.JobID, Token: next.Token, Grant: next.Grant,
		Topic: "t", Lease: 10 * sec, NextGrant: 100})
	if last.Status != StatusOK || last.JobID != "j3" {
		t.Fatalf("second complete-and-acquire: %+v", last)
	}
	end := Op{Kind: KindCompleteAcquire, Client: "w", Seq: 9, JobID: last.JobID, Token: last.Token, Grant: last.Grant,
		Topic: "t", Lease: 10 * sec, NextGrant: 101}
	if r := a.one(end); r.Status != StatusOK || r.JobID != "" {
		t.Errorf("complete-and-acquire of the last job: %+v, want success without a job", r)
	}
	if r := a.one(end); r.Status != StatusOK || r.JobID != "" {
		t.Errorf("its retry: %+v", r)
	}
	if st := a.fsm.Stats(); st.Jobs != 0 || st.JobsCompleted != 3 {
		t.Errorf("at the end %d jobs held, %d completed; want 0 and 3", st.Jobs, st.JobsCompleted)
	}
}

// A complete-and-acquire whose completion fails leases nothing; one whose
// grant was lost since (the job completed) answers its retry with the
// completion alone.
func TestCompleteAcquireFailures(t *testing.T) {
	a := newApplier(t)
	a.enqueue("j1", "t")
	a.enqueue("j2", "t")
	g := a.acquire("t", "w", 10*sec)
	bad := Op{Kind: KindCompleteAcquire, Client: "w", Seq: 3, JobID: g.JobID, Token: g.Token, Grant: g.Grant + 1,
		Topic: "t", Lease: 10 * sec, NextGrant: 5}
	if r := a.one(bad); r.Status != StatusLeaseLost {
		t.Errorf("with a wrong grant: %+v", r)
	}
	if c := a.fsm.JobCounts("t", a.now); c.Leased != 1 || c.Ready != 1 {
		t.Errorf("a failed completion leased a job: %+v", c)
	}
	for name, op := range map[string]Op{
		"no lease":      {Kind: KindCompleteAcquire, JobID: g.JobID, Token: g.Token, Grant: g.Grant, Topic: "t", NextGrant: 5},
		"no topic":      {Kind: KindCompleteAcquire, JobID: g.JobID, Token: g.Token, Grant: g.Grant, Lease: sec, NextGrant: 5},
		"no next grant": {Kind: KindCompleteAcquire, JobID: g.JobID, Token: g.Token, Grant: g.Grant, Topic: "t", Lease: sec},
	} {
		if r := a.one(op); r.Status != StatusInvalid {
			t.Errorf("%s: %+v", name, r)
		}
	}
	op := Op{Kind: KindCompleteAcquire, Client: "w", Seq: 4, JobID: g.JobID, Token: g.Token, Grant: g.Grant,
		Topic: "t", Lease: 10 * sec, NextGrant: 5}
	next := a.one(op)
	a.onJob(KindComplete, next)
	if r := a.one(op); r.Status != StatusOK || r.JobID != "" {
		t.Errorf("a retry after the job leased next completed: %+v, want the completion without a job", r)
	}
}

func batchOf(ids ...string) []Op {
	var ops []Op
	for _, id := range ids {
		ops = append(ops, Op{Kind: KindEnqueue, JobID: id, Topic: "t", Value: "payload-" + id})
	}
	return ops
}

// A batch enqueues its jobs in order, answers a uniqueness key held with
// the live job's id, and its retry with the same ids, enqueueing nothing
// again.
func TestEnqueueBatch(t *testing.T) {
	a := newApplier(t)
	a.enqueue("old", "t", func(o *Op) { o.Unique = "u" })
	batch := batchOf("b1", "b2", "b3", "b4")
	batch[1].Unique = "u"
	batch[2].Unique = "v"
	batch[3].Unique = "v"
	op := Op{Kind: KindEnqueueBatch, Client: "c", Seq: 1, Batch: batch}
	r := a.one(op)
	if want := []string{"b1", "old", "b3", "b3"}; r.Status != StatusOK || !slices.Equal(r.JobIDs, want) {
		t.Fatalf("batch: %+v, want ids %v", r, want)
	}
	if kept := a.fsm.sessions.byClient["c"].results[1].JobIDs; !slices.Equal(kept, []string{"", "old", "", "b3"}) {
		t.Errorf("the session keeps %q: want only the ids that are not the jobs' own", kept)
	}
	if again := a.one(op); !reflect.DeepEqual(again, r) {
		t.Errorf("a retry got %+v, want %+v", again, r)
	}
	// A replica restored from a snapshot answers the retry the same.
	restored := New(Config{})
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.fsm)))); err != nil {
		t.Fatal(err)
	}
	a.fsm = restored
	if again := a.one(op); !reflect.DeepEqual(again, r) {
		t.Errorf("a retry after a restore got %+v, want %+v", again, r)
	}
	if c := a.fsm.JobCounts("t", a.now); c.Ready != 3 {
		t.Errorf("%d jobs ready, want 3", c.Ready)
	}
	// First in, first out, within the batch too.
	for _, want := range []string{"old", "b1", "b3"} {
		if g := a.acquire("t", "w", sec); g.JobID != want {
			t.Errorf("acquired %q, want %q", g.JobID, want)
		}
	}
}

// A batch that reuses the sequence number of another batch of its client
// is refused, not answered with ids of jobs that do not exist, also after
// a restore; the retry of the batch that used it is answered as before.
func TestEnqueueBatchReusedSequence(t *testing.T) {
	a := newApplier(t)
	first := Op{Kind: KindEnqueueBatch, Client: "c", Seq: 1, Batch: batchOf("a1", "a2")}
	r := a.one(first)
	if r.Status != StatusOK {
		t.Fatalf("first batch: %+v", r)
	}
	for _, restore := range []bool{false, true} {
		if restore {
			restored := New(Config{})
			if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.fsm)))); err != nil {
				t.Fatal(err)
			}
			a.fsm = restored
		}
		for name, batch := range map[string][]Op{
			"other ids":   batchOf("b1", "b2"),
			"more jobs":   batchOf("a1", "a2", "a3"),
			"other order": batchOf("a2", "a1"),
		} {
			if got := a.one(Op{Kind: KindEnqueueBatch, Client: "c", Seq: 1, Batch: batch}); got.Status != StatusInvalid {
				t.Errorf("restored %v, %s: %+v, want StatusInvalid", restore, name, got)
			}
		}
		if again := a.one(first); !reflect.DeepEqual(again, r) {
			t.Errorf("restored %v: the retry got %+v, want %+v", restore, again, r)
		}
	}
	if st := a.fsm.Stats(); st.Jobs != 2 {
		t.Errorf("%d jobs, want the first batch's 2", st.Jobs)
	}
}

// The ids a session keeps of batches that found their uniqueness keys held
// are bounded: past MaxKeptIDBytes the client's new ops are refused until
// it acknowledges results, also on a replica restored from a snapshot.
func TestKeptBatchIDsBounded(t *testing.T) {
	a := newApplier(t)
	held := strings.Repeat("h", shard.MaxKeySize)
	a.enqueue(held, "t", func(o *Op) { o.Unique = "u" })
	batch := func(seq, ack uint64) Result {
		b := batchOf(fmt.Sprintf("n%d", seq))
		b[0].Unique = "u" // held: the batch answers with held's id, which the session keeps
		return a.one(Op{Kind: KindEnqueueBatch, Client: "c", Seq: seq, Ack: ack, Batch: b})
	}
	seq := uint64(1)
	for ; seq <= MaxKeptIDBytes/shard.MaxKeySize; seq++ {
		if r := batch(seq, 1); r.Status != StatusOK || r.JobIDs[0] != held {
			t.Fatalf("batch %d: %+v", seq, r)
		}
	}
	if r := batch(seq, 1); r.Status != StatusTooManyPending {
		t.Fatalf("a batch past the bound: %+v, want StatusTooManyPending", r)
	}
	restored := New(Config{})
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.fsm)))); err != nil {
		t.Fatal(err)
	}
	a.fsm = restored
	if r := batch(seq, 1); r.Status != StatusTooManyPending {
		t.Fatalf("after a restore, a batch past the bound: %+v, want StatusTooManyPending", r)
	}
	// Acknowledging the results frees the room.
	if r := batch(seq, seq); r.Status != StatusOK {
		t.Errorf("a batch acknowledging the results before it: %+v", r)
	}
}

// A batch is applied whole or not at all.
func TestEnqueueBatchAllOrNone(t *testing.T) {
	a := newBoundedApplier(t, Config{MaxJobs: 4})
	a.enqueue("x", "other")
	clash := batchOf("n1", "x")
	dup := batchOf("n1", "n1")
	bad := batchOf("n1", "")
	for name, c := range map[string]struct {
		batch []Op
		want  Status
	}{
		"id of another job": {clash, StatusJobExists},
		"id twice":          {dup, StatusInvalid},
		"empty id":          {bad, StatusInvalid},
		"empty":             {nil, StatusInvalid},
		"past MaxJobs":      {batchOf("n1", "n2", "n3", "n4"), StatusFull},
	} {
		if r := a.one(Op{Kind: KindEnqueueBatch, Batch: c.batch}); r.Status != c.want {
			t.Errorf("%s: %+v, want status %d", name, r, c.want)
		}
		if st := a.fsm.Stats(); st.Jobs != 1 {
			t.Fatalf("%s: %d jobs after a refused batch, want 1", name, st.Jobs)
		}
	}
	if r := a.one(Op{Kind: KindEnqueueBatch, Batch: batchOf("n1", "n2", "n3")}); r.Status != StatusOK {
		t.Errorf("a batch that fits: %+v", r)
	}
}
