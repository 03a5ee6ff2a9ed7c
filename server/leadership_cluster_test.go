package server_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server/servertest"
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
	// The balancer runs at its default interval: the bound holds for it.
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 6, Replicas: 3, Raft: failoverTiming})
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
	if moved := transfers() - before; moved < 2 {
		t.Errorf("%d leadership transfers after the restart; want at least the 2 shards %s leads now", moved, victim)
	}
}
