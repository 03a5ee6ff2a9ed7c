package server

import (
	"sync"
	"time"
)

// A raft leader heartbeats each follower every tenth of its heartbeat
// timeout, busy or idle, and hashicorp/raft cannot share heartbeats between
// groups: on a node holding many replicas that is most of its idle CPU. So
// the leader of a group whose log has stopped growing quiesces: it raises
// its own heartbeat timeout (raft.ReloadConfig), which makes its heartbeats
// rare, and lowers it again with the group's next entry, when a heartbeat
// to a follower fails, or when it stops leading. Only the leader's timing
// changes. Its followers keep theirs, so a
// quiesced leader that dies is noticed as soon as a busy one; while it
// lives, the append raft sends every CommitTimeout keeps them, and the
// leader's lease, in contact. That is why a group quiesces only when twice
// CommitTimeout (the longest gap between those appends) fits in four fifths
// of the lease timeout.
const (
	// quietFactor is how many times longer a quiesced leader's heartbeat
	// timeout is than the configured one.
	quietFactor = 20
	// quiesceAfter is how many idle checks, one every heartbeat timeout,
	// a leader's log must stay the same length before it quiesces.
	quiesceAfter = 3
)

// quietTimeout returns the heartbeat timeout of a quiesced leader under
// timing t, or zero if t's appends are too far apart to stand in for
// heartbeats.
func quietTimeout(t RaftTiming) time.Duration {
	if 5*t.CommitTimeout > 2*t.LeaderLeaseTimeout {
		return 0
	}
	return quietFactor * time.Duration(t.HeartbeatTimeout)
}

// quiesceIdle checks every heartbeat timeout which of the node's leaders
// are idle. Stops with the node.
func (n *Node) quiesceIdle() {
	t := time.NewTicker(time.Duration(n.cfg.Spec.Raft.withDefaults().HeartbeatTimeout))
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			for _, rep := range n.current().replicas {
				rep.checkIdle()
			}
		}
	}
}

// checkIdle counts the checks in a row that found this replica leading and
// its log unchanged, and quiesces it after quiesceAfter of them. Only
// quiesceIdle calls it.
func (r *replica) checkIdle() {
	if r.quiet == 0 {
		return
	}
	entries := r.entries.Load()
	// While a follower's heartbeats fail, raft backs them off up to half
	// the heartbeat timeout: quiesced, a follower coming back would wait
	// that long to hear from its leader.
	failing := time.Since(time.Unix(0, r.heartbeatFailed.Load())) < quiesceAfter*r.heartbeatTimeout
	if !r.isLeader() || entries != r.idle.entries || failing {
		r.idle.entries, r.idle.checks = entries, 0
		return
	}
	if r.idle.checks++; r.idle.checks == quiesceAfter {
		r.quiesce(entries)
	}
}

// quiesce raises the leader's heartbeat timeout, unless the replica has
// proposed an entry since the idle checks counted entries of them.
//
// commit counts each entry before it looks whether the replica is
// quiesced, and quiesce marks it quiesced before it looks at the count, so
// an entry proposed meanwhile is either seen here or wakes the replica.
func (r *replica) quiesce(entries uint64) {
	r.quietMu.Lock()
	defer r.quietMu.Unlock()
	if r.awake || r.holds > 0 {
		return
	}
	r.quiesced.Store(true)
	if r.entries.Load() != entries || !r.isLeader() {
		r.quiesced.Store(false)
		return
	}
	if r.setHeartbeatTimeout(r.quiet) {
		r.log.Debug("quiesced", "heartbeat_timeout", r.quiet)
	} else {
		r.quiesced.Store(false)
	}
}

// wake restores the configured heartbeat timeout if the replica is
// quiesced. Lowering it makes raft heartbeat the followers at once.
func (r *replica) wake() {
	if !r.quiesced.Load() {
		return
	}
	r.quietMu.Lock()
	defer r.quietMu.Unlock()
	if r.quiesced.Load() && r.setHeartbeatTimeout(r.heartbeatTimeout) {
		r.quiesced.Store(false)
		r.log.Debug("woke", "heartbeat_timeout", r.heartbeatTimeout)
	}
}

// stayAwake wakes the replica and keeps it from quiescing again: raft
// bounds a leadership transfer by the election timeout, which quiescing
// raises.
func (r *replica) stayAwake() {
	r.quietMu.Lock()
	r.awake = true
	r.quietMu.Unlock()
	r.wake()
}

// holdAwake wakes the replica and keeps it from quiescing until release
// is called: a leadership transfer, bounded by the election timeout that
// quiescing raises, runs while it is held. Once released, the replica
// quiesces again when its idle checks next find it idle.
func (r *replica) holdAwake() (release func()) {
	r.quietMu.Lock()
	r.holds++
	r.quietMu.Unlock()
	r.wake()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.quietMu.Lock()
			r.holds--
			r.quietMu.Unlock()
		})
	}
}

// setHeartbeatTimeout sets raft's heartbeat timeout, and its election
// timeout to at least that (raft requires it), and reports whether raft
// took them.
func (r *replica) setHeartbeatTimeout(d time.Duration) bool {
	rc := r.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = d, max(d, r.electionTimeout)
	if err := r.raft.ReloadConfig(rc); err != nil {
		r.log.Warn("changing the heartbeat timeout failed", "to", d, "err", err)
		return false
	}
	return true
}
