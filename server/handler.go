package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// receiveErrorPause keeps a persistently failing socket from spinning the
// receive loop.
const receiveErrorPause = 10 * time.Millisecond

// retryBackoff is how long a request waits before trying again to reach a
// shard's leader when raft has announced no change.
const retryBackoff = 10 * time.Millisecond

// serve reads datagrams until the transport closes. It answers the queries
// that wait on nothing itself, and those it refuses (invalid, or finding no
// slot free), and handles each other query in a goroutine of its own: a
// long poll in one of MaxLongPolls, any other in one of MaxInFlight.
func (n *Node) serve() {
	buf := make([]byte, wire.MaxDatagramSize+1)
	for {
		size, from, arrived, err := n.transport.Receive(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Transient (an ICMP error surfacing on some systems, a
			// full buffer): the next datagram may be fine.
			n.log.Warn("receiving a datagram failed", "err", err)
			time.Sleep(receiveErrorPause)
			continue
		}
		m, ok := n.decodeQuery(buf[:size], from)
		if !ok {
			continue
		}
		if bad := checkQuery(&m); bad != nil {
			n.requests.Add(1)
			n.reply(from, m.TxID, bad)
			continue
		}
		if immediate(&m) && n.answerAtOnce(&m, from, arrived) {
			continue
		}
		release, ok := n.admit(&m, from)
		if !ok {
			continue
		}
		if !n.group.Go(func() {
			defer release()
			n.handleQuery(&m, from, arrived)
		}) {
			return
		}
	}
}

// admit takes the slot that valid query m needs to be handled: for a long
// poll one of MaxLongPolls, if its client has fewer than
// MaxLongPollsPerClient, else one of MaxInFlight. It returns the func that
// gives the slot back; finding none, it answers m busy and reports false.
// Long polls have slots of their own because they wait, for seconds, for
// nothing in particular: a flood of them must not take the slots of the
// requests that do work, nor be queued behind them.
func (n *Node) admit(m *wire.Message, from netip.AddrPort) (release func(), ok bool) {
	if longPoll(m) {
		if !n.longPolls.enter(m.Client) {
			n.longPollsRefused.Add(1)
			n.reply(from, m.TxID, errorReply(wire.CodeUnavailable, "node busy: too many long polls, from all clients or from this one"))
			return nil, false
		}
		return func() { n.longPolls.leave(m.Client) }, true
	}
	select {
	case n.inFlight <- struct{}{}:
		return func() { <-n.inFlight }, true
	default:
		n.busy.Add(1)
		n.reply(from, m.TxID, errorReply(wire.CodeUnavailable, "node busy: too many requests in flight"))
		return nil, false
	}
}

// longPoll reports whether m is an acquire that may wait for a job. An
// acquire that may not (a client's acquire of a shard whose leader
// reported a job ready) is a write like any other.
func longPoll(m *wire.Message) bool { return m.Op == wire.OpAcquire && m.Args.Wait > 0 }

// checkQuery returns the reply to a query that the node does not serve,
// its op unknown, its client id not proven or its arguments invalid, and
// nil for a valid one. Only a valid query makes its sender a recent
// client (see clients).
func checkQuery(m *wire.Message) *wire.Message {
	if !m.Op.Known() {
		return errorReply(wire.CodeUnknownOp, "unknown op %q", m.Op)
	}
	if err := wire.CheckProof(m); err != nil {
		return argsReply(err)
	}
	if err := wire.CheckQuery(m); err != nil {
		return argsReply(err)
	}
	return nil
}

// immediate reports whether m is answered from this node's own state
// without waiting on anything. The receive loop answers those itself: a
// goroutine each, and the wake-ups of other threads they cause, doubled the
// node CPU of a stale get. They are answered while MaxInFlight requests run.
// A stale get whose shard state is held by a write, or by a reader a write
// waits for, goes to a goroutine like any other query instead (and counts
// against MaxInFlight), so that a snapshot copying a large state holds up
// neither the loop nor the other shards' queries.
func immediate(m *wire.Message) bool {
	switch m.Op {
	case wire.OpGet:
		return m.Args.Stale
	case wire.OpPing, wire.OpTopology:
		return true
	}
	return false
}

// decodeQuery decodes a datagram. It answers one that does not decode,
// if it can tell where to, and drops anything but a query.
func (n *Node) decodeQuery(data []byte, from netip.AddrPort) (wire.Message, bool) {
	m, err := wire.Decode(data)
	if err != nil {
		n.malformed.Add(1)
		if m.TxID != 0 {
			code := wire.CodeProtocol
			if errors.Is(err, wire.ErrTooLarge) {
				code = wire.CodeTooLarge
			}
			n.reply(from, m.TxID, errorReply(code, "%v", err))
		}
		return m, false
	}
	if m.Type != wire.TypeQuery {
		n.malformed.Add(1)
		return m, false
	}
	return m, true
}

// answerAtOnce answers a valid immediate query unless that would wait,
// and reports whether it did.
func (n *Node) answerAtOnce(m *wire.Message, from netip.AddrPort, arrived time.Time) bool {
	var r *wire.Message
	if m.Op == wire.OpGet {
		if rep, bad := n.slotReplica(m); bad != nil {
			r = bad
		} else {
			e, st, locked := rep.fsm.TryRead(m.Args.Key)
			if !locked {
				return false
			}
			r = entryReply(e)
			if st != fsm.StatusOK {
				r = n.withMapVersion(writeReply(fsm.Result{Status: st}))
			}
		}
	}
	if n.queryBegins(m, from, arrived) {
		defer n.queryEnds()
	}
	if r == nil {
		r = n.dispatch(n.ctx, m)
	}
	n.reply(from, m.TxID, r)
	return true
}

// handleQuery answers a query that arrived at the node's socket at arrived.
func (n *Node) handleQuery(m *wire.Message, from netip.AddrPort, arrived time.Time) {
	if n.queryBegins(m, from, arrived) {
		defer n.queryEnds()
	}
	if immediate(m) {
		n.reply(from, m.TxID, n.dispatch(n.ctx, m)) // nothing to wait for but locks, so no deadline
		return
	}
	timeout := n.cfg.RequestTimeout
	if m.Timeout > 0 && m.Timeout < timeout {
		timeout = m.Timeout
	}
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	n.reply(from, m.TxID, n.dispatch(ctx, m))
}

// queryBegins counts a valid query that arrived at arrived, makes its
// sender a recent client, and reports whether it loads the node, so that
// its answer must call queryEnds. A zero arrived means the transport could
// not tell, and counts no wait.
func (n *Node) queryBegins(m *wire.Message, from netip.AddrPort, arrived time.Time) (loads bool) {
	n.requests.Add(1)
	now := time.Now()
	n.clients.touch(from, now)
	if !m.Op.Loads() {
		return false
	}
	var waited time.Duration
	if !arrived.IsZero() {
		waited = now.Sub(arrived)
	}
	n.activity.begin(now, waited)
	return true
}

// queryEnds counts the end of a query that loaded the node.
func (n *Node) queryEnds() { n.activity.end(time.Now()) }

// reply sends r as the answer to txid. It does not change r, which a
// joined acquire shares between requests.
func (n *Node) reply(to netip.AddrPort, txid uint64, r *wire.Message) {
	out := *r
	out.TxID = txid
	out.Node = n.id
	out.Activity = n.activity.milli(time.Now())
	b, err := wire.Encode(&out)
	if err != nil {
		n.log.Error("encoding reply", "err", err)
		if r.Type == wire.TypeError {
			return
		}
		n.reply(to, txid, errorReply(wire.CodeServer, "the reply did not encode: %v", err))
		return
	}
	_ = n.transport.Send(b, to) // a lost reply is a lost datagram: the client retries
}

// dispatch answers valid query m (see checkQuery) within ctx.
func (n *Node) dispatch(ctx context.Context, m *wire.Message) *wire.Message {
	switch m.Op {
	case wire.OpTopology:
		topo := n.current().topology
		return resultReply(wire.Result{Topology: &topo})
	case wire.OpPing:
		return resultReply(wire.Result{})
	case wire.OpStatus:
		st := n.Status()
		return resultReply(wire.Result{Status: &st})
	case wire.OpCluster:
		return n.admin(ctx, m)
	case wire.OpGet:
		rep, bad := n.slotReplica(m)
		if bad != nil {
			return bad
		}
		return n.get(ctx, rep, m.Args.Key, m.Args.Stale)
	case wire.OpAcquire:
		return n.acquire(ctx, m)
	case wire.OpJobStats, wire.OpDeadJobs:
		return n.jobRead(ctx, m)
	}
	// A write of one slot.
	rep, bad := n.slotReplica(m)
	if bad != nil {
		return bad
	}
	op := stateOp(m)
	switch m.Op {
	case wire.OpEnqueueBatch:
		if bad := n.batchElsewhere(m, rep.id); bad != nil {
			return bad
		}
	case wire.OpCompleteAcquire:
		op.NextGrant = newGrant()
	}
	res, leader, err := n.writeResult(ctx, rep, op)
	var r *wire.Message
	if err != nil {
		r = leaderErrorReply(ctx, rep.id, err)
	} else {
		r = n.withMapVersion(writeReply(res))
	}
	if leader != "" {
		// The client sends the shard's next writes to the leader itself.
		n.forwarded.Add(1)
		r.Leader = &wire.LeaderHint{Shard: rep.id, Node: leader}
	}
	return r
}

// batchElsewhere returns the reply refusing batch m if one of its jobs
// belongs to a shard other than id, that of its first job: by its id, or
// by its uniqueness key, which is kept on one shard. Nil if all are id's.
func (n *Node) batchElsewhere(m *wire.Message, id shard.ID) *wire.Message {
	for i, j := range m.Args.Batch {
		if s := n.shardMap().SlotShard(shard.JobSlot(j.ID)); s != id {
			return errorReply(wire.CodeWrongShard, "job %d of the batch belongs to shard %d, its first to shard %d (map version %d)",
				i, s, id, n.shardMap().Version)
		}
		if j.Unique == "" {
			continue
		}
		if s := n.shardMap().SlotShard(shard.JobKeySlot(j.Topic, j.Unique)); s != id {
			return errorReply(wire.CodeWrongShard, "job %d of the batch has a uniqueness key of shard %d, not %d (map version %d)",
				i, s, id, n.shardMap().Version)
		}
	}
	return nil
}

// slotReplica returns this node's replica of the shard that serves query
// m, or the reply that says it holds none.
func (n *Node) slotReplica(m *wire.Message) (*replica, *wire.Message) {
	slot, _ := m.Op.Slot(&m.Args)
	return n.shardReplica(n.shardMap().SlotShard(slot))
}

// shardReplica returns this node's replica of shard id, or the reply that
// says it holds none.
func (n *Node) shardReplica(id shard.ID) (*replica, *wire.Message) {
	if rep := n.replica(id); rep != nil {
		return rep, nil
	}
	return nil, errorReply(wire.CodeWrongShard, "node %s holds no replica of shard %d (map version %d)",
		n.id, id, n.shardMap().Version)
}

// writeResult applies op through the shard's leader and returns the state
// machine's result, and the node it last forwarded op to, "" if it never
// did. The op's session makes the retries of viaLeader safe: an op
// applied twice answers from the session.
func (n *Node) writeResult(ctx context.Context, rep *replica, op fsm.Op) (fsm.Result, string, error) {
	var res []fsm.Result
	var leader string
	err := n.viaLeader(ctx, rep,
		func() (err error) {
			res, err = rep.propose(ctx, op)
			return err
		},
		func() (err error) {
			leader = rep.leaderID()
			res, err = rep.forwardWrites.submit(ctx, op)
			return err
		})
	if err != nil {
		return fsm.Result{}, leader, err
	}
	return res[0], leader, nil
}

// get reads key. A stale read answers from this replica's state as it is.
// A linearizable one answers once the leader has confirmed a read index
// (ReadIndex, Raft dissertation §6.4): from this replica's state when it
// leads; when it follows, from its own state too if it had applied the
// index, else from the leader's answer (see followerRead). A follower asks
// for one index for the reads that came meanwhile.
func (n *Node) get(ctx context.Context, rep *replica, key string, stale bool) *wire.Message {
	var kr keyRead
	if stale {
		kr = readKey(rep.fsm, key)
	} else {
		err := n.viaLeader(ctx, rep,
			func() error {
				if err := rep.leaderRead(ctx); err != nil {
					return err
				}
				kr = readKey(rep.fsm, key)
				return nil
			},
			func() error {
				rs, err := rep.followerGets.submit(ctx, key)
				if err == nil {
					kr = rs[0]
				}
				return err
			})
		if err != nil {
			return leaderErrorReply(ctx, rep.id, err)
		}
	}
	if kr.status != fsm.StatusOK {
		return n.withMapVersion(writeReply(fsm.Result{Status: kr.status}))
	}
	return entryReply(kr.entry)
}

// withMapVersion adds, to a "wrong shard" reply, the version of the map
// the node follows: a client whose map is older fetches the new one.
func (n *Node) withMapVersion(r *wire.Message) *wire.Message {
	if r.Err != nil && r.Err.Code == wire.CodeWrongShard {
		r.Err.Message = fmt.Sprintf("%s (map version %d)", r.Err.Message, n.current().cluster.Version)
	}
	return r
}

// keyRead is a key's entry as a replica's state machine holds it, and how
// that state machine serves the key's slot: an entry of a slot that is
// moving in, or has moved away, means nothing.
type keyRead struct {
	entry  fsm.Entry
	status fsm.Status
}

// readKey reads key from f, with how f serves its slot.
func readKey(f *fsm.FSM, key string) keyRead {
	e, st := f.Read(key)
	return keyRead{entry: e, status: st}
}

// errGaveUp wraps the last error of a viaLeader that ran out of time.
var errGaveUp = errors.New("server: gave up waiting for the leader")

// viaLeader runs a step against the shard's leader: local when this replica
// leads, remote when another does. A failure that may pass (no leader yet,
// leadership moved or lost mid-call, a peer unreachable) is retried when
// leadership changes or after a short backoff, until ctx ends; then the
// last error comes back wrapped in errGaveUp.
func (n *Node) viaLeader(ctx context.Context, rep *replica, local, remote func() error) error {
	for {
		changed := rep.changes()
		var err error
		if rep.isLeader() {
			err = local()
		} else if rep.leaderID() != "" {
			err = remote()
		} else {
			err = fmt.Errorf("%w: shard %d has no leader", errRetry, rep.id)
		}
		switch {
		case err == nil:
			return nil
		case !retryable(err) && !errors.Is(err, context.DeadlineExceeded):
			return err
		case !wait(ctx, changed):
			return fmt.Errorf("%w: %w", errGaveUp, err)
		}
	}
}

// wait pauses a retry loop until the replica's leadership changes, a short
// backoff passes, or ctx ends; it reports false for the last.
func wait(ctx context.Context, changed <-chan struct{}) bool {
	if ctx.Err() != nil {
		return false
	}
	t := time.NewTimer(retryBackoff)
	defer t.Stop()
	select {
	case <-changed:
		return true
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
