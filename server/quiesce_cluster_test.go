package server_test

import (
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// heartbeatTimeouts returns the heartbeat timeout raft now uses on each
// node's replica of shard 0.
func heartbeatTimeouts(c *servertest.Cluster) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, id := range c.Running() {
		out[id] = server.Raft(c.Node(id), 0).ReloadableConfig().HeartbeatTimeout
	}
	return out
}

// waitHeartbeatTimeout waits until the replica of shard 0 on node uses
// want, and fails the test after limit.
func waitHeartbeatTimeout(t *testing.T, c *servertest.Cluster, node string, want, limit time.Duration) {
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
func quiescedCluster(t *testing.T) (c *servertest.Cluster, lead *server.Node, hb time.Duration) {
	t.Helper()
	hb = 200 * time.Millisecond
	c = servertest.New(t, servertest.Options{Raft: server.RaftTiming{HeartbeatTimeout: server.Duration(hb)}})
	lead = leader(t, c, 0)
	waitHeartbeatTimeout(t, c, lead.ID(), server.QuietFactor*hb, (server.QuiesceAfter+3)*hb)
	return c, lead, hb
}

// An idle group's leader quiesces, and only the leader; a write wakes it
// before it is acknowledged; a leader that hands its leadership over gets
// its configured timeout back.
func TestIdleLeaderQuiesces(t *testing.T) {
	c, leader, hb := quiescedCluster(t)
	quiet := server.QuietFactor * hb
	for id, d := range heartbeatTimeouts(c) {
		if id != leader.ID() && d != hb {
			t.Errorf("follower %s quiesced too: heartbeat timeout %v", id, d)
		}
	}

	set := request(t, c, clientAddr(c, leader.ID()), &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet,
		Client: "quiesce-test", Seq: 1, Args: wire.Args{Key: "k", Value: "v"}})
	if set.Type != wire.TypeResponse {
		t.Fatalf("set: %+v", set.Err)
	}
	if got := heartbeatTimeouts(c)[leader.ID()]; got != hb {
		t.Errorf("leader's heartbeat timeout after a write: %v, want %v", got, hb)
	}

	waitHeartbeatTimeout(t, c, leader.ID(), quiet, (server.QuiesceAfter+3)*hb)
	if err := server.Raft(leader, 0).LeadershipTransfer().Error(); err != nil {
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
	kill(t, c, old.ID())
	for c.Elected(0) == nil {
		// The later of two randomized timeouts in [hb, 2hb], then a vote
		// (a split one now and then); a follower with a quiesced timeout
		// would wait server.QuietFactor times as long.
		if time.Since(killed) > server.QuietFactor*hb/2 {
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
	for _, id := range c.Running() {
		if id != leader.ID() {
			down = id
			break
		}
	}
	kill(t, c, down)
	// Quiesced, the leader heartbeats every 2 to 4 s (a tenth or a fifth
	// of 20 hb); the first that fails wakes it.
	waitHeartbeatTimeout(t, c, leader.ID(), hb, server.QuietFactor*hb/4+hb)
	time.Sleep((server.QuiesceAfter + 2) * hb)
	if got := heartbeatTimeouts(c)[leader.ID()]; got != hb {
		t.Fatalf("leader quiesced (heartbeat timeout %v) with follower %s down", got, down)
	}

	restart(t, c, down)
	waitHeartbeatTimeout(t, c, leader.ID(), server.QuietFactor*hb, (2*server.QuiesceAfter+5)*hb)
}
