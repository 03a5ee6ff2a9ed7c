package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/server/control"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Cluster changes are commands to the control group, which any node
// carries there: from the Go API below, or from a client's wire.OpCluster
// (shoal cluster add-node, move, remove-node, rebalance, status). Each is
// idempotent, and each returns once the metadata records it: the control
// group's leader then carries it out (mover.go), and callers that want to
// wait for the end watch the metadata (Node.Cluster, or the "info"
// command) until the move is gone from it.

// The commands of wire.OpCluster, in Args.Key; Args.Value holds their
// AdminArgs as JSON, and Result.Value the AdminReply.
const (
	// AdminInfo asks for the metadata.
	AdminInfo = "info"
	// AdminAddNode adds AdminArgs.Node as a member.
	AdminAddNode = "add-node"
	// AdminMove moves AdminArgs.Move's replica.
	AdminMove = "move"
	// AdminAbortMove undoes the move of AdminArgs.Move's group.
	AdminAbortMove = "abort-move"
	// AdminRemoveNode removes node AdminArgs.ID, moving its replicas away
	// first.
	AdminRemoveNode = "remove-node"
	// AdminRebalance starts a move towards even replica counts, if one
	// would help; AdminReply.Started says whether it did.
	AdminRebalance = "rebalance"
	// AdminSplit splits shard AdminArgs.Shard (Node.SplitShard);
	// AdminReply.Shard is the new shard.
	AdminSplit = "split"
	// AdminMoveSlots moves AdminArgs.Slots (Node.MoveSlots).
	AdminMoveSlots = "move-slots"
	// AdminAbortSlotMoves undoes the slot moves from shard
	// AdminArgs.Shard, to shard AdminArgs.To if given
	// (Node.AbortSlotMoves).
	AdminAbortSlotMoves = "abort-slot-moves"
)

// AdminArgs are the arguments of a wire.OpCluster command.
type AdminArgs struct {
	Node  *shard.Node     `json:"node,omitempty"`
	Move  *shard.Move     `json:"move,omitempty"`
	ID    string          `json:"id,omitempty"`
	Shard *shard.ID       `json:"shard,omitempty"`
	To    *shard.ID       `json:"to,omitempty"`
	Slots *shard.SlotMove `json:"slots,omitempty"`
}

// AdminReply answers a wire.OpCluster command.
type AdminReply struct {
	// Cluster is the metadata after the command.
	Cluster *shard.Cluster `json:"cluster"`
	// Spec is the cluster as a spec: what a joining node starts with.
	Spec *Spec `json:"spec"`
	// Started, for AdminRebalance, says whether a move started.
	Started bool `json:"started,omitempty"`
	// Shard, for AdminSplit, is the new shard.
	Shard shard.ID `json:"shard,omitempty"`
}

// LeadsControl reports whether the node's replica of the control group
// leads it: the node drives the cluster's changes.
func (n *Node) LeadsControl() bool {
	cr := n.current().control
	return cr != nil && cr.raft.State() == raft.Leader
}

// Cluster returns the cluster metadata the node follows. It must not be
// modified.
func (n *Node) Cluster() *shard.Cluster { return n.current().cluster }

// AddNode adds nd to the cluster, or does nothing if it is a member with
// the same addresses: it may then start, with the metadata returned
// (KeepMetadata), and receive replicas. An id that was removed may not
// return, nor one CheckNodeID refuses (ErrRejected).
func (n *Node) AddNode(ctx context.Context, nd shard.Node) (*shard.Cluster, error) {
	// Checked here, not in the control group's state machine, whose
	// replicas must all accept the same entries whatever their version.
	if err := CheckNodeID(nd.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return n.controlApply(ctx, control.Command{Kind: control.KindAddNode, Node: &nd})
}

// MoveReplica starts moving the replica of group m.Group (a shard, or
// shard.ControlGroup) from node m.From to node m.To, or does nothing if
// that move is in progress. With no m.From, it adds a replica on m.To to a
// group of one or two: a pair grows into a trio. It returns once the move is recorded; the
// move has ended when the metadata lists m.To among the group's voters
// and no move of the group.
func (n *Node) MoveReplica(ctx context.Context, m shard.Move) (*shard.Cluster, error) {
	return n.controlApply(ctx, control.Command{Kind: control.KindStartMove, Move: &m})
}

// AbortMove starts undoing the move of group id: its target leaves the
// group, and the record goes; the group keeps its voters. A move whose
// source has left the group already finishes instead. It returns once
// the undoing is recorded; it has ended when the metadata has no move of
// the group.
func (n *Node) AbortMove(ctx context.Context, id shard.ID) (*shard.Cluster, error) {
	return n.controlApply(ctx, control.Command{Kind: control.KindAbortMove, Move: &shard.Move{Group: id}})
}

// RemoveNode starts removing node id: its replicas move to the other
// nodes, one group at a time, and then it leaves the metadata for its
// list of removed nodes. It works while id is down, as long as each group
// it holds a replica of keeps a quorum. It returns once the removal is
// recorded; it has ended when the metadata lists id as removed.
func (n *Node) RemoveNode(ctx context.Context, id string) (*shard.Cluster, error) {
	return n.controlApply(ctx, control.Command{Kind: control.KindDrainNode, ID: id})
}

// Rebalance starts one move that brings the nodes' replica counts closer
// to even, and reports whether it started one: none does when the counts
// differ by at most one, or a move is in progress. Call it again once the
// move has ended, until it starts none.
func (n *Node) Rebalance(ctx context.Context) (*shard.Cluster, bool, error) {
	c := n.current().cluster
	if len(c.Moves) > 0 || len(c.Draining) > 0 {
		return c, false, nil
	}
	m, ok := control.RebalanceMove(c)
	if !ok {
		return c, false, nil
	}
	c, err := n.MoveReplica(ctx, m)
	return c, err == nil, err
}

// KeepMetadata keeps c in dataDir as the metadata a node started there
// begins with: a node that joins a cluster starts from the metadata its
// AddNode returned, which names it a member.
func KeepMetadata(dataDir string, c *shard.Cluster) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return saveMetadata(dataDir, c)
}

// SpecOf returns the spec of cluster c, with the settings of base (raft
// timing, log store, secret ids) and the listen addresses base gives its
// nodes: the spec a node joining c starts with, and the one `shoal
// cluster` keeps in its directory.
func SpecOf(c *shard.Cluster, base *Spec) *Spec {
	s := &Spec{Shards: c.Map.Clone().Shards, Ranges: slices.Clone(c.Map.Ranges), MapVersion: c.Version,
		Raft: base.Raft, LogStore: base.LogStore, SecretIDs: slices.Clone(base.SecretIDs)}
	for _, nd := range c.Nodes {
		ns := NodeSpec{ID: nd.ID, Raft: nd.Raft, Client: nd.Client}
		if old := base.Node(nd.ID); old != nil && old.Raft == nd.Raft && old.Client == nd.Client {
			ns.RaftListen, ns.ClientListen = old.RaftListen, old.ClientListen
		}
		s.Nodes = append(s.Nodes, ns)
	}
	return s
}

// admin serves a wire.OpCluster query.
func (n *Node) admin(ctx context.Context, m *wire.Message) *wire.Message {
	var args AdminArgs
	if m.Args.Value != "" {
		if err := json.Unmarshal([]byte(m.Args.Value), &args); err != nil {
			return errorReply(wire.CodeBadRequest, "cluster command %q: arguments: %v", m.Args.Key, err)
		}
	}
	reply := AdminReply{Cluster: n.current().cluster}
	var err error
	switch cmd := m.Args.Key; {
	case cmd == AdminInfo:
	case cmd == AdminAddNode && args.Node != nil:
		reply.Cluster, err = n.AddNode(ctx, *args.Node)
	case cmd == AdminMove && args.Move != nil:
		reply.Cluster, err = n.MoveReplica(ctx, *args.Move)
	case cmd == AdminAbortMove && args.Move != nil:
		reply.Cluster, err = n.AbortMove(ctx, args.Move.Group)
	case cmd == AdminRemoveNode && args.ID != "":
		reply.Cluster, err = n.RemoveNode(ctx, args.ID)
	case cmd == AdminRebalance:
		reply.Cluster, reply.Started, err = n.Rebalance(ctx)
	case cmd == AdminSplit && args.Shard != nil:
		reply.Cluster, reply.Shard, err = n.SplitShard(ctx, *args.Shard)
	case cmd == AdminMoveSlots && args.Slots != nil:
		reply.Cluster, err = n.MoveSlots(ctx, *args.Slots)
	case cmd == AdminAbortSlotMoves && args.Shard != nil:
		reply.Cluster, err = n.AbortSlotMoves(ctx, *args.Shard, args.To)
	default:
		return errorReply(wire.CodeBadRequest, "unknown cluster command %q, or its arguments are missing", cmd)
	}
	if err != nil {
		code := wire.CodeUnavailable
		if errors.Is(err, ErrRejected) {
			code = wire.CodeBadRequest
		}
		return errorReply(code, "cluster command %q: %v", m.Args.Key, err)
	}
	reply.Spec = SpecOf(reply.Cluster, n.cfg.Spec)
	b, err := json.Marshal(reply)
	if err != nil {
		return errorReply(wire.CodeServer, "cluster command %q: %v", m.Args.Key, err)
	}
	return resultReply(wire.Result{Value: string(b)})
}
