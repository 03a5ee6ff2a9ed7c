package control

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/shoal-kv/shoal/shard"
)

// NextDrainMove returns the next move that empties a draining node: of
// the first group (shards in id order, then ControlGroup) a draining
// node is a voter of and that has no move in progress, to the member not
// draining that holds the fewest replicas (ties by id) and is no voter
// of the group. It returns false if there is none: no draining node
// holds a voter, the groups that would move all have moves in progress,
// or no member can take them.
// Nodes in avoid (those that did not answer lately) are not targets.
func NextDrainMove(c *shard.Cluster, avoid ...string) (shard.Move, bool) {
	for _, d := range c.Draining {
		for _, g := range groups(c) {
			voters := c.Voters(g)
			if !slices.Contains(voters, d) || c.MoveOf(g) != nil {
				continue
			}
			if to, ok := emptiest(c, append(slices.Clone(voters), avoid...)); ok {
				return shard.Move{Group: g, From: d, To: to}, true
			}
		}
	}
	return shard.Move{}, false
}

// emptiest returns the member not draining and not in exclude that
// holds the fewest replicas, ties by id.
func emptiest(c *shard.Cluster, exclude []string) (string, bool) {
	best, bestHolds := "", 0
	for _, n := range c.Nodes { // sorted by id, so the first of a tie wins
		if slices.Contains(exclude, n.ID) || slices.Contains(c.Draining, n.ID) {
			continue
		}
		if h := len(c.Holds(n.ID)); best == "" || h < bestHolds {
			best, bestHolds = n.ID, h
		}
	}
	return best, best != ""
}

// Droppable returns the draining nodes that hold nothing and that no
// move names: those a drop-node command removes.
func Droppable(c *shard.Cluster) []string {
	var ids []string
	for _, d := range c.Draining {
		if len(c.Holds(d)) == 0 && !namedByMove(c, d) {
			ids = append(ids, d)
		}
	}
	return ids
}

// RebalanceMove returns a move that brings the members' shard replica
// counts (moves in progress counted at their targets; the control group
// not counted) closer to even: from the member not draining that holds
// the most to the one that holds the fewest, of the first shard the
// source is a voter of and the target is not, with no move in progress.
// Ties go by node id; if the most and fewest differ by less than two
// there is no such move. When that pair shares every movable shard, the
// next pairs (by the same order) that differ by two or more are tried.
func RebalanceMove(c *shard.Cluster) (shard.Move, bool) {
	type load struct {
		id     string
		shards int
	}
	var loads []load
	for _, n := range c.Nodes {
		if slices.Contains(c.Draining, n.ID) {
			continue
		}
		h := c.Holds(n.ID)
		shards := len(h)
		if len(h) > 0 && h[len(h)-1] == shard.ControlGroup {
			shards--
		}
		loads = append(loads, load{n.ID, shards})
	}
	// loads is in id order, so the stable sorts break ties by id.
	most := slices.Clone(loads)
	slices.SortStableFunc(most, func(a, b load) int { return cmp.Compare(b.shards, a.shards) })
	fewest := slices.Clone(loads)
	slices.SortStableFunc(fewest, func(a, b load) int { return cmp.Compare(a.shards, b.shards) })
	for _, from := range most {
		for _, to := range fewest {
			if from.shards-to.shards < 2 {
				break
			}
			if m, ok := movableShard(c, from.id, to.id); ok {
				return m, true
			}
		}
	}
	return shard.Move{}, false
}

// movableShard returns the move of the first shard from is a voter of
// and to is not, with no move in progress.
func movableShard(c *shard.Cluster, from, to string) (shard.Move, bool) {
	for _, s := range c.Map.Shards {
		if slices.Contains(s.Replicas, from) && !slices.Contains(s.Replicas, to) && c.MoveOf(s.ID) == nil {
			return shard.Move{Group: s.ID, From: from, To: to}, true
		}
	}
	return shard.Move{}, false
}

// ErrCannotSplit is returned (wrapped) by Split for a shard that cannot
// split: unknown, owning a single slot, or with slots moving.
var ErrCannotSplit = errors.New("control: the shard cannot split")

// splitParts bounds the slot moves a split makes of the range it moves.
// Requests to a range pause while it moves, for as long as its state
// takes to ship (about 3 MB/s on a 2-core machine under load): in 16
// parts, half of a shard of 100,000 keys of 100 bytes pauses about 0.2 s
// at a time rather than 2.5 s at once.
const splitParts = 16

// Split plans the split of shard id: a new shard, with the next free id
// and as many replicas as id's on the emptiest members, and the moves of
// the upper half of id's largest range of slots to it, in up to
// splitParts parts in slot order.
func Split(c *shard.Cluster, id shard.ID) (shard.Shard, []shard.SlotMove, error) {
	s := c.Map.Shard(id)
	if s == nil {
		return shard.Shard{}, nil, fmt.Errorf("%w: no shard %d", ErrCannotSplit, id)
	}
	for _, m := range c.SlotMoves {
		if m.From == id || m.To == id {
			return shard.Shard{}, nil, fmt.Errorf("%w: shard %d has slots moving (move %d)", ErrCannotSplit, id, m.ID)
		}
	}
	var largest shard.Range
	for _, r := range c.Map.RangesOf(id) {
		if r.End-r.Start > largest.End-largest.Start {
			largest = r
		}
	}
	if largest.End-largest.Start < 2 {
		return shard.Shard{}, nil, fmt.Errorf("%w: shard %d owns no range of two slots or more", ErrCannotSplit, id)
	}
	next := shard.Shard{ID: c.Map.Shards[len(c.Map.Shards)-1].ID + 1}
	for range s.Replicas {
		n, ok := emptiest(c, next.Replicas)
		if !ok {
			break
		}
		next.Replicas = append(next.Replicas, n)
	}
	if len(next.Replicas) != len(s.Replicas) {
		return shard.Shard{}, nil, fmt.Errorf("%w: not %d members to hold a new shard", ErrCannotSplit, len(s.Replicas))
	}
	var moves []shard.SlotMove
	mid := largest.Start + (largest.End-largest.Start)/2
	size := max((largest.End-mid+splitParts-1)/splitParts, 1)
	for start := mid; start < largest.End; start += size {
		moves = append(moves, shard.SlotMove{From: id, To: next.ID, Start: start, End: min(start+size, largest.End)})
	}
	return next, moves, nil
}
