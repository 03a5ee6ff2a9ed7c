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

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
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

// Real processes: kill -9 the leader of a shard while clients write; every
// acknowledged write stays readable, writes to the shard resume within an
// election's worst case, and the killed node, started again by `cluster
// up`, catches up.
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
	shoalRun(t, bin, "cluster", "down", "--dir", dir)
	if n := countRunning(dir); n != 0 {
		t.Errorf("%d nodes still running after cluster down", n)
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
