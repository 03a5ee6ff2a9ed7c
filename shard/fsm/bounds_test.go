package fsm

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackpal/bencode-go"
	"github.com/shoal-kv/shoal/shard"
)

func newBoundedApplier(t *testing.T, cfg Config) *applier {
	a := newApplier(t)
	a.fsm = New(cfg)
	return a
}

// A shard past MaxSessions forgets the session idle longest; a retry only
// that session could have answered is refused, not applied again, while new
// requests of its client, and retries the shard can vouch for, are applied.
func TestSessionsBounded(t *testing.T) {
	a := newBoundedApplier(t, Config{MaxSessions: 2})
	set := func(client string, seq uint64, began int64) Result {
		return a.one(Op{Kind: KindSet, Client: client, Seq: seq, Ack: 1, Key: "k", Value: client, Began: began})
	}
	start := a.now
	set("old", 1, 0)
	a.now += sec
	set("mid", 1, 0)
	a.now += 10 * sec
	set("new", 1, 0) // forgets "old", idle longest
	if _, ok := a.fsm.sessions.byClient["old"]; ok || a.fsm.Stats().Sessions != 2 {
		t.Fatalf("sessions %v after a third client, want old forgotten", a.fsm.sessions.byClient)
	}
	rev := a.fsm.Stats().Revision
	if r := set("old", 1, start); r.Status != StatusSessionExpired {
		t.Errorf("retry of a forgotten session's request: %+v, want StatusSessionExpired", r)
	}
	if a.fsm.Stats().Revision != rev {
		t.Error("the refused retry was applied")
	}
	// "mid" is idle longest now; a retry of its request is answered from
	// its session.
	if r := set("mid", 1, start+sec); r.Status != StatusOK || r.Version != 2 {
		t.Errorf("retry answered by its session: %+v", r)
	}
	// A retry of a request begun after every forgotten session was last
	// used cannot have been applied under one: it is applied.
	a.now += 10 * sec
	if r := set("fresh", 1, a.now-sec); r.Status != StatusOK {
		t.Errorf("retry of a new client's first request: %+v", r)
	}
	// A new request of the forgotten client makes it a new session; its
	// old retry is still refused.
	if r := set("old", 2, 0); r.Status != StatusOK {
		t.Errorf("new request of a forgotten client: %+v", r)
	}
	if r := set("old", 1, start); r.Status != StatusSessionExpired {
		t.Errorf("old retry after the client's new session: %+v", r)
	}

	// Replicas agree on which session goes next, also after a restore.
	data := snapshotBytes(t, a.fsm)
	r := New(Config{MaxSessions: 2})
	if err := r.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	z := &applier{t: t, fsm: r, index: r.Applied(), term: a.term, now: a.now}
	for _, x := range []*applier{a, z} {
		x.now += sec
		x.one(Op{Kind: KindSet, Client: "another", Seq: 1, Ack: 1, Key: "k"})
	}
	if !bytes.Equal(snapshotBytes(t, a.fsm), snapshotBytes(t, z.fsm)) {
		t.Error("after restore, the replicas forgot different sessions")
	}
}

// A session keeps no payload of a grant; a retried acquire reads it from the
// job.
func TestSessionKeepsNoPayload(t *testing.T) {
	a := newApplier(t)
	payload := strings.Repeat("p", 40<<10)
	a.enqueue("j", "t", func(o *Op) { o.Value = payload })
	op := Op{Kind: KindAcquire, Topic: "t", Client: "w", Seq: 1, Ack: 1, Lease: 10 * sec}
	g := a.one(op)
	if g.Status != StatusOK || g.Payload != payload {
		t.Fatalf("grant %+v", g.Status)
	}
	if kept := a.fsm.sessions.byClient["w"].results[1]; kept.Payload != "" || kept.Topic != "" || kept.Token != g.Token {
		t.Errorf("session keeps %d bytes of payload, token %d", len(kept.Payload), kept.Token)
	}
	if r := a.one(op); !reflect.DeepEqual(r, g) {
		t.Errorf("retry gets %+v, want the grant", r.JobID)
	}
}

// MaxJobs bounds the jobs of a shard: enqueues past it fail, schedules make
// nothing, and room made by a completion is usable again.
func TestJobsBounded(t *testing.T) {
	a := newBoundedApplier(t, Config{MaxJobs: 3})
	for i := range 3 {
		if r := a.enqueue(fmt.Sprint("j", i), "t"); r.Status != StatusOK {
			t.Fatalf("enqueue %d: %+v", i, r)
		}
	}
	if r := a.enqueue("j3", "t"); r.Status != StatusFull {
		t.Errorf("enqueue past MaxJobs: %+v, want StatusFull", r)
	}
	if r := a.enqueue("j0", "t"); r.Status != StatusOK {
		t.Errorf("repeated enqueue of a held job when full: %+v", r)
	}
	if r := a.one(Op{Kind: KindEvery, Topic: "cron", Unique: "k", Interval: 60 * sec}); r.Status != StatusOK {
		t.Fatalf("every: %+v", r)
	}
	if st := a.fsm.Stats(); st.Jobs != 3 {
		t.Errorf("%d jobs with a full shard and a schedule, want 3", st.Jobs)
	}
	a.onJob(KindComplete, a.acquire("t", "w", sec))
	if r := a.enqueue("j3", "t"); r.Status != StatusOK {
		t.Errorf("enqueue after a completion: %+v", r)
	}
}

// Schedules: an interval under a second is invalid, MaxSchedules bounds
// them, and a stopped one is deleted.
func TestSchedulesBounded(t *testing.T) {
	a := newBoundedApplier(t, Config{MaxSchedules: 1})
	every := func(key string, interval time.Duration) Result {
		return a.one(Op{Kind: KindEvery, Topic: "cron", Unique: key, Interval: int64(interval)})
	}
	if r := every("a", time.Millisecond); r.Status != StatusInvalid {
		t.Errorf("a 1 ms interval: %+v, want StatusInvalid", r)
	}
	if r := every("a", shard.MinScheduleInterval); r.Status != StatusOK {
		t.Errorf("every: %+v", r)
	}
	if r := every("b", time.Minute); r.Status != StatusFull {
		t.Errorf("a schedule past MaxSchedules: %+v, want StatusFull", r)
	}
	if r := every("a", time.Minute); r.Status != StatusOK {
		t.Errorf("an update when full: %+v", r)
	}
	a.one(Op{Kind: KindUnevery, Topic: "cron", Unique: "a"})
	if r := every("b", time.Minute); r.Status != StatusOK {
		t.Errorf("a schedule after the other stopped: %+v", r)
	}
}

func TestUniqueKeyOverMaxKeySize(t *testing.T) {
	a := newApplier(t)
	long := strings.Repeat("u", shard.MaxKeySize+1)
	if r := a.enqueue("j", "t", func(o *Op) { o.Unique = long }); r.Status != StatusInvalid {
		t.Errorf("enqueue with a %d-byte uniqueness key: %+v, want StatusInvalid", len(long), r)
	}
	if r := a.enqueue("j", "t", func(o *Op) { o.Unique = long[1:] }); r.Status != StatusOK {
		t.Errorf("enqueue with a %d-byte uniqueness key: %+v", len(long)-1, r)
	}
}

// Dead jobs list in pages that fit what the caller can carry: ten dead jobs
// of 40 KiB each list one to a page of 64 KiB.
func TestDeadJobsPage(t *testing.T) {
	a := newApplier(t)
	payload := strings.Repeat("x", 40<<10)
	for i := range 10 {
		id := fmt.Sprint("j", i)
		a.enqueue(id, "t", func(o *Op) { o.Value = payload; o.MaxAttempts = 1 })
		a.onJob(KindFail, a.acquire("t", "w", sec))
	}
	fits := func(budget int) func(*Job) bool {
		used := 0
		return func(j *Job) bool {
			used += len(j.Payload)
			return used <= budget
		}
	}
	var listed []string
	after, pages := uint64(0), 0
	for {
		jobs, more := a.fsm.DeadJobs("t", after, 100, fits(64<<10))
		pages++
		for _, j := range jobs {
			listed = append(listed, j.ID)
			after = j.Seq
		}
		if !more {
			break
		}
		if len(jobs) == 0 {
			t.Fatal("a page with more to come listed nothing")
		}
	}
	if want := "j0 j1 j2 j3 j4 j5 j6 j7 j8 j9"; strings.Join(listed, " ") != want || pages != 10 {
		t.Errorf("listed %v in %d pages, want %s in 10", listed, pages, want)
	}
	if jobs, more := a.fsm.DeadJobs("t", 0, 3, nil); len(jobs) != 3 || !more {
		t.Errorf("limit 3: %d jobs, more %v", len(jobs), more)
	}
}

// A topic left without jobs is forgotten: 200,000 topics created and
// drained leave none held, and ReadyTopics visits none of them.
func TestDrainedTopicsForgotten(t *testing.T) {
	const n, batch = 200_000, 2000
	a := newBoundedApplier(t, Config{MaxJobs: n})
	// each applies the op that op(k) returns for topics k of [from, n) by
	// step, in batches, and returns the results.
	each := func(from, step int, op func(k int) Op) []Result {
		var out []Result
		ops := make([]Op, 0, batch)
		for k := from; k < n; k += step {
			ops = append(ops, op(k))
			if len(ops) == batch || k+step >= n {
				out = append(out, a.apply(ops...)...)
				ops = ops[:0]
			}
		}
		return out
	}
	topic := func(k int) string { return "t" + strconv.Itoa(k) }
	each(0, 1, func(k int) Op { return Op{Kind: KindEnqueue, JobID: "j" + strconv.Itoa(k), Topic: topic(k)} })
	if got := len(a.fsm.jobs.topics); got != n {
		t.Fatalf("%d topics held, want %d", got, n)
	}
	if got := len(a.fsm.ReadyTopics(a.now, 1)); got != n {
		t.Fatalf("%d topics ready, want %d", got, n)
	}
	acquire := func(k int) Op { return Op{Kind: KindAcquire, Topic: topic(k), Client: "w", Lease: sec} }
	grants := each(0, 1, acquire)
	// Half the jobs complete; half fail, to run again after a backoff.
	each(0, 1, func(k int) Op {
		if k%2 == 0 {
			return Op{Kind: KindComplete, JobID: grants[k].JobID, Token: grants[k].Token}
		}
		return Op{Kind: KindFail, JobID: grants[k].JobID, Token: grants[k].Token}
	})
	if held := len(a.fsm.jobs.topics); held != n/2 {
		t.Errorf("%d topics held, want the %d with a job in backoff", held, n/2)
	}
	if got := len(a.fsm.ReadyTopics(a.now, 1)); got != 0 {
		t.Errorf("%d topics ready during the backoffs", got)
	}
	a.now += int64(MaxBackoff)
	grants = each(1, 2, acquire)
	each(1, 2, func(k int) Op {
		g := grants[k/2]
		return Op{Kind: KindComplete, JobID: g.JobID, Token: g.Token}
	})
	if held, active := len(a.fsm.jobs.topics), len(a.fsm.jobs.active); held != 0 || active != 0 {
		t.Errorf("%d topics held, %d active, after all were drained", held, active)
	}
	if got := len(a.fsm.ReadyTopics(a.now, 1)); got != 0 {
		t.Errorf("%d topics ready after draining", got)
	}
	if st := a.fsm.Stats(); st.Jobs != 0 || st.JobsCompleted != n {
		t.Errorf("stats %+v", st)
	}
}

// The state machine's topics stay consistent through a snapshot: a dead
// job keeps its topic; a topic restored with no jobs is not held.
func TestTopicsAfterRestore(t *testing.T) {
	a := newApplier(t)
	a.enqueue("d", "dead", func(o *Op) { o.MaxAttempts = 1 })
	a.onJob(KindFail, a.acquire("dead", "w", sec))
	a.enqueue("r", "ready")
	a.enqueue("gone", "gone")
	a.onJob(KindComplete, a.acquire("gone", "w", sec))
	r := New(Config{})
	if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.fsm)))); err != nil {
		t.Fatal(err)
	}
	if len(r.jobs.topics) != 2 || len(r.jobs.active) != 1 || r.jobs.active[0].name != "ready" {
		t.Errorf("restored topics %v, active %d", r.jobs.topics, len(r.jobs.active))
	}
	if got := r.ReadyTopics(a.now, 10); len(got) != 1 || got["ready"] != 1 {
		t.Errorf("ReadyTopics after restore = %v", got)
	}
}

// BenchmarkReadyTopics is the cost of ReadyTopics, as a leader's heartbeat
// pays it under the state machine's read lock, with 10 topics with a job
// ready and many idle ones: topics whose only job is scheduled for later.
// It grows with the ready topics, not the idle ones; "scan" is the cost of
// visiting every topic instead, as ReadyTopics did before the heap of
// active topics.
func BenchmarkReadyTopics(b *testing.B) {
	for _, idle := range []int{0, 1000, 200_000} {
		b.Run(fmt.Sprint("idle=", idle), func(b *testing.B) {
			f := New(Config{MaxJobs: idle + 10})
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
			f.clock = now
			for i := range idle {
				f.enqueue(&Op{JobID: fmt.Sprint("i", i), Topic: fmt.Sprint("idle", i), Delay: int64(time.Hour)})
			}
			for i := range 10 {
				f.enqueue(&Op{JobID: fmt.Sprint("r", i), Topic: fmt.Sprint("ready", i)})
			}
			b.Run("heap", func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					if got := f.ReadyTopics(now, 1000); len(got) != 10 {
						b.Fatalf("%d topics ready, want 10", len(got))
					}
				}
			})
			b.Run("scan", func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					f.mu.RLock()
					out := map[string]int{}
					for name, q := range f.jobs.topics {
						if n := q.ready(now, 1000); n > 0 {
							out[name] = n
						}
					}
					f.mu.RUnlock()
					if len(out) != 10 {
						b.Fatalf("%d topics ready, want 10", len(out))
					}
				}
			})
		})
	}
}

// checkTopics checks the invariants of the topics (topicQueue) and that
// ReadyTopics agrees with a scan of every topic.
func checkTopics(t *testing.T, f *FSM, now int64) {
	t.Helper()
	want := map[string]int{}
	for name, q := range f.jobs.topics {
		live := len(q.queued)+len(q.leased) > 0
		if !live && len(q.dead) == 0 {
			t.Fatalf("topic %s is held with no job", name)
		}
		if live != (q.at >= 0) || live && f.jobs.active[q.at] != q {
			t.Fatalf("topic %s: live %v, at %d in the active heap", name, live, q.at)
		}
		if n := q.ready(now, 1000); n > 0 {
			want[name] = n
		}
	}
	h := f.jobs.active
	for i := 1; i < len(h); i++ {
		if h.Less(i, (i-1)/2) {
			t.Fatalf("active heap out of order at %d", i)
		}
	}
	got := f.ReadyTopics(now, 1000)
	if len(got) != len(want) {
		t.Fatalf("ReadyTopics = %v, a scan finds %v", got, want)
	}
	for name, n := range want {
		if got[name] != n {
			t.Fatalf("ReadyTopics = %v, a scan finds %v", got, want)
		}
	}
}

// The topics' invariants hold through random job ops, leader changes and
// time passing.
func TestTopicsStayConsistent(t *testing.T) {
	a := newApplier(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var grants []Result
	for i := range 5000 {
		topic := fmt.Sprint("t", rng.IntN(40))
		switch rng.IntN(10) {
		case 0, 1, 2:
			a.enqueue(fmt.Sprint("j", i), topic, func(o *Op) {
				o.Delay = rng.Int64N(5 * sec)
				o.MaxAttempts = 1 + rng.IntN(3)
			})
		case 3, 4:
			if g := a.acquire(topic, "w", 1+rng.Int64N(3*sec)); g.Status == StatusOK {
				grants = append(grants, g)
			}
		case 5, 6:
			if len(grants) > 0 {
				k := rng.IntN(len(grants))
				kind := []Kind{KindComplete, KindFail, KindRelease, KindExtend}[rng.IntN(4)]
				a.onJob(kind, grants[k], func(o *Op) { o.Lease = sec })
				grants = slices.Delete(grants, k, k+1)
			}
		case 7:
			a.one(Op{Kind: KindRequeue, JobID: fmt.Sprint("j", rng.IntN(i+1))})
		case 8:
			a.term++ // a new leader
			a.one(Op{Kind: KindTick})
		case 9:
			a.now += rng.Int64N(2 * sec)
		}
		checkTopics(t, a.fsm, a.now)
	}
}

// A new leader's grace moves the leases of many topics at once, past the
// next jobs of others: the heap of topics stays in order.
func TestTopicsInOrderAfterNewLeader(t *testing.T) {
	a := newApplier(t)
	for i := range 20 {
		topic := fmt.Sprint("leased", i)
		a.enqueue(topic, topic)
		a.acquire(topic, "w", sec+int64(i)*sec/100)
		a.enqueue(fmt.Sprint("later", i), fmt.Sprint("queued", i), func(o *Op) { o.Delay = sec + sec/2 + int64(i)*sec/100 })
	}
	checkTopics(t, a.fsm, a.now)
	a.term++
	a.one(Op{Kind: KindTick})
	checkTopics(t, a.fsm, a.now)
}

// A snapshot of format 1 restores: its sessions, which it wrote in client
// order without their order of idleness, go back in the order they were
// last seen, and its stopped schedules are dropped.
func TestRestoreFormat1(t *testing.T) {
	var b bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	records := []any{
		snapshotHeader{Format: 1, Applied: 7, Clock: now, Term: 1, Sessions: 3, Schedules: 2},
		sessionRecord{Client: "a", Floor: 1, LastSeen: now - 1},
		sessionRecord{Client: "b", Floor: 1, LastSeen: now - 3},
		sessionRecord{Client: "c", Floor: 1, LastSeen: now - 2},
		scheduleRecord{Topic: "cron", Key: "on", Interval: 60 * sec, Last: now / (60 * sec)},
		scheduleRecord{Topic: "cron", Key: "off", Interval: 60 * sec, Last: now / (60 * sec), Stopped: 1},
	}
	for _, r := range records {
		if err := bencode.Marshal(&b, r); err != nil {
			t.Fatal(err)
		}
	}
	f := New(Config{MaxSessions: 3})
	if err := f.Restore(io.NopCloser(&b)); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.jobs.schedules[shard.JobKey("cron", "off")]; ok || len(f.jobs.schedules) != 1 {
		t.Errorf("schedules after restore: %v", f.jobs.schedules)
	}
	a := &applier{t: t, fsm: f, index: f.Applied(), term: 1, now: now}
	a.one(Op{Kind: KindSet, Client: "d", Seq: 1, Ack: 1, Key: "k"})
	if _, ok := f.sessions.byClient["b"]; ok || f.Stats().Sessions != 3 {
		t.Errorf("sessions %v: want b, seen longest ago, forgotten", f.sessions.byClient)
	}
}
