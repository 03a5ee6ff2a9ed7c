package control

import (
	"maps"
	"slices"
	"testing"

	"github.com/shoal-kv/shoal/shard"
)

// shardCounts returns how many shard replicas each member holds.
func shardCounts(c *shard.Cluster) map[string]int {
	counts := map[string]int{}
	for _, n := range c.Nodes {
		counts[n.ID] = len(c.Map.ShardsOf(n.ID))
	}
	return counts
}

func TestDrainPlan(t *testing.T) {
	f := NewFSM()
	mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	index := uint64(2)
	apply := func(cmd Command) *shard.Cluster {
		index++
		return mustApply(t, f, index, cmd)
	}
	if _, ok := NextDrainMove(f.Current()); ok {
		t.Fatal("a move with nothing draining")
	}
	// c holds shards 0 1 2 and the control group; a b hold three
	// replicas each, d two.
	c := apply(Command{Kind: KindDrainNode, ID: "c"})
	if got := Droppable(c); len(got) != 0 {
		t.Fatalf("droppable while c holds replicas: %v", got)
	}
	// Each move goes to the emptiest member, counting the moves already
	// started at their targets.
	want := []shard.Move{
		{Group: 0, From: "c", To: "d"},
		{Group: 1, From: "c", To: "a"},
		{Group: 2, From: "c", To: "b"},
		{Group: shard.ControlGroup, From: "c", To: "d"},
	}
	var started []shard.Move
	for {
		m, ok := NextDrainMove(f.Current())
		if !ok {
			break
		}
		if len(started) == len(want) {
			t.Fatalf("a move after every group of c has one: %+v", m)
		}
		apply(Command{Kind: KindStartMove, Move: &m})
		started = append(started, m)
	}
	if !slices.Equal(started, want) {
		t.Fatalf("moves %+v, want %+v", started, want)
	}
	if got := Droppable(f.Current()); len(got) != 0 {
		t.Fatalf("droppable while moves name c: %v", got)
	}
	for _, m := range started {
		apply(Command{Kind: KindFinishMove, Move: &m})
	}
	done := f.Current()
	if h := done.Holds("c"); len(h) != 0 {
		t.Fatalf("c still holds %v", h)
	}
	if got := shardCounts(done); !maps.Equal(got, map[string]int{"a": 3, "b": 3, "c": 0, "d": 3}) {
		t.Fatalf("shard replicas per node: %v", got)
	}
	if _, ok := NextDrainMove(done); ok {
		t.Fatal("a move once c holds nothing")
	}
	if got := Droppable(done); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("droppable %v, want [c]", got)
	}
	dropped := apply(Command{Kind: KindDropNode, ID: "c"})
	if dropped.Node("c") != nil || !slices.Equal(dropped.Removed, []string{"c"}) || len(Droppable(dropped)) != 0 {
		t.Fatalf("after drop: nodes %v removed %v", dropped.Nodes, dropped.Removed)
	}
}

func TestNextDrainMoveNone(t *testing.T) {
	base := fourNodes(t)
	tests := []struct {
		name string
		c    *shard.Cluster
	}{
		{"nothing draining", base},
		{"every group of the draining node moving", change(t, base, func(c *shard.Cluster) {
			c.Draining = []string{"d"}
			c.Moves = []shard.Move{{Group: 1, From: "b", To: "a"}, {Group: 2, From: "a", To: "b"}}
		})},
		{"no member to take it", change(t, newCluster(t, []string{"a", "b", "c"}, []string{"a", "b", "c"}, 2, 3, []string{"a"}), func(c *shard.Cluster) {
			c.Draining = []string{"c"}
		})},
	}
	for _, tt := range tests {
		if m, ok := NextDrainMove(tt.c); ok {
			t.Errorf("%s: move %+v", tt.name, m)
		}
	}
	// The group of the draining node with no move moves, the others wait.
	c := change(t, base, func(c *shard.Cluster) {
		c.Draining = []string{"d"}
		c.Moves = []shard.Move{{Group: 1, From: "b", To: "a"}}
	})
	if m, ok := NextDrainMove(c); !ok || m != (shard.Move{Group: 2, From: "d", To: "b"}) {
		t.Errorf("move %+v %v, want shard 2 from d to b", m, ok)
	}
}

func TestDroppable(t *testing.T) {
	idle := newCluster(t, []string{"a", "b", "c", "e", "f"}, []string{"a", "b", "c"}, 2, 3, []string{"a"})
	tests := []struct {
		name string
		c    *shard.Cluster
		want []string
	}{
		{"none draining", idle, nil},
		{"idle draining", change(t, idle, func(c *shard.Cluster) { c.Draining = []string{"e", "f"} }), []string{"e", "f"}},
		{"draining a holder", change(t, idle, func(c *shard.Cluster) { c.Draining = []string{"a", "e"} }), []string{"e"}},
		{"draining a move's target", change(t, idle, func(c *shard.Cluster) {
			c.Draining = []string{"e", "f"}
			c.Moves = []shard.Move{{Group: shard.ControlGroup, From: "a", To: "f"}}
		}), []string{"e"}},
	}
	for _, tt := range tests {
		if got := Droppable(tt.c); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestRebalance(t *testing.T) {
	abc := []string{"a", "b", "c"}
	f := NewFSM()
	mustApply(t, f, 1, Command{Kind: KindInit, Cluster: newCluster(t, abc, abc, 6, 3, abc)})
	if m, ok := RebalanceMove(f.Current()); ok {
		t.Fatalf("a move on an even cluster: %+v", m)
	}
	mustApply(t, f, 2, Command{Kind: KindAddNode, Node: &shard.Node{ID: "d", Raft: "d:7000", Client: "d:7001"}})
	index := uint64(2)
	var moves []shard.Move
	for {
		m, ok := RebalanceMove(f.Current())
		if !ok {
			break
		}
		if len(moves) == 18 {
			t.Fatalf("rebalance does not end: %+v", moves)
		}
		moves = append(moves, m)
		index++
		mustApply(t, f, index, Command{Kind: KindStartMove, Move: &m})
		index++
		mustApply(t, f, index, Command{Kind: KindFinishMove, Move: &m})
	}
	c := f.Current()
	// 18 replicas on 4 nodes: 4.5 each, so two hold 4 and two 5.
	if got := shardCounts(c); !maps.Equal(got, map[string]int{"a": 4, "b": 5, "c": 5, "d": 4}) {
		t.Fatalf("shard replicas per node %v after moves %+v", got, moves)
	}
	if len(moves) != 4 {
		t.Errorf("%d moves, want 4: %+v", len(moves), moves)
	}
	for _, m := range moves {
		if m.Group == shard.ControlGroup || m.To != "d" {
			t.Errorf("move %+v: only shards move, and to the new node", m)
		}
	}
	if !slices.Equal(c.Control, abc) {
		t.Errorf("control voters %v moved", c.Control)
	}
}

func TestRebalanceSkipsDrainingAndMoving(t *testing.T) {
	abc := []string{"a", "b", "c"}
	c := newCluster(t, []string{"a", "b", "c", "d"}, abc, 6, 3, abc)
	if m, ok := RebalanceMove(change(t, c, func(c *shard.Cluster) { c.Draining = []string{"d"} })); ok {
		t.Errorf("a move to a draining node: %+v", m)
	}
	// a's first shard is moving, so a gives its next one.
	moving := change(t, c, func(c *shard.Cluster) { c.Moves = []shard.Move{{Group: 0, From: "b", To: "d"}} })
	if m, ok := RebalanceMove(moving); !ok || m != (shard.Move{Group: 1, From: "a", To: "d"}) {
		t.Errorf("move %+v %v, want shard 1 from a to d", m, ok)
	}
	// A move in progress counts at its target: with two shards on a b c,
	// d is sent one, and no more while it is on its way.
	two := newCluster(t, []string{"a", "b", "c", "d"}, abc, 2, 3, abc)
	m, ok := RebalanceMove(two)
	if !ok || m != (shard.Move{Group: 0, From: "a", To: "d"}) {
		t.Fatalf("move %+v %v, want shard 0 from a to d", m, ok)
	}
	if m, ok := RebalanceMove(change(t, two, func(c *shard.Cluster) { c.Moves = []shard.Move{m} })); ok {
		t.Errorf("a second move while d's is in progress: %+v", m)
	}
}
