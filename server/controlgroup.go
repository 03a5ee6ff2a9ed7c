package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/server/control"
	"github.com/shoal-kv/shoal/shard"
)

// The control group is a raft group like a shard's, on up to three nodes
// (shard.Cluster.Control), whose state machine holds the cluster metadata
// (server/control). Every node follows that metadata (followMetadata); the
// node whose control replica leads also drives the changes in progress:
// it proposes the first metadata, and moves replicas (runControl, see
// mover.go).

const (
	// metadataPoll bounds how long a node waits for newer metadata in one
	// call before it asks again (and looks whether its replicas match).
	metadataPoll = 10 * time.Second
	// controlPoll is how long a node holding a control replica waits for
	// its own replica to apply newer metadata before it asks another
	// control voter: its replica may have been removed from the group, or
	// cut off from it, and then hears of nothing.
	controlPoll = time.Second
	// controlTick is how often the control group's leader looks at the
	// moves in progress when nothing wakes it sooner.
	controlTick = 200 * time.Millisecond
	// controlCallTimeout bounds one call of the control leader's driver
	// to another node, and one proposal to the control group.
	controlCallTimeout = 10 * time.Second
)

// controlTimingFactor is how much slower than a shard's the control
// group's raft timing is once it has a leader. The control group is idle
// nearly always, and never quiesces as a shard does: its leader heartbeats
// every tenth of its heartbeat timeout, and appends every CommitTimeout or
// so. At the shards' timing it cost an idle node with 16 shards about a
// point of a core (3.2% against 2.0%); three times slower, nothing
// measurable. A control leader that dies is then replaced in about three
// heartbeat timeouts rather than one: only changes of the cluster wait for
// it, never a client. A replica starts at the shards' timing, so that the
// group elects its first leader as soon as a shard does (slowSoon).
const controlTimingFactor = 3

// controlTiming returns the raft timing a control replica starts with:
// the shards', but for CommitTimeout (not reloadable), already slower.
func controlTiming(shards RaftTiming) RaftTiming {
	t := shards.withDefaults()
	t.CommitTimeout *= controlTimingFactor
	return t
}

// slowDown gives the replica the control group's idle timing, once it
// knows a leader. The leader heartbeats a tenth of its timeout apart, so
// replicas at either timing stay in touch with a leader at the other.
func (cr *controlReplica) slowDown(shards RaftTiming) {
	if cr.slowed.Load() {
		return
	}
	if _, id := cr.raft.LeaderWithID(); id == "" {
		return
	}
	t := shards.withDefaults()
	// The leader heartbeats 1 to 2 tenths of the heartbeat timeout
	// apart, and steps down when it has heard from no quorum for its
	// lease, which cannot change: slowed, the heartbeats must still come
	// well within it.
	if 2*controlTimingFactor*time.Duration(t.HeartbeatTimeout)/10 > 8*time.Duration(t.LeaderLeaseTimeout)/10 {
		cr.slowed.Store(true) // stays at the shards' timing
		return
	}
	rc := cr.raft.ReloadableConfig()
	rc.HeartbeatTimeout = controlTimingFactor * time.Duration(t.HeartbeatTimeout)
	rc.ElectionTimeout = controlTimingFactor * time.Duration(t.ElectionTimeout)
	if err := cr.raft.ReloadConfig(rc); err == nil {
		cr.slowed.Store(true)
	}
}

// controlReplica is this node's member of the control group.
type controlReplica struct {
	*raftGroup
	fsm *control.FSM
	// slowed is set once the replica runs at the control group's idle
	// timing (slowDown).
	slowed atomic.Bool
}

// openControl opens this node's replica of the control group, as c
// assigns it.
func (n *Node) openControl(c *shard.Cluster) (*controlReplica, error) {
	sl, err := n.mux.streamLayer(shard.ControlGroup)
	if err != nil {
		return nil, err
	}
	sm := control.NewFSM()
	g, err := openGroup(n.groupConfig(c, shard.ControlGroup, controlTiming(n.cfg.Spec.Raft), sl), sm)
	if err != nil {
		return nil, err
	}
	return &controlReplica{raftGroup: g, fsm: sm}, nil
}

// leads reports whether this control replica leads its group.
func (cr *controlReplica) leads() bool { return cr.raft.State() == raft.Leader }

func (cr *controlReplica) close() error {
	close(cr.closing)
	return cr.raftGroup.close(cr.raft.Shutdown().Error(), func() {})
}

// apply proposes cmd to the control group, which this replica must lead,
// and returns the metadata after it. A group that has no metadata yet is
// given first's (that of the spec the node started with).
func (cr *controlReplica) apply(cmd control.Command, first *shard.Cluster) (*shard.Cluster, error) {
	if cmd.Kind != control.KindInit && cr.fsm.Current() == nil {
		if _, err := cr.propose(control.Command{Kind: control.KindInit, Cluster: first}); err != nil {
			return nil, err
		}
	}
	return cr.propose(cmd)
}

// propose proposes cmd to the control group and waits for its result.
func (cr *controlReplica) propose(cmd control.Command) (*shard.Cluster, error) {
	b, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	f := cr.raft.Apply(b, applyEnqueueTimeout)
	if err := awaitFuture(f, cr.closing); err != nil {
		return nil, err
	}
	res, ok := f.Response().(control.Result)
	if !ok {
		return nil, fmt.Errorf("server: control group: unexpected apply response %T", f.Response())
	}
	return res.Cluster, res.Err
}

// group returns this node's raft instance of group id, or nil.
func (v *view) group(id shard.ID) *raftGroup {
	if id == shard.ControlGroup {
		if v.control != nil {
			return v.control.raftGroup
		}
		return nil
	}
	if r := v.replicas[id]; r != nil {
		return r.raftGroup
	}
	return nil
}

// install makes c the metadata the node follows, if it is newer than the
// node's: it keeps it on disk first, then serves by it. reconcile then
// brings the node's replicas in line.
func (n *Node) install(c *shard.Cluster) error {
	n.installMu.Lock()
	defer n.installMu.Unlock()
	v := n.current()
	if c == nil || c.Version <= v.cluster.Version || n.ctx.Err() != nil {
		return nil
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("server: metadata version %d: %w", c.Version, err)
	}
	if err := saveMetadata(n.cfg.DataDir, c); err != nil {
		return err
	}
	n.dir.set(c)
	n.view.Store(&view{cluster: c, topology: topologyOf(c), replicas: v.replicas, control: v.control})
	for _, id := range c.Removed {
		if !slices.Contains(v.cluster.Removed, id) && id != n.id {
			// Its connections were a member's: from now on it may only
			// learn of its removal.
			n.mux.closePeer(id)
			n.peers.reset(id)
		}
	}
	if slices.Contains(c.Removed, n.id) {
		n.log.Error("this node was removed from the cluster: deleting its replicas; it may not rejoin with this id",
			"metadata_version", c.Version)
	}
	select {
	case n.metadataChanged <- struct{}{}:
	default:
	}
	return nil
}

// reconcile opens the replicas the node's metadata assigns it and it does
// not hold, then closes and deletes those it holds and the metadata no
// longer assigns it: a move's target opens its replica once the move is
// recorded, and its source deletes its own once the move has finished,
// when the group's configuration no longer has it. It returns the errors
// of the replicas it failed to open; the next call tries them again.
func (n *Node) reconcile(ctx context.Context) error {
	n.installMu.Lock()
	defer n.installMu.Unlock()
	if err := n.ctx.Err(); err != nil {
		return err // closing: Close closes what the view holds
	}
	v := n.current()
	held := v.cluster.Holds(n.id)
	next := &view{cluster: v.cluster, topology: v.topology, replicas: maps.Clone(v.replicas), control: v.control}
	type leaving struct {
		id    shard.ID
		close func() error
	}
	var gone []leaving
	for id, r := range v.replicas {
		if !slices.Contains(held, id) {
			delete(next.replicas, id)
			gone = append(gone, leaving{id, r.close})
		}
	}
	if v.control != nil && !slices.Contains(held, shard.ControlGroup) {
		next.control = nil
		gone = append(gone, leaving{shard.ControlGroup, v.control.close})
	}
	var errs []error
	for _, id := range held {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		switch {
		case id == shard.ControlGroup && next.control == nil:
			cr, err := n.openControl(v.cluster)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			next.control = cr
		case id != shard.ControlGroup && next.replicas[id] == nil:
			r, err := n.openShard(v.cluster, id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			next.replicas[id] = r
			n.log.Info("opened a replica", "shard", id, "metadata_version", v.cluster.Version)
		}
	}
	n.view.Store(next)
	for _, l := range gone {
		if err := l.close(); err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
			n.log.Warn("closing a replica the node no longer holds", "group", groupName(l.id), "err", err)
		}
		if err := n.deleteReplica(l.id); err != nil {
			errs = append(errs, err)
			continue
		}
		n.log.Info("deleted a replica the node no longer holds", "group", groupName(l.id), "metadata_version", v.cluster.Version)
	}
	return errors.Join(errs...)
}

// openShard opens this node's replica of shard id, as c assigns it.
func (n *Node) openShard(c *shard.Cluster, id shard.ID) (*replica, error) {
	sl, err := n.mux.streamLayer(id)
	if err != nil {
		return nil, err
	}
	return openReplica(replicaConfig{
		groupConfig: n.groupConfig(c, id, n.cfg.Spec.Raft, sl),
		ctx:         n.ctx, callTimeout: n.cfg.RequestTimeout, nodes: n.peers, jobs: n.jobs,
		timersChanged: n.kickSchedules,
	})
}

// groupConfig returns this node's configuration of its replica of group
// id, as c assigns it, at timing over layer sl.
func (n *Node) groupConfig(c *shard.Cluster, id shard.ID, timing RaftTiming, sl *streamLayer) groupConfig {
	return groupConfig{
		id: id, dir: filepath.Join(n.cfg.DataDir, replicaDir(id)), node: n.id,
		bootstrap: mayBootstrap(c, id, n.id), timing: timing, layer: sl,
		log: n.log, nodeLog: n.raftLog, logStore: n.cfg.Spec.LogStore,
	}
}

// deleteReplica deletes the data of a closed replica of group id: its
// entries in the node log first, then its directory, so that a crash in
// between leaves a directory whose raft state names no entries, which
// deleteStray deletes at the next start.
func (n *Node) deleteReplica(id shard.ID) error {
	if n.raftLog != nil {
		if err := n.raftLog.DropGroup(uint64(id)); err != nil {
			return fmt.Errorf("server: deleting %s: %w", groupName(id), err)
		}
	}
	if err := os.RemoveAll(filepath.Join(n.cfg.DataDir, replicaDir(id))); err != nil {
		return fmt.Errorf("server: deleting %s: %w", groupName(id), err)
	}
	return syncDir(n.cfg.DataDir)
}

// deleteStray deletes the replicas in the node's data directory that the
// metadata it kept does not assign it: those removed while it was down, or
// whose deletion a crash cut short.
func (n *Node) deleteStray() error {
	held := n.current().cluster.Holds(n.id)
	onDisk, err := heldOnDisk(n.cfg.DataDir)
	if err != nil {
		return err
	}
	for _, id := range onDisk {
		if slices.Contains(held, id) {
			continue
		}
		if err := n.deleteReplica(id); err != nil {
			return err
		}
		n.log.Info("deleted a replica the cluster metadata no longer assigns this node", "group", groupName(id))
	}
	return nil
}

// followMetadata keeps the node's metadata current, and its replicas in
// line with it, until the node stops, or the cluster removed it and it
// has deleted its replicas: then it closes Done (Node.stop), and the
// node has nothing more to follow.
func (n *Node) followMetadata() {
	failures := 0
	for n.ctx.Err() == nil {
		c, err := n.fetchMetadata(n.ctx, n.current().cluster.Version)
		if err == nil {
			err = n.install(c)
		}
		if err == nil {
			err = n.reconcile(n.ctx)
		}
		if err == nil {
			if v := n.current(); slices.Contains(v.cluster.Removed, n.id) && len(v.replicas) == 0 && v.control == nil {
				// Done promises the replicas are gone from the disk: a
				// deletion that failed is tried again first.
				if err = n.deleteStray(); err == nil {
					n.stop(fmt.Errorf("%w: node %s, at cluster metadata version %d; it may not return with this id",
						ErrRemoved, n.id, v.cluster.Version))
					return
				}
			}
		}
		if err == nil || n.ctx.Err() != nil {
			failures = 0
			continue
		}
		if failures++; failures == 1 || failures%30 == 0 {
			n.log.Warn("following the cluster metadata", "err", err, "failures", failures)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(time.Duration(min(failures, 10)) * 100 * time.Millisecond):
		}
	}
}

// fetchMetadata returns metadata newer than version after: from this
// node's control replica if it holds one and it applies some within
// controlPoll, else from another control voter, which a node holding no
// control replica waits at for up to metadataPoll. Nil if none came.
func (n *Node) fetchMetadata(ctx context.Context, after uint64) (*shard.Cluster, error) {
	v := n.current()
	if v.control != nil {
		wctx, cancel := context.WithTimeout(ctx, controlPoll)
		c, err := v.control.fsm.Wait(wctx, after)
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		actx, cancel := context.WithTimeout(ctx, controlCallTimeout)
		defer cancel()
		return n.askMetadata(actx, v.cluster, after, 0)
	}
	// The voter waits up to metadataPoll; the call gives it time to
	// answer after that, so that a quiet spell is no failure.
	ctx, cancel := context.WithTimeout(ctx, metadataPoll+controlCallTimeout)
	defer cancel()
	return n.askMetadata(ctx, v.cluster, after, metadataPoll)
}

// askMetadata asks the control voters of c but this node, in a random
// order, for metadata newer than after, waiting up to wait at the first
// that answers. Nil if it had none.
func (n *Node) askMetadata(ctx context.Context, c *shard.Cluster, after uint64, wait time.Duration) (*shard.Cluster, error) {
	voters := slices.DeleteFunc(slices.Clone(c.Control), func(id string) bool { return id == n.id })
	if m := c.MoveOf(shard.ControlGroup); m != nil && m.To != n.id {
		voters = append(voters, m.To)
	}
	rand.Shuffle(len(voters), func(i, j int) { voters[i], voters[j] = voters[j], voters[i] })
	var errs []error
	for _, id := range voters {
		reply, err := call[MetadataReply](ctx, n.peers, id, "Node.Metadata", MetadataRequest{After: after, Wait: wait})
		if err == nil && reply.Err != "" {
			err = fmt.Errorf("server: %s: %s", id, reply.Err)
		}
		if err == nil {
			if reply.Cluster != nil && reply.Cluster.Version > after {
				return reply.Cluster, nil
			}
			return nil, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, nil
	}
	return nil, errors.Join(errs...)
}

// MetadataRequest asks a node for cluster metadata newer than version
// After, waiting up to Wait for it.
type MetadataRequest struct {
	After uint64
	Wait  time.Duration
}

// MetadataReply answers a MetadataRequest: the newest metadata the node
// knows, if newer than After.
type MetadataReply struct {
	Cluster *shard.Cluster
	Err     string
}

// maxMetadataWait bounds MetadataRequest.Wait.
const maxMetadataWait = time.Minute

// removedService is what a node serves the nodes the cluster removed: the
// metadata that says so, and nothing else.
type removedService struct{ n *Node }

// Metadata serves a MetadataRequest from a removed node.
func (s *removedService) Metadata(req MetadataRequest, reply *MetadataReply) error {
	return (&nodeService{n: s.n}).Metadata(MetadataRequest{After: req.After}, reply)
}

// Metadata serves a MetadataRequest from a peer.
func (s *nodeService) Metadata(req MetadataRequest, reply *MetadataReply) error {
	n := s.n
	if !n.started.Load() {
		reply.Err = fmt.Sprintf("node %s is starting", n.id)
		return nil
	}
	v := n.current()
	newest := v.cluster
	if v.control != nil {
		if c := v.control.fsm.Current(); c != nil && c.Version > newest.Version {
			newest = c
		}
	}
	// Wait only when there is nothing newer than After to give: a peer
	// that lags (it restarted after changes, say) must get what this node
	// has at once, not wait for a change after it, which a quiet cluster
	// never makes.
	if v.control != nil && req.Wait > 0 && newest.Version <= req.After {
		ctx, cancel := context.WithTimeout(n.ctx, min(req.Wait, maxMetadataWait))
		defer cancel()
		if c, err := v.control.fsm.Wait(ctx, req.After); err == nil {
			newest = c
		}
	}
	if newest.Version > req.After {
		reply.Cluster = newest
	}
	return nil
}

// ControlRequest carries a command to the control group's leader.
type ControlRequest struct {
	Command []byte
}

// ControlReply answers a ControlRequest: the metadata after the command,
// or why it failed. Leader names the control leader the node knows, when
// it does not lead.
type ControlReply struct {
	Cluster  *shard.Cluster
	Err      string
	Rejected bool
	Leader   string
}

// Control serves a ControlRequest from a peer: this node proposes the
// command if its control replica leads.
func (s *nodeService) Control(req ControlRequest, reply *ControlReply) error {
	n := s.n
	if !n.started.Load() || n.dir.removed(n.id) {
		reply.Err = fmt.Sprintf("node %s is starting or removed", n.id)
		return nil
	}
	cmd, err := control.DecodeCommand(req.Command)
	if err != nil {
		reply.Err, reply.Rejected = err.Error(), true
		return nil
	}
	v := n.current()
	cr := v.control
	if cr == nil || cr.raft.State() != raft.Leader {
		reply.Err = fmt.Sprintf("node %s does not lead the control group", n.id)
		if cr != nil {
			_, id := cr.raft.LeaderWithID()
			reply.Leader = string(id)
		}
		return nil
	}
	c, err := cr.apply(cmd, v.cluster)
	switch {
	case errors.Is(err, control.ErrRejected) || errors.Is(err, control.ErrUnknownCommand):
		reply.Err, reply.Rejected = err.Error(), true
	case err != nil:
		reply.Err = err.Error()
	default:
		reply.Cluster = c
	}
	return nil
}

// ErrRejected is returned (wrapped) for a change of the cluster the
// metadata refuses: a move of a replica to a node that holds one, the
// removal of a node whose replicas have nowhere to go.
var ErrRejected = errors.New("server: cluster change refused")

// controlApply proposes cmd to the control group, through whichever node
// leads it, retrying until ctx ends, and installs the metadata after it.
func (n *Node) controlApply(ctx context.Context, cmd control.Command) (*shard.Cluster, error) {
	b, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	var last error
	for attempt := 0; ; attempt++ {
		v := n.current()
		if cr := v.control; cr != nil && cr.raft.State() == raft.Leader {
			c, err := cr.apply(cmd, v.cluster)
			if errors.Is(err, control.ErrRejected) || errors.Is(err, control.ErrUnknownCommand) {
				return nil, fmt.Errorf("%w: %w", ErrRejected, err)
			}
			if err == nil {
				return c, n.install(c)
			}
			last = err
		} else {
			targets := slices.Clone(v.cluster.Control)
			if cr != nil {
				if _, id := cr.raft.LeaderWithID(); id != "" {
					targets = append([]string{string(id)}, targets...)
				}
			}
			for _, id := range targets {
				if id == n.id {
					continue
				}
				reply, err := call[ControlReply](ctx, n.peers, id, "Node.Control", ControlRequest{Command: b})
				if err == nil && reply.Err == "" {
					return reply.Cluster, n.install(reply.Cluster)
				}
				if err == nil && reply.Rejected {
					return nil, fmt.Errorf("%w: %s", ErrRejected, reply.Err)
				}
				if err == nil {
					err = fmt.Errorf("server: %s: %s", id, reply.Err)
				}
				last = err
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("server: proposing %s to the control group: %w (last: %v)", cmd.Kind, ctx.Err(), last)
		case <-time.After(time.Duration(min(attempt+1, 10)) * 50 * time.Millisecond):
		}
	}
}

// runControl drives the control group's work while this node's control
// replica leads: it proposes the first metadata if there is none yet, and
// moves replicas (drive). Stops with the node.
func (n *Node) runControl() {
	t := time.NewTicker(controlTick)
	defer t.Stop()
	led := false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.metadataChanged:
		}
		v := n.current()
		cr := v.control
		if cr != nil {
			cr.slowDown(n.cfg.Spec.Raft)
		}
		if cr == nil || cr.raft.State() != raft.Leader {
			led = false
			continue
		}
		if !led {
			// What a driver kept of its last term may be stale: others
			// drove the moves since.
			clear(n.shipStuck)
			clear(n.moveStuck)
			led = true
		}
		if cr.fsm.Current() == nil {
			if _, err := cr.propose(control.Command{Kind: control.KindInit, Cluster: v.cluster}); err != nil {
				n.log.Warn("proposing the first cluster metadata", "err", err)
			}
			continue
		}
		n.drive(cr)
	}
}
