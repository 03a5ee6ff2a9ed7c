package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// fakeNode speaks the node side of the protocol over a SimNet, without
// raft: enough to test the client's routing, retries and membership.
type fakeNode struct {
	id   string
	ep   *wire.SimEndpoint
	topo func() *wire.Topology

	mu      sync.Mutex
	silent  bool          // neither answers nor heartbeats
	drop    int           // ignores the first drop attempts it sees of every request
	stalled bool          // answers gets "unavailable" once their budget is spent
	delay   time.Duration // before each answer to a get or set
	// missingOnce: the first attempt of each get is answered "not found",
	// the later ones not at all.
	missingOnce bool
	// grant, if set, is the job an acquire gets, after grantAfter;
	// otherwise an acquire gets no job at once.
	grant      *wire.JobInfo
	grantAfter time.Duration
	released   []string // ids of the jobs released to this node
	// old answers the ops of the newest version (OpCompleteAcquire,
	// OpEnqueueBatch) as a node that predates them does: unknown.
	old        bool
	mapVersion uint64
	// leads is what its heartbeats say it leads; mute stops its
	// heartbeats (but not its answers); names, if set, is the leader its
	// answers to sets name, as a follower that forwarded them does.
	leads    []shard.ID
	mute     bool
	names    *wire.LeaderHint
	seen     []wire.Message
	unheard  int            // gets and sets that came while it was silent
	attempts map[[2]any]int // (client, seq) → attempts seen
	clients  map[netip.AddrPort]bool
}

type fakeCluster struct {
	net   *wire.SimNet
	nodes []*fakeNode
	mu    sync.Mutex // guards smap, which a test may replace while nodes serve
	smap  *shard.Map
	done  chan struct{}
	wg    sync.WaitGroup
}

func newFakeCluster(t *testing.T, n int) *fakeCluster { return newFakeShardedCluster(t, n, 1, n) }

// newFakeShardedCluster spreads shards shards of replicas replicas over n
// fake nodes.
func newFakeShardedCluster(t *testing.T, n, shards, replicas int) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{net: wire.NewSimNet(1), done: make(chan struct{})}
	var ids []string
	for i := 0; i < n; i++ {
		ep, err := fc.net.Listen(netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeNode{id: string(rune('a' + i)), ep: ep, mapVersion: 1,
			attempts: map[[2]any]int{}, clients: map[netip.AddrPort]bool{}}
		f.topo = fc.topology
		fc.nodes = append(fc.nodes, f)
		ids = append(ids, f.id)
	}
	m, err := shard.NewEvenMap(ids, shards, replicas)
	if err != nil {
		t.Fatal(err)
	}
	fc.smap = m
	for _, f := range fc.nodes {
		fc.wg.Add(2)
		go func() { defer fc.wg.Done(); f.serve() }()
		go func() { defer fc.wg.Done(); f.heartbeat(fc.done) }()
	}
	t.Cleanup(func() {
		close(fc.done)
		for _, f := range fc.nodes {
			f.ep.Close()
		}
		fc.wg.Wait()
	})
	return fc
}

func (fc *fakeCluster) topology() *wire.Topology {
	fc.mu.Lock()
	t := &wire.Topology{Map: fc.smap}
	fc.mu.Unlock()
	for _, f := range fc.nodes {
		t.Nodes = append(t.Nodes, wire.NodeAddr{ID: f.id, Addr: f.ep.LocalAddr().String()})
	}
	return t
}

func (fc *fakeCluster) client(t *testing.T, cfg Config) *Client {
	t.Helper()
	ep, err := fc.net.Listen(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Transport = ep
	cfg.Seeds = []string{fc.nodes[0].ep.LocalAddr().String()}
	cfg.Insecure = true // the fake nodes read and write plain datagrams
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = 100 * time.Millisecond
	}
	if cfg.InitialAttemptTimeout == 0 {
		cfg.InitialAttemptTimeout = 50 * time.Millisecond
	}
	if cfg.MinAttemptTimeout == 0 {
		cfg.MinAttemptTimeout = 20 * time.Millisecond
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (f *fakeNode) set(fn func(*fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNode) serve() {
	buf := make([]byte, wire.MaxDatagramSize)
	for {
		n, from, _, err := f.ep.Receive(buf)
		if err != nil {
			return
		}
		m, err := wire.Decode(buf[:n])
		if err != nil || m.Type != wire.TypeQuery {
			continue
		}
		f.mu.Lock()
		f.clients[from] = true
		key := [2]any{m.Client, m.Seq}
		f.attempts[key]++
		first := f.attempts[key] == 1
		silent, drop := f.silent, f.attempts[key] <= f.drop && m.Op != wire.OpTopology && m.Op != wire.OpPing
		delay := f.delay
		stalled := f.stalled && m.Op == wire.OpGet
		missing := f.missingOnce && m.Op == wire.OpGet
		if !silent {
			f.seen = append(f.seen, m)
		} else if m.Op == wire.OpGet || m.Op == wire.OpSet {
			f.unheard++
		}
		f.mu.Unlock()
		if silent || drop || missing && !first {
			continue
		}
		r := wire.Message{Type: wire.TypeResponse, TxID: m.TxID, Node: f.id, Activity: 1}
		f.mu.Lock()
		old := f.old
		f.mu.Unlock()
		if old && (m.Op == wire.OpCompleteAcquire || m.Op == wire.OpEnqueueBatch) {
			r = wire.Message{Type: wire.TypeError, TxID: m.TxID, Node: f.id,
				Err: &wire.Error{Code: wire.CodeUnknownOp, Message: "unknown op"}}
			b, _ := wire.Encode(&r)
			_ = f.ep.Send(b, from)
			continue
		}
		if stalled {
			// As a node without a leader does: wait out (most of) the
			// budget, answering just before the client gives up.
			time.AfterFunc(m.Timeout*3/4, func() {
				r := wire.Message{Type: wire.TypeError, TxID: m.TxID, Node: f.id,
					Err: &wire.Error{Code: wire.CodeUnavailable, Message: "no leader"}}
				b, _ := wire.Encode(&r)
				_ = f.ep.Send(b, from)
			})
			continue
		}
		switch m.Op {
		case wire.OpAcquire:
			f.mu.Lock()
			g, after := f.grant, f.grantAfter
			f.mu.Unlock()
			if g != nil {
				r.Result.Job = g
				b, _ := wire.Encode(&r)
				time.AfterFunc(after, func() { _ = f.ep.Send(b, from) })
				continue
			}
		case wire.OpRelease:
			f.mu.Lock()
			f.released = append(f.released, m.Args.JobID)
			f.mu.Unlock()
		case wire.OpEnqueueBatch:
			if bad := f.batchElsewhere(m.Args.Batch); bad != "" {
				r = wire.Message{Type: wire.TypeError, TxID: m.TxID, Node: f.id,
					Err: &wire.Error{Code: wire.CodeWrongShard, Message: bad}}
				break
			}
			for _, j := range m.Args.Batch {
				r.Result.Jobs = append(r.Result.Jobs, wire.JobInfo{ID: j.ID, Topic: j.Topic})
			}
		case wire.OpTopology:
			r.Result.Topology = f.topo()
		case wire.OpCluster:
			// As a node does: an unknown command is a bad request; a
			// known one is answered in JSON, here with what it was sent.
			if m.Args.Key != "echo" {
				r = wire.Message{Type: wire.TypeError, TxID: m.TxID, Node: f.id,
					Err: &wire.Error{Code: wire.CodeBadRequest, Message: "unknown cluster command " + m.Args.Key}}
				break
			}
			b, _ := json.Marshal(adminEcho{Node: f.id, Args: m.Args.Value})
			r.Result.Value = string(b)
		case wire.OpGet:
			r.Result.Value = f.id
			if missing {
				r = wire.Message{Type: wire.TypeError, TxID: m.TxID, Node: f.id,
					Err: &wire.Error{Code: wire.CodeNotFound, Message: "key not found"}}
			}
		case wire.OpSet:
			r.Result.Version = m.Seq
			f.mu.Lock()
			r.Leader = f.names
			f.mu.Unlock()
		}
		b, _ := wire.Encode(&r)
		if delay > 0 && (m.Op == wire.OpGet || m.Op == wire.OpSet) {
			time.AfterFunc(delay, func() { _ = f.ep.Send(b, from) })
			continue
		}
		_ = f.ep.Send(b, from)
	}
}

// batchElsewhere says why f refuses batch on the cluster's current map, as
// a node does: its jobs span shards, or f holds none of theirs. Empty if
// it takes the batch.
func (f *fakeNode) batchElsewhere(batch []wire.BatchJob) string {
	smap := f.topo().Map
	id := smap.SlotShard(shard.JobSlot(batch[0].ID))
	for _, j := range batch {
		if smap.SlotShard(shard.JobSlot(j.ID)) != id {
			return "the batch spans shards"
		}
	}
	if !slices.Contains(smap.Shard(id).Replicas, f.id) {
		return "no replica of the batch's shard"
	}
	return ""
}

func (f *fakeNode) heartbeat(done chan struct{}) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		f.mu.Lock()
		silent, mv, leads := f.silent || f.mute, f.mapVersion, f.leads
		var to []netip.AddrPort
		for a := range f.clients {
			to = append(to, a)
		}
		f.mu.Unlock()
		if silent {
			continue
		}
		b, _ := wire.Encode(&wire.Message{Type: wire.TypeHeartbeat, Node: f.id, Activity: 1,
			Heartbeat: wire.Heartbeat{MapVersion: mv, Leads: leads}})
		for _, a := range to {
			_ = f.ep.Send(b, a)
		}
	}
}

// answeredBy counts which node answered n gets.
func answeredBy(t *testing.T, c *Client, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		it, err := c.Get(context.Background(), "k")
		if err != nil {
			t.Fatal(err)
		}
		got[string(it.Value)]++
	}
	return got
}

// A node that stops heartbeating is skipped until it comes back.
func TestSilentNodeIsSkipped(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{Picker: NewUniform(rand.New(rand.NewPCG(1, 1)))})
	if got := answeredBy(t, c, 300); got["a"] < 60 || got["b"] < 60 || got["c"] < 60 {
		t.Fatalf("uniform picking over three nodes answered %v", got)
	}
	b := fc.nodes[1]
	b.set(func(f *fakeNode) { f.silent = true })
	servertest.WaitFor(t, 5*time.Second, "b taken for dead", func() bool { return !nodeInfo(c, "b").Alive })
	b.set(func(f *fakeNode) { f.unheard = 0 })
	if got := answeredBy(t, c, 200); got["b"] != 0 || got["a"]+got["c"] != 200 {
		t.Errorf("with b silent, answers came from %v", got)
	}
	// Attempts are not counted: on a loaded machine an answer can outlast
	// the attempt timeout (20ms at the least) and the get is retried.
	b.mu.Lock()
	unheard := b.unheard
	b.mu.Unlock()
	if unheard != 0 {
		t.Errorf("%d attempts of 200 gets went to b, taken for dead: a silent node was still tried", unheard)
	}
	for _, n := range c.Nodes() {
		if n.Alive != (n.ID != "b") {
			t.Errorf("node %s alive=%v", n.ID, n.Alive)
		}
	}
	b.set(func(f *fakeNode) { f.silent = false })
	deadline := time.Now().Add(5 * time.Second) // the keepalive ping brings its heartbeats back
	for answeredBy(t, c, 30)["b"] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("b is answering again but the client never picks it")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A lost request is retried with the same client id and sequence number,
// under a new transaction id, with its age.
func TestRetryKeepsSequenceNumber(t *testing.T) {
	fc := newFakeCluster(t, 1) // the retry reaches the node that ignored the first attempt
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.drop = 1 })
	}
	c := fc.client(t, Config{})
	if _, err := c.Set(context.Background(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	var sets []wire.Message
	for _, f := range fc.nodes {
		f.mu.Lock()
		for _, m := range f.seen {
			if m.Op == wire.OpSet {
				sets = append(sets, m)
			}
		}
		f.mu.Unlock()
	}
	// Two attempts, or more if the retry's answer outlasted its timeout
	// (twice the measured round trip, on a loaded machine).
	if len(sets) < 2 {
		t.Fatalf("%d attempts reached the nodes, want 2", len(sets))
	}
	txs := map[uint64]bool{}
	for _, m := range sets {
		txs[m.TxID] = true
		if m.Client != c.ID() || m.Seq != sets[0].Seq {
			t.Errorf("attempts carry %s/%d and %s/%d: not one request", sets[0].Client, sets[0].Seq, m.Client, m.Seq)
		}
	}
	if len(txs) != len(sets) {
		t.Errorf("%d attempts used %d transaction ids", len(sets), len(txs))
	}
	// The retry says how long ago the request began; the first attempt
	// says nothing.
	if sets[0].Age != 0 || sets[1].Age < DefaultMinAttemptTimeout {
		t.Errorf("attempts carry ages %v and %v; want 0, then at least %v", sets[0].Age, sets[1].Age, DefaultMinAttemptTimeout)
	}
	if sets[0].Ack > sets[0].Seq {
		t.Errorf("ack %d above the request's own sequence number %d", sets[0].Ack, sets[0].Seq)
	}
	retries := uint64(len(sets) - 1)
	if st := c.Counters(); st.Requests < 2 || st.Attempts-st.Requests != retries || st.Retries != retries || st.Timeouts != retries {
		t.Errorf("stats %+v: want %d retries, each after a timeout", st, retries)
	}
}

func TestUnavailableAfterAttempts(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{Attempts: 4, MaxAttemptTimeout: 30 * time.Millisecond})
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.silent = true })
	}
	before := c.Counters()
	_, err := c.Get(context.Background(), "k")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with every node silent: %v, want ErrUnavailable", err)
	}
	if a := c.Counters().Attempts - before.Attempts; a != 4 {
		t.Errorf("%d attempts, want 4", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get past its deadline: %v", err)
	}
}

// A request whose context has a deadline is not bound by Attempts: it is
// sent again, under one sequence number, until the deadline, and its error
// wraps context.DeadlineExceeded and says how many attempts it made.
func TestDeadlineRetriesPastAttempts(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := fc.client(t, Config{Attempts: 2, MaxAttemptTimeout: 30 * time.Millisecond})
	fc.nodes[0].set(func(f *fakeNode) { f.silent = true })
	before := c.Counters()
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	_, err := c.Set(ctx, "k", []byte("v"))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Set with the node silent until the deadline: %v, want context.DeadlineExceeded", err)
	}
	after := c.Counters()
	// 400 ms of attempts waiting at most 30 ms each.
	if a := after.Attempts - before.Attempts; a < 6 {
		t.Errorf("%d attempts before the deadline, want many more than Attempts (2)", a)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("after %d attempts", after.Attempts-before.Attempts)) ||
		!strings.Contains(err.Error(), "no reply from a") {
		t.Errorf("error %q does not say how many attempts were made and the last error", err)
	}
	if after.Failures != before.Failures {
		t.Errorf("a request its deadline ended counted as failed with ErrUnavailable")
	}
	// Every attempt was one request: one client id and sequence number.
	f := fc.nodes[0]
	f.mu.Lock()
	defer f.mu.Unlock()
	var counts []int
	for k, n := range f.attempts {
		if k[0] == c.ID() && k[1] != uint64(0) { // pings carry no sequence number
			counts = append(counts, n)
		}
	}
	slices.Sort(counts)
	if len(counts) != 2 || counts[0] != 1 || uint64(counts[1]) != after.Attempts-before.Attempts {
		t.Errorf("attempts per sequence number %v: want the topology request's 1 and the set's %d",
			counts, after.Attempts-before.Attempts)
	}
}

// A request whose context has a deadline succeeds when the node answers
// only after more than Attempts attempts, and is applied under one
// sequence number.
func TestDeadlineRetrySucceedsAfterAttempts(t *testing.T) {
	const ignored = 5
	fc := newFakeCluster(t, 1)
	c := fc.client(t, Config{Attempts: 2, MaxAttemptTimeout: 30 * time.Millisecond})
	fc.nodes[0].set(func(f *fakeNode) { f.drop = ignored })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := c.Counters()
	if _, err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Set answered at its attempt %d, with 10s left: %v", ignored+1, err)
	}
	// More than ignored+1 only if an answer outlasted its attempt's
	// 30ms, as it can on a loaded machine.
	attempts := c.Counters().Attempts - before.Attempts
	if attempts < ignored+1 {
		t.Errorf("%d attempts, want at least %d", attempts, ignored+1)
	}
	f := fc.nodes[0]
	f.mu.Lock()
	defer f.mu.Unlock()
	var sets []wire.Message
	for _, m := range f.seen {
		if m.Op == wire.OpSet {
			sets = append(sets, m)
		}
	}
	txs := map[uint64]bool{}
	for _, m := range sets {
		txs[m.TxID] = true
		if m.Client != c.ID() || m.Seq != sets[0].Seq {
			t.Errorf("attempt as %s/%d, the first as %s/%d: not one request", m.Client, m.Seq, sets[0].Client, sets[0].Seq)
		}
	}
	if uint64(len(sets)) != attempts || len(txs) != len(sets) {
		t.Errorf("%d attempts reached the node under %d transaction ids, want %d under as many", len(sets), len(txs), attempts)
	}
}

// However long a request retries, it keeps only its latest keptAttempts
// attempts waiting for replies, and nothing once it ends.
func TestLongRetryKeepsBoundedState(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := fc.client(t, Config{MinAttemptTimeout: time.Millisecond, MaxAttemptTimeout: 2 * time.Millisecond,
		InitialAttemptTimeout: 2 * time.Millisecond})
	fc.nodes[0].set(func(f *fakeNode) { f.silent = true })
	pending := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	done := make(chan error, 1)
	before := c.Counters().Attempts
	go func() {
		_, err := c.Get(ctx, "k")
		done <- err
	}()
	most := 0
	servertest.WaitFor(t, 10*time.Second, fmt.Sprintf("%d attempts", 4*keptAttempts), func() bool {
		most = max(most, pending())
		return c.Counters().Attempts-before >= 4*keptAttempts
	})
	if most > keptAttempts {
		t.Errorf("%d attempts waiting for a reply at once, want at most %d", most, keptAttempts)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Get canceled while retrying: %v, want context.Canceled", err)
	}
	if n := pending(); n != 0 {
		t.Errorf("%d attempts still waiting for a reply after the request ended", n)
	}
}

// A heartbeat announcing a newer shard map makes the client fetch it.
func TestNewerMapIsFetched(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{})
	m2 := *fc.smap
	m2.Version = 2
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.mapVersion = 2 })
	}
	fc.mu.Lock()
	fc.smap = &m2
	fc.mu.Unlock()
	// Map is a copy: changing it changes nothing the client routes by.
	m := c.Map()
	m.Version = 99
	m.Shards[0].Replicas[0] = "elsewhere"
	if c.Map().Version == 99 || c.Map().Shards[0].Replicas[0] == "elsewhere" {
		t.Fatal("a change to the map Map returned reached the client's own")
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Map().Version != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the client never fetched map version 2")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseRejectsNewCalls(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{})
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
	if _, err := c.Set(context.Background(), "k", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
}

func TestRejectsBadKeysAndValues(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := fc.client(t, Config{})
	ctx := context.Background()
	if _, err := c.Get(ctx, ""); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("empty key: %v", err)
	}
	if _, err := c.Set(ctx, string(make([]byte, shard.MaxKeySize+1)), nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("long key: %v", err)
	}
	if _, err := c.Set(ctx, "k", make([]byte, shard.MaxValueSize+1)); !errors.Is(err, ErrValueTooLarge) {
		t.Errorf("large value: %v", err)
	}
	if _, err := c.Acquire(ctx, "t", time.Microsecond); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a lease under a millisecond: %v", err)
	}
	if err := c.Every(ctx, "t\x00", "k", time.Second, nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("a topic with NUL: %v", err)
	}
	if err := c.Every(ctx, "t", "k", shard.MinScheduleInterval-time.Millisecond, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("an interval under a second: %v", err)
	}
	if _, err := c.Enqueue(ctx, "t", nil, EnqueueOptions{Key: string(make([]byte, shard.MaxKeySize+1))}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("a uniqueness key over %d bytes: %v", shard.MaxKeySize, err)
	}
	if c.Counters().Requests != 1 { // only New's topology request
		t.Errorf("invalid calls reached the network: %+v", c.Counters())
	}
}

// Replies that say "unavailable" come after the node waited out the
// attempt's budget. Within a request, each gives the next attempt twice the
// budget, as a timeout does; but timing them would feed the timeout back
// into itself and let every later request start higher, up to the maximum.
func TestUnavailableRepliesDoNotInflateTimeouts(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{MaxAttemptTimeout: 2 * time.Second, ReplyGrace: -1})
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.stalled = true })
	}
	base := c.rtt[0].timeout(0)
	for i := 0; i < 3; i++ {
		if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("get %d: %v, want ErrUnavailable", i, err)
		}
	}
	budgets := map[time.Duration]int{}
	for _, f := range fc.nodes {
		f.mu.Lock()
		for _, m := range f.seen {
			if m.Op == wire.OpGet {
				budgets[m.Timeout]++
			}
		}
		f.mu.Unlock()
	}
	// The wire carries budgets in whole milliseconds, rounded up.
	ms := func(d time.Duration) time.Duration { return (d + time.Millisecond - 1).Truncate(time.Millisecond) }
	if want := map[time.Duration]int{ms(base): 3, ms(2 * base): 3, ms(4 * base): 3}; !reflect.DeepEqual(budgets, want) {
		t.Errorf("attempt budgets (budget → attempts) %v, want %v", budgets, want)
	}
	if got := c.rtt[0].timeout(0); got != base {
		t.Errorf("after requests answered only \"unavailable\", a first attempt waits %v, want %v as before", got, base)
	}
}

// A cluster whose round trip grows far above the timeout fast replies
// taught the client (as under a sudden load) must not fail every request:
// the timeout backs off until a reply, to whichever attempt, is measured.
func TestTimeoutFollowsSlowerRoundTrips(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{MinAttemptTimeout: 5 * time.Millisecond})
	ctx := context.Background()
	for i := 0; i < 30; i++ {
		if _, err := c.Set(ctx, "k", nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.delay = 100 * time.Millisecond })
	}
	failed := 0
	for i := 0; i < 10; i++ {
		if _, err := c.Set(ctx, "k", nil); err != nil {
			failed++
		}
	}
	if failed > 3 {
		t.Errorf("%d of 10 writes failed after the round trip grew", failed)
	}
	before := c.Counters()
	for i := 0; i < 5; i++ {
		if _, err := c.Set(ctx, "k", nil); err != nil {
			t.Fatal(err)
		}
	}
	if after := c.Counters(); after.Attempts-before.Attempts != 5 {
		t.Errorf("5 writes took %d attempts once the timeout had adapted", after.Attempts-before.Attempts)
	}
}

// A reply slower than every attempt's timeout still counts within the
// reply grace, and no more attempts are sent for it; without the grace the
// request fails.
func TestLateReplyWithinGrace(t *testing.T) {
	fc := newFakeCluster(t, 3)
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.delay = 150 * time.Millisecond })
	}
	slow := Config{Attempts: 2, MinAttemptTimeout: 5 * time.Millisecond, MaxAttemptTimeout: 20 * time.Millisecond,
		InitialAttemptTimeout: 20 * time.Millisecond}
	graced := slow
	graced.ReplyGrace = time.Second
	c := fc.client(t, graced)
	before := c.Counters()
	if _, err := c.Set(context.Background(), "k", nil); err != nil {
		t.Fatalf("set answered after 150 ms, attempts timing out at 20 ms, grace 1s: %v", err)
	}
	if a := c.Counters().Attempts - before.Attempts; a != 2 {
		t.Errorf("%d attempts, want 2", a)
	}
	// Each attempt gave the node the rest of the grace to work on it.
	for _, f := range fc.nodes {
		f.mu.Lock()
		for _, m := range f.seen {
			if m.Op == wire.OpSet && m.Client == c.ID() && (m.Timeout < 900*time.Millisecond || m.Timeout > time.Second) {
				t.Errorf("an attempt sent with a budget of %v, want the rest of the 1s grace", m.Timeout)
			}
		}
		f.mu.Unlock()
	}
	slow.ReplyGrace = -1
	c = fc.client(t, slow)
	if _, err := c.Set(context.Background(), "k", nil); !errors.Is(err, ErrUnavailable) {
		t.Errorf("set answered after 150 ms without a grace: %v, want ErrUnavailable", err)
	}
}

// A definitive error to an earlier attempt answers the request, though a
// later attempt is the one awaited: here "not found" to the first attempt
// of a get, arriving in the reply grace after the second timed out.
func TestLateDefinitiveErrorAnswersTheRequest(t *testing.T) {
	fc := newFakeCluster(t, 1)
	c := fc.client(t, Config{Attempts: 2, MinAttemptTimeout: 5 * time.Millisecond, MaxAttemptTimeout: 20 * time.Millisecond,
		InitialAttemptTimeout: 20 * time.Millisecond, ReplyGrace: time.Second})
	fc.nodes[0].set(func(f *fakeNode) { f.delay, f.missingOnce = 150*time.Millisecond, true })
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get answered \"not found\" late, to its first attempt: %v, want ErrNotFound", err)
	}
}

func (f *fakeNode) releasedJobs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.released...)
}

// Two nodes watch the shards of an acquire between them. One answers at
// once with nothing, the other later with a job: the call gets the job, and
// the client still closes at once (the clean-up counts the answers left).
func TestLongPollAcrossNodes(t *testing.T) {
	fc := newFakeShardedCluster(t, 2, 2, 1) // shard 0 on a, shard 1 on b
	fc.nodes[1].set(func(f *fakeNode) {
		f.grant, f.grantAfter = &wire.JobInfo{ID: "j1", Topic: "t", Token: 7}, 50*time.Millisecond
	})
	c := fc.client(t, Config{})
	if n := len(c.cover()); n != 2 {
		t.Fatalf("cover of %d nodes, want 2", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	j, err := c.Acquire(ctx, "t", time.Second)
	if err != nil || j.ID != "j1" || j.Token != 7 {
		t.Fatalf("Acquire = %+v, %v", j, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs after a long-poll over two nodes")
	}
}

// A job granted to an acquire whose caller gave up is released, not left
// leased to nobody.
func TestAbandonedAcquireReleasesItsGrant(t *testing.T) {
	fc := newFakeCluster(t, 1)
	fc.nodes[0].set(func(f *fakeNode) {
		f.grant, f.grantAfter = &wire.JobInfo{ID: "late", Topic: "t", Token: 3}, 200*time.Millisecond
	})
	c := fc.client(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if j, err := c.Acquire(ctx, "t", time.Second); !errors.Is(err, ErrNoJob) {
		t.Fatalf("Acquire = %+v, %v; want ErrNoJob", j, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(fc.nodes[0].releasedJobs()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the job granted after the caller gave up was never released")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := fc.nodes[0].releasedJobs(); got[0] != "late" {
		t.Errorf("released %v", got)
	}
}

// recordingPicker chooses the last candidate and records the loads it saw.
type recordingPicker struct {
	mu   sync.Mutex
	seen [][]float64
}

func (p *recordingPicker) Pick(load []float64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, slices.Clone(load))
	return len(load) - 1
}

func (p *recordingPicker) last() []float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[len(p.seen)-1]
}

// The picker weighs the load a node reports plus the client's own requests
// in flight there, until they end; with IgnoreInFlight, the report alone.
func TestPickerSeesRequestsInFlight(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		fc := newFakeCluster(t, 2)
		fc.nodes[1].set(func(f *fakeNode) { f.delay = 300 * time.Millisecond })
		p := &recordingPicker{}
		c := fc.client(t, Config{Picker: p, IgnoreInFlight: ignore, MinAttemptTimeout: time.Second})
		// The loads compared below are the reported ones: wait for both reports.
		servertest.WaitFor(t, 5*time.Second, "both nodes' load reported", func() bool {
			return nodeInfo(c, "a").Heartbeats > 0 && nodeInfo(c, "b").Heartbeats > 0
		})
		done := make(chan error, 1)
		go func() {
			_, err := c.Get(context.Background(), "k") // to b, which answers late
			done <- err
		}()
		// b answers 300 ms late: the request is in flight there until then.
		servertest.WaitFor(t, 250*time.Millisecond, "one request in flight at b", func() bool { return nodeInfo(c, "b").InFlight == 1 })
		want := 1.0
		if ignore {
			want = 0
		}
		fc.nodes[1].set(func(f *fakeNode) { f.delay = 0 })
		if _, err := c.Get(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
		// The fake nodes report 1 thousandth.
		if got := p.last(); len(got) != 2 || got[0] != 0.001 || got[1] != 0.001+want {
			t.Errorf("ignore=%v: the picker saw loads %v, want [0.001 %v]", ignore, got, 0.001+want)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes() {
			if n.InFlight != 0 {
				t.Errorf("ignore=%v: node %s has %d in flight after every request ended", ignore, n.ID, n.InFlight)
			}
		}
	}
}

// nodeInfo returns what c knows of node id.
func nodeInfo(c *Client, id string) NodeInfo {
	for _, n := range c.Nodes() {
		if n.ID == id {
			return n
		}
	}
	return NodeInfo{}
}

// A worker whose completion with the next acquire reaches a node that does
// not know that op completes the job alone.
func TestWorkerCompletesOnAnOldNode(t *testing.T) {
	fc := newFakeCluster(t, 1)
	fc.nodes[0].set(func(f *fakeNode) {
		f.old = true
		f.grant = &wire.JobInfo{ID: "j1", Topic: "t", Token: 3, Grant: 4}
	})
	c := fc.client(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &Worker{Client: c, Topic: "t", Handler: func(context.Context, *Job) error { return nil }}
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	servertest.WaitFor(t, 5*time.Second, "a completion", func() bool { return w.Counters().Completed > 0 })
	cancel()
	<-done
	var ops []wire.Op
	fc.nodes[0].mu.Lock()
	for _, m := range fc.nodes[0].seen {
		if m.Args.JobID == "j1" {
			ops = append(ops, m.Op)
		}
	}
	fc.nodes[0].mu.Unlock()
	if len(ops) < 2 || ops[0] != wire.OpCompleteAcquire || ops[1] != wire.OpComplete {
		t.Errorf("ops on the job %v, want a complete-and-acquire refused, then a complete", ops)
	}
}

// setsSeen counts the sets that reached f.
func (f *fakeNode) setsSeen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range f.seen {
		if m.Op == wire.OpSet {
			n++
		}
	}
	return n
}

// setsTo makes n sets and counts, by node id, those that reached each node.
func setsTo(t *testing.T, fc *fakeCluster, c *Client, n int) map[string]int {
	t.Helper()
	before := map[string]int{}
	for _, f := range fc.nodes {
		before[f.id] = f.setsSeen()
	}
	for range n {
		if _, err := c.Set(context.Background(), "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	for _, f := range fc.nodes {
		if d := f.setsSeen() - before[f.id]; d > 0 {
			got[f.id] = d
		}
	}
	return got
}

// Writes go to the node whose heartbeats say it leads their shard, and
// follow the leadership when the heartbeats say it moved; reads stay with
// the picker.
func TestWritesGoToTheLeaderOfHeartbeats(t *testing.T) {
	fc := newFakeCluster(t, 3)
	fc.nodes[1].set(func(f *fakeNode) { f.leads = []shard.ID{0} })
	c := fc.client(t, Config{Picker: NewUniform(rand.New(rand.NewPCG(1, 3)))})
	servertest.WaitFor(t, 5*time.Second, "b's heartbeat saying it leads", func() bool {
		return slices.Equal(nodeInfo(c, "b").Leads, []shard.ID{0})
	})
	if got := setsTo(t, fc, c, 30); got["b"] != 30 {
		t.Errorf("30 sets with b leading reached %v", got)
	}
	if got := answeredBy(t, c, 60); got["b"] == 60 {
		t.Errorf("every get went to the leader: %v", got)
	}
	fc.nodes[1].set(func(f *fakeNode) { f.leads = nil })
	fc.nodes[2].set(func(f *fakeNode) { f.leads = []shard.ID{0} })
	servertest.WaitFor(t, 5*time.Second, "heartbeats saying c leads now", func() bool {
		return len(nodeInfo(c, "b").Leads) == 0 && slices.Equal(nodeInfo(c, "c").Leads, []shard.ID{0})
	})
	if got := setsTo(t, fc, c, 30); got["c"] != 30 {
		t.Errorf("30 sets with c leading reached %v", got)
	}
}

// A follower's reply naming the shard's leader sends the next writes
// there, before any heartbeat says so.
func TestFollowerReplyMovesWritesToTheLeader(t *testing.T) {
	fc := newFakeCluster(t, 3)
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) {
			f.mute = true // no heartbeat says who leads
			if f.id != "c" {
				f.names = &wire.LeaderHint{Shard: 0, Node: "c"}
			}
		})
	}
	// Without heartbeats, only answers keep the nodes alive.
	c := fc.client(t, Config{NodeTimeout: time.Minute, Picker: NewUniform(rand.New(rand.NewPCG(1, 4)))})
	servertest.WaitFor(t, 5*time.Second, "a set to reach a follower", func() bool {
		got := setsTo(t, fc, c, 1)
		return got["a"]+got["b"] > 0
	})
	if got := setsTo(t, fc, c, 30); got["c"] != 30 {
		t.Errorf("30 sets after a follower named c reached %v", got)
	}
}

// A stopping worker whose node stops answering gives up releasing its job
// soon after StopTimeout, not after a lease: Run keeps to its bound, and
// the job returns when its lease runs out.
func TestStoppingWorkerGivesUpInAnOutage(t *testing.T) {
	fc := newFakeCluster(t, 1)
	fc.nodes[0].set(func(f *fakeNode) { f.grant = &wire.JobInfo{ID: "j1", Topic: "t", Token: 3, Grant: 4} })
	c := fc.client(t, Config{})
	started := make(chan struct{}, 1)
	w := &Worker{Client: c, Topic: "t", Lease: time.Minute, StopTimeout: 10 * time.Millisecond,
		Handler: func(ctx context.Context, _ *Job) error {
			fc.nodes[0].set(func(f *fakeNode) { f.silent = true })
			started <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	<-started
	cancel()
	// The bound is StopTimeout+stopGrace; waiting a quarter of the lease
	// tells it from the lease without timing the stop.
	select {
	case <-done:
	case <-time.After(w.Lease / 4):
		t.Fatal("Run went on releasing its job through an outage")
	}
	if got := w.Counters(); got.Released != 0 {
		t.Errorf("counters %+v: no node answered, yet the job counts as released", got)
	}
}

// A batch that a new shard map spreads over two shards, refused by a node
// that knows the map, is split on it and each part stored on its shard,
// not resent whole until the deadline.
func TestBatchSplitByNewMap(t *testing.T) {
	fc := newFakeShardedCluster(t, 2, 1, 2) // one shard on a and b
	for _, f := range fc.nodes {
		f.set(func(f *fakeNode) { f.mute = true }) // the client learns the new map only when refused
	}
	c := fc.client(t, Config{})
	m2, err := shard.NewEvenMap([]string{"a", "b"}, 2, 1) // shard 0 on a, shard 1 on b
	if err != nil {
		t.Fatal(err)
	}
	m2.Version = 2
	fc.mu.Lock()
	fc.smap = m2
	fc.mu.Unlock()
	var jobs []NewJob
	for i := 0; i < 20; i++ { // keyed: their ids fall on both halves of the slots
		jobs = append(jobs, NewJob{Topic: "t", EnqueueOptions: EnqueueOptions{Key: fmt.Sprint(i)}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ids, err := c.EnqueueBatch(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	spread := map[shard.ID]int{}
	for i, id := range ids {
		if id == "" {
			t.Fatalf("job %d has no id", i)
		}
		spread[m2.SlotShard(shard.JobSlot(id))]++
	}
	if len(spread) != 2 {
		t.Errorf("jobs stored on shards %v; the test needs both", spread)
	}
}
