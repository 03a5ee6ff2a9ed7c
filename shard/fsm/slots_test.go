package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"

	"github.com/shoal-kv/shoal/shard"
)

// The range the tests move: the lower half of the slots.
const (
	moveStart = 0
	moveEnd   = shard.SlotCount / 2
	moveID    = 7
)

func inMove(slot int) bool { return slot >= moveStart && slot < moveEnd }

// nameWithSlot returns prefix and a number making a name for which slotOf
// is in the moving range, or out of it.
func nameWithSlot(prefix string, in bool, slotOf func(string) int) string {
	for i := 0; ; i++ {
		if name := fmt.Sprint(prefix, i); inMove(slotOf(name)) == in {
			return name
		}
	}
}

func keyIn(prefix string) string  { return nameWithSlot(prefix, true, shard.KeySlot) }
func keyOut(prefix string) string { return nameWithSlot(prefix, false, shard.KeySlot) }

func (a *applier) slotOp(kind Kind, move uint64, value string) Status {
	a.t.Helper()
	return a.one(Op{Kind: kind, Version: move, Value: value}).Status
}

func (a *applier) freeze(move uint64, start, end int) Status {
	a.t.Helper()
	return a.one(Op{Kind: KindFreezeSlots, Version: move, Start: start, End: end}).Status
}

func (a *applier) export(move uint64, maxChunk int) [][]byte {
	a.t.Helper()
	chunks, err := a.fsm.ExportSlots(move, maxChunk)
	if err != nil {
		a.t.Fatal(err)
	}
	return chunks
}

func digestOf(t *testing.T, f *FSM) [32]byte {
	t.Helper()
	_, sum, err := f.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// restored returns a state machine restored from a snapshot of f, after
// checking that it writes the same snapshot.
func restored(t *testing.T, f *FSM) *FSM {
	t.Helper()
	data := snapshotBytes(t, f)
	g := New(Config{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if again := snapshotBytes(t, g); !bytes.Equal(again, data) {
		t.Fatal("the restored state machine writes another snapshot")
	}
	if digestOf(t, g) != digestOf(t, f) {
		t.Fatal("the restored state machine has another digest")
	}
	return g
}

// twin returns an applier of a copy of a's state machine, restored from a
// snapshot, at the same point of the log.
func twin(t *testing.T, a *applier) *applier {
	t.Helper()
	return &applier{t: t, fsm: restored(t, a.fsm), index: a.index, term: a.term, now: a.now}
}

// sourceFixture is a shard holding state of every kind in the moving range
// and out of it.
type sourceFixture struct {
	keyIn, keyOut        string
	ready1, ready2       string // topic "t", in enqueue order
	scheduled, dead, out string
	leased               Result // topic "lt"
	unique               string // topic "t", uniqueness key uniqueKey
	uniqueKey, everyKey  string
	setResult            Result // of client "c" seq 1, on keyIn
	maxToken             uint64
	scheduleDue          int64
}

func newSource(t *testing.T) (*applier, *sourceFixture) {
	a := newApplier(t)
	x := &sourceFixture{keyIn: keyIn("k"), keyOut: keyOut("k")}
	jobIn := func(suffix string) string { return shard.NewJobID(moveStart+5, suffix) }
	x.ready1, x.ready2, x.scheduled, x.dead = jobIn("r1"), jobIn("r2"), jobIn("s"), jobIn("d")
	x.out = shard.NewJobID(moveEnd+5, "o")
	x.uniqueKey = nameWithSlot("u", true, func(k string) int { return shard.JobKeySlot("t", k) })
	x.everyKey = nameWithSlot("e", true, func(k string) int { return shard.JobKeySlot("st", k) })
	x.unique = shard.NewJobID(shard.JobKeySlot("t", x.uniqueKey), "u")

	x.setResult = a.one(Op{Kind: KindSet, Client: "c", Seq: 1, Key: x.keyIn, Value: "in"})
	a.one(Op{Kind: KindSet, Client: "c", Seq: 2, Key: x.keyOut, Value: "out"})
	a.enqueue(jobIn("l"), "lt")
	x.leased = a.acquire("lt", "w", 30*sec)
	a.enqueue(x.dead, "dt", func(o *Op) { o.MaxAttempts = 1 })
	g := a.acquire("dt", "w", 30*sec)
	a.onJob(KindFail, g, func(o *Op) { o.Reason = "boom" })
	a.enqueue(x.ready1, "t")
	a.enqueue(x.ready2, "t")
	a.enqueue(x.scheduled, "t", func(o *Op) { o.Delay = 60 * sec })
	a.enqueue(x.unique, "t", func(o *Op) { o.Unique = x.uniqueKey })
	a.enqueue(x.out, "ot")
	// Topic "ct" has a completion and one job, in the range: the freeze
	// leaves it with none.
	a.enqueue(jobIn("c1"), "ct")
	a.enqueue(jobIn("c2"), "ct")
	a.onJob(KindComplete, a.acquire("ct", "w", sec))
	if r := a.one(Op{Kind: KindEvery, Topic: "st", Unique: x.everyKey, Value: "tick", Interval: 10 * sec}); r.Status != StatusOK {
		t.Fatalf("every: %+v", r)
	}
	a.now += sec
	x.maxToken = a.fsm.Stats().Revision
	x.scheduleDue, _ = a.fsm.NextScheduleDue()
	return a, x
}

// TestSlotMove moves a range with keys, jobs of every state, a schedule, a
// uniqueness key and session results from one shard to another, in chunks
// installed out of order and twice, and checks each shard at each step.
func TestSlotMove(t *testing.T) {
	src, x := newSource(t)
	freezeClock := src.now
	if st := src.freeze(moveID, moveStart, moveEnd); st != StatusOK {
		t.Fatalf("freeze: %v", st)
	}
	// Frozen: the range's ops wait, its reads work, other slots go on.
	for name, op := range map[string]Op{
		"set":            {Kind: KindSet, Key: x.keyIn, Value: "x"},
		"retry of a set": {Kind: KindSet, Client: "c", Seq: 1, Key: x.keyIn, Value: "in", Began: src.now - sec},
		"complete":       {Kind: KindComplete, JobID: x.leased.JobID, Token: x.leased.Token, Grant: x.leased.Grant},
		"enqueue":        {Kind: KindEnqueue, JobID: shard.NewJobID(moveStart, "n"), Topic: "t"},
		"unique enqueue": {Kind: KindEnqueue, JobID: x.out + "2", Topic: "t", Unique: x.uniqueKey},
		"every":          {Kind: KindEvery, Topic: "st", Unique: x.everyKey, Interval: 10 * sec},
	} {
		if r := src.one(op); r.Status != StatusMoving {
			t.Errorf("%s on a frozen slot: %+v, want StatusMoving", name, r)
		}
	}
	if r := src.one(Op{Kind: KindSet, Key: x.keyOut, Value: "out2"}); r.Status != StatusOK {
		t.Errorf("set out of the range: %+v", r)
	}
	if e, ok := src.fsm.Get(x.keyIn); !ok || e.Value != "in" {
		t.Errorf("read of a frozen key: %+v, %v", e, ok)
	}
	if _, ok := src.fsm.GetJob(x.ready1); !ok {
		t.Error("a frozen job cannot be read")
	}
	if st := src.fsm.SlotStatus(shard.KeySlot(x.keyIn)); st != StatusOK {
		t.Errorf("SlotStatus of a frozen slot: %v", st)
	}
	if r := src.acquire("t", "w", 30*sec); r.Status != StatusEmpty {
		t.Errorf("acquire at the source after the freeze: %+v, want nothing: its jobs are frozen", r)
	}
	if r := src.acquire("ot", "w", 30*sec); r.JobID != x.out {
		t.Errorf("acquire of a job out of the range: %+v", r)
	}
	x.maxToken = src.fsm.Stats().Revision // the export carries tokens issued after the freeze too
	if got := src.fsm.Stats().Moving; got != moveEnd-moveStart {
		t.Errorf("Stats.Moving = %d", got)
	}
	if got, want := src.fsm.Moves(), []SlotMove{{ID: moveID, Start: moveStart, End: moveEnd, State: SlotMoveFrozen}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Moves at the source: %+v, want %+v", got, want)
	}

	chunks := src.export(moveID, 200)
	if len(chunks) < 4 {
		t.Fatalf("%d chunks of at most 200 bytes", len(chunks))
	}
	for i, c := range chunks {
		if len(c) > 200 {
			t.Errorf("chunk %d has %d bytes", i, len(c))
		}
	}
	if again := src.export(moveID, 200); !reflect.DeepEqual(again, chunks) {
		t.Error("a second export cuts other chunks")
	}

	dst := newApplier(t)
	dst.now = freezeClock + 5*sec // the target's clock runs ahead
	dst.one(Op{Kind: KindSet, Key: "t-own", Value: "v"})
	for i := len(chunks) - 1; i >= 0; i-- {
		if st := dst.slotOp(KindInstallSlots, moveID, string(chunks[i])); st != StatusOK {
			t.Fatalf("install of chunk %d: %v", i, st)
		}
		if i == len(chunks)-1 {
			if st := dst.slotOp(KindActivateSlots, moveID, ""); st != StatusInvalid {
				t.Errorf("activate with chunks missing: %v, want StatusInvalid", st)
			}
			if st := dst.fsm.SlotStatus(shard.KeySlot(x.keyIn)); st != StatusMoving {
				t.Errorf("SlotStatus of an incoming slot: %v", st)
			}
			if r := dst.one(Op{Kind: KindSet, Key: x.keyIn, Value: "early"}); r.Status != StatusMoving {
				t.Errorf("set of an incoming slot: %+v", r)
			}
			want := []SlotMove{{ID: moveID, Start: moveStart, End: moveEnd, State: SlotMoveIncoming, Chunks: len(chunks), Installed: 1}}
			if got := dst.fsm.Moves(); !reflect.DeepEqual(got, want) {
				t.Errorf("Moves at the target: %+v, want %+v", got, want)
			}
		}
	}
	if st := dst.slotOp(KindInstallSlots, moveID, string(chunks[0])); st != StatusOK {
		t.Fatalf("second install of chunk 0: %v", st)
	}
	if got := dst.fsm.Stats().Revision; got < x.maxToken {
		t.Errorf("target revision %d after install, below the source's %d", got, x.maxToken)
	}

	if st := src.slotOp(KindDropSlots, moveID, ""); st != StatusOK {
		t.Fatalf("drop: %v", st)
	}
	if r := src.one(Op{Kind: KindSet, Key: x.keyIn, Value: "x"}); r.Status != StatusWrongShard {
		t.Errorf("set of a gone slot: %+v", r)
	}
	if st := src.fsm.SlotStatus(shard.KeySlot(x.keyIn)); st != StatusWrongShard {
		t.Errorf("SlotStatus of a gone slot: %v", st)
	}
	if _, ok := src.fsm.Get(x.keyIn); ok {
		t.Error("a dropped key is still read")
	}
	if st := src.slotOp(KindThawSlots, moveID, ""); st != StatusInvalid {
		t.Errorf("thaw after the drop: %v, want StatusInvalid", st)
	}

	if st := dst.slotOp(KindActivateSlots, moveID, ""); st != StatusOK {
		t.Fatalf("activate: %v", st)
	}
	activation := dst.now
	if st := dst.fsm.SlotStatus(shard.KeySlot(x.keyIn)); st != StatusOK {
		t.Errorf("SlotStatus after activation: %v", st)
	}
	if e, ok := dst.fsm.Get(x.keyIn); !ok || e != (Entry{Value: "in", Version: x.setResult.Version}) {
		t.Errorf("moved key: %+v, %v", e, ok)
	}

	// The session moved: the retry of a write applied at the source is
	// answered, not applied again.
	executed := dst.fsm.Stats().Executed
	if r := dst.one(Op{Kind: KindSet, Client: "c", Seq: 1, Key: x.keyIn, Value: "in", Began: freezeClock - sec}); !reflect.DeepEqual(r, x.setResult) {
		t.Errorf("retry at the target: %+v, want the source's %+v", r, x.setResult)
	}
	if got := dst.fsm.Stats().Executed; got != executed {
		t.Errorf("the retry was executed at the target (%d, %d)", got, executed)
	}

	// The leased job keeps its lease, counted from the activation.
	j, ok := dst.fsm.GetJob(x.leased.JobID)
	if !ok || j.Token != x.leased.Token || j.Grant != x.leased.Grant || j.Deadline != activation+x.leased.Deadline-freezeClock {
		t.Errorf("moved lease: %+v (%v), want token %d, grant %d, deadline %d", j, ok, x.leased.Token, x.leased.Grant, activation+x.leased.Deadline-freezeClock)
	}
	if j, _ := dst.fsm.GetJob(x.scheduled); j.RunAt != activation+60*sec-sec {
		t.Errorf("scheduled job runs at %d, want %d", j.RunAt, activation+59*sec)
	}
	if j, _ := dst.fsm.GetJob(x.dead); j.State(dst.now) != JobDead || j.LastError != "boom" {
		t.Errorf("dead job: %+v", j)
	}
	stale := x.leased
	stale.Token--
	if r := dst.onJob(KindComplete, stale); r.Status != StatusLeaseLost {
		t.Errorf("a stale token at the target: %+v", r)
	}
	if r := dst.onJob(KindComplete, x.leased); r.Status != StatusOK {
		t.Errorf("complete at the target with the moved token: %+v", r)
	}
	for _, want := range []string{x.ready1, x.ready2, x.unique} {
		r := dst.acquire("t", "w", 30*sec)
		if r.JobID != want {
			t.Errorf("acquire at the target: %+v, want %s", r, want)
		}
		if r.Token <= x.maxToken {
			t.Errorf("token %d at the target, not above the source's %d", r.Token, x.maxToken)
		}
	}
	if r := dst.enqueue(shard.NewJobID(shard.JobKeySlot("t", x.uniqueKey), "u2"), "t", func(o *Op) { o.Unique = x.uniqueKey }); r.JobID != x.unique {
		t.Errorf("enqueue with the moved uniqueness key: %+v, want %s", r, x.unique)
	}
	// The schedule's next interval starts as long after the activation as
	// it started after the freeze, to the interval.
	if due, ok := dst.fsm.NextScheduleDue(); !ok || due > activation+x.scheduleDue-freezeClock || due <= activation+x.scheduleDue-freezeClock-10*sec {
		t.Errorf("moved schedule due at %d, %v; want in the interval before %d", due, ok, activation+x.scheduleDue-freezeClock)
	}

	// Repeats are no-ops: the target ends as a copy of it that ticked.
	ticked := twin(t, dst)
	for _, op := range []Op{
		{Kind: KindActivateSlots, Version: moveID},
		{Kind: KindInstallSlots, Version: moveID, Value: string(chunks[1])},
	} {
		if st := dst.one(op).Status; st != StatusOK {
			t.Errorf("%v repeated: %v", op.Kind, st)
		}
		ticked.one(Op{Kind: KindTick})
	}
	if digestOf(t, dst.fsm) != digestOf(t, ticked.fsm) {
		t.Error("repeats changed the target")
	}
	if got := dst.fsm.Moves(); len(got) != 1 || got[0].State != SlotMoveActive || got[0].Chunks != len(chunks) {
		t.Errorf("Moves at the target after activation: %+v", got)
	}
	if got := src.fsm.Moves(); len(got) != 1 || got[0].State != SlotMoveDropped {
		t.Errorf("Moves at the source after the drop: %+v", got)
	}
}

// TestThawRestoresExactly: a freeze and a thaw at one time leave the state
// as two ticks do, also across a snapshot of the frozen state; a thaw later
// gives the frozen jobs the time they spent frozen.
func TestThawRestoresExactly(t *testing.T) {
	src, x := newSource(t)
	ticked := twin(t, src)
	for _, viaSnapshot := range []bool{false, true} {
		a := twin(t, src)
		if st := a.freeze(moveID, moveStart, moveEnd); st != StatusOK {
			t.Fatalf("freeze: %v", st)
		}
		a.export(moveID, 1000)
		if viaSnapshot {
			a = twin(t, a)
		}
		if st := a.slotOp(KindThawSlots, moveID, ""); st != StatusOK {
			t.Fatalf("thaw: %v", st)
		}
		if st := a.slotOp(KindThawSlots, moveID, ""); st != StatusOK {
			t.Fatalf("thaw repeated: %v", st)
		}
		want := twin(t, ticked)
		for range 3 {
			want.one(Op{Kind: KindTick})
		}
		// The same state but for the thaw remembered (so that no later
		// step of the move is taken).
		got, exp := a.fsm.Stats(), want.fsm.Stats()
		got.Applied, exp.Applied = 0, 0
		if got != exp || a.fsm.JobCounts("ct", a.now) != want.fsm.JobCounts("ct", want.now) {
			t.Errorf("thaw (via a snapshot %v) did not restore the state: %+v, want %+v", viaSnapshot, got, exp)
		}
		for _, k := range []string{x.keyIn, x.keyOut} {
			if e, st := a.fsm.Read(k); e != func() Entry { e, _ := want.fsm.Read(k); return e }() || st != StatusOK {
				t.Errorf("key %s after the thaw: %+v %v", k, e, st)
			}
		}
		if m := a.fsm.Moves(); a.fsm.SlotStatus(moveStart) != StatusOK || a.fsm.Stats().Moving != 0 || len(m) != 1 || m[0].State != SlotMoveThawed {
			t.Errorf("after the thaw: slot %v, stats %+v, moves %+v", a.fsm.SlotStatus(moveStart), a.fsm.Stats(), m)
		}
	}

	src.freeze(moveID, moveStart, moveEnd)
	if c := src.fsm.JobCounts("ct", src.now); c != (shard.JobCounts{}) {
		t.Errorf("counts of a topic all frozen: %+v", c)
	}
	src.now += 10 * sec
	src.slotOp(KindThawSlots, moveID, "")
	if c := src.fsm.JobCounts("ct", src.now); c.Done != 1 || c.Ready != 1 {
		t.Errorf("counts of a thawed topic: %+v, want one done and one ready", c)
	}
	if j, _ := src.fsm.GetJob(x.leased.JobID); j.Deadline != x.leased.Deadline+10*sec {
		t.Errorf("thawed lease ends at %d, want %d", j.Deadline, x.leased.Deadline+10*sec)
	}
	if r := src.onJob(KindComplete, x.leased); r.Status != StatusOK {
		t.Errorf("complete after the thaw: %+v", r)
	}
	if r := src.one(Op{Kind: KindSet, Client: "c", Seq: 1, Key: x.keyIn, Value: "in"}); !reflect.DeepEqual(r, x.setResult) {
		t.Errorf("retry after the thaw: %+v, want %+v", r, x.setResult)
	}
}

// TestSlotMoveSnapshots: a snapshot at every stage of a move restores to
// the same state, from which the move goes on as it would have.
func TestSlotMoveSnapshots(t *testing.T) {
	src, _ := newSource(t)
	src.freeze(moveID, moveStart, moveEnd)
	chunks := src.export(moveID, 300)
	if again := twin(t, src).export(moveID, 300); !reflect.DeepEqual(again, chunks) {
		t.Error("the restored source exports other chunks")
	}
	src.slotOp(KindDropSlots, moveID, "")
	if got := twin(t, src).fsm.SlotStatus(moveStart); got != StatusWrongShard {
		t.Errorf("restored source after the drop: slot %v", got)
	}

	dst := newApplier(t)
	dst.now += 3 * sec
	dst.slotOp(KindInstallSlots, moveID, string(chunks[1]))
	partial := twin(t, dst)
	if got := partial.fsm.Moves(); len(got) != 1 || got[0].Installed != 1 || got[0].State != SlotMoveIncoming {
		t.Errorf("restored target, incoming: %+v", got)
	}
	for _, a := range []*applier{dst, partial} {
		for i := range chunks {
			a.slotOp(KindInstallSlots, moveID, string(chunks[i]))
		}
		if st := a.slotOp(KindActivateSlots, moveID, ""); st != StatusOK {
			t.Fatalf("activate: %v", st)
		}
	}
	if digestOf(t, dst.fsm) != digestOf(t, partial.fsm) {
		t.Error("a move resumed from a snapshot of the target ends elsewhere")
	}
	twin(t, dst)
}

// TestSlotMoveRefusals: malformed, overlapping and out-of-turn steps
// change nothing; repeated ones are no-ops.
func TestSlotMoveRefusals(t *testing.T) {
	src, _ := newSource(t)
	src.freeze(moveID, moveStart, moveEnd)
	chunks := src.export(moveID, 1<<20)
	if len(chunks) != 1 {
		t.Fatalf("%d chunks with room for all", len(chunks))
	}
	if _, err := src.fsm.ExportSlots(99, 100); !errors.Is(err, ErrNoMove) {
		t.Errorf("export of an unknown move: %v", err)
	}
	if _, err := src.fsm.ExportSlots(moveID, 0); err == nil {
		t.Error("export with chunks of 0 bytes")
	}
	garbage := append([]byte(nil), chunks[0]...)
	garbage[len(garbage)/2] ^= 0xff
	otherRange := src.export(moveID, 1<<20)[0]
	otherRange[5]++ // the range start
	steps := []struct {
		name string
		op   Op
		want Status
	}{
		{"freeze of move 0", Op{Kind: KindFreezeSlots, Start: moveEnd, End: moveEnd + 1}, StatusInvalid},
		{"freeze of an empty range", Op{Kind: KindFreezeSlots, Version: 8, Start: moveEnd, End: moveEnd}, StatusInvalid},
		{"freeze past the slots", Op{Kind: KindFreezeSlots, Version: 8, Start: moveEnd, End: shard.SlotCount + 1}, StatusInvalid},
		{"overlapping freeze", Op{Kind: KindFreezeSlots, Version: 8, Start: moveEnd - 1, End: moveEnd + 1}, StatusInvalid},
		{"freeze repeated", Op{Kind: KindFreezeSlots, Version: moveID, Start: moveStart, End: moveEnd}, StatusOK},
		{"freeze of the move id over another range", Op{Kind: KindFreezeSlots, Version: moveID, Start: moveEnd, End: moveEnd + 1}, StatusInvalid},
		{"install at the source", Op{Kind: KindInstallSlots, Version: moveID, Value: string(chunks[0])}, StatusInvalid},
		{"activate at the source", Op{Kind: KindActivateSlots, Version: moveID}, StatusInvalid},
		{"thaw of an unknown move, with no range", Op{Kind: KindThawSlots, Version: 99}, StatusInvalid},
		{"drop of an unknown move", Op{Kind: KindDropSlots, Version: 99}, StatusOK},
		{"a second move", Op{Kind: KindFreezeSlots, Version: 8, Start: moveEnd, End: moveEnd + 10}, StatusOK},
		{"drop", Op{Kind: KindDropSlots, Version: moveID}, StatusOK},
		{"drop repeated", Op{Kind: KindDropSlots, Version: moveID}, StatusOK},
		{"freeze repeated after the drop", Op{Kind: KindFreezeSlots, Version: moveID, Start: moveStart, End: moveEnd}, StatusOK},
		{"freeze of gone slots", Op{Kind: KindFreezeSlots, Version: 9, Start: moveStart, End: moveStart + 1}, StatusWrongShard},
		{"thaw after the drop", Op{Kind: KindThawSlots, Version: moveID}, StatusInvalid},
	}
	for _, s := range steps {
		if got := src.one(s.op).Status; got != s.want {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}

	dst := newApplier(t)
	empty := twin(t, dst)
	for _, s := range []struct {
		name string
		op   Op
	}{
		{"garbage", Op{Kind: KindInstallSlots, Version: moveID, Value: string(garbage)}},
		{"empty", Op{Kind: KindInstallSlots, Version: moveID}},
		{"another move's id", Op{Kind: KindInstallSlots, Version: moveID + 1, Value: string(chunks[0])}},
		{"activate before install", Op{Kind: KindActivateSlots, Version: moveID}},
	} {
		if got := dst.one(s.op).Status; got != StatusInvalid {
			t.Errorf("%s: %v, want StatusInvalid", s.name, got)
		}
		empty.one(Op{Kind: KindTick})
	}
	if digestOf(t, dst.fsm) != digestOf(t, empty.fsm) {
		t.Error("refused installs changed the target")
	}
	dst.slotOp(KindInstallSlots, moveID, string(chunks[0]))
	if st := dst.slotOp(KindInstallSlots, moveID, string(otherRange)); st != StatusInvalid {
		t.Errorf("a chunk of the move over another range: %v", st)
	}
	if st := dst.freeze(10, moveStart, moveStart+1); st != StatusInvalid {
		t.Errorf("freeze of incoming slots: %v", st)
	}
	// A drop at the target before activation discards what it installed.
	if st := dst.slotOp(KindDropSlots, moveID, ""); st != StatusOK || dst.fsm.SlotStatus(moveStart) != StatusOK {
		t.Errorf("drop of an incoming move: %v, slot %v", st, dst.fsm.SlotStatus(moveStart))
	}
	if st := dst.slotOp(KindInstallSlots, moveID, string(chunks[0])); st != StatusInvalid {
		t.Errorf("install of a dropped move: %v", st)
	}
}

// TestFinishedMovesBounded: a shard remembers its last maxFinishedMoves
// finished moves, and only their gone marks beyond.
func TestFinishedMovesBounded(t *testing.T) {
	a := newApplier(t)
	const moves = maxFinishedMoves + 36
	for i := range moves {
		a.freeze(uint64(i+1), i, i+1)
		a.slotOp(KindDropSlots, uint64(i+1), "")
	}
	if got := a.fsm.Moves(); len(got) != maxFinishedMoves || got[0].ID != moves-maxFinishedMoves+1 {
		t.Errorf("%d moves remembered, from %+v", len(got), got[0])
	}
	for slot := range moves + 1 {
		if want, got := slot < moves, a.fsm.SlotStatus(slot) == StatusWrongShard; got != want {
			t.Errorf("slot %d gone %v, want %v", slot, got, want)
		}
	}
	twin(t, a)
}

// FuzzInstallSlots: no chunk panics an install; one refused changes
// nothing, and one taken is held as incoming.
func FuzzInstallSlots(f *testing.F) {
	src := newApplier(f)
	src.one(Op{Kind: KindSet, Client: "c", Seq: 1, Key: keyIn("k"), Value: "v"})
	src.enqueue(shard.NewJobID(1, "a"), "t", func(o *Op) { o.Unique = "u" })
	src.acquire("t", "w", sec)
	src.one(Op{Kind: KindEvery, Topic: "t", Unique: nameWithSlot("e", true, func(k string) int { return shard.JobKeySlot("t", k) }), Interval: 10 * sec})
	src.freeze(moveID, moveStart, moveEnd)
	for _, size := range []int{1, 100, 1 << 20} {
		for _, c := range src.export(moveID, size) {
			f.Add(c)
		}
	}
	f.Fuzz(func(t *testing.T, chunk []byte) {
		a := newApplier(t)
		st := a.slotOp(KindInstallSlots, moveID, string(chunk))
		moves := a.fsm.Moves()
		switch {
		case st == StatusOK && (len(moves) != 1 || moves[0].State != SlotMoveIncoming):
			t.Fatalf("installed, but moves %+v", moves)
		case st != StatusOK && (len(moves) != 0 || a.fsm.Stats().Moving != 0):
			t.Fatalf("refused with %v, but moves %+v", st, moves)
		case st == StatusOK && moves[0].Chunks == 1:
			if st := a.slotOp(KindActivateSlots, moveID, ""); st != StatusOK {
				t.Fatalf("activate of a one-chunk move: %v", st)
			}
		}
	})
}

// TestExportWhileApplying: an export reads the frozen state while the
// state machine applies writes and the thaw (run it with -race).
func TestExportWhileApplying(t *testing.T) {
	src, _ := newSource(t)
	src.freeze(moveID, moveStart, moveEnd)
	want := src.export(moveID, 100)
	done := make(chan [][]byte)
	go func() {
		chunks, _ := src.fsm.ExportSlots(moveID, 100)
		done <- chunks
	}()
	src.one(Op{Kind: KindTick})
	src.slotOp(KindThawSlots, moveID, "")
	if got := <-done; got != nil && !reflect.DeepEqual(got, want) {
		t.Error("an export during a thaw cut other chunks")
	}
}

// Read gives a key's entry and its slot's status at one moment: an
// incoming slot says so (its entry means nothing), and once activated the
// entry is there.
func TestReadSeesEntryAndStatusTogether(t *testing.T) {
	src, dst := newApplier(t), newApplier(t)
	const key = "together"
	slot := shard.KeySlot(key)
	src.apply(Op{Kind: KindSet, Key: key, Value: "in"})
	src.freeze(7, slot, slot+1)
	for _, c := range src.export(7, 1<<20) {
		dst.slotOp(KindInstallSlots, 7, string(c))
	}
	if _, st := dst.fsm.Read(key); st != StatusMoving {
		t.Errorf("read of an incoming slot: status %v, want moving", st)
	}
	dst.slotOp(KindActivateSlots, 7, "")
	if e, st := dst.fsm.Read(key); st != StatusOK || e.Value != "in" {
		t.Errorf("read after activation: %+v, status %v", e, st)
	}
	if e, st, locked := dst.fsm.TryRead(key); !locked || st != StatusOK || e.Value != "in" {
		t.Errorf("try-read after activation: %+v, status %v, locked %v", e, st, locked)
	}
}

// A thawed move is undone for good: a freeze or a drop of it that comes
// after (from a driver that did not see the thaw) is refused, and the
// range stays served.
func TestThawedMoveStaysUndone(t *testing.T) {
	a := newApplier(t)
	const key = "stays"
	slot := shard.KeySlot(key)
	a.apply(Op{Kind: KindSet, Key: key, Value: "v"})
	if st := a.freeze(5, slot, slot+1); st != StatusOK {
		t.Fatalf("freeze: %v", st)
	}
	if st := a.slotOp(KindThawSlots, 5, ""); st != StatusOK {
		t.Fatalf("thaw: %v", st)
	}
	if st := a.slotOp(KindThawSlots, 5, ""); st != StatusOK {
		t.Errorf("a second thaw: %v, want OK", st)
	}
	if st := a.freeze(5, slot, slot+1); st != StatusInvalid {
		t.Errorf("a freeze after the thaw: %v, want invalid", st)
	}
	if st := a.slotOp(KindDropSlots, 5, ""); st != StatusInvalid {
		t.Errorf("a drop after the thaw: %v, want invalid", st)
	}
	if e, st := a.fsm.Read(key); st != StatusOK || e.Value != "v" {
		t.Errorf("the key after: %+v, %v", e, st)
	}
	// A dropped move cannot be thawed.
	if st := a.freeze(6, slot, slot+1); st != StatusOK {
		t.Fatalf("freeze again: %v", st)
	}
	a.slotOp(KindDropSlots, 6, "")
	if st := a.slotOp(KindThawSlots, 6, ""); st != StatusInvalid {
		t.Errorf("thaw of a dropped move: %v, want invalid", st)
	}
}

// A move undone before its source froze it is remembered as cancelled: a
// freeze or a drop of it that comes after (from a driver that did not see
// the undo) is refused, so nothing of its range is ever taken out of the
// live state or shipped.
func TestMoveCancelledBeforeFreeze(t *testing.T) {
	a := newApplier(t)
	const key = "kept"
	slot := shard.KeySlot(key)
	a.apply(Op{Kind: KindSet, Key: key, Value: "v"})
	if st := a.slotOp(KindThawSlots, 7, ""); st != StatusInvalid {
		t.Errorf("a thaw of a move never frozen, with no range: %v, want invalid", st)
	}
	if st := a.one(Op{Kind: KindThawSlots, Version: 7, Start: slot, End: slot + 1}).Status; st != StatusOK {
		t.Fatalf("cancel: %v", st)
	}
	want := []SlotMove{{ID: 7, Start: slot, End: slot + 1, State: SlotMoveCancelled}}
	if got := a.fsm.Moves(); !reflect.DeepEqual(got, want) {
		t.Errorf("moves after the cancel: %+v, want %+v", got, want)
	}
	if st := a.one(Op{Kind: KindThawSlots, Version: 7, Start: slot, End: slot + 1}).Status; st != StatusOK {
		t.Errorf("a second cancel: %v, want OK", st)
	}
	if st := a.freeze(7, slot, slot+1); st != StatusInvalid {
		t.Errorf("a freeze after the cancel: %v, want invalid", st)
	}
	if st := a.slotOp(KindDropSlots, 7, ""); st != StatusInvalid {
		t.Errorf("a drop after the cancel: %v, want invalid", st)
	}
	if _, err := a.fsm.ExportSlots(7, 1<<20); !errors.Is(err, ErrNoMove) {
		t.Errorf("export of a cancelled move: %v, want ErrNoMove", err)
	}
	if res := a.one(Op{Kind: KindSet, Key: key, Value: "w"}); res.Status != StatusOK {
		t.Errorf("a write to the range after the cancel: %v", res.Status)
	}
	// The record survives a snapshot, and still refuses the freeze.
	b := twin(t, a)
	if got := b.fsm.Moves(); !reflect.DeepEqual(got, want) {
		t.Errorf("moves after a restore: %+v, want %+v", got, want)
	}
	if st := b.freeze(7, slot, slot+1); st != StatusInvalid {
		t.Errorf("a freeze after the restore: %v, want invalid", st)
	}
	if !SlotMoveCancelled.Undone() || !SlotMoveThawed.Undone() || SlotMoveDropped.Undone() {
		t.Error("Undone: want true for cancelled and thawed only")
	}
}

// A drop at the target of a move none of whose chunks has arrived is
// remembered, so that a chunk still on its way (a shipment the undo did
// not stop) is refused rather than left incoming for good; and a cancel is
// refused for a range that has moved away.
func TestUndoneMoveRefusesLateSteps(t *testing.T) {
	src := newApplier(t)
	const key = "late"
	slot := shard.KeySlot(key)
	src.apply(Op{Kind: KindSet, Key: key, Value: "v"})
	if st := src.freeze(3, slot, slot+1); st != StatusOK {
		t.Fatalf("freeze: %v", st)
	}
	chunks := src.export(3, 1<<20)
	dst := newApplier(t)
	if st := dst.one(Op{Kind: KindDropSlots, Version: 3, Start: slot, End: slot + 1}).Status; st != StatusOK {
		t.Fatalf("drop at the target before any chunk: %v", st)
	}
	if st := dst.slotOp(KindInstallSlots, 3, string(chunks[0])); st != StatusInvalid {
		t.Errorf("a chunk after the drop: %v, want invalid", st)
	}
	if st := dst.fsm.SlotStatus(slot); st != StatusOK {
		t.Errorf("the slot at the target after the refused chunk: %v, want OK (not incoming)", st)
	}
	want := []SlotMove{{ID: 3, Start: slot, End: slot + 1, State: SlotMoveDiscarded}}
	if got := dst.fsm.Moves(); !reflect.DeepEqual(got, want) {
		t.Errorf("the target's moves: %+v, want %+v", got, want)
	}
	if st := dst.slotOp(KindDropSlots, 3, ""); st != StatusOK {
		t.Errorf("the drop repeated: %v, want OK", st)
	}
	// At the source, a move dropped and since forgotten cannot be
	// cancelled: its range is gone from here.
	src.slotOp(KindDropSlots, 3, "")
	for id := uint64(100); id < 100+maxFinishedMoves; id++ {
		src.one(Op{Kind: KindThawSlots, Version: id, Start: 0, End: 1})
	}
	if _, ok := src.fsm.slots.finishedMove(3); ok {
		t.Fatal("the drop is still remembered")
	}
	if st := src.one(Op{Kind: KindThawSlots, Version: 3, Start: slot, End: slot + 1}).Status; st != StatusInvalid {
		t.Errorf("a cancel of slots gone: %v, want invalid", st)
	}
	if st := src.fsm.SlotStatus(slot); st != StatusWrongShard {
		t.Errorf("the slot at the source: %v, want wrong shard", st)
	}
}
