package fsm

import (
	"testing"

	"github.com/shoal-kv/shoal/shard"
)

// A key of a range frozen for a move away reads as it was, from the leader
// (Get) and from the immediate path (TryGet), until the range is dropped:
// its slot's status says reads are served, so an entry missing then would
// be a read that a key written before the freeze does not exist.
func TestFrozenKeyReads(t *testing.T) {
	a := newApplier(t)
	if r := a.one(Op{Kind: KindSet, Key: "k", Value: "v"}); r.Status != StatusOK {
		t.Fatalf("set: %+v", r)
	}
	want, _ := a.fsm.Get("k")
	slot := shard.KeySlot("k")
	if r := a.one(Op{Kind: KindFreezeSlots, Start: slot, End: slot + 1, Version: 7}); r.Status != StatusOK {
		t.Fatalf("freeze: %+v", r)
	}
	if st := a.fsm.SlotStatus(slot); st != StatusOK {
		t.Fatalf("a frozen slot's status for reads: %v, want StatusOK", st)
	}
	if e, ok := a.fsm.Get("k"); !ok || e != want {
		t.Errorf("Get of a frozen key: %+v, %v; want %+v", e, ok, want)
	}
	if e, ok, locked := a.fsm.TryGet("k"); !locked || !ok || e != want {
		t.Errorf("TryGet of a frozen key: %+v, %v, %v; want %+v", e, ok, locked, want)
	}
	if _, ok := a.fsm.Get("other"); ok && shard.KeySlot("other") != slot {
		t.Errorf("Get of a key never written found one")
	}
	if r := a.one(Op{Kind: KindDropSlots, Version: 7}); r.Status != StatusOK {
		t.Fatalf("drop: %+v", r)
	}
	if _, ok := a.fsm.Get("k"); ok {
		t.Errorf("Get of a dropped key still finds it")
	}
	if st := a.fsm.SlotStatus(slot); st != StatusWrongShard {
		t.Errorf("a dropped slot's status: %v, want StatusWrongShard", st)
	}
}
