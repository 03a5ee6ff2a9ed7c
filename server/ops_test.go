package server

import (
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// The op → kind table names a kind for every op that changes state, and
// every kind but the tick, which the node proposes itself, has one op.
func TestCommandKindsCoverTheMutatingOps(t *testing.T) {
	ops := map[fsm.Kind]wire.Op{}
	for _, op := range wire.Ops() {
		kind, ok := commandKinds[op]
		if ok != op.Mutating() {
			t.Errorf("op %s: mutating %v, in the table %v", op, op.Mutating(), ok)
		}
		if !ok {
			continue
		}
		if other, dup := ops[kind]; dup {
			t.Errorf("ops %s and %s share kind %v", other, op, kind)
		}
		ops[kind] = op
	}
	for kind := fsm.KindSet; kind <= fsm.KindTick; kind++ {
		if _, ok := ops[kind]; !ok && kind != fsm.KindTick {
			t.Errorf("kind %v has no op", kind)
		}
	}
	if len(ops) != len(commandKinds) {
		t.Errorf("the table holds %d ops the protocol does not define", len(commandKinds)-len(ops))
	}
}

// Every status of a failed op has its own code; success and an empty
// acquire are not errors.
func TestOutcomesCoverTheStatuses(t *testing.T) {
	codes := map[wire.Code]fsm.Status{}
	for s := fsm.StatusOK; s <= fsm.StatusWrongShard; s++ { // StatusWrongShard is the last
		o, ok := outcomes[s]
		if want := s != fsm.StatusOK && s != fsm.StatusEmpty; ok != want {
			t.Errorf("status %d: in the table %v, want %v", s, ok, want)
			continue
		}
		if !ok {
			continue
		}
		if other, dup := codes[o.code]; dup {
			t.Errorf("statuses %d and %d share code %d", other, s, o.code)
		}
		codes[o.code] = s
	}
	if r := writeReply(fsm.Result{Status: fsm.StatusConflict, Version: 7}); r.Err.Code != wire.CodeVersionConflict || r.Result.Version != 7 {
		t.Errorf("a conflict's reply %+v %+v, want code 409 with the key's version", r.Err, r.Result)
	}
}

// A retry's state machine op says when the request began, by this node's
// clock, from the age the client gives; a first attempt's says nothing.
func TestStateOpCarriesARetrysBeginning(t *testing.T) {
	m := &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "c", Seq: 2, Args: wire.Args{Key: "k"}}
	if op := stateOp(m); op.Began != 0 {
		t.Errorf("a first attempt began at %d, want 0", op.Began)
	}
	m.Age = 3 * time.Second
	before := time.Now()
	op := stateOp(m)
	if began := time.Unix(0, op.Began); began.After(before.Add(-m.Age)) && began.Sub(before.Add(-m.Age)) > time.Second ||
		began.Before(before.Add(-m.Age)) {
		t.Errorf("a retry of age %v at %v began at %v", m.Age, before, began)
	}
}
