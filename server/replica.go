package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
)

const (
	// snapshotsRetained is how many snapshots each replica keeps on disk.
	snapshotsRetained = 2
	// logCacheSize is how many recent log entries each replica keeps in
	// memory, so replicating them to followers does not read the disk.
	logCacheSize = 512
	// boltOpenTimeout bounds waiting for another process's lock on a
	// replica's database: two nodes started on one data directory.
	boltOpenTimeout = 2 * time.Second
	// applyEnqueueTimeout bounds waiting for raft to take a proposal.
	applyEnqueueTimeout = time.Second
	// Proposals share raft entries: at most outstandingEntries of a
	// replica's entries are being committed at once, and ops proposed
	// meanwhile wait to go together in the next, up to entryMaxOps ops or
	// entryMaxBytes. Two outstanding entries let the leader write one to
	// its disk while the followers write the other.
	outstandingEntries = 2
	entryMaxOps        = 512
	entryMaxBytes      = 1 << 20
	// forwardMaxGets bounds the keys of one forwarded read, and so its
	// reply: at most 64 values of MaxValueSize, 3.75 MiB.
	forwardMaxGets = 64
)

// ErrNotLeader is returned (wrapped) by the calls that only a shard's leader
// serves (Node.Barrier, and inside the node its read indexes and
// proposals) on a replica that does not lead, or no longer does; the
// caller tries again wherever the leader is now.
var ErrNotLeader = errors.New("server: not the leader")

// replica is one node's member of one shard's raft group: the raft instance,
// its stores on disk, its network transport and the state machine.
type replica struct {
	*raftGroup
	id shard.ID
	// node is this node's id; nodes calls the others.
	node  string
	nodes *peers
	log   *slog.Logger
	fsm   *fsm.FSM
	// applied wakes the reads waiting for fsm to apply an index.
	applied *applyWait

	// readyTerm is the term in which this replica, as leader, has applied
	// everything committed before its term began (its barrier returned).
	// Only then may it hand out read indexes.
	readyTerm      atomic.Uint64
	barrierRunning atomic.Bool

	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced when leader or readiness changes

	// stop closes when the replica starts closing; every wait on a raft
	// future ends then (see awaitFuture).
	stop      chan struct{}
	verifier  verifier
	proposals *batcher[fsm.Op, fsm.Result]
	proposing proposing // joins retried writes to their first attempts, then proposals
	// heartbeatTimeout and electionTimeout are raft's, as configured: a
	// follower that has not heard from its leader for heartbeatTimeout
	// takes it for gone.
	heartbeatTimeout, electionTimeout time.Duration
	// Quiescence (see quiesce.go): quiet is the heartbeat timeout of this
	// replica leading an idle group, zero if it never quiesces; entries
	// counts the entries it proposed; idle is the idle checks' own state.
	quiet    time.Duration
	quietMu  sync.Mutex // serializes quiesce and wake
	quiesced atomic.Bool
	awake    bool // never to quiesce again (handing leadership over); under quietMu
	holds    int  // holdAwake calls not yet released; quiesces only at 0; under quietMu
	entries  atomic.Uint64
	// heartbeatFailed is when, in Unix nanoseconds, raft last failed to
	// heartbeat a follower of this leader.
	heartbeatFailed atomic.Int64
	idle            struct {
		entries uint64
		checks  int
	}
	// A follower sends writes to the leader, and asks it read indexes for
	// linearizable gets, through these: what arrives while earlier calls
	// run goes together.
	forwardWrites *batcher[fsm.Op, fsm.Result]
	followerGets  *batcher[string, keyRead]
	// followerReads counts the batches of linearizable reads this
	// replica, following, answered from its own state after a read index;
	// relayedReads those the leader answered for it, this replica being
	// behind the index (see followerRead).
	followerReads, relayedReads atomic.Uint64
	// timersChanged is called when this leader's next tick may have come
	// forward: it won leadership, or committed an op of timedKinds.
	timersChanged func()
	observer      *raft.Observer
	obsCh         chan raft.Observation
	group         group
}

// replicaConfig is what a node gives each replica it opens: its raft
// group's, and what serving the shard needs.
type replicaConfig struct {
	groupConfig
	// ctx ends when the node closes; calls to other nodes end with it.
	ctx context.Context
	// callTimeout bounds a call to the shard's leader.
	callTimeout time.Duration
	// nodes calls the other nodes: their terms, forwards to the leader.
	nodes *peers
	// jobs hears what the state machine applies (see jobWatch).
	jobs *jobWatch
	// timersChanged is called when the shard's next tick may have come
	// forward (see Node.runSchedules).
	timersChanged func()
}

// openReplica opens (or creates) the replica of shard cfg.id in cfg.dir and
// starts its raft instance: the one place a replica is built.
func openReplica(cfg replicaConfig) (*replica, error) {
	id := cfg.id
	t := cfg.timing.withDefaults()
	applied := new(applyWait)
	sm := fsm.New(fsm.Config{
		LeaseGrace: time.Duration(t.ElectionTimeout),
		Observer:   replicaObserver{watch: cfg.jobs, id: id, applied: applied},
	})
	g, err := openGroup(cfg.groupConfig, sm)
	if err != nil {
		return nil, err
	}
	r := g.raft
	rep := &replica{
		raftGroup: g,
		id:        id,
		node:      cfg.node,
		log:       cfg.log.With("shard", id),
		fsm:       sm,
		applied:   applied,
		nodes:     cfg.nodes,
		changed:   make(chan struct{}),
		stop:      g.closing,
		obsCh:     make(chan raft.Observation, 64),

		heartbeatTimeout: time.Duration(t.HeartbeatTimeout),
		electionTimeout:  time.Duration(t.ElectionTimeout),
		quiet:            quietTimeout(t),
		timersChanged:    cfg.timersChanged,
	}
	rep.verifier = verifier{r: rep, ctx: cfg.ctx, others: rep.otherVoters, termOf: func(ctx context.Context, node string) (uint64, error) {
		return cfg.nodes.termOf(ctx, node, id)
	}}
	rep.proposals = &batcher[fsm.Op, fsm.Result]{
		commit:   rep.commit,
		parallel: outstandingEntries,
		maxItems: entryMaxOps, maxBytes: entryMaxBytes, size: opSize,
		spawn: rep.group.Go, closed: raft.ErrRaftShutdown,
	}
	rep.proposing.submit = rep.proposals.submit
	rep.linkToLeader(cfg.ctx, cfg.callTimeout)
	rep.observer = raft.NewObserver(rep.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState, raft.FailedHeartbeatObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(rep.observer)
	rep.group.Go(rep.watch)
	return rep, nil
}

// watch follows raft's leadership changes: it wakes whoever waits for a
// leader, makes a new leader ready for reads, and gives a replica that
// stopped leading, or whose heartbeats to a follower fail, its configured
// heartbeat timeout back.
func (r *replica) watch() {
	for o := range r.obsCh {
		if _, ok := o.Data.(raft.FailedHeartbeatObservation); ok {
			r.heartbeatFailed.Store(time.Now().UnixNano())
			r.wake()
			continue
		}
		if r.raft.State() == raft.Leader {
			r.ensureReady()
		} else {
			r.wake()
		}
		r.broadcast()
	}
}

func (r *replica) broadcast() {
	r.changeMu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.changeMu.Unlock()
}

// changes returns a channel closed at the next change of leader or
// readiness.
func (r *replica) changes() <-chan struct{} {
	r.changeMu.Lock()
	defer r.changeMu.Unlock()
	return r.changed
}

// ensureReady starts, unless one is running, what makes this leader ready
// for reads in its current term: it proposes a tick and waits for it to
// apply, which means everything committed before the term began is applied
// here. (Applying the term's first command also extends the job leases
// live under the previous leader; see fsm.FSM.) One per term, until ready
// or no longer leader.
func (r *replica) ensureReady() {
	if !r.barrierRunning.CompareAndSwap(false, true) {
		return
	}
	started := r.group.Go(func() {
		for r.isLeader() {
			term := r.raft.CurrentTerm()
			if r.readyTerm.Load() == term {
				break
			}
			_, err := r.apply(context.Background(), fsm.Op{Kind: fsm.KindTick})
			// The command is this term's only if the term did not move
			// meanwhile.
			if err == nil && r.raft.CurrentTerm() == term && r.isLeader() {
				r.readyTerm.Store(term)
				r.timersChanged() // the state the term inherited is all applied
			}
			if err != nil {
				break // not leader any more, or shutting down
			}
		}
		// Clear the flag before waking waiters, so that one who still
		// finds the replica not ready can start anew.
		r.barrierRunning.Store(false)
		r.broadcast()
	})
	if !started {
		r.barrierRunning.Store(false)
	}
}

// waitReady waits until this replica leads and is ready in its term, and
// returns the term; ErrNotLeader if it does not lead.
func (r *replica) waitReady(ctx context.Context) (uint64, error) {
	for {
		if !r.isLeader() {
			return 0, ErrNotLeader
		}
		ch := r.changes()
		term := r.raft.CurrentTerm()
		if r.readyTerm.Load() == term {
			return term, nil
		}
		r.ensureReady()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (r *replica) isLeader() bool { return r.raft.State() == raft.Leader }

// leaderHeard reports whether this replica follows a leader it heard from
// within a heartbeat timeout.
func (r *replica) leaderHeard() bool {
	return r.leaderID() != "" && time.Since(r.raft.LastContact()) < r.heartbeatTimeout
}

// leaderID returns the node id of the leader this replica knows, or "".
func (r *replica) leaderID() string {
	_, id := r.raft.LeaderWithID()
	return string(id)
}

// propose applies ops through this replica, which must lead, and returns
// their results in order. raft.ErrNotLeader and raft.ErrLeadershipLost come
// back as they are: after the latter the ops may or may not commit, and
// only a retry with the same sequence numbers settles it. An op whose
// request already waits to commit here takes that attempt's result.
func (r *replica) propose(ctx context.Context, ops ...fsm.Op) ([]fsm.Result, error) {
	if !r.isLeader() {
		return nil, ErrNotLeader
	}
	return r.proposing.propose(ctx, ops...)
}

// apply proposes op, in an entry perhaps shared with other ops, and waits
// for it to apply.
func (r *replica) apply(ctx context.Context, op fsm.Op) (fsm.Result, error) {
	res, err := r.proposals.submit(ctx, op)
	if err != nil {
		return fsm.Result{}, err
	}
	return res[0], nil
}

// commit proposes ops as one command, stamped with this node's clock, and
// waits for it to apply.
func (r *replica) commit(ops []fsm.Op) ([]fsm.Result, error) {
	cmd := fsm.Command{Now: time.Now().UnixNano(), Ops: ops}
	data, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	r.entries.Add(1)
	r.wake()
	f := r.raft.Apply(data, applyEnqueueTimeout)
	if err := awaitFuture(f, r.stop); err != nil {
		return nil, err
	}
	for _, op := range ops {
		if slices.Contains(timedKinds, op.Kind) {
			r.timersChanged()
			break
		}
	}
	switch resp := f.Response().(type) {
	case []fsm.Result:
		return resp, nil
	case error:
		return nil, resp
	default:
		return nil, fmt.Errorf("server: shard %d: unexpected apply response %T", r.id, resp)
	}
}

// opSize is about the bytes op takes in a command.
func opSize(op fsm.Op) int {
	size := 64 + len(op.Client) + len(op.Key) + len(op.Value) + len(op.Topic) + len(op.JobID) +
		len(op.Unique) + len(op.Reason)
	for _, j := range op.Batch {
		size += opSize(j)
	}
	return size
}

// close shuts the raft instance down and releases its transport and store.
// Peers see it as a crash: no leadership is handed over.
func (r *replica) close() error {
	close(r.stop)
	err := r.raft.Shutdown().Error()
	r.raft.DeregisterObserver(r.observer)
	close(r.obsCh)
	return r.raftGroup.close(err, r.group.Wait)
}
