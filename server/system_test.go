package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

func TestWriteVisibleToAnotherClient(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	a, b := newClient(t, c, client.Config{}), newClient(t, c, client.Config{})
	v, err := a.Set(ctx, "greeting", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	it, err := b.Get(ctx, "greeting")
	if err != nil || string(it.Value) != "hello" || it.Version != v {
		t.Fatalf("b.Get = %+v, %v; want hello at version %d", it, err, v)
	}
	if _, err := b.Get(ctx, "missing"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("missing key: %v, want ErrNotFound", err)
	}
	if _, err := b.CompareAndSet(ctx, "greeting", v+100, []byte("x")); !errors.Is(err, client.ErrVersionConflict) {
		t.Errorf("CAS with a wrong version: %v", err)
	} else if e := new(client.Error); !errors.As(err, &e) || e.Version != v {
		t.Errorf("conflict reports version %d, want %d", e.Version, v)
	}
	v2, err := b.CompareAndSet(ctx, "greeting", v, []byte("hi"))
	if err != nil || v2 <= v {
		t.Fatalf("CAS = %d, %v", v2, err)
	}
	if _, err := a.CompareAndSet(ctx, "fresh", 0, []byte("1")); err != nil {
		t.Errorf("create-only CAS on a new key: %v", err)
	}
	if _, err := a.CompareAndSet(ctx, "fresh", 0, []byte("2")); !errors.Is(err, client.ErrVersionConflict) {
		t.Errorf("create-only CAS on an existing key: %v", err)
	}
	if err := a.Delete(ctx, "greeting"); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "greeting"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	it, err = b.Get(ctx, "greeting", client.Stale())
	if !errors.Is(err, client.ErrNotFound) {
		// A stale read may lag, but never past a write the replica has
		// applied; give it the benefit only of being behind.
		t.Logf("stale read after delete: %+v, %v", it, err)
	}
	if _, err := a.Set(ctx, "big", make([]byte, shard.MaxValueSize+1)); !errors.Is(err, client.ErrValueTooLarge) {
		t.Errorf("oversized value: %v", err)
	}
	if _, err := a.Set(ctx, "big", make([]byte, shard.MaxValueSize)); err != nil {
		t.Errorf("value of the maximum size: %v", err)
	}
	if _, err := a.Get(ctx, ""); !errors.Is(err, client.ErrInvalidKey) {
		t.Errorf("empty key: %v", err)
	}
}

// quietFollowerCluster starts 3 nodes holding one shard of 3 replicas
// whose followers learn of a commit only with the next entries: the
// leader's idle appends come once a minute (CommitTimeout), and raft's
// heartbeats do not carry the commit index. It returns the leader and a
// follower.
func quietFollowerCluster(t *testing.T) (c *servertest.Cluster, lead, follower *server.Node) {
	t.Helper()
	c = servertest.New(t, servertest.Options{Raft: server.RaftTiming{CommitTimeout: server.Duration(time.Minute)}})
	lead = leader(t, c, 0)
	for _, id := range c.Running() {
		if id != lead.ID() {
			return c, lead, c.Node(id)
		}
	}
	t.Fatal("no follower")
	return nil, nil, nil
}

// A linearizable read on a follower sees a write acknowledged just before
// it without waiting for the follower to learn of the commit, which with a
// long CommitTimeout it would not for many seconds; a stale read there
// does not wait.
func TestFollowerReadsDoNotWaitForCommitNews(t *testing.T) {
	t.Parallel()
	c, leader, follower := quietFollowerCluster(t)
	for i := range 20 {
		v := fmt.Sprint("v", i)
		set := request(t, c, c.Spec().Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet,
			Client: "reader-test", Seq: uint64(i + 1), Args: wire.Args{Key: "k", Value: v}})
		if set.Type != wire.TypeResponse {
			t.Fatalf("set: %+v", set.Err)
		}
		get := request(t, c, c.Spec().Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet,
			Timeout: time.Second, Args: wire.Args{Key: "k"}})
		if get.Type != wire.TypeResponse || get.Result.Value != v || get.Result.Version != set.Result.Version {
			t.Fatalf("follower read after set %s: %+v %+v; want %s at version %d", v, get.Result, get.Err, v, set.Result.Version)
		}
	}
	stale := request(t, c, c.Spec().Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet,
		Timeout: time.Second, Args: wire.Args{Key: "k", Stale: true}})
	if stale.Type == wire.TypeError && stale.Err.Code != wire.CodeNotFound {
		t.Fatalf("stale read on the follower: %+v", stale.Err)
	}
}

// Job stats and dead listings on a follower count a job enqueued just
// before, without waiting for the follower to learn of the commit (with a
// long CommitTimeout it would not for a minute).
func TestFollowerJobReadsDoNotWaitForCommitNews(t *testing.T) {
	t.Parallel()
	c, leader, follower := quietFollowerCluster(t)
	for i := range 5 {
		enq := request(t, c, c.Spec().Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
			Client: "stats-test", Seq: uint64(i + 1), Args: wire.Args{Topic: "mail", JobID: fmt.Sprint("job-", i), Value: "p"}})
		if enq.Type != wire.TypeResponse {
			t.Fatalf("enqueue: %+v", enq.Err)
		}
		stats := request(t, c, c.Spec().Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpJobStats,
			Timeout: time.Second, Args: wire.Args{Topic: "mail", Shards: []shard.ID{0}}})
		if stats.Type != wire.TypeResponse || stats.Result.Counts == nil || stats.Result.Counts.Ready != i+1 {
			t.Fatalf("stats on the follower after %d enqueues: %+v %+v", i+1, stats.Result.Counts, stats.Err)
		}
	}
	dead := request(t, c, c.Spec().Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpDeadJobs,
		Timeout: time.Second, Args: wire.Args{Topic: "mail", Shards: []shard.ID{0}}})
	if dead.Type != wire.TypeResponse || dead.Result.Jobs == nil || len(dead.Result.Jobs) != 0 {
		t.Fatalf("dead jobs on the follower: %+v %+v; want an empty listing", dead.Result.Jobs, dead.Err)
	}
}

// An acquire that reaches a follower right after a job was enqueued gets
// the job, although the follower has not yet learned that the enqueue
// committed (with a long CommitTimeout, it would not for a minute).
func TestFollowerAcquireFindsAJobJustEnqueued(t *testing.T) {
	t.Parallel()
	c, leader, follower := quietFollowerCluster(t)
	for i := range 5 {
		id := fmt.Sprint("job-", i)
		enq := request(t, c, c.Spec().Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
			Client: "acquire-test", Seq: uint64(2*i + 1), Args: wire.Args{Topic: "mail", JobID: id, Value: "p"}})
		if enq.Type != wire.TypeResponse {
			t.Fatalf("enqueue: %+v", enq.Err)
		}
		acq := request(t, c, c.Spec().Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "acquire-test", Seq: uint64(2*i + 2), Timeout: time.Second,
			Args: wire.Args{Topic: "mail", Lease: time.Minute, Wait: 500 * time.Millisecond}})
		if acq.Type != wire.TypeResponse || acq.Result.Job == nil || acq.Result.Job.ID != id {
			t.Fatalf("acquire on the follower after enqueueing %s: %+v %+v", id, acq.Result.Job, acq.Err)
		}
	}
}

// An acquire waiting on a follower gets a job enqueued on the leader while
// it waits, although the follower has not learned of the enqueue (with a
// long CommitTimeout it would not for a minute).
func TestFollowerWaitingAcquireWakesOnTheLeader(t *testing.T) {
	c, leader, follower := quietFollowerCluster(t)
	got := make(chan wire.Message, 1)
	start := time.Now()
	go func() {
		r, err := rawRequest(c, clientAddr(c, follower.ID()), &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "wait-test", Seq: 1, Timeout: 4 * time.Second,
			Args: wire.Args{Topic: "mail", Lease: time.Minute, Wait: 3 * time.Second}})
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	// The follower, finding nothing, asks the leader to answer once a
	// job is ready there: the leader then watches the topic.
	servertest.WaitFor(t, 3*time.Second, "the follower's acquire waiting at the leader", func() bool {
		return server.JobWatchers(leader) > 0
	})
	enq := request(t, c, clientAddr(c, leader.ID()), &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
		Client: "wait-test-enqueue", Seq: 1, Args: wire.Args{Topic: "mail", JobID: "j1", Value: "p"}})
	if enq.Type != wire.TypeResponse {
		t.Fatalf("enqueue: %+v", enq.Err)
	}
	acq := <-got
	if acq.Type != wire.TypeResponse || acq.Result.Job == nil || acq.Result.Job.ID != "j1" {
		t.Fatalf("waiting acquire on the follower after %v: %+v %+v; want job j1", time.Since(start), acq.Result.Job, acq.Err)
	}
}

// An acquire on a node one of whose shards has lost its leader still gets
// a job ready on another shard, at once: the leaderless shard is not
// waited on.
func TestAcquireSkipsALeaderlessShard(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 3, Replicas: 2})
	smap := c.Map()
	// a holds a shard with b (which dies) and a shard with the third node.
	var a, b string
	var live shard.ID
	for _, s := range smap.Shards {
		for _, o := range smap.Shards {
			if s.ID == o.ID || s.Replicas[0] != o.Replicas[0] && s.Replicas[0] != o.Replicas[1] {
				continue
			}
			x := s.Replicas[0]
			other := func(sh shard.Shard) string {
				if sh.Replicas[0] == x {
					return sh.Replicas[1]
				}
				return sh.Replicas[0]
			}
			if other(s) != other(o) {
				a, b, live = x, other(s), o.ID
			}
		}
	}
	if a == "" {
		t.Fatalf("no node holds two shards with different partners in %+v", smap.Shards)
	}
	kill(t, c, b)
	for _, id := range smap.ShardsOf(a) {
		if id != live {
			servertest.WaitFor(t, 10*time.Second, fmt.Sprintf("shard %d on %s losing its leader after %s stopped", id, a, b), func() bool {
				return !server.LeaderHeard(c.Node(a), id)
			})
		}
	}
	id := ""
	for i := 0; id == ""; i++ {
		if k := fmt.Sprint("job-", i); smap.SlotShard(shard.JobSlot(k)) == live {
			id = k
		}
	}
	// The acquire waits; the job comes while it does.
	got := make(chan wire.Message, 1)
	go func() {
		r, err := rawRequest(c, clientAddr(c, a), &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "skip-test", Seq: 1, Timeout: 3 * time.Second,
			Args: wire.Args{Topic: "mail", Lease: time.Minute, Wait: 2 * time.Second}})
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	servertest.WaitFor(t, 3*time.Second, "the acquire asleep on "+a, func() bool { return server.BlockedAcquires(c.Node(a)) > 0 })
	enq := request(t, c, clientAddr(c, a), &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
		Client: "skip-test-enqueue", Seq: 1, Timeout: 3 * time.Second, Args: wire.Args{Topic: "mail", JobID: id, Value: "p"}})
	if enq.Type != wire.TypeResponse {
		t.Fatalf("enqueue on shard %d: %+v", live, enq.Err)
	}
	acq := <-got
	if acq.Type != wire.TypeResponse || acq.Result.Job == nil || acq.Result.Job.ID != id {
		t.Fatalf("acquire on %s with shard of %s leaderless: %+v %+v", a, b, acq.Result.Job, acq.Err)
	}
}

// 1,000 writes through a link that drops 20% of datagrams each way: each
// succeeds within 3 attempts or fails with ErrUnavailable, and the state
// machines execute each at most once although retries reach them twice.
func TestLossyWritesApplyAtMostOnce(t *testing.T) {
	const writes, workers = 600, 16
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	cl := lossyClient(t, c, 0.2, 1)
	ctx := context.Background()
	acked := make([]bool, writes)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < writes; i += workers {
				_, err := cl.Set(ctx, fmt.Sprintf("lossy-%d", i), []byte(fmt.Sprint(i)))
				switch {
				case err == nil:
					acked[i] = true
				case errors.Is(err, client.ErrUnavailable):
					failed.Add(1)
				default:
					t.Errorf("write %d: %v is not a clear error", i, err)
				}
			}
		}()
	}
	wg.Wait()
	st := cl.Counters()
	t.Logf("%d writes, %d failed after 3 attempts, %d attempts, %d timeouts", writes, failed.Load(), st.Attempts, st.Timeouts)
	if st.Attempts > 3*st.Requests {
		t.Errorf("%d attempts for %d requests: more than 3 each", st.Attempts, st.Requests)
	}
	// Success per attempt is 0.8² = 0.64, so 1-(0.36)³ ≈ 95% succeed.
	if f := failed.Load(); f > writes/10 {
		t.Errorf("%d of %d writes failed; expected about 5%%", f, writes)
	}

	waitConverged(t, c)
	var duplicates uint64
	for _, s := range c.Map().Shards {
		for _, id := range s.Replicas {
			st := c.Node(id).ShardStats(s.ID)
			// Every key is distinct and written once, so a replica
			// that executed more ops than it has keys applied a write
			// twice.
			if st.Executed != uint64(st.Keys) {
				t.Errorf("shard %d on %s: %d writes executed for %d keys", s.ID, id, st.Executed, st.Keys)
			}
			duplicates += st.Duplicates
		}
	}
	t.Logf("%d retried writes reached a state machine again and were answered from the session (summed over replicas)", duplicates)
	if duplicates == 0 {
		t.Error("no retry ever reached a state machine twice: the test did not exercise deduplication")
	}
	reader := newClient(t, c, client.Config{})
	for i, ok := range acked {
		if !ok {
			continue
		}
		it, err := reader.Get(ctx, fmt.Sprintf("lossy-%d", i))
		if err != nil || string(it.Value) != fmt.Sprint(i) {
			t.Errorf("acknowledged write %d reads back %q, %v", i, it.Value, err)
		}
	}
}

// Kill the leader of a shard during writes: every acknowledged write stays
// readable, writes to that shard succeed again within 3 s, and the killed
// node, restarted on its data, catches up and serves.
func TestLeaderKillDuringWrites(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Raft: failoverTiming})
	smap := c.Map()
	const victimShard = shard.ID(0)
	victim := leader(t, c, victimShard).ID()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Writers over every shard, recording what was acknowledged.
	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		cl := newClient(t, c, client.Config{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("w%d-%d", w, i), fmt.Sprint(i)
				if _, err := cl.Set(ctx, k, []byte(v)); err == nil {
					mu.Lock()
					acked[k] = v
					mu.Unlock()
				}
			}
		}()
	}
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	servertest.WaitFor(t, 10*time.Second, "100 writes acknowledged", func() bool { return ackedCount() >= 100 })

	// A prober writes to the victim shard only, to time its recovery.
	probeKeys := keysOf(smap, victimShard, "probe", 10000)
	prober := newClient(t, c, client.Config{})
	kill(t, c, victim)
	killed := time.Now()
	var recovered time.Duration
	for i := 0; ; i++ {
		if time.Since(killed) > 10*time.Second {
			t.Fatal("no write to the shard succeeded within 10s of killing its leader")
		}
		k := probeKeys[i%len(probeKeys)]
		if _, err := prober.Set(ctx, k, []byte("p")); err == nil {
			recovered = time.Since(killed)
			break
		}
	}
	t.Logf("writes to shard %d succeeded again %v after its leader %s was killed", victimShard, recovered, victim)
	if recovered > 3*time.Second {
		t.Errorf("recovery took %v, over 3s", recovered)
	}
	before := ackedCount()
	servertest.WaitFor(t, 10*time.Second, "100 more writes acknowledged after the recovery", func() bool { return ackedCount() >= before+100 })
	cancel()
	wg.Wait()

	// Every shard the victim led elects a leader, not only the probed one.
	waitReady(t, c)
	reader := newClient(t, c, client.Config{})
	rctx := context.Background()
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 100 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	for k, v := range acked {
		it, err := reader.Get(rctx, k)
		if err != nil || string(it.Value) != v {
			t.Errorf("acknowledged %s=%s reads back %q, %v", k, v, it.Value, err)
		}
	}
	t.Logf("%d acknowledged writes all readable", len(acked))

	// The victim comes back on its data, catches up, and serves reads of
	// writes it missed, linearizable and stale, itself.
	n := restart(t, c, victim)
	waitConverged(t, c)
	for k, v := range acked {
		if smap.ShardOf(k) != victimShard {
			continue
		}
		for _, stale := range []bool{false, true} {
			r := request(t, c, clientAddr(c, victim), &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: k, Stale: stale}})
			if r.Type != wire.TypeResponse || r.Result.Value != v || r.Node != n.ID() {
				t.Fatalf("restarted %s: get %s (stale %v) = %+v, %+v; want %s", victim, k, stale, r.Result, r.Err, v)
			}
		}
		break
	}
}

// Stopping every node and starting them again on their data brings back
// every key, from snapshots and from the log after them.
func TestRestartAllKeepsEveryKey(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3,
		Raft: server.RaftTiming{SnapshotThreshold: 64}}) // exercise snapshots and restore
	cl := newClient(t, c, client.Config{})
	ctx := context.Background()
	const keys = 500
	for i := 0; i < keys; i++ {
		if _, err := cl.Set(ctx, fmt.Sprintf("k%d", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Delete(ctx, "k0"); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, c)
	for _, id := range c.Map().ShardsOf("n1") {
		if err := server.Raft(c.Node("n1"), id).Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}
	for i := keys; i < keys+20; i++ { // some writes only in the log
		if _, err := cl.Set(ctx, fmt.Sprintf("k%d", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, c)
	for _, id := range c.Running() {
		kill(t, c, id)
	}

	for _, id := range []string{"n1", "n2", "n3"} {
		restart(t, c, id)
	}
	waitReady(t, c)
	reader := newClient(t, c, client.Config{})
	for i := 1; i < keys+20; i++ {
		it, err := reader.Get(ctx, fmt.Sprintf("k%d", i))
		if err != nil || string(it.Value) != fmt.Sprint("v", i) {
			t.Fatalf("k%d after restart: %q, %v", i, it.Value, err)
		}
	}
	if _, err := reader.Get(ctx, "k0"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("deleted k0 after restart: %v", err)
	}
}

// A node never panics on input and answers what it can: malformed
// datagrams are counted (and answered when they carry a transaction id),
// unknown ops and wrong types get clear errors, and the node keeps serving.
func TestBadInput(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming})
	n := c.Node("n1")
	addr := clientAddr(c, "n1")
	udp, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := wire.Seal(udp, c.Secret(), wire.ClientSide) // malformed, but from a holder of the secret
	defer u.Close()
	to, _ := wire.ParseAddr(addr)
	id := wire.NewClientIdentity()
	for _, junk := range []string{"", "hello", "i00e", "d2:op99999999999:x", "le",
		strings.Repeat("l", 5000) + strings.Repeat("e", 5000), "d1:y1:re"} {
		if err := u.Send([]byte(junk), to); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		raw  string
		want wire.Code
	}{
		{"no op", "d1:ti7e1:y1:qe", wire.CodeProtocol},
		{"key of the wrong type", "d1:ad1:ki3ee1:q3:get1:ti7e1:y1:qe", wire.CodeProtocol},
		{"unknown op", "d1:q4:frob1:ti7e1:y1:qe", wire.CodeUnknownOp},
		{"no key", "d1:q3:get1:ti7e1:y1:qe", wire.CodeBadRequest},
		{"write without a client", "d1:ad1:k1:xe1:q3:set1:ti7e1:y1:qe", wire.CodeBadRequest},
		{"ack above seq", fmt.Sprintf("d1:ad1:k1:xe1:c16:%s1:ki9e1:p32:%s1:q3:set1:si2e1:ti7e1:y1:qe", id.ID, id.Proof), wire.CodeBadRequest},
		{"client id without its proof", "d1:ad1:k1:xe1:c16:0123456789abcdef1:ki1e1:q3:set1:si2e1:ti7e1:y1:qe", wire.CodeForbidden},
		{"long key", fmt.Sprintf("d1:ad1:k%d:%se1:q3:get1:ti7e1:y1:qe", shard.MaxKeySize+1, strings.Repeat("k", shard.MaxKeySize+1)), wire.CodeTooLarge},
	} {
		r, err := exchange(c, addr, []byte(tc.raw), 1, func(m wire.Message) bool { return m.Type != wire.TypeHeartbeat })
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Type != wire.TypeError || r.Err == nil || r.Err.Code != tc.want || r.TxID != 7 {
			t.Errorf("%s: reply %+v %+v, want error %d for transaction 7", tc.name, r, r.Err, tc.want)
		}
	}
	if got := n.Counters().Malformed; got < 8 {
		t.Errorf("%d malformed datagrams counted, want at least 8", got)
	}
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Set(context.Background(), "still", []byte("serving")); err != nil {
		t.Errorf("after bad input: %v", err)
	}
}

// A node told to shut down hands the leadership of its shards to a peer
// first, so writes carry on without waiting out an election timeout.
func TestShutdownHandsOverLeadership(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3})
	leader := leader(t, c, 0)
	// Make an election impossible within the test: the followers would
	// wait a minute before standing, so only a handover gives a leader.
	for _, id := range c.Running() {
		r := server.Raft(c.Node(id), 0)
		rc := r.ReloadableConfig()
		rc.HeartbeatTimeout, rc.ElectionTimeout = time.Minute, time.Minute
		if err := r.ReloadConfig(rc); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx, leader.ID()); err != nil {
		t.Fatal(err) // ErrHandover if the leadership was not handed over
	}
	waitReady(t, c)
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Set(ctx, "after", []byte("handover")); err != nil {
		t.Error(err)
	}
}

// A node that was down while the others compacted their logs past what it
// has catches up by receiving a snapshot over the node listener.
func TestCatchUpBySnapshot(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3})
	lagger := "n3"
	if leader(t, c, 0).ID() == lagger {
		lagger = "n2"
	}
	kill(t, c, lagger)
	// Keep almost no log behind the snapshots.
	for _, id := range c.Running() {
		r := server.Raft(c.Node(id), 0)
		rc := r.ReloadableConfig()
		rc.TrailingLogs, rc.SnapshotThreshold = 5, 20
		if err := r.ReloadConfig(rc); err != nil {
			t.Fatal(err)
		}
	}
	cl := newClient(t, c, client.Config{})
	ctx := context.Background()
	for i := 0; i < 300; i++ {
		if _, err := cl.Set(ctx, fmt.Sprint("s", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range c.Running() {
		if err := server.Raft(c.Node(id), 0).Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}
	first, err := server.FirstLogIndex(leader(t, c, 0), 0)
	if err != nil {
		t.Fatal(err)
	}
	n := restart(t, c, lagger)
	waitConverged(t, c)
	if st := n.ShardStats(0); st.Keys != 300 {
		t.Fatalf("restarted %s holds %d keys, want 300", lagger, st.Keys)
	}
	t.Logf("leader's log starts at %d; %s caught up from a snapshot", first, lagger)
	if first < 10 {
		t.Errorf("the leader's log still starts at %d: nothing forced a snapshot install", first)
	}
}

// Peers may call a node over its listener while it is still opening its
// replicas (a restart with many shards): the node answers "retry" until it
// has started, never touching its replicas half-built. Run with -race.
func TestForwardDuringStart(t *testing.T) {
	t.Parallel()
	spec, err := server.LocalSpec(3, 32, 3)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := servertest.Credentials(ca, spec)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		calls := 0
		defer func() { done <- calls }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn, err := server.DialRPC(ctx, spec, creds["n2"], "n1")
			cancel()
			if err != nil {
				continue // not listening yet
			}
			cl := rpc.NewClient(conn)
			for i := 0; i < 50; i++ {
				var reply server.ForwardReply
				if cl.Call("Node.Forward", server.ForwardRequest{Shard: shard.ID(i % 32), ReadIndex: true, Timeout: time.Millisecond}, &reply) != nil {
					break
				}
				calls++
			}
			cl.Close()
		}
	}()
	// Only n1 runs, with no quorum for any shard: what is tested is its
	// start, not a cluster.
	n, err := server.Start(context.Background(), server.Config{ID: "n1", DataDir: t.TempDir(), Spec: spec,
		Logger: servertest.TestLogger(t), PeerTLS: creds["n1"], Secret: newKeyring(t)})
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if calls := <-done; calls == 0 {
		t.Log("no call reached the node while it started")
	}
}

// A forward that carries neither ops nor a read, as a node speaking another
// form of the call would send, gets an error, not an empty success.
func TestForwardWithoutOpsIsRefused(t *testing.T) {
	t.Parallel()
	// The default timing: the test's forwards go to the leader it found,
	// which must not change on a loaded machine.
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3})
	leader := leader(t, c, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := server.DialRPC(ctx, c.Spec(), c.PeerTLS("n1"), leader.ID())
	if err != nil {
		t.Fatal(err)
	}
	cl := rpc.NewClient(conn)
	defer cl.Close()
	var reply server.ForwardReply
	if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, Timeout: time.Second}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Err == "" || reply.Retry {
		t.Fatalf("forward without ops: %+v, want a final error", reply)
	}
	reply = server.ForwardReply{}
	op := fsm.Op{Kind: fsm.KindSet, Client: "fw-test", Seq: 1, Key: "k", Value: "v"}
	if err := cl.Call("Node.Forward", server.ForwardRequest{Shard: 0, Ops: []fsm.Op{op}, Timeout: time.Second}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Err != "" || len(reply.Results) != 1 || reply.Results[0].Version == 0 {
		t.Fatalf("forward of one set: %+v", reply)
	}
}

// A node binds its listen addresses and is reached at its advertised ones.
func TestListenAddresses(t *testing.T) {
	t.Parallel()
	spec, err := server.LocalSpec(1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := &spec.Nodes[0]
	_, raftPort, _ := net.SplitHostPort(n.Raft)
	_, clientPort, _ := net.SplitHostPort(n.Client)
	n.RaftListen, n.ClientListen = "0.0.0.0:"+raftPort, "0.0.0.0:"+clientPort
	c := servertest.New(t, servertest.Options{Spec: spec})
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Set(context.Background(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// An acquire asleep on a follower stays asleep while the shard applies
// writes of other things: it does not look again, nor ask the leader again
// to wake it, at every entry.
func TestWaitingAcquireIgnoresOtherWrites(t *testing.T) {
	t.Parallel()
	// The default timing, and an acquire that waits far longer than the
	// writes take: the check means something only while the acquire
	// still waits and lead still leads.
	c := servertest.New(t, servertest.Options{})
	lead := leader(t, c, 0)
	var follower *server.Node
	for _, id := range c.Running() {
		if id != lead.ID() {
			follower = c.Node(id)
		}
	}
	got := make(chan error, 1)
	go func() {
		_, err := rawRequest(c, clientAddr(c, follower.ID()), &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "quiet-test", Seq: 1, Timeout: 16 * time.Second,
			Args: wire.Args{Topic: "nothing", Lease: time.Minute, Wait: 15 * time.Second}})
		got <- err
	}()
	servertest.WaitFor(t, 3*time.Second, "the acquire asleep on the follower", func() bool { return server.BlockedAcquires(follower) > 0 })
	cl := newClient(t, c, client.Config{})
	for i := range 100 {
		if _, err := cl.Set(context.Background(), fmt.Sprint("other-", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if server.BlockedAcquires(follower) == 0 || !lead.Leading(0) {
		t.Fatalf("the writes outlasted the acquire, or the leadership moved: the test checked nothing")
	}
	// One call from the follower waits at the leader, perhaps one more
	// from a look the first writes caused; not one per write.
	if n := server.JobWatchers(lead); n > 2 {
		t.Errorf("after 100 other writes the leader holds %d waits for the follower's acquire", n)
	}
	if err := <-got; err != nil {
		t.Error(err)
	}
}
