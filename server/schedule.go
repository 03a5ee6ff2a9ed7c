package server

import (
	"time"

	"github.com/shoal-kv/shoal/shard/fsm"
)

// A node looks at most every scheduleTick, and at least every scheduleIdle,
// whether a shard it leads needs a tick (see runSchedules).
const (
	scheduleTick = 50 * time.Millisecond
	scheduleIdle = time.Second
)

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
		for _, rep := range n.current().replicas {
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

// timedKinds are the ops that may bring a shard's next tick forward: those
// that grant or extend a lease, or make a schedule. Enqueues are not among
// them, delayed or not: a job becoming ready needs no command, and a
// waiting acquire wakes for it by itself (awaitReady).
var timedKinds = []fsm.Kind{fsm.KindAcquire, fsm.KindCompleteAcquire, fsm.KindExtend, fsm.KindEvery}

// kickSchedules tells runSchedules to look again at the shards' timers.
func (n *Node) kickSchedules() {
	select {
	case n.timersChanged <- struct{}{}:
	default:
	}
}
