package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
)

func init() {
	register(Experiment{
		Name: "rebalance",
		Summary: "a 3-node, 6-shard cluster under load gains a node and rebalances, splits a shard, moves replicas through kills of source, target and leader, " +
			"loses a node and replaces it: throughput, p99, write pauses, porcupine on the whole history",
		Run: rebalance,
	})
}

// rebSetup sizes the experiment.
type rebSetup struct {
	// steady is the length of the first and the last phase.
	steady time.Duration
	// procs clients run operations on keys keys, one at a time each.
	procs, keys int
	// phaseTimeout bounds every phase; one that takes longer fails the run.
	phaseTimeout time.Duration
}

func rebalanceSetup(cfg Config) rebSetup {
	s := rebSetup{steady: 10 * time.Second, procs: 8, keys: 32, phaseTimeout: 90 * time.Second}
	if cfg.Quick {
		s.steady = 2 * time.Second
	}
	return s
}

// rebTiming halves the default heartbeat timeout, as the server's failover
// tests do, so that the kills cost shorter elections.
var rebTiming = server.RaftTiming{HeartbeatTimeout: server.Duration(500 * time.Millisecond)}

// rebBucket is the width of the timeline's buckets.
const rebBucket = 250 * time.Millisecond

// rebPhase is one step of the experiment and, once run, when it began and
// ended in the history's time.
type rebPhase struct {
	name       string
	do         func(r *rebRun, ctx context.Context) error
	start, end int64
	ran        bool
	timedOut   bool
}

// rebPhases lists the steps in order. The moves with kills need a node
// that holds no replica of some shard: after the 4th node joins, 7 shards
// of 3 replicas on 4 nodes leave each shard 1 such node.
func rebPhases() []*rebPhase {
	return []*rebPhase{
		{name: "steady", do: (*rebRun).steady},
		{name: "n4 joins, rebalance", do: func(r *rebRun, ctx context.Context) error {
			if _, err := r.c.AddNode(ctx, "n4"); err != nil {
				return err
			}
			return r.rebalanceAll(ctx)
		}},
		{name: "split a shard", do: (*rebRun).split},
		{name: "move a replica off its leader", do: (*rebRun).moveFromLeader},
		{name: "move, source killed", do: func(r *rebRun, ctx context.Context) error { return r.moveKilling(ctx, "source") }},
		{name: "move, target killed", do: func(r *rebRun, ctx context.Context) error { return r.moveKilling(ctx, "target") }},
		{name: "move, leader killed", do: func(r *rebRun, ctx context.Context) error { return r.moveKilling(ctx, "leader") }},
		{name: "kill an original node", do: (*rebRun).killOriginal},
		{name: "n5 joins, dead node removed", do: (*rebRun).replace},
		{name: "rebalance", do: (*rebRun).rebalanceAll},
		{name: "steady", do: (*rebRun).steady},
	}
}

// rebRun is one run: the cluster, the history its load records, and what
// the phases leave for the next.
type rebRun struct {
	cfg  Config
	set  rebSetup
	c    *cluster
	h    *history
	rng  *rand.Rand
	dead string // the original node killed for good
}

func rebalance(ctx context.Context, cfg Config) (*Report, error) {
	set := rebalanceSetup(cfg)
	seed := cfg.Seed
	phases, h, res, vis, err := rebalanceRun(ctx, cfg, set, seed)
	if err != nil {
		return nil, fmt.Errorf("seed %d: %w", seed, err)
	}
	return rebalanceReport(cfg, set, seed, phases, h, res, vis), nil
}

// rebalanceRun runs the phases on a new cluster under the load, and checks
// the history the load recorded.
func rebalanceRun(ctx context.Context, cfg Config, set rebSetup, seed int64) (phases []*rebPhase, h *history,
	res porcupine.CheckResult, vis string, err error) {
	spec, err := server.LocalSpec(3, 6, 3)
	if err != nil {
		return nil, nil, res, "", err
	}
	spec.Raft = rebTiming
	c, err := startSpec(ctx, seed, spec, cfg.logger(), nil)
	if err != nil {
		return nil, nil, res, "", err
	}
	defer func() { err = errors.Join(err, c.close()) }()
	var clients []*client.Client
	for range 4 {
		cl, err := c.client(ctx, historyClient)
		if err != nil {
			return nil, nil, res, "", err
		}
		clients = append(clients, cl)
	}
	procs := make([]*client.Client, set.procs)
	for i := range procs {
		procs[i] = clients[i%len(clients)]
	}
	keys := make([]string, set.keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("rb-%d", i)
	}

	r := &rebRun{cfg: cfg, set: set, c: c, h: newHistory(), rng: rand.New(rand.NewPCG(uint64(seed), 3))}
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		kvWorkload(loadCtx, r.h, procs, keys, seed)
	}()
	phases = rebPhases()
	for i, p := range phases {
		p.start, p.ran = r.h.now(), true
		pctx, cancel := context.WithTimeout(ctx, set.phaseTimeout)
		perr := p.do(r, pctx)
		p.timedOut = perr != nil && pctx.Err() != nil
		cancel()
		p.end = r.h.now()
		cfg.progress("rebalance: phase %d/%d (%s): %v%s", i+1, len(phases), p.name,
			time.Duration(p.end-p.start).Round(time.Millisecond), timedOutMark(p.timedOut))
		if perr != nil && !p.timedOut {
			stopLoad()
			<-loadDone
			return nil, nil, res, "", fmt.Errorf("phase %q: %w", p.name, perr)
		}
		if p.timedOut {
			cfg.progress("rebalance: phase %q timed out: %v", p.name, perr)
			break // the cluster is not where the next phases expect it
		}
	}
	stopLoad()
	<-loadDone
	res, vis, err = checkHistory(r.h, cfg.Out, fmt.Sprintf("rebalance-s%d", seed), 5*time.Minute)
	return phases, r.h, res, vis, err
}

func timedOutMark(t bool) string {
	if t {
		return ", TIMED OUT"
	}
	return ""
}

// steady waits out a steady phase.
func (r *rebRun) steady(ctx context.Context) error {
	t := time.NewTimer(r.set.steady)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// via returns a running node to send cluster commands through.
func (r *rebRun) via() (*server.Node, error) {
	for _, id := range r.c.Running() {
		if n := r.c.Node(id); n != nil {
			return n, nil
		}
	}
	return nil, errors.New("no node runs")
}

// waitSettled waits until every running node follows the same metadata,
// with no replica move, slot move or removal in progress, for which done
// holds; and every shard with a majority running has a leader that serves.
func (r *rebRun) waitSettled(ctx context.Context, what string, done func(*shard.Cluster) bool) error {
	err := waitUntil(ctx, func() bool {
		var version uint64
		for i, id := range r.c.Running() {
			n := r.c.Node(id)
			if n == nil {
				return false
			}
			m := n.Cluster()
			if i > 0 && m.Version != version {
				return false
			}
			version = m.Version
			if len(m.Moves) > 0 || len(m.SlotMoves) > 0 || len(m.Draining) > 0 || !done(m) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("waiting until %s: %w", what, err)
	}
	if err := r.c.WaitReady(ctx); err != nil {
		return fmt.Errorf("waiting until %s: %w", what, err)
	}
	return nil
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func anything(*shard.Cluster) bool { return true }

// rebalanceAll starts moves (server.Node.Rebalance), one at a time, each
// waited for, until it starts none.
func (r *rebRun) rebalanceAll(ctx context.Context) error {
	for moves := 0; ; moves++ {
		// Every node's view must include the last change: a node that has
		// not heard of a joined node would find the counts even.
		if err := r.waitSettled(ctx, "the cluster settles", anything); err != nil {
			return err
		}
		n, err := r.via()
		if err != nil {
			return err
		}
		m, started, err := n.Rebalance(ctx)
		if err != nil {
			return err
		}
		if !started {
			r.cfg.progress("rebalance: %d replica moves balanced the replicas (groups held: %s)", moves, replicaCounts(m))
			return nil
		}
	}
}

// replicaCounts says how many replicas each node holds.
func replicaCounts(m *shard.Cluster) string {
	var parts []string
	for _, nd := range m.Nodes {
		parts = append(parts, fmt.Sprintf("%s %d", nd.ID, len(m.Holds(nd.ID))))
	}
	return strings.Join(parts, ", ")
}

// split splits the shard holding the most slots and waits until its slots
// have moved.
func (r *rebRun) split(ctx context.Context) error {
	n, err := r.via()
	if err != nil {
		return err
	}
	m := n.Cluster().Map
	id := m.Shards[0].ID
	_, to, err := n.SplitShard(ctx, id)
	if err != nil {
		return err
	}
	return r.waitSettled(ctx, fmt.Sprintf("shard %d's slots moved to %d", id, to), func(c *shard.Cluster) bool {
		return len(c.Map.RangesOf(to)) > 0
	})
}

// moveTarget picks a shard, at random, and a running node that holds no
// replica of it.
func (r *rebRun) moveTarget() (shard.ID, string, error) {
	m := r.c.Metadata()
	order := r.rng.Perm(len(m.Map.Shards))
	for _, i := range order {
		s := m.Map.Shards[i]
		for _, id := range r.c.Running() {
			if !slices.Contains(m.Holds(id), s.ID) {
				return s.ID, id, nil
			}
		}
	}
	return 0, "", errors.New("every running node holds every shard")
}

// leaderOf waits for shard id's leader and returns its id.
func (r *rebRun) leaderOf(ctx context.Context, id shard.ID) (string, error) {
	var lead string
	err := waitUntil(ctx, func() bool { lead = r.c.leaderID(id); return lead != "" })
	if err != nil {
		return "", fmt.Errorf("waiting for shard %d's leader: %w", id, err)
	}
	return lead, nil
}

// move starts moving shard id's replica from from to to.
func (r *rebRun) move(ctx context.Context, id shard.ID, from, to string) error {
	n, err := r.via()
	if err != nil {
		return err
	}
	_, err = n.MoveReplica(ctx, shard.Move{Group: id, From: from, To: to})
	r.cfg.progress("rebalance: moving shard %d's replica from %s to %s", id, from, to)
	return err
}

// moved reports whether the replica of shard id has moved from from to to.
func moved(id shard.ID, from, to string) func(*shard.Cluster) bool {
	return func(c *shard.Cluster) bool {
		v := c.Voters(id)
		return slices.Contains(v, to) && !slices.Contains(v, from)
	}
}

// moveFromLeader moves a shard's replica away from the shard's leader.
func (r *rebRun) moveFromLeader(ctx context.Context) error {
	id, to, err := r.moveTarget()
	if err != nil {
		return err
	}
	lead, err := r.leaderOf(ctx, id)
	if err != nil {
		return err
	}
	if err := r.move(ctx, id, lead, to); err != nil {
		return err
	}
	return r.waitSettled(ctx, fmt.Sprintf("shard %d's replica moved from %s to %s", id, lead, to), moved(id, lead, to))
}

// moveKilling moves the replica of a shard from a follower to a node
// without one, and kills the victim ("source", "target" or "leader") once
// the target has opened its replica: in the middle of the move. The
// target comes back at once, since the move waits for it; the source and
// the leader once the move has ended without them.
func (r *rebRun) moveKilling(ctx context.Context, victim string) error {
	id, to, err := r.moveTarget()
	if err != nil {
		return err
	}
	lead, err := r.leaderOf(ctx, id)
	if err != nil {
		return err
	}
	var from string
	for _, v := range r.c.Metadata().Voters(id) {
		if v != lead && r.c.Node(v) != nil {
			from = v
			break
		}
	}
	if from == "" {
		return fmt.Errorf("shard %d has no running follower to move", id)
	}
	killed := map[string]string{"source": from, "target": to, "leader": lead}[victim]
	if err := r.move(ctx, id, from, to); err != nil {
		return err
	}
	if err := waitUntil(ctx, func() bool { n := r.c.Node(to); return n != nil && n.Holds(id) }); err != nil {
		return fmt.Errorf("waiting for %s to open a replica of shard %d: %w", to, id, err)
	}
	r.cfg.progress("rebalance: killing %s, the %s of shard %d's move", killed, victim, id)
	if err := r.c.Kill(killed); err != nil {
		return err
	}
	if victim == "target" {
		if _, err := r.c.Restart(ctx, killed); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("shard %d's replica moved from %s to %s", id, from, to)
	if err := r.waitSettled(ctx, what, moved(id, from, to)); err != nil {
		return err
	}
	if victim != "target" {
		if _, err := r.c.Restart(ctx, killed); err != nil {
			return err
		}
	}
	if err := r.waitSettled(ctx, killed+" follows the metadata again", moved(id, from, to)); err != nil {
		return err
	}
	return r.waitCaughtUp(ctx, killed)
}

// waitCaughtUp waits until every shard replica node holds has applied what
// its leader had applied when the wait began. A replica restarted after
// its group's membership changed knows the new members only once it has
// the entries that changed it, and hashicorp/raft refuses its vote to a
// candidate its configuration does not list as a voter: until then, the
// loss of another voter would leave the group without a leader even with
// a majority running, so the next phase, which kills a node, waits.
func (r *rebRun) waitCaughtUp(ctx context.Context, node string) error {
	n := r.c.Node(node)
	if n == nil {
		return fmt.Errorf("node %s is not running", node)
	}
	for _, id := range r.c.Metadata().Holds(node) {
		if id == shard.ControlGroup {
			continue
		}
		var target uint64
		err := waitUntil(ctx, func() bool {
			if l := r.c.Leader(id); l != nil {
				target = l.ShardStats(id).Applied
			}
			return target > 0
		})
		if err == nil {
			err = waitUntil(ctx, func() bool { return n.ShardStats(id).Applied >= target })
		}
		if err != nil {
			return fmt.Errorf("waiting for %s's replica of shard %d to catch up: %w", node, id, err)
		}
	}
	return nil
}

// killOriginal kills one of the three first nodes, for good, and waits
// until every shard it held has a leader again.
func (r *rebRun) killOriginal(ctx context.Context) error {
	r.dead = []string{"n1", "n2", "n3"}[r.rng.IntN(3)]
	r.cfg.progress("rebalance: killing %s for good", r.dead)
	if err := r.c.Kill(r.dead); err != nil {
		return err
	}
	return r.c.WaitReady(ctx)
}

// replace adds n5 and removes the dead node, whose replicas move away.
func (r *rebRun) replace(ctx context.Context) error {
	if _, err := r.c.AddNode(ctx, "n5"); err != nil {
		return err
	}
	n, err := r.via()
	if err != nil {
		return err
	}
	if _, err := n.RemoveNode(ctx, r.dead); err != nil {
		return err
	}
	return r.waitSettled(ctx, r.dead+" removed", func(c *shard.Cluster) bool {
		return slices.Contains(c.Removed, r.dead)
	})
}

// rebStats summarizes the operations that began in a span of the history.
type rebStats struct {
	ops, failed  int
	latencies    []time.Duration
	longestWrite time.Duration
	longestKey   string
}

// rebalanceReport builds the report of a run.
func rebalanceReport(cfg Config, set rebSetup, seed int64, phases []*rebPhase, h *history,
	res porcupine.CheckResult, vis string) *Report {
	r := &Report{
		Experiment: "rebalance",
		Setup: fmt.Sprintf("3 nodes, 6 shards x 3 replicas, heartbeat timeout %v; %d clients on the simulated network run get/set/compare-and-set/delete "+
			"(40/30/20/10%%) on %d keys throughout; steady phases of %v; every phase bounded by %v; seed %d",
			time.Duration(rebTiming.HeartbeatTimeout), set.procs, set.keys, set.steady, set.phaseTimeout, seed),
	}
	ran := phases[:0:0]
	for _, p := range phases {
		if p.ran {
			ran = append(ran, p)
		}
	}
	phaseOf := func(t int64) int {
		for i := len(ran) - 1; i >= 0; i-- {
			if t >= ran[i].start {
				return i
			}
		}
		return 0
	}
	stats := make([]rebStats, len(ran))
	var end int64
	if len(ran) > 0 {
		end = ran[len(ran)-1].end
	}
	buckets := int(time.Duration(end)/rebBucket) + 1
	done := make([]float64, buckets)
	bucketLat := make([][]time.Duration, buckets)
	var unknown int
	noteWrite := func(st *rebStats, op, key string, d time.Duration) {
		if op != "get" && d > st.longestWrite {
			st.longestWrite, st.longestKey = d, key
		}
	}
	for _, op := range h.ops {
		in := op.Input.(kvInput)
		st := &stats[phaseOf(op.Call)]
		if op.Output.(kvOutput).Unknown {
			unknown++
			continue // counted with the failures
		}
		d := time.Duration(op.Return - op.Call)
		st.ops++
		st.latencies = append(st.latencies, d)
		noteWrite(st, in.Op, in.Key, d)
		if b := int(time.Duration(op.Return) / rebBucket); b < buckets {
			done[b]++
			bucketLat[b] = append(bucketLat[b], d)
		}
	}
	for _, f := range h.failures {
		st := &stats[phaseOf(f.call)]
		st.ops++
		st.failed++
		noteWrite(st, f.op, f.key, time.Duration(f.ret-f.call))
	}

	t := Table{Name: "rebalance-phases", Title: "per phase (operations by the phase they began in)",
		Header: []string{"#", "phase", "start", "duration", "ops", "ops/s", "p50", "p99", "max", "longest write", "failed", "timed out"}}
	var timedOut, failed int
	worst, worstPhase := time.Duration(0), -1
	for i, p := range ran {
		st := stats[i]
		pc := Percentiles(st.latencies, 50, 99, 100)
		dur := time.Duration(p.end - p.start)
		rate := 0.0
		if dur > 0 {
			rate = float64(st.ops) / dur.Seconds()
		}
		if p.timedOut {
			timedOut++
		}
		failed += st.failed
		if st.longestWrite > worst {
			worst, worstPhase = st.longestWrite, i
		}
		t.Rows = append(t.Rows, []string{fmt.Sprint(i + 1), p.name, fmt.Sprintf("%.1fs", time.Duration(p.start).Seconds()),
			dur.Round(time.Millisecond).String(), fmt.Sprint(st.ops), fmt.Sprintf("%.0f", rate),
			ms(pc[0]), ms(pc[1]), ms(pc[2]), ms(st.longestWrite), fmt.Sprint(st.failed), yesNo(p.timedOut)})
	}
	r.Tables = append(r.Tables, t)

	thr := Figure{Name: "rebalance-throughput", Title: fmt.Sprintf("Operations completed per %v (phases numbered as in the table)", rebBucket),
		XLabel: "seconds", YLabel: "operations per second"}
	p99 := Figure{Name: "rebalance-p99", Title: fmt.Sprintf("p99 latency of the operations completed per %v (phases as in the table)", rebBucket),
		XLabel: "seconds", YLabel: "p99 latency, ms", LogY: true}
	var ts, ps Series // one line each: no legend
	for b := range buckets {
		x := (time.Duration(b) * rebBucket).Seconds()
		ts.X, ts.Y = append(ts.X, x), append(ts.Y, done[b]/rebBucket.Seconds())
		if len(bucketLat[b]) > 0 {
			ps.X = append(ps.X, x)
			ps.Y = append(ps.Y, float64(Percentiles(bucketLat[b], 99)[0])/float64(time.Millisecond))
		}
	}
	thr.Series, p99.Series = []Series{ts}, []Series{ps}
	for i, p := range ran {
		mk := Mark{X: time.Duration(p.start).Seconds(), Label: fmt.Sprint(i + 1)}
		thr.Marks, p99.Marks = append(thr.Marks, mk), append(p99.Marks, mk)
	}
	r.Figures = append(r.Figures, thr, p99)

	bad, unsure := 0, 0
	switch res {
	case porcupine.Illegal:
		bad = 1
		r.Notes = append(r.Notes, fmt.Sprintf("seed %d: the history is not linearizable; porcupine's visualization is %s", seed, vis))
	case porcupine.Unknown:
		unsure = 1
	}
	if worstPhase >= 0 {
		st := stats[worstPhase]
		r.Notes = append(r.Notes, fmt.Sprintf("the longest any write waited: %v, on key %s, in phase %d (%s)",
			st.longestWrite.Round(time.Millisecond), st.longestKey, worstPhase+1, ran[worstPhase].name))
	}
	r.Notes = append(r.Notes, fmt.Sprintf("%d operations, %d failed (%d writes of unknown outcome), history %s",
		len(h.ops)+len(h.failures)-unknown, failed, unknown, checkName(res)))
	if len(ran) < len(phases) {
		r.Notes = append(r.Notes, fmt.Sprintf("phase %q timed out; the %d after it did not run", ran[len(ran)-1].name, len(phases)-len(ran)))
	}
	r.Checks = append(r.Checks,
		NewCheck("histories that are not linearizable", Estimate{Mean: float64(bad)}, 0, 0, 0,
			"linearizability (Herlihy & Wing 1990) of the whole history, checked by porcupine"),
		NewCheck("histories the checker could not decide", Estimate{Mean: float64(unsure)}, 0, 0, 0,
			"the history must be checked to a verdict"),
		NewCheck("phases that timed out", Estimate{Mean: float64(timedOut)}, 0, 0, 0,
			fmt.Sprintf("every phase must end within %v", set.phaseTimeout)))
	return r
}

// ms formats d in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
