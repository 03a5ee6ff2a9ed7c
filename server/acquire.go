package server

import (
	"context"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

const (
	// readyCap bounds each ready count a node computes and reports.
	readyCap = 1000
	// acquireResultTTL is how long a node remembers the answer to an
	// acquire, so that a retry of it gets the same job rather than a
	// second one.
	acquireResultTTL = 30 * time.Second
	// unseenAskTimeout bounds asking a shard that this node's replica
	// shows no job on (see readyFirst): a leader that stopped answering
	// must not hold up the jobs of the others for the request's whole
	// budget.
	unseenAskTimeout = 500 * time.Millisecond
)

// longPolls counts the long polls a node is handling, acquires that may
// wait for a job, in all and by client id, and holds them to max and
// perClient. byClient has an entry only for the ids with one running, so
// it holds at most max.
type longPolls struct {
	mu             sync.Mutex
	max, perClient int
	running        int
	byClient       map[string]int
}

func newLongPolls(max, perClient int) *longPolls {
	return &longPolls{max: max, perClient: perClient, byClient: make(map[string]int)}
}

// enter counts a long poll of client beginning, unless max or perClient
// are running; it reports whether it did, and then the caller must call
// leave when the long poll ends.
func (p *longPolls) enter(client string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running >= p.max || p.byClient[client] >= p.perClient {
		return false
	}
	p.running++
	p.byClient[client]++
	return true
}

// leave counts the end of a long poll of client that entered.
func (p *longPolls) leave(client string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running--
	if p.byClient[client]--; p.byClient[client] == 0 {
		delete(p.byClient, client)
	}
}

// count returns the long polls running.
func (p *longPolls) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// acquireFlights remembers the acquires a node is running or has answered
// lately, by client and sequence number. A retry of an acquire joins the
// one running, or gets its answer: a second run could hand out a second
// job on another shard, and the client would take only one of them. A run
// that failed (its outcome unknown) is not remembered as an answer: the
// retry runs again, first on the shard the failed run proposed on, whose
// session answers with the grant if the proposal took. Nor is a grant,
// whose payload may be 60 KiB: a retry after it runs again first on the
// shard that granted it, whose session answers with the same grant, the
// payload read from the job (see fsm.FSM.Apply's sessions).
type acquireFlights struct {
	mu      sync.Mutex
	flights map[string]*acquireFlight
	pruned  time.Time
}

type acquireFlight struct {
	done  chan struct{}
	reply *wire.Message // nil: the run failed, or granted a job
	// open is the replica of the shard the failed run had proposed on,
	// or that granted the job; granted says which.
	open    *replica
	granted bool
	ended   time.Time
}

// join returns the flight of key and whether the caller must run it, and
// for a rerun, the replica a failed run left open, or that granted a job.
func (a *acquireFlights) join(key string, now time.Time) (f *acquireFlight, run bool, open *replica, granted bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.flights == nil {
		a.flights = make(map[string]*acquireFlight)
	}
	if now.Sub(a.pruned) > acquireResultTTL/10 {
		a.pruned = now
		for k, f := range a.flights {
			if !f.ended.IsZero() && now.Sub(f.ended) > acquireResultTTL {
				delete(a.flights, k)
			}
		}
	}
	if f, ok := a.flights[key]; ok && (f.ended.IsZero() || f.reply != nil) {
		return f, false, nil, false
	} else if ok {
		open, granted = f.open, f.granted
	}
	f = &acquireFlight{done: make(chan struct{})}
	a.flights[key] = f
	return f, true, open, granted
}

// finish ends flight f of key with reply, nil if the run failed after
// proposing on open, or if open granted a job before (granted) and could
// not be asked again. Requests that joined f get reply; a grant's reply is
// not kept for later ones, which run again, first on open, the granting
// shard.
func (a *acquireFlights) finish(key string, f *acquireFlight, reply *wire.Message, open *replica, granted bool, now time.Time) {
	a.mu.Lock()
	f.reply, f.open, f.granted, f.ended = reply, open, granted, now
	if reply != nil && reply.Result.Job != nil {
		a.flights[key] = &acquireFlight{done: f.done, open: open, granted: true, ended: now}
	}
	a.mu.Unlock()
	close(f.done)
}

// acquire leases a ready job of the topic from one of the shards the
// request names (all this node holds, if it names none), waiting up to
// Args.Wait for one. It proposes the acquire on the shards whose replicas
// here see a ready job; a replica that lags the leader may see one that is
// gone, and a shard that answered "nothing" is tried again only once its
// replica here has applied past that answer. When the wait is over it
// replies with no job, and the client asks again.
func (n *Node) acquire(ctx context.Context, m *wire.Message) *wire.Message {
	a := &m.Args
	var reps []*replica
	v := n.current()
	if len(a.Shards) == 0 {
		for _, id := range v.shardIDs() {
			reps = append(reps, v.replicas[id])
		}
	}
	// Each shard named is asked once (wire.CheckArgs bounds how many are
	// named).
	named := make(map[shard.ID]bool, len(a.Shards))
	for _, id := range a.Shards {
		if rep := v.replicas[id]; rep != nil && !named[id] {
			named[id] = true
			reps = append(reps, rep)
		}
	}
	if len(reps) == 0 {
		return errorReply(wire.CodeWrongShard, "node %s holds none of shards %v (map version %d)", n.id, a.Shards, v.cluster.Version)
	}
	key := m.Client + "/" + strconv.FormatUint(m.Seq, 10)
	f, run, open, granted := n.acquires.join(key, time.Now())
	if !run {
		select {
		case <-f.done:
			if f.reply != nil {
				return f.reply
			}
			return errorReply(wire.CodeUnavailable, "the acquire failed; ask again")
		case <-ctx.Done():
			return errorReply(wire.CodeUnavailable, "acquire still running")
		}
	}
	reply, proposed, failed := n.runAcquire(ctx, m, reps, open, granted)
	if failed {
		// A run that failed asking the shard that had granted, whose
		// outcome is that grant, leaves it the granting shard.
		n.acquires.finish(key, f, nil, proposed, granted && proposed == open, time.Now())
	} else {
		n.acquires.finish(key, f, reply, proposed, false, time.Now())
	}
	return reply
}

// runAcquire does the work of acquire. It returns the replica of the shard
// that answered, if one did; if it fails after proposing on a shard, that
// shard's replica, and failed: whether the proposal took is unknown.
//
// open, if not nil, is asked first; if it granted this acquire before
// (granted), it must be: the retry of a grant is answered by the granting
// shard's session, and asking the others could lease a second job, which
// no one would work, while the first waits out its lease.
func (n *Node) runAcquire(ctx context.Context, m *wire.Message, reps []*replica, open *replica, granted bool) (reply *wire.Message, proposed *replica, failed bool) {
	a := &m.Args
	op := stateOp(m)
	op.Grant = newGrant()
	// Answer before the client gives up on this attempt.
	wait := a.Wait
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d)*9/10)
	}
	until := time.Now().Add(wait)
	// emptyAt[s] is the raft index of the entry in which shard s last had
	// nothing for this request.
	emptyAt := make(map[shard.ID]uint64, len(reps))
	// Watch before looking, so that a job arriving after the look wakes
	// the wait.
	watch := n.jobs.watch(a.Topic)
	defer watch.stop()
	// readySaid holds the shards whose leaders, asked by waitForJobs,
	// said they have a job ready, which the replicas here may not show
	// yet: a long poll asks those of the shards it follows here, not all
	// of them up front as an acquire that may not wait does. Asking is a
	// proposal, an entry in the shard's log: up front, every long poll on
	// an empty topic would write one, and a flood of them a flood of
	// writes. Waiting, it asks a leader only for the topic's jobs, which
	// costs the shard nothing.
	longPoll := a.Wait > 0
	readySaid := map[shard.ID]bool{}
	for {
		// A replica still at or before the index its shard last had
		// nothing at is asked again only once it has applied past it.
		for _, rep := range reps {
			if at, ok := emptyAt[rep.id]; ok && rep.fsm.Applied() <= at {
				watch.after(rep.id, at)
			}
		}
		now := time.Now()
		cands, unseen := readyFirst(reps, emptyAt, a.Topic, now)
		if longPoll {
			unseen = slices.DeleteFunc(unseen, func(rep *replica) bool { return !readySaid[rep.id] })
			clear(readySaid)
		}
		// The shard a failed run proposed on goes first, to learn what
		// came of that proposal, unless it has no live leader to ask: then
		// the run goes on without it, and a job it may have granted comes
		// back when that lease runs out.
		if open != nil && (open.isLeader() || open.leaderHeard()) {
			cands = append([]*replica{open}, cands...)
		} else if open != nil && granted {
			return errorReply(wire.CodeUnavailable, "shard %d, which answered this acquire, has no leader; ask again", open.id), open, true
		}
		open = nil
		for i, rep := range append(cands, unseen...) {
			actx, cancel := ctx, context.CancelFunc(func() {})
			if i >= len(cands) {
				actx, cancel = context.WithTimeout(ctx, unseenAskTimeout)
			}
			res, _, err := n.writeResult(actx, rep, op)
			cancel()
			if err != nil {
				return leaderErrorReply(actx, rep.id, err), rep, true
			}
			if res.Status != fsm.StatusEmpty {
				return writeReply(res), rep, false
			}
			emptyAt[rep.id] = res.Index
		}
		if !now.Before(until) {
			return resultReply(wire.Result{}), nil, false
		}
		if len(cands)+len(unseen) == 0 {
			// A shard whose leader says a job is ready is asked again.
			for _, id := range n.waitForJobs(ctx, watch, reps, emptyAt, a.Topic, until) {
				delete(emptyAt, id)
				readySaid[id] = true
			}
		}
	}
}

// readyFirst returns the replicas whose state shows a ready job of topic,
// most ready first, in random order among equals so that concurrent
// acquires spread over the shards; a replica that has applied nothing
// since its shard last had nothing is left out.
//
// A follower learns of a commit only with its leader's next message, up to
// two CommitTimeouts later, so it also returns, as unseen, the followers
// here whose shard this request has not asked yet and whose leader was
// heard from lately: asked once, their leaders find a job enqueued just
// before at once. (A long poll asks only those whose leaders said they
// have one; see runAcquire.)
func readyFirst(reps []*replica, emptyAt map[shard.ID]uint64, topic string, now time.Time) (ready, unseen []*replica) {
	type cand struct {
		rep   *replica
		ready int
		tie   uint32
	}
	var cands []cand
	for _, rep := range reps {
		at, asked := emptyAt[rep.id]
		if asked && rep.fsm.Applied() <= at {
			continue
		}
		if k := rep.fsm.ReadyCount(topic, now.UnixNano(), readyCap); k > 0 {
			cands = append(cands, cand{rep, k, rand.Uint32()})
		} else if !asked && !rep.isLeader() && rep.leaderHeard() {
			unseen = append(unseen, rep)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		return cands[i].ready > cands[j].ready || (cands[i].ready == cands[j].ready && cands[i].tie < cands[j].tie)
	})
	ready = make([]*replica, len(cands))
	for i, c := range cands {
		ready[i] = c.rep
	}
	rand.Shuffle(len(unseen), func(i, j int) { unseen[i], unseen[j] = unseen[j], unseen[i] })
	return ready, unseen
}

// leaderRecheck is how often a waiting acquire looks again for the leader
// of a shard it follows that has none it heard from.
const leaderRecheck = 100 * time.Millisecond

// waitForJobs waits for watch's wake-up (see jobWatch), until the topic's
// next job comes due on a replica not left out by readyFirst, until passes,
// or ctx ends. A follower here learns of a new job only with its leader's
// next message, up to two CommitTimeouts late, so for each shard this node
// follows it also asks the leader to answer when the topic has a job ready
// there (ForwardRequest.WaitTopic), and returns the shards whose leaders
// answered so. A follower that has not heard from a leader lately (an
// election, or a follower just started) has none to ask: the wait then
// ends within leaderRecheck, so that the caller looks again and asks the
// leader once there is one.
func (n *Node) waitForJobs(ctx context.Context, watch *jobWatcher, reps []*replica, emptyAt map[shard.ID]uint64, topic string, until time.Time) []shard.ID {
	wake := until
	for _, rep := range reps {
		if recheck := time.Now().Add(leaderRecheck); !rep.isLeader() && !rep.leaderHeard() && recheck.Before(wake) {
			wake = recheck
		}
		if at, ok := emptyAt[rep.id]; ok && rep.fsm.Applied() <= at {
			continue
		}
		if at, ok := rep.fsm.NextAvailable(topic); ok && time.Unix(0, at).Before(wake) {
			wake = time.Unix(0, at)
		}
	}
	wctx, cancel := context.WithDeadline(ctx, wake)
	defer cancel()
	ready := make(chan shard.ID, len(reps))
	for _, rep := range reps {
		if rep.isLeader() || !rep.leaderHeard() {
			continue
		}
		n.group.Go(func() {
			fr, err := rep.callLeader(wctx, ForwardRequest{WaitTopic: topic})
			if err == nil && fr.Ready {
				ready <- rep.id
			}
		})
	}
	var woke []shard.ID
	n.jobs.blocked.Add(1)
	select {
	case <-watch.wake:
	case <-wctx.Done():
	case id := <-ready:
		woke = append(woke, id)
	}
	n.jobs.blocked.Add(-1)
	for {
		select {
		case id := <-ready:
			woke = append(woke, id)
		default:
			return woke
		}
	}
}

// awaitReady waits, on a leader, until topic has a job ready in rep's
// state, and reports whether it has one; false when ctx ends first.
func (n *Node) awaitReady(ctx context.Context, rep *replica, topic string) (bool, error) {
	watch := n.jobs.watch(topic)
	defer watch.stop()
	for {
		changed := rep.changes()
		if !rep.isLeader() {
			return false, ErrNotLeader
		}
		if rep.fsm.ReadyCount(topic, time.Now().UnixNano(), 1) > 0 {
			return true, nil
		}
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if at, ok := rep.fsm.NextAvailable(topic); ok {
			wctx, cancel = context.WithDeadline(ctx, time.Unix(0, at))
		}
		select {
		case <-watch.wake:
		case <-changed:
		case <-wctx.Done():
		}
		cancel()
		if ctx.Err() != nil {
			return false, nil
		}
	}
}
