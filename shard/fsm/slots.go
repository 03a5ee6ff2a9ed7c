package fsm

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/shoal-kv/shoal/shard"
)

// ErrNoMove is returned (wrapped) by ExportSlots for a move that has no
// range frozen here.
var ErrNoMove = errors.New("fsm: no such slot move")

// SlotMoveState is where a slot move stands on one shard.
type SlotMoveState uint8

// The states of a slot move: at its source, frozen and then dropped, or
// thawed (undone); or cancelled, undone before it was ever frozen; at its
// target, incoming and then active, or discarded, dropped before any
// chunk of it arrived.
const (
	SlotMoveFrozen SlotMoveState = iota + 1
	SlotMoveDropped
	SlotMoveIncoming
	SlotMoveActive
	SlotMoveThawed
	SlotMoveCancelled
	SlotMoveDiscarded
)

var slotMoveStateNames = [...]string{
	SlotMoveFrozen: "frozen", SlotMoveDropped: "dropped", SlotMoveIncoming: "incoming", SlotMoveActive: "active",
	SlotMoveThawed: "thawed", SlotMoveCancelled: "cancelled", SlotMoveDiscarded: "discarded",
}

// Undone reports whether a move in state s was undone at its source
// (thawed or cancelled): the source serves its range and refuses any
// later step of the move.
func (s SlotMoveState) Undone() bool { return s == SlotMoveThawed || s == SlotMoveCancelled }

// String names the state, for logs and status listings.
func (s SlotMoveState) String() string {
	if s >= SlotMoveFrozen && s <= SlotMoveDiscarded {
		return slotMoveStateNames[s]
	}
	return fmt.Sprintf("slot-move-state(%d)", uint8(s))
}

// SlotMove describes a slot move as one shard holds it.
type SlotMove struct {
	// ID is the move's id, chosen by the node that drives it.
	ID uint64
	// Start and End bound the slot range [Start, End) that moves.
	Start, End int
	State      SlotMoveState
	// Chunks is the number of chunks the move ships, known at the target
	// once one is installed (0 at the source); Installed counts those
	// installed.
	Chunks, Installed int
}

// maxFinishedMoves bounds the finished moves (dropped, activated, thawed,
// cancelled or discarded) a shard remembers, so that a step of one
// repeated later is a no-op. A driver repeats the steps of the moves in
// progress, or, deposed in the middle of one, a step of it after its
// successor finished it: a shard that has finished 1,024 moves since has
// forgotten it (about 8 bytes each kept).
const maxFinishedMoves = 1024

// slotMark is what a shard knows of one slot. A slot it has no mark for is
// its own, or one it never held; the shard map, not the state machine,
// tells which.
type slotMark uint8

const (
	slotOwned    slotMark = iota
	slotFrozen            // frozen by a move away: readable, not writable
	slotIncoming          // installed by a move here, not yet active
	slotGone              // moved away and dropped
)

// slotTable is the slot half of the state machine.
//
// Invariants: a slot is slotFrozen or slotIncoming exactly when a move of
// moves covers it (its ranges do not overlap); marked counts the slots
// not slotOwned, moving those frozen or incoming.
type slotTable struct {
	marks          [shard.SlotCount]slotMark
	marked, moving int
	moves          map[uint64]*slotMove
	// finished holds the last maxFinishedMoves moves finished here (no
	// longer in moves), oldest first.
	finished []SlotMove
}

func newSlotTable() slotTable {
	return slotTable{moves: make(map[uint64]*slotMove)}
}

// mark sets the mark of slots [start, end) and recounts.
func (t *slotTable) mark(start, end int, m slotMark) {
	for s := start; s < end; s++ {
		t.marks[s] = m
	}
	t.marked, t.moving = 0, 0
	for _, m := range t.marks {
		if m != slotOwned {
			t.marked++
		}
		if m == slotFrozen || m == slotIncoming {
			t.moving++
		}
	}
}

// finish records a move that ended here, forgetting the oldest past
// maxFinishedMoves.
func (t *slotTable) finish(m SlotMove) {
	delete(t.moves, m.ID)
	t.finished = append(t.finished, m)
	if len(t.finished) > maxFinishedMoves {
		t.finished = slices.Delete(t.finished, 0, len(t.finished)-maxFinishedMoves)
	}
}

// finishedMove returns the finished move id, if remembered.
func (t *slotTable) finishedMove(id uint64) (SlotMove, bool) {
	for _, m := range t.finished {
		if m.ID == id {
			return m, true
		}
	}
	return SlotMove{}, false
}

// slotMove is a move in flight at this shard: at the source, the frozen
// state of its range; at the target, the chunks installed so far.
type slotMove struct {
	id         uint64
	start, end int
	incoming   bool

	// At the source: the state machine's clock at the freeze, and the
	// range's state taken out of the live tables then.
	// Jobs are in enqueue order (Seq), schedules in key order.
	// Invariant: after the freeze nothing writes kv, sessions or the
	// movedSessions (a thaw reads them), so ExportSlots reads them without
	// the state machine's lock; a thaw changes the jobs and schedules.
	clock     int64
	kv        map[string]Entry
	jobs      []*Job
	schedules []*Schedule
	sessions  map[string]*movedSession
	// topicDone holds the completions of the topics the freeze left
	// without jobs, which a thaw gives back; they stay with the source.
	topicDone map[string]uint64

	// At the target: the chunk count, and the chunks by index.
	total  int
	chunks map[int]string
}

func (m *slotMove) has(slot int) bool { return slot >= m.start && slot < m.end }

// frozenMove returns the move that froze slot here, nil if none.
func (t *slotTable) frozenMove(slot int) *slotMove {
	if t.marks[slot] != slotFrozen {
		return nil
	}
	for _, m := range t.moves {
		if m.has(slot) {
			return m
		}
	}
	return nil
}

// describe returns the public description of m.
func (m *slotMove) describe() SlotMove {
	d := SlotMove{ID: m.id, Start: m.start, End: m.end, State: SlotMoveFrozen}
	if m.incoming {
		d.State, d.Chunks, d.Installed = SlotMoveIncoming, m.total, len(m.chunks)
	}
	return d
}

// movedSession is what a move carries of one client's session: the
// results of its ops on the range's slots, and what a shard needs to make
// the session anew.
type movedSession struct {
	floor           uint64
	since, lastSeen int64
	results         map[uint64]keptResult
}

// opSlot returns the slot of the state an op acts on, or -1 for an op of
// no one slot (an acquire takes from any, a tick and the slot-move kinds
// from none). A batch's slot is its first job's, by which clients route it;
// a complete-and-acquire's is the completed job's.
func opSlot(op *Op) int {
	switch op.Kind {
	case KindSet, KindCompareAndSet, KindDelete:
		return shard.KeySlot(op.Key)
	case KindEnqueue, KindExtend, KindComplete, KindFail, KindRelease, KindRequeue, KindCompleteAcquire:
		return shard.JobSlot(op.JobID)
	case KindEvery, KindUnevery:
		return shard.JobKeySlot(op.Topic, op.Unique)
	case KindEnqueueBatch:
		if len(op.Batch) > 0 {
			return shard.JobSlot(op.Batch[0].JobID)
		}
	}
	return -1
}

// slotBlock returns StatusMoving or StatusWrongShard for an op on a slot
// moving or gone, StatusOK otherwise. An enqueue is also on the slot of its
// uniqueness key, and a batch on those of all its jobs.
func (f *FSM) slotBlock(op *Op) Status {
	if f.slots.marked == 0 {
		return StatusOK
	}
	st := f.slotStatusOf(opSlot(op))
	enqueue := func(j *Op) {
		if st == StatusOK {
			st = f.slotStatusOf(shard.JobSlot(j.JobID))
		}
		if st == StatusOK && j.Unique != "" {
			st = f.slotStatusOf(shard.JobKeySlot(j.Topic, j.Unique))
		}
	}
	switch op.Kind {
	case KindEnqueue:
		enqueue(op)
	case KindEnqueueBatch:
		for i := range op.Batch {
			enqueue(&op.Batch[i])
		}
	}
	return st
}

// slotStatusOf is what an op on slot gets: -1 is no slot.
func (f *FSM) slotStatusOf(slot int) Status {
	if slot < 0 {
		return StatusOK
	}
	switch f.slots.marks[slot] {
	case slotFrozen, slotIncoming:
		return StatusMoving
	case slotGone:
		return StatusWrongShard
	}
	return StatusOK
}

// SlotStatus says how this shard serves reads of slot: StatusOK (its own,
// or frozen for a move away, whose state no write changes), StatusMoving
// (installed by a move here, not yet active) or StatusWrongShard (moved
// away). A slot outside 0..shard.SlotCount is StatusInvalid.
func (f *FSM) SlotStatus(slot int) Status {
	if slot < 0 || slot >= shard.SlotCount {
		return StatusInvalid
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.readStatus(slot)
}

// readStatus is SlotStatus of a valid slot, with f.mu held.
func (f *FSM) readStatus(slot int) Status {
	if f.slots.marks[slot] == slotFrozen {
		return StatusOK
	}
	return f.slotStatusOf(slot)
}

// Moves reports the slot moves this state machine holds, in flight and
// the last ones finished, by id: what the node needs to resume driving
// them after a crash.
func (f *FSM) Moves() []SlotMove {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := slices.Clone(f.slots.finished)
	for _, m := range f.slots.moves {
		out = append(out, m.describe())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// validRange reports whether [start, end) is a non-empty range of slots.
func validRange(start, end int) bool {
	return start >= 0 && start < end && end <= shard.SlotCount
}

// rangeFree reports whether no move in flight holds a slot of [start,
// end).
func (t *slotTable) rangeFree(start, end int) bool {
	for s := start; s < end; s++ {
		if m := t.marks[s]; m == slotFrozen || m == slotIncoming {
			return false
		}
	}
	return true
}

// anyGone reports whether a slot of [start, end) moved away from here.
func (t *slotTable) anyGone(start, end int) bool {
	return slices.Contains(t.marks[start:end], slotGone)
}

// freezeSlots takes the state of slots [op.Start, op.End) out of the live
// tables into move op.Version's frozen area. Repeated, it is a no-op; a
// range overlapping another move's is invalid, and one with a slot gone is
// not this shard's to move.
func (f *FSM) freezeSlots(op *Op) Result {
	id, start, end := op.Version, op.Start, op.End
	if id == 0 || !validRange(start, end) {
		return Result{Status: StatusInvalid}
	}
	if m := f.slots.moves[id]; m != nil {
		if !m.incoming && m.start == start && m.end == end {
			return Result{}
		}
		return Result{Status: StatusInvalid}
	}
	if done, ok := f.slots.finishedMove(id); ok {
		if done.State == SlotMoveDropped && done.Start == start && done.End == end {
			return Result{}
		}
		return Result{Status: StatusInvalid}
	}
	if !f.slots.rangeFree(start, end) {
		return Result{Status: StatusInvalid}
	}
	if f.slots.anyGone(start, end) {
		return Result{Status: StatusWrongShard}
	}
	m := &slotMove{
		id: id, start: start, end: end, clock: f.clock,
		kv: make(map[string]Entry), sessions: make(map[string]*movedSession), topicDone: make(map[string]uint64),
	}
	for k, e := range f.kv {
		if m.has(shard.KeySlot(k)) {
			m.kv[k] = e
			delete(f.kv, k)
		}
	}
	for id, j := range f.jobs.jobs {
		if m.has(shard.JobSlot(id)) {
			m.jobs = append(m.jobs, j)
		}
	}
	sort.Slice(m.jobs, func(a, b int) bool { return m.jobs[a].Seq < m.jobs[b].Seq })
	for _, j := range m.jobs {
		// Each topic is settled at once: the heap of topics orders
		// them by their next job, so none may be left without one.
		q := f.jobs.topics[j.Topic]
		f.unlinkJob(j)
		f.jobs.settle(q)
		if f.jobs.topics[j.Topic] == nil && q.done > 0 {
			m.topicDone[j.Topic] = q.done
		}
	}
	for k, s := range f.jobs.schedules {
		if m.has(shard.JobKeySlot(s.Topic, s.Key)) {
			m.schedules = append(m.schedules, s)
			delete(f.jobs.schedules, k)
		}
	}
	sortSchedules(m.schedules)
	f.jobs.scheduleDue = f.jobs.nextScheduleDue()
	for client, s := range f.sessions.byClient {
		var ms *movedSession
		for seq, r := range s.results {
			if r.slot < 0 || !m.has(r.slot) {
				continue
			}
			if ms == nil {
				ms = &movedSession{floor: s.floor, since: s.since, lastSeen: s.lastSeen, results: make(map[uint64]keptResult)}
				m.sessions[client] = ms
			}
			ms.results[seq] = r
			s.idBytes -= keptIDBytes(r.Result)
			delete(s.results, seq)
		}
	}
	f.slots.moves[id] = m
	f.slots.mark(start, end, slotFrozen)
	return Result{}
}

func sortSchedules(ss []*Schedule) {
	sort.Slice(ss, func(a, b int) bool {
		return shard.JobKey(ss[a].Topic, ss[a].Key) < shard.JobKey(ss[b].Topic, ss[b].Key)
	})
}

// unlinkJob takes j out of the job table: its topic's heap or dead jobs,
// the index by id and the uniqueness index. The caller settles its topic.
func (f *FSM) unlinkJob(j *Job) {
	q := f.jobs.topics[j.Topic]
	switch j.state {
	case stateQueued:
		heap.Remove(&q.queued, j.index)
	case stateLeased:
		heap.Remove(&q.leased, j.index)
	default:
		delete(q.dead, j.ID)
	}
	delete(f.jobs.jobs, j.ID)
	f.dropUnique(j)
}

// admitJob puts j, which no table holds, into the job table, in place of
// any job of its id. A live job takes its uniqueness key unless another
// live job holds it, as a requeued one does.
func (f *FSM) admitJob(j *Job) {
	if old := f.jobs.jobs[j.ID]; old != nil {
		f.unlinkJob(old)
		f.jobs.settle(f.jobs.topics[old.Topic])
	}
	if j.state != stateDead && j.Unique != "" {
		if _, taken := f.jobs.unique[shard.JobKey(j.Topic, j.Unique)]; taken {
			j.Unique = ""
		}
	}
	j.index = -1
	f.jobs.add(j)
	f.jobs.settle(f.jobs.topics[j.Topic])
	if j.state != stateDead {
		f.observer.JobsChanged(j.Topic)
	}
}

// admitSchedule puts s in, in place of any schedule of its key, making its
// next job due at due.
func (f *FSM) admitSchedule(s *Schedule, due int64) {
	if due != math.MaxInt64 {
		s.Last = floorDiv(due, s.Interval) - 1
	}
	f.jobs.schedules[shard.JobKey(s.Topic, s.Key)] = s
}

// floorDiv is a/b rounded down, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// shiftTime is t moved by d, saturating rather than overflowing.
func shiftTime(t, d int64) int64 {
	switch {
	case d > 0 && t > math.MaxInt64-d:
		return math.MaxInt64
	case d < 0 && t < math.MinInt64-d:
		return math.MinInt64
	}
	return t + d
}

// shiftJob moves the times a job waits for by d: its run-at time, and a
// leased job's lease end. (A job not leased keeps the end of its last
// lease as it was, a time of record.)
func shiftJob(j *Job, d int64) {
	j.RunAt = shiftTime(j.RunAt, d)
	if j.state == stateLeased {
		j.Deadline = shiftTime(j.Deadline, d)
	}
}

// mergeSession gives client's session the moved results ms holds: its
// floor becomes the higher of the two, and a result it holds for a
// sequence number stays. A client with no session here gets one made
// with ms's times, in its place in the order of idleness.
func (ss *sessions) mergeSession(client string, ms *movedSession) {
	s := ss.byClient[client]
	if s == nil {
		if len(ss.byClient) >= ss.max {
			ss.forgetOldest()
		}
		s = &session{client: client, floor: ms.floor, results: make(map[uint64]keptResult), since: ms.since, lastSeen: ms.lastSeen}
		ss.byClient[client] = s
		e := ss.idle.Back()
		for e != nil && e.Value.(*session).lastSeen > s.lastSeen {
			e = e.Prev()
		}
		if e == nil {
			s.elem = ss.idle.PushFront(s)
		} else {
			s.elem = ss.idle.InsertAfter(s, e)
		}
	}
	// The client's requests under its session here may predate the moved
	// ones' (sessions.begin).
	s.since = min(s.since, ms.since)
	s.raiseFloor(ms.floor)
	for seq, r := range ms.results {
		if _, held := s.results[seq]; !held && seq >= s.floor {
			s.keep(seq, r)
		}
	}
}

// mergeSessions merges moved sessions, in client order so that every
// replica evicts the same.
func (ss *sessions) mergeSessions(moved map[string]*movedSession) {
	clients := make([]string, 0, len(moved))
	for c := range moved {
		clients = append(clients, c)
	}
	sort.Strings(clients)
	for _, c := range clients {
		ss.mergeSession(c, moved[c])
	}
}

// thawSlots puts move op.Version's frozen state back live, its waiting
// times moved on by the time it spent frozen, and unmarks its range: the
// move is undone. A move never frozen here is recorded as cancelled
// (op.Start and op.End name its range); one undone already is a no-op; one
// dropped or incoming cannot be undone here.
func (f *FSM) thawSlots(op *Op) Result {
	m := f.slots.moves[op.Version]
	if m == nil {
		if done, ok := f.slots.finishedMove(op.Version); ok {
			if !done.State.Undone() {
				return Result{Status: StatusInvalid}
			}
			return Result{}
		}
		// Never frozen here: remembered as cancelled, so that a freeze
		// that comes after (from a driver that did not see the undo) is
		// refused, and nothing of the range is ever shipped. A range
		// that is not wholly this shard's (gone: a drop of the move here
		// was forgotten since) cannot be taken back.
		if op.Version == 0 || !validRange(op.Start, op.End) || !f.slots.rangeFree(op.Start, op.End) || f.slots.anyGone(op.Start, op.End) {
			return Result{Status: StatusInvalid}
		}
		f.slots.finish(SlotMove{ID: op.Version, Start: op.Start, End: op.End, State: SlotMoveCancelled})
		return Result{}
	}
	if m.incoming {
		return Result{Status: StatusInvalid}
	}
	shift := f.clock - m.clock
	for k, e := range m.kv {
		f.kv[k] = e
	}
	for _, j := range m.jobs {
		shiftJob(j, shift)
		f.admitJob(j)
	}
	for name, done := range m.topicDone {
		if q := f.jobs.topics[name]; q != nil {
			q.done += done
		}
	}
	for _, s := range m.schedules {
		f.admitSchedule(s, shiftTime(s.due(), shift))
	}
	f.jobs.scheduleDue = f.jobs.nextScheduleDue()
	f.sessions.mergeSessions(m.sessions)
	// Remembered, so that a step of the move that comes after (a
	// freeze or a drop from a driver that did not see the thaw) is
	// refused: the move is undone for good.
	f.slots.finish(SlotMove{ID: m.id, Start: m.start, End: m.end, State: SlotMoveThawed})
	f.slots.mark(m.start, m.end, slotOwned)
	return Result{}
}

// dropSlots deletes move op.Version's frozen state and marks its range
// gone; of a move incoming here and not active, it discards what was
// installed; of a move unknown here, it records it as discarded
// (op.Start and op.End name its range), so that no chunk of it installs
// after. A move finished here already is a no-op, unless it was undone.
func (f *FSM) dropSlots(op *Op) Result {
	m := f.slots.moves[op.Version]
	if m == nil {
		done, ok := f.slots.finishedMove(op.Version)
		switch {
		case ok && done.State.Undone():
			return Result{Status: StatusInvalid} // undone: the range is served here again
		case ok:
			return Result{}
		case op.Version == 0:
			return Result{Status: StatusInvalid}
		}
		// Nothing of it here yet: remembered as discarded, so that a
		// chunk still on its way (a shipment the undo did not stop) is
		// refused rather than left incoming for good.
		f.slots.finish(SlotMove{ID: op.Version, Start: op.Start, End: op.End, State: SlotMoveDiscarded})
		return Result{}
	}
	mark := slotGone
	if m.incoming {
		mark = slotOwned
	}
	f.slots.finish(SlotMove{ID: m.id, Start: m.start, End: m.end, State: SlotMoveDropped})
	f.slots.mark(m.start, m.end, mark)
	return Result{}
}

// installSlots holds a chunk of move op.Version in its incoming area. A
// chunk already held, or of a move already active, is a no-op; one that
// does not decode, or does not fit the move's other chunks, is invalid.
// The revision counter rises to the source's, so that the versions and
// tokens handed out here stay above those of the state that moves.
func (f *FSM) installSlots(op *Op) Result {
	c, err := decodeChunk([]byte(op.Value), false)
	if err != nil || c.move != op.Version {
		return Result{Status: StatusInvalid}
	}
	if done, ok := f.slots.finishedMove(c.move); ok {
		if done.State == SlotMoveActive {
			return Result{}
		}
		return Result{Status: StatusInvalid}
	}
	m := f.slots.moves[c.move]
	switch {
	case m == nil:
		if !f.slots.rangeFree(c.start, c.end) {
			return Result{Status: StatusInvalid}
		}
		m = &slotMove{id: c.move, start: c.start, end: c.end, incoming: true, total: c.total, chunks: make(map[int]string)}
		f.slots.moves[c.move] = m
		f.slots.mark(c.start, c.end, slotIncoming)
	case !m.incoming || m.start != c.start || m.end != c.end || m.total != c.total:
		return Result{Status: StatusInvalid}
	}
	if _, held := m.chunks[c.index]; !held {
		m.chunks[c.index] = op.Value
	}
	f.rev = max(f.rev, c.rev)
	return Result{}
}

// activateSlots makes move op.Version's incoming state live, once every
// chunk is installed: keys; jobs in their order at the source, after the
// jobs here, with their leases and run-at times as long from now as they
// were from the freeze; schedules likewise; session results; and the
// range becomes this shard's own. Repeated, it is a no-op.
func (f *FSM) activateSlots(op *Op) Result {
	if done, ok := f.slots.finishedMove(op.Version); ok && done.State == SlotMoveActive {
		return Result{}
	}
	m := f.slots.moves[op.Version]
	if m == nil || !m.incoming || len(m.chunks) != m.total {
		return Result{Status: StatusInvalid}
	}
	chunks := make([]*slotChunk, m.total)
	for i := range chunks {
		c, err := decodeChunk([]byte(m.chunks[i]), true)
		if err != nil { // installSlots decoded it already
			return Result{Status: StatusInvalid}
		}
		chunks[i] = c
	}
	for _, c := range chunks {
		for k, e := range c.kv {
			f.kv[k] = e
		}
		for _, j := range c.jobs {
			f.jobs.seq++
			j.Seq = f.jobs.seq
			shiftJob(j, f.clock)
			f.admitJob(j)
		}
		for i, s := range c.schedules {
			f.admitSchedule(s, shiftTime(c.scheduleDue[i], f.clock))
		}
		f.sessions.mergeSessions(c.sessions)
	}
	f.jobs.scheduleDue = f.jobs.nextScheduleDue()
	f.slots.finish(SlotMove{ID: m.id, Start: m.start, End: m.end, State: SlotMoveActive, Chunks: m.total, Installed: m.total})
	f.slots.mark(m.start, m.end, slotOwned)
	return Result{}
}
