package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
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
	// maxReadyReports and maxReadyBytes bound the (shard, topic) entries
	// of a heartbeat, which must fit a datagram.
	maxReadyReports = 256
	maxReadyBytes   = 32 << 10
	// A node looks at most every scheduleTick, and at least every
	// scheduleIdle, whether a shard it leads needs a tick (see
	// runSchedules).
	scheduleTick = 50 * time.Millisecond
	scheduleIdle = time.Second
	// acquireResultTTL is how long a node remembers the answer to an
	// acquire, so that a retry of it gets the same job rather than a
	// second one.
	acquireResultTTL = 30 * time.Second
	// maxDeadListing bounds a dead-job listing.
	maxDeadListing = 100
)

// holderKinds are the state machine ops of the job ops that act on a job by
// its id.
var holderKinds = map[wire.Op]fsm.Kind{
	wire.OpExtend: fsm.KindExtend, wire.OpComplete: fsm.KindComplete, wire.OpFail: fsm.KindFail,
	wire.OpRelease: fsm.KindRelease, wire.OpRequeue: fsm.KindRequeue,
}

// jobOp handles the job ops other than acquire.
func (n *Node) jobOp(ctx context.Context, m *wire.Message) *wire.Message {
	a := &m.Args
	op := fsm.Op{
		Client: m.Client, Seq: m.Seq, Ack: m.Ack,
		Topic: a.Topic, JobID: a.JobID, Token: a.Token, Lease: int64(a.Lease),
		MaxAttempts: a.MaxAttempts, Backoff: int64(a.Backoff), Unique: a.Unique,
		Reason: a.Reason, Interval: int64(a.Interval), Value: a.Value, Delay: int64(a.Delay),
	}
	if !a.RunAt.IsZero() {
		op.RunAt = a.RunAt.UnixNano()
	}
	var slot int
	switch m.Op {
	case wire.OpEnqueue:
		op.Kind = fsm.KindEnqueue
		if bad := checkJobID(a.JobID); bad != nil {
			return bad
		}
		if bad := checkTopic(a.Topic); bad != nil {
			return bad
		}
		if len(a.Value) > shard.MaxValueSize {
			return errorReply(wire.CodeTooLarge, "payload of %d bytes exceeds %d", len(a.Value), shard.MaxValueSize)
		}
		slot = shard.JobSlot(a.JobID)
	case wire.OpExtend, wire.OpComplete, wire.OpFail, wire.OpRelease, wire.OpRequeue:
		op.Kind = holderKinds[m.Op]
		if bad := checkJobID(a.JobID); bad != nil {
			return bad
		}
		if len(a.Reason) > shard.MaxKeySize {
			op.Reason = a.Reason[:shard.MaxKeySize]
		}
		slot = shard.JobSlot(a.JobID)
	case wire.OpEvery, wire.OpUnevery:
		op.Kind = fsm.KindEvery
		if m.Op == wire.OpUnevery {
			op.Kind = fsm.KindUnevery
		}
		if bad := checkTopic(a.Topic); bad != nil {
			return bad
		}
		if a.Unique == "" || len(a.Unique) > shard.MaxKeySize {
			return errorReply(wire.CodeBadRequest, "%s needs a schedule key of 1 to %d bytes", m.Op, shard.MaxKeySize)
		}
		if m.Op == wire.OpEvery && a.Interval < time.Millisecond {
			return errorReply(wire.CodeBadRequest, "every needs an interval of at least 1ms")
		}
		slot = shard.JobKeySlot(a.Topic, a.Unique)
	}
	if bad := checkWrite(m); bad != nil {
		return bad
	}
	rep, bad := n.shardReplica(n.shardMap.SlotShard(slot))
	if bad != nil {
		return bad
	}
	res, err := n.writeResult(ctx, rep, op)
	if err != nil {
		return leaderErrorReply(ctx, rep.id, err)
	}
	return jobReply(m.Op, res)
}

func checkJobID(id string) *wire.Message {
	if id == "" || len(id) > shard.MaxKeySize {
		return errorReply(wire.CodeBadRequest, "a job id of 1 to %d bytes is needed", shard.MaxKeySize)
	}
	return nil
}

func checkTopic(t string) *wire.Message {
	if t == "" || len(t) > shard.MaxKeySize {
		return errorReply(wire.CodeBadRequest, "a topic of 1 to %d bytes is needed", shard.MaxKeySize)
	}
	for i := 0; i < len(t); i++ {
		if t[i] == 0 {
			return errorReply(wire.CodeBadRequest, "a topic may not contain NUL")
		}
	}
	return nil
}

// jobReply turns the result of a job op into a reply.
func jobReply(op wire.Op, res fsm.Result) *wire.Message {
	switch err := res.Err(); {
	case errors.Is(err, fsm.ErrLeaseLost):
		return errorReply(wire.CodeLeaseLost, "lease lost: the token is not the job's live lease")
	case errors.Is(err, fsm.ErrWrongState):
		return errorReply(wire.CodeConflict, "the job is not dead")
	case errors.Is(err, fsm.ErrVersionConflict):
		return errorReply(wire.CodeConflict, "a job with this id exists")
	case err != nil:
		return opReply(res)
	}
	if res.JobID == "" {
		return resultReply(wire.Result{})
	}
	return resultReply(wire.Result{Job: jobInfo(res)})
}

func jobInfo(res fsm.Result) *wire.JobInfo {
	j := &wire.JobInfo{ID: res.JobID, Topic: res.Topic, Payload: res.Payload, Attempt: res.Attempt, Token: res.Token}
	if res.Deadline != 0 {
		j.Deadline = time.Unix(0, res.Deadline)
	}
	return j
}

// acquireFlights remembers the acquires a node is running or has answered
// lately, by client and sequence number. A retry of an acquire joins the
// one running, or gets its answer: a second run could hand out a second
// job on another shard, and the client would take only one of them. A run
// that failed (its outcome unknown) is not remembered as an answer: the
// retry runs again, first on the shard the failed run proposed on, whose
// session answers with the grant if the proposal took.
type acquireFlights struct {
	mu      sync.Mutex
	flights map[string]*acquireFlight
	pruned  time.Time
}

type acquireFlight struct {
	done  chan struct{}
	reply *wire.Message // nil: the run failed
	// open is the replica of the shard the failed run had proposed on.
	open  *replica
	ended time.Time
}

// join returns the flight of key and whether the caller must run it, and
// for a rerun, the replica a failed run left open.
func (a *acquireFlights) join(key string, now time.Time) (f *acquireFlight, run bool, open *replica) {
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
		return f, false, nil
	} else if ok {
		open = f.open
	}
	f = &acquireFlight{done: make(chan struct{})}
	a.flights[key] = f
	return f, true, open
}

func (a *acquireFlights) finish(f *acquireFlight, reply *wire.Message, open *replica, now time.Time) {
	a.mu.Lock()
	f.reply, f.open, f.ended = reply, open, now
	a.mu.Unlock()
	close(f.done)
}

// unseenAskTimeout bounds asking a shard that this node's replica shows no
// job on (see readyFirst): a leader that stopped answering must not hold
// up the jobs of the others for the request's whole budget.
const unseenAskTimeout = 500 * time.Millisecond

// acquire leases a ready job of the topic from one of the shards the
// request names (all this node holds, if it names none), waiting up to
// Args.Wait for one. It proposes the acquire on the shards whose replicas
// here see a ready job; a replica that lags the leader may see one that is
// gone, and a shard that answered "nothing" is tried again only once its
// replica here has applied past that answer. When the wait is over it
// replies with no job, and the client asks again.
func (n *Node) acquire(ctx context.Context, m *wire.Message) *wire.Message {
	a := &m.Args
	if bad := checkTopic(a.Topic); bad != nil {
		return bad
	}
	if a.Lease < time.Millisecond {
		return errorReply(wire.CodeBadRequest, "acquire needs a lease of at least 1ms")
	}
	if bad := checkWrite(m); bad != nil {
		return bad
	}
	var reps []*replica
	if len(a.Shards) == 0 {
		for _, id := range n.shardIDs() {
			reps = append(reps, n.replicas[id])
		}
	}
	for _, id := range a.Shards {
		if rep := n.replicas[id]; rep != nil {
			reps = append(reps, rep)
		}
	}
	if len(reps) == 0 {
		return errorReply(wire.CodeWrongShard, "node %s holds none of shards %v (map version %d)", n.id, a.Shards, n.shardMap.Version)
	}
	key := m.Client + "/" + strconv.FormatUint(m.Seq, 10)
	f, run, open := n.acquires.join(key, time.Now())
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
	reply, failed := n.runAcquire(ctx, m, reps, open)
	if failed != nil {
		n.acquires.finish(f, nil, failed, time.Now())
	} else {
		n.acquires.finish(f, reply, nil, time.Now())
	}
	return reply
}

// runAcquire does the work of acquire. If it fails after proposing on a
// shard, it returns that shard's replica as failed: whether the proposal
// took is unknown.
func (n *Node) runAcquire(ctx context.Context, m *wire.Message, reps []*replica, open *replica) (*wire.Message, *replica) {
	a := &m.Args
	op := fsm.Op{Kind: fsm.KindAcquire, Client: m.Client, Seq: m.Seq, Ack: m.Ack, Topic: a.Topic, Lease: int64(a.Lease)}
	// Answer before the client gives up on this attempt.
	wait := a.Wait
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d)*9/10)
	}
	until := time.Now().Add(wait)
	// emptyAt[s] is the raft index of the entry in which shard s last had
	// nothing for this request.
	emptyAt := make(map[shard.ID]uint64, len(reps))
	for {
		// Take what to wait on before looking, so that a job arriving
		// after the look wakes the wait.
		watch := watchJobs(reps, emptyAt, a.Topic)
		now := time.Now()
		cands, unseen := readyFirst(reps, emptyAt, a.Topic, now)
		// The shard a failed run proposed on goes first, to learn what
		// came of that proposal, unless it has no live leader to ask: then
		// the run goes on without it, and a job it may have granted comes
		// back when that lease runs out.
		if open != nil && (open.isLeader() || open.leaderHeard()) {
			cands = append([]*replica{open}, cands...)
		}
		open = nil
		for i, rep := range append(cands, unseen...) {
			actx, cancel := ctx, context.CancelFunc(func() {})
			if i >= len(cands) {
				actx, cancel = context.WithTimeout(ctx, unseenAskTimeout)
			}
			res, err := n.writeResult(actx, rep, op)
			cancel()
			if err != nil {
				return leaderErrorReply(actx, rep.id, err), rep
			}
			if res.Status == fsm.StatusOK {
				return jobReply(m.Op, res), nil
			}
			if res.Status != fsm.StatusEmpty {
				return opReply(res), nil
			}
			emptyAt[rep.id] = res.Index
		}
		if !now.Before(until) {
			return resultReply(wire.Result{}), nil
		}
		if len(cands)+len(unseen) == 0 {
			// A shard whose leader says a job is ready is asked again.
			for _, id := range n.waitForJobs(ctx, watch, reps, emptyAt, a.Topic, until) {
				delete(emptyAt, id)
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
// before at once.
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

// watchJobs returns what waitForJobs waits on for each replica: the
// topic's changes, or, for one whose shard last had nothing and that has
// not applied past that answer, its next applied command.
func watchJobs(reps []*replica, emptyAt map[shard.ID]uint64, topic string) []reflect.SelectCase {
	cases := make([]reflect.SelectCase, 0, len(reps)+2)
	for _, rep := range reps {
		var ch <-chan struct{}
		if at, ok := emptyAt[rep.id]; ok && rep.fsm.Applied() <= at {
			ch = rep.fsm.AppliedChanges()
		} else {
			ch = rep.fsm.TopicChanges(topic)
		}
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	return cases
}

// waitForJobs waits on watch (see watchJobs), until the topic's next job
// comes due on a replica not left out by readyFirst, until passes, or ctx
// ends. A follower here learns of a new job only with its leader's next
// message, up to two CommitTimeouts late, so for each shard this node
// follows it also asks the leader to answer when the topic has a job ready
// there (ForwardRequest.WaitTopic), and returns the shards whose leaders
// answered so.
func (n *Node) waitForJobs(ctx context.Context, watch []reflect.SelectCase, reps []*replica, emptyAt map[shard.ID]uint64, topic string, until time.Time) []shard.ID {
	wake := until
	for _, rep := range reps {
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
			fr, err := n.callLeader(wctx, rep, ForwardRequest{WaitTopic: topic})
			if err == nil && fr.Ready {
				ready <- rep.id
			}
		})
	}
	cases := append(watch,
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(wctx.Done())},
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ready)})
	var woke []shard.ID
	if chosen, id, _ := reflect.Select(cases); chosen == len(cases)-1 {
		woke = append(woke, id.Interface().(shard.ID))
	}
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
	deadline, _ := ctx.Deadline()
	reps := []*replica{rep}
	for {
		watch := watchJobs(reps, nil, topic)
		switch {
		case !rep.isLeader():
			return false, errNotLeader
		case rep.fsm.ReadyCount(topic, time.Now().UnixNano(), 1) > 0:
			return true, nil
		case ctx.Err() != nil:
			return false, nil
		}
		n.waitForJobs(ctx, watch, reps, nil, topic, deadline)
	}
}

// jobRead answers the job reads, stats and dead listings, for one shard,
// linearizably: like a get, from the leader's state once it has confirmed
// a read index, here or there.
func (n *Node) jobRead(ctx context.Context, m *wire.Message) *wire.Message {
	a := &m.Args
	if bad := checkTopic(a.Topic); bad != nil {
		return bad
	}
	if len(a.Shards) != 1 {
		return errorReply(wire.CodeBadRequest, "%s names one shard", m.Op)
	}
	rep, bad := n.shardReplica(a.Shards[0])
	if bad != nil {
		return bad
	}
	jr := JobRead{Topic: a.Topic, Dead: m.Op == wire.OpDeadJobs, Limit: a.Limit}
	var res wire.Result
	err := n.viaLeader(ctx, rep,
		func() error {
			if _, err := rep.readIndex(ctx); err != nil {
				return err
			}
			res = readJobs(rep, jr)
			return nil
		},
		func() error {
			fr, err := n.callLeader(ctx, rep, ForwardRequest{ReadIndex: true, JobRead: &jr})
			if err == nil && fr.JobResult == nil {
				err = fmt.Errorf("server: shard %d: the leader answered a job read with no result", rep.id)
			}
			if err == nil {
				res = *fr.JobResult
			}
			return err
		})
	if err != nil {
		return leaderErrorReply(ctx, rep.id, err)
	}
	if jr.Dead && res.Jobs == nil {
		res.Jobs = []wire.JobInfo{} // an empty listing, not a missing one
	}
	return resultReply(res)
}

// readJobs answers jr from rep's state.
func readJobs(rep *replica, jr JobRead) wire.Result {
	if !jr.Dead {
		c := rep.fsm.JobCounts(jr.Topic, time.Now().UnixNano())
		return wire.Result{Counts: &c}
	}
	limit := jr.Limit
	if limit <= 0 || limit > maxDeadListing {
		limit = maxDeadListing
	}
	var jobs []wire.JobInfo
	for _, j := range rep.fsm.DeadJobs(jr.Topic, limit) {
		jobs = append(jobs, wire.JobInfo{
			ID: j.ID, Topic: j.Topic, Payload: j.Payload, Attempt: j.Attempt, State: string(fsm.JobDead),
			MaxAttempts: j.MaxAttempts, LastError: j.LastError,
		})
	}
	return wire.Result{Jobs: jobs}
}

// readyReports lists, for the shards leads (those this node leads), the
// topics with jobs ready now.
func (n *Node) readyReports(now time.Time, leads []shard.ID) []wire.ReadyCount {
	var out []wire.ReadyCount
	size := 0
	for _, id := range leads {
		rep := n.replicas[id]
		topics := rep.fsm.ReadyTopics(now.UnixNano(), readyCap)
		names := make([]string, 0, len(topics))
		for t := range topics {
			names = append(names, t)
		}
		sort.Strings(names)
		for _, t := range names {
			if len(out) == maxReadyReports || size+len(t)+24 > maxReadyBytes {
				return out
			}
			size += len(t) + 24
			out = append(out, wire.ReadyCount{Shard: id, Topic: t, Count: topics[t]})
		}
	}
	return out
}

// runSchedules proposes a tick on each shard this node leads when a
// schedule is due or a lease has run out since its last command, so interval
// jobs appear, and the state machine's clock follows the leases, even when
// nothing else is written. It sleeps until the earliest such time (at least
// scheduleTick, at most scheduleIdle), or, when a replica reports new timers
// (a lease or schedule committed, a term's state applied), for at most
// scheduleTick. Stops with the node.
func (n *Node) runSchedules() {
	t := time.NewTimer(scheduleTick)
	defer t.Stop()
	planned := time.Now().Add(scheduleTick)
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.timersChanged:
			// Look again soon, not at once: a busy shard reports with
			// every acquire.
			if soon := time.Now().Add(scheduleTick); soon.Before(planned) {
				planned = soon
				t.Reset(scheduleTick)
			}
			continue
		case <-t.C:
		}
		now := time.Now()
		next := now.Add(scheduleIdle)
		for _, rep := range n.replicas {
			if !rep.isLeader() {
				continue
			}
			due, ok := nextTick(rep.fsm)
			if ok && !due.After(now) {
				if _, err := rep.propose(n.ctx, fsm.Op{Kind: fsm.KindTick}); err != nil && rep.isLeader() {
					rep.log.Warn("proposing a tick failed", "err", err)
				}
				due, ok = nextTick(rep.fsm)
			}
			if ok && due.Before(next) {
				next = due
			}
		}
		wait := max(time.Until(next), scheduleTick)
		planned = time.Now().Add(wait)
		t.Reset(wait)
	}
}

// nextTick returns when the state machine will next need a tick: when its
// next schedule is due, or just after its next lease ends.
func nextTick(f *fsm.FSM) (time.Time, bool) {
	due, ok := f.NextScheduleDue()
	if end, leased := f.NextLeaseEnd(); leased && (!ok || end+1 < due) {
		due, ok = end+1, true
	}
	return time.Unix(0, due), ok
}

// timedKinds are the ops that may bring a shard's next tick forward.
var timedKinds = []fsm.Kind{fsm.KindAcquire, fsm.KindExtend, fsm.KindEvery}

// kickSchedules tells runSchedules to look again at the shards' timers.
func (n *Node) kickSchedules() {
	select {
	case n.timersChanged <- struct{}{}:
	default:
	}
}
