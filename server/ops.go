package server

import (
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// commandKinds maps each client op the state machine applies to its
// command kind: the one table between the two. The ops not in it (reads,
// topology, ping, status) are answered without a command.
var commandKinds = map[wire.Op]fsm.Kind{
	wire.OpSet:           fsm.KindSet,
	wire.OpDelete:        fsm.KindDelete,
	wire.OpCompareAndSet: fsm.KindCompareAndSet,
	wire.OpEnqueue:       fsm.KindEnqueue,
	wire.OpAcquire:       fsm.KindAcquire,
	wire.OpExtend:        fsm.KindExtend,
	wire.OpComplete:      fsm.KindComplete,
	wire.OpFail:          fsm.KindFail,
	wire.OpRelease:       fsm.KindRelease,
	wire.OpRequeue:       fsm.KindRequeue,
	wire.OpEvery:         fsm.KindEvery,
	wire.OpUnevery:       fsm.KindUnevery,
}

// stateOp returns the state machine op of query m, whose op must be in
// commandKinds and whose arguments passed wire.CheckQuery.
func stateOp(m *wire.Message) fsm.Op {
	a := &m.Args
	op := fsm.Op{
		Kind: commandKinds[m.Op], Client: m.Client, Seq: m.Seq, Ack: m.Ack,
		Key: a.Key, Value: a.Value, Version: a.Version,
		Topic: a.Topic, JobID: a.JobID, Token: a.Token, Lease: int64(a.Lease),
		Delay: int64(a.Delay), MaxAttempts: a.MaxAttempts, Backoff: int64(a.Backoff),
		Unique: a.Unique, Reason: a.Reason, Interval: int64(a.Interval),
	}
	if !a.RunAt.IsZero() {
		op.RunAt = a.RunAt.UnixNano()
	}
	// A failure's reason is kept with the job for operators to read: a
	// longer one is cut rather than refused, so the job still fails.
	if len(op.Reason) > shard.MaxKeySize {
		op.Reason = op.Reason[:shard.MaxKeySize]
	}
	return op
}
