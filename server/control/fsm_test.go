package control

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/shoal-kv/shoal/shard"
)

// bufferSink is a raft.SnapshotSink that keeps the snapshot in memory.
type bufferSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *bufferSink) ID() string    { return "buffer" }
func (s *bufferSink) Close() error  { s.closed = true; return nil }
func (s *bufferSink) Cancel() error { s.cancelled = true; return nil }

// snapshotOf persists f's snapshot into a buffer.
func snapshotOf(t *testing.T, f *FSM) *bufferSink {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v", sink.closed, sink.cancelled)
	}
	return sink
}

func TestFSMApply(t *testing.T) {
	f := NewFSM()
	if f.Current() != nil || f.Applied() != 0 {
		t.Fatalf("new FSM: %+v applied %d", f.Current(), f.Applied())
	}
	r := f.Apply(&raft.Log{Index: 3, Data: encode(t, Command{Kind: KindDrainNode, ID: "a"})}).(Result)
	if !isRejected(r.Err) || r.Cluster != nil || f.Applied() != 3 {
		t.Fatalf("before init: %+v applied %d", r, f.Applied())
	}
	c := mustApply(t, f, 4, Command{Kind: KindInit, Cluster: fourNodes(t)})
	if f.Current() != c || c.Version != 1 {
		t.Fatalf("after init: current %+v result %+v", f.Current(), c)
	}
	next := mustApply(t, f, 5, Command{Kind: KindDrainNode, ID: "d"})
	if f.Current() != next || next.Version != 2 || f.Applied() != 5 {
		t.Fatalf("after drain: version %d applied %d", next.Version, f.Applied())
	}
	r = f.Apply(&raft.Log{Index: 6, Data: []byte("garbage")}).(Result)
	if !isRejected(r.Err) || r.Cluster != next || f.Current() != next || f.Applied() != 6 {
		t.Fatalf("garbage: %+v applied %d", r, f.Applied())
	}
	r = f.Apply(&raft.Log{Index: 7, Data: encode(t, Command{Kind: "merge-shards"})}).(Result)
	if !errors.Is(r.Err, ErrUnknownCommand) || f.Current() != next {
		t.Fatalf("unknown kind: %+v", r)
	}
}

func TestSnapshotRestore(t *testing.T) {
	f := NewFSM()
	mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	mustApply(t, f, 2, Command{Kind: KindStartMove, Move: &shard.Move{Group: 1, From: "b", To: "a"}})
	mustApply(t, f, 3, Command{Kind: KindDrainNode, ID: "b"})
	sink := snapshotOf(t, f)

	g := NewFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.Current(), f.Current()) || g.Applied() != 3 {
		t.Fatalf("restored %+v applied %d, want %+v applied 3", g.Current(), g.Applied(), f.Current())
	}

	// The state before init round-trips too.
	empty := snapshotOf(t, NewFSM())
	if err := g.Restore(io.NopCloser(bytes.NewReader(empty.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if g.Current() != nil || g.Applied() != 0 {
		t.Fatalf("restored empty: %+v applied %d", g.Current(), g.Applied())
	}
}

func TestRestoreGarbage(t *testing.T) {
	f := NewFSM()
	c := mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	for _, data := range []string{"", "garbage", `{"cluster":`, `{"applied":1,"cluster":{"version":1}}`, `{"cluster":{"version":2,"map":{"version":1}}}`, `{}`, `{"applied":3}`, `null`, `{"cluster":null} trailing`} {
		if err := f.Restore(io.NopCloser(strings.NewReader(data))); err == nil {
			t.Errorf("restore of %q succeeded", data)
		}
		if f.Current() != c || f.Applied() != 1 {
			t.Errorf("a failed restore of %q changed the state", data)
		}
	}
}

func TestWait(t *testing.T) {
	f := NewFSM()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type waited struct {
		c   *shard.Cluster
		err error
	}
	wait := func(after uint64) <-chan waited {
		ch := make(chan waited, 1)
		go func() {
			c, err := f.Wait(ctx, after)
			ch <- waited{c, err}
		}()
		return ch
	}

	// Init wakes a waiter for anything.
	w := wait(0)
	c := mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	if r := <-w; r.err != nil || r.c != c {
		t.Fatalf("wait for init: %+v", r)
	}
	// A state already newer returns at once.
	if got, err := f.Wait(ctx, 0); err != nil || got != c {
		t.Fatalf("wait for a version already there: %v", err)
	}
	// A no-op does not wake it; the next change does.
	w = wait(1)
	mustApply(t, f, 2, Command{Kind: KindAddNode, Node: &c.Nodes[0]})
	next := mustApply(t, f, 3, Command{Kind: KindDrainNode, ID: "d"})
	if r := <-w; r.err != nil || r.c != next || r.c.Version != 2 {
		t.Fatalf("wait for a change: %+v", r)
	}
	// Restore wakes it.
	w = wait(2)
	g := NewFSM()
	mustApply(t, g, 1, Command{Kind: KindInit, Cluster: change(t, fourNodes(t), func(c *shard.Cluster) { c.Version, c.Map.Version = 9, 9 })})
	if err := f.Restore(io.NopCloser(bytes.NewReader(snapshotOf(t, g).Bytes()))); err != nil {
		t.Fatal(err)
	}
	if r := <-w; r.err != nil || r.c.Version != 9 {
		t.Fatalf("wait for a restore: %+v", r)
	}
	if ctx.Err() != nil {
		t.Fatalf("a waiter was woken only by the test's deadline")
	}
}

func TestWaitHonoursContext(t *testing.T) {
	f := NewFSM()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.Wait(ctx, 0)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	if _, err := f.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}
