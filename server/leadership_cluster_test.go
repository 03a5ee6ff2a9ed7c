package server_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// spreadTimeout bounds the wait for the leadership balancer to spread the
// leaders again after a restart.
const spreadTimeout = 30 * time.Second

// leaderCounts returns how many shards each running node leads, by node
// id, counting a shard only for its Elected leader.
func leaderCounts(c *servertest.Cluster) map[string]int {
	counts := map[string]int{}
	for _, id := range c.Running() {
		counts[id] = 0
	}
	for _, s := range c.Map().Shards {
		if n := c.Elected(s.ID); n != nil {
			counts[n.ID()]++
		}
	}
	return counts
}

// spread reports whether every running node leads want shards.
func spread(c *servertest.Cluster, want int) bool {
	counts := leaderCounts(c)
	for _, n := range counts {
		if n != want {
			return false
		}
	}
	return len(counts) > 0
}

// After a node that led shards is killed and restarted, the balancer
// hands it its share of leaders again: each of 3 nodes leads 2 of the 6
// shards within spreadTimeout. Without the balancer (LeaderBalanceInterval
// negative) the restarted node leads nothing and the test fails.
func TestLeadershipSpreadAfterRestart(t *testing.T) {
	// The balancer looks every heartbeat timeout rather than every
	// DefaultLeaderBalanceInterval: the test is about where it moves
	// leaders, not how often it looks, and at the default the two spreads
	// (each a transfer or two, each after balanceChecks looks) took most
	// of the test's 20 s.
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 6, Replicas: 3, Raft: failoverTiming,
		Configure: func(cfg *server.Config) { cfg.LeaderBalanceInterval = time.Duration(failoverTiming.HeartbeatTimeout) }})
	servertest.WaitFor(t, spreadTimeout, "leaders spread at start", func() bool { return spread(c, 2) })

	// The node leading the most, or the first of those leading as many.
	counts := leaderCounts(c)
	ids := slices.Sorted(maps.Keys(counts))
	victim := ids[0]
	for _, id := range ids {
		if counts[id] > counts[victim] {
			victim = id
		}
	}
	kill(t, c, victim)
	servertest.WaitFor(t, 15*time.Second, fmt.Sprintf("the shards %s led to fail over", victim), func() bool {
		for _, s := range c.Map().Shards {
			if c.Leader(s.ID) == nil {
				return false
			}
		}
		return true
	})
	transfers := func() (sum uint64) {
		for _, id := range c.Running() {
			sum += c.Node(id).Counters().LeadershipTransfers
		}
		return sum
	}
	before := transfers()
	restart(t, c, victim)
	servertest.WaitFor(t, spreadTimeout, fmt.Sprintf("%s to lead its share again", victim), func() bool { return spread(c, 2) })
	// An election may hand the restarted node a shard too; the balancer
	// must have moved at least one.
	if transfers() == before {
		t.Errorf("no leadership transfer after the restart; %s leads its share by elections alone", victim)
	}
}

// A follower that forwards a write names the shard's leader in its reply,
// and a client that has learned the leaders, from heartbeats and such
// replies, sends its writes to them: the followers forward almost none.
func TestClientWritesReachLeaders(t *testing.T) {
	// Leaders stay where the elections put them: the test counts what
	// followers forward, and a transfer would make some of that.
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 6, Replicas: 3,
		Configure: func(cfg *server.Config) { cfg.LeaderBalanceInterval = -1 }})
	const id = 0
	lead := leader(t, c, id)
	var follower string
	for _, nid := range c.Map().Shard(id).Replicas {
		if nid != lead.ID() {
			follower = nid
		}
	}
	key := keysOf(c.Map(), id, "k", 1)[0]
	r := request(t, c, clientAddr(c, follower), &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "c", Seq: 1, Ack: 1,
		Args: wire.Args{Key: key, Value: "v"}})
	if r.Type != wire.TypeResponse || r.Leader == nil || r.Leader.Shard != id || r.Leader.Node != lead.ID() {
		t.Fatalf("a set via follower %s answered %+v, leader hint %+v; want the hint naming %s", follower, r.Err, r.Leader, lead.ID())
	}
	if f := c.Node(follower).Counters().Forwarded; f == 0 {
		t.Errorf("follower %s counts no forwarded write", follower)
	}

	cl := newClient(t, c, client.Config{})
	servertest.WaitFor(t, 10*time.Second, "the client to hear every shard's leader", func() bool {
		led := 0
		for _, n := range cl.Nodes() {
			led += len(n.Leads)
		}
		return led == len(c.Map().Shards)
	})
	forwarded := func() (sum uint64) {
		for _, nid := range c.Running() {
			sum += c.Node(nid).Counters().Forwarded
		}
		return sum
	}
	before := forwarded()
	const writes = 200
	for i := range writes {
		if _, err := cl.Set(context.Background(), fmt.Sprint("k", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// A retry after a timeout (a slow moment of a loaded test machine)
	// may reach a follower; otherwise none does. Without the client's
	// routing, about two thirds would.
	if f := forwarded() - before; f > writes/20 {
		t.Errorf("followers forwarded %d of %d writes of a client that knew the leaders", f, writes)
	}
}
