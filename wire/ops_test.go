package wire

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// The rules of each op, as the client and the node apply them: each bad
// argument is refused with the sentinel of its kind, and the good ones
// pass.
func TestCheckArgs(t *testing.T) {
	long := strings.Repeat("x", shard.MaxKeySize+1)
	big := string(make([]byte, shard.MaxValueSize+1))
	job := Args{JobID: "j000.x", Topic: "t", Value: "p"}
	for _, tc := range []struct {
		op   Op
		args Args
		want []error // nil: passes
	}{
		{OpGet, Args{Key: "k"}, nil},
		{OpGet, Args{}, []error{shard.ErrInvalidName}},
		{OpGet, Args{Key: long}, []error{shard.ErrInvalidName, shard.ErrTooLarge}},
		{OpSet, Args{Key: "k", Value: big}, []error{shard.ErrTooLarge}},
		{OpDelete, Args{Key: "k", Value: big}, nil}, // a delete's value means nothing
		{OpCompareAndSet, Args{Key: "k", Value: "v"}, nil},
		{OpEnqueue, job, nil},
		{OpEnqueue, Args{JobID: "j", Topic: "t\x00"}, []error{shard.ErrInvalidName}},
		{OpEnqueue, Args{JobID: "j", Topic: "t", Unique: long}, []error{shard.ErrInvalidName, shard.ErrTooLarge}},
		{OpEnqueue, Args{JobID: "j", Topic: "t", Value: big}, []error{shard.ErrTooLarge}},
		{OpEnqueue, Args{Topic: "t"}, []error{shard.ErrInvalidName}},
		{OpAcquire, Args{Topic: "t", Lease: time.Millisecond}, nil},
		{OpAcquire, Args{Topic: "t", Lease: time.Microsecond}, []error{ErrInvalidArgs}},
		{OpAcquire, Args{Topic: "t", Lease: time.Second, Shards: make([]shard.ID, shard.SlotCount)}, nil},
		{OpAcquire, Args{Topic: "t", Lease: time.Second, Shards: make([]shard.ID, shard.SlotCount+1)}, []error{ErrInvalidArgs}},
		{OpEnqueue, Args{JobID: "j", Topic: "t", Unique: long[1:]}, nil},
		{OpComplete, Args{JobID: "j"}, nil},
		{OpRequeue, Args{}, []error{shard.ErrInvalidName}},
		{OpEvery, Args{Topic: "t", Unique: "k", Interval: time.Second}, nil},
		{OpEvery, Args{Topic: "t", Unique: "k"}, []error{ErrInvalidArgs}},
		{OpEvery, Args{Topic: "t", Unique: "k", Interval: time.Second - time.Millisecond}, []error{ErrInvalidArgs}},
		{OpEvery, Args{Topic: "t", Interval: time.Second}, []error{shard.ErrInvalidName}},
		{OpUnevery, Args{Topic: "t", Unique: "k"}, nil},
		{OpJobStats, Args{Topic: "t", Shards: []shard.ID{1}}, nil},
		{OpDeadJobs, Args{Topic: "t"}, []error{ErrInvalidArgs}},
		{OpPing, Args{}, nil},
		{OpCompleteAcquire, Args{JobID: "j", Topic: "t", Lease: time.Second}, nil},
		{OpCompleteAcquire, Args{JobID: "j", Topic: "t"}, []error{ErrInvalidArgs}},
		{OpCompleteAcquire, Args{Topic: "t", Lease: time.Second}, []error{shard.ErrInvalidName}},
		{OpCompleteAcquire, Args{JobID: "j", Lease: time.Second}, []error{shard.ErrInvalidName}},
		{OpEnqueueBatch, Args{Batch: []BatchJob{{ID: "a", Topic: "t"}, {ID: "b", Topic: "t", Unique: "u"}}}, nil},
		{OpEnqueueBatch, Args{}, []error{ErrInvalidArgs}},
		{OpEnqueueBatch, Args{Batch: make([]BatchJob, MaxBatchJobs+1)}, []error{ErrInvalidArgs}},
		{OpEnqueueBatch, Args{Batch: []BatchJob{{ID: "a", Topic: "t"}, {ID: "a", Topic: "t"}}}, []error{ErrInvalidArgs}},
		{OpEnqueueBatch, Args{Batch: []BatchJob{{ID: "a", Topic: "t"}, {ID: "b"}}}, []error{shard.ErrInvalidName}},
		{OpEnqueueBatch, Args{Batch: []BatchJob{{ID: "a", Topic: "t", Payload: big}}}, []error{shard.ErrTooLarge}},
		{Op("frob"), Args{}, []error{ErrInvalidArgs}},
	} {
		err := CheckArgs(tc.op, &tc.args)
		if tc.want == nil && err != nil {
			t.Errorf("%s %+v: %v, want no error", tc.op, tc.args, err)
		}
		for _, w := range tc.want {
			if !errors.Is(err, w) {
				t.Errorf("%s: %v, want %v", tc.op, err, w)
			}
		}
	}
}

// A query that changes state needs a client id and a sequence number, and
// an acknowledgement floor no higher than it; a read needs neither. No
// client id exceeds MaxClientIDSize.
func TestCheckQuery(t *testing.T) {
	for _, tc := range []struct {
		m    Message
		want error // nil: ok
	}{
		{Message{Op: OpSet, Client: "c", Seq: 2, Ack: 2, Args: Args{Key: "k"}}, nil},
		{Message{Op: OpSet, Seq: 2, Args: Args{Key: "k"}}, ErrInvalidArgs},
		{Message{Op: OpSet, Client: "c", Args: Args{Key: "k"}}, ErrInvalidArgs},
		{Message{Op: OpSet, Client: "c", Seq: 2, Ack: 3, Args: Args{Key: "k"}}, ErrInvalidArgs},
		{Message{Op: OpGet, Args: Args{Key: "k"}}, nil},
		{Message{Op: OpSet, Client: strings.Repeat("c", MaxClientIDSize), Seq: 2, Args: Args{Key: "k"}}, nil},
		{Message{Op: OpSet, Client: strings.Repeat("c", MaxClientIDSize+1), Seq: 2, Args: Args{Key: "k"}}, ErrInvalidArgs},
		{Message{Op: OpPing, Client: strings.Repeat("c", MaxClientIDSize+1)}, ErrInvalidArgs},
	} {
		if err := CheckQuery(&tc.m); tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.m, err, tc.want)
		}
	}
}

// A query naming a client id must carry its proof.
func TestCheckProof(t *testing.T) {
	id, other := NewClientIdentity(), NewClientIdentity()
	for _, tc := range []struct {
		m  Message
		ok bool
	}{
		{Message{Op: OpSet, Client: id.ID, Proof: id.Proof}, true},
		{Message{Op: OpGet}, true},
		{Message{Op: OpSet, Client: id.ID}, false},
		{Message{Op: OpSet, Client: id.ID, Proof: other.Proof}, false},
		{Message{Op: OpGet, Client: "c", Proof: id.Proof}, false},
		{Message{Op: OpPing, Client: id.ID + "0", Proof: id.Proof}, false},
	} {
		if err := CheckProof(&tc.m); (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrUnprovenClient) {
			t.Errorf("%+v: %v, want ok %v", tc.m, err, tc.ok)
		}
	}
	if a, b := NewClientIdentity(), NewClientIdentity(); a == b || len(a.ID) != 2*ClientIDSize || ClientIDOf(a.Proof) != a.ID {
		t.Errorf("identities %+v and %+v", a, b)
	}
}

// Each op about one slot is served where its key, job id or schedule
// lives; the others name no slot.
func TestOpSlot(t *testing.T) {
	a := Args{Key: "k", JobID: shard.NewJobID(77, "x"), Topic: "t", Unique: "u"}
	for op, want := range map[Op]int{
		OpGet: shard.KeySlot("k"), OpSet: shard.KeySlot("k"), OpDelete: shard.KeySlot("k"), OpCompareAndSet: shard.KeySlot("k"),
		OpEnqueue: 77, OpExtend: 77, OpComplete: 77, OpCompleteAcquire: 77, OpFail: 77, OpRelease: 77, OpRequeue: 77,
		OpEvery: shard.JobKeySlot("t", "u"), OpUnevery: shard.JobKeySlot("t", "u"),
	} {
		if got, ok := op.Slot(&a); !ok || got != want {
			t.Errorf("%s: slot %d, %v; want %d", op, got, ok, want)
		}
	}
	batch := Args{Batch: []BatchJob{{ID: shard.NewJobID(78, "a")}, {ID: shard.NewJobID(79, "b")}}}
	if got, ok := OpEnqueueBatch.Slot(&batch); !ok || got != 78 {
		t.Errorf("a batch: slot %d, %v; want its first job's, 78", got, ok)
	}
	for _, op := range []Op{OpAcquire, OpJobStats, OpDeadJobs, OpTopology, OpPing, OpStatus} {
		if _, ok := op.Slot(&a); ok {
			t.Errorf("%s names a slot", op)
		}
	}
}
