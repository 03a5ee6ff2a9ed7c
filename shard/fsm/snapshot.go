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

// snapshotFormat is the version of the snapshot stream. Restore reads it,
// format 2, which had no slot moves and no slots of kept results, and
// format 1, which also kept stopped schedules and no order of the
// sessions; it refuses any other.
const snapshotFormat = 3

// ErrBadSnapshot is returned (wrapped) by Restore for a stream it cannot read.
var ErrBadSnapshot = errors.New("fsm: bad snapshot")

// The snapshot stream is a header followed by, in order, Keys key records,
// Sessions session records, Topics topic records, Jobs job records and
// Schedules schedule records, and (format 3) Moves move records, each a
// bencoded dict. Every kind is sorted by its name (moves by id), so
// replicas with the same state write the same bytes.
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
	// Format 3: the slots gone, as ranges in order; the moves finished
	// here, oldest first; the count of move records.
	Gone     []slotRangeRecord `bencode:"gn,omitempty"`
	Finished []finishedRecord  `bencode:"fm,omitempty"`
	Moves    int               `bencode:"mv,omitempty"`
}

type slotRangeRecord struct {
	Start int `bencode:"s"`
	End   int `bencode:"e"`
}

type finishedRecord struct {
	ID     uint64        `bencode:"i"`
	Start  int           `bencode:"s"`
	End    int           `bencode:"e"`
	State  SlotMoveState `bencode:"t"`
	Chunks int           `bencode:"c"`
}

// moveRecord is a slot move in flight: at its source (Incoming 0), its
// frozen state; at its target, its chunks.
type moveRecord struct {
	ID        uint64               `bencode:"i"`
	Start     int                  `bencode:"s"`
	End       int                  `bencode:"e"`
	Incoming  int                  `bencode:"n"`
	Clock     int64                `bencode:"t"`
	Keys      []keyRecord          `bencode:"k"`
	Jobs      []jobRecord          `bencode:"j"` // in enqueue order
	Schedules []scheduleRecord     `bencode:"h"`
	Sessions  []movedSessionRecord `bencode:"c"`
	Topics    []topicRecord        `bencode:"o"`
	Total     int                  `bencode:"a"`
	Chunks    []chunkRecord        `bencode:"u"`
}

type movedSessionRecord struct {
	Client   string         `bencode:"c"`
	Floor    uint64         `bencode:"f"`
	Since    int64          `bencode:"s"`
	LastSeen int64          `bencode:"t"`
	Results  []resultRecord `bencode:"r"`
}

type chunkRecord struct {
	Index int    `bencode:"i"`
	Data  string `bencode:"d"`
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
	// Slot is the slot of the result's op plus one, 0 for none (format
	// 3; before, every result is of no slot).
	Slot int `bencode:"l,omitempty"`
}

func toResultRecords(results map[uint64]keptResult) []resultRecord {
	out := make([]resultRecord, 0, len(results))
	for seq, r := range results {
		out = append(out, resultRecord{Seq: seq, Result: r.Result, Slot: r.slot + 1})
	}
	return out
}

func (r *resultRecord) kept() keptResult { return keptResult{Result: r.Result, slot: r.Slot - 1} }

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
	moves     []moveRecord
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
		rec.Results = toResultRecords(ss.results)
		s.sessions = append(s.sessions, rec)
		idle++
	}
	for name, q := range f.jobs.topics {
		s.topics = append(s.topics, topicRecord{Name: name, Done: q.done})
	}
	for _, j := range f.jobs.jobs {
		s.jobs = append(s.jobs, toJobRecord(j))
	}
	for _, sc := range f.jobs.schedules {
		s.schedules = append(s.schedules, toScheduleRecord(sc))
	}
	for _, m := range f.slots.moves {
		s.moves = append(s.moves, toMoveRecord(m))
	}
	h := &s.header
	h.Keys, h.Sessions, h.Topics, h.Jobs, h.Schedules = len(s.kv), len(s.sessions), len(s.topics), len(s.jobs), len(s.schedules)
	h.Moves = len(s.moves)
	for _, m := range f.slots.finished {
		h.Finished = append(h.Finished, finishedRecord{ID: m.ID, Start: m.Start, End: m.End, State: m.State, Chunks: m.Chunks})
	}
	for slot := 0; slot < shard.SlotCount; slot++ {
		if f.slots.marks[slot] != slotGone {
			continue
		}
		if n := len(h.Gone); n > 0 && h.Gone[n-1].End == slot {
			h.Gone[n-1].End++
		} else {
			h.Gone = append(h.Gone, slotRangeRecord{Start: slot, End: slot + 1})
		}
	}
	return s
}

func toJobRecord(j *Job) jobRecord {
	return jobRecord{
		ID: j.ID, Topic: j.Topic, Payload: j.Payload, State: j.state, Attempt: j.Attempt,
		MaxAttempts: j.MaxAttempts, RunAt: j.RunAt, Lease: j.Lease, Deadline: j.Deadline,
		Holder: j.Holder, Token: j.Token, Grant: j.Grant, Unique: j.Unique, Backoff: j.Backoff,
		LastError: j.LastError, Created: j.Created, Seq: j.Seq,
	}
}

func (r *jobRecord) job() *Job {
	return &Job{
		ID: r.ID, Topic: r.Topic, Payload: r.Payload, state: r.State, Attempt: r.Attempt,
		MaxAttempts: r.MaxAttempts, RunAt: r.RunAt, Lease: r.Lease, Deadline: r.Deadline,
		Holder: r.Holder, Token: r.Token, Grant: r.Grant, Unique: r.Unique, Backoff: r.Backoff,
		LastError: r.LastError, Created: r.Created, Seq: r.Seq, index: -1,
	}
}

func toScheduleRecord(sc *Schedule) scheduleRecord {
	return scheduleRecord{
		Topic: sc.Topic, Key: sc.Key, Payload: sc.Payload, Interval: sc.Interval,
		MaxAttempts: sc.MaxAttempts, Last: sc.Last,
	}
}

func (r *scheduleRecord) schedule() *Schedule {
	return &Schedule{Topic: r.Topic, Key: r.Key, Payload: r.Payload, Interval: r.Interval, MaxAttempts: r.MaxAttempts, Last: r.Last}
}

// toMoveRecord copies a move in flight. Its records are put in order by
// fsmSnapshot.sort.
func toMoveRecord(m *slotMove) moveRecord {
	r := moveRecord{ID: m.id, Start: m.start, End: m.end, Clock: m.clock, Total: m.total}
	if m.incoming {
		r.Incoming = 1
	}
	for k, e := range m.kv {
		r.Keys = append(r.Keys, keyRecord{Key: k, Value: e.Value, Version: e.Version})
	}
	for _, j := range m.jobs {
		r.Jobs = append(r.Jobs, toJobRecord(j))
	}
	for _, sc := range m.schedules {
		r.Schedules = append(r.Schedules, toScheduleRecord(sc))
	}
	for c, ms := range m.sessions {
		r.Sessions = append(r.Sessions, movedSessionRecord{
			Client: c, Floor: ms.floor, Since: ms.since, LastSeen: ms.lastSeen, Results: toResultRecords(ms.results),
		})
	}
	for name, done := range m.topicDone {
		r.Topics = append(r.Topics, topicRecord{Name: name, Done: done})
	}
	for i, data := range m.chunks {
		r.Chunks = append(r.Chunks, chunkRecord{Index: i, Data: data})
	}
	return r
}

// slotMove rebuilds the move in flight r describes.
func (r *moveRecord) slotMove() (*slotMove, error) {
	if r.ID == 0 || !validRange(r.Start, r.End) || r.Total < 0 || len(r.Chunks) > r.Total {
		return nil, fmt.Errorf("%w: slot move %d of [%d, %d)", ErrBadSnapshot, r.ID, r.Start, r.End)
	}
	m := &slotMove{id: r.ID, start: r.Start, end: r.End, incoming: r.Incoming != 0, clock: r.Clock, total: r.Total}
	if m.incoming {
		m.chunks = make(map[int]string, len(r.Chunks))
		for _, c := range r.Chunks {
			m.chunks[c.Index] = c.Data
		}
		return m, nil
	}
	m.kv = make(map[string]Entry, len(r.Keys))
	for _, k := range r.Keys {
		m.kv[k.Key] = Entry{Value: k.Value, Version: k.Version}
	}
	for i := range r.Jobs {
		m.jobs = append(m.jobs, r.Jobs[i].job())
	}
	for i := range r.Schedules {
		m.schedules = append(m.schedules, r.Schedules[i].schedule())
	}
	m.sessions = make(map[string]*movedSession, len(r.Sessions))
	for _, s := range r.Sessions {
		ms := &movedSession{floor: s.Floor, since: s.Since, lastSeen: s.LastSeen, results: make(map[uint64]keptResult, len(s.Results))}
		for i := range s.Results {
			ms.results[s.Results[i].Seq] = s.Results[i].kept()
		}
		m.sessions[s.Client] = ms
	}
	m.topicDone = make(map[string]uint64, len(r.Topics))
	for _, t := range r.Topics {
		m.topicDone[t.Name] = t.Done
	}
	return m, nil
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
	sortScheduleRecords(s.schedules)
	sort.Slice(s.moves, func(i, j int) bool { return s.moves[i].ID < s.moves[j].ID })
	for i := range s.moves {
		m := &s.moves[i]
		sort.Slice(m.Keys, func(i, j int) bool { return m.Keys[i].Key < m.Keys[j].Key })
		sortScheduleRecords(m.Schedules)
		sort.Slice(m.Sessions, func(i, j int) bool { return m.Sessions[i].Client < m.Sessions[j].Client })
		for _, rec := range m.Sessions {
			sort.Slice(rec.Results, func(i, j int) bool { return rec.Results[i].Seq < rec.Results[j].Seq })
		}
		sort.Slice(m.Topics, func(i, j int) bool { return m.Topics[i].Name < m.Topics[j].Name })
		sort.Slice(m.Chunks, func(i, j int) bool { return m.Chunks[i].Index < m.Chunks[j].Index })
	}
}

func sortScheduleRecords(s []scheduleRecord) {
	sort.Slice(s, func(i, j int) bool {
		a, b := s[i], s[j]
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
	if err == nil {
		err = marshalAll(bw, s.moves)
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
	if h.Format < 1 || h.Format > snapshotFormat {
		return fmt.Errorf("%w: format %d, want 1 to %d", ErrBadSnapshot, h.Format, snapshotFormat)
	}
	if h.Keys < 0 || h.Sessions < 0 || h.Topics < 0 || h.Jobs < 0 || h.Schedules < 0 || h.Moves < 0 {
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
		err = readAll(br, h.Jobs, "job", func(r *jobRecord) { jobs.add(r.job()) })
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
			jobs.schedules[shard.JobKey(r.Topic, r.Key)] = r.schedule()
		})
	}
	slots := newSlotTable()
	if err == nil {
		err = readAll(br, h.Moves, "slot move", func(r *moveRecord) {
			m, merr := r.slotMove()
			switch {
			case merr != nil:
				err = merr
			case !slots.rangeFree(m.start, m.end) || slots.moves[m.id] != nil:
				err = fmt.Errorf("%w: slot move %d overlaps another", ErrBadSnapshot, m.id)
			default:
				slots.moves[m.id] = m
				mark := slotFrozen
				if m.incoming {
					mark = slotIncoming
				}
				slots.mark(m.start, m.end, mark)
			}
		})
	}
	if err == nil {
		err = restoreSlotMarks(&slots, &h)
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
		s := &session{client: r.Client, floor: r.Floor, since: r.Since, lastSeen: r.LastSeen, results: make(map[uint64]keptResult, len(r.Results))}
		for i := range r.Results {
			s.keep(r.Results[i].Seq, r.Results[i].kept())
		}
		ss.add(s)
	}
	for ss.idle.Len() > ss.max {
		ss.forgetOldest()
	}
	f.kv, f.sessions, f.jobs, f.slots = kv, ss, jobs, slots
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

// restoreSlotMarks puts back the gone marks and the finished moves of a
// snapshot's header.
func restoreSlotMarks(t *slotTable, h *snapshotHeader) error {
	for _, g := range h.Gone {
		if !validRange(g.Start, g.End) || !t.rangeFree(g.Start, g.End) {
			return fmt.Errorf("%w: gone slots [%d, %d)", ErrBadSnapshot, g.Start, g.End)
		}
		t.mark(g.Start, g.End, slotGone)
	}
	if len(h.Finished) > maxFinishedMoves {
		return fmt.Errorf("%w: %d finished slot moves, over %d", ErrBadSnapshot, len(h.Finished), maxFinishedMoves)
	}
	for _, m := range h.Finished {
		t.finished = append(t.finished, SlotMove{ID: m.ID, Start: m.Start, End: m.End, State: m.State, Chunks: m.Chunks, Installed: m.Chunks})
	}
	return nil
}
