package server

import (
	"context"
	"sort"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// maxDeadListing bounds the jobs of a page of a dead-job listing, which
// also takes no more than fits one datagram.
const maxDeadListing = 100

// jobRead answers the job reads, stats and dead listings, for one shard,
// linearizably: like a get, once the leader has confirmed a read index,
// from this replica's state if it has applied the index, else from the
// leader's.
func (n *Node) jobRead(ctx context.Context, m *wire.Message) *wire.Message {
	a := &m.Args
	rep, bad := n.shardReplica(a.Shards[0])
	if bad != nil {
		return bad
	}
	jr := JobRead{Topic: a.Topic, Dead: m.Op == wire.OpDeadJobs, Limit: a.Limit, After: a.After,
		Bytes: wire.MaxDatagramSize - wire.ReplyOverhead - len(n.id)}
	var res wire.Result
	err := n.viaLeader(ctx, rep,
		func() error {
			if err := rep.leaderRead(ctx); err != nil {
				return err
			}
			res = readJobs(rep, jr)
			return nil
		},
		func() error {
			call := func(req ForwardRequest) (ForwardReply, error) { return rep.callLeader(ctx, req) }
			fr, local, err := rep.followerRead(call, ForwardRequest{JobRead: &jr})
			switch {
			case err != nil:
				return err
			case local:
				res = readJobs(rep, jr)
			default:
				res = *fr.JobResult
			}
			return nil
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
	// The page takes the jobs that fit the reply; the first one always
	// does (a payload and names at their limits fit a datagram).
	used := 0
	fits := func(j *fsm.Job) bool {
		size := len(j.ID) + len(j.Topic) + len(j.Payload) + len(j.LastError) + len(fsm.JobDead) + wire.JobInfoOverhead
		if used > 0 && used+size > jr.Bytes {
			return false
		}
		used += size
		return true
	}
	dead, more := rep.fsm.DeadJobs(jr.Topic, jr.After, limit, fits)
	res := wire.Result{Jobs: make([]wire.JobInfo, 0, len(dead))}
	for _, j := range dead {
		res.Jobs = append(res.Jobs, wire.JobInfo{
			ID: j.ID, Topic: j.Topic, Payload: j.Payload, Attempt: j.Attempt, State: string(fsm.JobDead),
			MaxAttempts: j.MaxAttempts, LastError: j.LastError,
		})
	}
	if more && len(dead) > 0 {
		res.Next = dead[len(dead)-1].Seq
	}
	return res
}

// readyReports lists, for the shards leads (those this node leads), topics
// with jobs ready now, as many as fit in budget bytes of an encoded
// heartbeat, however many topics there are. The most ready go first: a
// client sends an acquire straight to a shard reported ready, and for the
// topics left out it waits at the nodes (a long poll) as it does for the
// topics with nothing ready.
func (n *Node) readyReports(now time.Time, leads []shard.ID, budget int) []wire.ReadyCount {
	var all []wire.ReadyCount
	v := n.current()
	for _, id := range leads {
		r := v.replicas[id]
		if r == nil {
			continue // gone since the heartbeat listed it
		}
		for t, k := range r.fsm.ReadyTopics(now.UnixNano(), readyCap) {
			all = append(all, wire.ReadyCount{Shard: id, Topic: t, Count: k})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		switch {
		case a.Count != b.Count:
			return a.Count > b.Count
		case a.Shard != b.Shard:
			return a.Shard < b.Shard
		}
		return a.Topic < b.Topic
	})
	var out []wire.ReadyCount
	budget -= readyListSize
	for _, r := range all {
		if budget < minReadyEntrySize {
			break
		}
		if size := readyEntrySize(r); size <= budget {
			out = append(out, r)
			budget -= size
		}
	}
	return out
}

// The sizes of a heartbeat's ready report as wire encodes it: the list
// "1:rl...e", and in it a dict "d1:ni<count>e1:si<shard>e1:t<len>:<topic>e"
// per entry.
const (
	readyListSize     = len("1:rle")
	minReadyEntrySize = len("d1:ni0e1:si0e1:t1:xe")
)

func readyEntrySize(r wire.ReadyCount) int {
	return len("d1:nie1:sie1:t:e") + digits(uint64(r.Count)) + digits(uint64(r.Shard)) + digits(uint64(len(r.Topic))) + len(r.Topic)
}

// digits returns the number of decimal digits of x.
func digits(x uint64) int {
	d := 1
	for ; x >= 10; x /= 10 {
		d++
	}
	return d
}
