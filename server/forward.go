package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// A follower does not make a client redirect: it forwards the write to the
// shard's leader over the node-to-node TCP connection, and asks the leader
// for read indexes the same way (see followerRead). A redirect would cost
// the client another round trip over its lossy link for every write that
// lands on a follower, and a client's idea of the leader is stale right
// after a failover, which is exactly when it matters; the follower learns
// the new leader from raft itself. Node-to-node calls use net/rpc over the
// node listener.

// ForwardRequest is a call from a node to the leader of a shard: apply Ops
// as they come, or, with ReadIndex set, return a read index and, unless
// the caller has applied that index already (Applied), the entries of Keys
// and the answer to JobRead as of that index. A follower sends the ops (or
// keys) that arrived while its earlier calls were running in one request.
// It is part of the node-to-node protocol, not of the client API.
type ForwardRequest struct {
	Shard     shard.ID
	ReadIndex bool
	// Applied, with ReadIndex, is the caller's applied index when it sent
	// the request. A caller that has applied the read index answers the
	// reads from its own state, so the leader sends no entries then.
	Applied uint64
	Keys    []string
	// JobRead, with ReadIndex, asks for a job read as of the read index.
	JobRead *JobRead
	Ops     []fsm.Op
	// WaitTopic asks the leader to answer once the topic has a job ready
	// in its state, or when the call's time runs out.
	WaitTopic string
	// Timeout is how long the caller will wait.
	Timeout time.Duration
}

// ForwardReply answers a ForwardRequest.
type ForwardReply struct {
	// Results holds one result per op of the request, in order.
	Results []fsm.Result
	// Index is the read index of a ReadIndex request.
	Index uint64
	// Entries holds the entry of each key of the request, in order, when
	// the caller had not applied Index; a key that does not exist has
	// Version 0.
	Entries []fsm.Entry
	// Statuses, if not empty, holds how the leader's state serves the slot
	// of each key (fsm.FSM.SlotStatus), in order: StatusOK unless the
	// slot is moving in or has moved away, when its Entry means nothing.
	Statuses []fsm.Status
	// JobResult answers JobRead when the caller had not applied Index.
	JobResult *wire.Result
	// Ready answers WaitTopic: a job of the topic is ready.
	Ready bool
	// Retry says the call failed in a way worth retrying, perhaps on
	// another leader: the callee was not the leader, lost leadership
	// while applying (the ops may or may not have committed), or ran out
	// of time.
	Retry bool
	// Err describes the failure; empty on success.
	Err string
}

// JobRead is a job read forwarded to a shard's leader: the topic's job
// counts, or with Dead set, a page of its dead jobs: those after After, up
// to Limit, and as many as a reply of Bytes (a datagram less what the
// asking node adds) can carry.
type JobRead struct {
	Topic string
	Dead  bool
	Limit int
	After uint64
	Bytes int
}

// errRetry marks failures after which the request may be retried with the
// same sequence number, on whichever node now leads.
var errRetry = errors.New("server: retry")

// retryable reports whether err from a local raft call or a forward means
// that the request may be retried on the current leader.
func retryable(err error) bool {
	return errors.Is(err, errRetry) || errors.Is(err, ErrNotLeader) ||
		errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, rpc.ErrShutdown) || isNetError(err)
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}

// callLeader sends req about this replica's shard to the node that leads
// it, as this replica knows it. A failure the caller may retry wraps
// errRetry.
func (r *replica) callLeader(ctx context.Context, req ForwardRequest) (ForwardReply, error) {
	leader := r.leaderID()
	if leader == "" || leader == r.node {
		return ForwardReply{}, fmt.Errorf("%w: shard %d: no other node leads", errRetry, r.id)
	}
	req.Shard = r.id
	return r.nodes.forward(ctx, leader, req)
}

// linkToLeader sets up the replica's forwarders to its shard's leader, with
// at most outstandingEntries calls of each kind running at once, each
// within timeout and ending with ctx.
func (r *replica) linkToLeader(ctx context.Context, timeout time.Duration) {
	// A call ends when the shard's leadership changes: a leader that was
	// lost may never answer, and the callers retry on the new one (their
	// sessions make that safe whatever the old one did).
	call := func(req ForwardRequest) (ForwardReply, error) {
		changed := r.changes()
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		go func() { // ends when the call does, at the latest
			select {
			case <-changed:
				cancel()
			case <-cctx.Done():
			}
		}()
		fr, err := r.callLeader(cctx, req)
		select {
		case <-changed:
			if err != nil {
				err = fmt.Errorf("%w: shard %d: the leader changed during the call: %v", errRetry, r.id, err)
			}
		default:
		}
		return fr, err
	}
	r.forwardWrites = &batcher[fsm.Op, fsm.Result]{
		commit: func(ops []fsm.Op) ([]fsm.Result, error) {
			fr, err := call(ForwardRequest{Ops: ops})
			return fr.Results, err
		},
		parallel: outstandingEntries,
		maxItems: entryMaxOps, maxBytes: entryMaxBytes, size: opSize,
		spawn: r.group.Go, closed: rpc.ErrShutdown,
	}
	r.followerGets = &batcher[string, keyRead]{
		commit: func(keys []string) ([]keyRead, error) {
			fr, local, err := r.followerRead(call, ForwardRequest{Keys: keys})
			if err != nil {
				return nil, err
			}
			rs := make([]keyRead, len(keys))
			for i, k := range keys {
				switch {
				case local:
					rs[i] = readKey(r.fsm, k)
				case len(fr.Statuses) == len(keys):
					rs[i] = keyRead{fr.Entries[i], fr.Statuses[i]}
				default:
					rs[i] = keyRead{entry: fr.Entries[i]}
				}
			}
			return rs, nil
		},
		parallel: outstandingEntries,
		// Values come back, up to MaxValueSize each.
		maxItems: forwardMaxGets,
		spawn:    r.group.Go, closed: rpc.ErrShutdown,
	}
}

// followerRead asks the leader, through call, for a read index for the
// reads of req (ReadIndex, Raft dissertation §6.4, served where it lands as
// in etcd and TiKV), and reports whether this replica answers them from
// its own state: it had applied the index when it asked, so its state
// reflects every write acknowledged before the reads began. Otherwise the
// leader's reply carries the answers, as of the index.
//
// A follower behind the index does not wait to apply it: raft tells a
// follower of a commit only with the leader's next append, which, when
// writes stop, comes up to two CommitTimeouts later. A follower is behind
// only when a write committed since the leader last sent it one, so under
// a read load it answers nearly every read itself, and under a write load
// the leader answers about one read in every batch of appends.
func (r *replica) followerRead(call func(ForwardRequest) (ForwardReply, error), req ForwardRequest) (ForwardReply, bool, error) {
	req.ReadIndex = true
	req.Applied = r.fsm.Applied()
	fr, err := call(req)
	if err != nil {
		return fr, false, err
	}
	if req.Applied >= fr.Index {
		r.followerReads.Add(1)
		return fr, true, nil
	}
	r.relayedReads.Add(1)
	if (len(req.Keys) > 0 && len(fr.Entries) != len(req.Keys)) || (req.JobRead != nil && fr.JobResult == nil) {
		return fr, false, fmt.Errorf("server: shard %d: the leader answered a read behind its index %d with no result", r.id, fr.Index)
	}
	return fr, false, nil
}

// nodeService is the net/rpc receiver a node registers for its peers.
type nodeService struct{ n *Node }

// Forward serves a ForwardRequest from a peer. This node answers only as
// the leader; it never forwards further, so requests cannot loop.
func (s *nodeService) Forward(req ForwardRequest, reply *ForwardReply) error {
	if !s.n.started.Load() {
		reply.Retry, reply.Err = true, fmt.Sprintf("node %s is starting", s.n.id)
		return nil
	}
	rep := s.n.replica(req.Shard)
	if rep == nil {
		reply.Err = fmt.Sprintf("node %s holds no replica of shard %d", s.n.id, req.Shard)
		return nil
	}
	if !req.ReadIndex && len(req.Ops) == 0 && req.WaitTopic == "" {
		// Nothing to do is no request this version sends: answering it
		// with no results could pass for success with a node that sends
		// another form.
		reply.Err = fmt.Sprintf("node %s: a forward with neither ops nor a read", s.n.id)
		return nil
	}
	if err := checkForward(&req); err != nil {
		reply.Err = fmt.Sprintf("node %s: %v", s.n.id, err)
		return nil
	}
	timeout := req.Timeout
	if timeout <= 0 || timeout > s.n.cfg.RequestTimeout {
		timeout = s.n.cfg.RequestTimeout
	}
	ctx, cancel := context.WithTimeout(s.n.ctx, timeout)
	defer cancel()
	var err error
	switch {
	case req.WaitTopic != "":
		reply.Ready, err = s.n.awaitReady(ctx, rep, req.WaitTopic)
	case req.ReadIndex:
		if reply.Index, err = rep.readIndex(ctx); err != nil || req.Applied >= reply.Index {
			break
		}
		if err = rep.readAt(ctx, reply.Index); err != nil {
			break
		}
		if len(req.Keys) > 0 {
			reply.Entries = make([]fsm.Entry, len(req.Keys))
			statuses := make([]fsm.Status, len(req.Keys))
			moving := false
			for i, k := range req.Keys {
				kr := readKey(rep.fsm, k)
				reply.Entries[i], statuses[i] = kr.entry, kr.status
				moving = moving || kr.status != fsm.StatusOK
			}
			if moving {
				reply.Statuses = statuses
			}
		}
		if req.JobRead != nil {
			res := readJobs(rep, *req.JobRead)
			reply.JobResult = &res
		}
	default:
		reply.Results, err = rep.propose(ctx, req.Ops...)
	}
	if err != nil {
		// A leader shutting down (or its raft) answers "retry": the ops
		// may be retried on its successor.
		reply.Retry = retryable(err) || errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, context.Canceled) || errors.Is(err, raft.ErrRaftShutdown)
		reply.Err = err.Error()
	}
	return nil
}

// checkForward checks a forwarded request as the node checks a client's
// query on arrival (wire.CheckQuery), and bounds it as a follower's
// batchers do: a peer gets no further than a client would.
func checkForward(req *ForwardRequest) error {
	if len(req.Ops) > entryMaxOps {
		return fmt.Errorf("%w: %d ops in one forward, over %d", shard.ErrTooLarge, len(req.Ops), entryMaxOps)
	}
	size := 0
	for i, op := range req.Ops {
		if err := checkStateOp(op); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		size += opSize(op)
	}
	if len(req.Ops) > 1 && size > entryMaxBytes {
		return fmt.Errorf("%w: ops of %d bytes in one forward, over %d", shard.ErrTooLarge, size, entryMaxBytes)
	}
	if len(req.Keys) > forwardMaxGets {
		return fmt.Errorf("%w: %d keys in one forward, over %d", shard.ErrTooLarge, len(req.Keys), forwardMaxGets)
	}
	for _, k := range req.Keys {
		if err := shard.CheckKey(k); err != nil {
			return err
		}
	}
	if req.JobRead != nil {
		if err := shard.CheckTopic(req.JobRead.Topic); err != nil {
			return err
		}
	}
	if req.WaitTopic != "" {
		return shard.CheckTopic(req.WaitTopic)
	}
	return nil
}

// clientOps maps each command kind a client's query makes back to its op
// (the inverse of commandKinds).
var clientOps = func() map[fsm.Kind]wire.Op {
	m := make(map[fsm.Kind]wire.Op, len(commandKinds))
	for op, k := range commandKinds {
		m[k] = op
	}
	return m
}()

// checkStateOp checks a state machine op a peer forwarded: it must be one
// that a client's query passing wire.CheckQuery makes (stateOp), with no
// field its kind does not carry.
func checkStateOp(op fsm.Op) error {
	wop, ok := clientOps[op.Kind]
	if !ok {
		return fmt.Errorf("%w: no client op makes a command of kind %d", wire.ErrInvalidArgs, op.Kind)
	}
	m := wire.Message{Op: wop, Client: op.Client, Seq: op.Seq, Ack: op.Ack, Args: wire.Args{
		Key: op.Key, Value: op.Value, Version: op.Version,
		Topic: op.Topic, JobID: op.JobID, Token: op.Token, Grant: op.Grant, Lease: time.Duration(op.Lease),
		Delay: time.Duration(op.Delay), MaxAttempts: op.MaxAttempts, Backoff: time.Duration(op.Backoff),
		Unique: op.Unique, Reason: op.Reason, Interval: time.Duration(op.Interval), Batch: batchArgs(op.Batch),
	}}
	if op.RunAt != 0 {
		m.Args.RunAt = time.Unix(0, op.RunAt)
	}
	if err := wire.CheckQuery(&m); err != nil {
		return err
	}
	if len(op.Reason) > shard.MaxKeySize {
		return fmt.Errorf("%w: a reason of %d bytes exceeds %d", shard.ErrTooLarge, len(op.Reason), shard.MaxKeySize)
	}
	want := stateOp(&m)
	// What the proposing node added of its own: when a retry began, by
	// its clock, and an acquire's grant, which it drew (a
	// complete-and-acquire's NextGrant).
	want.Began = op.Began
	switch op.Kind {
	case fsm.KindAcquire:
		want.Grant = op.Grant
	case fsm.KindCompleteAcquire:
		want.NextGrant = op.NextGrant
	}
	if !reflect.DeepEqual(want, op) {
		return fmt.Errorf("%w: a %s op with fields its kind does not carry", wire.ErrInvalidArgs, wop)
	}
	return nil
}

// peers holds one net/rpc client per peer node, dialed on first use and
// dropped when its connection fails, or before a call once it has been
// idle for half of peerIdleTimeout, after which the peer closes it.
type peers struct {
	addrs   func(node string) (string, bool) // a node's raft address
	dialer  *dialer
	timeout time.Duration
	idle    time.Duration // replace a connection idle this long

	mu      sync.Mutex
	clients map[string]*peerClient
	closed  bool
}

// peerClient is the connection to one peer.
type peerClient struct {
	*rpc.Client
	calls atomic.Int32 // calls running
	used  atomic.Int64 // when the last call ended, in Unix nanoseconds
}

func (c *peerClient) idleFor(now time.Time) time.Duration {
	if c.calls.Load() > 0 {
		return 0
	}
	return now.Sub(time.Unix(0, c.used.Load()))
}

func newPeers(addrs func(string) (string, bool), d *dialer, dialTimeout, idle time.Duration) *peers {
	return &peers{addrs: addrs, dialer: d, timeout: dialTimeout, idle: idle, clients: make(map[string]*peerClient)}
}

// client returns the connection to node, dialing it if there is none. The
// dial runs outside the lock, bounded by ctx, so that one unreachable peer
// does not hold up calls to the others.
func (p *peers) client(ctx context.Context, node string) (*peerClient, error) {
	p.mu.Lock()
	c, closed := p.clients[node], p.closed
	p.mu.Unlock()
	if closed {
		return nil, rpc.ErrShutdown
	}
	if c != nil && c.idleFor(time.Now()) < p.idle {
		return c, nil
	}
	if c != nil {
		p.drop(node, c)
	}
	addr, ok := p.addrs(node)
	if !ok {
		return nil, fmt.Errorf("server: unknown node %q", node)
	}
	dctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	conn, err := p.dialer.dial(dctx, addr, []byte{preambleRPC})
	if err != nil {
		return nil, fmt.Errorf("server: dialing node %s: %w", node, err)
	}
	c = &peerClient{Client: rpc.NewClientWithCodec(newClientCodec(conn))}
	c.used.Store(time.Now().UnixNano())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, rpc.ErrShutdown
	}
	if won := p.clients[node]; won != nil {
		c.Close() // another call dialed meanwhile
		return won, nil
	}
	p.clients[node] = c
	return c, nil
}

// reset closes the connection to node, if there is one, ending the calls
// on it; the next call dials anew.
func (p *peers) reset(node string) {
	p.mu.Lock()
	c := p.clients[node]
	delete(p.clients, node)
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (p *peers) drop(node string, c *peerClient) {
	p.mu.Lock()
	if p.clients[node] == c {
		delete(p.clients, node)
	}
	p.mu.Unlock()
	c.Close()
}

// forward sends req to node and waits for the reply or ctx. A failure the
// caller may retry wraps errRetry.
func (p *peers) forward(ctx context.Context, node string, req ForwardRequest) (ForwardReply, error) {
	if d, ok := ctx.Deadline(); ok {
		req.Timeout = time.Until(d)
	}
	reply, err := call[ForwardReply](ctx, p, node, "Node.Forward", req)
	if err != nil {
		return ForwardReply{}, err
	}
	if reply.Err != "" {
		if reply.Retry {
			return reply, fmt.Errorf("%w: %s: %s", errRetry, node, reply.Err)
		}
		return reply, fmt.Errorf("server: %s: %s", node, reply.Err)
	}
	return reply, nil
}

// call calls method on node and returns its reply, or an error once ctx
// ends. A failure to reach node wraps errRetry; it drops the connection
// unless node answered.
//
// Each call decodes into a reply of its own, read only once the call is
// done: a call given up when ctx ends stays with net/rpc, which still
// writes its reply whenever the answer comes.
func call[R any](ctx context.Context, p *peers, node, method string, args any) (R, error) {
	var zero R
	c, err := p.client(ctx, node)
	if err != nil {
		return zero, fmt.Errorf("%w: %v", errRetry, err)
	}
	c.calls.Add(1)
	defer func() {
		c.used.Store(time.Now().UnixNano())
		c.calls.Add(-1)
	}()
	reply := new(R)
	done := c.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-done.Done:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	if done.Error != nil {
		var answered rpc.ServerError
		if !errors.As(done.Error, &answered) {
			p.drop(node, c)
		}
		return zero, fmt.Errorf("%w: calling %s: %v", errRetry, node, done.Error)
	}
	return *reply, nil
}

func (p *peers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, c := range p.clients {
		c.Close()
		delete(p.clients, id)
	}
}
