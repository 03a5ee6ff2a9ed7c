package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoal-kv/shoal/server/control"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
)

// A range of slots moves from shard From to shard To as the control
// group's leader drives it (stepSlotMove), each step a raft entry in one
// of the shards' logs or in the control group's:
//
//  1. From freezes the range: its requests get "moving" and wait at the
//     client; its state leaves From's live tables (fsm.KindFreezeSlots);
//  2. From's leader exports the range and installs it at To, a chunk per
//     entry (ShipSlots);
//  3. From drops the range: its requests get "wrong shard";
//  4. the metadata flips the range to To (flip-slots);
//  5. To activates the range, and serves it (fsm.KindActivateSlots);
//  6. the metadata forgets the move (end-slot-move).
//
// Each step is idempotent, and the next one is chosen from the state the
// shards and the metadata are in, so a driver that crashed anywhere is
// followed by one that goes on from there. At no moment do two shards
// serve the range: To serves it only once From has dropped it. Requests
// to the range pause from the freeze to the activation.

const (
	// slotChunkSize bounds a chunk of a range's state: one raft entry
	// of its target.
	slotChunkSize = 512 << 10
	// shipTimeout bounds one call shipping a range's state; the next goes
	// on where it stopped.
	shipTimeout = 5 * time.Minute
)

// SlotStepRequest asks the leader of Shard to apply Op, a slot move step,
// if its Kind is set; and in any case for the slot moves its state
// machine holds after.
type SlotStepRequest struct {
	Shard shard.ID
	Op    fsm.Op
}

// SlotStepReply answers a SlotStepRequest.
type SlotStepReply struct {
	Result fsm.Result
	Moves  []fsm.SlotMove
	Err    string
	// Leader names the leader this node knows when it does not lead.
	Leader string
}

// slotStepKinds are the ops a SlotStepRequest may carry.
var slotStepKinds = []fsm.Kind{fsm.KindFreezeSlots, fsm.KindThawSlots, fsm.KindInstallSlots,
	fsm.KindActivateSlots, fsm.KindDropSlots}

// SlotStep serves a SlotStepRequest from a peer.
func (s *nodeService) SlotStep(req SlotStepRequest, reply *SlotStepReply) error {
	n := s.n
	rep := n.replica(req.Shard)
	if !n.started.Load() || rep == nil {
		reply.Err = fmt.Sprintf("node %s holds no replica of shard %d", n.id, req.Shard)
		return nil
	}
	if req.Op.Kind != 0 && !isSlotStep(req.Op.Kind) {
		reply.Err = fmt.Sprintf("node %s: %v is no slot move step", n.id, req.Op.Kind)
		return nil
	}
	ctx, cancel := context.WithTimeout(n.ctx, controlCallTimeout)
	defer cancel()
	if _, err := rep.waitReady(ctx); err != nil {
		reply.Err, reply.Leader = fmt.Sprintf("node %s: %v", n.id, err), rep.leaderID()
		return nil
	}
	if req.Op.Kind != 0 {
		res, err := rep.propose(ctx, req.Op)
		if err != nil {
			reply.Err, reply.Leader = fmt.Sprintf("node %s: %v", n.id, err), rep.leaderID()
			return nil
		}
		reply.Result = res[0]
	}
	reply.Moves = rep.fsm.Moves()
	return nil
}

func isSlotStep(k fsm.Kind) bool {
	for _, s := range slotStepKinds {
		if s == k {
			return true
		}
	}
	return false
}

// slotStep has the leader of shard id apply op (none if op.Kind is 0) and
// returns its answer.
func (n *Node) slotStep(ctx context.Context, c *shard.Cluster, id shard.ID, op fsm.Op) (SlotStepReply, error) {
	if c.Map.Shard(id) == nil {
		return SlotStepReply{}, fmt.Errorf("server: no shard %d", id)
	}
	var reply SlotStepReply
	err := atLeader(c.Peers(id), func(node string) (string, error) {
		var err error
		reply, err = call[SlotStepReply](ctx, n.peers, node, "Node.SlotStep", SlotStepRequest{Shard: id, Op: op})
		if err == nil && reply.Err != "" {
			err = errors.New(reply.Err)
		}
		return reply.Leader, err
	})
	if err != nil {
		return SlotStepReply{}, fmt.Errorf("%w: shard %d applied no %v: %w", errMoveWaits, id, op.Kind, err)
	}
	return reply, nil
}

// applySlotStep has the leader of shard id apply slot move step op, and
// fails unless its state machine took the step (StatusOK).
func (n *Node) applySlotStep(ctx context.Context, c *shard.Cluster, id shard.ID, op fsm.Op) error {
	res, err := n.slotStep(ctx, c, id, op)
	if err != nil {
		return err
	}
	if res.Result.Status != fsm.StatusOK {
		return fmt.Errorf("server: shard %d refused %v of slot move %d: status %d", id, op.Kind, op.Version, res.Result.Status)
	}
	return nil
}

// atLeader calls call on the nodes in turn, and first on the leader any
// of them names, until one succeeds: each node once.
func atLeader(nodes []string, call func(node string) (leaderHint string, err error)) error {
	tried := map[string]bool{}
	var errs []error
	for len(nodes) > 0 {
		node := nodes[0]
		nodes = nodes[1:]
		if tried[node] {
			continue
		}
		tried[node] = true
		hint, err := call(node)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if hint != "" && !tried[hint] {
			nodes = append([]string{hint}, nodes...)
		}
	}
	return errors.Join(errs...)
}

// ShipRequest asks the leader of shard From to install the range it froze
// for slot move Move at shard To.
type ShipRequest struct {
	From, To shard.ID
	Move     uint64
}

// ShipReply answers a ShipRequest: the chunks and bytes shipped, or why
// not, with the leader this node knows when it does not lead From.
type ShipReply struct {
	// Chunks and Bytes count what this call shipped; Skipped the chunks
	// the target held already, from an earlier call cut short.
	Chunks, Bytes, Skipped int
	Err                    string
	Leader                 string
}

// ShipSlots serves a ShipRequest from a peer: the control leader's driver.
func (s *nodeService) ShipSlots(req ShipRequest, reply *ShipReply) error {
	n := s.n
	rep := n.replica(req.From)
	if !n.started.Load() || rep == nil || !rep.isLeader() {
		reply.Err = fmt.Sprintf("node %s does not lead shard %d", n.id, req.From)
		if rep != nil {
			reply.Leader = rep.leaderID()
		}
		return nil
	}
	chunks, err := rep.fsm.ExportSlots(req.Move, slotChunkSize)
	if err != nil {
		reply.Err = fmt.Sprintf("node %s: shard %d: %v", n.id, req.From, err)
		return nil
	}
	ctx, cancel := context.WithTimeout(n.ctx, shipTimeout)
	defer cancel()
	c := n.current().cluster
	// An export cuts the same chunks every time, and they are installed
	// in order: a shipment cut short goes on after the chunks the target
	// holds.
	state, err := n.slotStep(ctx, c, req.To, fsm.Op{})
	if err != nil {
		reply.Err = fmt.Sprintf("node %s: %v", n.id, err)
		return nil
	}
	for _, m := range state.Moves {
		if m.ID == req.Move && m.State == fsm.SlotMoveIncoming {
			reply.Skipped = min(m.Installed, len(chunks))
		}
	}
	for _, chunk := range chunks[reply.Skipped:] {
		res, err := n.slotStep(ctx, c, req.To, fsm.Op{Kind: fsm.KindInstallSlots, Value: string(chunk), Version: req.Move})
		if err == nil && res.Result.Status != fsm.StatusOK {
			err = fmt.Errorf("shard %d refused a chunk of move %d: status %d", req.To, req.Move, res.Result.Status)
		}
		if err != nil {
			reply.Err = fmt.Sprintf("node %s: %v", n.id, err)
			return nil
		}
		reply.Chunks++
		reply.Bytes += len(chunk)
	}
	return nil
}

// stepSlotMove takes the steps of slot move m that its state allows, one
// after another, and returns when it has ended, must wait, or this node's
// control replica cr no longer leads.
func (n *Node) stepSlotMove(ctx context.Context, cr *controlReplica, m shard.SlotMove) error {
	for cr.leads() {
		c := n.current().cluster
		cur := slotMoveIn(c, m.ID)
		if cur == nil {
			return nil
		}
		m = *cur
		if m.Flipped {
			if err := n.applySlotStep(ctx, c, m.To, fsm.Op{Kind: fsm.KindActivateSlots, Version: m.ID}); err != nil {
				return err
			}
			if _, err := n.controlApply(ctx, control.Command{Kind: control.KindEndSlotMove, SlotMove: &m}); err != nil {
				return err
			}
			n.log.Info("moved slots", "from", m.From, "to", m.To, "slots", fmt.Sprintf("[%d,%d)", m.Start, m.End), "move", m.ID)
			return nil
		}
		state, err := n.slotStep(ctx, c, m.From, fsm.Op{})
		if err != nil {
			return err
		}
		st := sourceState(state.Moves, m.ID)
		if m.Abort && (st == slotMoveNone || st == fsm.SlotMoveFrozen) {
			n.log.Info("undoing a slot move, as asked", "move", m.ID, "from", m.From, "to", m.To)
			if err := n.undoSlotMove(ctx, c, m); err != nil {
				return err
			}
			continue
		}
		switch st {
		case slotMoveNone:
			// The range pauses from the freeze on: its target must be
			// ready to take it first (a new shard elects its leader).
			if _, err := n.slotStep(ctx, c, m.To, fsm.Op{}); err != nil {
				return err
			}
			op := fsm.Op{Kind: fsm.KindFreezeSlots, Start: m.Start, End: m.End, Version: m.ID}
			if err := n.applySlotStep(ctx, c, m.From, op); err != nil {
				return err
			}
		case fsm.SlotMoveFrozen:
			shipped, err := n.ship(ctx, c, m)
			if err != nil {
				if shipped > 0 {
					delete(n.shipStuck, m.ID)
				} else if stuckFor(n.shipStuck, m.ID, shipTimeout+time.Minute) >= shipStuckTimeout {
					if !cr.leads() {
						return nil // a shipment takes a while: a successor may be shipping it
					}
					n.log.Warn("undoing a slot move whose shipment keeps failing", "move", m.ID, "from", m.From, "to", m.To, "err", err)
					if err := n.undoSlotMove(ctx, c, m); err != nil {
						return err
					}
					continue
				}
				return err
			}
			delete(n.shipStuck, m.ID)
			if !cr.leads() {
				return nil
			}
			if err := n.applySlotStep(ctx, c, m.From, fsm.Op{Kind: fsm.KindDropSlots, Version: m.ID}); err != nil {
				return err
			}
		case fsm.SlotMoveDropped:
			if m.Abort {
				n.log.Info("a slot move asked to be undone is past undoing: its source dropped the range", "move", m.ID)
			}
			if _, err := n.controlApply(ctx, control.Command{Kind: control.KindFlipSlots, SlotMove: &m}); err != nil {
				return err
			}
		case fsm.SlotMoveThawed:
			// Undone at the source: the target drops what it installed,
			// and then the metadata forgets the move.
			drop := fsm.Op{Kind: fsm.KindDropSlots, Version: m.ID, Start: m.Start, End: m.End}
			if _, err := n.slotStep(ctx, c, m.To, drop); err != nil {
				return err
			}
			return n.endUndoneSlotMove(ctx, m)
		case fsm.SlotMoveCancelled:
			// Undone before any freeze: nothing of the range was ever
			// exported, so the target holds nothing of it, and need not
			// even be up for the metadata to forget the move.
			return n.endUndoneSlotMove(ctx, m)
		default:
			return fmt.Errorf("server: shard %d holds slot move %d in an unexpected state", m.From, m.ID)
		}
	}
	return nil
}

// slotMoveNone is the state of a slot move its source does not hold:
// not frozen yet.
const slotMoveNone fsm.SlotMoveState = 0

// sourceState returns the state of slot move id among moves.
func sourceState(moves []fsm.SlotMove, id uint64) fsm.SlotMoveState {
	for _, m := range moves {
		if m.ID == id {
			return m.State
		}
	}
	return slotMoveNone
}

// shipStuckTimeout is how long the shipments of a slot move may fail
// without shipping a chunk before the move is undone: its range must not
// stay frozen, its requests waiting, for good, but a failover of the
// target's leader must not undo it either.
const shipStuckTimeout = time.Minute

// undoSlotMove has the source of slot move m take its range back: it
// thaws the range if frozen, or remembers the move as cancelled if not yet
// frozen, and either way refuses any later step of the move. A source that
// has dropped the range already (a driver before this one went on)
// refuses, and the move goes on. The caller then sees the source's new
// state, and the target drops what it installed.
func (n *Node) undoSlotMove(ctx context.Context, c *shard.Cluster, m shard.SlotMove) error {
	return n.applySlotStep(ctx, c, m.From, fsm.Op{Kind: fsm.KindThawSlots, Version: m.ID, Start: m.Start, End: m.End})
}

// endUndoneSlotMove drops the record of slot move m, undone at its source
// and gone from its target.
func (n *Node) endUndoneSlotMove(ctx context.Context, m shard.SlotMove) error {
	delete(n.shipStuck, m.ID)
	if _, err := n.controlApply(ctx, control.Command{Kind: control.KindEndSlotMove, SlotMove: &m}); err != nil {
		return err
	}
	n.log.Info("undid a slot move", "move", m.ID, "from", m.From, "to", m.To, "slots", fmt.Sprintf("[%d,%d)", m.Start, m.End))
	return nil
}

// ship has the leader of m.From install the range it froze at m.To, and
// returns the chunks it shipped.
func (n *Node) ship(ctx context.Context, c *shard.Cluster, m shard.SlotMove) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, shipTimeout)
	defer cancel()
	start := time.Now()
	var reply ShipReply
	err := atLeader(c.Peers(m.From), func(node string) (string, error) {
		var err error
		reply, err = call[ShipReply](ctx, n.peers, node, "Node.ShipSlots", ShipRequest{From: m.From, To: m.To, Move: m.ID})
		if err == nil && reply.Err != "" {
			err = errors.New(reply.Err)
		}
		return reply.Leader, err
	})
	if err != nil {
		return reply.Chunks, fmt.Errorf("%w: shipping slot move %d: %w", errMoveWaits, m.ID, err)
	}
	n.log.Info("shipped slots", "from", m.From, "to", m.To, "move", m.ID, "chunks", reply.Chunks,
		"skipped", reply.Skipped, "bytes", reply.Bytes, "took", time.Since(start))
	return reply.Chunks, nil
}

// slotMoveIn returns the slot move of c with id, or nil.
func slotMoveIn(c *shard.Cluster, id uint64) *shard.SlotMove {
	for i := range c.SlotMoves {
		if c.SlotMoves[i].ID == id {
			return &c.SlotMoves[i]
		}
	}
	return nil
}

// SplitShard starts splitting shard id: a new shard is created on the
// emptiest nodes, and the upper half of id's largest range of slots moves
// to it, in parts one after another (control.Split), each pausing only its
// own slots' requests. It returns once all are recorded, with the new shard's id; the
// split has ended when the metadata has no slot move from id.
func (n *Node) SplitShard(ctx context.Context, id shard.ID) (*shard.Cluster, shard.ID, error) {
	c := n.current().cluster
	s, moves, err := control.Split(c, id)
	if err != nil {
		return c, 0, fmt.Errorf("%w: %w", ErrRejected, err)
	}
	if c, err = n.controlApply(ctx, control.Command{Kind: control.KindCreateShard, Shard: &s}); err != nil {
		return c, 0, err
	}
	for _, m := range moves {
		if c, err = n.MoveSlots(ctx, m); err != nil {
			return c, 0, err
		}
	}
	return c, s.ID, nil
}

// AbortSlotMoves starts undoing the slot moves from shard from (to shard
// to, if not nil) that are not past undoing: each source takes its range
// back, unless it has dropped it already, in which case that move
// finishes. It returns once the metadata marks them; they have ended
// when the metadata no longer lists them. A shard with no such move is
// refused (ErrRejected).
func (n *Node) AbortSlotMoves(ctx context.Context, from shard.ID, to *shard.ID) (*shard.Cluster, error) {
	return n.controlApply(ctx, control.Command{Kind: control.KindAbortSlotMoves, Slots: &control.SlotMoves{From: from, To: to}})
}

// MoveSlots starts moving slots [m.Start, m.End) from shard m.From to
// shard m.To (m.ID zero: the control group names the move). It returns
// once the move is recorded; it has ended when the metadata no longer
// lists it.
func (n *Node) MoveSlots(ctx context.Context, m shard.SlotMove) (*shard.Cluster, error) {
	m.ID, m.Flipped = 0, false
	return n.controlApply(ctx, control.Command{Kind: control.KindStartSlotMove, SlotMove: &m})
}
