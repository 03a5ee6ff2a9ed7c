package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/wire"
)

func init() {
	register(Experiment{
		Name: "balance",
		Summary: "5 real nodes, one 5x slower or stalling, stale or linearizable gets at 60% of capacity, heartbeats lost: " +
			"latency, shares and Jain's index per picker, with and without the client's in-flight counts",
		Run: balance,
	})
}

// serviceQueue makes a node's client transport a FIFO single server: the
// node reads each query a service time after the one before it, or after
// its arrival if the server was idle, so a node with a longer service time
// holds more requests at once, as a slow machine does. They wait in its
// socket, and the node knows it from their arrival times. A stall holds
// every query and everything the node sends, heartbeats included, until it
// ends.
type serviceQueue struct {
	wire.Transport
	service time.Duration

	mu       sync.Mutex
	free     time.Time // when the queries read so far have all been served
	stallEnd time.Time
	arrivals gaps // between the queries' arrivals

	served atomic.Int64 // queries read
	// sojourn sums the queries' nanoseconds from arrival to the end of
	// their service as scheduled, the M/D/1 model's time in system; late,
	// how much later than scheduled the node got them.
	sojourn, late atomic.Int64
}

// Receive hands the node the next datagram, a query at the end of its
// service.
func (q *serviceQueue) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	n, from, arrived, err := q.Transport.Receive(buf)
	if err != nil {
		return n, from, arrived, err
	}
	if m, err := wire.Decode(buf[:n]); err != nil || m.Type != wire.TypeQuery {
		return n, from, arrived, nil
	}
	q.mu.Lock()
	q.arrivals.add(arrived)
	start := arrived
	for _, t := range []time.Time{q.free, q.stallEnd} {
		if t.After(start) {
			start = t
		}
	}
	at := start.Add(q.service)
	q.free = at
	q.mu.Unlock()
	at = q.holdUntil(at)
	q.served.Add(1)
	q.sojourn.Add(int64(at.Sub(arrived)))
	q.late.Add(int64(time.Since(at)))
	return n, from, arrived, nil
}

// Send sends b once any stall is over.
func (q *serviceQueue) Send(b []byte, to netip.AddrPort) error {
	q.holdUntil(time.Now())
	return q.Transport.Send(b, to)
}

// holdUntil sleeps until at, and past it to the end of any stall that
// began meanwhile. It returns the time it slept until.
func (q *serviceQueue) holdUntil(at time.Time) time.Time {
	for {
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		q.mu.Lock()
		end := q.stallEnd
		q.mu.Unlock()
		if !end.After(at) {
			return at
		}
		at = end
	}
}

// stall holds the node's datagrams for d from now.
func (q *serviceQueue) stall(d time.Duration) {
	q.mu.Lock()
	q.stallEnd = time.Now().Add(d)
	q.mu.Unlock()
}

// gaps sums the gaps between successive arrivals, for their mean and
// variance.
type gaps struct {
	last       time.Time
	n          int64
	sum, sumSq float64 // seconds, seconds²
}

func (g *gaps) add(at time.Time) {
	if !g.last.IsZero() && !at.Before(g.last) {
		d := at.Sub(g.last).Seconds()
		g.n, g.sum, g.sumSq = g.n+1, g.sum+d, g.sumSq+d*d
	}
	if at.After(g.last) {
		g.last = at
	}
}

// since returns the gaps added after before was taken.
func (g gaps) since(before gaps) gaps {
	return gaps{n: g.n - before.n, sum: g.sum - before.sum, sumSq: g.sumSq - before.sumSq}
}

// gdOne is the mean time in system of a queue with service time s whose
// arrivals came with these gaps (kingmanTime, where ρ is s over the mean
// gap and c² the gaps' squared coefficient of variation). For Poisson
// arrivals (c² = 1) it is Pollaczek–Khinchine's exact M/D/1 time. It also
// reports ρ and c²; ok is false with too few gaps, or at ρ ≥ 1, where the
// queue has no steady state.
func (g gaps) gdOne(s time.Duration) (w time.Duration, rho, c2 float64, ok bool) {
	if g.n < 2 || g.sum <= 0 {
		return 0, 0, 0, false
	}
	mean := g.sum / float64(g.n)
	c2 = (g.sumSq/float64(g.n) - mean*mean) / (mean * mean)
	rho = s.Seconds() / mean
	if rho >= 1 {
		return 0, rho, c2, false
	}
	return kingmanTime(s, rho, c2), rho, c2, true
}

func (q *serviceQueue) gaps() gaps {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.arrivals
}

// idleAt is when the node will have been served the queries it has read.
func (q *serviceQueue) idleAt() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stallEnd.After(q.free) {
		return q.stallEnd
	}
	return q.free
}

// heartbeatLoss drops each heartbeat a client receives with probability p.
// Replies still carry the nodes' loads.
type heartbeatLoss struct {
	wire.Transport
	p   float64
	rng *rand.Rand // only the client's one receiving goroutine draws
}

func (h *heartbeatLoss) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	for {
		n, from, arrived, err := h.Transport.Receive(buf)
		if err != nil || h.p == 0 {
			return n, from, arrived, err
		}
		if m, err := wire.Decode(buf[:n]); err == nil && m.Type == wire.TypeHeartbeat && h.rng.Float64() < h.p {
			continue
		}
		return n, from, arrived, nil
	}
}

// balanceStrategy is a picker and whether the client counts its own
// requests in flight.
type balanceStrategy struct {
	name        string
	temperature float64 // a softmin's; 0 for the others
	picker      func(rng *rand.Rand) client.Picker
	inFlight    bool
}

func (s balanceStrategy) label() string {
	if s.inFlight {
		return s.name + " + in flight"
	}
	return s.name
}

// balanceStrategies are herd's strategies but the tracking softmin (its
// report period has no counterpart here: every reply carries a load), each
// with and without the client's in-flight counts, random once.
func balanceStrategies(temperatures []float64) []balanceStrategy {
	var out []balanceStrategy
	for _, s := range herdStrategies(temperatures) {
		if s.name == "softmin tracking" {
			continue
		}
		pick := func(rng *rand.Rand) client.Picker { return s.picker(dispatch{}, rng) }
		out = append(out, balanceStrategy{s.name, s.temperature, pick, false})
		if s.name != "random" {
			out = append(out, balanceStrategy{s.name, s.temperature, pick, true})
		}
	}
	return out
}

// defaultStrategy is the label of the client's default: softmin at
// client.DefaultTemperature, counting its requests in flight.
func defaultStrategy() string {
	return balanceStrategy{name: fmt.Sprintf("softmin T=%g", client.DefaultTemperature), inFlight: true}.label()
}

// balanceScenario is the nodes' speeds and what happens during a run.
type balanceScenario struct {
	name    string
	service []time.Duration // per node
	// stall, if positive, stalls the last node that long, from a sixth of
	// the way into the measured part of the run.
	stall time.Duration
	// linearizable sends linearizable gets rather than stale ones: a
	// follower asks its shard's leader for a read index and serves them
	// itself, so the picker's choice moves their work too.
	linearizable bool
}

// capacity is the requests a second the nodes serve together.
func (s balanceScenario) capacity() float64 {
	var c float64
	for _, d := range s.service {
		c += 1 / d.Seconds()
	}
	return c
}

// balanceRun is what one run measured.
type balanceRun struct {
	lat []time.Duration // of the measured requests, the failed ones until they failed
	// p50, p99 and p999 are percentiles of lat.
	p50, p99, p999 time.Duration
	failed         int
	served         []int64         // queries served per node while measuring
	sojourn        []time.Duration // their total time in the nodes' queues
	arrivals       []gaps          // between the queries' arrivals, per node
	late           time.Duration   // their total lateness past their schedule
	window         time.Duration
	// followerReads and relayedReads are the nodes' counters of the same
	// names over the run (server.Counters): batches of linearizable reads
	// followers served themselves, and those leaders answered for them.
	followerReads, relayedReads uint64
}

// kingman is the mean time in the nodes' queues that Kingman's formula
// gives for the arrivals each node saw, weighted by the queries each
// served, as meanSojourn weighs them, with the weighted ρ and c². ok is
// false if a node's arrivals give no steady state.
func (r balanceRun) kingman(s time.Duration) (w time.Duration, rho, c2 float64, ok bool) {
	var sum, rsum, csum float64
	for i, g := range r.arrivals {
		wi, ri, ci, ok := g.gdOne(s)
		if !ok {
			return 0, ri, ci, false
		}
		n := float64(r.served[i])
		sum, rsum, csum = sum+n*float64(wi), rsum+n*ri, csum+n*ci
	}
	q := float64(max(r.queries(), 1))
	return time.Duration(sum / q), rsum / q, csum / q, true
}

// meanSojourn is the mean time of the queries in the nodes' queues.
func (r balanceRun) meanSojourn() time.Duration {
	var sum time.Duration
	for _, s := range r.sojourn {
		sum += s
	}
	return sum / time.Duration(max(r.queries(), 1))
}

// queries counts the queries the nodes served while measuring.
func (r balanceRun) queries() int64 {
	var n int64
	for _, s := range r.served {
		n += s
	}
	return n
}

func (r balanceRun) utilization(s balanceScenario) []float64 {
	u := make([]float64, len(r.served))
	for i, n := range r.served {
		u[i] = float64(n) * s.service[i].Seconds() / r.window.Seconds()
	}
	return u
}

func (r balanceRun) share(i int) float64 {
	return float64(r.served[i]) / float64(max(r.queries(), 1))
}

func (r balanceRun) meanLatency() time.Duration {
	var sum time.Duration
	for _, l := range r.lat {
		sum += l
	}
	return sum / time.Duration(max(len(r.lat), 1))
}

// jain is Jain's fairness index of x: (Σx)² / (n·Σx²), 1 when all are equal
// and 1/n when one has everything.
func jain(x []float64) float64 {
	var s, sq float64
	for _, v := range x {
		s += v
		sq += v * v
	}
	if sq == 0 {
		return 1
	}
	return s * s / (float64(len(x)) * sq)
}

// mdOne is the mean time in system of an M/D/1 queue with service time s at
// utilization rho (Pollaczek–Khinchine): Kingman's time with Poisson
// arrivals.
func mdOne(s time.Duration, rho float64) time.Duration { return kingmanTime(s, rho, 1) }

// kingmanTime is the mean time in system of a queue with deterministic
// service s at utilization rho whose arrivals' gaps have the squared
// coefficient of variation c2, by Kingman's formula: s + s·ρ/(1−ρ)·c²/2.
func kingmanTime(s time.Duration, rho, c2 float64) time.Duration {
	return s + time.Duration(float64(s)*rho/(1-rho)*c2/2)
}

// balanceSetup sizes the experiment.
type balanceSetup struct {
	seeds                     int
	nodes                     int
	fast, slow                time.Duration
	utilization               float64 // offered load over capacity
	clients                   int
	warm, measure             time.Duration
	stall                     time.Duration
	losses                    []float64
	strategies                []balanceStrategy
	scenarios                 []balanceScenario
	equal                     balanceScenario // the calibration run's
	slowIdx, stallIdx, linIdx int             // into scenarios
}

func newBalanceSetup(cfg *Config) balanceSetup {
	s := balanceSetup{
		seeds: cfg.seeds(3, 1), nodes: 5, fast: 2 * time.Millisecond, slow: 10 * time.Millisecond,
		utilization: 0.6, clients: 4, warm: time.Second, measure: 3 * time.Second, stall: 1500 * time.Millisecond,
		losses:     []float64{0, 0.1, 0.3},
		strategies: balanceStrategies([]float64{0.25, 1, 4}),
	}
	if cfg.Quick {
		s.warm, s.measure, s.stall, s.losses = 500*time.Millisecond, 1500*time.Millisecond, 750*time.Millisecond, []float64{0}
		// The strategies the checks hold to their bands; the others are
		// the full run's comparison.
		keep := []string{"random", defaultStrategy()}
		s.strategies = slices.DeleteFunc(s.strategies, func(b balanceStrategy) bool { return !slices.Contains(keep, b.label()) })
	}
	speeds := func(last time.Duration) []time.Duration {
		d := make([]time.Duration, s.nodes)
		for i := range d {
			d[i] = s.fast
		}
		d[len(d)-1] = last
		return d
	}
	s.equal = balanceScenario{name: "equal", service: speeds(s.fast)}
	s.scenarios = []balanceScenario{
		{name: "slow", service: speeds(s.slow)},
		{name: "stall", service: speeds(s.fast), stall: s.stall},
		{name: "slow, linearizable", service: speeds(s.slow), linearizable: true},
	}
	s.slowIdx, s.stallIdx, s.linIdx = 0, 1, 2
	return s
}

// balanceCluster is a cluster whose nodes serve through service queues.
type balanceCluster struct {
	*cluster
	queues []*serviceQueue // by node, in id order
}

func startBalanceCluster(ctx context.Context, cfg *Config, seed int64, nodes int) (*balanceCluster, error) {
	bc := &balanceCluster{}
	byID := map[string]*serviceQueue{}
	c, err := startWrapped(ctx, seed, nodes, nodes, 3, cfg.logger(), func(id string, t wire.Transport) wire.Transport {
		q := &serviceQueue{Transport: t}
		byID[id] = q
		return q
	})
	if err != nil {
		return nil, err
	}
	bc.cluster = c
	for _, id := range c.ids {
		bc.queues = append(bc.queues, byID[id])
	}
	return bc, nil
}

// run drives one run: clients of one strategy sending gets (stale unless
// sc.linearizable) as a Poisson stream at rate, over heartbeats lost with
// probability loss.
func (bc *balanceCluster) run(ctx context.Context, sc balanceScenario, st balanceStrategy, loss, rate float64,
	setup balanceSetup, seed uint64) (balanceRun, error) {
	// The last run's backlog drains at the last run's speeds, and the
	// loads the nodes report fall back, before this one starts. A backlog
	// waits unread in a node's socket, but while one is left the node is
	// serving the query before it, so its queue is not yet idle.
	for deadline := time.Now().Add(20 * time.Second); ; {
		settled := true
		for i, id := range bc.ids {
			settled = settled && bc.Node(id).Status().Activity < 50 && !bc.queues[i].idleAt().After(time.Now())
		}
		if settled {
			break
		}
		if time.Now().After(deadline) {
			return balanceRun{}, errors.New("the nodes' queues and loads did not settle within 20 s of the last run")
		}
		select {
		case <-ctx.Done():
			return balanceRun{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	for i, q := range bc.queues {
		q.mu.Lock()
		q.service = sc.service[i]
		q.mu.Unlock()
	}
	var clients []*client.Client
	defer func() {
		for _, c := range clients {
			c.Close(context.Background())
		}
	}()
	for i := 0; i < setup.clients; i++ {
		cfg := client.Config{Picker: st.picker(rand.New(rand.NewPCG(seed, uint64(10+i)))), IgnoreInFlight: !st.inFlight}
		c, err := bc.clientVia(ctx, cfg, func(t wire.Transport) wire.Transport {
			return &heartbeatLoss{Transport: t, p: loss, rng: rand.New(rand.NewPCG(seed, uint64(20+i)))}
		})
		if err != nil {
			return balanceRun{}, err
		}
		clients = append(clients, c)
	}

	rng := rand.New(rand.NewPCG(seed, 1))
	total := setup.warm + setup.measure
	start := time.Now()
	var (
		mu                    sync.Mutex
		out                   balanceRun
		wg                    sync.WaitGroup
		before, beforeSojourn []int64
		beforeGaps            []gaps
		beforeLate            int64
		measureStart          time.Time
	)
	var opts []client.ReadOption
	if !sc.linearizable {
		opts = append(opts, client.Stale())
	}
	counters := func() (served, relayed uint64) {
		for _, id := range bc.ids {
			c := bc.Node(id).Counters()
			served, relayed = served+c.FollowerReads, relayed+c.RelayedReads
		}
		return served, relayed
	}
	var beforeServed, beforeRelayed uint64
	stallAt := setup.warm + setup.measure/6
	stalled := sc.stall <= 0
	for k, at := 0, time.Duration(0); ; k++ {
		at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
		if at >= total {
			break
		}
		if d := time.Until(start.Add(at)); d > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return balanceRun{}, ctx.Err()
			case <-time.After(d):
			}
		}
		if before == nil && at >= setup.warm {
			measureStart = time.Now()
			for _, q := range bc.queues {
				before = append(before, q.served.Load())
				beforeSojourn = append(beforeSojourn, q.sojourn.Load())
				beforeGaps = append(beforeGaps, q.gaps())
				beforeLate += q.late.Load()
			}
			beforeServed, beforeRelayed = counters()
		}
		if !stalled && at >= stallAt {
			bc.queues[len(bc.queues)-1].stall(sc.stall)
			stalled = true
		}
		c, key, measured := clients[k%len(clients)], fmt.Sprintf("k%08d", rng.IntN(1000)), at >= setup.warm
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := c.Get(rctx, key, opts...)
			took := time.Since(start.Add(at))
			if !measured {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			// A failed request counts with its time to fail.
			if err != nil && !errors.Is(err, client.ErrNotFound) {
				out.failed++
			}
			out.lat = append(out.lat, took)
		})
	}
	if before == nil {
		wg.Wait()
		return balanceRun{}, errors.New("no request arrived after the warm-up")
	}
	out.window = time.Since(measureStart)
	out.late -= time.Duration(beforeLate)
	for i, q := range bc.queues {
		out.served = append(out.served, q.served.Load()-before[i])
		out.sojourn = append(out.sojourn, time.Duration(q.sojourn.Load()-beforeSojourn[i]))
		out.arrivals = append(out.arrivals, q.gaps().since(beforeGaps[i]))
		out.late += time.Duration(q.late.Load())
	}
	wg.Wait()
	served, relayed := counters()
	out.followerReads, out.relayedReads = served-beforeServed, relayed-beforeRelayed
	pct := Percentiles(out.lat, 50, 99, 99.9)
	out.p50, out.p99, out.p999 = pct[0], pct[1], pct[2]
	return out, ctx.Err()
}

// balanceKey identifies a cell of the grid.
type balanceKey struct {
	scenario, strategy string
	loss               float64
}

func balance(ctx context.Context, cfg Config) (*Report, error) {
	setup := newBalanceSetup(&cfg)
	runs := map[balanceKey][]balanceRun{}
	random := setup.strategies[slices.IndexFunc(setup.strategies, func(s balanceStrategy) bool { return s.name == "random" })]
	for s := 0; s < setup.seeds; s++ {
		seed := cfg.Seed + int64(s)
		bc, err := startBalanceCluster(ctx, &cfg, seed, setup.nodes)
		if err != nil {
			return nil, err
		}
		do := func(sc balanceScenario, st balanceStrategy, loss float64) error {
			rate := setup.utilization * sc.capacity()
			began := time.Now()
			r, err := bc.run(ctx, sc, st, loss, rate, setup, uint64(seed))
			if err != nil {
				return fmt.Errorf("seed %d, %s, %s, heartbeat loss %g: %w", seed, sc.name, st.label(), loss, err)
			}
			k := balanceKey{sc.name, st.label(), loss}
			runs[k] = append(runs[k], r)
			cfg.progress("balance: seed %d, %s, heartbeat loss %g%%, %s: p99 %v, last node's share %.3f, %d failed (%.1fs)",
				seed, sc.name, loss*100, st.label(), r.p99.Round(10*time.Microsecond),
				r.share(len(r.served)-1), r.failed, time.Since(began).Seconds())
			return nil
		}
		err = do(setup.equal, random, 0)
		for _, sc := range setup.scenarios {
			for _, loss := range setup.losses {
				for _, st := range setup.strategies {
					if err == nil {
						err = do(sc, st, loss)
					}
				}
			}
		}
		if err := errors.Join(err, bc.close()); err != nil {
			return nil, err
		}
	}
	return balanceReport(setup, runs), nil
}

// balanceReport turns the runs into tables, figures and checks.
func balanceReport(setup balanceSetup, runs map[balanceKey][]balanceRun) *Report {
	r := &Report{
		Experiment: "balance",
		Setup: fmt.Sprintf("%d real nodes (%d shards of 3 replicas; a get may go to any replica of its key's shard), each a FIFO server "+
			"of the queries it reads: service %v, the last node %v in \"slow\" and \"slow, linearizable\", all %v in \"stall\" where the last node "+
			"stalls for %v; %d clients send a Poisson stream of gets, stale but in \"slow, linearizable\", at %.0f%% of capacity; "+
			"heartbeats lost at %s; %v warm-up, %v measured per run; %d seeds",
			setup.nodes, setup.nodes, setup.fast, setup.slow, setup.fast, setup.stall, setup.clients,
			setup.utilization*100, percents(setup.losses), setup.warm, setup.measure, setup.seeds),
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	stat := func(k balanceKey, f func(balanceRun) float64) Estimate {
		var x []float64
		for _, run := range runs[k] {
			x = append(x, f(run))
		}
		return Mean(x)
	}
	last := setup.nodes - 1
	table := Table{
		Name:  "balance",
		Title: fmt.Sprintf("latency of gets (ms, mean over %d seeds), the last node's share, Jain's index of utilizations", setup.seeds),
		Header: []string{"scenario", "heartbeat loss", "strategy", "p50", "p99", "p99.9", "± p99 CI",
			"mean in queue", "last node's share", "Jain", "failed"},
	}
	for _, sc := range setup.scenarios {
		for _, st := range setup.strategies {
			for _, loss := range setup.losses {
				k := balanceKey{sc.name, st.label(), loss}
				p99 := stat(k, func(b balanceRun) float64 { return ms(b.p99) })
				table.Rows = append(table.Rows, []string{sc.name, fmt.Sprintf("%g%%", loss*100), st.label(),
					num(stat(k, func(b balanceRun) float64 { return ms(b.p50) }).Mean),
					num(p99.Mean), num(stat(k, func(b balanceRun) float64 { return ms(b.p999) }).Mean),
					num(p99.HalfWidth),
					num(stat(k, func(b balanceRun) float64 { return ms(b.meanSojourn()) }).Mean),
					num(stat(k, func(b balanceRun) float64 { return b.share(last) }).Mean),
					num(stat(k, func(b balanceRun) float64 { return jain(b.utilization(sc)) }).Mean),
					num(stat(k, func(b balanceRun) float64 { return float64(b.failed) }).Mean)})
			}
		}
		r.Figures = append(r.Figures, balanceFigure(setup, sc, func(st balanceStrategy) float64 {
			return stat(balanceKey{sc.name, st.label(), 0}, func(b balanceRun) float64 { return ms(b.p99) }).Mean
		}))
	}
	r.Tables = append(r.Tables, table)

	// Calibration: random over equal nodes splits the Poisson stream into
	// Poisson streams, each node an M/D/1 queue. The stream is Poisson as
	// sent; on a busy machine the sender's late timers bunch it up. So one
	// check holds the queues to the time Kingman's formula gives for the
	// arrivals each node saw (M/D/1's when they are Poisson), and another
	// holds those arrivals near the Poisson stream at ρ they should be.
	eq := balanceKey{"equal", "random", 0}
	sojourn := stat(eq, func(b balanceRun) float64 { return ms(b.meanSojourn()) })
	var want, rho, c2 []float64
	steady := true
	for _, b := range runs[eq] {
		w, rh, c, ok := b.kingman(setup.fast)
		steady = steady && ok
		want, rho, c2 = append(want, ms(w)), append(rho, rh), append(c2, c)
	}
	if !steady {
		r.Checks = append(r.Checks, Check{Name: "equal nodes, random: the arrivals at every node leave it a steady state",
			Source: fmt.Sprintf("ρ < 1 at each node; measured ρ %v", rho)})
	} else {
		w := Mean(want).Mean
		r.Checks = append(r.Checks, NewCheck("equal nodes, random: mean time in a node's queue (ms)",
			sojourn, w, w*0.9, w*1.1,
			fmt.Sprintf("Kingman's s + s·ρ/(1−ρ)·c²/2 at the arrivals each node saw, ±10%%; M/D/1 at ρ=%g, s=%v "+
				"(Pollaczek–Khinchine, c²=1) is %s ms", setup.utilization, setup.fast,
				num(ms(mdOne(setup.fast, setup.utilization))))))
	}
	r.Checks = append(r.Checks, NewCheck("equal nodes, random: ρ of the arrivals at a node", Mean(rho),
		setup.utilization, setup.utilization*0.9, setup.utilization*1.1, "the offered load, ±10%"))
	r.Checks = append(r.Checks, NewCheck("equal nodes, random: c² of the gaps between arrivals at a node", Mean(c2),
		1, 0.7, 1.5, "1 for a Poisson stream; a sender on a busy machine bunches it somewhat"))
	overhead := stat(eq, func(b balanceRun) float64 { return ms(b.meanLatency() - b.meanSojourn()) })
	late := stat(eq, func(b balanceRun) float64 { return ms(b.late / time.Duration(max(b.queries(), 1))) })
	r.Notes = append(r.Notes, fmt.Sprintf("the clients' mean latency exceeds the queries' mean time in the "+
		"nodes' queues by %s ± %s ms (equal nodes, random): the client, the simulated network, the node's "+
		"own work, and the timers of the service queues, which handed queries to the nodes %s ± %s ms after their time "+
		"on average", num(overhead.Mean), num(overhead.HalfWidth), num(late.Mean), num(late.HalfWidth)))

	slow := setup.scenarios[setup.slowIdx]
	offered := setup.utilization * slow.capacity() / float64(setup.nodes) * setup.slow.Seconds()
	r.Checks = append(r.Checks, NewCheck("slow node, random: its utilization",
		stat(balanceKey{slow.name, "random", 0}, func(b balanceRun) float64 { return b.utilization(slow)[last] }),
		1, 0.9, 1.02,
		fmt.Sprintf("random offers it a fifth of the stream, %.2f times what it serves: it saturates", offered)))

	def := balanceKey{slow.name, defaultStrategy(), 0}
	r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("slow node, %s (the default): its utilization", defaultStrategy()),
		stat(def, func(b balanceRun) float64 { return b.utilization(slow)[last] }),
		setup.utilization, 0.3, 0.97,
		fmt.Sprintf("used but below saturation, where random drives it: at %.0f%% of the capacity every node "+
			"can be stable, and a picker that sees requests in progress must find the slow node without being "+
			"told, yet not shun it (a capacity-proportional split would load it to %.0f%%); band 0.3 to 0.97",
			setup.utilization*100, setup.utilization*100)))
	lin := setup.scenarios[setup.linIdx]
	linDef := balanceKey{lin.name, defaultStrategy(), 0}
	r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("slow node, linearizable gets, %s (the default): its utilization", defaultStrategy()),
		stat(linDef, func(b balanceRun) float64 { return b.utilization(lin)[last] }),
		setup.utilization, 0.3, 0.97,
		"as for stale gets: a linearizable get is served by the replica it reaches, which asks its shard's "+
			"leader only for a read index, so the picker moves its work; band 0.3 to 0.97"))
	r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("slow node, linearizable gets, %s: share of followers' read batches they served themselves", defaultStrategy()),
		stat(linDef, func(b balanceRun) float64 {
			return float64(b.followerReads) / float64(max(b.followerReads+b.relayedReads, 1))
		}),
		1, 0.95, 1,
		"with no writes a follower has always applied the leader's read index, so it never takes the leader's answers"))
	stall := setup.scenarios[setup.stallIdx]
	r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("stall, %s (the default): failed requests per run", defaultStrategy()),
		stat(balanceKey{stall.name, defaultStrategy(), 0}, func(b balanceRun) float64 { return float64(b.failed) }),
		0, 0, 0,
		fmt.Sprintf("none: the stall (%v) outlasts the attempt timeout many times over, so each request's "+
			"later attempts go to the other replicas", stall.stall)))

	// An oracle that knows the capacities splits the stream in proportion:
	// every node an M/D/1 queue at the same utilization.
	var oracle float64
	for _, s := range slow.service {
		oracle += ms(mdOne(s, setup.utilization)) / s.Seconds() / slow.capacity()
	}
	got := stat(def, func(b balanceRun) float64 { return ms(b.meanSojourn()) })
	share, capShare := stat(def, func(b balanceRun) float64 { return b.share(last) }), 1/setup.slow.Seconds()/slow.capacity()
	why := ""
	if share.Mean > capShare {
		why = ": balancing requests in progress sends a slower node more than its capacity share, " +
			"since the same queue there is a longer wait"
	}
	r.Notes = append(r.Notes, fmt.Sprintf("slow node, %s (the default), no heartbeat loss: mean time in a "+
		"node's queue %s ± %s ms, last node's share %s, against %s ms for an oracle that splits the stream "+
		"in proportion to capacity (share %.3f, M/D/1 each)%s",
		defaultStrategy(), num(got.Mean), num(got.HalfWidth), num(share.Mean), num(oracle), capShare, why))

	r.Notes = append(r.Notes, balanceRanking(setup, runs)...)
	return r
}

// balanceFigure plots p99, without heartbeat loss, against the softmin's
// temperature, with and without the in-flight counts; the other pickers
// have no temperature and are flat lines.
func balanceFigure(setup balanceSetup, sc balanceScenario, p99 func(balanceStrategy) float64) Figure {
	fig := Figure{
		Name: "balance-" + strings.ReplaceAll(strings.ReplaceAll(sc.name, ",", ""), " ", "-"),
		Title: fmt.Sprintf("%s: p99 of gets by softmin temperature, no heartbeat loss (flat: pickers without one)",
			sc.name),
		XLabel: "softmin temperature T (requests in progress)",
		YLabel: "p99 latency (ms)",
		LogY:   true,
	}
	var temps []float64
	for _, st := range setup.strategies {
		if st.temperature > 0 && !slices.Contains(temps, st.temperature) {
			temps = append(temps, st.temperature)
		}
	}
	softmin := map[bool]*Series{false: {Name: "softmin, reported load"}, true: {Name: "softmin + in flight"}}
	for _, st := range setup.strategies {
		if st.temperature > 0 {
			s := softmin[st.inFlight]
			s.X, s.Y = append(s.X, st.temperature), append(s.Y, p99(st))
			continue
		}
		if st.name == "reverse softmax (original)" {
			continue
		}
		flat := Series{Name: st.label()}
		for _, t := range temps {
			flat.X, flat.Y = append(flat.X, t), append(flat.Y, p99(st))
		}
		fig.Series = append(fig.Series, flat)
	}
	for _, inFlight := range []bool{false, true} {
		if len(softmin[inFlight].X) > 0 {
			fig.Series = append(fig.Series, *softmin[inFlight])
		}
	}
	return fig
}

// balanceRanking notes each strategy's worst p99 over the scenarios and
// losses, best first.
func balanceRanking(setup balanceSetup, runs map[balanceKey][]balanceRun) []string {
	type score struct {
		label string
		worst time.Duration
		where string
	}
	var scores []score
	for _, st := range setup.strategies {
		s := score{label: st.label()}
		for _, sc := range setup.scenarios {
			for _, loss := range setup.losses {
				var p99 []float64
				for _, run := range runs[balanceKey{sc.name, st.label(), loss}] {
					p99 = append(p99, float64(run.p99))
				}
				if m := time.Duration(Mean(p99).Mean); m > s.worst {
					s.worst, s.where = m, fmt.Sprintf("%s, %g%% heartbeats lost", sc.name, loss*100)
				}
			}
		}
		scores = append(scores, s)
	}
	slices.SortStableFunc(scores, func(a, b score) int { return cmp.Compare(a.worst, b.worst) })
	var parts []string
	for _, s := range scores {
		parts = append(parts, fmt.Sprintf("%s %v (%s)", s.label, s.worst.Round(10*time.Microsecond), s.where))
	}
	return []string{"worst p99 over scenarios and heartbeat losses, best first: " + strings.Join(parts, "; ")}
}

func percents(x []float64) string {
	s := make([]string, len(x))
	for i, v := range x {
		s[i] = fmt.Sprintf("%g%%", v*100)
	}
	return strings.Join(s, ", ")
}
