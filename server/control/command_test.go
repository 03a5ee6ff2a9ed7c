package control

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/shoal-kv/shoal/shard"
)

func TestCommandApply(t *testing.T) {
	base := fourNodes(t)
	removedZ := change(t, base, func(c *shard.Cluster) { c.Removed = []string{"z"} })
	moving := func(m shard.Move) *shard.Cluster {
		return change(t, base, func(c *shard.Cluster) { c.Moves = []shard.Move{m}; c.Reconfigured = []shard.ID{m.Group} })
	}
	drainingD := change(t, base, func(c *shard.Cluster) { c.Draining = []string{"d"} })
	threeNodes := newCluster(t, []string{"a", "b", "c"}, []string{"a", "b", "c"}, 2, 3, []string{"a"})
	// e is a member that holds nothing.
	idleE := newCluster(t, []string{"a", "b", "c", "e"}, []string{"a", "b", "c"}, 2, 3, []string{"a"})
	drainingE := change(t, idleE, func(c *shard.Cluster) { c.Draining = []string{"e"} })
	drainingEMoving := change(t, drainingE, func(c *shard.Cluster) { c.Moves = []shard.Move{{Group: 0, From: "a", To: "e"}} })
	mv := func(g shard.ID, from, to string) *shard.Move { return &shard.Move{Group: g, From: from, To: to} }
	n := func(id string) *shard.Node { x := node(id); return &x }

	tests := []struct {
		name  string
		state *shard.Cluster
		cmd   Command
		// err is the sentinel the command fails with, or nil.
		err error
		// noop says an accepted command leaves the state as it was.
		noop bool
		// check inspects the state after an accepted change.
		check func(t *testing.T, c *shard.Cluster)
	}{
		{name: "add-node", state: base, cmd: Command{Kind: KindAddNode, Node: n("bb")}, check: func(t *testing.T, c *shard.Cluster) {
			ids := []string{}
			for _, n := range c.Nodes {
				ids = append(ids, n.ID)
			}
			if want := []string{"a", "b", "bb", "c", "d"}; !slices.Equal(ids, want) {
				t.Errorf("nodes %v, want %v", ids, want)
			}
		}},
		{name: "add-node repeated", state: base, cmd: Command{Kind: KindAddNode, Node: n("a")}, noop: true},
		{name: "add-node same id other address", state: base, cmd: Command{Kind: KindAddNode, Node: &shard.Node{ID: "a", Raft: "x:1", Client: "x:2"}}, err: ErrRejected},
		{name: "add-node removed id", state: removedZ, cmd: Command{Kind: KindAddNode, Node: n("z")}, err: ErrRejected},
		{name: "add-node taken raft address", state: base, cmd: Command{Kind: KindAddNode, Node: &shard.Node{ID: "e", Raft: "a:7000", Client: "e:7001"}}, err: ErrRejected},
		{name: "add-node taken client address", state: base, cmd: Command{Kind: KindAddNode, Node: &shard.Node{ID: "e", Raft: "e:7000", Client: "b:7001"}}, err: ErrRejected},
		{name: "add-node without address", state: base, cmd: Command{Kind: KindAddNode, Node: &shard.Node{ID: "e", Raft: "e:7000"}}, err: ErrRejected},
		{name: "add-node without node", state: base, cmd: Command{Kind: KindAddNode}, err: ErrRejected},

		{name: "start-move", state: base, cmd: Command{Kind: KindStartMove, Move: mv(0, "b", "d")}, check: func(t *testing.T, c *shard.Cluster) {
			if m := c.MoveOf(0); m == nil || *m != *mv(0, "b", "d") {
				t.Errorf("move of 0 is %v", m)
			}
			if !slices.Equal(c.Reconfigured, []shard.ID{0}) {
				t.Errorf("reconfigured %v, want [0]", c.Reconfigured)
			}
			if !slices.Equal(c.Peers(0), []string{"a", "b", "c", "d"}) {
				t.Errorf("peers of 0: %v", c.Peers(0))
			}
		}},
		{name: "start-move of the control group", state: base, cmd: Command{Kind: KindStartMove, Move: mv(shard.ControlGroup, "a", "d")}, check: func(t *testing.T, c *shard.Cluster) {
			if !slices.Equal(c.Reconfigured, []shard.ID{shard.ControlGroup}) {
				t.Errorf("reconfigured %v", c.Reconfigured)
			}
		}},
		{name: "start-move repeated", state: moving(*mv(0, "b", "d")), cmd: Command{Kind: KindStartMove, Move: mv(0, "b", "d")}, noop: true},
		{name: "start-move while another", state: moving(*mv(0, "b", "d")), cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "d")}, err: ErrRejected},
		{name: "start-move from a non-voter", state: base, cmd: Command{Kind: KindStartMove, Move: mv(0, "d", "a")}, err: ErrRejected},
		{name: "start-move to a voter", state: base, cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "b")}, err: ErrRejected},
		{name: "start-move to itself", state: base, cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "a")}, err: ErrRejected},
		{name: "start-move to a draining node", state: drainingD, cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "d")}, err: ErrRejected},
		{name: "start-move to a removed node", state: removedZ, cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "z")}, err: ErrRejected},
		{name: "start-move to a stranger", state: base, cmd: Command{Kind: KindStartMove, Move: mv(0, "a", "y")}, err: ErrRejected},
		{name: "start-move of an unknown group", state: base, cmd: Command{Kind: KindStartMove, Move: mv(7, "a", "d")}, err: ErrRejected},
		{name: "start-move without move", state: base, cmd: Command{Kind: KindStartMove}, err: ErrRejected},

		{name: "finish-move keeps voter order", state: moving(*mv(0, "b", "d")), cmd: Command{Kind: KindFinishMove, Move: mv(0, "b", "d")}, check: func(t *testing.T, c *shard.Cluster) {
			if got := c.Voters(0); !slices.Equal(got, []string{"a", "d", "c"}) {
				t.Errorf("voters of 0: %v, want [a d c]", got)
			}
			if len(c.Moves) != 0 || !slices.Equal(c.Reconfigured, []shard.ID{0}) {
				t.Errorf("moves %v reconfigured %v", c.Moves, c.Reconfigured)
			}
		}},
		{name: "finish-move of the control group", state: moving(*mv(shard.ControlGroup, "a", "d")), cmd: Command{Kind: KindFinishMove, Move: mv(shard.ControlGroup, "a", "d")}, check: func(t *testing.T, c *shard.Cluster) {
			if !slices.Equal(c.Control, []string{"d", "b", "c"}) {
				t.Errorf("control %v, want [d b c]", c.Control)
			}
		}},
		{name: "finish-move repeated", state: change(t, base, func(c *shard.Cluster) { c.Map.Shards[0].Replicas = []string{"a", "d", "c"} }), cmd: Command{Kind: KindFinishMove, Move: mv(0, "b", "d")}, noop: true},
		{name: "finish-move while another", state: moving(*mv(0, "a", "d")), cmd: Command{Kind: KindFinishMove, Move: mv(0, "b", "d")}, err: ErrRejected},
		{name: "finish-move never started", state: base, cmd: Command{Kind: KindFinishMove, Move: mv(0, "b", "d")}, err: ErrRejected},
		{name: "finish-move of an unknown group", state: base, cmd: Command{Kind: KindFinishMove, Move: mv(7, "b", "d")}, err: ErrRejected},

		{name: "cancel-move", state: moving(*mv(0, "b", "d")), cmd: Command{Kind: KindCancelMove, Move: mv(0, "b", "d")}, check: func(t *testing.T, c *shard.Cluster) {
			if len(c.Moves) != 0 || !slices.Equal(c.Voters(0), []string{"a", "b", "c"}) {
				t.Errorf("moves %v voters %v", c.Moves, c.Voters(0))
			}
			if !slices.Equal(c.Reconfigured, []shard.ID{0}) {
				t.Errorf("reconfigured %v: the target may have joined", c.Reconfigured)
			}
		}},
		{name: "cancel-move absent", state: base, cmd: Command{Kind: KindCancelMove, Move: mv(0, "b", "d")}, noop: true},
		{name: "cancel-move of another", state: moving(*mv(0, "a", "d")), cmd: Command{Kind: KindCancelMove, Move: mv(0, "b", "d")}, noop: true},

		{name: "drain-node", state: base, cmd: Command{Kind: KindDrainNode, ID: "c"}, check: func(t *testing.T, c *shard.Cluster) {
			if !slices.Equal(c.Draining, []string{"c"}) {
				t.Errorf("draining %v", c.Draining)
			}
		}},
		{name: "drain-node repeated", state: drainingD, cmd: Command{Kind: KindDrainNode, ID: "d"}, noop: true},
		{name: "drain-node leaving too few for the shards", state: threeNodes, cmd: Command{Kind: KindDrainNode, ID: "a"}, err: ErrRejected},
		{name: "drain-node second of four", state: drainingD, cmd: Command{Kind: KindDrainNode, ID: "a"}, err: ErrRejected},
		{name: "drain-node leaving too few for control", state: newCluster(t, []string{"a", "b", "c"}, []string{"a", "b", "c"}, 2, 1, []string{"a", "b", "c"}), cmd: Command{Kind: KindDrainNode, ID: "a"}, err: ErrRejected},
		{name: "drain-node unknown", state: base, cmd: Command{Kind: KindDrainNode, ID: "y"}, err: ErrRejected},
		{name: "drain-node removed", state: removedZ, cmd: Command{Kind: KindDrainNode, ID: "z"}, err: ErrRejected},

		{name: "drop-node", state: drainingE, cmd: Command{Kind: KindDropNode, ID: "e"}, check: func(t *testing.T, c *shard.Cluster) {
			if c.Node("e") != nil || len(c.Draining) != 0 || !slices.Equal(c.Removed, []string{"e"}) {
				t.Errorf("nodes %v draining %v removed %v", c.Nodes, c.Draining, c.Removed)
			}
		}},
		{name: "drop-node repeated", state: removedZ, cmd: Command{Kind: KindDropNode, ID: "z"}, noop: true},
		{name: "drop-node not draining", state: idleE, cmd: Command{Kind: KindDropNode, ID: "e"}, err: ErrRejected},
		{name: "drop-node holding replicas", state: drainingD, cmd: Command{Kind: KindDropNode, ID: "d"}, err: ErrRejected},
		{name: "drop-node a move's target", state: drainingEMoving, cmd: Command{Kind: KindDropNode, ID: "e"}, err: ErrRejected},
		{name: "drop-node unknown", state: base, cmd: Command{Kind: KindDropNode, ID: "y"}, err: ErrRejected},

		{name: "unknown kind", state: base, cmd: Command{Kind: "split-shard"}, err: ErrUnknownCommand},
		{name: "empty kind", state: base, cmd: Command{}, err: ErrUnknownCommand},
		{name: "change before init", cmd: Command{Kind: KindDrainNode, ID: "a"}, err: ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *shard.Cluster
			if tt.state != nil {
				before = tt.state.Clone()
			}
			// Through the log, as raft applies it.
			cmd, err := DecodeCommand(encode(t, tt.cmd))
			if err != nil {
				t.Fatal(err)
			}
			next, err := cmd.Apply(tt.state)
			if !reflect.DeepEqual(tt.state, before) {
				t.Fatalf("Apply modified its input")
			}
			switch {
			case tt.err != nil:
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				if next != tt.state {
					t.Errorf("a refused command changed the state")
				}
				return
			case err != nil:
				t.Fatalf("refused: %v", err)
			case tt.noop:
				if next != tt.state {
					t.Errorf("a repeated command changed the state: %+v", next)
				}
				return
			}
			if next.Version != tt.state.Version+1 || next.Map.Version != next.Version {
				t.Errorf("version %d (map %d) after %d, want one more", next.Version, next.Map.Version, tt.state.Version)
			}
			if err := next.Validate(); err != nil {
				t.Errorf("installed state does not validate: %v", err)
			}
			tt.check(t, next)
			// Applied again, the command changes nothing.
			again, err := cmd.Apply(next)
			if err != nil || again != next {
				t.Errorf("repeat: err %v, changed %v", err, again != next)
			}
		})
	}
}

func TestInitOnlyOnce(t *testing.T) {
	first := fourNodes(t)
	other := newCluster(t, []string{"x", "y"}, []string{"x", "y"}, 1, 2, []string{"x"})
	got, err := Command{Kind: KindInit, Cluster: first}.Apply(nil)
	if err != nil || !reflect.DeepEqual(got, first) || got == first {
		t.Fatalf("init: %v, %+v (want an equal copy)", err, got)
	}
	again, err := Command{Kind: KindInit, Cluster: other}.Apply(got)
	if err != nil || again != got {
		t.Fatalf("a second init: err %v, changed %v", err, again != got)
	}
	zero := change(t, first, func(c *shard.Cluster) { c.Version, c.Map.Version = 0, 0 })
	bad := first.Clone()
	bad.Control = nil
	for name, c := range map[string]*shard.Cluster{"nil": nil, "version 0": zero, "invalid": bad} {
		if _, err := (Command{Kind: KindInit, Cluster: c}).Apply(nil); !isRejected(err) {
			t.Errorf("init of %s: err %v, want ErrRejected", name, err)
		}
	}
}

func TestDecodeGarbage(t *testing.T) {
	for _, data := range []string{"", "{", "not json", `{"kind":7}`, `{"kind":"init","cluster":"x"}`, `[1,2]`} {
		if _, err := DecodeCommand([]byte(data)); !isRejected(err) {
			t.Errorf("decode %q: err %v, want ErrRejected", data, err)
		}
	}
}

// A shard a split creates lists its founders, who start it whatever
// happens to it before they first see it.
func TestCreateShardListsFounders(t *testing.T) {
	f := NewFSM()
	mustApply(t, f, 1, Command{Kind: KindInit, Cluster: fourNodes(t)})
	s := shard.Shard{ID: 9, Replicas: []string{"b", "c"}}
	c := mustApply(t, f, 2, Command{Kind: KindCreateShard, Shard: &s})
	if got := c.FoundersOf(9); !slices.Equal(got, s.Replicas) {
		t.Errorf("founders of the new shard: %v, want %v", got, s.Replicas)
	}
	if got := c.FoundersOf(0); got != nil {
		t.Errorf("founders of a shard of the spec: %v, want none", got)
	}
}

// Slot moves are undone by marking them: those not flipped of the shards
// selected; after its flip a move is past undoing, and a shard with no
// move left to undo is refused.
func TestAbortSlotMoves(t *testing.T) {
	base := fourNodes(t)
	apply := func(c *shard.Cluster, cmd Command) (*shard.Cluster, error) {
		t.Helper()
		next, err := cmd.Apply(c)
		if err == nil && next != c {
			if verr := next.Validate(); verr != nil {
				t.Fatalf("%s: installed state does not validate: %v", cmd.Kind, verr)
			}
		}
		return next, err
	}
	start := func(c *shard.Cluster, from, to shard.ID, a, b int) *shard.Cluster {
		t.Helper()
		next, err := apply(c, Command{Kind: KindStartSlotMove, SlotMove: &shard.SlotMove{From: from, To: to, Start: a, End: b}})
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	one, three := shard.ID(1), shard.ID(3)
	abort := func(from shard.ID, to *shard.ID) Command {
		return Command{Kind: KindAbortSlotMoves, Slots: &SlotMoves{From: from, To: to}}
	}
	// Shard 0 moves slots 0-9 to 1 and 10-19 to 2; shard 1 moves some to 2.
	started := start(start(start(base, 0, 1, 0, 10), 0, 2, 10, 20), 1, 2, base.Map.RangesOf(1)[0].Start, base.Map.RangesOf(1)[0].Start+5)
	aborting, err := apply(started, abort(0, &one))
	if err != nil {
		t.Fatalf("abort: %v", err)
	}
	for _, m := range aborting.SlotMoves {
		if want := m.From == 0 && m.To == 1; m.Abort != want {
			t.Errorf("move %+v after aborting those from 0 to 1: abort %v, want %v", m, m.Abort, want)
		}
	}
	if aborting.Version != started.Version+1 || slices.ContainsFunc(started.SlotMoves, func(m shard.SlotMove) bool { return m.Abort }) {
		t.Errorf("version %d after %d, or the input was modified", aborting.Version, started.Version)
	}
	if again, err := apply(aborting, abort(0, &one)); err != nil || again != aborting {
		t.Errorf("abort repeated: err %v, changed %v", err, again != aborting)
	}
	// The same move started again while it is undone is refused, not
	// taken for a repeat of the one going away.
	if again, err := apply(aborting, Command{Kind: KindStartSlotMove, SlotMove: &shard.SlotMove{From: 0, To: 1, Start: 0, End: 10}}); !errors.Is(err, ErrRejected) || again != aborting {
		t.Errorf("the move started again while undone: err %v, changed %v; want ErrRejected", err, again != aborting)
	}
	if again, err := apply(started, Command{Kind: KindStartSlotMove, SlotMove: &shard.SlotMove{From: 0, To: 1, Start: 0, End: 10}}); err != nil || again != started {
		t.Errorf("the move started again: err %v, changed %v; want a no-op", err, again != started)
	}
	all, err := apply(aborting, abort(0, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all.SlotMoves {
		if want := m.From == 0; m.Abort != want {
			t.Errorf("move %+v after aborting those from 0: abort %v, want %v", m, m.Abort, want)
		}
	}
	id := all.SlotMoves[0].ID
	ended, err := apply(all, Command{Kind: KindEndSlotMove, SlotMove: &shard.SlotMove{ID: id}})
	if err != nil || len(ended.SlotMoves) != 2 || !ended.Map.Owns(0, 0, 10) {
		t.Errorf("end of an undone move: %v, moves %+v, shard 0 owns its slots %v", err, ended.SlotMoves, ended.Map.Owns(0, 0, 10))
	}
	// Flipped, shard 1's move is past undoing.
	flipped, err := apply(started, Command{Kind: KindFlipSlots, SlotMove: &shard.SlotMove{ID: started.SlotMoves[2].ID}})
	if err != nil {
		t.Fatalf("flip: %v", err)
	}
	for name, cmd := range map[string]Command{
		"after the flip":          abort(1, nil),
		"of a shard not moving":   abort(2, nil),
		"to a shard not a target": abort(0, &three),
		"with no selection":       {Kind: KindAbortSlotMoves},
	} {
		if next, err := apply(flipped, cmd); !errors.Is(err, ErrRejected) || next != flipped {
			t.Errorf("abort %s: err %v, changed %v; want ErrRejected, unchanged", name, err, next != flipped)
		}
	}
}
