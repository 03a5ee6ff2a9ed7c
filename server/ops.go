package server

import (
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// commandKinds maps each client op the state machine applies to its
// command kind: the one table between the two. The ops not in it (reads,
// topology, ping, status) are answered without a command.
var commandKinds = map[wire.Op]fsm.Kind{
	wire.OpSet:             fsm.KindSet,
	wire.OpDelete:          fsm.KindDelete,
	wire.OpCompareAndSet:   fsm.KindCompareAndSet,
	wire.OpEnqueue:         fsm.KindEnqueue,
	wire.OpAcquire:         fsm.KindAcquire,
	wire.OpExtend:          fsm.KindExtend,
	wire.OpComplete:        fsm.KindComplete,
	wire.OpCompleteAcquire: fsm.KindCompleteAcquire,
	wire.OpEnqueueBatch:    fsm.KindEnqueueBatch,
	wire.OpFail:            fsm.KindFail,
	wire.OpRelease:         fsm.KindRelease,
	wire.OpRequeue:         fsm.KindRequeue,
	wire.OpEvery:           fsm.KindEvery,
	wire.OpUnevery:         fsm.KindUnevery,
}

// newGrant draws the proof of a lease (fsm.Op.Grant): 63 random bits
// from the system's secure source (the wire's integers are signed), never
// 0 (the grant of a lease granted before grants existed).
func newGrant() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:]) // never fails (Go 1.24+)
		if g := binary.LittleEndian.Uint64(b[:]) >> 1; g != 0 {
			return g
		}
	}
}

// batchArgs returns the wire form of the jobs of a batch op: stateOp's
// inverse.
func batchArgs(ops []fsm.Op) []wire.BatchJob {
	if len(ops) == 0 {
		return nil
	}
	batch := make([]wire.BatchJob, len(ops))
	for i, j := range ops {
		batch[i] = wire.BatchJob{ID: j.JobID, Topic: j.Topic, Payload: j.Value, Delay: time.Duration(j.Delay),
			MaxAttempts: j.MaxAttempts, Backoff: time.Duration(j.Backoff), Unique: j.Unique}
		if j.RunAt != 0 {
			batch[i].RunAt = time.Unix(0, j.RunAt)
		}
	}
	return batch
}

// stateOp returns the state machine op of query m, whose op must be in
// commandKinds and whose arguments passed wire.CheckQuery. It carries only
// the arguments of its kind, so what else a query holds stays out of the
// raft log. A retry carries when it began, by this node's clock.
func stateOp(m *wire.Message) fsm.Op {
	a := &m.Args
	op := fsm.Op{Kind: commandKinds[m.Op], Client: m.Client, Seq: m.Seq, Ack: m.Ack}
	if m.Age > 0 {
		op.Began = time.Now().Add(-m.Age).UnixNano()
	}
	switch op.Kind {
	case fsm.KindSet, fsm.KindCompareAndSet:
		op.Key, op.Value, op.Version = a.Key, a.Value, a.Version
	case fsm.KindDelete:
		op.Key = a.Key
	case fsm.KindEnqueueBatch:
		op.Batch = make([]fsm.Op, len(a.Batch))
		for i, j := range a.Batch {
			op.Batch[i] = fsm.Op{Kind: fsm.KindEnqueue, JobID: j.ID, Topic: j.Topic, Value: j.Payload, Delay: int64(j.Delay),
				MaxAttempts: j.MaxAttempts, Backoff: int64(j.Backoff), Unique: j.Unique}
			if !j.RunAt.IsZero() {
				op.Batch[i].RunAt = j.RunAt.UnixNano()
			}
		}
	default: // the job ops
		op.Topic, op.JobID, op.Token, op.Grant, op.Lease, op.Value = a.Topic, a.JobID, a.Token, a.Grant, int64(a.Lease), a.Value
		op.Delay, op.MaxAttempts, op.Backoff = int64(a.Delay), a.MaxAttempts, int64(a.Backoff)
		op.Unique, op.Reason, op.Interval = a.Unique, a.Reason, int64(a.Interval)
		if !a.RunAt.IsZero() {
			op.RunAt = a.RunAt.UnixNano()
		}
		// A failure's reason is kept with the job for operators to read:
		// a longer one is cut rather than refused, so the job still fails.
		if len(op.Reason) > shard.MaxKeySize {
			op.Reason = op.Reason[:shard.MaxKeySize]
		}
	}
	return op
}
