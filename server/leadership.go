package server

import (
	"context"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
)

// Raft elects whichever replica times out first, so leaders pile up on the
// nodes that stayed up through a failover, and a node that restarts leads
// nothing. Writes all go to leaders, so they pile up with them. Each node
// therefore looks every Config.LeaderBalanceInterval whether it leads more
// than its share of shards and, if so, hands one shard's leadership to a
// replica on a node that leads less than its own share
// (raft.LeadershipTransferToServer).
//
// The rule counts rather than following a fixed preference per shard. A
// node gives leadership away only while over its share, and only to a node
// under its own, so a cluster whose elections happened to spread leaders
// evenly sees no transfer at all (each one stalls the shard's writes for a
// moment), and every transfer brings two nodes closer to their shares. A
// fixed preference would move up to two thirds of the leaders of a freshly
// started cluster, and again after every failover, only to reach one
// particular spread among many equally even ones. The counts a target
// reports may miss a transfer another node is making to it at the same
// time; a target pushed over its share that way hands the surplus on at
// its own next checks.
//
// A transfer makes the target start an election at once, and raft refuses
// writes while it runs (ErrLeadershipTransferInProgress, which requests
// retry) for up to an election timeout if the target does not win. So a
// leader transfers only to a replica that has answered balanceChecks checks
// in a row in the leader's own term, with its log and its state machine
// reaching the leader's commit index as of the check (a leader serves
// reads only once its state machine has caught up): a node that is down,
// restarting, or far behind is not chosen. A target that fails a transfer
// all the same (it answers, but cannot win an election) is not offered the
// shard again for a cooldown that doubles with each failure, from
// transferCooldown up to maxTransferCooldown. A node of an older version
// answers no progress (TermReply.Applied zero), so it is never a target:
// during a rolling upgrade, balancing waits for the new version.

// DefaultLeaderBalanceInterval is the default of
// Config.LeaderBalanceInterval.
const DefaultLeaderBalanceInterval = 2 * time.Second

// balanceChecks is how many checks in a row must find a node over its
// share and a target ready before leadership moves.
const balanceChecks = 2

// transferCooldown and maxTransferCooldown bound how long a failed
// transfer keeps its shard from being offered to the same target again.
const (
	transferCooldown    = 30 * time.Second
	maxTransferCooldown = 10 * time.Minute
)

// leaderShare returns the shards node would lead if every shard's
// leadership were spread evenly over its replicas: the sum of
// 1/len(replicas) over the shards node holds, rounded up. On an even map
// (shards × replicas / nodes replicas each) that is shards/nodes, rounded
// up.
func leaderShare(m *shard.Map, node string) int {
	var share float64
	for _, id := range m.ShardsOf(node) {
		if s := m.Shard(id); s != nil && len(s.Replicas) > 0 {
			share += 1 / float64(len(s.Replicas))
		}
	}
	// Rounding errors of the sum must not lift an even share by one.
	return int(math.Ceil(share - 1e-9))
}

// offer is a shard this node leads and another node holding a replica of
// it: a transfer the balancer considers.
type offer struct {
	shard shard.ID
	to    string
}

// leadershipOffers returns what the balancer asks about at a check of a
// node, self, that leads the shards in led: for each other node holding a
// replica of one of them, one offer, of the lowest such shard. One per
// node keeps a check's calls to a few; the same shard each time lets
// consecutive checks count towards balanceChecks. Offers come sorted by
// node id.
func leadershipOffers(m *shard.Map, self string, led []shard.ID) []offer {
	led = append([]shard.ID(nil), led...)
	sort.Slice(led, func(i, j int) bool { return led[i] < led[j] })
	first := map[string]shard.ID{}
	for _, id := range led {
		s := m.Shard(id)
		if s == nil {
			continue
		}
		for _, nid := range s.Replicas {
			if _, ok := first[nid]; !ok && nid != self {
				first[nid] = id
			}
		}
	}
	out := make([]offer, 0, len(first))
	for nid, id := range first {
		out = append(out, offer{shard: id, to: nid})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].to < out[j].to })
	return out
}

// balancer is the state of a node's leadership balancing between checks.
// Only balanceLeadership uses it.
type balancer struct {
	// shares holds each node's leaderShare in the map of metadata
	// version.
	shares  map[string]int
	version uint64
	// ready counts, per offer, the checks in a row that found its target
	// ready. Invariant: it holds only offers found ready at the last check.
	ready map[offer]int
	// failed holds the offers whose last transfer failed: how many of
	// their transfers in a row failed, and until when they are not made.
	// Bounded by the offers there can be, shards × replicas.
	failed map[offer]cooldown
}

// cooldown is a failed offer's state in balancer.failed.
type cooldown struct {
	failures int
	until    time.Time
}

// leads counts the shards this node leads.
func (n *Node) leads() int {
	count := 0
	for _, r := range n.current().replicas {
		if r.isLeader() {
			count++
		}
	}
	return count
}

// ledShards returns the shards this node leads.
func (n *Node) ledShards() []shard.ID {
	var led []shard.ID
	v := n.current()
	for _, id := range v.shardIDs() {
		if v.replicas[id].isLeader() {
			led = append(led, id)
		}
	}
	return led
}

// balanceLeadership checks every LeaderBalanceInterval whether this node
// leads more than its share, and moves leadership when it does. Stops with
// the node.
func (n *Node) balanceLeadership() {
	b := balancer{ready: map[offer]int{}, failed: map[offer]cooldown{}}
	t := time.NewTicker(n.cfg.LeaderBalanceInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.balanceOnce(&b)
		}
	}
}

// balanceOnce is one check of balanceLeadership: it asks the targets of
// this node's offers how far they are, and transfers the leadership of
// one offer's shard once its target has been ready balanceChecks times in
// a row.
func (n *Node) balanceOnce(b *balancer) {
	c := n.current().cluster
	if b.version != c.Version {
		// Shares and offers change with the map; failed offers may
		// name replicas that moved.
		b.version, b.shares = c.Version, make(map[string]int, len(c.Nodes))
		for _, nd := range c.Nodes {
			b.shares[nd.ID] = leaderShare(c.Map, nd.ID)
		}
		clear(b.ready)
		clear(b.failed)
	}
	led := n.ledShards()
	if len(led) <= b.shares[n.id] {
		clear(b.ready)
		return
	}
	now := time.Now()
	offers := slices.DeleteFunc(leadershipOffers(c.Map, n.id, led), func(o offer) bool {
		return now.Before(b.failed[o].until)
	})
	ok := make([]bool, len(offers))
	var wg sync.WaitGroup
	for i, o := range offers {
		wg.Go(func() { ok[i] = n.targetReady(o, b.shares[o.to]) })
	}
	wg.Wait()
	var chosen *offer
	for i, o := range offers {
		if !ok[i] {
			delete(b.ready, o)
			continue
		}
		if b.ready[o]++; b.ready[o] >= balanceChecks && chosen == nil {
			chosen = &offers[i]
		}
	}
	for o := range b.ready {
		if !slices.Contains(offers, o) {
			delete(b.ready, o)
		}
	}
	if chosen == nil {
		return
	}
	// Whatever the outcome, the counts have changed or the target failed:
	// every target proves itself ready anew.
	clear(b.ready)
	if n.transferLeadership(*chosen, len(led), b.shares[n.id]) {
		delete(b.failed, *chosen)
		return
	}
	b.failed[*chosen] = b.failed[*chosen].after(time.Now())
}

// after returns the cooldown of an offer whose transfer failed at now,
// again: transferCooldown after the first failure, twice the last after
// each next, up to maxTransferCooldown. failures stops counting once the
// cooldown has reached its bound, so that the shift cannot overflow.
func (c cooldown) after(now time.Time) cooldown {
	if c.failures == 0 || transferCooldown<<(c.failures-1) < maxTransferCooldown {
		c.failures++
	}
	c.until = now.Add(min(transferCooldown<<(c.failures-1), maxTransferCooldown))
	return c
}

// targetReady asks o's target about o's shard and reports whether it could
// take the leadership over now: this node still leads the shard, the
// target answers in this leader's term, with its log reaching the commit
// index this leader had before asking and its state machine the last
// entry up to there it applies, and leads fewer shards than share.
func (n *Node) targetReady(o offer, share int) bool {
	r := n.replica(o.shard)
	if r == nil {
		return false
	}
	term, commit := r.raft.CurrentTerm(), r.raft.CommitIndex()
	if !r.isLeader() {
		return false
	}
	state, err := r.stateIndex(commit)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, min(r.electionTimeout, n.cfg.LeaderBalanceInterval))
	defer cancel()
	reply, err := n.peers.ask(ctx, o.to, TermRequest{Shard: o.shard, Progress: true})
	if err != nil {
		return false
	}
	return reply.Term == term && r.raft.CurrentTerm() == term && r.isLeader() &&
		reply.LastIndex >= commit && reply.Applied >= state && reply.Leads < share
}

// transferLeadership hands the leadership of o's shard to o's target and
// waits for the transfer to end, with the replica held awake meanwhile:
// raft bounds a transfer by the election timeout, which quiescing raises.
// It reports whether the transfer succeeded.
func (n *Node) transferLeadership(o offer, leads, share int) bool {
	r := n.replica(o.shard)
	addr, _ := n.peers.addrs(o.to)
	if r == nil {
		return false
	}
	n.log.Info("moving leadership", "shard", o.shard, "to", o.to, "leads", leads, "share", share)
	release := r.holdAwake()
	defer release()
	f := r.raft.LeadershipTransferToServer(raft.ServerID(o.to), raft.ServerAddress(addr))
	if err := awaitFuture(f, r.stop); err != nil {
		n.log.Warn("moving leadership failed", "shard", o.shard, "to", o.to, "err", err)
		return false
	}
	n.leadershipTransfers.Add(1)
	return true
}
