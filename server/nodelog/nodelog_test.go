package nodelog

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// entry is what the tests append to group g at index i: its content names
// both, so an entry read back from the wrong group or index shows.
func entry(g, i, term uint64) *raft.Log {
	return &raft.Log{
		Index: i, Term: term, Type: raft.LogCommand,
		Data:       fmt.Appendf(nil, "group %d entry %d term %d", g, i, term),
		AppendedAt: time.Unix(1700000000, int64(i)),
	}
}

func appendRange(t testing.TB, l *Log, g, from, to, term uint64) {
	var batch []*raft.Log
	for i := from; i <= to; i++ {
		batch = append(batch, entry(g, i, term))
		if len(batch) == 7 || i == to {
			if err := l.StoreLogs(batch); err != nil {
				t.Error(err)
				return
			}
			batch = batch[:0]
		}
	}
}

// checkLog fails unless group g's log holds exactly the entries from first
// to last, each as entry(g, i, term(i)) made it.
func checkLog(t *testing.T, l *Log, g, first, last uint64, term func(uint64) uint64) {
	t.Helper()
	f, _ := l.FirstIndex()
	la, _ := l.LastIndex()
	if f != first || la != last {
		t.Fatalf("group %d: bounds %d..%d, want %d..%d", g, f, la, first, last)
	}
	for _, i := range []uint64{first - 1, last + 1} {
		var out raft.Log
		if err := l.GetLog(i, &out); i > 0 && !errors.Is(err, raft.ErrLogNotFound) {
			t.Fatalf("group %d: entry %d outside its bounds: %v, %+v", g, i, err, out)
		}
	}
	if first == 0 {
		return
	}
	for i := first; i <= last; i++ {
		var out raft.Log
		if err := l.GetLog(i, &out); err != nil {
			t.Fatalf("group %d entry %d: %v", g, i, err)
		}
		want := entry(g, i, term(i))
		if out.Index != i || out.Term != want.Term || out.Type != want.Type ||
			!bytes.Equal(out.Data, want.Data) || !out.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("group %d entry %d: read %+v, want %+v", g, i, out, want)
		}
	}
}

func term1(uint64) uint64 { return 1 }

// reopen opens the store in dir and sets logs[g] to group g's log in it.
func reopen(t *testing.T, dir string, logs []*Log) *Store {
	t.Helper()
	s := open(t, dir)
	for g := range logs {
		var err error
		if logs[g], err = s.Group(uint64(g)); err != nil {
			s.Close()
			t.Fatal(err)
		}
	}
	return s
}

// Many groups append at once; each group's log then survives a reopen,
// truncations at its head and tail, and the deletion of another group,
// untouched by what happens to the others.
func TestGroupsAreIndependent(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	const groups, entries = 16, 300
	logs := make([]*Log, groups)
	for g := range logs {
		var err error
		if logs[g], err = s.Group(uint64(g)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g, l := range logs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			appendRange(t, l, uint64(g), 1, entries, 1)
		}()
	}
	// Meanwhile group 0's head is truncated as its appends go on, as
	// raft compacts after a snapshot.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			last, _ := logs[0].LastIndex()
			if last >= 100 {
				if err := logs[0].DeleteRange(1, 50); err != nil {
					t.Error(err)
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	checkLog(t, logs[0], 0, 51, entries, term1)
	for g := 1; g < groups; g++ {
		checkLog(t, logs[g], uint64(g), 1, entries, term1)
	}

	// Reopen: every group reads back as it was.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := logs[1].LastIndex(); err != nil {
		t.Fatal(err) // bounds are memory: no error
	}
	var out raft.Log
	if err := logs[1].GetLog(1, &out); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetLog after Close: %v, want ErrClosed", err)
	}
	s = reopen(t, dir, logs)
	defer s.Close()
	checkLog(t, logs[0], 0, 51, entries, term1)
	for g := 1; g < groups; g++ {
		checkLog(t, logs[g], uint64(g), 1, entries, term1)
	}

	// Group 2's tail conflicts with a new leader's: raft deletes it and
	// appends the new term's entries. Group 3 is compacted; group 4 is
	// dropped; the groups between stay as they were.
	if err := logs[2].DeleteRange(201, entries); err != nil {
		t.Fatal(err)
	}
	appendRange(t, logs[2], 2, 201, 250, 2)
	if err := logs[3].DeleteRange(1, entries-10); err != nil {
		t.Fatal(err)
	}
	if err := s.DropGroup(4); err != nil {
		t.Fatal(err)
	}
	if err := logs[4].StoreLogs([]*raft.Log{entry(4, entries+1, 1)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append to a dropped group: %v, want ErrClosed", err)
	}
	term2 := func(i uint64) uint64 {
		if i > 200 {
			return 2
		}
		return 1
	}
	check := func() {
		t.Helper()
		checkLog(t, logs[2], 2, 1, 250, term2)
		checkLog(t, logs[3], 3, entries-9, entries, term1)
		checkLog(t, logs[4], 4, 0, 0, term1)
		for _, g := range []int{1, 5, 15} {
			checkLog(t, logs[g], uint64(g), 1, entries, term1)
		}
		ids, err := s.Groups()
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != groups-1 || ids[3] != 3 || ids[4] != 5 {
			t.Fatalf("groups with entries: %v, want 0 to 15 without 4", ids)
		}
	}
	check()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, dir, logs)
	defer s.Close()
	check()
	// A dropped group starts again from nothing.
	appendRange(t, logs[4], 4, 1, 3, 5)
	checkLog(t, logs[4], 4, 1, 3, func(uint64) uint64 { return 5 })
}

func TestEncodingRoundTrip(t *testing.T) {
	for _, e := range []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte("conf")},
		{Index: 1 << 60, Term: 1 << 62, Type: raft.LogCommand, Data: bytes.Repeat([]byte("x"), 1<<16), Extensions: []byte("ext"), AppendedAt: time.Unix(0, 1)},
		{Index: 2, Term: 3, Type: raft.LogNoop},
	} {
		var out raft.Log
		if err := decode(encode(nil, e), &out); err != nil {
			t.Fatal(err)
		}
		out.Index = e.Index
		if out.Term != e.Term || out.Type != e.Type || !bytes.Equal(out.Data, e.Data) ||
			!bytes.Equal(out.Extensions, e.Extensions) || !out.AppendedAt.Equal(e.AppendedAt) {
			t.Errorf("round trip of %+v gave %+v", e, out)
		}
	}
	good := encode(nil, entry(1, 1, 1))
	for n := range good {
		var out raft.Log
		if err := decode(good[:n], &out); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decoding the first %d of %d bytes: %v, want ErrCorrupt", n, len(good), err)
		}
	}
	if err := decode(append(good, 0), new(raft.Log)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a trailing byte: %v, want ErrCorrupt", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig("x").Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{{}, {Dir: "x", CacheSize: -1, MemTableSize: 4 << 20}, {Dir: "x"}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v validated", c)
		}
	}
}

// Appends from many groups share fsyncs: the figure to compare is ns/op
// against BenchmarkAppend/groups=1, with the same total of appenders.
func BenchmarkAppend(b *testing.B) {
	for _, groups := range []int{1, 8} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			s := open(b, b.TempDir())
			defer s.Close()
			var next [64]uint64
			var mu sync.Mutex
			g := 0
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				id := uint64(g % groups)
				g++
				mu.Unlock()
				l, err := s.Group(id)
				if err != nil {
					b.Error(err)
					return
				}
				for pb.Next() {
					// Appenders of one group serialize in it, as raft's
					// one goroutine per group does.
					mu.Lock()
					next[id]++
					i := next[id]
					mu.Unlock()
					if err := l.StoreLogs([]*raft.Log{entry(id, i, 1)}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// Stats count the log's fsyncs and appends and the time they took.
func TestStats(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	l, err := s.Group(1)
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, l, 1, 1, 70, 1)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// 10 appends of 7, each synced before the next, and the store's id.
	// The appends, one after another, each wait for their sync, so their
	// time holds nearly all the syncs' (the store id's sync aside).
	if st.Syncs < 10 || st.Appends != 10 || st.SyncTime < st.AppendTime/20 || st.SyncTime > 2*st.AppendTime {
		t.Fatalf("after 10 synced appends: %+v", st)
	}
	t.Logf("%+v", st)
}
