package server

import (
	"testing"
	"time"

	"github.com/shoal-kv/shoal/wire"
)

// heartbeatTimeouts returns the heartbeat timeout raft now uses on each
// node's replica of shard 0.
func heartbeatTimeouts(c *testCluster) map[string]time.Duration {
	out := map[string]time.Duration{}
	for id, n := range c.nodes {
		out[id] = n.replicas[0].raft.ReloadableConfig().HeartbeatTimeout
	}
	return out
}

// waitHeartbeatTimeout waits until the replica of shard 0 on node uses
// want, and fails the test after limit.
func waitHeartbeatTimeout(t *testing.T, c *testCluster, node string, want, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		got := heartbeatTimeouts(c)[node]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: heartbeat timeout %v after %v, want %v (all: %v)", node, got, limit, want, heartbeatTimeouts(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quiescedCluster starts 3 nodes holding one shard of 3 replicas, with a
// heartbeat timeout of hb, and waits for its leader to quiesce.
func quiescedCluster(t *testing.T) (c *testCluster, leader *Node, hb time.Duration) {
	t.Helper()
	spec, err := LocalSpec(3, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	hb = 200 * time.Millisecond
	spec.Raft.HeartbeatTimeout = Duration(hb)
	c = startTestCluster(t, spec)
	leader = c.leader(0)
	waitHeartbeatTimeout(t, c, leader.ID(), quietFactor*hb, (quiesceAfter+3)*hb)
	return c, leader, hb
}

// An idle group's leader quiesces, and only the leader; a write wakes it
// before it is acknowledged; a leader that hands its leadership over gets
// its configured timeout back.
func TestIdleLeaderQuiesces(t *testing.T) {
	c, leader, hb := quiescedCluster(t)
	quiet := quietFactor * hb
	for id, d := range heartbeatTimeouts(c) {
		if id != leader.ID() && d != hb {
			t.Errorf("follower %s quiesced too: heartbeat timeout %v", id, d)
		}
	}

	set := rawRequest(t, c.spec.Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet,
		Client: "quiesce-test", Seq: 1, Args: wire.Args{Key: "k", Value: "v"}})
	if set.Type != wire.TypeResponse {
		t.Fatalf("set: %+v", set.Err)
	}
	if got := heartbeatTimeouts(c)[leader.ID()]; got != hb {
		t.Errorf("leader's heartbeat timeout after a write: %v, want %v", got, hb)
	}

	waitHeartbeatTimeout(t, c, leader.ID(), quiet, (quiesceAfter+3)*hb)
	if err := leader.replicas[0].raft.LeadershipTransfer().Error(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	waitHeartbeatTimeout(t, c, leader.ID(), hb, hb)
}

// A quiesced leader that dies is replaced as fast as a busy one: its
// followers never quiesced, so they notice within their own heartbeat
// timeout (randomized up to twice that), and elect a leader at once.
func TestQuiescedLeaderFailsOverPromptly(t *testing.T) {
	c, old, hb := quiescedCluster(t)

	killed := time.Now()
	c.stop(old.ID())
	for c.leader(0) == nil {
		// The later of two randomized timeouts in [hb, 2hb], then a vote
		// (a split one now and then); a follower with a quiesced timeout
		// would wait quietFactor times as long.
		if time.Since(killed) > quietFactor*hb/2 {
			t.Fatalf("no new leader %v after the quiesced leader died", time.Since(killed))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("new leader %v after the kill", time.Since(killed).Round(time.Millisecond))
}

// A leader whose heartbeats to a follower fail wakes, and stays awake
// while they fail: quiesced, raft would back its heartbeats off for up to
// half the quiesced timeout, and the follower, back, would hear nothing for
// that long. Once the follower is back and the group idle, it quiesces
// again.
func TestLeaderStaysAwakeWhileAFollowerIsDown(t *testing.T) {
	c, leader, hb := quiescedCluster(t)

	var down string
	for id := range c.nodes {
		if id != leader.ID() {
			down = id
			break
		}
	}
	c.stop(down)
	// Quiesced, the leader heartbeats every 2 to 4 s (a tenth or a fifth
	// of 20 hb); the first that fails wakes it.
	waitHeartbeatTimeout(t, c, leader.ID(), hb, quietFactor*hb/4+hb)
	time.Sleep((quiesceAfter + 2) * hb)
	if got := heartbeatTimeouts(c)[leader.ID()]; got != hb {
		t.Fatalf("leader quiesced (heartbeat timeout %v) with follower %s down", got, down)
	}

	c.start(down)
	waitHeartbeatTimeout(t, c, leader.ID(), quietFactor*hb, (2*quiesceAfter+5)*hb)
}

// A group whose idle appends come too seldom to keep the leader's lease
// never quiesces: its heartbeats are what keeps the lease.
func TestQuietTimeout(t *testing.T) {
	for _, tc := range []struct {
		timing RaftTiming
		want   time.Duration
	}{
		{RaftTiming{}, quietFactor * DefaultHeartbeatTimeout},
		{RaftTiming{HeartbeatTimeout: Duration(2 * time.Second)}, quietFactor * 2 * time.Second},
		{RaftTiming{CommitTimeout: Duration(time.Minute)}, 0},
		{RaftTiming{LeaderLeaseTimeout: Duration(500 * time.Millisecond), CommitTimeout: Duration(300 * time.Millisecond)}, 0},
	} {
		if got := quietTimeout(tc.timing.withDefaults()); got != tc.want {
			t.Errorf("%+v: quiet timeout %v, want %v", tc.timing, got, tc.want)
		}
	}
}
