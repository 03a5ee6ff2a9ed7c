package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/rpc"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// client connects a client to the cluster. Unless the test brings its own
// transport (to study loss and attempts), the client makes 10 attempts, not
// 3, so that a slow moment of a loaded test machine (the race detector on
// two cores) does not fail a test about something else.
func (c *testCluster) client(cfg client.Config) *client.Client {
	c.t.Helper()
	if cfg.Seeds == nil {
		cfg.Seeds = c.seeds()
	}
	if cfg.Attempts == 0 && cfg.Transport == nil {
		cfg.Attempts = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(c.t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close(context.Background()) })
	return cl
}

// lossyClient is a client whose datagrams are dropped with probability drop
// in each direction. Its attempts wait at least 100ms, so that on a slow or
// loaded test machine retries come from lost datagrams, not slow replies.
func (c *testCluster) lossyClient(drop float64, seed int64) *client.Client {
	c.t.Helper()
	u, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	f, err := wire.WithFaults(u, wire.Faults{}, seed)
	if err != nil {
		c.t.Fatal(err)
	}
	// The link turns lossy once the client has learned the cluster: a
	// client.New whose three topology requests were all lost (4.7% at 20%
	// each way) would fail the test for what it does not test.
	cl := c.client(client.Config{Transport: f, MinAttemptTimeout: 100 * time.Millisecond})
	if err := f.SetFaults(wire.Faults{Drop: drop}); err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// keysOf returns n keys that live on shard id.
func keysOf(m *shard.Map, id shard.ID, prefix string, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("%s-%d", prefix, i)
		if m.ShardOf(k) == id {
			keys = append(keys, k)
		}
	}
	return keys
}

// waitConverged waits until every running replica of every shard has
// applied as far as the shard's leader.
func (c *testCluster) waitConverged() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range c.spec.Shards {
		for {
			l := c.leader(s.ID)
			ok := l != nil
			if ok {
				want := l.replicas[s.ID].fsm.Applied()
				for _, n := range c.nodes {
					if r := n.replicas[s.ID]; r != nil && r.fsm.Applied() < want {
						ok = false
					}
				}
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("shard %d did not converge", s.ID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestWriteVisibleToAnotherClient(t *testing.T) {
	c := newTestCluster(t, 3, 4, 3)
	ctx := context.Background()
	a, b := c.client(client.Config{}), c.client(client.Config{})
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
func quietFollowerCluster(t *testing.T) (c *testCluster, leader, follower *Node) {
	t.Helper()
	spec, err := LocalSpec(3, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	spec.Raft.CommitTimeout = Duration(time.Minute)
	c = startTestCluster(t, spec)
	leader = c.leader(0)
	for _, n := range c.nodes {
		if n != leader {
			return c, leader, n
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
	c, leader, follower := quietFollowerCluster(t)
	for i := range 20 {
		v := fmt.Sprint("v", i)
		set := rawRequest(t, c.spec.Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet,
			Client: "reader-test", Seq: uint64(i + 1), Args: wire.Args{Key: "k", Value: v}})
		if set.Type != wire.TypeResponse {
			t.Fatalf("set: %+v", set.Err)
		}
		get := rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet,
			Timeout: time.Second, Args: wire.Args{Key: "k"}})
		if get.Type != wire.TypeResponse || get.Result.Value != v || get.Result.Version != set.Result.Version {
			t.Fatalf("follower read after set %s: %+v %+v; want %s at version %d", v, get.Result, get.Err, v, set.Result.Version)
		}
	}
	stale := rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet,
		Timeout: time.Second, Args: wire.Args{Key: "k", Stale: true}})
	if stale.Type == wire.TypeError && stale.Err.Code != wire.CodeNotFound {
		t.Fatalf("stale read on the follower: %+v", stale.Err)
	}
}

// Job stats and dead listings on a follower count a job enqueued just
// before, without waiting for the follower to learn of the commit (with a
// long CommitTimeout it would not for a minute).
func TestFollowerJobReadsDoNotWaitForCommitNews(t *testing.T) {
	c, leader, follower := quietFollowerCluster(t)
	for i := range 5 {
		enq := rawRequest(t, c.spec.Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
			Client: "stats-test", Seq: uint64(i + 1), Args: wire.Args{Topic: "mail", JobID: fmt.Sprint("job-", i), Value: "p"}})
		if enq.Type != wire.TypeResponse {
			t.Fatalf("enqueue: %+v", enq.Err)
		}
		stats := rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpJobStats,
			Timeout: time.Second, Args: wire.Args{Topic: "mail", Shards: []shard.ID{0}}})
		if stats.Type != wire.TypeResponse || stats.Result.Counts == nil || stats.Result.Counts.Ready != i+1 {
			t.Fatalf("stats on the follower after %d enqueues: %+v %+v", i+1, stats.Result.Counts, stats.Err)
		}
	}
	dead := rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpDeadJobs,
		Timeout: time.Second, Args: wire.Args{Topic: "mail", Shards: []shard.ID{0}}})
	if dead.Type != wire.TypeResponse || dead.Result.Jobs == nil || len(dead.Result.Jobs) != 0 {
		t.Fatalf("dead jobs on the follower: %+v %+v; want an empty listing", dead.Result.Jobs, dead.Err)
	}
}

// An acquire that reaches a follower right after a job was enqueued gets
// the job, although the follower has not yet learned that the enqueue
// committed (with a long CommitTimeout, it would not for a minute).
func TestFollowerAcquireFindsAJobJustEnqueued(t *testing.T) {
	c, leader, follower := quietFollowerCluster(t)
	for i := range 5 {
		id := fmt.Sprint("job-", i)
		enq := rawRequest(t, c.spec.Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
			Client: "acquire-test", Seq: uint64(2*i + 1), Args: wire.Args{Topic: "mail", JobID: id, Value: "p"}})
		if enq.Type != wire.TypeResponse {
			t.Fatalf("enqueue: %+v", enq.Err)
		}
		acq := rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
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
		got <- rawRequest(t, c.spec.Node(follower.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "wait-test", Seq: 1, Timeout: 4 * time.Second,
			Args: wire.Args{Topic: "mail", Lease: time.Minute, Wait: 3 * time.Second}})
	}()
	time.Sleep(300 * time.Millisecond)
	enq := rawRequest(t, c.spec.Node(leader.ID()).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
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
	c := newTestCluster(t, 3, 3, 2)
	smap, err := c.spec.Map()
	if err != nil {
		t.Fatal(err)
	}
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
	c.stop(b)
	dead := c.nodes[a]
	deadline := time.Now().Add(10 * time.Second)
	for _, rep := range dead.replicas {
		for rep.id != live && (rep.isLeader() || rep.leaderHeard()) {
			if time.Now().After(deadline) {
				t.Fatalf("shard %d on %s still has a leader 10s after %s stopped", rep.id, a, b)
			}
			time.Sleep(10 * time.Millisecond)
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
		got <- rawRequest(t, c.spec.Node(a).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpAcquire,
			Client: "skip-test", Seq: 1, Timeout: 3 * time.Second,
			Args: wire.Args{Topic: "mail", Lease: time.Minute, Wait: 2 * time.Second}})
	}()
	time.Sleep(300 * time.Millisecond)
	enq := rawRequest(t, c.spec.Node(a).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpEnqueue,
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
	const writes, workers = 1000, 16
	c := newTestCluster(t, 3, 4, 3)
	cl := c.lossyClient(0.2, 1)
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

	c.waitConverged()
	var duplicates uint64
	for _, s := range c.spec.Shards {
		for id, n := range c.nodes {
			r := n.replicas[s.ID]
			if r == nil {
				continue
			}
			st := r.fsm.Stats()
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
	reader := c.client(client.Config{})
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
	c := newFailoverTestCluster(t, 3, 4, 3)
	smap, err := c.spec.Map()
	if err != nil {
		t.Fatal(err)
	}
	const victimShard = shard.ID(0)
	victim := c.leader(victimShard).ID()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Writers over every shard, recording what was acknowledged.
	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		cl := c.client(client.Config{})
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
	time.Sleep(300 * time.Millisecond)

	// A prober writes to the victim shard only, to time its recovery.
	probeKeys := keysOf(smap, victimShard, "probe", 10000)
	prober := c.client(client.Config{})
	c.stop(victim)
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
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()

	// Every shard the victim led elects a leader, not only the probed one.
	c.waitLeaders()
	reader := c.client(client.Config{})
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
	n := c.start(victim)
	c.waitConverged()
	for k, v := range acked {
		if smap.ShardOf(k) != victimShard {
			continue
		}
		for _, stale := range []bool{false, true} {
			r := rawRequest(t, c.spec.Node(victim).Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: k, Stale: stale}})
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
	spec, err := LocalSpec(3, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	spec.Raft.SnapshotThreshold = 64 // exercise snapshots and restore
	c := &testCluster{t: t, spec: spec, dir: t.TempDir(), nodes: map[string]*Node{}}
	t.Cleanup(c.closeAll)
	for _, n := range spec.Nodes {
		c.start(n.ID)
	}
	c.waitLeaders()
	cl := c.client(client.Config{})
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
	c.waitConverged()
	for _, r := range c.nodes["n1"].replicas {
		if err := r.raft.Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}
	for i := keys; i < keys+20; i++ { // some writes only in the log
		if _, err := cl.Set(ctx, fmt.Sprintf("k%d", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	c.waitConverged()
	c.closeAll()

	for _, n := range spec.Nodes {
		c.start(n.ID)
	}
	c.waitLeaders()
	reader := c.client(client.Config{})
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
	c := newTestCluster(t, 3, 1, 3)
	n := c.nodes["n1"]
	addr := c.spec.Node("n1").Client
	u, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	to, _ := wire.ParseAddr(addr)
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
		{"ack above seq", "d1:ad1:k1:xe1:c1:c1:ki9e1:q3:set1:si2e1:ti7e1:y1:qe", wire.CodeBadRequest},
		{"long key", fmt.Sprintf("d1:ad1:k%d:%se1:q3:get1:ti7e1:y1:qe", shard.MaxKeySize+1, strings.Repeat("k", shard.MaxKeySize+1)), wire.CodeTooLarge},
	} {
		r := rawSend(t, u, to, []byte(tc.raw))
		if r.Type != wire.TypeError || r.Err == nil || r.Err.Code != tc.want || r.TxID != 7 {
			t.Errorf("%s: reply %+v %+v, want error %d for transaction 7", tc.name, r, r.Err, tc.want)
		}
	}
	if got := n.Counters().Malformed; got < 8 {
		t.Errorf("%d malformed datagrams counted, want at least 8", got)
	}
	cl := c.client(client.Config{})
	if _, err := cl.Set(context.Background(), "still", []byte("serving")); err != nil {
		t.Errorf("after bad input: %v", err)
	}
}

// rawSend sends one datagram on u and returns the first reply.
func rawSend(t *testing.T, u *wire.UDP, to netip.AddrPort, b []byte) wire.Message {
	t.Helper()
	if err := u.Send(b, to); err != nil {
		t.Fatal(err)
	}
	got := make(chan wire.Message, 1)
	go func() {
		buf := make([]byte, wire.MaxDatagramSize)
		for {
			n, _, _, err := u.Receive(buf)
			if err != nil {
				return
			}
			if m, err := wire.Decode(buf[:n]); err == nil && m.Type != wire.TypeHeartbeat {
				got <- m
				return
			}
		}
	}()
	select {
	case m := <-got:
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no reply to %q", b)
		return wire.Message{}
	}
}

// A node told to shut down hands the leadership of its shards to a peer
// first, so writes carry on without waiting out an election timeout.
func TestShutdownHandsOverLeadership(t *testing.T) {
	c := newTestCluster(t, 3, 1, 3)
	leader := c.leader(0)
	// Make an election impossible within the test: the followers would
	// wait a minute before standing, so only a handover gives a leader.
	for _, n := range c.nodes {
		r := n.replicas[0].raft
		rc := r.ReloadableConfig()
		rc.HeartbeatTimeout, rc.ElectionTimeout = time.Minute, time.Minute
		if err := r.ReloadConfig(rc); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.Shutdown(ctx); err != nil {
		t.Fatal(err) // ErrHandover if the leadership was not handed over
	}
	delete(c.nodes, leader.ID())
	c.waitLeaders()
	cl := c.client(client.Config{})
	if _, err := cl.Set(ctx, "after", []byte("handover")); err != nil {
		t.Error(err)
	}
}

// A node that was down while the others compacted their logs past what it
// has catches up by receiving a snapshot over the node listener.
func TestCatchUpBySnapshot(t *testing.T) {
	c := newTestCluster(t, 3, 1, 3)
	lagger := "n3"
	if c.leader(0).ID() == lagger {
		lagger = "n2"
	}
	c.stop(lagger)
	// Keep almost no log behind the snapshots.
	for _, n := range c.nodes {
		r := n.replicas[0].raft
		rc := r.ReloadableConfig()
		rc.TrailingLogs, rc.SnapshotThreshold = 5, 20
		if err := r.ReloadConfig(rc); err != nil {
			t.Fatal(err)
		}
	}
	cl := c.client(client.Config{})
	ctx := context.Background()
	for i := 0; i < 300; i++ {
		if _, err := cl.Set(ctx, fmt.Sprint("s", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		if err := n.replicas[0].raft.Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}
	first, err := c.leader(0).replicas[0].store.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	n := c.start(lagger)
	c.waitConverged()
	if st := n.replicas[0].fsm.Stats(); st.Keys != 300 {
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
	spec, err := LocalSpec(3, 32, 3)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, spec: spec, dir: t.TempDir(), nodes: map[string]*Node{}}
	t.Cleanup(c.closeAll)
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
			conn, err := dialContext(ctx, spec.Nodes[0].Raft, []byte{preambleRPC})
			cancel()
			if err != nil {
				continue // not listening yet
			}
			cl := rpc.NewClient(conn)
			for i := 0; i < 50; i++ {
				var reply ForwardReply
				if cl.Call("Node.Forward", ForwardRequest{Shard: shard.ID(i % 32), ReadIndex: true, Timeout: time.Millisecond}, &reply) != nil {
					break
				}
				calls++
			}
			cl.Close()
		}
	}()
	c.start("n1")
	close(stop)
	if calls := <-done; calls == 0 {
		t.Log("no call reached the node while it started")
	}
}

// A forward that carries neither ops nor a read, as a node speaking another
// form of the call would send, gets an error, not an empty success.
func TestForwardWithoutOpsIsRefused(t *testing.T) {
	c := newTestCluster(t, 3, 1, 3)
	leader := c.leader(0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialContext(ctx, c.spec.Node(leader.ID()).Raft, []byte{preambleRPC})
	if err != nil {
		t.Fatal(err)
	}
	cl := rpc.NewClient(conn)
	defer cl.Close()
	var reply ForwardReply
	if err := cl.Call("Node.Forward", ForwardRequest{Shard: 0, Timeout: time.Second}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Err == "" || reply.Retry {
		t.Fatalf("forward without ops: %+v, want a final error", reply)
	}
	reply = ForwardReply{}
	op := fsm.Op{Kind: fsm.KindSet, Client: "fw-test", Seq: 1, Key: "k", Value: "v"}
	if err := cl.Call("Node.Forward", ForwardRequest{Shard: 0, Ops: []fsm.Op{op}, Timeout: time.Second}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.Err != "" || len(reply.Results) != 1 || reply.Results[0].Version == 0 {
		t.Fatalf("forward of one set: %+v", reply)
	}
}
