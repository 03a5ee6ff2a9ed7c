package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

func init() {
	register(Experiment{
		Name:    "linearizability",
		Summary: "porcupine checks of get/set/compare-and-set/delete histories under loss, duplication, reordering, partitions and leader kills",
		Run:     linearizability,
	})
}

// disruption is what befalls a round's histories: faults on every link for
// the whole round, and an event in its middle third, undone after it.
type disruption struct {
	name string
	net  wire.Faults
	// event starts the disruption and returns what ends it.
	event func(ctx context.Context, c *cluster, rng *rand.Rand) (end func() error, err error)
}

var disruptions = []disruption{
	{name: "loss 10%", net: wire.Faults{Drop: 0.1}},
	{name: "duplication, reordering, jitter", net: wire.Faults{
		Duplicate: 0.2, Reorder: 0.2, Delay: 200 * time.Microsecond, Jitter: 2 * time.Millisecond}},
	{name: "partition a node", net: wire.Faults{Drop: 0.05}, event: isolateNode},
	{name: "kill a leader", net: wire.Faults{Drop: 0.05, Reorder: 0.05}, event: killLeader},
}

// isolateNode cuts a random node off the simulated network: from clients
// and from the requests other nodes forward to it. Raft, over TCP, goes on.
func isolateNode(_ context.Context, c *cluster, rng *rand.Rand) (func() error, error) {
	id := c.ids[rng.IntN(len(c.ids))]
	addr, err := netip.ParseAddrPort(c.Spec().Node(id).Client)
	if err != nil {
		return nil, err
	}
	c.net.Isolate(addr)
	return func() error { c.net.Heal(); return nil }, nil
}

// killLeader kills the leader of a random shard and restarts it on its
// data at the end.
func killLeader(ctx context.Context, c *cluster, rng *rand.Rand) (func() error, error) {
	s := c.Map().Shards[rng.IntN(len(c.Map().Shards))]
	id := c.leaderID(s.ID)
	if id == "" {
		return nil, fmt.Errorf("sim: shard %d has no leader to kill", s.ID)
	}
	if err := c.Kill(id); err != nil {
		return nil, err
	}
	return func() error {
		_, err := c.Restart(ctx, id)
		return err
	}, nil
}

// linRound is what one round of histories found under one disruption.
type linRound struct {
	histories, ops, unknown    int
	linearizable, inconclusive int
	violations                 []string // visualization files
	timeline                   []float64
}

// linSetup sizes the experiment.
type linSetup struct {
	seeds, rounds, histories, procs, keys int
	round                                 time.Duration
}

func linearizabilitySetup(cfg Config) linSetup {
	s := linSetup{seeds: cfg.seeds(5, 1), rounds: 5 * len(disruptions), histories: 10, procs: 3, keys: 4, round: 3 * time.Second}
	if cfg.Quick {
		s.rounds, s.histories, s.round = len(disruptions), 5, 2*time.Second
	}
	return s
}

// timelineStep is the width of the bars of the throughput timeline.
const timelineStep = 100 * time.Millisecond

func linearizability(ctx context.Context, cfg Config) (*Report, error) {
	set := linearizabilitySetup(cfg)
	results := make([][]linRound, len(disruptions))
	for s := 0; s < set.seeds; s++ {
		seed := cfg.Seed + int64(s)
		if err := linearizabilitySeed(ctx, cfg, set, seed, results); err != nil {
			return nil, err
		}
	}

	r := &Report{
		Experiment: "linearizability",
		Setup: fmt.Sprintf("3 nodes, 2 shards x 3 replicas; per seed %d rounds of %v, each %d histories of %d processes on %d keys "+
			"(40%% get, 30%% set, 20%% compare-and-set, 10%% delete); %d seeds",
			set.rounds, set.round, set.histories, set.procs, set.keys, set.seeds),
	}
	t := Table{Name: "linearizability", Title: "histories checked by porcupine, by disruption",
		Header: []string{"disruption", "histories", "operations", "unknown outcome", "linearizable", "not linearizable", "inconclusive"}}
	var total, bad, unsure int
	fig := Figure{Name: "linearizability-throughput", Title: "Operations completed during a round (first seed)",
		XLabel: "seconds into the round (disruption in the middle third)", YLabel: "operations per second"}
	for i, d := range disruptions {
		var sum linRound
		for j, rd := range results[i] {
			sum.histories += rd.histories
			sum.ops += rd.ops
			sum.unknown += rd.unknown
			sum.linearizable += rd.linearizable
			sum.inconclusive += rd.inconclusive
			sum.violations = append(sum.violations, rd.violations...)
			if j == 0 {
				sr := Series{Name: d.name}
				for k, v := range rd.timeline {
					sr.X = append(sr.X, float64(k)*timelineStep.Seconds())
					sr.Y = append(sr.Y, v/timelineStep.Seconds())
				}
				fig.Series = append(fig.Series, sr)
			}
		}
		total += sum.histories
		bad += len(sum.violations)
		unsure += sum.inconclusive
		t.Rows = append(t.Rows, []string{d.name, fmt.Sprint(sum.histories), fmt.Sprint(sum.ops), fmt.Sprint(sum.unknown),
			fmt.Sprint(sum.linearizable), fmt.Sprint(len(sum.violations)), fmt.Sprint(sum.inconclusive)})
		for _, v := range sum.violations {
			r.Notes = append(r.Notes, fmt.Sprintf("%s: not linearizable; porcupine's visualization is %s", d.name, v))
		}
	}
	r.Tables = append(r.Tables, t)
	r.Figures = append(r.Figures, fig)
	r.Checks = append(r.Checks,
		NewCheck("histories that are not linearizable", Estimate{Mean: float64(bad)}, 0, 0, 0,
			fmt.Sprintf("linearizability (Herlihy & Wing 1990), checked by porcupine over %d histories", total)),
		NewCheck("histories the checker could not decide", Estimate{Mean: float64(unsure)}, 0, 0, 0,
			"each history must be checked to a verdict"))
	return r, nil
}

// linearizabilitySeed runs set.rounds rounds on one cluster, the
// disruptions in turn, and adds what each found to results.
func linearizabilitySeed(ctx context.Context, cfg Config, set linSetup, seed int64, results [][]linRound) (err error) {
	c, err := startCluster(ctx, seed, 3, 2, 3, cfg.logger())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.close()) }()
	// One client in four has the defaults, and gives up on some writes in
	// a failover: their outcome is unknown, and the model must allow for
	// them taking effect at any later time.
	clients := make([]*client.Client, 4)
	for i := range clients {
		cc := historyClient
		if i == 0 {
			cc = client.Config{}
		}
		if clients[i], err = c.client(ctx, cc); err != nil {
			return err
		}
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	for round := 0; round < set.rounds; round++ {
		di := round % len(disruptions)
		d := disruptions[di]
		rd, err := linearizabilityRound(ctx, cfg, set, c, clients, d, fmt.Sprintf("s%d-r%d", seed, round), rng)
		if err != nil {
			return fmt.Errorf("seed %d, round %d (%s): %w", seed, round, d.name, err)
		}
		results[di] = append(results[di], rd)
		cfg.progress("linearizability: seed %d, round %d/%d (%s): %d histories, %d operations, %d unknown, %d not linearizable",
			seed, round+1, set.rounds, d.name, rd.histories, rd.ops, rd.unknown, len(rd.violations))
	}
	return nil
}

// linearizabilityRound runs set.histories histories at once on keys of
// their own under disruption d, then checks each.
func linearizabilityRound(ctx context.Context, cfg Config, set linSetup, c *cluster, clients []*client.Client,
	d disruption, name string, rng *rand.Rand) (linRound, error) {
	if err := c.net.SetDefaultFaults(d.net); err != nil {
		return linRound{}, err
	}
	defer c.net.SetDefaultFaults(wire.Faults{})
	histories := make([]*history, set.histories)
	runCtx, stop := context.WithTimeout(ctx, set.round)
	defer stop()
	var wg sync.WaitGroup
	for h := range histories {
		histories[h] = newHistory()
		procs := make([]*client.Client, set.procs)
		for p := range procs {
			procs[p] = clients[(h*set.procs+p)%len(clients)]
		}
		keys := make([]string, set.keys)
		for k := range keys {
			keys[k] = fmt.Sprintf("%s-h%d-k%d", name, h, k)
		}
		seed := rng.Int64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			kvWorkload(runCtx, histories[h], procs, keys, seed)
		}()
	}
	var eventErr error
	if d.event != nil {
		eventErr = disrupt(runCtx, c, d, set.round, rng)
	}
	wg.Wait()
	if eventErr != nil {
		return linRound{}, eventErr
	}
	wctx, cancel := context.WithTimeout(ctx, servertest.ReadyTimeout)
	defer cancel()
	if err := c.WaitReady(wctx); err != nil {
		return linRound{}, err
	}

	rd := linRound{histories: len(histories), timeline: make([]float64, int(set.round/timelineStep))}
	for i, h := range histories {
		for _, op := range h.ops {
			rd.ops++
			if op.Output.(kvOutput).Unknown {
				rd.unknown++
			} else if b := int(time.Duration(op.Return) / timelineStep); b < len(rd.timeline) {
				rd.timeline[b]++
			}
		}
		res, file, err := checkHistory(h, cfg.Out, fmt.Sprintf("%s-h%d", name, i), time.Minute)
		switch {
		case err != nil:
			return rd, err
		case res == porcupine.Ok:
			rd.linearizable++
		case res == porcupine.Illegal:
			rd.violations = append(rd.violations, file)
		default:
			rd.inconclusive++
		}
	}
	return rd, nil
}

// disrupt runs d's event through the middle third of a round that began
// now and lasts round.
func disrupt(ctx context.Context, c *cluster, d disruption, round time.Duration, rng *rand.Rand) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(round / 3):
	}
	end, err := d.event(context.WithoutCancel(ctx), c, rng)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-time.After(round / 3):
	}
	return end()
}

// outDir returns dir, or a new directory for an experiment's files.
func outDir(dir string) (string, error) {
	if dir != "" {
		return dir, os.MkdirAll(dir, 0o755)
	}
	return os.MkdirTemp("", "shoal-sim-")
}
