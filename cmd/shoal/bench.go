package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/sim"
	"github.com/shoal-kv/shoal/wire"
)

// benchOps are the workloads of `shoal bench`, in the order a grid runs
// them: reads come after the sets that wrote their keys.
var benchOps = []string{"set", "get", "get-stale", "mixed", "job"}

// benchKeys is the key space, as in ../shared/peerbench.
const benchKeys = 100_000

// benchPoint is one measured point of the grid.
type benchPoint struct {
	Op         string  `json:"op"`
	Shards     int     `json:"shards"`
	Clients    int     `json:"clients"`
	Seconds    float64 `json:"seconds"`
	Ops        int     `json:"ops"`
	Errors     int     `json:"errors"`
	OpsPerSec  float64 `json:"ops_per_sec"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	P999us     float64 `json:"p999_us"`
	CPUusPerOp float64 `json:"cpu_us_per_op"` // summed over the node processes; 0 if unknown
	// LeaderCPUShare is, on a cluster of one shard, the share of the
	// nodes' CPU time that the shard's leader used; 0 if unknown.
	LeaderCPUShare float64   `json:"leader_cpu_share,omitempty"`
	RSSMiB         []float64 `json:"rss_mib"` // per node, in the spec's order, at the end of the point
	// Retries counts the requests' attempts past their first; Timeouts
	// the attempts that got no reply in time. A tail of timeouts is lost
	// or late datagrams, not a slow node.
	Retries  uint64 `json:"retries"`
	Timeouts uint64 `json:"timeouts"`
}

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	op := fs.String("op", "", "one of "+strings.Join(benchOps, ", ")+" (default: all)")
	shardsFlag := fs.Int("shards", 0, "shards of the cluster started (default: 1, 2, 4 and 8)")
	clientsFlag := fs.Int("clients", 0, "closed-loop clients, each with one request in flight (default: 1, 16, 64 and 256)")
	duration := fs.Duration("duration", 10*time.Second, "length of each point")
	nodes := fs.Int("nodes", 3, "nodes of the cluster started")
	replicas := fs.Int("replicas", 3, "replicas per shard of the cluster started")
	clusterFile := fs.String("cluster", "", "run against this existing cluster (a cluster.json) instead of starting one")
	asJSON := fs.Bool("json", false, "print one JSON object per point")
	insecure := fs.Bool("insecure", false, "run the cluster started (or talk to the one given) without authentication")
	secretFile := fs.String("secret-file", "", "with --cluster, the cluster's secret `FILE` (default: beside it, or $SHOAL_SECRET_FILE)")
	logStore := fs.String("log-store", server.LogStoreNode, "where the nodes of the cluster started keep their raft logs: "+
		server.LogStoreNode+" or "+server.LogStoreBolt)
	cpuProfile := fs.String("cpuprofile", "", "write the benchmark client's CPU profile to `FILE` (nodes: shoal server --pprof)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	ops := benchOps
	if *op != "" {
		if !slices.Contains(benchOps, *op) {
			return fmt.Errorf("%w: --op %q is not one of %s", errUsage, *op, strings.Join(benchOps, ", "))
		}
		ops = []string{*op}
	}
	shardCounts, clientCounts := []int{1, 2, 4, 8}, []int{1, 16, 64, 256}
	if *shardsFlag < 0 || *clientsFlag < 0 || *duration <= 0 {
		return fmt.Errorf("%w: --shards, --clients and --duration must be positive", errUsage)
	}
	if *shardsFlag > 0 {
		shardCounts = []int{*shardsFlag}
	}
	if *clientsFlag > 0 {
		clientCounts = []int{*clientsFlag}
	}
	if *clusterFile != "" && *shardsFlag > 0 {
		return fmt.Errorf("%w: --shards is the existing cluster's with --cluster", errUsage)
	}
	if *clusterFile != "" && *logStore != server.LogStoreNode {
		return fmt.Errorf("%w: --log-store is the existing cluster's with --cluster", errUsage)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	if !*asJSON {
		fmt.Fprintln(tw, "op\tshards\tclients\tops/s\tp50\tp99\tp99.9\tCPU/op\tleader CPU\tRSS/node\tretries\ttimeouts\terrors\t")
	}
	emit := func(p benchPoint) error {
		if *asJSON {
			return printJSON(stdout, p)
		}
		rss := make([]string, len(p.RSSMiB))
		for i, r := range p.RSSMiB {
			rss[i] = fmt.Sprintf("%.0f", r)
		}
		share := "-"
		if p.LeaderCPUShare > 0 {
			share = fmt.Sprintf("%.0f%%", 100*p.LeaderCPUShare)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s MiB\t%d\t%d\t%d\t\n", p.Op, p.Shards, p.Clients,
			p.OpsPerSec, micros(p.P50us), micros(p.P99us), micros(p.P999us), micros(p.CPUusPerOp), share, strings.Join(rss, "/"),
			p.Retries, p.Timeouts, p.Errors)
		return tw.Flush()
	}

	if *clusterFile != "" {
		spec, err := server.LoadSpec(*clusterFile)
		if err != nil {
			return err
		}
		var keys *wire.Keyring
		if !*insecure {
			if keys, err = loadSecret(*secretFile, *clusterFile, spec); err != nil {
				return err
			}
		}
		return benchCluster(ctx, spec, keys, filepath.Dir(*clusterFile), ops, clientCounts, *duration, stderr, emit)
	}
	for _, n := range shardCounts {
		if err := benchFreshCluster(ctx, n, *nodes, *replicas, *logStore, *insecure, ops, clientCounts, *duration, stderr, emit); err != nil {
			return err
		}
	}
	return nil
}

// benchFreshCluster starts a cluster of processes with shards shards, runs
// the points on it and stops it.
func benchFreshCluster(ctx context.Context, shards, nodes, replicas int, logStore string, insecure bool, ops []string, clientCounts []int,
	d time.Duration, stderr io.Writer, emit func(benchPoint) error) error {
	dir, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(stderr, "bench: starting %d nodes (log store %s) with %d shards of %d replicas in %s\n", nodes, logStore, shards, replicas, dir)
	up := []string{"--dir", dir, "--nodes", strconv.Itoa(nodes), "--shards", strconv.Itoa(shards),
		"--replicas", strconv.Itoa(replicas), "--log-store", logStore}
	if insecure {
		up = append(up, "--insecure")
	}
	// The cluster goes down however the points end.
	defer clusterDown([]string{"--dir", dir}, io.Discard, stderr)
	if err := clusterUp(ctx, up, io.Discard, stderr); err != nil {
		return err
	}
	spec, err := server.LoadSpec(specPath(dir))
	if err != nil {
		return err
	}
	var keys *wire.Keyring
	if !insecure {
		if keys, err = loadSecret("", specPath(dir), spec); err != nil {
			return err
		}
	}
	return benchCluster(ctx, spec, keys, dir, ops, clientCounts, d, stderr, emit)
}

// benchCluster runs the points against a running cluster, sealing with
// keys (nil if it is insecure); dir holds its nodes' pid files, if it has
// any, for CPU and memory.
func benchCluster(ctx context.Context, spec *server.Spec, keys *wire.Keyring, dir string, ops []string, clientCounts []int,
	d time.Duration, stderr io.Writer, emit func(benchPoint) error) error {
	pids := map[string]int{}
	for _, n := range spec.Nodes {
		if pid, err := readPid(pidPath(dir, n.ID)); err == nil && running(pid) {
			pids[n.ID] = pid
		}
	}
	if len(pids) != len(spec.Nodes) {
		fmt.Fprintf(stderr, "bench: no pid files of the nodes in %s: CPU and memory are not measured\n", dir)
		pids = nil
	}
	var seeds []string
	for _, n := range spec.Nodes {
		seeds = append(seeds, n.Client)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitForLeaders(wctx, spec, keys, nil); err != nil {
		return err
	}
	measure := benchMeasures{pids: pids}
	for _, n := range spec.Nodes {
		measure.order = append(measure.order, n.ID)
	}
	if len(spec.Shards) == 1 {
		measure.shard, measure.oneShard = spec.Shards[0].ID, true
	}
	for _, op := range ops {
		for _, c := range clientCounts {
			fmt.Fprintf(stderr, "bench: %s, %d shards, %d clients, %v ...\n", op, len(spec.Shards), c, d)
			p, err := benchPointRun(ctx, seeds, keys, measure, op, c, d, stderr)
			if err != nil {
				return fmt.Errorf("%s with %d clients: %w", op, c, err)
			}
			p.Shards = len(spec.Shards)
			if err := emit(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// benchOp is one request (or, for jobs, one round trip) of a workload.
type benchOp func(ctx context.Context, c *client.Client, rng *rand.Rand) error

// benchWorkload returns one worker's op of workload op: a job worker keeps
// the job it holds between round trips, so each worker needs its own.
func benchWorkload(op string, value []byte) benchOp {
	key := func(rng *rand.Rand) string { return fmt.Sprintf("k%08d", rng.IntN(benchKeys)) }
	get := func(ctx context.Context, c *client.Client, k string, opts ...client.ReadOption) error {
		_, err := c.Get(ctx, k, opts...)
		if errors.Is(err, client.ErrNotFound) {
			return nil // a key the sets have not written: still a read served
		}
		return err
	}
	switch op {
	case "set":
		return func(ctx context.Context, c *client.Client, rng *rand.Rand) error {
			_, err := c.Set(ctx, key(rng), value)
			return err
		}
	case "get":
		return func(ctx context.Context, c *client.Client, rng *rand.Rand) error { return get(ctx, c, key(rng)) }
	case "get-stale":
		return func(ctx context.Context, c *client.Client, rng *rand.Rand) error {
			return get(ctx, c, key(rng), client.Stale())
		}
	case "mixed":
		return func(ctx context.Context, c *client.Client, rng *rand.Rand) error {
			if rng.IntN(10) == 0 {
				_, err := c.Set(ctx, key(rng), value)
				return err
			}
			return get(ctx, c, key(rng))
		}
	default: // job: enqueue, then complete a job and take the next, as a Worker does
		// held is the job this worker leased and has not completed: the
		// next one it got with the completion of the one before. A
		// round trip is one enqueue and one completion.
		var held *client.Job
		return func(ctx context.Context, c *client.Client, rng *rand.Rand) error {
			topic := fmt.Sprintf("bench%d", rng.IntN(16))
			if held != nil {
				topic = held.Topic
			}
			if _, err := c.Enqueue(ctx, topic, value, client.EnqueueOptions{}); err != nil {
				return err
			}
			if held == nil {
				j, err := c.Acquire(ctx, topic, 30*time.Second)
				if err != nil {
					return err
				}
				held = j
			}
			next, err := c.CompleteAndAcquire(ctx, held, topic, 30*time.Second)
			held = next
			return err
		}
	}
}

// benchMeasures says what a bench point measures of the node processes.
type benchMeasures struct {
	// pids holds the node processes by node id; nil if they are not
	// measured.
	pids map[string]int
	// order lists the node ids in the spec's order, which RSS follows.
	order []string
	// oneShard says the cluster has the one shard shard, whose leader's
	// share of the CPU time is measured.
	shard    shard.ID
	oneShard bool
}

// benchPointRun drives clients closed-loop clients for d and measures the
// node processes as measure says.
func benchPointRun(ctx context.Context, seeds []string, keys *wire.Keyring, measure benchMeasures, op string,
	clients int, d time.Duration, stderr io.Writer) (benchPoint, error) {
	pids := measure.pids
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A client.Client per 32 workers, as an application would share one.
	conns := make([]*client.Client, (clients+31)/32)
	for i := range conns {
		c, err := client.New(ctx, client.Config{Seeds: seeds, Secret: keys, Insecure: keys == nil, Logger: quiet})
		if err != nil {
			return benchPoint{}, err
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	value := make([]byte, 100)
	counters := func() (sum client.Counters) {
		for _, c := range conns {
			n := c.Counters()
			sum.Retries, sum.Timeouts = sum.Retries+n.Retries, sum.Timeouts+n.Timeouts
		}
		return sum
	}
	cpu := func() map[string]time.Duration {
		m := make(map[string]time.Duration, len(pids))
		for id, pid := range pids {
			m[id] = processCPU(pid)
		}
		return m
	}
	sent0, cpu0 := counters(), cpu()
	runCtx, stop := context.WithTimeout(ctx, d)
	defer stop()
	start := time.Now()
	deadline := start.Add(d)
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr error
		wg       sync.WaitGroup
	)
	for w := 0; w < clients; w++ {
		c, rng, work := conns[w%len(conns)], rand.New(rand.NewPCG(uint64(w), 1)), benchWorkload(op, value)
		wg.Go(func() {
			var mine []time.Duration
			var failed int
			var first error
			// The clock, not runCtx.Err, ends the loop: a request
			// begun at the deadline fails at once with the context's
			// error before the context's own timer has marked it done.
			for time.Now().Before(deadline) {
				t := time.Now()
				err := work(runCtx, c, rng)
				switch {
				case err == nil:
					mine = append(mine, time.Since(t))
				case time.Now().Before(deadline):
					failed++
					first = cmp.Or(first, err)
				}
			}
			mu.Lock()
			lat, errs, firstErr = append(lat, mine...), errs+failed, cmp.Or(firstErr, first)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	sent := counters()
	if ctx.Err() != nil {
		return benchPoint{}, ctx.Err()
	}
	if errs > 0 {
		fmt.Fprintf(stderr, "bench: %d requests failed, the first with: %v\n", errs, firstErr)
	}
	pct := sim.Percentiles(lat, 50, 99, 99.9)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	p := benchPoint{
		Op: op, Clients: clients, Seconds: elapsed.Seconds(), Ops: len(lat), Errors: errs,
		OpsPerSec: float64(len(lat)) / elapsed.Seconds(),
		P50us:     us(pct[0]), P99us: us(pct[1]), P999us: us(pct[2]),
		Retries:  sent.Retries - sent0.Retries,
		Timeouts: sent.Timeouts - sent0.Timeouts,
	}
	if pids != nil && len(lat) > 0 {
		cpu1 := cpu()
		var total time.Duration
		for id := range pids {
			total += cpu1[id] - cpu0[id]
		}
		p.CPUusPerOp = total.Seconds() * 1e6 / float64(len(lat))
		if leader := leaderOf(conns[0], measure.shard); measure.oneShard && leader != "" && total > 0 {
			p.LeaderCPUShare = float64(cpu1[leader]-cpu0[leader]) / float64(total)
		}
		for _, id := range measure.order {
			p.RSSMiB = append(p.RSSMiB, processRSS(pids[id]))
		}
	}
	return p, nil
}

// leaderOf returns the node that last told c it leads shard id, if one did.
func leaderOf(c *client.Client, id shard.ID) string {
	for _, n := range c.Nodes() {
		if slices.Contains(n.Leads, id) {
			return n.ID
		}
	}
	return ""
}

func micros(us float64) string {
	switch {
	case us == 0:
		return "-"
	case us >= 1000:
		return fmt.Sprintf("%.2fms", us/1000)
	default:
		return fmt.Sprintf("%.0fµs", us)
	}
}
