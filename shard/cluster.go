package shard

import (
	"fmt"
	"math"
	"slices"
)

// ControlGroup is the id of the control raft group, which replicates the
// Cluster itself. No shard may take it.
const ControlGroup ID = math.MaxUint32

// Cluster is a cluster's metadata as its control group replicates it: the
// nodes with their addresses, the shard map, where the control group's
// own replicas are, and the replica moves in progress. Nodes follow it:
// they open the replicas it assigns them and delete those it no longer
// does. Clients route by its Map.
//
// A Cluster must not be modified once in use; Clone it to build the next.
type Cluster struct {
	// Version orders the metadata: every change makes it one larger. Map's
	// Version is always the same number, so a client that learns of a new
	// version from a heartbeat fetches the whole topology.
	Version uint64 `json:"version"`
	// Nodes lists the members, sorted by ID.
	Nodes []Node `json:"nodes"`
	// Map assigns slots to shards and shards to nodes (the voters of each
	// group once every move in Moves has finished).
	Map *Map `json:"map"`
	// Control lists the nodes holding the control group's voters (1 to 3).
	Control []string `json:"control"`
	// Moves lists the replica moves in progress, at most one per group.
	Moves []Move `json:"moves,omitempty"`
	// SlotMoves lists the slot ranges moving between shards, none of
	// them overlapping.
	SlotMoves []SlotMove `json:"slot_moves,omitempty"`
	// Draining lists the nodes being removed: their replicas are moved
	// away, then they are dropped from Nodes into Removed.
	Draining []string `json:"draining,omitempty"`
	// Removed lists the ids of nodes removed from the cluster. A removed
	// id never rejoins: a node that was removed and restarts on its old
	// data is refused.
	Removed []string `json:"removed,omitempty"`
	// Reconfigured lists the groups whose membership changed since they
	// were created. A replica of such a group never bootstraps: on a node
	// with no state for it, it waits for the group's leader to send it the
	// log, since a configuration made up from the metadata could differ
	// from the first entry of the group's log.
	Reconfigured []ID `json:"reconfigured,omitempty"`
	// Founders lists, for each shard created after the cluster was (by a
	// split), the voters it was created with: they start it, with that
	// configuration, even if it was reconfigured before they first saw
	// it; a shard without its founders listed is started by its voters
	// while it was never reconfigured.
	Founders []Founding `json:"founders,omitempty"`
}

// Founding is the first configuration of a group: its voters.
type Founding struct {
	Group  ID       `json:"group"`
	Voters []string `json:"voters"`
}

// Node is a member of a cluster: its id and the addresses others reach
// it at.
type Node struct {
	ID string `json:"id"`
	// Raft is the TCP address of the node listener, for raft and
	// node-to-node traffic.
	Raft string `json:"raft"`
	// Client is the UDP address clients send requests to.
	Client string `json:"client"`
}

// Move is a replica of Group moving from node From to node To: To joins
// the group as a non-voter, is promoted once it has caught up, and From
// leaves it. A move with no From adds a replica: a pair grows to a trio.
type Move struct {
	Group ID     `json:"group"`
	From  string `json:"from"`
	To    string `json:"to"`
	// Abort says the move is being undone: To leaves the group, and
	// then the move's record goes.
	Abort bool `json:"abort,omitempty"`
}

// SlotMove is the range of slots [Start, End) moving from shard From to
// shard To: From freezes it, ships its state to To and drops it, then the
// map flips it to To (Flipped), and To serves it.
type SlotMove struct {
	// ID names the move in the shards' logs; unique and not zero.
	ID      uint64 `json:"id"`
	From    ID     `json:"from"`
	To      ID     `json:"to"`
	Start   int    `json:"start"`
	End     int    `json:"end"`
	Flipped bool   `json:"flipped,omitempty"`
	// Abort marks a move being undone: its source takes the range back,
	// unless it has dropped it already, and then the record goes.
	Abort bool `json:"abort,omitempty"`
}

// Node returns the member with the given id, or nil.
func (c *Cluster) Node(id string) *Node {
	i, ok := slices.BinarySearchFunc(c.Nodes, id, func(n Node, id string) int {
		switch {
		case n.ID < id:
			return -1
		case n.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return nil
	}
	return &c.Nodes[i]
}

// Voters returns the nodes the metadata lists as group id's voters: the
// control group's or a shard's; nil for an unknown group.
func (c *Cluster) Voters(id ID) []string {
	if id == ControlGroup {
		return c.Control
	}
	if s := c.Map.Shard(id); s != nil {
		return s.Replicas
	}
	return nil
}

// FoundersOf returns the voters group id was created with, if the
// metadata lists them; nil if not.
func (c *Cluster) FoundersOf(id ID) []string {
	for _, f := range c.Founders {
		if f.Group == id {
			return f.Voters
		}
	}
	return nil
}

// MoveOf returns the move in progress of group id, or nil.
func (c *Cluster) MoveOf(id ID) *Move {
	for i := range c.Moves {
		if c.Moves[i].Group == id {
			return &c.Moves[i]
		}
	}
	return nil
}

// Holds returns the groups node holds a replica of, in ascending order
// (ControlGroup last): those it is a voter of, and those a move brings it
// to. A replica the node holds but is not in this list is to be deleted.
func (c *Cluster) Holds(node string) []ID {
	var ids []ID
	for _, s := range c.Map.Shards {
		if slices.Contains(s.Replicas, node) {
			ids = append(ids, s.ID)
		} else if m := c.MoveOf(s.ID); m != nil && m.To == node {
			ids = append(ids, s.ID)
		}
	}
	if slices.Contains(c.Control, node) {
		ids = append(ids, ControlGroup)
	} else if m := c.MoveOf(ControlGroup); m != nil && m.To == node {
		ids = append(ids, ControlGroup)
	}
	return ids
}

// CallsFor reports whether the move of group id in progress calls for
// node to join the group (remove false) or to leave it (remove true): its
// target joins and its source leaves, or, being undone, its target
// leaves.
func (c *Cluster) CallsFor(id ID, remove bool, node string) bool {
	m := c.MoveOf(id)
	switch {
	case m == nil:
		return false
	case !remove:
		return m.To == node && !m.Abort
	case m.Abort:
		return m.To == node
	}
	return m.From == node
}

// Peers returns the nodes that may hold a replica of group id: its voters
// and the target of its move. Only they may send its raft traffic.
func (c *Cluster) Peers(id ID) []string {
	peers := slices.Clone(c.Voters(id))
	if m := c.MoveOf(id); m != nil && !slices.Contains(peers, m.To) {
		peers = append(peers, m.To)
	}
	return peers
}

// Clone returns a deep copy of c, which the caller may change.
func (c *Cluster) Clone() *Cluster {
	d := *c
	d.Nodes = slices.Clone(c.Nodes)
	if c.Map != nil {
		d.Map = c.Map.Clone()
	}
	d.Control = slices.Clone(c.Control)
	d.Moves = slices.Clone(c.Moves)
	d.SlotMoves = slices.Clone(c.SlotMoves)
	d.Draining = slices.Clone(c.Draining)
	d.Removed = slices.Clone(c.Removed)
	d.Reconfigured = slices.Clone(c.Reconfigured)
	d.Founders = slices.Clone(c.Founders)
	for i, f := range d.Founders {
		d.Founders[i].Voters = slices.Clone(f.Voters)
	}
	return &d
}

// Validate reports whether c is well formed: nodes sorted by unique id,
// a valid map of the same version whose replicas and control voters are
// members, no shard taking ControlGroup's id, at most one move per group
// (from one of its voters to a member that is not), and draining nodes
// that are members while removed ones are not.
func (c *Cluster) Validate() error {
	if c.Map == nil {
		return fmt.Errorf("%w: no shard map", ErrInvalidMap)
	}
	if err := c.Map.Validate(); err != nil {
		return err
	}
	if c.Map.Version != c.Version {
		return fmt.Errorf("%w: map version %d, cluster version %d", ErrInvalidMap, c.Map.Version, c.Version)
	}
	for i, n := range c.Nodes {
		if n.ID == "" || n.Raft == "" || n.Client == "" {
			return fmt.Errorf("%w: node %q lacks an id or an address", ErrInvalidMap, n.ID)
		}
		if i > 0 && c.Nodes[i-1].ID >= n.ID {
			return fmt.Errorf("%w: nodes not sorted by unique id at %q", ErrInvalidMap, n.ID)
		}
	}
	for _, s := range c.Map.Shards {
		if s.ID == ControlGroup {
			return fmt.Errorf("%w: shard id %d is the control group's", ErrInvalidMap, s.ID)
		}
		for _, r := range s.Replicas {
			if c.Node(r) == nil {
				return fmt.Errorf("%w: shard %d names unknown node %q", ErrInvalidMap, s.ID, r)
			}
		}
	}
	if n := len(c.Control); n < 1 || n > 3 {
		return fmt.Errorf("%w: %d control voters, want 1 to 3", ErrInvalidMap, n)
	}
	for i, r := range c.Control {
		if c.Node(r) == nil || slices.Contains(c.Control[:i], r) {
			return fmt.Errorf("%w: control voter %q is unknown or listed twice", ErrInvalidMap, r)
		}
	}
	for i, m := range c.Moves {
		voters := c.Voters(m.Group)
		switch {
		case voters == nil:
			return fmt.Errorf("%w: a move of unknown group %d", ErrInvalidMap, m.Group)
		case m.From == "" && len(voters) >= 3:
			return fmt.Errorf("%w: group %d gains a fourth voter", ErrInvalidMap, m.Group)
		case m.From != "" && !slices.Contains(voters, m.From):
			return fmt.Errorf("%w: group %d moves from %q, which holds none of it", ErrInvalidMap, m.Group, m.From)
		case slices.Contains(voters, m.To) || c.Node(m.To) == nil:
			return fmt.Errorf("%w: group %d moves to %q, which holds it already or is no member", ErrInvalidMap, m.Group, m.To)
		}
		for _, o := range c.Moves[:i] {
			if o.Group == m.Group {
				return fmt.Errorf("%w: group %d has two moves", ErrInvalidMap, m.Group)
			}
		}
	}
	for i, m := range c.SlotMoves {
		owner := m.From
		if m.Flipped {
			owner = m.To
		}
		switch {
		case m.ID == 0 || m.From == m.To || c.Map.Shard(m.From) == nil || c.Map.Shard(m.To) == nil:
			return fmt.Errorf("%w: slot move %d from shard %d to %d", ErrInvalidMap, m.ID, m.From, m.To)
		case m.Start < 0 || m.End <= m.Start || m.End > SlotCount:
			return fmt.Errorf("%w: slot move %d of slots [%d,%d)", ErrInvalidMap, m.ID, m.Start, m.End)
		case !c.Map.Owns(owner, m.Start, m.End):
			return fmt.Errorf("%w: slot move %d: shard %d does not own slots [%d,%d)", ErrInvalidMap, m.ID, owner, m.Start, m.End)
		}
		for _, o := range c.SlotMoves[:i] {
			if o.ID == m.ID || o.Start < m.End && m.Start < o.End {
				return fmt.Errorf("%w: slot moves %d and %d overlap or share an id", ErrInvalidMap, o.ID, m.ID)
			}
		}
	}
	for i, f := range c.Founders {
		if c.Map.Shard(f.Group) == nil || len(f.Voters) == 0 {
			return fmt.Errorf("%w: founders of unknown group %d", ErrInvalidMap, f.Group)
		}
		for _, o := range c.Founders[:i] {
			if o.Group == f.Group {
				return fmt.Errorf("%w: group %d has its founders listed twice", ErrInvalidMap, f.Group)
			}
		}
	}
	for _, d := range c.Draining {
		if c.Node(d) == nil {
			return fmt.Errorf("%w: draining node %q is no member", ErrInvalidMap, d)
		}
	}
	for _, r := range c.Removed {
		if c.Node(r) != nil {
			return fmt.Errorf("%w: removed node %q is still a member", ErrInvalidMap, r)
		}
	}
	return nil
}
