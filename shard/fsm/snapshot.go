package fsm

import (
	"bufio"
	"container/heap"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/hashicorp/raft"
	"github.com/jackpal/bencode-go"
	"github.com/shoal-kv/shoal/shard"
)

// snapshotFormat is the version of the snapshot stream. Restore reads it
// and format 1, which kept stopped schedules and no order of the sessions;
// it refuses any other.
const snapshotFormat = 2

// ErrBadSnapshot is returned (wrapped) by Restore for a stream it cannot read.
var ErrBadSnapshot = errors.New("fsm: bad snapshot")

// The snapshot stream is a header followed by, in order, Keys key records,
// Sessions session records, Topics topic records, Jobs job records and
// Schedules schedule records, each a bencoded dict. Every kind is sorted by
// its name, so replicas with the same state write the same bytes.
type snapshotHeader struct {
	Format     int    `bencode:"f"`
	Applied    uint64 `bencode:"i"`
	Revision   uint64 `bencode:"r"`
	Clock      int64  `bencode:"t"`
	LastExpiry int64  `bencode:"x"`
	Executed   uint64 `bencode:"e"`
	Duplicates uint64 `bencode:"d"`
	Term       uint64 `bencode:"m"`
	JobSeq     uint64 `bencode:"q"`
	Completed  uint64 `bencode:"c"`
	Keys       int    `bencode:"k"`
	Sessions   int    `bencode:"s"`
	Topics     int    `bencode:"o"`
	Jobs       int    `bencode:"j"`
	Schedules  int    `bencode:"h"`
	// LastForgotten is sessions.lastForgotten (format 2).
	LastForgotten int64 `bencode:"g"`
}

type keyRecord struct {
	Key     string `bencode:"k"`
	Value   string `bencode:"v"`
	Version uint64 `bencode:"n"`
}

type sessionRecord struct {
	Client   string         `bencode:"c"`
	Floor    uint64         `bencode:"f"`
	LastSeen int64          `bencode:"t"`
	Results  []resultRecord `bencode:"r"`
	// Since is when the session was made; Idle its place in the order of
	// idleness, 0 for the session idle longest (format 2).
	Since int64 `bencode:"s"`
	Idle  int   `bencode:"n"`
}

type resultRecord struct {
	Seq    uint64 `bencode:"q"`
	Result Result `bencode:"r"`
}

// topicRecord carries what the jobs themselves do not: the completions.
type topicRecord struct {
	Name string `bencode:"n"`
	Done uint64 `bencode:"d"`
}

type jobRecord struct {
	ID          string   `bencode:"i"`
	Topic       string   `bencode:"t"`
	Payload     string   `bencode:"p"`
	State       jobState `bencode:"s"`
	Attempt     int      `bencode:"a"`
	MaxAttempts int      `bencode:"m"`
	RunAt       int64    `bencode:"r"`
	Lease       int64    `bencode:"l"`
	Deadline    int64    `bencode:"d"`
	Holder      string   `bencode:"h"`
	Token       uint64   `bencode:"o"`
	Grant       uint64   `bencode:"g"` // format 2
	Unique      string   `bencode:"u"`
	Backoff     int64    `bencode:"b"`
	LastError   string   `bencode:"e"`
	Created     int64    `bencode:"c"`
	Seq         uint64   `bencode:"q"`
}

type scheduleRecord struct {
	Topic       string `bencode:"t"`
	Key         string `bencode:"k"`
	Payload     string `bencode:"p"`
	Interval    int64  `bencode:"i"`
	MaxAttempts int    `bencode:"m"`
	Last        int64  `bencode:"l"`
	// Stopped marks a stopped schedule of format 1; format 2 deletes them.
	Stopped int `bencode:"s,omitempty"`
}

// fsmSnapshot is a point-in-time copy of the state, written out while the
// FSM goes on applying.
type fsmSnapshot struct {
	header    snapshotHeader
	kv        []keyRecord
	sessions  []sessionRecord
	topics    []topicRecord
	jobs      []jobRecord
	schedules []scheduleRecord
}

// Snapshot captures the state for raft. It copies it, in time linear in its
// size; Persist then runs without holding the FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) { return f.snapshot(), nil }

// Digest returns the raft index the state has applied and a SHA-256 of the
// state as of that index. Replicas that applied the same log hold the same
// state, and so have the same digest: what is hashed is the snapshot's
// stream, whose records are sorted so that equal states write equal bytes.
// It costs what a snapshot does.
func (f *FSM) Digest() (applied uint64, sum [sha256.Size]byte, err error) {
	s := f.snapshot()
	h := sha256.New()
	if err := s.write(h); err != nil {
		return 0, sum, fmt.Errorf("fsm: digest: %w", err)
	}
	h.Sum(sum[:0])
	return s.header.Applied, sum, nil
}

// snapshot copies the state.
func (f *FSM) snapshot() *fsmSnapshot {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &fsmSnapshot{header: snapshotHeader{
		Format:     snapshotFormat,
		Applied:    f.applied,
		Revision:   f.rev,
		Clock:      f.clock,
		LastExpiry: f.lastExpiry,
		Executed:   f.executed,
		Duplicates: f.duplicates,
		Term:       f.term,
		JobSeq:     f.jobs.seq,
		Completed:  f.jobs.completed,

		LastForgotten: f.sessions.lastForgotten,
	}}
	for k, e := range f.kv {
		s.kv = append(s.kv, keyRecord{Key: k, Value: e.Value, Version: e.Version})
	}
	idle := 0
	for e := f.sessions.idle.Front(); e != nil; e = e.Next() {
		ss := e.Value.(*session)
		rec := sessionRecord{Client: ss.client, Floor: ss.floor, LastSeen: ss.lastSeen, Since: ss.since, Idle: idle}
		for seq, r := range ss.results {
			rec.Results = append(rec.Results, resultRecord{Seq: seq, Result: r})
		}
		s.sessions = append(s.sessions, rec)
		idle++
	}
	for name, q := range f.jobs.topics {
		s.topics = append(s.topics, topicRecord{Name: name, Done: q.done})
	}
	for _, j := range f.jobs.jobs {
		s.jobs = append(s.jobs, jobRecord{
			ID: j.ID, Topic: j.Topic, Payload: j.Payload, State: j.state, Attempt: j.Attempt,
			MaxAttempts: j.MaxAttempts, RunAt: j.RunAt, Lease: j.Lease, Deadline: j.Deadline,
			Holder: j.Holder, Token: j.Token, Grant: j.Grant, Unique: j.Unique, Backoff: j.Backoff,
			LastError: j.LastError, Created: j.Created, Seq: j.Seq,
		})
	}
	for _, sc := range f.jobs.schedules {
		s.schedules = append(s.schedules, scheduleRecord{
			Topic: sc.Topic, Key: sc.Key, Payload: sc.Payload, Interval: sc.Interval,
			MaxAttempts: sc.MaxAttempts, Last: sc.Last,
		})
	}
	h := &s.header
	h.Keys, h.Sessions, h.Topics, h.Jobs, h.Schedules = len(s.kv), len(s.sessions), len(s.topics), len(s.jobs), len(s.schedules)
	return s
}

// Persist writes the snapshot to sink and closes it, or cancels it on error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

// sort puts every record in a fixed order, so that equal states write equal
// bytes. It runs in Persist, not under the FSM's lock.
func (s *fsmSnapshot) sort() {
	sort.Slice(s.kv, func(i, j int) bool { return s.kv[i].Key < s.kv[j].Key })
	sort.Slice(s.sessions, func(i, j int) bool { return s.sessions[i].Client < s.sessions[j].Client })
	for _, rec := range s.sessions {
		sort.Slice(rec.Results, func(i, j int) bool { return rec.Results[i].Seq < rec.Results[j].Seq })
	}
	sort.Slice(s.topics, func(i, j int) bool { return s.topics[i].Name < s.topics[j].Name })
	sort.Slice(s.jobs, func(i, j int) bool { return s.jobs[i].ID < s.jobs[j].ID })
	sort.Slice(s.schedules, func(i, j int) bool {
		a, b := s.schedules[i], s.schedules[j]
		return a.Topic < b.Topic || a.Topic == b.Topic && a.Key < b.Key
	})
}

func (s *fsmSnapshot) write(w io.Writer) error {
	s.sort()
	bw := bufio.NewWriter(w)
	err := bencode.Marshal(bw, s.header)
	if err == nil {
		err = marshalAll(bw, s.kv)
	}
	if err == nil {
		err = marshalAll(bw, s.sessions)
	}
	if err == nil {
		err = marshalAll(bw, s.topics)
	}
	if err == nil {
		err = marshalAll(bw, s.jobs)
	}
	if err == nil {
		err = marshalAll(bw, s.schedules)
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

func marshalAll[T any](w io.Writer, records []T) error {
	for _, r := range records {
		if err := bencode.Marshal(w, r); err != nil {
			return err
		}
	}
	return nil
}

// readAll reads n records of type T, calling use on each.
func readAll[T any](r *bufio.Reader, n int, what string, use func(*T)) error {
	for i := 0; i < n; i++ {
		var rec T
		if err := bencode.Unmarshal(r, &rec); err != nil {
			return fmt.Errorf("%w: %s %d of %d: %v", ErrBadSnapshot, what, i, n, err)
		}
		use(&rec)
	}
	return nil
}

// Release does nothing: the snapshot holds only copies.
func (s *fsmSnapshot) Release() {}

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReader(rc)
	var h snapshotHeader
	if err := bencode.Unmarshal(br, &h); err != nil {
		return fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	if h.Format != snapshotFormat && h.Format != 1 {
		return fmt.Errorf("%w: format %d, want 1 or %d", ErrBadSnapshot, h.Format, snapshotFormat)
	}
	if h.Keys < 0 || h.Sessions < 0 || h.Topics < 0 || h.Jobs < 0 || h.Schedules < 0 {
		return fmt.Errorf("%w: negative counts", ErrBadSnapshot)
	}
	kv := make(map[string]Entry)
	var restored []*sessionRecord
	jobs := newJobTable()
	jobs.seq, jobs.completed = h.JobSeq, h.Completed
	err := readAll(br, h.Keys, "key", func(r *keyRecord) {
		kv[r.Key] = Entry{Value: r.Value, Version: r.Version}
	})
	if err == nil {
		err = readAll(br, h.Sessions, "session", func(r *sessionRecord) { restored = append(restored, r) })
	}
	if err == nil {
		err = readAll(br, h.Topics, "topic", func(r *topicRecord) { jobs.topic(r.Name).done = r.Done })
	}
	if err == nil {
		err = readAll(br, h.Jobs, "job", func(r *jobRecord) {
			j := &Job{
				ID: r.ID, Topic: r.Topic, Payload: r.Payload, state: r.State, Attempt: r.Attempt,
				MaxAttempts: r.MaxAttempts, RunAt: r.RunAt, Lease: r.Lease, Deadline: r.Deadline,
				Holder: r.Holder, Token: r.Token, Grant: r.Grant, Unique: r.Unique, Backoff: r.Backoff,
				LastError: r.LastError, Created: r.Created, Seq: r.Seq, index: -1,
			}
			jobs.add(j)
		})
	}
	if err == nil {
		// With the jobs in place, a topic left with none is forgotten.
		for _, q := range jobs.topics {
			jobs.settle(q)
		}
	}
	if err == nil {
		err = readAll(br, h.Schedules, "schedule", func(r *scheduleRecord) {
			if r.Stopped != 0 {
				return
			}
			jobs.schedules[shard.JobKey(r.Topic, r.Key)] = &Schedule{
				Topic: r.Topic, Key: r.Key, Payload: r.Payload, Interval: r.Interval,
				MaxAttempts: r.MaxAttempts, Last: r.Last,
			}
		})
	}
	if err != nil {
		return err
	}
	jobs.scheduleDue = jobs.nextScheduleDue()

	f.mu.Lock()
	defer f.mu.Unlock()
	ss := newSessions(f.sessions.max)
	ss.lastForgotten = h.LastForgotten
	// Sessions go back in their order of idleness (format 1: of lastSeen,
	// then client id), the one idle longest first.
	sort.SliceStable(restored, func(i, j int) bool {
		a, b := restored[i], restored[j]
		return a.Idle < b.Idle || a.Idle == b.Idle && a.LastSeen < b.LastSeen
	})
	for _, r := range restored {
		s := &session{client: r.Client, floor: r.Floor, since: r.Since, lastSeen: r.LastSeen, results: make(map[uint64]Result, len(r.Results))}
		for _, res := range r.Results {
			s.keep(res.Seq, res.Result)
		}
		ss.add(s)
	}
	for ss.idle.Len() > ss.max {
		ss.forgetOldest()
	}
	f.kv, f.sessions, f.jobs = kv, ss, jobs
	f.rev, f.clock, f.lastExpiry, f.term = h.Revision, h.Clock, h.LastExpiry, h.Term
	f.executed, f.duplicates = h.Executed, h.Duplicates
	f.applied = h.Applied
	f.observer.Applied(f.applied)
	f.observer.JobsChanged("")
	return nil
}

// add puts a restored job back in its place: its topic's heaps, the dead
// count, the uniqueness index.
func (t *jobTable) add(j *Job) {
	t.jobs[j.ID] = j
	q := t.topic(j.Topic)
	switch j.state {
	case stateQueued:
		heap.Push(&q.queued, j)
	case stateLeased:
		heap.Push(&q.leased, j)
	default:
		q.dead[j.ID] = j
		return
	}
	if j.Unique != "" {
		t.unique[shard.JobKey(j.Topic, j.Unique)] = j.ID
	}
}
