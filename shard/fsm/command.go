package fsm

import "fmt"

// Kind is the operation an Op performs. Its value is its code in the raft
// log: never renumber one.
type Kind uint8

// The operations of the state machine. The node maps the client ops of the
// wire protocol onto them in one table (server/ops.go).
const (
	// KindSet stores Value under Key, creating or replacing it.
	KindSet Kind = 1
	// KindDelete removes Key.
	KindDelete Kind = 2
	// KindCompareAndSet stores Value under Key only if the key's current
	// version is Version; Version 0 means the key must not exist.
	KindCompareAndSet Kind = 3

	// KindEnqueue creates job JobID of Topic with payload Value, to run at
	// RunAt or Delay after the command's time, whichever is later, with
	// MaxAttempts, Backoff and uniqueness key Unique.
	KindEnqueue Kind = 4
	// KindAcquire leases the next available job of Topic to Client for
	// Lease nanoseconds, under Grant.
	KindAcquire Kind = 5
	// KindExtend, KindComplete, KindFail and KindRelease act on job JobID
	// under lease Token with its Grant: extend it by Lease, finish it,
	// fail it with Reason, or give it back.
	KindExtend   Kind = 6
	KindComplete Kind = 7
	KindFail     Kind = 8
	KindRelease  Kind = 9
	// KindRequeue queues dead job JobID again.
	KindRequeue Kind = 10
	// KindEvery creates or updates the schedule (Topic, Unique) making a
	// job with payload Value every Interval; KindUnevery removes it.
	KindEvery   Kind = 11
	KindUnevery Kind = 12
	// KindTick does nothing but move the clock, so schedules fire and
	// leases are seen to run out.
	KindTick Kind = 13
	// KindCompleteAcquire completes job JobID under lease Token with its
	// Grant, as KindComplete, and then, if that succeeded, leases the next
	// available job of Topic for Lease under NextGrant, as KindAcquire:
	// a worker's finished job and its next one in one entry, under one
	// sequence number. When the completion fails nothing is leased.
	KindCompleteAcquire Kind = 14
	// KindEnqueueBatch enqueues the jobs of Batch, each as KindEnqueue,
	// all or none: it is refused whole when one of them would be, and
	// when the shard has no room for all of them.
	KindEnqueueBatch Kind = 15

	// The steps of a slot move (slots.go), each one raft entry of a shard
	// the node drives a move through; Version is the move's id, never 0.
	//
	// KindFreezeSlots, at the source, takes the state of slots [Start, End)
	// out of the live tables into the move's frozen holding area.
	KindFreezeSlots Kind = 16
	// KindThawSlots, at the source before the drop, puts the move's frozen
	// state back live, or, before any freeze, records the move as
	// cancelled: either way the move is undone for good.
	KindThawSlots Kind = 17
	// KindInstallSlots, at the target, holds the chunk Value (one of those
	// FSM.ExportSlots made at the source) in the move's incoming area.
	KindInstallSlots Kind = 18
	// KindActivateSlots, at the target once every chunk is installed,
	// makes the incoming state live.
	KindActivateSlots Kind = 19
	// KindDropSlots, at the source, deletes the frozen state and marks its
	// slots gone; at a target holding the move incoming, not yet active,
	// it discards the incoming state.
	KindDropSlots Kind = 20

	// kindEnd is one past the last kind.
	kindEnd Kind = 21
)

var kindNames = [kindEnd]string{
	KindSet: "set", KindDelete: "delete", KindCompareAndSet: "compare-and-set", KindEnqueue: "enqueue",
	KindAcquire: "acquire", KindExtend: "extend", KindComplete: "complete", KindFail: "fail",
	KindRelease: "release", KindRequeue: "requeue", KindEvery: "every", KindUnevery: "unevery",
	KindTick: "tick", KindCompleteAcquire: "complete-and-acquire", KindEnqueueBatch: "enqueue-batch",
	KindFreezeSlots: "freeze-slots", KindThawSlots: "thaw-slots", KindInstallSlots: "install-slots",
	KindActivateSlots: "activate-slots", KindDropSlots: "drop-slots",
}

// String names the kind, for logs and errors.
func (k Kind) String() string {
	if k.valid() {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k > 0 && k < kindEnd }

// Op is one client request as the state machine applies it.
//
// Client and Seq identify the request for at-most-once application: a second
// Op with the same pair returns the first one's Result without executing.
// Ack is the client's promise that it holds a reply for every sequence number
// below it, so the state machine may forget those results.
type Op struct {
	Kind    Kind
	Client  string
	Seq     uint64
	Ack     uint64
	Key     string
	Value   string
	Version uint64

	// Job ops; times are Unix nanoseconds, durations nanoseconds.
	Topic       string
	JobID       string
	Token       uint64
	Lease       int64
	RunAt       int64
	Delay       int64
	MaxAttempts int
	Backoff     int64
	Unique      string
	Reason      string
	Interval    int64

	// Began is when the request was first sent, by the clock of the node
	// that proposed it, for a retry; 0 for a request's first attempt. A
	// retry's session may have been forgotten since (sessions.begin).
	Began int64
	// Grant, of an acquire, is a random number the proposing node drew:
	// the proof of the lease the acquire grants, which the ops on the
	// leased job must present with its Token. The token fences (it grows
	// with every grant of the shard) but can be guessed; the grant cannot.
	// Of a KindCompleteAcquire, it is the completed job's grant.
	Grant uint64
	// NextGrant, of a KindCompleteAcquire, is the grant of the job it
	// leases next, drawn by the proposing node as an acquire's Grant.
	NextGrant uint64
	// Batch holds the jobs of a KindEnqueueBatch: KindEnqueue ops without
	// client, sequence number or batch of their own. It holds at most
	// MaxBatch of them.
	Batch []Op
	// Start and End, of a KindFreezeSlots, are the slot range [Start, End)
	// it freezes, within 0..shard.SlotCount; of a KindThawSlots or a
	// KindDropSlots, the range of the move, which a move unknown to the
	// shard is remembered with.
	Start, End int
}

// MaxBatch bounds the jobs of a KindEnqueueBatch.
const MaxBatch = 1024

// Command is one raft log entry: a batch of operations and the time at which
// the leader proposed them. The state machine never reads a clock of its
// own; Now is its only notion of time, so every replica decides the same.
type Command struct {
	// Now is the proposing leader's wall clock in Unix nanoseconds.
	Now int64
	Ops []Op
}

// Status is the outcome of an Op.
type Status uint8

// The outcomes of an Op.
const (
	StatusOK Status = iota
	StatusNotFound
	StatusConflict
	// StatusAcked: the sequence number is below the client's own Ack, so
	// the client already holds its reply; the op was not executed.
	StatusAcked
	// StatusTooManyPending: the client has more unacknowledged requests
	// than MaxPendingPerClient; the op was not executed.
	StatusTooManyPending
	// StatusInvalid: the op is malformed (unknown kind, empty key); it was
	// not executed.
	StatusInvalid
	// StatusEmpty: an acquire found no job available.
	StatusEmpty
	// StatusLeaseLost: the token is not the job's live lease.
	StatusLeaseLost
	// StatusWrongState: the job is not in a state the op applies to (a
	// requeue of a job that is not dead).
	StatusWrongState
	// StatusJobExists: an enqueue named the id of a job of another topic
	// or payload.
	StatusJobExists
	// StatusFull: the shard holds its most jobs (Config.MaxJobs) or
	// schedules (Config.MaxSchedules); the op was not executed.
	StatusFull
	// StatusSessionExpired: the op is a retry that the shard can no
	// longer tell from its first attempt, whose session was forgotten to
	// make room for others (Config.MaxSessions) or after SessionTTL; it
	// was not executed, and whether the first attempt was is unknown.
	StatusSessionExpired
	// StatusMoving: the op is on a slot that is moving between shards
	// (frozen at its source, or installed but not yet active at its
	// target); it was not executed, and may be retried once the move
	// is done.
	StatusMoving
	// StatusWrongShard: the op is on a slot that has moved to another
	// shard; it was not executed, and should be sent to the slot's owner
	// in a newer shard map.
	StatusWrongShard
)

// Result is the outcome of one Op.
type Result struct {
	Status Status `bencode:"s"`
	// Version is the key's version after a successful set or
	// compare-and-set, its version before a delete, or its current version
	// (0 if absent) after a conflict.
	Version uint64 `bencode:"v"`

	// Job ops: the job (for an enqueue that found a live job with the
	// same uniqueness key, that job's id), and for a grant or extension
	// its lease. For a failed job, Deadline is when it runs again, 0 if
	// it is dead now.
	JobID    string `bencode:"j"`
	Topic    string `bencode:"t"`
	Payload  string `bencode:"p"`
	Attempt  int    `bencode:"a"`
	Token    uint64 `bencode:"o"`
	Grant    uint64 `bencode:"g"`
	Deadline int64  `bencode:"d"`
	// JobIDs answers a KindEnqueueBatch: the id of each of its jobs, in
	// order, or of the live job holding its uniqueness key. For a
	// KindCompleteAcquire, JobID and the fields after it describe the job
	// leased next; none (JobID empty) if the topic had none available.
	JobIDs []string `bencode:"b,omitempty"`
	// BatchSum is set only in the result a session keeps of a
	// KindEnqueueBatch: a fingerprint of the ids of the batch's jobs, so
	// that a retry is told from another batch reusing its sequence number.
	BatchSum uint64 `bencode:"bs,omitempty"`
	// Index is the raft index of the entry that carried the op (for a
	// retry answered from its session, the retry's entry; for one that
	// joined its first attempt on the leader, the first attempt's).
	Index uint64 `bencode:"i"`
}
