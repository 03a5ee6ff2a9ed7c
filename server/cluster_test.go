package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// The cluster tests spend most of their time waiting on raft timers, not
// computing (without the race detector the package uses about a fifth of
// two cores), so those that check what a cluster does, each on its own
// cluster and temporary directories, call t.Parallel. Those that bound a
// latency or a recovery time, count requests or heartbeats over a span of
// time, measure the heap, flood the host, watch the leadership balancer,
// listen for stray datagrams, or restart a node do not: go test runs them
// first, alone, before the parallel ones start. (A node restarts on the
// ports it had, which a parallel test's sockets, bound to any free port,
// could take while it is down.)

// failoverTiming halves the default heartbeat timeout, for tests whose
// bounds assume a failover well under two seconds: with the default a
// failover takes 1 to 2 s, and more after a split vote. Tests that only
// need a cluster up use it too: a cluster's first election waits one to
// two heartbeat timeouts, so it halves their start. The sim's failover
// experiment measures the default.
var failoverTiming = server.RaftTiming{HeartbeatTimeout: server.Duration(500 * time.Millisecond)}

// newClient connects a client to the cluster, closed when the test ends.
// Unless the test brings its own transport (to study loss and attempts),
// the client makes 10 attempts, not 3, so that a slow moment of a loaded
// test machine (the race detector on two cores) does not fail a test about
// something else.
func newClient(t testing.TB, c *servertest.Cluster, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.Seeds == nil {
		cfg.Seeds = c.Seeds()
	}
	if cfg.Attempts == 0 && cfg.Transport == nil {
		cfg.Attempts = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = servertest.TestLogger(t)
	}
	if cfg.Secret == nil && !cfg.Insecure {
		cfg.Secret = c.Secret()
		cfg.Insecure = cfg.Secret == nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(context.Background()) })
	return cl
}

// lossyClient is a client whose datagrams are dropped with probability drop
// in each direction. Its attempts wait at least 100ms, so that on a slow or
// loaded test machine retries come from lost datagrams, not slow replies.
func lossyClient(t testing.TB, c *servertest.Cluster, drop float64, seed int64) *client.Client {
	t.Helper()
	u, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := wire.WithFaults(u, wire.Faults{}, seed)
	if err != nil {
		t.Fatal(err)
	}
	// The link turns lossy once the client has learned the cluster: a
	// client.New whose three topology requests were all lost (4.7% at 20%
	// each way) would fail the test for what it does not test.
	cl := newClient(t, c, client.Config{Transport: f, MinAttemptTimeout: 100 * time.Millisecond})
	if err := f.SetFaults(wire.Faults{Drop: drop}); err != nil {
		t.Fatal(err)
	}
	return cl
}

// leader returns the node leading shard id, failing the test if it has
// none.
func leader(t testing.TB, c *servertest.Cluster, id shard.ID) *server.Node {
	t.Helper()
	n := c.Leader(id)
	if n == nil {
		t.Fatalf("shard %d has no leader", id)
	}
	return n
}

// kill stops node id abruptly: to its peers it looks like a crash.
func kill(t testing.TB, c *servertest.Cluster, id string) {
	t.Helper()
	if err := c.Kill(id); err != nil {
		t.Fatal(err)
	}
}

// restart starts node id again on its data.
func restart(t testing.TB, c *servertest.Cluster, id string) *server.Node {
	t.Helper()
	n, err := c.Restart(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitReady waits until every shard with a running quorum has a leader.
func waitReady(t testing.TB, c *servertest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitConverged waits until every running replica of every shard has
// applied as far as the shard's leader had when the wait began.
func waitConverged(t testing.TB, c *servertest.Cluster) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range c.Map().Shards {
		want := leader(t, c, s.ID).ShardStats(s.ID).Applied
		for _, id := range s.Replicas {
			for n := c.Node(id); n != nil && n.ShardStats(s.ID).Applied < want; {
				if time.Now().After(deadline) {
					t.Fatalf("shard %d on %s did not apply up to %d", s.ID, id, want)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
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

// rawRequest sends one query to the node at address to of cluster c, up to
// three times, and returns its reply. A client id in m that is not a proven
// one (wire.ClientIdentity) is replaced by the id proven by a proof made
// from it, so that tests can name their clients. It may run in a goroutine
// of its own.
func rawRequest(c *servertest.Cluster, to string, m *wire.Message) (wire.Message, error) {
	if m.TxID == 0 {
		m.TxID = 1
	}
	if m.Client != "" && m.Proof == "" {
		*m = proven(*m)
	}
	b, err := wire.Encode(m)
	if err != nil {
		return wire.Message{}, err
	}
	return exchange(c, to, b, 3, func(r wire.Message) bool { return r.TxID == m.TxID })
}

// proven returns m with its client name replaced by a proven id, the same
// for the same name.
func proven(m wire.Message) wire.Message {
	sum := sha256.Sum256([]byte(m.Client))
	m.Proof = hex.EncodeToString(sum[:wire.ProofSize])
	m.Client = wire.ClientIDOf(m.Proof)
	return m
}

// exchange sends b to the node at address to of cluster c from a socket of
// its own, sealed with the cluster's secret, up to attempts times 3 seconds
// apart, and returns the first datagram back that decodes and that want
// takes.
func exchange(c *servertest.Cluster, to string, b []byte, attempts int, want func(wire.Message) bool) (wire.Message, error) {
	addr, err := wire.ParseAddr(to)
	if err != nil {
		return wire.Message{}, err
	}
	var u wire.Transport
	if u, err = wire.ListenUDP("127.0.0.1:0"); err != nil {
		return wire.Message{}, err
	}
	if c.Secret() != nil {
		u = wire.Seal(u, c.Secret(), wire.ClientSide)
	}
	got, done := make(chan wire.Message, 1), make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, wire.MaxDatagramSize+1)
		for {
			n, _, _, err := u.Receive(buf)
			if err != nil {
				return // closed
			}
			if r, err := wire.Decode(buf[:n]); err == nil && want(r) {
				got <- r
				return
			}
		}
	}()
	defer func() {
		u.Close()
		<-done
	}()
	for range attempts {
		if err := u.Send(b, addr); err != nil {
			return wire.Message{}, err
		}
		select {
		case r := <-got:
			return r, nil
		case <-time.After(3 * time.Second):
		}
	}
	return wire.Message{}, fmt.Errorf("no reply from %s to %q", to, b)
}

// request is rawRequest for the test's own goroutine: it fails the test
// if no reply comes.
func request(t testing.TB, c *servertest.Cluster, to string, m *wire.Message) wire.Message {
	t.Helper()
	r, err := rawRequest(c, to, m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// clientAddr returns the client address of node id.
func clientAddr(c *servertest.Cluster, id string) string { return c.Spec().Node(id).Client }

func TestSmoke(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
	for i, n := range c.Spec().Nodes {
		r := request(t, c, n.Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "c", Seq: uint64(i + 1), Ack: 1,
			Args: wire.Args{Key: fmt.Sprint("k", i), Value: "v"}})
		if r.Type != wire.TypeResponse {
			t.Fatalf("set via %s: %+v", n.ID, r.Err)
		}
	}
	for _, n := range c.Spec().Nodes {
		for i := range c.Spec().Nodes {
			r := request(t, c, n.Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: fmt.Sprint("k", i)}})
			if r.Type != wire.TypeResponse || r.Result.Value != "v" {
				t.Fatalf("get via %s: %+v %+v", n.ID, r.Result, r.Err)
			}
		}
	}
}
