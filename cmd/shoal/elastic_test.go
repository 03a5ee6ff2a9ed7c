package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
)

func TestNextNodeID(t *testing.T) {
	for _, tc := range []struct {
		ids   []string
		taken []string
		want  string
	}{
		{[]string{"n1", "n2", "n3"}, nil, "n4"},
		{[]string{"n3", "n1"}, nil, "n4"},                  // a gap is not filled: n2 may be a removed node's
		{[]string{"n2", "n3", "n4", "n1"}, nil, "n5"},      // n1 removed, still counted
		{[]string{"n1", "n2", "n3"}, []string{"n4"}, "n5"}, // a data directory left behind
		{[]string{"alpha", "beta", "n10x"}, nil, "n1"},
		{nil, nil, "n1"},
	} {
		got := nextNodeID(tc.ids, func(id string) bool { return slices.Contains(tc.taken, id) })
		if got != tc.want {
			t.Errorf("nextNodeID(%v, taken %v) = %s, want %s", tc.ids, tc.taken, got, tc.want)
		}
	}
}

// keepSpec rewrites DIR/cluster.json from the metadata: nodes added and
// removed, the map and its version from the metadata, the settings and
// the listen addresses of nodes whose addresses did not change from the
// old spec.
func TestKeepSpecFollowsTheMetadata(t *testing.T) {
	dir := t.TempDir()
	old, err := server.LocalSpec(3, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	old.SecretIDs = []string{"k1"}
	old.LogStore = server.LogStoreBolt
	old.Nodes[1].RaftListen, old.Nodes[1].ClientListen = "0.0.0.0:7001", "0.0.0.0:7002"
	old.Nodes[2].RaftListen = "0.0.0.0:7003"
	if err := old.Save(specPath(dir)); err != nil {
		t.Fatal(err)
	}

	// n1 removed, n3 moved to another address, n4 added.
	m, err := shard.NewEvenMap([]string{"n2", "n3", "n4"}, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	m.Version = 7
	c := &shard.Cluster{Version: 7, Map: m, Control: []string{"n2", "n3", "n4"}, Removed: []string{"n1"},
		Nodes: []shard.Node{
			{ID: "n2", Raft: old.Nodes[1].Raft, Client: old.Nodes[1].Client},
			{ID: "n3", Raft: "127.0.0.1:9001", Client: "127.0.0.1:9002"},
			{ID: "n4", Raft: "127.0.0.1:9003", Client: "127.0.0.1:9004"},
		}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	lc := &localCluster{dir: dir, spec: old}
	if err := lc.keepSpec(c); err != nil {
		t.Fatal(err)
	}
	got, err := server.LoadSpec(specPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if ids := nodeIDs(got); !slices.Equal(ids, []string{"n2", "n3", "n4"}) {
		t.Errorf("nodes %v, want n2 n3 n4", ids)
	}
	if got.MapVersion != 7 || len(got.Shards) != 2 || !slices.Equal(got.SecretIDs, []string{"k1"}) || got.LogStore != server.LogStoreBolt {
		t.Errorf("spec %+v: want map version 7, 2 shards, the old secret ids and log store", got)
	}
	if n := got.Node("n2"); n.RaftListen != "0.0.0.0:7001" || n.ClientListen != "0.0.0.0:7002" {
		t.Errorf("n2 %+v lost its listen addresses", n)
	}
	if n := got.Node("n3"); n.Raft != "127.0.0.1:9001" || n.RaftListen != "" {
		t.Errorf("n3 %+v: want the new address, and no listen address of the old one", n)
	}
	if lc.spec.MapVersion != 7 {
		t.Errorf("the command goes on with map version %d, want 7", lc.spec.MapVersion)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(matches) != 0 {
		t.Errorf("left %v behind", matches)
	}
}

func TestMoveDone(t *testing.T) {
	m, err := shard.NewEvenMap([]string{"n1", "n2", "n3"}, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	base := &shard.Cluster{Version: 1, Map: m, Control: []string{"n1"},
		Nodes: []shard.Node{{ID: "n1", Raft: "r1", Client: "c1"}, {ID: "n2", Raft: "r2", Client: "c2"}, {ID: "n3", Raft: "r3", Client: "c3"}}}
	from := m.Shards[0].Replicas[0]
	mv := shard.Move{Group: 0, From: from, To: "n3"}
	if slices.Contains(m.Shards[0].Replicas, "n3") {
		t.Fatalf("shard 0 already on n3: %v", m.Shards[0].Replicas)
	}
	moving := base.Clone()
	moving.Moves = []shard.Move{mv}
	if what, err := moveDone(mv)(moving); what == "" || err != nil {
		t.Errorf("a move in progress: %q, %v; want it pending", what, err)
	}
	done := base.Clone()
	done.Map.Shards[0].Replicas[0] = "n3"
	if what, err := moveDone(mv)(done); what != "" || err != nil {
		t.Errorf("a finished move: %q, %v; want done", what, err)
	}
	if _, err := moveDone(mv)(base); err == nil {
		t.Error("a move that ended without its target among the voters was taken for done")
	} else if errors.Is(err, errUsage) {
		t.Errorf("an undone move is not a usage error: %v", err)
	}
}

// joinedServer is `shoal server --join` for node n4, run by the test.
type joinedServer struct {
	cancel context.CancelFunc
	// exit delivers the command's exit status; stderr holds its output
	// once it has.
	exit   chan int
	stderr bytes.Buffer
}

// joinServer runs `shoal server --join` for node n4 with the credentials
// in tlsDir and secretFile, until it exits or stop is called.
func joinServer(t *testing.T, seeds, data, raftAddr, clientAddr, tlsDir, secretFile string) *joinedServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &joinedServer{cancel: cancel, exit: make(chan int, 1)}
	go func() {
		s.exit <- run(ctx, []string{"server", "--id", "n4", "--data", data, "--join", seeds,
			"--raft", raftAddr, "--client", clientAddr, "--tls-dir", tlsDir, "--secret-file", secretFile,
			"--log-level", "error"}, io.Discard, &s.stderr)
	}()
	t.Cleanup(cancel)
	return s
}

// stop stops the command, as SIGTERM does, and returns its exit status.
func (s *joinedServer) stop() int {
	s.cancel()
	return <-s.exit
}

// `shoal server --join` registers the node and starts it on the metadata
// the cluster answers, with a certificate `shoal certs --id` issued with
// the cluster's CA; restarted with the same flags, it is the same node;
// under its id but at other addresses, it is refused; removed from the
// cluster, it exits with status 1 on its own.
func TestServerJoin(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	seeds := strings.Join(c.Seeds(), ",")
	secretFile := filepath.Join(c.Dir(), servertest.SecretFile)
	tlsDir := filepath.Join(t.TempDir(), "tls")
	if err := c.CA().Save(tlsDir); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := shoal("certs", "--out", tlsDir, "--id", "n4"); code != 0 {
		t.Fatalf("certs --id n4: exit %d, %s%s", code, out, errs)
	}
	raftAddr, clientAddr, err := freeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "n4")
	serving := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		cl, err := client.New(ctx, client.Config{Seeds: []string{clientAddr}, Secret: c.Secret(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return false
		}
		defer cl.Close(context.Background())
		_, err = cl.NodeStatus(ctx, "n4")
		return err == nil
	}

	n4 := joinServer(t, seeds, data, raftAddr, clientAddr, tlsDir, secretFile)
	servertest.WaitFor(t, 30*time.Second, "n4 a member, serving", func() bool {
		return c.Metadata().Node("n4") != nil && serving()
	})
	if nd := c.Metadata().Node("n4"); nd.Raft != raftAddr || nd.Client != clientAddr {
		t.Errorf("n4 registered at %+v, want raft %s, client %s", nd, raftAddr, clientAddr)
	}
	if code := n4.stop(); code != 0 {
		t.Fatalf("n4 stopped with exit %d: %s", code, n4.stderr.String())
	}
	version := c.Metadata().Version

	n4 = joinServer(t, seeds, data, raftAddr, clientAddr, tlsDir, secretFile)
	servertest.WaitFor(t, 30*time.Second, "n4 serving again", serving)
	if v := c.Metadata().Version; v != version {
		t.Errorf("rejoining with the same flags changed the metadata: version %d, then %d", version, v)
	}

	otherRaft, otherClient, err := freeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	code, _, errs := shoal("server", "--id", "n4", "--data", t.TempDir(), "--join", seeds,
		"--raft", otherRaft, "--client", otherClient, "--tls-dir", tlsDir, "--secret-file", secretFile)
	if code != 1 || !strings.Contains(errs, `node "n4" is a member`) {
		t.Errorf("n4 at other addresses: exit %d, %q; want it refused", code, errs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Node("n1").RemoveNode(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-n4.exit:
		if errs := n4.stderr.String(); code != exitRemoved || !strings.Contains(errs, "shoal server: server: the node was removed from the cluster") {
			t.Errorf("removed n4 exited %d: %q; want %d, saying it was removed", code, errs, exitRemoved)
		}
	case <-ctx.Done():
		t.Fatal("removed n4 still runs")
	}
}

func TestParseSlots(t *testing.T) {
	for _, tc := range []struct {
		in         string
		start, end int
		ok         bool
	}{
		{"0-511", 0, 512, true}, {"7", 7, 8, true}, {"4095", 4095, 4096, true},
		{"4096", 0, 0, false}, {"5-4", 0, 0, false}, {"-1", 0, 0, false}, {"a-b", 0, 0, false}, {"", 0, 0, false},
	} {
		start, end, err := parseSlots(tc.in)
		if (err == nil) != tc.ok || tc.ok && (start != tc.start || end != tc.end) {
			t.Errorf("parseSlots(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, start, end, err, tc.start, tc.end, tc.ok)
		}
	}
}
