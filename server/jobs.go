package server

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

const (
	// maxDeadListing bounds the jobs of a page of a dead-job listing,
	// which also takes no more than fit one datagram.
	maxDeadListing = 100
	// maxReadyReports and maxReadyBytes bound the (shard, topic) entries
	// of a heartbeat, which must fit a datagram.
	maxReadyReports = 256
	maxReadyBytes   = 32 << 10
)

// jobRead answers the job reads, stats and dead listings, for one shard,
// linearizably: like a get, from the leader's state once it has confirmed
// a read index, here or there.
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
			if _, err := rep.readIndex(ctx); err != nil {
				return err
			}
			res = readJobs(rep, jr)
			return nil
		},
		func() error {
			fr, err := rep.callLeader(ctx, ForwardRequest{ReadIndex: true, JobRead: &jr})
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
