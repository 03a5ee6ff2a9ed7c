package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// applied returns the raft index node n's replica of shard id has applied.
func applied(t *testing.T, n *server.Node, id shard.ID) uint64 {
	t.Helper()
	for _, s := range n.Status().Shards {
		if s.ID == id {
			return s.Applied
		}
	}
	t.Fatalf("node %s holds no replica of shard %d", n.ID(), id)
	return 0
}

// An acquire that names one shard as often as there can be shards asks it
// once: it appends an entry or two to the shard's log, not thousands.
func TestAcquireAsksEachNamedShardOnce(t *testing.T) {
	c, lead, follower := quietFollowerCluster(t)
	before := applied(t, lead, 0)
	r := request(t, c, clientAddr(c, follower.ID()), &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
		Client: "many-shards", Seq: 1, Timeout: 2 * time.Second,
		Args: wire.Args{Topic: "nothing", Lease: time.Second, Shards: make([]shard.ID, shard.SlotCount)}})
	if r.Type != wire.TypeResponse || r.Result.Job != nil {
		t.Fatalf("acquire of an empty topic: %+v %+v", r.Result.Job, r.Err)
	}
	if n := applied(t, lead, 0) - before; n > 2 {
		t.Errorf("the acquire appended %d entries", n)
	}
}

// A retried acquire gets the grant of its first attempt, payload and all,
// although the node keeps no payload for it: the shard's session answers,
// the payload read from the job. Once the job is done the grant is gone,
// and the retry gets no job.
func TestRetriedAcquireGetsItsGrant(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Raft: failoverTiming})
	addr := clientAddr(c, c.Running()[0])
	enq := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue, Client: "producer", Seq: 1,
		Args: wire.Args{Topic: "mail", JobID: "j000.1", Value: "the payload"}})
	if enq.Type != wire.TypeResponse {
		t.Fatalf("enqueue: %+v", enq.Err)
	}
	acquire := &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire, Client: "worker", Seq: 1, Timeout: time.Second,
		Args: wire.Args{Topic: "mail", Lease: time.Minute}}
	first := request(t, c, addr, acquire)
	if first.Type != wire.TypeResponse || first.Result.Job == nil || first.Result.Job.Payload != "the payload" {
		t.Fatalf("acquire: %+v %+v", first.Result.Job, first.Err)
	}
	acquire.Age = 100 * time.Millisecond
	again := request(t, c, addr, acquire)
	if again.Type != wire.TypeResponse || again.Result.Job == nil || *again.Result.Job != *first.Result.Job {
		t.Fatalf("retried acquire: %+v %+v, want %+v", again.Result.Job, again.Err, first.Result.Job)
	}
	done := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpComplete, Client: "worker", Seq: 2,
		Args: wire.Args{JobID: "j000.1", Token: first.Result.Job.Token, Grant: first.Result.Job.Grant}})
	if done.Type != wire.TypeResponse {
		t.Fatalf("complete: %+v", done.Err)
	}
	late := request(t, c, addr, acquire)
	if late.Type != wire.TypeResponse || late.Result.Job != nil {
		t.Errorf("retried acquire of a job done since: %+v %+v, want no job", late.Result.Job, late.Err)
	}
}

// A retried acquire whose first run was granted asks the granting shard
// again, whose session answers with the grant; while that shard has no
// leader, the retry is told to ask again, and does not lease a second job
// from another shard that no one would work.
func TestRetryOfAGrantWaitsForItsShard(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 2})
	m := c.Map()
	// x holds both shards.
	var x string
	for _, n := range c.Spec().Nodes {
		if len(m.ShardsOf(n.ID)) == 2 {
			x = n.ID
		}
	}
	if x == "" {
		t.Fatalf("no node holds both shards: %+v", m.Shards)
	}
	addr := clientAddr(c, x)
	for _, s := range m.Shards {
		slot := 0
		for m.SlotShard(slot) != s.ID {
			slot++
		}
		enq := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue, Client: "producer", Seq: uint64(s.ID) + 1,
			Args: wire.Args{Topic: "t", JobID: shard.NewJobID(slot, fmt.Sprint("job", s.ID)), Value: "p"}})
		if enq.Type != wire.TypeResponse {
			t.Fatalf("enqueue on shard %d: %+v", s.ID, enq.Err)
		}
	}
	waitConverged(t, c)
	acquire := &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire, Client: "worker", Seq: 1, Timeout: time.Second,
		Args: wire.Args{Topic: "t", Lease: time.Minute}}
	first := request(t, c, addr, acquire)
	if first.Type != wire.TypeResponse || first.Result.Job == nil {
		t.Fatalf("acquire: %+v %+v", first.Result.Job, first.Err)
	}
	granting := m.SlotShard(shard.JobSlot(first.Result.Job.ID))
	waitConverged(t, c) // so that x's replicas show the job leased, the other ready
	// The granting shard loses its other replica, and with it any leader.
	for _, id := range m.Shard(granting).Replicas {
		if id != x {
			kill(t, c, id)
		}
	}
	servertest.WaitFor(t, 10*time.Second, "the granting shard without a leader at "+x, func() bool {
		return !server.LeaderHeard(c.Node(x), granting)
	})
	acquire.Age = time.Second
	retry := request(t, c, addr, acquire)
	if retry.Type != wire.TypeError || retry.Err.Code != wire.CodeUnavailable {
		t.Errorf("retry of a grant while its shard has no leader: %+v %+v, want unavailable", retry.Result.Job, retry.Err)
	}
}
