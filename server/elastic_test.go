package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
)

// writeLoad runs writers over every shard until stopped, and records what
// was acknowledged.
type writeLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	acked  map[string]string
}

func startWriteLoad(t *testing.T, c *servertest.Cluster, writers int) *writeLoad {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writeLoad{cancel: cancel, acked: map[string]string{}}
	for i := 0; i < writers; i++ {
		cl := newClient(t, c, client.Config{})
		w.wg.Go(func() {
			for j := 0; ctx.Err() == nil; j++ {
				k, v := fmt.Sprintf("w%d-%d", i, j), fmt.Sprint(j)
				if _, err := cl.Set(ctx, k, []byte(v)); err == nil {
					w.mu.Lock()
					w.acked[k] = v
					w.mu.Unlock()
				}
			}
		})
	}
	t.Cleanup(w.stop)
	return w
}

func (w *writeLoad) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *writeLoad) stop() {
	w.cancel()
	w.wg.Wait()
}

// readBack reads every acknowledged write back through a new client.
func (w *writeLoad) readBack(t *testing.T, c *servertest.Cluster) {
	t.Helper()
	w.stop()
	reader := newClient(t, c, client.Config{})
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, v := range w.acked {
		it, err := reader.Get(context.Background(), k)
		if err != nil || string(it.Value) != v {
			t.Fatalf("acknowledged write %s=%s reads back as %q, %v", k, v, it.Value, err)
		}
	}
	t.Logf("%d acknowledged writes read back", len(w.acked))
}

// waitMoved waits until the metadata every running node follows has no
// move in progress and lists node to among group id's voters.
func waitMoved(t *testing.T, c *servertest.Cluster, id shard.ID, to string) {
	t.Helper()
	servertest.WaitFor(t, 60*time.Second, fmt.Sprintf("the replica of %d moved to %s", id, to), func() bool {
		for _, nid := range c.Running() {
			m := c.Node(nid).Cluster()
			if len(m.Moves) > 0 || !slices.Contains(m.Voters(id), to) {
				return false
			}
		}
		return true
	})
}

// A node joins a cluster under load, and a shard's replica moves to it
// from the shard's leader: every acknowledged write reads back, the new
// node serves the shard, and the node the replica left deletes its data.
func TestMoveReplicaToAJoinedNode(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	load := startWriteLoad(t, c, 4)
	servertest.WaitFor(t, 10*time.Second, "100 writes acknowledged", func() bool { return load.count() >= 100 })

	n4, err := c.AddNode(ctx, "n4")
	if err != nil {
		t.Fatal(err)
	}
	from := leader(t, c, 0).ID()
	if _, err := n4.MoveReplica(ctx, shard.Move{Group: 0, From: from, To: "n4"}); err != nil {
		t.Fatal(err)
	}
	waitMoved(t, c, 0, "n4")
	if m := c.Metadata(); slices.Contains(m.Voters(0), from) || len(m.Voters(0)) != 3 {
		t.Fatalf("shard 0's voters after the move: %v", m.Voters(0))
	}
	servertest.WaitFor(t, 10*time.Second, from+" deletes its replica of shard 0", func() bool {
		_, err := os.Stat(filepath.Join(c.Dir(), from, "shard-0"))
		return os.IsNotExist(err) && !c.Node(from).Holds(0)
	})
	before := load.count()
	servertest.WaitFor(t, 10*time.Second, "100 more writes after the move", func() bool { return load.count() >= before+100 })
	waitReady(t, c)
	load.readBack(t, c)
	if st := n4.ShardStats(0); st.Keys == 0 {
		t.Errorf("n4's replica of shard 0 holds no keys: %+v", st)
	}
}

// A removed node's replicas move to the others, it leaves the metadata,
// deletes its data, stops on its own (Done, with ErrRemoved), and may not
// start again on it.
func TestRemovedNodeIsRefused(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 4, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	load := startWriteLoad(t, c, 2)
	servertest.WaitFor(t, 10*time.Second, "50 writes acknowledged", func() bool { return load.count() >= 50 })
	victim := "n1"
	vn := c.Node(victim)
	if err := vn.Err(); err != nil {
		t.Fatalf("a serving node's Err: %v", err)
	}
	if _, err := c.Node("n2").RemoveNode(ctx, victim); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 90*time.Second, victim+" removed", func() bool {
		for _, nid := range c.Running() {
			if !slices.Contains(c.Node(nid).Cluster().Removed, victim) {
				return false
			}
		}
		return true
	})
	servertest.WaitFor(t, 10*time.Second, victim+" deletes its replicas", func() bool {
		entries, err := os.ReadDir(filepath.Join(c.Dir(), victim))
		if err != nil {
			return false
		}
		for _, e := range entries {
			if e.IsDir() && (e.Name() == "control" || len(e.Name()) > 6 && e.Name()[:6] == "shard-") {
				return false
			}
		}
		return true
	})
	select {
	case <-vn.Done():
		if err := vn.Err(); !errors.Is(err, server.ErrRemoved) {
			t.Errorf("the removed node's Err: %v, want ErrRemoved", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the removed node's Done did not close")
	}
	m := c.Metadata()
	for _, s := range m.Map.Shards {
		if len(s.Replicas) != 3 || slices.Contains(s.Replicas, victim) {
			t.Errorf("shard %d's replicas after the removal: %v", s.ID, s.Replicas)
		}
	}
	if len(m.Control) != 3 || slices.Contains(m.Control, victim) {
		t.Errorf("control voters after the removal: %v", m.Control)
	}
	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	if err := vn.Err(); !errors.Is(err, server.ErrRemoved) {
		t.Errorf("the removed node's Err after Close: %v, want ErrRemoved still", err)
	}
	if _, err := c.Restart(ctx, victim); !errors.Is(err, server.ErrRemoved) {
		t.Fatalf("restarting a removed node: %v, want ErrRemoved", err)
	}
	waitReady(t, c)
	load.readBack(t, c)
}

// A replica move completes, losing no acknowledged write, when the node it
// leaves, the node it goes to, the shard's leader or the control group's
// leader is killed in the middle of it; the victim, restarted, follows.
func TestMoveSurvivesKills(t *testing.T) {
	for _, victim := range []string{"source", "target", "shard leader", "control leader"} {
		t.Run(victim, func(t *testing.T) {
			// Shard 0 is on n1, n2, n3; shard 1 on n2, n3, n4.
			c := servertest.New(t, servertest.Options{Nodes: 4, Shards: 2, Replicas: 3, Raft: failoverTiming})
			ctx := context.Background()
			load := startWriteLoad(t, c, 2)
			servertest.WaitFor(t, 10*time.Second, "50 writes acknowledged", func() bool { return load.count() >= 50 })
			lead := leader(t, c, 0).ID()
			from := lead
			if victim == "shard leader" {
				from = otherThan(lead, "n1", "n2", "n3")
			}
			var killed string
			switch victim {
			case "source":
				killed = from
			case "target":
				killed = "n4"
			case "shard leader":
				killed = lead
			case "control leader":
				servertest.WaitFor(t, 10*time.Second, "a control leader", func() bool { return controlLeader(c) != "" })
				killed = controlLeader(c)
			}
			if _, err := c.Node(otherThan(killed, "n1", "n2", "n3", "n4")).MoveReplica(ctx, shard.Move{Group: 0, From: from, To: "n4"}); err != nil {
				t.Fatal(err)
			}
			servertest.WaitFor(t, 10*time.Second, "n4 opens a replica of shard 0", func() bool { return c.Node("n4").Holds(0) })
			if err := c.Kill(killed); err != nil {
				t.Fatal(err)
			}
			if victim == "target" {
				if _, err := c.Restart(ctx, killed); err != nil {
					t.Fatal(err)
				}
			}
			waitMoved(t, c, 0, "n4")
			if victim != "target" {
				if _, err := c.Restart(ctx, killed); err != nil {
					t.Fatal(err)
				}
				waitMoved(t, c, 0, "n4")
			}
			servertest.WaitFor(t, 10*time.Second, from+" deletes its replica of shard 0", func() bool {
				_, err := os.Stat(filepath.Join(c.Dir(), from, "shard-0"))
				return os.IsNotExist(err) && !c.Node(from).Holds(0)
			})
			waitReady(t, c)
			load.readBack(t, c)
		})
	}
}

// otherThan returns the first of ids that is not not.
func otherThan(not string, ids ...string) string {
	for _, id := range ids {
		if id != not {
			return id
		}
	}
	return ""
}

// controlLeader returns the running node whose control replica leads, or "".
func controlLeader(c *servertest.Cluster) string {
	for _, id := range c.Running() {
		if n := c.Node(id); n != nil && n.LeadsControl() {
			return id
		}
	}
	return ""
}

// A pair grows into a trio online (a move with no source), and then
// serves through the loss of one of its first two nodes.
func TestPairGrowsIntoATrio(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 2, Raft: failoverTiming})
	ctx := context.Background()
	load := startWriteLoad(t, c, 2)
	servertest.WaitFor(t, 10*time.Second, "50 writes acknowledged", func() bool { return load.count() >= 50 })
	voters := c.Metadata().Voters(0)
	var third string
	for _, id := range []string{"n1", "n2", "n3"} {
		if !slices.Contains(voters, id) {
			third = id
		}
	}
	if _, err := c.Node(voters[0]).MoveReplica(ctx, shard.Move{Group: 0, To: third}); err != nil {
		t.Fatal(err)
	}
	waitMoved(t, c, 0, third)
	if got := c.Metadata().Voters(0); len(got) != 3 {
		t.Fatalf("voters after the growth: %v", got)
	}
	if _, err := c.Node(voters[0]).MoveReplica(ctx, shard.Move{Group: 0, To: "n9"}); !errors.Is(err, server.ErrRejected) {
		t.Errorf("a fourth replica: %v, want ErrRejected", err)
	}
	kill(t, c, leader(t, c, 0).ID())
	before := load.count()
	servertest.WaitFor(t, 10*time.Second, "writes after the loss of a node", func() bool { return load.count() >= before+50 })
	load.readBack(t, c)
}

// A node that missed metadata changes while it was down catches up as
// soon as it restarts: the control voter it asks answers with the newer
// metadata it has at once, rather than waiting for a change newer still
// (of which, in a quiet cluster, there is none).
func TestRestartedNodeCatchesUpMetadata(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 5, Shards: 2, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	m := c.Metadata()
	// The victim holds no control voter, so it asks one; the move (not
	// servertest's spec, which a restart starts from) tells it of the change.
	var victim, from, to string
	var group shard.ID
	for _, id := range c.Running() {
		if !slices.Contains(m.Control, id) {
			victim = id
		}
	}
	for _, s := range m.Map.Shards {
		for _, id := range c.Running() {
			if id != victim && !slices.Contains(s.Replicas, id) {
				group, from, to = s.ID, otherThan(victim, s.Replicas...), id
			}
		}
	}
	if victim == "" || to == "" {
		t.Fatalf("no victim or move in %+v", m)
	}
	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Node(to).MoveReplica(ctx, shard.Move{Group: group, From: from, To: to}); err != nil {
		t.Fatal(err)
	}
	waitMoved(t, c, group, to)
	want := c.Metadata().Version
	n, err := c.Restart(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	// Well within the metadata poll (10 s), which a node that has to wait
	// for the next change runs out of.
	servertest.WaitFor(t, 5*time.Second, fmt.Sprintf("%s follows the metadata of version %d", victim, want), func() bool {
		return n.Cluster().Version >= want
	})
}

// A move whose target is dead is undone once the target has not answered
// for Config.MoveTargetTimeout, or at once by AbortMove: the shard keeps
// its voters, and serves.
func TestMoveIsUndone(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 4, Shards: 2, Replicas: 3, Raft: failoverTiming,
		Configure: func(cfg *server.Config) { cfg.MoveTargetTimeout = time.Second }})
	ctx := context.Background()
	before := c.Metadata().Voters(0) // n1 n2 n3
	waitUndone := func(what string) {
		t.Helper()
		servertest.WaitFor(t, 30*time.Second, what, func() bool {
			for _, id := range c.Running() {
				if m := c.Node(id).Cluster(); len(m.Moves) > 0 || !slices.Equal(m.Voters(0), before) {
					return false
				}
			}
			return true
		})
	}
	// n4 is dead: the move to it is undone on its own.
	kill(t, c, "n4")
	if _, err := c.Node("n1").MoveReplica(ctx, shard.Move{Group: 0, From: "n1", To: "n4"}); err != nil {
		t.Fatal(err)
	}
	waitUndone("the move to a dead node undone")
	// Undone by hand, at once.
	if _, err := c.Node("n2").MoveReplica(ctx, shard.Move{Group: 0, From: "n2", To: "n4"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Node("n3").AbortMove(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitUndone("the move undone by hand")
	if _, err := c.Node("n3").AbortMove(ctx, 0); !errors.Is(err, server.ErrRejected) {
		t.Errorf("undoing no move: %v, want ErrRejected", err)
	}
	restart(t, c, "n4")
	waitReady(t, c)
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Set(ctx, "after-undo", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// Done closes once Close has stopped a node, whose Err stays nil: its owner
// stopped it.
func TestDoneClosesOnClose(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Insecure: true})
	n := c.Node("n1")
	select {
	case <-n.Done():
		t.Fatal("Done closed while the node serves")
	default:
	}
	if err := c.Kill("n1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.Done():
	default:
		t.Fatal("Done still open after Close returned")
	}
	if err := n.Err(); err != nil {
		t.Errorf("Err after Close: %v, want nil", err)
	}
}
