package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// testCluster runs the nodes of a LocalSpec in this process, each on its own
// data directory, with real raft groups on disk and real UDP.
type testCluster struct {
	t     testing.TB
	spec  *Spec
	dir   string
	nodes map[string]*Node
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter sends log lines to t.Log, so they show only for failed tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func newTestCluster(t testing.TB, nodes, shards, replicas int) *testCluster {
	t.Helper()
	spec, err := LocalSpec(nodes, shards, replicas)
	if err != nil {
		t.Fatal(err)
	}
	return startTestCluster(t, spec)
}

// newFailoverTestCluster is newTestCluster with a heartbeat timeout of
// 500 ms, half the default, for tests whose bounds assume a failover well
// under two seconds: with the default a failover takes 1 to 2 s, and more
// after a split vote. The sim's failover experiment measures the default.
func newFailoverTestCluster(t testing.TB, nodes, shards, replicas int) *testCluster {
	t.Helper()
	spec, err := LocalSpec(nodes, shards, replicas)
	if err != nil {
		t.Fatal(err)
	}
	spec.Raft.HeartbeatTimeout = Duration(500 * time.Millisecond)
	return startTestCluster(t, spec)
}

// startTestCluster starts every node of spec and waits for leaders.
func startTestCluster(t testing.TB, spec *Spec) *testCluster {
	t.Helper()
	c := &testCluster{t: t, spec: spec, dir: t.TempDir(), nodes: map[string]*Node{}}
	t.Cleanup(c.closeAll)
	for _, n := range spec.Nodes {
		c.start(n.ID)
	}
	c.waitLeaders()
	return c
}

func (c *testCluster) start(id string) *Node {
	c.t.Helper()
	n, err := Start(context.Background(), Config{
		ID:      id,
		DataDir: filepath.Join(c.dir, id),
		Spec:    c.spec,
		Logger:  testLogger(c.t),
	})
	if err != nil {
		c.t.Fatalf("starting %s: %v", id, err)
	}
	c.nodes[id] = n
	return n
}

// stop closes a node abruptly: to its peers it looks like a crash.
func (c *testCluster) stop(id string) {
	c.t.Helper()
	if err := c.nodes[id].Close(); err != nil {
		c.t.Errorf("closing %s: %v", id, err)
	}
	delete(c.nodes, id)
}

func (c *testCluster) closeAll() {
	for id := range c.nodes {
		c.stop(id)
	}
}

// leader returns the node leading shard id among the running nodes, or nil.
func (c *testCluster) leader(id shard.ID) *Node {
	for _, n := range c.nodes {
		if r := n.replicas[id]; r != nil && r.isLeader() {
			return n
		}
	}
	return nil
}

// waitLeaders waits until every shard with a running quorum has a leader
// that is ready to serve reads.
func (c *testCluster) waitLeaders() {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, s := range c.spec.Shards {
		for {
			if n := c.leader(s.ID); n != nil && n.replicas[s.ID].readyTerm.Load() == n.replicas[s.ID].raft.CurrentTerm() {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("shard %d has no leader after 15s", s.ID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (c *testCluster) seeds() []string {
	var s []string
	for _, n := range c.spec.Nodes {
		s = append(s, n.Client)
	}
	return s
}

// rawRequest sends one query to a node and waits for its reply.
func rawRequest(t testing.TB, to string, m *wire.Message) wire.Message {
	t.Helper()
	u, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	addr, err := wire.ParseAddr(to)
	if err != nil {
		t.Fatal(err)
	}
	if m.TxID == 0 {
		m.TxID = 1
	}
	b, err := wire.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.MaxDatagramSize)
	for attempt := 0; attempt < 3; attempt++ {
		if err := u.Send(b, addr); err != nil {
			t.Fatal(err)
		}
		got := make(chan wire.Message, 1)
		go func() {
			for {
				n, _, _, err := u.Receive(buf)
				if err != nil {
					return
				}
				if r, err := wire.Decode(buf[:n]); err == nil && r.TxID == m.TxID {
					got <- r
					return
				}
			}
		}()
		select {
		case r := <-got:
			return r
		case <-time.After(3 * time.Second):
		}
	}
	t.Fatalf("no reply from %s to %+v", to, m)
	return wire.Message{}
}

func TestSmoke(t *testing.T) {
	c := newTestCluster(t, 3, 2, 3)
	for i, n := range c.spec.Nodes {
		r := rawRequest(t, n.Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "c", Seq: uint64(i + 1), Ack: 1,
			Args: wire.Args{Key: fmt.Sprint("k", i), Value: "v"}})
		if r.Type != wire.TypeResponse {
			t.Fatalf("set via %s: %+v", n.ID, r.Err)
		}
	}
	for _, n := range c.spec.Nodes {
		for i := range c.spec.Nodes {
			r := rawRequest(t, n.Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpGet, Args: wire.Args{Key: fmt.Sprint("k", i)}})
			if r.Type != wire.TypeResponse || r.Result.Value != "v" {
				t.Fatalf("get via %s: %+v %+v", n.ID, r.Result, r.Err)
			}
		}
	}
}
