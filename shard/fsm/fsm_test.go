package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// applier feeds commands to an FSM as raft would, with growing indexes.
type applier struct {
	t     testing.TB
	fsm   *FSM
	index uint64
	term  uint64 // the raft term of the entries: a new term is a new leader
	now   int64
}

func newApplier(t testing.TB) *applier {
	return &applier{t: t, fsm: New(Config{}), term: 1, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
}

func (a *applier) apply(ops ...Op) []Result {
	a.t.Helper()
	cmd := Command{Now: a.now, Ops: ops}
	data, err := cmd.Encode()
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	out := a.fsm.Apply(&raft.Log{Index: a.index, Term: a.term, Type: raft.LogCommand, Data: data})
	res, ok := out.([]Result)
	if !ok {
		a.t.Fatalf("Apply returned %v", out)
	}
	for i := range res {
		if res[i].Index != a.index {
			a.t.Fatalf("result %d carries index %d, want %d", i, res[i].Index, a.index)
		}
		res[i].Index = 0 // so results compare across entries
	}
	return res
}

func (a *applier) one(op Op) Result {
	a.t.Helper()
	return a.apply(op)[0]
}

func TestKeyValueOps(t *testing.T) {
	a := newApplier(t)
	steps := []struct {
		op   Op
		want Result
	}{
		{Op{Kind: KindDelete, Key: "x"}, Result{Status: StatusNotFound}},
		{Op{Kind: KindSet, Key: "x", Value: "1"}, Result{Version: 1}},
		{Op{Kind: KindSet, Key: "x", Value: "2"}, Result{Version: 2}},
		{Op{Kind: KindCompareAndSet, Key: "x", Value: "3", Version: 1}, Result{Status: StatusConflict, Version: 2}},
		{Op{Kind: KindCompareAndSet, Key: "x", Value: "3", Version: 0}, Result{Status: StatusConflict, Version: 2}},
		{Op{Kind: KindCompareAndSet, Key: "x", Value: "3", Version: 2}, Result{Version: 3}},
		{Op{Kind: KindCompareAndSet, Key: "y", Value: "new", Version: 0}, Result{Version: 4}},
		{Op{Kind: KindCompareAndSet, Key: "z", Value: "new", Version: 9}, Result{Status: StatusConflict}},
		{Op{Kind: KindDelete, Key: "x"}, Result{Version: 3}},
		{Op{Kind: KindSet, Key: "x", Value: "again"}, Result{Version: 6}},
		{Op{Kind: KindSet, Key: ""}, Result{Status: StatusInvalid}},
	}
	for i, s := range steps {
		if got := a.one(s.op); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d %+v: got %+v, want %+v", i, s.op, got, s.want)
		}
	}
	if e, ok := a.fsm.Get("x"); !ok || e != (Entry{Value: "again", Version: 6}) {
		t.Errorf("Get(x) = %+v, %v", e, ok)
	}
	if e, ok := a.fsm.Get("y"); !ok || e.Value != "new" {
		t.Errorf("Get(y) = %+v, %v", e, ok)
	}
	if _, ok := a.fsm.Get("z"); ok {
		t.Error("z exists after a failed compare-and-set")
	}
	if st := a.fsm.Stats(); st.Keys != 2 || st.Revision != 6 || st.Executed != 6 || st.Applied != a.index {
		t.Errorf("stats %+v", st)
	}
}

func TestRetriedSequenceAppliesOnce(t *testing.T) {
	a := newApplier(t)
	first := a.one(Op{Kind: KindSet, Client: "c1", Seq: 1, Ack: 1, Key: "k", Value: "v1"})
	// The retry carries the same sequence number, even with another value
	// (a buggy client): the stored result comes back and nothing runs.
	again := a.one(Op{Kind: KindSet, Client: "c1", Seq: 1, Ack: 1, Key: "k", Value: "v2"})
	if !reflect.DeepEqual(again, first) {
		t.Errorf("retry result %+v, want the first %+v", again, first)
	}
	// In one batch too, as when two retries land in the same raft entry.
	res := a.apply(
		Op{Kind: KindSet, Client: "c1", Seq: 2, Ack: 1, Key: "n", Value: "a"},
		Op{Kind: KindSet, Client: "c1", Seq: 2, Ack: 1, Key: "n", Value: "a"},
	)
	if !reflect.DeepEqual(res[0], res[1]) {
		t.Errorf("batch results differ: %+v", res)
	}
	// Another client's sequence numbers are its own.
	if r := a.one(Op{Kind: KindSet, Client: "c2", Seq: 1, Ack: 1, Key: "k", Value: "c2"}); r.Status != StatusOK {
		t.Errorf("c2: %+v", r)
	}
	st := a.fsm.Stats()
	if st.Executed != 3 || st.Duplicates != 2 {
		t.Errorf("executed %d duplicates %d, want 3 and 2", st.Executed, st.Duplicates)
	}
	if e, _ := a.fsm.Get("k"); e.Value != "c2" {
		t.Errorf("k = %q", e.Value)
	}
}

func TestAckForgetsResults(t *testing.T) {
	a := newApplier(t)
	for seq := uint64(1); seq <= 3; seq++ {
		a.one(Op{Kind: KindSet, Client: "c", Seq: seq, Ack: 1, Key: "k", Value: "v"})
	}
	if n := len(a.fsm.sessions.byClient["c"].results); n != 3 {
		t.Fatalf("%d results kept, want 3", n)
	}
	// The client now holds replies below 3.
	a.one(Op{Kind: KindSet, Client: "c", Seq: 4, Ack: 3, Key: "k", Value: "v"})
	if n := len(a.fsm.sessions.byClient["c"].results); n != 2 {
		t.Errorf("%d results kept after ack 3, want 2 (seqs 3 and 4)", n)
	}
	// A straggling duplicate of seq 1 is refused, not executed.
	if r := a.one(Op{Kind: KindSet, Client: "c", Seq: 1, Ack: 1, Key: "k", Value: "old"}); r.Status != StatusAcked {
		t.Errorf("stale duplicate: %+v, want StatusAcked", r)
	}
	if e, _ := a.fsm.Get("k"); e.Value != "v" {
		t.Errorf("k = %q after a stale duplicate", e.Value)
	}
}

func TestTooManyPending(t *testing.T) {
	a := newApplier(t)
	ops := make([]Op, MaxPendingPerClient+1)
	for i := range ops {
		ops[i] = Op{Kind: KindSet, Client: "c", Seq: uint64(i + 1), Ack: 1, Key: "k"}
	}
	res := a.apply(ops...)
	if r := res[MaxPendingPerClient-1]; r.Status != StatusOK {
		t.Errorf("op %d: %+v", MaxPendingPerClient, r)
	}
	if r := res[MaxPendingPerClient]; r.Status != StatusTooManyPending {
		t.Errorf("op %d: %+v, want StatusTooManyPending", MaxPendingPerClient+1, r)
	}
}

func TestSessionsExpireOnLeaderTime(t *testing.T) {
	a := newApplier(t)
	a.one(Op{Kind: KindSet, Client: "idle", Seq: 1, Ack: 1, Key: "k"})
	a.now += int64(DefaultSessionTTL / 2)
	a.one(Op{Kind: KindSet, Client: "busy", Seq: 1, Ack: 1, Key: "k"})
	if n := a.fsm.Stats().Sessions; n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}
	a.now += int64(DefaultSessionTTL/2) + int64(time.Second)
	a.one(Op{Kind: KindSet, Client: "busy", Seq: 2, Ack: 2, Key: "k"})
	if _, ok := a.fsm.sessions.byClient["idle"]; ok {
		t.Error("idle session survived its TTL")
	}
	if _, ok := a.fsm.sessions.byClient["busy"]; !ok {
		t.Error("busy session expired")
	}
	// A leader whose clock is behind cannot move time backwards.
	clock := a.fsm.clock
	a.now -= int64(time.Hour)
	a.one(Op{Kind: KindSet, Key: "k"})
	if a.fsm.clock != clock {
		t.Errorf("clock went from %d to %d", clock, a.fsm.clock)
	}
}

// snapshotBytes persists f's snapshot into memory.
func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memorySink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.Bytes()
}

type memorySink struct{ bytes.Buffer }

func (s *memorySink) ID() string    { return "mem" }
func (s *memorySink) Cancel() error { return nil }
func (s *memorySink) Close() error  { return nil }

func TestSnapshotRestore(t *testing.T) {
	a := newApplier(t)
	for i, k := range []string{"a", "b", "c", "binary\x00key"} {
		a.one(Op{Kind: KindSet, Client: "c1", Seq: uint64(i + 1), Ack: 1, Key: k, Value: "value\x00\xff" + k})
	}
	a.one(Op{Kind: KindDelete, Client: "c2", Seq: 1, Ack: 1, Key: "b"})
	a.one(Op{Kind: KindCompareAndSet, Client: "c2", Seq: 2, Ack: 1, Key: "a", Version: 99})

	data := snapshotBytes(t, a.fsm)
	// Writes after the snapshot must not leak into it.
	a.one(Op{Kind: KindSet, Key: "late"})

	g := New(Config{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Get("late"); ok {
		t.Error("restored state holds a write made after the snapshot")
	}
	// Same state: re-snapshotting gives the same bytes, and the fields
	// match one by one.
	if again := snapshotBytes(t, g); !bytes.Equal(again, data) {
		t.Error("snapshot of the restored state differs from the original")
	}
	a2 := newApplier(t)
	for i, k := range []string{"a", "b", "c", "binary\x00key"} {
		a2.one(Op{Kind: KindSet, Client: "c1", Seq: uint64(i + 1), Ack: 1, Key: k, Value: "value\x00\xff" + k})
	}
	a2.one(Op{Kind: KindDelete, Client: "c2", Seq: 1, Ack: 1, Key: "b"})
	a2.one(Op{Kind: KindCompareAndSet, Client: "c2", Seq: 2, Ack: 1, Key: "a", Version: 99})
	if !reflect.DeepEqual(g.kv, a2.fsm.kv) || !reflect.DeepEqual(g.sessions, a2.fsm.sessions) {
		t.Errorf("restored state differs:\n%+v\n%+v", g.kv, a2.fsm.kv)
	}
	if g.Stats() != a2.fsm.Stats() {
		t.Errorf("restored stats %+v, want %+v", g.Stats(), a2.fsm.Stats())
	}
	// Sessions survive: a retry after restore is still answered once.
	b := &applier{t: t, fsm: g, index: g.Applied(), term: a.term, now: a.now}
	if r := b.one(Op{Kind: KindSet, Client: "c1", Seq: 2, Ack: 1, Key: "b", Value: "retry"}); r.Version != 2 {
		t.Errorf("retry after restore: %+v, want the stored version 2", r)
	}
	if _, ok := g.Get("b"); ok {
		t.Error("retry after restore executed again")
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	good := snapshotBytes(t, newApplier(t).fsm)
	for name, data := range map[string][]byte{
		"empty":        nil,
		"not bencode":  []byte("hello"),
		"wrong format": []byte("d1:fi7ee"),
		"truncated":    []byte("d1:fi1e1:ki3e1:si0ee"),
		"cut":          good[:len(good)/2],
	} {
		f := New(Config{})
		if err := f.Restore(io.NopCloser(bytes.NewReader(data))); !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: Restore = %v, want ErrBadSnapshot", name, err)
		}
	}
}

func TestApplyUndecodable(t *testing.T) {
	f := New(Config{})
	out := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte("junk")})
	if _, ok := out.(error); !ok {
		t.Errorf("Apply(junk) = %v, want an error", out)
	}
	if f.Applied() != 1 {
		t.Errorf("applied %d, want 1: the index advances even for a bad entry", f.Applied())
	}
}

// TryGet answers without waiting: at once while no write holds the state
// machine, and with locked false while an apply waits behind a long reader,
// where Get would wait for both.
func TestTryGetDoesNotWaitForWrites(t *testing.T) {
	a := newApplier(t)
	a.one(Op{Kind: KindSet, Key: "k", Value: "v1"})
	if e, found, locked := a.fsm.TryGet("k"); !locked || !found || e.Value != "v1" {
		t.Fatalf("TryGet(k) = %+v, %v, %v uncontended", e, found, locked)
	}
	if _, found, locked := a.fsm.TryGet("absent"); !locked || found {
		t.Fatalf("TryGet(absent) = %v, %v", found, locked)
	}

	data, err := (&Command{Now: a.now, Ops: []Op{{Kind: KindSet, Key: "k", Value: "v2"}}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	a.fsm.mu.RLock() // a reader copying a large state, as Snapshot does
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		a.fsm.Apply(&raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: data})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, locked := a.fsm.TryGet("k"); !locked {
			break // the apply now waits, and would hold up a Get
		}
		if time.Now().After(deadline) {
			t.Fatal("TryGet never saw the waiting apply")
		}
		time.Sleep(time.Millisecond)
	}
	a.fsm.mu.RUnlock()
	<-applied
	if e, _, locked := a.fsm.TryGet("k"); !locked || e.Value != "v2" {
		t.Fatalf("TryGet(k) = %+v, %v after the apply", e, locked)
	}
}

// Replicas that applied the same commands have the same digest, at the
// same index; one change of state changes it.
func TestDigest(t *testing.T) {
	x, y := newApplier(t), newApplier(t)
	for _, a := range []*applier{x, y} {
		a.one(Op{Kind: KindSet, Client: "c", Seq: 1, Key: "k", Value: "v"})
		a.one(Op{Kind: KindEnqueue, JobID: "j", Topic: "t", Value: "p"})
	}
	ix, dx, err := x.fsm.Digest()
	if err != nil {
		t.Fatal(err)
	}
	iy, dy, err := y.fsm.Digest()
	if err != nil || ix != iy || dx != dy || ix != x.index {
		t.Fatalf("same history: %d %x and %d %x, %v", ix, dx, iy, dy, err)
	}
	y.one(Op{Kind: KindSet, Key: "k", Value: "w"})
	x.one(Op{Kind: KindSet, Key: "k", Value: "v"})
	ix, dx, _ = x.fsm.Digest()
	iy, dy, _ = y.fsm.Digest()
	if ix != iy || dx == dy {
		t.Fatalf("different values at index %d and %d: digests %x and %x", ix, iy, dx, dy)
	}
}
