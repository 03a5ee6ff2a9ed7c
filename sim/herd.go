package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/client"
)

func init() {
	register(Experiment{
		Name: "herd",
		Summary: "dispatch on load reports refreshed every T: how least loaded, power of two and " +
			"softmin herd (queueing model, 100 servers)",
		Run: herd,
	})
}

// strategy is a picker under test; picker builds one for a run.
type strategy struct {
	name        string
	temperature float64 // a softmin's; 0 for the others
	picker      func(d dispatch, rng *rand.Rand) client.Picker
}

// Indices into herdStrategies.
const (
	stratRandom = iota
	stratLeastLoaded
	stratPowerOfTwo
)

// herdStrategies are the strategies of the grid; softmin runs at each of
// temperatures, and last at one that tracks the arrivals per server during
// a report period.
func herdStrategies(temperatures []float64) []strategy {
	s := []strategy{
		{"random", 0, func(_ dispatch, rng *rand.Rand) client.Picker { return client.NewUniform(rng) }},
		{"least loaded", 0, func(_ dispatch, rng *rand.Rand) client.Picker { return client.NewLeastLoaded(rng) }},
		{"power of two", 0, func(_ dispatch, rng *rand.Rand) client.Picker { return client.NewPowerOfTwo(rng) }},
		{"reverse softmax (original)", 0, func(_ dispatch, rng *rand.Rand) client.Picker {
			return client.NewReverseSoftmax(rng)
		}},
	}
	for _, t := range temperatures {
		s = append(s, strategy{fmt.Sprintf("softmin T=%g", t), t, func(_ dispatch, rng *rand.Rand) client.Picker {
			return softmin(t, rng)
		}})
	}
	return append(s, strategy{"softmin tracking", 0, func(d dispatch, rng *rand.Rand) client.Picker {
		return softmin(max(d.lambda*d.period, 0.05), rng)
	}})
}

func softmin(t float64, rng *rand.Rand) client.Picker {
	p, err := client.NewSoftmin(t, rng)
	if err != nil {
		panic(err) // the temperatures above are positive and finite
	}
	return p
}

// supermarket is the mean time in system of the supermarket model (n → ∞
// servers, each arrival joins the shortest of d ≥ 2 queues drawn at
// random, exponential(1) service): Σ_{i≥1} λ^((d^i−d)/(d−1)).
func supermarket(lambda float64, d int) float64 {
	var sum float64
	for di := float64(d); ; di *= float64(d) {
		term := math.Pow(lambda, (di-float64(d))/float64(d-1))
		sum += term
		if term < 1e-12 {
			return sum
		}
	}
}

// herdPlan is the size of a run of the experiment.
type herdPlan struct {
	seeds   int
	lambdas []float64
	periods []float64
	// grid holds the warm-up and measured arrivals of a grid run at each
	// load, with 100 servers.
	grid map[float64][2]int
	// twoChoices and random are the runs of the checks at T = 0 at each
	// load they check.
	twoChoices, random map[float64]dispatch
}

// gridServers is the number of servers of the grid's runs.
const gridServers = 100

func newHerdPlan(cfg *Config) herdPlan {
	p := herdPlan{
		seeds:   cfg.seeds(5, 3),
		lambdas: []float64{0.5, 0.9, 0.99},
		periods: []float64{0, 0.5, 1, 2, 5, 10, 20},
		grid:    map[float64][2]int{0.5: {10_000, 30_000}, 0.9: {40_000, 80_000}, 0.99: {50_000, 150_000}},
		twoChoices: map[float64]dispatch{
			0.9:  {servers: 1000, lambda: 0.9, warmup: 500_000, measured: 2_000_000},
			0.99: {servers: 1000, lambda: 0.99, warmup: 1_000_000, measured: 4_000_000},
		},
		random: map[float64]dispatch{
			0.5: {servers: gridServers, lambda: 0.5, warmup: 20_000, measured: 400_000},
			0.9: {servers: gridServers, lambda: 0.9, warmup: 200_000, measured: 2_000_000},
		},
	}
	if cfg.Quick {
		p.periods = []float64{0, 2, 20}
		// The grid's runs are nine tenths of the work. Of the checks they
		// feed only the herding one (least loaded at T=20, λ=0.9), whose
		// mean sits several times above its floor, random's mean; the
		// rest is the table, the figures and the notes.
		p.grid = map[float64][2]int{0.5: {2_500, 10_000}, 0.9: {5_000, 20_000}, 0.99: {10_000, 30_000}}
		for _, m := range []map[float64]dispatch{p.twoChoices, p.random} {
			for l, d := range m {
				d.measured /= 2
				m[l] = d
			}
		}
	}
	return p
}

// herdJob is one run: a model, a strategy and a seed.
type herdJob struct {
	label    string // runs with the same label make one progress line
	model    dispatch
	strategy strategy
	seed     uint64
	out      *float64
}

func (j herdJob) run() float64 {
	sim := rand.New(rand.NewPCG(j.seed, 1))
	pick := rand.New(rand.NewPCG(j.seed, 2))
	return j.model.run(j.strategy.picker(j.model, pick), sim)
}

// runHerdJobs runs the jobs on every CPU, checking ctx between runs.
func runHerdJobs(ctx context.Context, cfg *Config, jobs []herdJob) error {
	start := time.Now()
	left := map[string]int{}
	for _, j := range jobs {
		left[j.label]++
	}
	work, done := make(chan int, len(jobs)), make(chan int)
	for i := range jobs {
		work <- i
	}
	close(work)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range work {
				if ctx.Err() != nil {
					return
				}
				*jobs[i].out = jobs[i].run()
				done <- i
			}
		})
	}
	go func() {
		wg.Wait()
		close(done)
	}()
	finished := 0
	for i := range done {
		finished++
		if left[jobs[i].label]--; left[jobs[i].label] == 0 {
			cfg.progress("herd: %s done (%d of %d runs, %.0fs)", jobs[i].label, finished, len(jobs),
				time.Since(start).Seconds())
		}
	}
	return ctx.Err()
}

func herd(ctx context.Context, cfg Config) (*Report, error) {
	plan := newHerdPlan(&cfg)
	strategies := herdStrategies([]float64{0.25, 1, 4})
	samples := func() []float64 { return make([]float64, plan.seeds) }
	var jobs []herdJob
	add := func(label string, d dispatch, s strategy, out []float64) {
		for i := range out {
			jobs = append(jobs, herdJob{label, d, s, uint64(cfg.Seed) + uint64(i), &out[i]})
		}
	}

	// The checks' runs first: they are the longest.
	twoChoices, random := map[float64][]float64{}, map[float64][]float64{}
	for l, d := range plan.twoChoices {
		twoChoices[l] = samples()
		add(fmt.Sprintf("check: power of two λ=%g n=%d", l, d.servers), d, strategies[stratPowerOfTwo], twoChoices[l])
	}
	for l, d := range plan.random {
		random[l] = samples()
		add(fmt.Sprintf("check: random λ=%g n=%d", l, d.servers), d, strategies[stratRandom], random[l])
	}
	// grid[λ][T][strategy] holds a sample per seed.
	grid := map[float64]map[float64][][]float64{}
	for i := len(plan.lambdas) - 1; i >= 0; i-- {
		l := plan.lambdas[i]
		grid[l] = map[float64][][]float64{}
		for _, t := range plan.periods {
			d := dispatch{servers: gridServers, lambda: l, period: t,
				warmup: plan.grid[l][0], measured: plan.grid[l][1]}
			for _, s := range strategies {
				out := samples()
				grid[l][t] = append(grid[l][t], out)
				add(fmt.Sprintf("λ=%g T=%g", l, t), d, s, out)
			}
		}
	}
	if err := runHerdJobs(ctx, &cfg, jobs); err != nil {
		return nil, err
	}

	r := &Report{
		Experiment: "herd",
		Setup: fmt.Sprintf("%d FIFO servers with exponential(1) service times; Poisson arrivals at rate λ·n, "+
			"each sent where a client picker chooses on the loads (jobs queued or in service) the servers "+
			"last reported, all refreshed every T; per run %s warm-up and %s measured arrivals at λ = %s; "+
			"%d seeds, each giving every strategy the same arrivals and service times",
			gridServers, arrivals(plan, 0), arrivals(plan, 1), joinFloats(plan.lambdas, ", "), plan.seeds),
	}
	table := Table{
		Name:   "herd",
		Title:  fmt.Sprintf("mean time in system (mean ± 95%% CI over %d seeds), %d servers", plan.seeds, gridServers),
		Header: []string{"λ", "T", "strategy", "mean time in system", "± CI"},
	}
	for _, l := range plan.lambdas {
		fig := Figure{
			Name:   fmt.Sprintf("herd-lambda-%g", l),
			Title:  fmt.Sprintf("λ = %g, %d servers: mean time in system against the report period", l, gridServers),
			XLabel: "report period T (mean service times)",
			YLabel: "mean time in system",
			LogY:   true,
		}
		for si, s := range strategies {
			series := Series{Name: s.name}
			for _, t := range plan.periods {
				e := Mean(grid[l][t][si])
				series.X = append(series.X, t)
				series.Y = append(series.Y, e.Mean)
				series.Err = append(series.Err, e.HalfWidth)
				table.Rows = append(table.Rows, []string{fmt.Sprint(l), fmt.Sprint(t), s.name, num(e.Mean), num(e.HalfWidth)})
			}
			fig.Series = append(fig.Series, series)
		}
		r.Figures = append(r.Figures, fig)
	}
	r.Tables = append(r.Tables, table)

	for _, c := range []struct{ lambda, band float64 }{{0.9, 0.05}, {0.99, 0.10}} {
		l, band, d := c.lambda, c.band, plan.twoChoices[c.lambda]
		want := supermarket(l, 2)
		r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("power of two, T=0, λ=%g", l), Mean(twoChoices[l]),
			want, want*(1-band), want*(1+band),
			fmt.Sprintf("supermarket model, n→∞: Σ λ^(2^i−2), ±%.0f%%; measured with n=%d servers, "+
				"%s warm-up and %s measured arrivals per seed, where finite n sits slightly above",
				band*100, d.servers, count(d.warmup), count(d.measured))))
	}
	for _, l := range []float64{0.5, 0.9} {
		d := plan.random[l]
		want := 1 / (1 - l)
		r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("random, λ=%g", l), Mean(random[l]),
			want, want*0.95, want*1.05,
			fmt.Sprintf("M/M/1, 1/(1−λ), ±5%%: random splits a Poisson stream into Poisson streams; "+
				"n=%d servers, %s warm-up and %s measured arrivals per seed",
				d.servers, count(d.warmup), count(d.measured))))
	}
	last := plan.periods[len(plan.periods)-1]
	rnd := Mean(random[0.9])
	r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("herding: least loaded, T=%g, λ=0.9", last),
		Mean(grid[0.9][last][stratLeastLoaded]), rnd.Mean, rnd.Mean, math.Inf(1),
		fmt.Sprintf("band: above random's mean (%s ± %s, the M/M/1 check's runs): until the next report "+
			"every arrival goes to the servers that looked least loaded; the grid's runs", num(rnd.Mean), num(rnd.HalfWidth))))

	for _, l := range plan.lambdas {
		r.Notes = append(r.Notes, trackingNote(l, plan.periods, grid[l], len(strategies)-1))
	}
	if e := Mean(grid[0.99][0][stratRandom]); e.Mean+e.HalfWidth < 100 {
		length := float64(plan.grid[0.99][0]+plan.grid[0.99][1]) / (0.99 * gridServers)
		r.Notes = append(r.Notes, fmt.Sprintf("at λ=0.99 random measured %s ± %s against M/M/1's 100: "+
			"a run from empty lasts %s service times, short of the relaxation time of an M/M/1 queue at "+
			"ρ=0.99 (1/(1−√ρ)² ≈ 4·10⁴), so there the means of random and of the strategies whose queues "+
			"grow as long are underestimates", num(e.Mean), num(e.HalfWidth), count(int(length))))
	}
	return r, nil
}

// trackingNote says how softmin tracking compared with power of two at
// load l at every report period, by their confidence intervals.
func trackingNote(l float64, periods []float64, grid map[float64][][]float64, track int) string {
	var parts, worse []string
	for _, t := range periods {
		a, b := Mean(grid[t][track]), Mean(grid[t][stratPowerOfTwo])
		verdict := "matched"
		switch {
		case a.Mean+a.HalfWidth < b.Mean-b.HalfWidth:
			verdict = "beat"
		case a.Mean-a.HalfWidth > b.Mean+b.HalfWidth:
			verdict = "worse"
			worse = append(worse, fmt.Sprint(t))
		}
		parts = append(parts, fmt.Sprintf("T=%g %s ± %s vs %s ± %s (%s)", t,
			num(a.Mean), num(a.HalfWidth), num(b.Mean), num(b.HalfWidth), verdict))
	}
	summary := "matched (within the confidence intervals) or beat it at every T"
	if len(worse) > 0 {
		summary = "did not match it at T=" + strings.Join(worse, ", ")
	}
	return fmt.Sprintf("λ=%g: softmin tracking against power of two, %s: %s", l, summary, strings.Join(parts, "; "))
}

// arrivals lists the warm-up (i = 0) or measured (i = 1) arrivals of a grid
// run at each load.
func arrivals(p herdPlan, i int) string {
	var s []string
	for _, l := range p.lambdas {
		s = append(s, count(p.grid[l][i]))
	}
	return strings.Join(s, ", ")
}

func joinFloats(xs []float64, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, sep)
}

// count writes n with a thousands separator.
func count(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
