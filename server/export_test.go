package server

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
)

// What the tests of package server_test reach inside a node. They run
// their clusters through servertest, which imports this package, so they
// cannot be tests of the package itself.

const (
	QuietFactor  = quietFactor
	QuiesceAfter = quiesceAfter
	HedgeDelay   = hedgeDelay
)

// ErrRetry marks failures worth retrying on whichever node leads now.
var ErrRetry = errRetry

func replicaOf(n *Node, id shard.ID) *replica {
	r := n.replica(id)
	if r == nil {
		panic(fmt.Sprintf("node %s holds no replica of shard %d", n.id, id))
	}
	return r
}

// Raft returns node n's raft instance of shard id.
func Raft(n *Node, id shard.ID) *raft.Raft { return replicaOf(n, id).raft }

// FirstLogIndex returns the first index in node n's raft log of shard id.
func FirstLogIndex(n *Node, id shard.ID) (uint64, error) { return replicaOf(n, id).logs.FirstIndex() }

// LeaderHeard reports whether node n's replica of shard id leads, or
// follows a leader heard from within its heartbeat timeout.
func LeaderHeard(n *Node, id shard.ID) bool {
	r := replicaOf(n, id)
	return r.isLeader() || r.leaderHeard()
}

// InFlight counts the requests node n is handling in goroutines.
func InFlight(n *Node) int { return len(n.inFlight) }

// JobWatchers counts the acquires waiting for jobs at node n, from clients
// or, at a leader, from followers.
func JobWatchers(n *Node) int { return int(n.jobs.watchers.Load()) }

// BlockedAcquires counts the client acquires at node n asleep until a job
// may have come: they have looked at every shard and found nothing.
func BlockedAcquires(n *Node) int { return int(n.jobs.blocked.Load()) }

// DialRPC opens a node-to-node RPC connection to node to of spec, with the
// credentials creds (nil: insecure, plain TCP).
func DialRPC(ctx context.Context, spec *Spec, creds *PeerTLS, to string) (net.Conn, error) {
	n := spec.Node(to)
	if n == nil {
		return nil, fmt.Errorf("no node %q", to)
	}
	return specDialer(spec, creds).dial(ctx, n.Raft, []byte{preambleRPC})
}

// DialRaft opens a raft stream of shard id to node to of spec, with the
// credentials creds (nil: insecure, plain TCP).
func DialRaft(ctx context.Context, spec *Spec, creds *PeerTLS, to string, id shard.ID) (net.Conn, error) {
	n := spec.Node(to)
	if n == nil {
		return nil, fmt.Errorf("no node %q", to)
	}
	p := []byte{preambleRaft, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(p[1:], uint32(id))
	return specDialer(spec, creds).dial(ctx, n.Raft, p)
}

// Limits of node-to-node messages.
const (
	MaxRPCRequestSize = maxRPCRequestSize
	MaxPendingConns   = maxPendingConns
)

// TermOf asks node peer, from node n, for its raft term of shard id.
func TermOf(ctx context.Context, n *Node, peer string, id shard.ID) (uint64, error) {
	return n.peers.termOf(ctx, peer, id)
}

// ReadIndex takes a read index on node n, which must lead shard id.
func ReadIndex(ctx context.Context, n *Node, id shard.ID) (uint64, error) {
	return replicaOf(n, id).readIndex(ctx)
}

// StateIndex returns the index of the last entry at or before index that
// node n's state machine of shard id applies.
func StateIndex(n *Node, id shard.ID, index uint64) (uint64, error) {
	return replicaOf(n, id).stateIndex(index)
}

// ReadPeers returns the nodes that node n's read rounds of shard id call.
func ReadPeers(n *Node, id shard.ID) []string {
	return replicaOf(n, id).verifier.others()
}

// ScriptReadRounds makes node n's read rounds of shard id call the nodes
// others, through termOf. Call it between rounds (see AwaitTermCalls).
func ScriptReadRounds(n *Node, id shard.ID, others []string, termOf func(ctx context.Context, node string) (uint64, error)) {
	v := &replicaOf(n, id).verifier
	v.others = func() []string { return others }
	v.termOf = termOf
}

// AwaitTermCalls waits until node n's read rounds of shard id have no call
// running. A round ends at a quorum; its other calls run on, and the next
// round does not call those nodes until they end.
func AwaitTermCalls(ctx context.Context, n *Node, id shard.ID) error {
	v := &replicaOf(n, id).verifier
	v.askMu.Lock()
	asking := maps.Clone(v.asking)
	v.askMu.Unlock()
	for node, f := range asking {
		for f.Load() {
			if ctx.Err() != nil {
				return fmt.Errorf("a term call to %s did not end: %w", node, ctx.Err())
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// Diverge sets key to value in node n's replica of shard id without raft,
// at the index it has applied: that replica then holds a state its peers
// do not. Call it while the shard has no write in flight.
func Diverge(n *Node, id shard.ID, key, value string) error {
	sm := replicaOf(n, id).fsm
	data, err := (&fsm.Command{Ops: []fsm.Op{{Kind: fsm.KindSet, Key: key, Value: value}}}).Encode()
	if err != nil {
		return err
	}
	sm.Apply(&raft.Log{Index: sm.Applied(), Type: raft.LogCommand, Data: data})
	return nil
}

// LongPolls counts the long polls node n is handling.
func LongPolls(n *Node) int { return n.longPolls.count() }

// HeartbeatClients counts the addresses node n heartbeats to.
func HeartbeatClients(n *Node) int { return len(n.clients.recent(time.Now())) }

const MaxHeartbeatSize = maxHeartbeatSize

// specDialer dials the nodes of spec with creds.
func specDialer(spec *Spec, creds *PeerTLS) *dialer {
	return &dialer{creds: creds, nodeAt: func(addr string) (string, bool) {
		for _, n := range spec.Nodes {
			if n.Raft == addr {
				return n.ID, true
			}
		}
		return "", false
	}}
}

// SlotMoves returns the slot moves node n's replica of shard id holds.
func SlotMoves(n *Node, id shard.ID) []fsm.SlotMove { return replicaOf(n, id).fsm.Moves() }
