package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
)

// Linearizable reads use the ReadIndex of the Raft dissertation (§6.4): the
// leader takes its commit index, then confirms with a quorum that it still
// leads, and a replica answers once its state machine has applied that
// index. The confirmation is a call of our own, not raft's VerifyLeader:
// that counts every follower response arriving after it is called,
// including one to a heartbeat sent before, which the follower may have
// answered before voting for a newer leader.

// readIndex returns an index such that a replica whose state machine has
// applied it reflects every write acknowledged before the call: any
// replica that has applied it, this one included (see readAt), may answer
// a read begun before the call from its own state. This replica must be
// the leader.
//
// The index is the leader's commit index (etcd's ReadIndex), not its
// applied index: a follower may apply an entry before the leader's state
// machine does, and a read served from such a follower must not be
// followed by one that misses the entry. Once ready in its term (its tick
// of the term applied), the leader has committed every write any earlier
// leader acknowledged. A round of the verifier begun after the index was
// taken rules out a newer leader having acknowledged writes meanwhile.
func (r *replica) readIndex(ctx context.Context) (uint64, error) {
	term, err := r.waitReady(ctx)
	if err != nil {
		return 0, err
	}
	index, err := r.stateIndex(r.raft.CommitIndex())
	if err != nil {
		return 0, err
	}
	if err := r.verifier.verify(ctx); err != nil {
		return 0, err
	}
	// The index counts only if leadership held through one term from the
	// readiness check to the confirmation: had it been lost and won back
	// meanwhile, another leader could have acknowledged writes this
	// replica had not applied when it took the index.
	if r.raft.CurrentTerm() != term || r.readyTerm.Load() != term {
		return 0, ErrNotLeader
	}
	return index, nil
}

// leaderRead returns once this replica, which must lead, may answer from
// its own state a read begun before the call: a read index taken, and
// applied here.
func (r *replica) leaderRead(ctx context.Context) error {
	index, err := r.readIndex(ctx)
	if err != nil {
		return err
	}
	return r.readAt(ctx, index)
}

// readAt returns once this replica's state machine has applied index, so
// that its state answers the reads index was taken for.
func (r *replica) readAt(ctx context.Context, index uint64) error {
	return r.applied.await(ctx, r.stop, func() bool { return r.fsm.Applied() >= index })
}

// stateIndex returns the index of the last entry at or before index that
// the state machine applies (a command or a configuration), which is where
// its applied index (fsm.Applied) can rest: raft keeps its no-ops and
// barriers from a batching state machine, so an applied index may stay
// short of a commit index for as long as no command follows. The scan
// back is short: a ready leader's term began with a command (its tick),
// and only Node.Barrier, which tests call, adds barriers after it.
// An entry the log no longer holds is in a snapshot, which the state
// machine has applied: its applied index then covers every state entry up
// to there.
func (r *replica) stateIndex(index uint64) (uint64, error) {
	for i := index; i > 0; i-- {
		var l raft.Log
		err := r.logs.GetLog(i, &l)
		switch {
		case errors.Is(err, raft.ErrLogNotFound):
			return min(i, r.fsm.Applied()), nil
		case err != nil:
			return 0, fmt.Errorf("server: shard %d: reading log entry %d: %w", r.id, i, err)
		case l.Type == raft.LogCommand || l.Type == raft.LogConfiguration:
			return i, nil
		}
	}
	return 0, nil
}

// applyWait lets reads wait until a replica's state machine has applied an
// index: the state machine's observer wakes every waiter after each batch
// it applies, and each looks again.
type applyWait struct {
	// waiting counts the waiters, so that applying skips the lock while
	// nobody waits.
	waiting atomic.Int64

	mu sync.Mutex
	ch chan struct{} // closed at the next wake; nil until a waiter asks
}

// wake wakes the waiters; the state machine has applied more.
func (w *applyWait) wake() {
	if w.waiting.Load() == 0 {
		return
	}
	w.mu.Lock()
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
	w.mu.Unlock()
}

// await returns once done reports true, looking again at each wake, or
// with ctx's error, or raft.ErrRaftShutdown once stop closes. done must
// turn true only through an apply that wakes (see replicaObserver).
func (w *applyWait) await(ctx context.Context, stop <-chan struct{}, done func() bool) error {
	if done() {
		return nil
	}
	w.waiting.Add(1)
	defer w.waiting.Add(-1)
	for {
		// The channel is taken before done looks: an apply after the
		// look closes it, since it sees this waiter counted.
		w.mu.Lock()
		if w.ch == nil {
			w.ch = make(chan struct{})
		}
		ch := w.ch
		w.mu.Unlock()
		if done() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return raft.ErrRaftShutdown
		}
	}
}

// hedgeDelay is how long a read round waits for the peers it called before
// it calls the rest of the shard's replicas too.
const hedgeDelay = 5 * time.Millisecond

// TermRequest asks a node for its current raft term of a shard: a leader
// confirming its leadership for reads, or looking whether the node could
// take the shard's leadership over (see leadership.go). It is part of the
// node-to-node protocol, not of the client API.
type TermRequest struct {
	Shard shard.ID
	// Progress asks for TermReply's LastIndex, Applied and Leads too.
	// Reads leave it unset: counting Leads looks at every replica of the
	// node. A node of an older version ignores it and answers all zero.
	Progress bool
}

// TermReply answers a TermRequest.
type TermReply struct {
	Term uint64
	// LastIndex is the index of the last entry in the node's raft log of
	// the shard, Applied the index its state machine has applied, and
	// Leads counts the shards the node leads; all only when the request
	// asked for Progress.
	LastIndex, Applied uint64
	Leads              int
	// Err describes the failure; empty on success.
	Err string
}

// Term serves a TermRequest from a peer.
func (s *nodeService) Term(req TermRequest, reply *TermReply) error {
	if !s.n.started.Load() {
		reply.Err = fmt.Sprintf("node %s is starting", s.n.id)
		return nil
	}
	rep := s.n.replica(req.Shard)
	if rep == nil {
		reply.Err = fmt.Sprintf("node %s holds no replica of shard %d", s.n.id, req.Shard)
		return nil
	}
	reply.Term = rep.raft.CurrentTerm()
	if req.Progress {
		reply.LastIndex = rep.raft.LastIndex()
		reply.Applied = rep.fsm.Applied()
		reply.Leads = s.n.leads()
	}
	return nil
}

// termOf asks node for its current raft term of shard id. A call that
// runs out of time resets the connection: net/rpc cannot cancel a call, and
// a peer that stopped reading would otherwise hold every call sent to it.
func (p *peers) termOf(ctx context.Context, node string, id shard.ID) (uint64, error) {
	reply, err := p.ask(ctx, node, TermRequest{Shard: id})
	return reply.Term, err
}

// ask sends req to node and returns its reply; a reply with Err set comes
// back as an error.
func (p *peers) ask(ctx context.Context, node string, req TermRequest) (TermReply, error) {
	reply, err := call[TermReply](ctx, p, node, "Node.Term", req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			p.reset(node)
		}
		return TermReply{}, err
	}
	if reply.Err != "" {
		return TermReply{}, fmt.Errorf("server: %s: %s", node, reply.Err)
	}
	return reply, nil
}

// verifier confirms leadership for many reads with one round of calls to
// the shard's other replicas: reads that arrive while a round is running
// share the next one.
type verifier struct {
	r *replica
	// others returns the voters of the group but this node (the
	// replica's otherVoters).
	others func() []string
	// termOf asks a node holding another voter of the shard its current
	// term of the shard, within ctx, which ends when the node stops.
	termOf func(ctx context.Context, node string) (uint64, error)
	ctx    context.Context
	// asking[node] is set while a call to node is unanswered. A round ends
	// once a quorum answers, but its calls run on, each until answered or
	// an election timeout passes: a peer that does not answer gets no
	// other call meanwhile, so calls to it cannot pile up. The loop alone
	// adds to the map, which holds the nodes that have been voters.
	askMu  sync.Mutex
	asking map[string]*atomic.Bool
	// first is the peer that answered first in the last round; the loop
	// alone uses it.
	first string

	mu      sync.Mutex
	waiting []chan error
	running bool
}

func (v *verifier) verify(ctx context.Context) error {
	ch := make(chan error, 1)
	v.mu.Lock()
	v.waiting = append(v.waiting, ch)
	if !v.running {
		v.running = v.r.group.Go(v.loop)
		if !v.running {
			v.waiting = v.waiting[:len(v.waiting)-1]
			v.mu.Unlock()
			return raft.ErrRaftShutdown
		}
	}
	v.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *verifier) loop() {
	for {
		v.mu.Lock()
		batch := v.waiting
		v.waiting = nil
		if len(batch) == 0 {
			v.running = false
			v.mu.Unlock()
			return
		}
		v.mu.Unlock()
		err := v.round()
		for _, ch := range batch {
			ch <- err
		}
	}
}

// round confirms that this replica leads in its current term as of a
// moment after the round began: a quorum of the shard's replicas, itself
// included, each answers a call made in the round with a term no newer.
// A replica that has not moved past the term has not voted for a newer
// leader, and a newer leader needs the votes of a quorum, which meets this
// one: so none was elected before the answers, and none acknowledged a
// write before the reads of the round took their indexes.
//
// A round calls only as many peers as it needs, the one that answered
// first last time before the others; it calls another when one fails, and
// all the rest when the answers are later than hedgeDelay.
func (v *verifier) round() error {
	term := v.r.raft.CurrentTerm()
	if v.r.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	// The voters of the latest configuration, as raft counts its quorums,
	// less this one; a round of a group being reconfigured asks those of
	// the configuration it started with.
	others := v.others()
	need := (len(others) + 1) / 2
	if need == 0 {
		return nil
	}
	type answer struct {
		peer string
		term uint64
		err  error
	}
	answers := make(chan answer, len(others))
	var errs []error
	// Peers are called in turn from the one that answered first last
	// time, each at most once a round; calling counts the calls not
	// answered yet.
	start, first := max(slices.Index(others, v.first), 0), ""
	defer func() {
		if first != "" {
			v.first = first
		}
	}()
	calling, next := 0, 0
	// call calls the next peer in turn that has no call running, and
	// reports whether there was one.
	call := func() bool {
		for ; next < len(others); next++ {
			peer := others[(start+next)%len(others)]
			asking := v.flag(peer)
			if !asking.CompareAndSwap(false, true) {
				errs = append(errs, fmt.Errorf("node %s has not answered the last call", peer))
				continue
			}
			next++
			ask := func() {
				ctx, cancel := context.WithTimeout(v.ctx, v.r.electionTimeout)
				t, err := v.termOf(ctx, peer)
				cancel()
				// Free before answering: the next round may start on
				// this answer, and must be able to call again.
				asking.Store(false)
				answers <- answer{peer, t, err}
			}
			if !v.r.group.Go(ask) {
				asking.Store(false)
				return false
			}
			calling++
			return true
		}
		return false
	}
	for range need {
		call()
	}
	hedge := time.NewTimer(hedgeDelay)
	defer hedge.Stop()
	for granted := 0; granted < need; {
		// A peer that failed, or was skipped with a call running, counts
		// against the round.
		if calling == 0 || len(errs) > len(others)-need {
			return fmt.Errorf("%w: shard %d: leadership not confirmed: %w", errRetry, v.r.id, errors.Join(errs...))
		}
		select {
		case a := <-answers:
			calling--
			switch {
			case a.err != nil:
				errs = append(errs, a.err)
				call()
			case a.term > term:
				return fmt.Errorf("%w: shard %d: node %s is in term %d, after %d", ErrNotLeader, v.r.id, a.peer, a.term, term)
			default:
				if first == "" {
					first = a.peer
				}
				granted++
			}
		case <-hedge.C:
			for call() {
			}
		case <-v.r.stop:
			return raft.ErrRaftShutdown
		}
	}
	return nil
}

// flag returns the flag that is set while a call to node runs.
func (v *verifier) flag(node string) *atomic.Bool {
	v.askMu.Lock()
	defer v.askMu.Unlock()
	if v.asking == nil {
		v.asking = make(map[string]*atomic.Bool)
	}
	f := v.asking[node]
	if f == nil {
		f = new(atomic.Bool)
		v.asking[node] = f
	}
	return f
}
