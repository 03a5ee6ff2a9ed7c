package control

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/shoal-kv/shoal/shard"
)

// Kind names what a Command does.
type Kind string

// The kinds of Command. Each lists the Command fields it reads.
const (
	// KindInit installs Cluster as the bootstrap metadata, if there is none.
	KindInit Kind = "init"
	// KindAddNode adds Node as a member.
	KindAddNode Kind = "add-node"
	// KindStartMove records Move as in progress.
	KindStartMove Kind = "start-move"
	// KindFinishMove replaces Move.From by Move.To among the group's voters
	// (adds Move.To, for a move with no From) and drops the move record.
	KindFinishMove Kind = "finish-move"
	// KindCancelMove drops the record of Move.
	KindCancelMove Kind = "cancel-move"
	// KindAbortMove marks the move of Move.Group (from Move.From to
	// Move.To, if To is given) as being undone (shard.Move.Abort).
	KindAbortMove Kind = "abort-move"
	// KindDrainNode marks member ID as draining.
	KindDrainNode Kind = "drain-node"
	// KindDropNode moves draining member ID, which holds nothing, into
	// Removed.
	KindDropNode Kind = "drop-node"
	// KindCreateShard adds Shard, with replicas and no slots, to the map.
	KindCreateShard Kind = "create-shard"
	// KindStartSlotMove records SlotMove, whose ID must be zero, as in
	// progress, under the ID of the version it makes; a repeat (the same
	// shards and slots) is a no-op, unless that move is being undone.
	KindStartSlotMove Kind = "start-slot-move"
	// KindFlipSlots assigns SlotMove's slots to its target shard and
	// marks it flipped: its source has dropped them.
	KindFlipSlots Kind = "flip-slots"
	// KindEndSlotMove drops the record of SlotMove once flipped and its
	// target serves the slots; or, not flipped, once the source took
	// them back.
	KindEndSlotMove Kind = "end-slot-move"
	// KindAbortSlotMoves marks the slot moves Slots selects that are not
	// flipped as being undone (shard.SlotMove.Abort).
	KindAbortSlotMoves Kind = "abort-slot-moves"
)

// ErrRejected is returned (wrapped with the reason) for a command the
// state refuses: one whose arguments do not fit the state, whose result
// would not validate, or that does not decode.
var ErrRejected = errors.New("control: command rejected")

// ErrUnknownCommand is returned (wrapped) for a command of a kind this
// version does not know.
var ErrUnknownCommand = errors.New("control: unknown command")

// Command is one entry of the control group's log: a Kind and the
// arguments that kind reads (the others are left empty).
type Command struct {
	Kind Kind `json:"kind"`
	// Cluster is init's bootstrap metadata.
	Cluster *shard.Cluster `json:"cluster,omitempty"`
	// Node is add-node's new member.
	Node *shard.Node `json:"node,omitempty"`
	// Move is the move of start-move, finish-move and cancel-move.
	Move *shard.Move `json:"move,omitempty"`
	// ID is the member drain-node and drop-node name.
	ID string `json:"id,omitempty"`
	// Shard is create-shard's new shard.
	Shard *shard.Shard `json:"shard,omitempty"`
	// SlotMove is the move of start-slot-move, flip-slots and
	// end-slot-move.
	SlotMove *shard.SlotMove `json:"slot_move,omitempty"`
	// Slots selects the slot moves of abort-slot-moves.
	Slots *SlotMoves `json:"slots,omitempty"`
}

// SlotMoves selects slot moves: those from shard From, and to shard *To
// if To is set.
type SlotMoves struct {
	From shard.ID  `json:"from"`
	To   *shard.ID `json:"to,omitempty"`
}

// Match reports whether m is one of the moves s selects.
func (s SlotMoves) Match(m shard.SlotMove) bool {
	return m.From == s.From && (s.To == nil || m.To == *s.To)
}

// Encode returns c as a log entry's data.
func (c Command) Encode() ([]byte, error) {
	return json.Marshal(c)
}

// DecodeCommand parses a log entry's data. Data that is not a JSON
// command is refused with ErrRejected.
func DecodeCommand(data []byte) (Command, error) {
	var c Command
	if err := json.Unmarshal(data, &c); err != nil {
		return Command{}, fmt.Errorf("%w: undecodable command: %w", ErrRejected, err)
	}
	return c, nil
}

// Apply returns the state after c is applied to cur (nil before init):
// a new Cluster if c changes it, cur itself if c is a no-op. cur is not
// modified. On error the state stays cur.
func (c Command) Apply(cur *shard.Cluster) (*shard.Cluster, error) {
	if c.Kind == KindInit {
		return c.init(cur)
	}
	var change func(cur *shard.Cluster) (*shard.Cluster, error)
	switch c.Kind {
	case KindAddNode:
		change = c.addNode
	case KindStartMove:
		change = c.startMove
	case KindFinishMove:
		change = c.finishMove
	case KindCancelMove:
		change = c.cancelMove
	case KindAbortMove:
		change = c.abortMove
	case KindDrainNode:
		change = c.drainNode
	case KindDropNode:
		change = c.dropNode
	case KindCreateShard:
		change = c.createShard
	case KindStartSlotMove:
		change = c.startSlotMove
	case KindFlipSlots:
		change = c.flipSlots
	case KindEndSlotMove:
		change = c.endSlotMove
	case KindAbortSlotMoves:
		change = c.abortSlotMoves
	default:
		return cur, fmt.Errorf("%w: kind %q", ErrUnknownCommand, c.Kind)
	}
	if cur == nil {
		return nil, fmt.Errorf("%w: %s before init", ErrRejected, c.Kind)
	}
	if cur.Version == math.MaxUint64 {
		return cur, fmt.Errorf("%w: version %d cannot grow", ErrRejected, cur.Version)
	}
	next, err := change(cur)
	if err != nil {
		return cur, fmt.Errorf("%w: %s: %w", ErrRejected, c.Kind, err)
	}
	if next == cur {
		return cur, nil
	}
	next.Version = cur.Version + 1
	next.Map.Version = next.Version
	if err := next.Validate(); err != nil {
		return cur, fmt.Errorf("%w: %s leaves invalid metadata: %w", ErrRejected, c.Kind, err)
	}
	return next, nil
}

// init installs the bootstrap metadata if there is none yet.
func (c Command) init(cur *shard.Cluster) (*shard.Cluster, error) {
	if cur != nil && cur.Version != 0 {
		return cur, nil
	}
	switch {
	case c.Cluster == nil:
		return cur, fmt.Errorf("%w: init without metadata", ErrRejected)
	case c.Cluster.Version < 1:
		return cur, fmt.Errorf("%w: init at version 0, want 1 or more", ErrRejected)
	}
	if err := c.Cluster.Validate(); err != nil {
		return cur, fmt.Errorf("%w: init: %w", ErrRejected, err)
	}
	return c.Cluster.Clone(), nil
}

// The changes below return cur for a no-op, a Clone of cur with the
// change made for a change (Apply sets its version and validates it), or
// the reason for a refusal (Apply wraps it with ErrRejected).

func (c Command) addNode(cur *shard.Cluster) (*shard.Cluster, error) {
	n := c.Node
	switch {
	case n == nil:
		return nil, errors.New("no node given")
	case slices.Contains(cur.Removed, n.ID):
		return nil, fmt.Errorf("node %q was removed and may not rejoin", n.ID)
	}
	if m := cur.Node(n.ID); m != nil {
		if *m == *n {
			return cur, nil
		}
		return nil, fmt.Errorf("node %q is a member with addresses raft %s client %s", n.ID, m.Raft, m.Client)
	}
	for _, m := range cur.Nodes {
		if m.Raft == n.Raft || m.Client == n.Client {
			return nil, fmt.Errorf("node %q has an address of member %q", n.ID, m.ID)
		}
	}
	next := cur.Clone()
	i, _ := slices.BinarySearchFunc(next.Nodes, n.ID, func(m shard.Node, id string) int { return cmp.Compare(m.ID, id) })
	next.Nodes = slices.Insert(next.Nodes, i, *n)
	return next, nil
}

func (c Command) startMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.Move
	if m == nil {
		return nil, errors.New("no move given")
	}
	voters := cur.Voters(m.Group)
	if voters == nil {
		return nil, fmt.Errorf("unknown group %d", m.Group)
	}
	if o := cur.MoveOf(m.Group); o != nil {
		if *o == *m {
			return cur, nil
		}
		return nil, fmt.Errorf("group %d is moving from %q to %q", m.Group, o.From, o.To)
	}
	switch {
	case m.From == "" && len(voters) >= 3:
		return nil, fmt.Errorf("group %d has %d voters: a replica is added only to a pair or a single one", m.Group, len(voters))
	case m.From != "" && !slices.Contains(voters, m.From):
		return nil, fmt.Errorf("%q is no voter of group %d", m.From, m.Group)
	case slices.Contains(voters, m.To):
		return nil, fmt.Errorf("%q is a voter of group %d already", m.To, m.Group)
	case slices.Contains(cur.Removed, m.To):
		return nil, fmt.Errorf("target %q was removed", m.To)
	case cur.Node(m.To) == nil:
		return nil, fmt.Errorf("target %q is no member", m.To)
	case slices.Contains(cur.Draining, m.To):
		return nil, fmt.Errorf("target %q is draining", m.To)
	}
	next := cur.Clone()
	next.Moves = append(next.Moves, *m)
	if i, found := slices.BinarySearch(next.Reconfigured, m.Group); !found {
		next.Reconfigured = slices.Insert(next.Reconfigured, i, m.Group)
	}
	return next, nil
}

func (c Command) finishMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.Move
	if m == nil {
		return nil, errors.New("no move given")
	}
	voters := cur.Voters(m.Group)
	if voters == nil {
		return nil, fmt.Errorf("unknown group %d", m.Group)
	}
	o := cur.MoveOf(m.Group)
	switch {
	case o == nil && slices.Contains(voters, m.To) && (m.From == "" || !slices.Contains(voters, m.From)):
		return cur, nil
	case o == nil:
		return nil, fmt.Errorf("group %d has no move from %q to %q", m.Group, m.From, m.To)
	case *o != *m:
		return nil, fmt.Errorf("group %d is moving from %q to %q", m.Group, o.From, o.To)
	}
	next := cur.Clone()
	// Replacing in place keeps the order of the other voters, which a
	// shard's replica list uses to spread leaders.
	if m.From == "" {
		// A replica added: the group's voters grow by one.
		if m.Group == shard.ControlGroup {
			next.Control = append(next.Control, m.To)
		} else {
			s := next.Map.Shard(m.Group)
			s.Replicas = append(s.Replicas, m.To)
		}
		next.Moves = dropMove(next.Moves, m.Group)
		return next, nil
	}
	v := next.Voters(m.Group)
	v[slices.Index(v, m.From)] = m.To
	next.Moves = dropMove(next.Moves, m.Group)
	return next, nil
}

func (c Command) cancelMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.Move
	if m == nil {
		return nil, errors.New("no move given")
	}
	if o := cur.MoveOf(m.Group); o == nil || *o != *m {
		return cur, nil
	}
	// The group stays in Reconfigured: the target may have joined it as a
	// non-voter before the move was undone.
	next := cur.Clone()
	next.Moves = dropMove(next.Moves, m.Group)
	return next, nil
}

func (c Command) abortMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.Move
	if m == nil {
		return nil, errors.New("no move given")
	}
	o := cur.MoveOf(m.Group)
	switch {
	case o == nil:
		return nil, fmt.Errorf("group %d has no move", m.Group)
	case m.To != "" && (o.From != m.From || o.To != m.To):
		return nil, fmt.Errorf("group %d is moving from %q to %q", m.Group, o.From, o.To)
	case o.Abort:
		return cur, nil
	}
	next := cur.Clone()
	next.MoveOf(m.Group).Abort = true
	return next, nil
}

func (c Command) drainNode(cur *shard.Cluster) (*shard.Cluster, error) {
	switch {
	case slices.Contains(cur.Removed, c.ID):
		return nil, fmt.Errorf("node %q was removed", c.ID)
	case cur.Node(c.ID) == nil:
		return nil, fmt.Errorf("node %q is no member", c.ID)
	case slices.Contains(cur.Draining, c.ID):
		return cur, nil
	}
	// Every group keeps its voter count, so its replicas need as many
	// members that are not leaving.
	staying := len(cur.Nodes) - len(cur.Draining) - 1
	for _, g := range groups(cur) {
		if n := len(cur.Voters(g)); n > staying {
			return nil, fmt.Errorf("draining %q would leave %d members not draining, and group %s has %d voters", c.ID, staying, groupName(g), n)
		}
	}
	next := cur.Clone()
	i, _ := slices.BinarySearch(next.Draining, c.ID)
	next.Draining = slices.Insert(next.Draining, i, c.ID)
	return next, nil
}

func (c Command) dropNode(cur *shard.Cluster) (*shard.Cluster, error) {
	switch {
	case slices.Contains(cur.Removed, c.ID):
		return cur, nil
	case cur.Node(c.ID) == nil:
		return nil, fmt.Errorf("node %q is no member", c.ID)
	case !slices.Contains(cur.Draining, c.ID):
		return nil, fmt.Errorf("node %q is not draining", c.ID)
	case len(cur.Holds(c.ID)) > 0:
		return nil, fmt.Errorf("node %q still holds groups %v", c.ID, cur.Holds(c.ID))
	case namedByMove(cur, c.ID):
		return nil, fmt.Errorf("node %q is named by a move", c.ID)
	}
	next := cur.Clone()
	next.Nodes = slices.DeleteFunc(next.Nodes, func(n shard.Node) bool { return n.ID == c.ID })
	next.Draining = slices.DeleteFunc(next.Draining, func(id string) bool { return id == c.ID })
	i, _ := slices.BinarySearch(next.Removed, c.ID)
	next.Removed = slices.Insert(next.Removed, i, c.ID)
	return next, nil
}

func (c Command) createShard(cur *shard.Cluster) (*shard.Cluster, error) {
	s := c.Shard
	switch {
	case s == nil:
		return nil, errors.New("no shard given")
	case s.ID >= shard.ControlGroup:
		return nil, fmt.Errorf("shard id %d is reserved", s.ID)
	case len(s.Replicas) < 1 || len(s.Replicas) > 3:
		return nil, fmt.Errorf("shard %d has %d replicas, want 1 to 3", s.ID, len(s.Replicas))
	}
	if o := cur.Map.Shard(s.ID); o != nil {
		if slices.Equal(o.Replicas, s.Replicas) {
			return cur, nil
		}
		return nil, fmt.Errorf("shard %d exists with replicas %v", s.ID, o.Replicas)
	}
	for _, r := range s.Replicas {
		if slices.Contains(cur.Draining, r) {
			return nil, fmt.Errorf("replica node %q is draining", r)
		}
	}
	next := cur.Clone()
	i, _ := slices.BinarySearchFunc(next.Map.Shards, s.ID, func(o shard.Shard, id shard.ID) int { return cmp.Compare(o.ID, id) })
	next.Map.Shards = slices.Insert(next.Map.Shards, i, shard.Shard{ID: s.ID, Replicas: slices.Clone(s.Replicas)})
	next.Founders = append(next.Founders, shard.Founding{Group: s.ID, Voters: slices.Clone(s.Replicas)})
	return next, nil
}

func (c Command) startSlotMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.SlotMove
	if m == nil {
		return nil, errors.New("no slot move given")
	}
	if m.Flipped || m.ID != 0 {
		return nil, errors.New("a slot move starts unflipped, and the control group names it")
	}
	for _, o := range cur.SlotMoves {
		if o.From == m.From && o.To == m.To && o.Start == m.Start && o.End == m.End {
			if o.Abort {
				return nil, fmt.Errorf("slot move %d of these slots is being undone: start it again once it has ended", o.ID)
			}
			return cur, nil
		}
	}
	next := cur.Clone()
	// The version the change makes names the move: no other move ever
	// had it, so the shards' logs cannot mistake one move for another.
	started := *m
	started.ID = cur.Version + 1
	next.SlotMoves = append(next.SlotMoves, started)
	return next, nil // Validate checks the range, the shards and overlaps
}

func (c Command) flipSlots(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.SlotMove
	if m == nil {
		return nil, errors.New("no slot move given")
	}
	o := slotMoveOf(cur, m.ID)
	switch {
	case o == nil:
		return nil, fmt.Errorf("no slot move %d", m.ID)
	case o.Flipped:
		return cur, nil
	}
	next := cur.Clone()
	next.Map.Ranges = next.Map.Assign(o.Start, o.End, o.To)
	slotMoveOf(next, m.ID).Flipped = true
	return next, nil
}

func (c Command) endSlotMove(cur *shard.Cluster) (*shard.Cluster, error) {
	m := c.SlotMove
	if m == nil {
		return nil, errors.New("no slot move given")
	}
	if slotMoveOf(cur, m.ID) == nil {
		return cur, nil
	}
	next := cur.Clone()
	next.SlotMoves = slices.DeleteFunc(next.SlotMoves, func(o shard.SlotMove) bool { return o.ID == m.ID })
	return next, nil
}

func (c Command) abortSlotMoves(cur *shard.Cluster) (*shard.Cluster, error) {
	if c.Slots == nil {
		return nil, errors.New("no slot moves selected")
	}
	var next *shard.Cluster
	marked := false
	for i, m := range cur.SlotMoves {
		switch {
		case !c.Slots.Match(m) || m.Flipped:
		case m.Abort:
			marked = true
		default:
			if next == nil {
				next = cur.Clone()
			}
			next.SlotMoves[i].Abort = true
		}
	}
	switch {
	case next != nil:
		return next, nil
	case marked:
		return cur, nil
	}
	return nil, fmt.Errorf("shard %d has no slot move in progress that can be undone", c.Slots.From)
}

// slotMoveOf returns the slot move of c with id, or nil.
func slotMoveOf(c *shard.Cluster, id uint64) *shard.SlotMove {
	for i := range c.SlotMoves {
		if c.SlotMoves[i].ID == id {
			return &c.SlotMoves[i]
		}
	}
	return nil
}

// dropMove returns moves without the move of group.
func dropMove(moves []shard.Move, group shard.ID) []shard.Move {
	return slices.DeleteFunc(moves, func(m shard.Move) bool { return m.Group == group })
}

// namedByMove reports whether a move of c names node as source or target.
func namedByMove(c *shard.Cluster, node string) bool {
	return slices.ContainsFunc(c.Moves, func(m shard.Move) bool { return m.From == node || m.To == node })
}

// groups returns c's groups: its shards in id order, then ControlGroup.
func groups(c *shard.Cluster) []shard.ID {
	ids := make([]shard.ID, 0, len(c.Map.Shards)+1)
	for _, s := range c.Map.Shards {
		ids = append(ids, s.ID)
	}
	return append(ids, shard.ControlGroup)
}

// groupName names group g for a message.
func groupName(g shard.ID) string {
	if g == shard.ControlGroup {
		return "control"
	}
	return fmt.Sprint(g)
}
