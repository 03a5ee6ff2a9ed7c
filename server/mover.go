package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/server/control"
	"github.com/shoal-kv/shoal/shard"
)

// A replica moves from node From to node To of a group as the control
// group's leader drives it (drive), one raft configuration change at a
// time, each proposed to the group's leader with the index of the
// configuration it was based on (raft's prevIndex), so that two drivers
// (a control leader and its successor) cannot both apply a change:
//
//  1. the move is recorded in the metadata (start-move): To opens a
//     replica with no state, which waits for the leader;
//  2. To joins the group as a non-voter and catches up from the leader;
//  3. once its log reaches the leader's commit index, To becomes a voter;
//  4. if From leads, it hands leadership to To;
//  5. From is removed from the group;
//  6. the metadata makes To a voter in From's place (finish-move), and
//     From closes and deletes its replica.
//
// Each step looks at the group's configuration as its leader has it and
// does what that configuration still lacks, so a driver that crashed
// anywhere is followed by one that goes on from there. The group never has
// fewer voters than it started with: To votes before From leaves.

// configIndex tracks the latest configuration a group's state machine has
// applied, with its index, which raft does not tell: a state machine that
// implements raft.ConfigurationStore hears of each, and a batching one
// finds them among its entries.
type configIndex struct {
	mu     sync.Mutex
	index  uint64
	config raft.Configuration
}

// StoreConfiguration implements raft.ConfigurationStore.
func (c *configIndex) StoreConfiguration(index uint64, config raft.Configuration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index > c.index {
		c.index, c.config = index, config.Clone()
	}
}

// latest returns the latest configuration applied and its index.
func (c *configIndex) latest() (uint64, raft.Configuration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index, c.config.Clone()
}

// configFSM and batchingConfigFSM add configIndex to a state machine,
// keeping its batching if it has it.
type configFSM struct {
	raft.FSM
	*configIndex
}

type batchingConfigFSM struct {
	raft.BatchingFSM
	*configIndex
}

// ApplyBatch records the index of the configurations in logs, which a
// batching state machine is given with its commands, and applies the
// batch.
func (b batchingConfigFSM) ApplyBatch(logs []*raft.Log) []any {
	for _, l := range logs {
		if l.Type == raft.LogConfiguration {
			b.StoreConfiguration(l.Index, raft.DecodeConfiguration(l.Data))
		}
	}
	return b.BatchingFSM.ApplyBatch(logs)
}

// withConfigIndex wraps sm to track its configuration index in ci.
func withConfigIndex(sm raft.FSM, ci *configIndex) raft.FSM {
	if b, ok := sm.(raft.BatchingFSM); ok {
		return batchingConfigFSM{b, ci}
	}
	return configFSM{sm, ci}
}

// appliedConfig returns the latest configuration this replica has
// applied, and its index: from its state machine or, if it came in the
// last snapshot, from that.
func (g *raftGroup) appliedConfig() (uint64, raft.Configuration) {
	idx, conf := g.configs.latest()
	if metas, err := g.snaps.List(); err == nil && len(metas) > 0 && metas[0].ConfigurationIndex > idx {
		idx, conf = metas[0].ConfigurationIndex, metas[0].Configuration
	}
	return idx, conf
}

// MembersRequest asks a node about its replica of Group.
type MembersRequest struct {
	Group shard.ID
}

// Member is one server of a group's raft configuration.
type Member struct {
	ID    string
	Voter bool
}

// MembersReply answers a MembersRequest: the replica's progress and, if it
// leads, the group's configuration.
type MembersReply struct {
	// Leader is set if the replica leads the group and has applied every
	// entry committed before its term, the latest configuration's among
	// them; only then are Members and ConfigIndex the group's.
	Leader      bool
	Members     []Member
	ConfigIndex uint64
	// CommitIndex, LastIndex and Applied are the replica's own.
	CommitIndex, LastIndex, Applied uint64
	Err                             string
}

// Members serves a MembersRequest from a peer.
func (s *nodeService) Members(req MembersRequest, reply *MembersReply) error {
	n := s.n
	if !n.started.Load() {
		reply.Err = fmt.Sprintf("node %s is starting", n.id)
		return nil
	}
	g := n.current().group(req.Group)
	if g == nil {
		reply.Err = fmt.Sprintf("node %s holds no replica of %s", n.id, groupName(req.Group))
		return nil
	}
	reply.LastIndex = g.raft.LastIndex()
	reply.Applied = g.raft.AppliedIndex()
	reply.CommitIndex = g.raft.CommitIndex()
	if g.raft.State() != raft.Leader {
		return nil
	}
	// The leader has applied every configuration committed before its
	// term once it is ready in it (a shard's replica), or once a barrier
	// applies (the control group's, whose changes are rare).
	ctx, cancel := context.WithTimeout(n.ctx, controlCallTimeout)
	defer cancel()
	var err error
	if rep := n.replica(req.Group); rep != nil && rep.raftGroup == g {
		_, err = rep.waitReady(ctx)
	} else {
		err = awaitFuture(g.raft.Barrier(controlCallTimeout), g.closing)
	}
	if err != nil {
		reply.Err = fmt.Sprintf("node %s: %v", n.id, err)
		return nil
	}
	// A change appended but not committed (a driver that lost the
	// control group's leadership may have proposed it) must commit
	// before the next is based on the configuration: until then the
	// group's configuration is in doubt.
	index, applied := g.appliedConfig()
	latest := g.raft.GetConfiguration().Configuration()
	if !slices.Equal(latest.Servers, applied.Servers) {
		reply.Err = fmt.Sprintf("node %s: %s has a configuration change in flight", n.id, groupName(req.Group))
		return nil
	}
	reply.ConfigIndex = index
	for _, srv := range latest.Servers {
		reply.Members = append(reply.Members, Member{ID: string(srv.ID), Voter: srv.Suffrage == raft.Voter})
	}
	reply.Leader = g.raft.State() == raft.Leader
	reply.CommitIndex = g.raft.CommitIndex()
	return nil
}

// The changes of a ChangeRequest.
const (
	changeAddNonvoter = "add-nonvoter"
	changeAddVoter    = "add-voter"
	changeRemove      = "remove"
	changeTransfer    = "transfer"
)

// ChangeRequest asks the leader of Group to change its configuration:
// Change (add-nonvoter, add-voter or remove) Node, at raft address Addr,
// if the configuration is still the one at PrevIndex; or to hand its
// leadership to Node (transfer).
type ChangeRequest struct {
	Group     shard.ID
	Change    string
	Node      string
	Addr      string
	PrevIndex uint64
}

// ChangeReply answers a ChangeRequest.
type ChangeReply struct {
	Err string
}

// ChangeMembers serves a ChangeRequest from a peer: the control leader's
// driver.
func (s *nodeService) ChangeMembers(req ChangeRequest, reply *ChangeReply) error {
	n := s.n
	g := n.current().group(req.Group)
	if !n.started.Load() || g == nil {
		reply.Err = fmt.Sprintf("node %s holds no replica of %s", n.id, groupName(req.Group))
		return nil
	}
	if !n.current().cluster.CallsFor(req.Group, req.Change == changeRemove, req.Node) && req.Change != changeTransfer {
		// A driver deposed since it looked must not change the group
		// after its successor ended or undid the move.
		reply.Err = fmt.Sprintf("node %s: its metadata has no move of %s that calls for %s of %s (yet)",
			n.id, groupName(req.Group), req.Change, req.Node)
		return nil
	}
	id, addr := raft.ServerID(req.Node), raft.ServerAddress(req.Addr)
	var f raft.Future
	switch req.Change {
	case changeAddNonvoter:
		f = g.raft.AddNonvoter(id, addr, req.PrevIndex, controlCallTimeout)
	case changeAddVoter:
		f = g.raft.AddVoter(id, addr, req.PrevIndex, controlCallTimeout)
	case changeRemove:
		f = g.raft.RemoveServer(id, req.PrevIndex, controlCallTimeout)
	case changeTransfer:
		if req.Node == "" {
			f = g.raft.LeadershipTransfer() // to the voter raft finds most up to date
		} else {
			f = g.raft.LeadershipTransferToServer(id, addr)
		}
	default:
		reply.Err = fmt.Sprintf("node %s: unknown change %q", n.id, req.Change)
		return nil
	}
	n.log.Info("changing a group's members", "group", groupName(req.Group), "change", req.Change, "node", req.Node,
		"prev_index", req.PrevIndex)
	if err := awaitFuture(f, g.closing); err != nil {
		reply.Err = fmt.Sprintf("node %s: %s %s of %s: %v", n.id, req.Change, req.Node, groupName(req.Group), err)
	}
	return nil
}

// drive does one round of the control leader's work: a step of every move
// in progress, a new move for a draining node, and the removal of the
// draining nodes that hold nothing.
func (n *Node) drive(cr *controlReplica) {
	c := cr.fsm.Current()
	for _, m := range c.Moves {
		ctx, cancel := context.WithTimeout(n.ctx, controlCallTimeout)
		err := n.runMove(ctx, cr, m)
		cancel()
		if err != nil && n.ctx.Err() == nil {
			n.log.Info("a replica move waits", "group", groupName(m.Group), "from", m.From, "to", m.To, "err", err)
		}
	}
	for _, m := range c.SlotMoves {
		ctx, cancel := context.WithTimeout(n.ctx, shipTimeout)
		err := n.stepSlotMove(ctx, cr, m)
		cancel()
		if err != nil && n.ctx.Err() == nil {
			n.log.Info("a slot move waits", "move", m.ID, "from", m.From, "to", m.To, "err", err)
		}
	}
	n.pruneDriverState(c)
	if m, ok := control.NextDrainMove(c, n.avoided()...); ok {
		n.log.Info("moving a replica off a draining node", "group", groupName(m.Group), "from", m.From, "to", m.To)
		if _, err := cr.propose(control.Command{Kind: control.KindStartMove, Move: &m}); err != nil {
			n.log.Warn("starting a move", "group", groupName(m.Group), "err", err)
		}
	}
	for _, id := range control.Droppable(cr.fsm.Current()) {
		n.log.Info("removing a drained node from the cluster", "node", id)
		if _, err := cr.propose(control.Command{Kind: control.KindDropNode, ID: id}); err != nil {
			n.log.Warn("removing a drained node", "node", id, "err", err)
		}
	}
}

// stuck is how long something the driver retries has failed: since
// first, last seen failing at last.
type stuck struct{ first, last time.Time }

// stuckFor records a failure of k in m and returns how long k has failed
// without a break: a failure more than gap after the last one (the driver
// was busy elsewhere, or did not lead) counts anew.
func stuckFor[K comparable](m map[K]stuck, k K, gap time.Duration) time.Duration {
	now := time.Now()
	s, ok := m[k]
	if !ok || now.Sub(s.last) > gap {
		s.first = now
	}
	s.last = now
	m[k] = s
	return now.Sub(s.first)
}

// pruneDriverState forgets what the driver kept of moves that are no
// longer in progress, and of nodes avoided long enough.
func (n *Node) pruneDriverState(c *shard.Cluster) {
	for m := range n.moveStuck {
		if o := c.MoveOf(m.Group); o == nil || o.From != m.From || o.To != m.To {
			delete(n.moveStuck, m)
		}
	}
	for id := range n.shipStuck {
		if slotMoveIn(c, id) == nil {
			delete(n.shipStuck, id)
		}
	}
	for id, since := range n.avoid {
		if time.Since(since) >= avoidFor || c.Node(id) == nil {
			delete(n.avoid, id)
		}
	}
}

// avoided returns the nodes not to choose as move targets now: those that
// failed to answer as targets lately.
func (n *Node) avoided() []string {
	ids := make([]string, 0, len(n.avoid))
	for id := range n.avoid {
		ids = append(ids, id)
	}
	return ids
}

// errMoveWaits marks a move step that could not be taken yet: the target
// is catching up, or the group has no leader.
var errMoveWaits = errors.New("server: the move waits")

// moveSteps bounds the steps of a move that one call of runMove takes:
// there are five.
const moveSteps = 8

// DefaultMoveTargetTimeout is the default of Config.MoveTargetTimeout.
const DefaultMoveTargetTimeout = 30 * time.Second

// avoidFor is how long a node that failed to answer as a move's target is
// not chosen as one again.
const avoidFor = 5 * time.Minute

// runMove takes the steps of move m one after another until it has ended,
// a step must wait, one fails, or this node's control replica cr no longer
// leads: a deposed driver stops before its next step, as its successor
// takes over.
func (n *Node) runMove(ctx context.Context, cr *controlReplica, m shard.Move) error {
	for range moveSteps {
		if !cr.leads() {
			return nil
		}
		c := n.current().cluster
		if o := c.MoveOf(m.Group); o == nil || *o != m {
			return nil // ended
		}
		done, err := n.stepMove(ctx, c, m)
		if err != nil || done {
			return err
		}
	}
	return nil
}

// stepMove takes the next step of move m, as its group's configuration
// shows it, and reports whether it was the last.
func (n *Node) stepMove(ctx context.Context, c *shard.Cluster, m shard.Move) (done bool, err error) {
	leader, info, err := n.groupLeader(ctx, c, m.Group)
	if err != nil {
		return false, err
	}
	var to, from *Member
	for i := range info.Members {
		switch info.Members[i].ID {
		case m.To:
			to = &info.Members[i]
		case m.From:
			from = &info.Members[i]
		}
	}
	toNode := c.Node(m.To)
	if toNode == nil {
		return false, fmt.Errorf("server: move target %s is no member", m.To)
	}
	change := func(kind, node, addr string) error {
		req := ChangeRequest{Group: m.Group, Change: kind, Node: node, Addr: addr, PrevIndex: info.ConfigIndex}
		reply, err := call[ChangeReply](ctx, n.peers, leader, "Node.ChangeMembers", req)
		if err != nil {
			return err
		}
		if reply.Err != "" {
			return errors.New(reply.Err)
		}
		return nil
	}
	// progress asks the target how far its replica is: an error until it
	// has opened one, which it does once it follows the move's metadata.
	// A target that has not answered for moveTargetTimeout has the move
	// undone.
	progress := func() (MembersReply, error) {
		prog, err := call[MembersReply](ctx, n.peers, m.To, "Node.Members", MembersRequest{Group: m.Group})
		if err == nil && prog.Err != "" {
			err = fmt.Errorf("%w: %s", errMoveWaits, prog.Err)
		}
		key := shard.Move{Group: m.Group, From: m.From, To: m.To}
		if err == nil {
			delete(n.moveStuck, key)
			return prog, nil
		}
		if d := stuckFor(n.moveStuck, key, 5*controlTick); d >= n.cfg.MoveTargetTimeout {
			n.log.Warn("undoing a replica move whose target does not answer", "group", groupName(m.Group),
				"from", m.From, "to", m.To, "for", d.Round(time.Second), "err", err)
			n.avoid[m.To] = time.Now()
			if _, aerr := n.controlApply(ctx, control.Command{Kind: control.KindAbortMove, Move: &m}); aerr != nil {
				return prog, aerr
			}
		}
		return prog, err
	}
	if m.Abort && (from != nil || m.From == "") {
		// Undone: the target leaves the group (handing its leadership
		// on first, if it leads), and then the record goes.
		switch {
		case to != nil && leader == m.To:
			return false, change(changeTransfer, "", "")
		case to != nil:
			return false, change(changeRemove, m.To, "")
		}
		if _, err := n.controlApply(ctx, control.Command{Kind: control.KindCancelMove, Move: &m}); err != nil {
			return false, err
		}
		delete(n.moveStuck, shard.Move{Group: m.Group, From: m.From, To: m.To})
		n.log.Info("undid a replica move", "group", groupName(m.Group), "from", m.From, "to", m.To)
		return true, nil
	}
	// A move whose source has left is past undoing: it finishes.
	switch {
	case to == nil:
		if _, err := progress(); err != nil {
			return false, err
		}
		return false, change(changeAddNonvoter, m.To, toNode.Raft)
	case !to.Voter:
		prog, err := progress()
		if err != nil {
			return false, err
		}
		if prog.LastIndex < info.CommitIndex {
			return false, fmt.Errorf("%w: %s is at index %d of %d", errMoveWaits, m.To, prog.LastIndex, info.CommitIndex)
		}
		return false, change(changeAddVoter, m.To, toNode.Raft)
	case from != nil && leader == m.From:
		return false, change(changeTransfer, m.To, toNode.Raft)
	case from != nil:
		return false, change(changeRemove, m.From, "")
	}
	if _, err := n.controlApply(ctx, control.Command{Kind: control.KindFinishMove, Move: &m}); err != nil {
		return false, err
	}
	n.log.Info("moved a replica", "group", groupName(m.Group), "from", m.From, "to", m.To)
	return true, nil
}

// groupLeader finds the leader of group id among the nodes that may hold
// its replicas, and returns it with its answer.
func (n *Node) groupLeader(ctx context.Context, c *shard.Cluster, id shard.ID) (string, MembersReply, error) {
	var errs []error
	for _, node := range c.Peers(id) {
		reply, err := call[MembersReply](ctx, n.peers, node, "Node.Members", MembersRequest{Group: id})
		switch {
		case err != nil:
			errs = append(errs, err)
		case reply.Err != "":
			errs = append(errs, fmt.Errorf("%s: %s", node, reply.Err))
		case reply.Leader:
			return node, reply, nil
		}
	}
	return "", MembersReply{}, fmt.Errorf("%w: no leader of %s answered: %w", errMoveWaits, groupName(id), errors.Join(errs...))
}
