package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// waitSlotsMoved waits until every running node follows metadata with no
// slot move in progress.
func waitSlotsMoved(t *testing.T, c *servertest.Cluster) {
	t.Helper()
	servertest.WaitFor(t, 60*time.Second, "the slot moves end", func() bool {
		for _, id := range c.Running() {
			if len(c.Node(id).Cluster().SlotMoves) > 0 {
				return false
			}
		}
		return true
	})
}

// A shard holding many keys splits under a write load: no write fails,
// every key reads back, the new shard serves half the slots, and the
// longest a write waited is logged (SHOAL_LONG=1 runs 100,000 keys of
// 100 bytes and holds it to 2 s; CI runs 5,000).
func TestSplitUnderLoad(t *testing.T) {
	keys, long := 5_000, os.Getenv("SHOAL_LONG") != ""
	if long {
		keys = 100_000
	}
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	value := []byte(strings.Repeat("v", 100))
	var wg sync.WaitGroup
	var loadErr atomic.Value
	for w := 0; w < 32; w++ {
		cl := newClient(t, c, client.Config{})
		wg.Go(func() {
			for i := w; i < keys; i += 32 {
				if _, err := cl.Set(ctx, fmt.Sprintf("k%d", i), value); err != nil {
					loadErr.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := loadErr.Load().(error); err != nil {
		t.Fatal(err)
	}

	// Writers time every write until stopped.
	stop := make(chan struct{})
	var longest atomic.Int64
	var failed, written atomic.Int64
	for w := 0; w < 8; w++ {
		cl := newClient(t, c, client.Config{})
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				begin := time.Now()
				_, err := cl.Set(ctx, fmt.Sprintf("w%d-%d", w, i), value)
				if err != nil {
					failed.Add(1)
					t.Errorf("write during the split: %v", err)
					continue
				}
				written.Add(1)
				if d := int64(time.Since(begin)); d > longest.Load() {
					longest.Store(d)
				}
			}
		})
	}
	servertest.WaitFor(t, 10*time.Second, "writes running", func() bool { return written.Load() > 100 })
	_, id, err := c.Node("n1").SplitShard(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitSlotsMoved(t, c)
	before := written.Load()
	servertest.WaitFor(t, 10*time.Second, "writes after the split", func() bool { return written.Load() > before+100 })
	close(stop)
	wg.Wait()
	t.Logf("split shard 0 (%d keys) into %d: %d writes during, %d failed, the longest took %v",
		keys, id, written.Load(), failed.Load(), time.Duration(longest.Load()))
	if long && time.Duration(longest.Load()) > 2*time.Second {
		t.Errorf("a write waited %v during the split, over 2 s", time.Duration(longest.Load()))
	}
	m := c.Metadata()
	if len(m.Map.RangesOf(id)) == 0 || len(m.Map.RangesOf(0)) == 0 {
		t.Fatalf("after the split, ranges %v", m.Map.Ranges)
	}
	waitReady(t, c)
	reader := newClient(t, c, client.Config{})
	for i := 0; i < keys; i++ {
		it, err := reader.Get(ctx, fmt.Sprintf("k%d", i))
		if err != nil || string(it.Value) != string(value) {
			t.Fatalf("key k%d after the split: %q, %v", i, it.Value, err)
		}
	}
	l0, l1 := leader(t, c, 0), leader(t, c, id)
	k0, k1 := l0.ShardStats(0).Keys, l1.ShardStats(id).Keys
	if k0+k1 < keys || k0 == 0 || k1 == 0 {
		t.Errorf("after the split shard 0 holds %d keys and shard %d %d, of %d and more", k0, id, k1, keys)
	}
}

// A write whose first attempt was applied by the shard its slot left is
// answered, when its retry reaches the shard the slot moved to, from the
// session that moved with the slot: not applied again.
func TestRetryAfterSlotMoveAppliesOnce(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	key := keysOf(c.Map(), 0, "once", 1)[0]
	slot := shard.KeySlot(key)
	set := &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "mover", Seq: 1, Ack: 1,
		Args: wire.Args{Key: key, Value: "first"}}
	first := request(t, c, clientAddr(c, "n1"), set)
	if first.Type != wire.TypeResponse {
		t.Fatalf("first attempt: %+v", first.Err)
	}
	if _, err := c.Node("n2").MoveSlots(ctx, shard.SlotMove{From: 0, To: 1, Start: slot, End: slot + 1}); err != nil {
		t.Fatal(err)
	}
	waitSlotsMoved(t, c)
	if got := c.Metadata().Map.SlotShard(slot); got != 1 {
		t.Fatalf("slot %d is shard %d's after the move", slot, got)
	}
	waitReady(t, c)
	executed := leader(t, c, 1).ShardStats(1).Executed
	retry := *set
	retry.TxID, retry.Age = 2, time.Second
	second := request(t, c, clientAddr(c, "n3"), &retry)
	if second.Type != wire.TypeResponse || second.Result.Version != first.Result.Version {
		t.Fatalf("the retry after the move: %+v %+v, want the first attempt's version %d", second.Result, second.Err, first.Result.Version)
	}
	if got := leader(t, c, 1).ShardStats(1).Executed; got != executed {
		t.Errorf("the retry was applied again: shard 1 executed %d writes, %d before", got, executed)
	}
}

// A job leased before its slot moved keeps its lease, and completes with
// its token after; a stale token is refused; tokens keep growing.
func TestJobLeaseSurvivesSlotMove(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	cl := newClient(t, c, client.Config{})
	// Two jobs of shard 0 (their uniqueness keys place them): one is
	// leased, released and leased again, so that its first token is
	// stale.
	for i, n := 0, 0; n < 2; i++ {
		key := fmt.Sprintf("key-%d", i)
		if c.Map().SlotShard(shard.JobKeySlot("t", key)) != 0 {
			continue
		}
		if _, err := cl.Enqueue(ctx, "t", []byte(key), client.EnqueueOptions{Key: key}); err != nil {
			t.Fatal(err)
		}
		n++
	}
	acquire := func() *client.Job {
		t.Helper()
		j, err := cl.Acquire(ctx, "t", time.Minute)
		if err != nil || j == nil {
			t.Fatalf("acquire: %v, %v", j, err)
		}
		return j
	}
	kept, stale := acquire(), acquire()
	if err := cl.Release(ctx, stale); err != nil {
		t.Fatal(err)
	}
	again := acquire()
	if again.ID != stale.ID {
		t.Fatalf("acquired %s again, not %s", again.ID, stale.ID)
	}
	maxToken := max(kept.Token, stale.Token, again.Token)
	// Move every slot of shard 0 to shard 1.
	for _, r := range c.Map().RangesOf(0) {
		if _, err := c.Node("n1").MoveSlots(ctx, shard.SlotMove{From: 0, To: 1, Start: r.Start, End: r.End}); err != nil {
			t.Fatal(err)
		}
		waitSlotsMoved(t, c)
	}
	if len(c.Map().RangesOf(0)) != 0 {
		t.Fatalf("shard 0 still owns %v", c.Map().RangesOf(0))
	}
	if err := cl.Complete(ctx, kept); err != nil {
		t.Errorf("completing a job leased before the move: %v", err)
	}
	if err := cl.Complete(ctx, stale); !errors.Is(err, client.ErrLeaseLost) {
		t.Errorf("completing with a stale token after the move: %v, want ErrLeaseLost", err)
	}
	if err := cl.Complete(ctx, again); err != nil {
		t.Errorf("completing the job's live lease after the move: %v", err)
	}
	if _, err := cl.Enqueue(ctx, "t", []byte("after"), client.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}
	if j := acquire(); j.Token <= maxToken {
		t.Errorf("a token granted after the move, %d, is not above %d, the highest granted before", j.Token, maxToken)
	}
}

// Workers drain a queue while a shard splits and its slots move: every
// job is handed out once and completed once; none is lost or handed out
// twice.
func TestJobsAcrossSplit(t *testing.T) {
	t.Parallel()
	const jobs = 200
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	cl := newClient(t, c, client.Config{})
	for i := 0; i < jobs; i++ {
		if _, err := cl.Enqueue(ctx, "split", []byte(fmt.Sprint(i)), client.EnqueueOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	handed := map[string]int{}
	var done atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wc := newClient(t, c, client.Config{})
		wg.Go(func() {
			for done.Load() < jobs {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				j, err := wc.Acquire(actx, "split", time.Minute)
				cancel()
				if err != nil || j == nil {
					continue // nothing ready now, or the wait ran out
				}
				mu.Lock()
				handed[j.ID]++
				mu.Unlock()
				if err := wc.Complete(ctx, j); err != nil {
					t.Errorf("completing %s: %v", j.ID, err)
				}
				done.Add(1)
			}
		})
	}
	servertest.WaitFor(t, 20*time.Second, "a quarter of the jobs done", func() bool { return done.Load() >= jobs/4 })
	if _, _, err := c.Node("n2").SplitShard(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitSlotsMoved(t, c)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(handed) != jobs {
		t.Errorf("%d distinct jobs handed out, of %d", len(handed), jobs)
	}
	for id, n := range handed {
		if n != 1 {
			t.Errorf("job %s was handed out %d times", id, n)
		}
	}
	st, err := cl.Stats(ctx, "split")
	if err != nil {
		t.Fatal(err)
	}
	if st.Scheduled+st.Ready+st.Leased+st.Dead != 0 {
		t.Errorf("jobs left after all were done: %+v", st)
	}
}

// A slot move to a shard that cannot elect a leader waits without
// freezing anything; undone, it is forgotten at once: the source
// remembers it as cancelled (so no late freeze applies), serves the range
// throughout, and the target, back, holds nothing of it.
func TestSlotMoveToADeadShardIsUndone(t *testing.T) {
	// Shard 0 is on n1 n2 n3, shard 1 on n2 n3 n4, the control group on
	// n1 n2 n3: with n3 and n4 down, shard 1 has no quorum, and the rest
	// has.
	c := servertest.New(t, servertest.Options{Nodes: 4, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	if got := c.Metadata().Voters(1); !slices.Equal(got, []string{"n2", "n3", "n4"}) {
		t.Fatalf("shard 1 is on %v, want n2 n3 n4", got)
	}
	cl := newClient(t, c, client.Config{})
	key := keysOf(c.Map(), 0, "undone", 1)[0]
	slot := shard.KeySlot(key)
	if _, err := cl.Set(ctx, key, []byte("before")); err != nil {
		t.Fatal(err)
	}
	kill(t, c, "n3")
	kill(t, c, "n4")
	// Once its leader has stepped down, shard 1 cannot take a range, and
	// no freeze starts.
	servertest.WaitFor(t, 10*time.Second, "shard 1's leader to step down", func() bool {
		for _, s := range c.Node("n2").Status().Shards {
			if s.ID == 1 && s.State == "Leader" {
				return false
			}
		}
		return true
	})
	before, err := c.Node("n1").MoveSlots(ctx, shard.SlotMove{From: 0, To: 1, Start: slot, End: slot + 1})
	if err != nil {
		t.Fatal(err)
	}
	id := before.SlotMoves[0].ID
	// Undone through a client, as `shoal cluster move-slots --abort` does.
	from, to := shard.ID(0), shard.ID(1)
	var after server.AdminReply
	err = cl.Admin(ctx, server.AdminAbortSlotMoves, &server.AdminArgs{Shard: &from, To: &to}, &after)
	if err != nil || len(after.Cluster.SlotMoves) != 1 || !after.Cluster.SlotMoves[0].Abort {
		t.Fatalf("abort: %v, slot moves %+v", err, after.Cluster)
	}
	waitSlotsMoved(t, c)
	if got := c.Metadata().Map.SlotShard(slot); got != 0 {
		t.Errorf("slot %d is shard %d's after the undo, want 0's", slot, got)
	}
	src := leader(t, c, 0)
	// Cancelled, not thawed: the source never froze the range.
	if got := sourceMove(server.SlotMoves(src, 0), id); got.State != fsm.SlotMoveCancelled {
		t.Errorf("the source holds the move as %+v, want cancelled", got)
	}
	if _, err := cl.Set(ctx, key, []byte("after")); err != nil {
		t.Fatalf("a write to the range after the undo: %v", err)
	}
	if it, err := cl.Get(ctx, key); err != nil || string(it.Value) != "after" {
		t.Errorf("read back: %q, %v", it.Value, err)
	}
	if _, err := c.Node("n1").AbortSlotMoves(ctx, 0, nil); !errors.Is(err, server.ErrRejected) {
		t.Errorf("an abort with no move left: %v, want ErrRejected", err)
	}
	restart(t, c, "n3")
	restart(t, c, "n4")
	waitReady(t, c)
	if got := sourceMove(server.SlotMoves(leader(t, c, 1), 1), id); got.ID != 0 {
		t.Errorf("the target holds %+v of a move it never took part in", got)
	}
}

// sourceMove returns the move with id among moves, or a zero move.
func sourceMove(moves []fsm.SlotMove, id uint64) fsm.SlotMove {
	for _, m := range moves {
		if m.ID == id {
			return m
		}
	}
	return fsm.SlotMove{}
}
