package fsm

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
)

// DefaultSessionTTL is how long the state machine remembers a client that
// has stopped writing. A retry older than this is refused with
// StatusSessionExpired; it should be far longer than any client's retry
// budget.
const DefaultSessionTTL = time.Hour

// Entry is a stored value and its version. Versions come from a per-shard
// revision counter that every write advances, so a key's version only grows,
// also across delete and re-create.
type Entry struct {
	Value   string
	Version uint64
}

// Config configures an FSM. Every replica of a shard must use the same
// configuration, or their states diverge.
type Config struct {
	// SessionTTL is how long an idle client session is kept. If zero, it
	// defaults to DefaultSessionTTL.
	SessionTTL time.Duration
	// MaxSessions bounds the client sessions the shard keeps: a new
	// client past it takes the place of the session idle longest, and a
	// retry that session alone could have answered fails with
	// StatusSessionExpired. If zero, DefaultMaxSessions.
	MaxSessions int
	// MaxJobs bounds the jobs the shard holds, of every state (scheduled,
	// ready, leased and dead): an enqueue past it fails with StatusFull,
	// and a schedule makes no job while the shard is full. If zero,
	// DefaultMaxJobs.
	MaxJobs int
	// MaxSchedules bounds the schedules the shard holds: a new one past it
	// fails with StatusFull. If zero, DefaultMaxSchedules.
	MaxSchedules int
	// LeaseGrace is how much longer a job lease lasts after a change of
	// leader: the election timeout, during which its holder could not
	// extend it. If zero, DefaultLeaseGrace.
	LeaseGrace time.Duration
	// Observer hears of what the state machine applies. If nil, nobody
	// does.
	Observer Observer
}

// Observer hears of changes in a state machine as it applies them: a node
// waking the acquires that wait for jobs. Its methods are called with the
// state machine locked, so they must return quickly and must not call it.
type Observer interface {
	// Applied: the state machine has applied the raft log up to index.
	Applied(index uint64)
	// JobsChanged: a job of topic may have become available other than
	// by time passing (enqueued, released, failed to run again, requeued);
	// after a snapshot is restored, topic is "", for every topic.
	JobsChanged(topic string)
}

// noObserver is the Observer of a state machine that has none.
type noObserver struct{}

func (noObserver) Applied(uint64)     {}
func (noObserver) JobsChanged(string) {}

// DefaultLeaseGrace is the lease grace of a change of leader by default.
const DefaultLeaseGrace = time.Second

// Stats describes an FSM. The counters cover the shard's whole history:
// snapshots carry them, so a restarted replica reports the same.
type Stats struct {
	// Applied is the raft index of the last applied command.
	Applied uint64
	// Revision is the last version handed to a write.
	Revision uint64
	// Keys and Sessions are the current counts.
	Keys, Sessions int
	// Executed counts key writes that ran; Duplicates counts retried ops
	// of any kind answered from a session instead.
	Executed, Duplicates uint64
	// Jobs counts the jobs held (not done); JobsCompleted counts
	// completions.
	Jobs          int
	JobsCompleted uint64
	// Moving counts the slots frozen here for a move away, or installed
	// here and not yet active.
	Moving int
}

// FSM is the replicated state machine of one shard: keys with versioned
// values and per-client sessions. It implements raft.FSM and
// raft.BatchingFSM; its read methods are safe to call concurrently with
// Apply.
type FSM struct {
	sessionTTL   time.Duration
	leaseGrace   int64
	maxJobs      int
	maxSchedules int

	mu         sync.RWMutex
	kv         map[string]Entry
	sessions   *sessions
	jobs       jobTable
	rev        uint64 // last version (and fencing token) handed out
	clock      int64  // max Command.Now seen, Unix nanoseconds
	term       uint64 // raft term of the last command applied
	lastExpiry int64  // clock at the last session expiry scan
	executed   uint64
	duplicates uint64
	applied    uint64 // raft index of the last applied log
	observer   Observer
	slots      slotTable // the slot moves and the slots gone
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an empty state machine.
func New(cfg Config) *FSM {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.LeaseGrace <= 0 {
		cfg.LeaseGrace = DefaultLeaseGrace
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxJobs <= 0 {
		cfg.MaxJobs = DefaultMaxJobs
	}
	if cfg.MaxSchedules <= 0 {
		cfg.MaxSchedules = DefaultMaxSchedules
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	return &FSM{
		sessionTTL:   cfg.SessionTTL,
		leaseGrace:   int64(cfg.LeaseGrace),
		maxJobs:      cfg.MaxJobs,
		maxSchedules: cfg.MaxSchedules,
		kv:           make(map[string]Entry),
		sessions:     newSessions(cfg.MaxSessions),
		jobs:         newJobTable(),
		observer:     cfg.Observer,
		slots:        newSlotTable(),
	}
}

// Apply applies one raft log entry. For a command it returns the []Result
// of its ops, in order, or an error if the entry does not decode.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies consecutive raft log entries under one lock.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			out[i] = f.applyCommand(l)
		}
		f.applied = l.Index
	}
	f.observer.Applied(f.applied)
	return out
}

// applyCommand runs with f.mu held.
func (f *FSM) applyCommand(l *raft.Log) interface{} {
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		return err
	}
	prev := f.clock
	if cmd.Now > f.clock {
		f.clock = cmd.Now
	}
	// The first command of a new term comes from a new leader: before
	// anything else it judges, the leases live under the old one get the
	// grace their holders lost while there was no leader to extend them.
	// The log entry's term is the same on every replica.
	if l.Term > f.term {
		if f.term != 0 {
			f.promote(prev)
		}
		f.term = l.Term
	}
	if f.clock-f.lastExpiry >= int64(f.sessionTTL)/8 {
		f.sessions.expire(f.clock - int64(f.sessionTTL))
		f.lastExpiry = f.clock
	}
	f.runSchedules()
	results := make([]Result, len(cmd.Ops))
	for i := range cmd.Ops {
		results[i] = f.applyOp(&cmd.Ops[i])
		results[i].Index = l.Index
	}
	return results
}

func (f *FSM) applyOp(op *Op) Result {
	var s *session
	// An op on a moving slot waits, and one on a slot gone elsewhere goes
	// there, before its session is looked at: the results of such ops
	// have left the sessions with their slots.
	if st := f.slotBlock(op); st != StatusOK {
		return Result{Status: st}
	}
	if op.Client != "" && op.Seq != 0 { // an op without a sequence number cannot be deduplicated
		var res Result
		var done bool
		if s, res, done = f.sessions.begin(op, f.clock); done {
			f.duplicates++
			return f.recall(op, res)
		}
	}
	res := f.execute(op)
	// An acquire that found nothing changed nothing: it is not kept, so
	// that the request may be tried again here once a job is ready.
	if s != nil && !(op.Kind == KindAcquire && res.Status == StatusEmpty) {
		s.keep(op.Seq, keptResult{kept(op, res), opSlot(op)})
	}
	return res
}

func (f *FSM) execute(op *Op) Result {
	switch op.Kind {
	case KindSet, KindCompareAndSet, KindDelete:
		return f.executeKV(op)
	case KindEnqueue:
		return f.enqueue(op)
	case KindAcquire:
		return f.acquire(op)
	case KindExtend:
		return f.extend(op)
	case KindComplete:
		return f.complete(op)
	case KindFail:
		return f.fail(op)
	case KindRelease:
		return f.release(op)
	case KindRequeue:
		return f.requeue(op)
	case KindEvery:
		return f.every(op)
	case KindUnevery:
		return f.unevery(op)
	case KindCompleteAcquire:
		return f.completeAcquire(op)
	case KindEnqueueBatch:
		return f.enqueueBatch(op)
	case KindTick:
		return Result{}
	case KindFreezeSlots:
		return f.freezeSlots(op)
	case KindThawSlots:
		return f.thawSlots(op)
	case KindInstallSlots:
		return f.installSlots(op)
	case KindActivateSlots:
		return f.activateSlots(op)
	case KindDropSlots:
		return f.dropSlots(op)
	default:
		return Result{Status: StatusInvalid}
	}
}

func (f *FSM) executeKV(op *Op) Result {
	if shard.CheckKey(op.Key) != nil {
		return Result{Status: StatusInvalid}
	}
	cur, exists := f.kv[op.Key]
	switch op.Kind {
	case KindCompareAndSet:
		// Versions start at 1, so Version 0 matches only a missing key.
		if cur.Version != op.Version {
			return Result{Status: StatusConflict, Version: cur.Version}
		}
	case KindDelete:
		if !exists {
			return Result{Status: StatusNotFound}
		}
		f.executed++
		f.rev++
		delete(f.kv, op.Key)
		return Result{Version: cur.Version}
	}
	f.executed++
	f.rev++
	f.kv[op.Key] = Entry{Value: op.Value, Version: f.rev}
	return Result{Version: f.rev}
}

// Get returns the entry of key as of the last applied command.
func (f *FSM) Get(key string) (Entry, bool) {
	f.mu.RLock()
	e, ok := f.entry(key)
	f.mu.RUnlock()
	return e, ok
}

// entry returns key's entry, f.mu held: from the live tables, or, for a
// key of a range frozen for a move away, from the state the freeze took
// out of them. A frozen slot serves reads (SlotStatus) until it is
// dropped, and no write changes its state meanwhile, so that state is the
// key's.
func (f *FSM) entry(key string) (Entry, bool) {
	if e, ok := f.kv[key]; ok || f.slots.moving == 0 {
		return e, ok
	}
	slot := shard.KeySlot(key)
	if f.slots.marks[slot] != slotFrozen {
		return Entry{}, false
	}
	for _, m := range f.slots.moves {
		if !m.incoming && m.has(slot) {
			e, ok := m.kv[key]
			return e, ok
		}
	}
	return Entry{}, false
}

// TryGet is Get for a caller that must not wait: when a write holds the
// state machine, or waits for readers to let go of it (a snapshot copying a
// large state, say), it returns at once with locked false.
func (f *FSM) TryGet(key string) (e Entry, found, locked bool) {
	if !f.mu.TryRLock() {
		return Entry{}, false, false
	}
	e, found = f.entry(key)
	f.mu.RUnlock()
	return e, found, true
}

// Applied returns the raft index of the last applied log entry.
func (f *FSM) Applied() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Stats returns counters and sizes of the state machine.
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return Stats{
		Applied:       f.applied,
		Revision:      f.rev,
		Keys:          len(f.kv),
		Sessions:      len(f.sessions.byClient),
		Executed:      f.executed,
		Duplicates:    f.duplicates,
		Jobs:          len(f.jobs.jobs),
		JobsCompleted: f.jobs.completed,
		Moving:        f.slots.moving,
	}
}
