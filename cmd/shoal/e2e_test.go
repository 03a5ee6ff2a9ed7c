package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/nodelog"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
)

// buildShoal builds the command into a temporary directory.
func buildShoal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shoal")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func shoalRun(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("shoal %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

// Real processes on the node-wide raft log: kill -9 the leader of a shard
// while clients write; every acknowledged write stays readable, writes to
// the shard resume within an election's worst case, and the killed node,
// started again by `cluster up`, catches up, with every acknowledged write
// still readable and a log that agrees with its peers'.
func TestKillLeaderProcess(t *testing.T) {
	bin := buildShoal(t)
	dir := t.TempDir()
	t.Cleanup(func() { killClusters(dir) })
	shoalRun(t, bin, "cluster", "up", "--dir", dir, "--nodes", "3", "--shards", "2", "--replicas", "3")
	spec, err := server.LoadSpec(specPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	smap, err := spec.Map()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := client.New(ctx, client.Config{Seeds: seedsOf(spec), SecretFile: secretPath(specPath(dir))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	const victimShard = shard.ID(0)
	victim := collectStatus(ctx, c).Shards[victimShard].Leader
	if victim == "" {
		t.Fatal("shard 0 has no leader after cluster up")
	}
	pid, err := readPid(pidPath(dir, victim))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("w%d-%d", w, i), fmt.Sprint(i)
				if _, err := c.Set(ctx, k, []byte(v)); err == nil {
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
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var recovered time.Duration
	for i := 0; recovered == 0; i++ {
		if time.Since(killed) > 10*time.Second {
			t.Fatal("no write to shard 0 succeeded within 10s of killing its leader")
		}
		k := fmt.Sprint("probe-", i)
		if smap.ShardOf(k) != victimShard {
			continue
		}
		if _, err := c.Set(ctx, k, []byte("p")); err == nil {
			recovered = time.Since(killed)
		}
	}
	t.Logf("kill -9 of %s (pid %d), leader of shard 0: writes to the shard resumed after %v", victim, pid, recovered)
	// The later of two followers' randomized timeouts, 1 to 2 heartbeat
	// timeouts, and as much again after a split vote.
	if limit := 4*server.DefaultHeartbeatTimeout + time.Second; recovered > limit {
		t.Errorf("recovery took %v, over %v", recovered, limit)
	}
	before := ackedCount()
	servertest.WaitFor(t, 10*time.Second, "100 more writes acknowledged after the recovery", func() bool { return ackedCount() >= before+100 })
	cancel()
	wg.Wait()

	// Other shards the victim led may still be electing: read with a
	// client that keeps trying until the deadline.
	rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
	defer rcancel()
	reader, err := client.New(rctx, client.Config{Seeds: seedsOf(spec), SecretFile: secretPath(specPath(dir)), Attempts: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(rctx)
	mu.Lock()
	for k, v := range acked {
		it, err := reader.Get(rctx, k)
		if err != nil || string(it.Value) != v {
			t.Errorf("acknowledged %s=%s reads back %q, %v", k, v, it.Value, err)
		}
	}
	t.Logf("%d acknowledged writes readable after the kill", len(acked))
	mu.Unlock()

	out := shoalRun(t, bin, "cluster", "up", "--dir", dir)
	if !bytes.Contains([]byte(out), []byte("started "+victim)) {
		t.Errorf("cluster up did not restart %s:\n%s", victim, out)
	}
	// The restarted node catches up: its replicas reach the leaders' index.
	deadline := time.Now().Add(15 * time.Second)
	for {
		lag := ""
		for _, s := range collectStatus(rctx, c).Shards {
			var lead, mine uint64
			for _, r := range s.Replicas {
				if r.State == "Leader" {
					lead = r.Applied
				}
				if r.Node == victim {
					mine = r.Applied
				}
			}
			if lead == 0 || mine < lead {
				lag += fmt.Sprintf(" shard %d: %d of %d;", s.ID, mine, lead)
			}
		}
		if lag == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted %s has not caught up:%s", victim, lag)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c.Get(rctx, "w0-0", client.Stale()); err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Errorf("stale read after restart: %v", err)
	}
	// Every acknowledged write is still there with the killed node back,
	// which may lead again.
	mu.Lock()
	for k, v := range acked {
		it, err := reader.Get(rctx, k)
		if err != nil || string(it.Value) != v {
			t.Errorf("after the restart, acknowledged %s=%s reads back %q, %v", k, v, it.Value, err)
		}
	}
	mu.Unlock()
	shoalRun(t, bin, "cluster", "down", "--dir", dir)
	if n := countRunning(dir); n != 0 {
		t.Errorf("%d nodes still running after cluster down", n)
	}
	checkNodeLogs(t, dir, spec, victim)
}

// checkNodeLogs reads the node logs of a stopped cluster and fails unless
// each group's log on each node is whole (every entry from its first to
// its last) and agrees with the victim's at every index both hold: the
// killed node kept no entry its group did not append.
func checkNodeLogs(t *testing.T, dir string, spec *server.Spec, victim string) {
	t.Helper()
	type entries map[uint64]raft.Log
	logs := map[string]map[uint64]entries{} // node, group
	for _, n := range spec.Nodes {
		s, err := nodelog.Open(nodelog.DefaultConfig(filepath.Join(dataPath(dir, n.ID), "raftlog")))
		if err != nil {
			t.Fatal(err)
		}
		logs[n.ID] = map[uint64]entries{}
		for _, sh := range spec.Shards {
			l, err := s.Group(uint64(sh.ID))
			if err != nil {
				t.Fatal(err)
			}
			first, _ := l.FirstIndex()
			last, _ := l.LastIndex()
			if first == 0 {
				t.Errorf("%s: shard %d has an empty log", n.ID, sh.ID)
				continue
			}
			es := entries{}
			for i := first; i <= last; i++ {
				var e raft.Log
				if err := l.GetLog(i, &e); err != nil {
					t.Errorf("%s: shard %d: entry %d of %d..%d: %v", n.ID, sh.ID, i, first, last, err)
					break
				}
				es[i] = e
			}
			logs[n.ID][uint64(sh.ID)] = es
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	compared := 0
	for _, n := range spec.Nodes {
		if n.ID == victim {
			continue
		}
		for g, es := range logs[n.ID] {
			for i, e := range es {
				v, ok := logs[victim][g][i]
				if !ok {
					continue
				}
				compared++
				if v.Term != e.Term || v.Type != e.Type || !bytes.Equal(v.Data, e.Data) {
					t.Fatalf("shard %d entry %d: %s holds term %d, %s term %d (or other data)", g, i, victim, v.Term, n.ID, e.Term)
				}
			}
		}
	}
	if compared == 0 {
		t.Fatal("the node logs share no entries to compare")
	}
	t.Logf("%s's node log agrees with its peers' at %d entries", victim, compared)
}

// Real processes: a write whose context has 10 s left survives a 2 s stall
// of its shard's leader (SIGSTOP, then SIGCONT) and succeeds, applied once.
// The client keeps its default Attempts: before a request with a deadline
// retried until it, the write failed with ErrUnavailable after 3 attempts
// and the reply grace, half a second into the stall.
func TestWriteSurvivesLeaderStall(t *testing.T) {
	const stall = 2 * time.Second
	bin := buildShoal(t)
	dir := t.TempDir()
	t.Cleanup(func() { killClusters(dir) })
	// One shard, so that every write below advances one revision counter.
	shoalRun(t, bin, "cluster", "up", "--dir", dir, "--nodes", "3", "--shards", "1", "--replicas", "3")
	spec, err := server.LoadSpec(specPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.New(ctx, client.Config{Seeds: seedsOf(spec), SecretFile: secretPath(specPath(dir))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// Writes before the stall teach the client the round trip of a write,
	// so that its attempt timeouts are short: three of them end well
	// before a new leader could be elected.
	var before uint64
	for i := 0; i < 20; i++ {
		if before, err = c.Set(ctx, fmt.Sprint("warm-", i), []byte("w")); err != nil {
			t.Fatal(err)
		}
	}
	leader := collectStatus(ctx, c).Shards[0].Leader
	if leader == "" {
		t.Fatal("shard 0 has no leader")
	}
	pid, err := readPid(pidPath(dir, leader))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: the node goes on before the kill, so no
	// stopped process is left whatever fails.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped %s (pid %d), leader of shard 0, for %v", leader, pid, stall)
	attempts := c.Counters().Attempts

	type result struct {
		version uint64
		err     error
		took    time.Duration
	}
	res := make(chan result, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer wcancel()
		start := time.Now()
		v, err := c.Set(wctx, "stalled", []byte("once"))
		res <- result{v, err, time.Since(start)}
	}()
	// The stall's length is the experiment's input, not a wait for a
	// state: the node goes on after it, whether or not the write ended
	// (the other two may have elected a leader meanwhile).
	time.Sleep(stall)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	r := <-res
	sent := c.Counters().Attempts - attempts
	if r.err != nil {
		t.Fatalf("a write with 10s left failed in a %v stall of its leader, after %v and %d attempts: %v", stall, r.took, sent, r.err)
	}
	t.Logf("the write succeeded after %v and %d attempts", r.took.Round(time.Millisecond), sent)
	if sent <= client.DefaultAttempts {
		t.Errorf("the write took %d attempts: the stall did not outlast the %d a request without a deadline makes",
			sent, client.DefaultAttempts)
	}
	// Every write advances the shard's revision by one: applied once, the
	// write took the next, and the key's latest write is that one.
	if r.version != before+1 {
		t.Errorf("the write has version %d, the previous write %d: applied other than once", r.version, before)
	}
	it, err := c.Get(ctx, "stalled")
	if err != nil || string(it.Value) != "once" || it.Version != r.version {
		t.Errorf("the write reads back as %q version %d, %v; want \"once\" version %d", it.Value, it.Version, err, r.version)
	}
	// Nothing applied it again since: the next write takes the next
	// revision.
	if v, err := c.Set(ctx, "after", []byte("a")); err != nil || v != r.version+1 {
		t.Errorf("the next write has version %d, %v; want %d", v, err, r.version+1)
	}
}

// shoal bench starts a cluster of processes, measures the nodes' CPU and
// memory, and stops it.
func TestBenchStartsAndStopsACluster(t *testing.T) {
	bin := buildShoal(t)
	cmd := exec.Command(bin, "bench", "--op", "job", "--shards", "1", "--clients", "4", "--duration", "1s", "--json")
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\n%s", err, errs.String())
	}
	var p benchPoint
	if err := json.Unmarshal(out.Bytes(), &p); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if p.Op != "job" || p.Shards != 1 || p.Ops == 0 || p.CPUusPerOp <= 0 || len(p.RSSMiB) != 3 || p.RSSMiB[0] <= 0 {
		t.Errorf("point %+v", p)
	}
	// The cluster is gone: its directory, and every process started on it.
	_, rest, ok := strings.Cut(errs.String(), " replicas in ")
	if !ok {
		t.Fatalf("stderr does not name the cluster's directory: %q", errs.String())
	}
	dir, _, _ := strings.Cut(rest, "\n")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the cluster's directory %s is still there (%v)", dir, err)
	}
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("%s still runs: %q", f, b)
		}
	}
}

// seedsOf returns the client address of every node of spec.
func seedsOf(spec *server.Spec) []string {
	var s []string
	for _, n := range spec.Nodes {
		s = append(s, n.Client)
	}
	return s
}
