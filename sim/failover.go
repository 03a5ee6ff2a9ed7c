package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

func init() {
	register(Experiment{
		Name:    "failover",
		Summary: "kill a shard leader under steady writes with 10% loss: time to a new leader and to the first write, errors, acknowledged writes readable, linearizability",
		Run:     failover,
	})
}

// electionTheory is the time from a leader's death to its successor in a
// trio of hashicorp/raft nodes with heartbeat timeout hb, by Monte Carlo
// over the library's timers. A follower's heartbeat timer fires at
// intervals uniform in [hb, 2hb) and turns it candidate once its last
// contact is hb old; under load the last contact is the moment of the
// kill, and each timer's phase is that of a long-running renewal process.
// Pre-vote makes a follower that still has a leader refuse its vote, so the
// election ends when the later of the two followers fires; the vote's round
// trips over loopback are left out.
func electionTheory(hb time.Duration, samples int, rng *rand.Rand) (mean, sd time.Duration) {
	fire := func() float64 {
		// Start the timer far enough back that its phase is stationary.
		t := -10 * hb.Seconds() * rng.Float64()
		for t < hb.Seconds() {
			t += hb.Seconds() * (1 + rng.Float64())
		}
		return t
	}
	var sum, sq float64
	for i := 0; i < samples; i++ {
		d := max(fire(), fire())
		sum += d
		sq += d * d
	}
	m := sum / float64(samples)
	return seconds(m), seconds(math.Sqrt(sq/float64(samples) - m*m))
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// write is one write of the failover load.
type write struct {
	key, value string
	version    uint64
	sent, done time.Duration // since the kill; negative before it
	err        error
}

// failoverRun is what one seed measured.
type failoverRun struct {
	election, firstWrite time.Duration
	writes               []write
	acked, readable      int
	unclear              int // failures other than ErrUnavailable
	history              porcupine.CheckResult
	visualization        string
}

// electionPatience is how long past set.after the experiment waits for a
// new leader before it reports a failure rather than a figure: far beyond
// the timers' tail (three heartbeat timeouts), so only a cluster that
// cannot elect reaches it.
const electionPatience = 10 * time.Second

// failoverSetup sizes the experiment.
type failoverSetup struct {
	seeds         int
	before, after time.Duration
	writers       int
	drop          float64
}

func failover(ctx context.Context, cfg Config) (*Report, error) {
	set := failoverSetup{seeds: cfg.seeds(10, 2), before: time.Second, after: 4 * time.Second, writers: 16, drop: 0.1}
	if cfg.Quick {
		set.after = 3 * time.Second
	}
	var runs []failoverRun
	for s := 0; s < set.seeds; s++ {
		seed := cfg.Seed + int64(s)
		run, err := failoverSeed(ctx, cfg, set, seed)
		if err != nil {
			return nil, fmt.Errorf("seed %d: %w", seed, err)
		}
		runs = append(runs, run)
		cfg.progress("failover: seed %d: new leader after %v, first write after %v; %d of %d acknowledged writes readable, %d unclear errors, history %s",
			seed, run.election.Round(time.Millisecond), run.firstWrite.Round(time.Millisecond), run.readable, run.acked, run.unclear, checkName(run.history))
	}

	hb := server.DefaultHeartbeatTimeout
	theory, theorySD := electionTheory(hb, 200000, rand.New(rand.NewPCG(uint64(cfg.Seed), 1)))
	r := &Report{
		Experiment: "failover",
		Setup: fmt.Sprintf("3 nodes, 2 shards x 3 replicas, heartbeat timeout %v; %d writers of new keys on one shard, %.0f%% loss each way on client links; "+
			"its leader killed %v into the run, writes go on %v after it and at least 1s after the new leader; a porcupine history on 4 keys of that shard beside; %d seeds",
			hb, set.writers, set.drop*100, set.before, set.after, set.seeds),
	}
	var elections, firsts, lags []float64
	var acked, readable, unclear, failed, total, bad, unsure int
	t := Table{Name: "failover", Title: "per seed",
		Header: []string{"seed", "new leader", "first write", "acknowledged", "readable", "failed", "unclear errors", "history"}}
	for i, run := range runs {
		elections = append(elections, run.election.Seconds())
		firsts = append(firsts, run.firstWrite.Seconds())
		lags = append(lags, (run.firstWrite - run.election).Seconds())
		acked += run.acked
		readable += run.readable
		unclear += run.unclear
		nfailed := 0
		for _, w := range run.writes {
			if w.err != nil {
				nfailed++
			}
		}
		failed += nfailed
		total += len(run.writes)
		switch run.history {
		case porcupine.Illegal:
			bad++
			r.Notes = append(r.Notes, fmt.Sprintf("seed %d: not linearizable; porcupine's visualization is %s", cfg.Seed+int64(i), run.visualization))
		case porcupine.Unknown:
			unsure++
		}
		t.Rows = append(t.Rows, []string{fmt.Sprint(cfg.Seed + int64(i)), run.election.Round(time.Millisecond).String(),
			run.firstWrite.Round(time.Millisecond).String(), fmt.Sprint(run.acked), fmt.Sprint(run.readable),
			fmt.Sprint(nfailed), fmt.Sprint(run.unclear), checkName(run.history)})
	}
	r.Tables = append(r.Tables, t)
	el, fw, lag := Mean(elections), Mean(firsts), Mean(lags)
	// The band: three standard errors of the model's spread, and 100ms
	// for the vote's round trips and the shard's first command as leader.
	se := 3 * theorySD.Seconds() / math.Sqrt(float64(len(runs)))
	r.Checks = append(r.Checks,
		NewCheck("seconds from the kill to a new leader", el, theory.Seconds(), theory.Seconds()-se, theory.Seconds()+se+0.1,
			fmt.Sprintf("hashicorp/raft timers with pre-vote: later of two followers' heartbeat timeouts (Monte Carlo, sd %v)", theorySD.Round(time.Millisecond))),
		NewCheck("seconds from the new leader to the first acknowledged write", lag, 0, 0, client.DefaultInitialAttemptTimeout.Seconds(),
			"nodes hold requests until they learn the new leader; a lost datagram costs one attempt timeout"),
		NewCheck("acknowledged writes not readable", Estimate{Mean: float64(acked - readable)}, 0, 0, 0,
			"raft acknowledges a write once a majority has it (Ongaro & Ousterhout 2014, §5.4)"),
		NewCheck("failures other than ErrUnavailable", Estimate{Mean: float64(unclear)}, 0, 0, 0,
			"a failed write must return a clear error"),
		NewCheck("histories that are not linearizable", Estimate{Mean: float64(bad)}, 0, 0, 0, "porcupine"),
		NewCheck("histories the checker could not decide", Estimate{Mean: float64(unsure)}, 0, 0, 0, "porcupine"))
	r.Notes = append(r.Notes, fmt.Sprintf("first acknowledged write %.3fs ± %.3fs after the kill; %d of %d writes failed (ErrUnavailable, during the election)",
		fw.Mean, fw.HalfWidth, failed, total))
	r.Figures = append(r.Figures, failoverTimeline(runs, set))
	return r, nil
}

func checkName(r porcupine.CheckResult) string {
	switch r {
	case porcupine.Ok:
		return "linearizable"
	case porcupine.Illegal:
		return "NOT linearizable"
	}
	return "undecided"
}

// failoverTimeline plots acknowledged and failed writes per 100ms around
// the kill, averaged over seeds.
func failoverTimeline(runs []failoverRun, set failoverSetup) Figure {
	step := 100 * time.Millisecond
	n := int((set.before + set.after) / step)
	ok, bad := make([]float64, n), make([]float64, n)
	for _, run := range runs {
		for _, w := range run.writes {
			b := int((w.done + set.before) / step)
			if b < 0 || b >= n {
				continue
			}
			if w.err == nil {
				ok[b]++
			} else {
				bad[b]++
			}
		}
	}
	acked, failed := Series{Name: "acknowledged"}, Series{Name: "failed"}
	for b := 0; b < n; b++ {
		x := (time.Duration(b)*step - set.before).Seconds()
		scale := float64(len(runs)) * step.Seconds()
		acked.X, acked.Y = append(acked.X, x), append(acked.Y, ok[b]/scale)
		failed.X, failed.Y = append(failed.X, x), append(failed.Y, bad[b]/scale)
	}
	return Figure{Name: "failover-writes", Title: "Writes to the shard whose leader is killed at 0 (mean of seeds)",
		XLabel: "seconds since the kill", YLabel: "writes per second", Series: []Series{acked, failed}}
}

// keysOf returns n keys, with prefix, that map to shard id.
func keysOf(m *shard.Map, id shard.ID, prefix string, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		if k := fmt.Sprintf("%s-%d", prefix, i); m.ShardOf(k) == id {
			keys = append(keys, k)
		}
	}
	return keys
}

func failoverSeed(ctx context.Context, cfg Config, set failoverSetup, seed int64) (run failoverRun, err error) {
	c, err := startCluster(ctx, seed, 3, 2, 3, cfg.logger())
	if err != nil {
		return run, err
	}
	defer func() { err = errors.Join(err, c.close()) }()
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	victim := c.Map().Shards[rng.IntN(len(c.Map().Shards))].ID
	if err := c.net.SetDefaultFaults(wire.Faults{Drop: set.drop}); err != nil {
		return run, err
	}
	// Writers use the client's defaults: the errors they see are what an
	// application sees. The history's clients ride out the election.
	var clients []*client.Client
	for _, cc := range []client.Config{{}, {}, historyClient, historyClient} {
		cl, err := c.client(ctx, cc)
		if err != nil {
			return run, err
		}
		clients = append(clients, cl)
	}

	start := time.Now()
	var kill time.Time // set before any write reads it: see killed
	killed := make(chan struct{})
	since := func(t time.Time) time.Duration {
		select {
		case <-killed:
			return t.Sub(kill)
		default:
			return t.Sub(start) - set.before
		}
	}
	// The load runs set.before, then at least set.after past the kill and
	// past the new leader's election: an election in the timers' tail (or
	// on a loaded machine) must still be timed, and writes must go on
	// after it for the first one to be seen.
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < set.writers; w++ {
		cl := clients[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				key := keysOf(c.Map(), victim, fmt.Sprintf("w%d-%d", w, i), 1)[0]
				wr := write{key: key, value: fmt.Sprintf("v%d-%d", w, i), sent: since(time.Now())}
				wr.version, wr.err = cl.Set(context.WithoutCancel(loadCtx), key, []byte(wr.value))
				wr.done = since(time.Now())
				mu.Lock()
				run.writes = append(run.writes, wr)
				mu.Unlock()
			}
		}()
	}
	h := newHistory()
	wg.Add(1)
	go func() {
		defer wg.Done()
		procs := []*client.Client{clients[2], clients[3], clients[2], clients[3]}
		kvWorkload(loadCtx, h, procs, keysOf(c.Map(), victim, "lin", 4), seed)
	}()

	select {
	case <-ctx.Done():
		stop()
		wg.Wait()
		return run, ctx.Err()
	case <-time.After(set.before):
	}
	leader := c.leaderID(victim)
	if leader == "" {
		stop()
		wg.Wait()
		return run, fmt.Errorf("shard %d has no leader to kill", victim)
	}
	kill = time.Now()
	close(killed)
	if err := c.Kill(leader); err != nil {
		return run, err
	}
	giveUp := kill.Add(set.after + electionPatience)
	for c.Elected(victim) == nil && time.Now().Before(giveUp) && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	run.election = time.Since(kill)
	if c.Elected(victim) == nil {
		stop()
		wg.Wait()
		return run, fmt.Errorf("shard %d elected no leader in the %v after its leader was killed", victim, run.election.Round(time.Millisecond))
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(kill.Add(max(set.after, run.election+time.Second)))):
	}
	stop()
	wg.Wait()

	run.firstWrite = -1
	sort.Slice(run.writes, func(i, j int) bool { return run.writes[i].done < run.writes[j].done })
	for _, w := range run.writes {
		if w.err == nil && w.sent >= 0 && run.firstWrite < 0 {
			run.firstWrite = w.done
		}
		if w.err != nil && !errors.Is(w.err, client.ErrUnavailable) {
			run.unclear++
		}
	}
	if run.firstWrite < 0 {
		return run, fmt.Errorf("no write succeeded in the %v after the kill", max(set.after, run.election+time.Second))
	}
	if err := c.net.SetDefaultFaults(wire.Faults{}); err != nil {
		return run, err
	}
	run.acked, run.readable = readBack(ctx, clients[2], run.writes)
	run.history, run.visualization, err = checkHistory(h, cfg.Out, fmt.Sprintf("failover-s%d", seed), time.Minute)
	return run, err
}

// readBack reads every acknowledged write back, and counts those whose
// key still holds the value and version the write was acknowledged with.
func readBack(ctx context.Context, cl *client.Client, writes []write) (acked, readable int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan write)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range next {
				it, err := cl.Get(ctx, w.key)
				if err == nil && it.Version == w.version && string(it.Value) == w.value {
					mu.Lock()
					readable++
					mu.Unlock()
				}
			}
		}()
	}
	for _, w := range writes {
		if w.err == nil {
			acked++
			next <- w
		}
	}
	close(next)
	wg.Wait()
	return acked, readable
}
