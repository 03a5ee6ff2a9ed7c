package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// demo is the embedded cluster, the lossy client and what the workload saw.
type demo struct {
	cluster *servertest.Cluster
	client  *client.Client

	mu        sync.Mutex
	acked     map[string]string      // every acknowledged write
	firstOK   map[shard.ID]time.Time // first acknowledged write per shard since markKill
	killedAt  time.Time
	perWorker [][]string // keys each worker wrote, for it to read back
}

// phase counts one stretch of the workload.
type phase struct {
	sets, gets, failed, wrong atomic.Int64
}

func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	showLog := fs.Bool("log", false, "show the nodes' warnings and errors on stderr")
	length := fs.Duration("phase", 3*time.Second, "length of the workload before and after the kill (after it, at least until the failover is over)")
	drop := fs.Float64("drop", 0.1, "probability that the client's link drops a datagram, each way")
	workers := fs.Int("workers", 8, "concurrent clients requests")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	logOut := io.Discard
	if *showLog {
		logOut = stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d := &demo{acked: map[string]string{}, firstOK: map[shard.ID]time.Time{}}
	if d.cluster, err = servertest.Start(ctx, servertest.Options{Nodes: 3, Shards: 4, Replicas: 3, Logger: log}); err != nil {
		return err
	}
	defer d.cluster.Close()

	udp, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil {
		return err
	}
	lossy, err := wire.WithFaults(udp, wire.Faults{Drop: *drop}, rand.Int64())
	if err != nil {
		return err
	}
	if d.client, err = client.New(ctx, client.Config{Seeds: d.cluster.Seeds(), Secret: d.cluster.Secret(),
		Transport: lossy, Logger: log}); err != nil {
		return err
	}
	defer d.client.Close(context.Background())
	d.perWorker = make([][]string, *workers)

	fmt.Fprintf(stdout, "shoal demo: 3 nodes, 4 shards x 3 replicas; raft logs on disk in %s; clients over UDP on 127.0.0.1\n", d.cluster.Dir())
	fmt.Fprintf(stdout, "the client's link drops %.0f%% of datagrams each way; %d workers, half sets of new keys, half reads of keys already written\n\n", *drop*100, *workers)

	before, took := d.run(ctx, *workers, *length, func() bool { return false })
	statsBefore := d.client.Counters()
	d.report(stdout, "before the kill", took, before, statsBefore, client.Counters{})

	victim, led := d.busiestLeader(ctx)
	d.mu.Lock()
	d.killedAt = time.Now()
	d.mu.Unlock()
	if err := d.cluster.Kill(victim); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "killed %s abruptly (no handover); it led shard%s %s\n", victim, plural(len(led)), joinIDs(led))

	after, took := d.run(ctx, *workers, *length, func() bool { return !d.recovered(led) })
	d.report(stdout, "after the kill", took, after, d.client.Counters(), statsBefore)
	fmt.Fprintln(stdout, d.recovery(led))

	checked, bad, err := d.verify(ctx)
	if err != nil {
		return err
	}
	if bad > 0 || before.wrong.Load()+after.wrong.Load() > 0 {
		return fmt.Errorf("%d of %d acknowledged writes read back wrong", bad+int(before.wrong.Load()+after.wrong.Load()), checked)
	}
	fmt.Fprintf(stdout, "check: all %s acknowledged writes read back correctly through a fresh client\n", commas(int64(checked)))
	cctx, cancel := context.WithTimeout(ctx, servertest.CheckTimeout)
	defer cancel()
	if err := d.cluster.Check(cctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "check: the live replicas of each shard hold the same state (a SHA-256 of it, at one log index)\n\n")
	d.nodeTable(stdout, victim)
	return nil
}

// maxRecoveryWait bounds how long the phase after the kill is stretched
// to see every shard the victim led accept writes again.
const maxRecoveryWait = 15 * time.Second

// run drives the workload for length, and beyond it, up to
// maxRecoveryWait, while waitFor says so; it returns the counts and how
// long it ran.
func (d *demo) run(ctx context.Context, workers int, length time.Duration, waitFor func() bool) (*phase, time.Duration) {
	p := &phase{}
	start := time.Now()
	more := func() bool {
		el := time.Since(start)
		return ctx.Err() == nil && (el < length || (waitFor() && el < length+maxRecoveryWait))
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; more(); i++ {
				// No deadline: each op makes the client's Attempts
				// attempts at most (a deadline would retry it until
				// then), so a failure is one the report can describe.
				if i%2 == 0 {
					d.set(ctx, w, p)
				} else {
					d.get(ctx, w, p)
				}
			}
		}()
	}
	wg.Wait()
	return p, time.Since(start)
}

func (d *demo) set(ctx context.Context, w int, p *phase) {
	d.mu.Lock()
	key := fmt.Sprintf("demo-%d-%d", w, len(d.perWorker[w]))
	d.perWorker[w] = append(d.perWorker[w], key)
	d.mu.Unlock()
	val := fmt.Sprint("v", rand.Int64())
	if _, err := d.client.Set(ctx, key, []byte(val)); err != nil {
		p.failed.Add(1)
		return
	}
	p.sets.Add(1)
	now := time.Now()
	d.mu.Lock()
	d.acked[key] = val
	if id := d.cluster.Map().ShardOf(key); !d.killedAt.IsZero() {
		if _, ok := d.firstOK[id]; !ok {
			d.firstOK[id] = now
		}
	}
	d.mu.Unlock()
}

func (d *demo) get(ctx context.Context, w int, p *phase) {
	d.mu.Lock()
	var key, want string
	if keys := d.perWorker[w]; len(keys) > 0 {
		key = keys[rand.IntN(len(keys))]
		want = d.acked[key]
	}
	d.mu.Unlock()
	if key == "" {
		return
	}
	it, err := d.client.Get(ctx, key)
	switch {
	case err == nil:
		p.gets.Add(1)
		if want != "" && string(it.Value) != want {
			p.wrong.Add(1)
		}
	case errors.Is(err, client.ErrNotFound) && want == "":
		p.gets.Add(1) // a write whose outcome was unknown did not happen
	default:
		p.failed.Add(1)
	}
}

// busiestLeader returns the node leading the most shards, and those shards.
func (d *demo) busiestLeader(ctx context.Context) (string, []shard.ID) {
	leads := map[string][]shard.ID{}
	for _, s := range collectStatus(ctx, d.client).Shards {
		if s.Leader != "" {
			leads[s.Leader] = append(leads[s.Leader], s.ID)
		}
	}
	best := d.cluster.Spec().Nodes[0].ID
	for _, n := range d.cluster.Spec().Nodes {
		if len(leads[n.ID]) > len(leads[best]) {
			best = n.ID
		}
	}
	return best, leads[best]
}

func (d *demo) report(w io.Writer, name string, length time.Duration, p *phase, now, prev client.Counters) {
	ops := p.sets.Load() + p.gets.Load()
	fmt.Fprintf(w, "%-16s %4.1fs: %s ops (%s sets, %s gets, %.0f/s), %s retries, %s failed after %d attempts\n",
		name, length.Seconds(), commas(ops), commas(p.sets.Load()), commas(p.gets.Load()), float64(ops)/length.Seconds(),
		commas(int64(now.Retries-prev.Retries)), commas(p.failed.Load()), client.DefaultAttempts)
}

// recovered reports whether every shard in led has accepted a write since
// the kill.
func (d *demo) recovered(led []shard.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range led {
		if _, ok := d.firstOK[id]; !ok {
			return false
		}
	}
	return true
}

func (d *demo) recovery(led []shard.ID) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(led) == 0 {
		return "recovery: the killed node led no shard; nothing had to fail over"
	}
	var worst time.Duration
	for _, id := range led {
		t, ok := d.firstOK[id]
		if !ok {
			return fmt.Sprintf("recovery: shard %d accepted no write after the kill", id)
		}
		worst = max(worst, t.Sub(d.killedAt))
	}
	return fmt.Sprintf("recovery: writes to shard%s %s succeeded again %.2fs after the kill (new leaders elected)",
		plural(len(led)), joinIDs(led), worst.Seconds())
}

// verify reads every acknowledged write back through a fresh client on a
// clean link.
func (d *demo) verify(ctx context.Context) (checked, bad int, err error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var seeds []string
	for _, id := range d.cluster.Running() {
		seeds = append(seeds, d.cluster.Spec().Node(id).Client)
	}
	c, err := client.New(ctx, client.Config{Seeds: seeds, Secret: d.cluster.Secret(), Logger: quiet})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close(context.Background())
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, v := range d.acked {
		it, err := c.Get(ctx, k)
		if err != nil || string(it.Value) != v {
			bad++
		}
		checked++
	}
	return checked, bad, nil
}

func (d *demo) nodeTable(w io.Writer, victim string) {
	infos := d.client.Nodes()
	var total uint64
	for _, n := range infos {
		total += n.Attempts
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "node\tshare of requests\tpicker weight now\treported load")
	for _, n := range infos {
		share := fmt.Sprintf("%.1f%%", 100*float64(n.Attempts)/float64(max(total, 1)))
		if n.ID == victim {
			fmt.Fprintf(tw, "%s\t%s\t-\tkilled\n", n.ID, share)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.2f requests in progress\n", n.ID, share, n.Weight, n.Activity)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nThe client picks among a shard's live replicas with softmin weights, exp(-load/T) at T = 1,")
	fmt.Fprintln(w, "over the load each node reports plus the client's own requests in flight there; it stops")
	fmt.Fprintln(w, "picking a node it has not heard from for a second.")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func joinIDs(ids []shard.ID) string {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ", ")
}

// commas formats n with thousands separators.
func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}
