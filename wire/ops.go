package wire

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// Op names a query (KRPC's "q").
type Op string

// The ops a node serves.
const (
	// OpGet reads a key; Args.Stale asks for a local read.
	OpGet Op = "get"
	// OpSet writes a key.
	OpSet Op = "set"
	// OpDelete removes a key.
	OpDelete Op = "del"
	// OpCompareAndSet writes a key if its version is Args.Version.
	OpCompareAndSet Op = "cas"
	// OpTopology asks for the cluster's nodes and shard map.
	OpTopology Op = "topo"
	// OpPing does nothing but keep the client subscribed to heartbeats.
	OpPing Op = "ping"
	// OpStatus asks a node for its raft state per shard.
	OpStatus Op = "status"
	// OpCluster carries command Args.Key, with arguments Args.Value, to
	// the cluster's control group: the node's package (server) lists the
	// commands, and the reply's Result.Value is the node's answer. Its
	// commands are idempotent, so it needs no session.
	OpCluster Op = "cluster"

	// OpEnqueue creates job Args.JobID of Args.Topic with payload
	// Args.Value.
	OpEnqueue Op = "enq"
	// OpAcquire leases a ready job of Args.Topic for Args.Lease from one
	// of Args.Shards (all the node holds if empty), waiting up to
	// Args.Wait for one.
	OpAcquire Op = "acq"
	// OpEnqueueBatch creates the jobs of Args.Batch, all of one shard,
	// all or none, and answers with their ids in order in Result.Jobs.
	OpEnqueueBatch Op = "enqb"
	// OpExtend, OpComplete, OpFail and OpRelease act on job Args.JobID
	// under lease Args.Token.
	OpExtend   Op = "ext"
	OpComplete Op = "done"
	OpFail     Op = "fail"
	OpRelease  Op = "rel"
	// OpCompleteAcquire completes job Args.JobID under lease Args.Token,
	// as OpComplete, and leases, as OpAcquire, the next ready job of
	// Args.Topic for Args.Lease from the same shard, if it has one: the
	// reply's Result.Job, absent when it has none. It does not wait for
	// one.
	OpCompleteAcquire Op = "doneacq"
	// OpRequeue queues dead job Args.JobID again.
	OpRequeue Op = "requeue"
	// OpEvery registers the schedule (Args.Topic, Args.Unique) making a
	// job every Args.Interval; OpUnevery removes it.
	OpEvery   Op = "every"
	OpUnevery Op = "unevery"
	// OpJobStats counts Args.Topic's jobs by state on shard Args.Shards[0],
	// ready or scheduled by the answering node's clock.
	OpJobStats Op = "jstats"
	// OpDeadJobs lists dead jobs of Args.Topic on shard Args.Shards[0]
	// after Args.After, up to Args.Limit and as many as fit the reply,
	// and gives the Args.After of the next page in Result.Next.
	OpDeadJobs Op = "dead"
)

// opSpec is what the protocol says of one op. The table below is the one
// place that lists the ops with their properties; the node maps the ops
// the state machine applies to its command kinds in one table of its own
// (server/ops.go).
type opSpec struct {
	// mutating ops change state: each is applied at most once, and keeps
	// its sequence number unacknowledged until answered.
	mutating bool
	// loads: a request of the op counts toward a node's load, the
	// requests in progress it reports. Every op does but those that wait
	// at the node by design (an acquire's long poll) or cost next to
	// nothing (ping, topology, status).
	loads bool
	// slot returns the slot whose shard serves the op; nil for an op that
	// is not about one slot.
	slot func(a *Args) int
	// check checks the op's arguments.
	check func(a *Args) error
}

var opSpecs = map[Op]opSpec{
	OpGet:             {loads: true, slot: keySlot, check: checkKey},
	OpSet:             {mutating: true, loads: true, slot: keySlot, check: checkKeyValue},
	OpDelete:          {mutating: true, loads: true, slot: keySlot, check: checkKey},
	OpCompareAndSet:   {mutating: true, loads: true, slot: keySlot, check: checkKeyValue},
	OpTopology:        {},
	OpPing:            {},
	OpStatus:          {},
	OpCluster:         {check: checkCluster},
	OpEnqueue:         {mutating: true, loads: true, slot: jobSlot, check: checkEnqueue},
	OpAcquire:         {mutating: true, check: checkAcquire},
	OpExtend:          {mutating: true, loads: true, slot: jobSlot, check: checkJobID},
	OpComplete:        {mutating: true, loads: true, slot: jobSlot, check: checkJobID},
	OpCompleteAcquire: {mutating: true, loads: true, slot: jobSlot, check: checkCompleteAcquire},
	OpEnqueueBatch:    {mutating: true, loads: true, slot: batchSlot, check: checkEnqueueBatch},
	OpFail:            {mutating: true, loads: true, slot: jobSlot, check: checkJobID},
	OpRelease:         {mutating: true, loads: true, slot: jobSlot, check: checkJobID},
	OpRequeue:         {mutating: true, loads: true, slot: jobSlot, check: checkJobID},
	OpEvery:           {mutating: true, loads: true, slot: jobKeySlot, check: checkEvery},
	OpUnevery:         {mutating: true, loads: true, slot: jobKeySlot, check: checkSchedule},
	OpJobStats:        {loads: true, check: checkShardRead},
	OpDeadJobs:        {loads: true, check: checkShardRead},
}

// Ops returns every op the protocol defines, sorted.
func Ops() []Op {
	ops := make([]Op, 0, len(opSpecs))
	for op := range opSpecs {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	return ops
}

// Known reports whether op is one the protocol defines.
func (op Op) Known() bool {
	_, ok := opSpecs[op]
	return ok
}

// Mutating reports whether op changes state, so that it must be applied at
// most once and keeps its sequence number unacknowledged until answered.
func (op Op) Mutating() bool { return opSpecs[op].mutating }

// Loads reports whether a request of op counts toward a node's load.
func (op Op) Loads() bool { return opSpecs[op].loads }

// Slot returns the slot whose shard serves a query of op with arguments a,
// and false for an op that is not about one slot (topology, ping, status;
// an acquire and the job reads name their shards in Args.Shards).
func (op Op) Slot(a *Args) (int, bool) {
	s := opSpecs[op].slot
	if s == nil {
		return 0, false
	}
	return s(a), true
}

func keySlot(a *Args) int    { return shard.KeySlot(a.Key) }
func jobSlot(a *Args) int    { return shard.JobSlot(a.JobID) }
func jobKeySlot(a *Args) int { return shard.JobKeySlot(a.Topic, a.Unique) }

// batchSlot is the slot of a batch's first job: the node that gets the
// batch checks that every other job's shard is that one's.
func batchSlot(a *Args) int {
	if len(a.Batch) == 0 {
		return 0
	}
	return shard.JobSlot(a.Batch[0].ID)
}

// ErrInvalidArgs: a query whose arguments break a rule of its op other
// than the keyspace's limits on names and values (shard.ErrInvalidName,
// shard.ErrTooLarge): a missing client id, a lease or interval under a
// millisecond, a schedule's interval under shard.MinScheduleInterval.
var ErrInvalidArgs = errors.New("wire: invalid arguments")

// MinDuration is the shortest lease.
const MinDuration = time.Millisecond

// CheckArgs checks the arguments of a query of op, as the client does
// before it sends one and the node when one arrives. An error wraps
// shard.ErrInvalidName, shard.ErrTooLarge or ErrInvalidArgs.
func CheckArgs(op Op, a *Args) error {
	spec, ok := opSpecs[op]
	if !ok {
		return fmt.Errorf("%w: unknown op %q", ErrInvalidArgs, op)
	}
	if spec.check == nil {
		return nil
	}
	if err := spec.check(a); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// CheckQuery checks a query: its arguments (CheckArgs), its client id (at
// most MaxClientIDSize bytes), and for a mutating op the client id and
// sequence number that make it apply once, with an acknowledgement floor
// no higher than the sequence number.
func CheckQuery(m *Message) error {
	if err := CheckArgs(m.Op, &m.Args); err != nil {
		return err
	}
	if len(m.Client) > MaxClientIDSize {
		return fmt.Errorf("%w: %w: client id of %d bytes exceeds %d", ErrInvalidArgs, shard.ErrTooLarge, len(m.Client), MaxClientIDSize)
	}
	if !m.Op.Mutating() {
		return nil
	}
	switch {
	case m.Client == "" || m.Seq == 0:
		return fmt.Errorf("%w: %s needs a client id and a sequence number", ErrInvalidArgs, m.Op)
	case m.Ack > m.Seq:
		return fmt.Errorf("%w: ack %d is above sequence number %d", ErrInvalidArgs, m.Ack, m.Seq)
	}
	return nil
}

func checkKey(a *Args) error { return shard.CheckKey(a.Key) }

func checkKeyValue(a *Args) error {
	if err := shard.CheckKey(a.Key); err != nil {
		return err
	}
	return shard.CheckValue(len(a.Value))
}

func checkJobID(a *Args) error { return shard.CheckJobID(a.JobID) }

// checkCluster checks an OpCluster: a command name and its arguments,
// within the bounds of a key and a value.
func checkCluster(a *Args) error { return checkKeyValue(a) }

func checkEnqueue(a *Args) error {
	if err := shard.CheckJobID(a.JobID); err != nil {
		return err
	}
	if err := shard.CheckTopic(a.Topic); err != nil {
		return err
	}
	if a.Unique != "" {
		if err := shard.CheckJobKey(a.Unique); err != nil {
			return err
		}
	}
	return shard.CheckValue(len(a.Value))
}

// checkCompleteAcquire checks the job completed, and the topic and lease
// of the one asked for next.
func checkCompleteAcquire(a *Args) error {
	if err := shard.CheckJobID(a.JobID); err != nil {
		return err
	}
	if err := shard.CheckTopic(a.Topic); err != nil {
		return err
	}
	if a.Lease < MinDuration {
		return fmt.Errorf("%w: a lease of %v is under %v", ErrInvalidArgs, a.Lease, MinDuration)
	}
	return nil
}

// checkEnqueueBatch checks that a batch holds 1 to MaxBatchJobs jobs, each
// as an enqueue's, and no id twice.
func checkEnqueueBatch(a *Args) error {
	if len(a.Batch) == 0 || len(a.Batch) > MaxBatchJobs {
		return fmt.Errorf("%w: a batch of %d jobs (1 to %d allowed)", ErrInvalidArgs, len(a.Batch), MaxBatchJobs)
	}
	ids := make(map[string]bool, len(a.Batch))
	for i := range a.Batch {
		j := &a.Batch[i]
		if err := checkEnqueue(&Args{JobID: j.ID, Topic: j.Topic, Unique: j.Unique, Value: j.Payload}); err != nil {
			return fmt.Errorf("job %d: %w", i, err)
		}
		if ids[j.ID] {
			return fmt.Errorf("%w: job %d: id %q twice in the batch", ErrInvalidArgs, i, j.ID)
		}
		ids[j.ID] = true
	}
	return nil
}

func checkAcquire(a *Args) error {
	if err := shard.CheckTopic(a.Topic); err != nil {
		return err
	}
	if a.Lease < MinDuration {
		return fmt.Errorf("%w: a lease of %v is under %v", ErrInvalidArgs, a.Lease, MinDuration)
	}
	// The node asks each shard named once: no more can be named than
	// there can be shards.
	if len(a.Shards) > shard.SlotCount {
		return fmt.Errorf("%w: names %d shards, more than the %d there can be", ErrInvalidArgs, len(a.Shards), shard.SlotCount)
	}
	return nil
}

// checkSchedule checks what names a schedule: its topic and key.
func checkSchedule(a *Args) error {
	if err := shard.CheckTopic(a.Topic); err != nil {
		return err
	}
	return shard.CheckJobKey(a.Unique)
}

func checkEvery(a *Args) error {
	if err := checkSchedule(a); err != nil {
		return err
	}
	if a.Interval < shard.MinScheduleInterval {
		return fmt.Errorf("%w: an interval of %v is under %v", ErrInvalidArgs, a.Interval, shard.MinScheduleInterval)
	}
	return shard.CheckValue(len(a.Value))
}

// checkShardRead checks a job read: a topic, and the one shard to read.
func checkShardRead(a *Args) error {
	if err := shard.CheckTopic(a.Topic); err != nil {
		return err
	}
	if len(a.Shards) != 1 {
		return fmt.Errorf("%w: names %d shards, want 1", ErrInvalidArgs, len(a.Shards))
	}
	return nil
}
