package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/wire"
)

func init() {
	register(Experiment{
		Name:    "loss",
		Summary: "writes over links dropping p of datagrams each way: success against 1-(1-(1-p)^2)^3, duplicates, attempts, latency",
		Run:     loss,
	})
}

// lossTheory is the chance that one of attempts attempts gets through when
// each direction drops p: an attempt needs its query and its reply.
func lossTheory(p float64, attempts int) float64 {
	return 1 - math.Pow(1-(1-p)*(1-p), float64(attempts))
}

// attemptsTheory is the mean number of attempts a request makes.
func attemptsTheory(p float64, attempts int) float64 {
	fail := 1 - (1-p)*(1-p)
	var mean float64
	for k := 0; k < attempts; k++ {
		mean += math.Pow(fail, float64(k))
	}
	return mean
}

// lossPoint is what one seed measured at one drop rate.
type lossPoint struct {
	ok, failed  int
	attempts    float64 // per request
	lat         []time.Duration
	duplicates  uint64 // writes executed beyond the keys written
	clearErrors bool   // every failure was ErrUnavailable
}

func loss(ctx context.Context, cfg Config) (*Report, error) {
	drops := []float64{0, 0.05, 0.1, 0.2, 0.3, 0.5}
	seeds := cfg.seeds(5, 2)
	requests, workers := 600, 8
	if cfg.Quick {
		// More writers, not fewer writes: a write that fails waits out
		// its attempts and ReplyGrace (about 1 s from its start), and at drop 0.5 four
		// in ten fail, so 8 writers spent most of the run waiting. The
		// checks' bands depend on the writes counted, not on how many
		// run at once, and 32 in flight load 3 nodes lightly.
		requests, workers = 200, 32
	}
	const attempts = 3
	points := make([][]lossPoint, len(drops))
	for s := 0; s < seeds; s++ {
		seed := cfg.Seed + int64(s)
		c, err := startCluster(ctx, seed, 3, 4, 3, cfg.logger())
		if err != nil {
			return nil, err
		}
		cl, err := c.client(ctx, client.Config{
			Attempts: attempts,
			// Long enough that an attempt fails only when a datagram is
			// lost, not when a reply is slow: the theory counts losses.
			// A request whose attempts all timed out takes a late reply
			// for a second, so that only a stall of the cluster longer
			// than that fails it (a disk here stalls for up to a quarter
			// second; the default half second once let one stall fail
			// all 8 writers at once).
			MinAttemptTimeout: 100 * time.Millisecond, InitialAttemptTimeout: 100 * time.Millisecond,
			MaxAttemptTimeout: 200 * time.Millisecond, ReplyGrace: time.Second,
		})
		if err != nil {
			return nil, errors.Join(err, c.close())
		}
		for i, p := range drops {
			if err := c.net.SetDefaultFaults(wire.Faults{Drop: p}); err != nil {
				return nil, errors.Join(err, c.close())
			}
			before := c.stats()
			pt := runLossPoint(ctx, cl, fmt.Sprintf("s%d-p%d", s, i), requests, workers)
			time.Sleep(50 * time.Millisecond) // let stragglers apply
			after := c.stats()
			keysAdded := after.Keys - before.Keys
			pt.duplicates = after.Executed - before.Executed - uint64(keysAdded)
			points[i] = append(points[i], pt)
			cfg.progress("loss: seed %d, drop %.2f: %d/%d succeeded, %.2f attempts each", seed, p, pt.ok, pt.ok+pt.failed, pt.attempts)
		}
		if err := errors.Join(c.close(), ctx.Err()); err != nil {
			return nil, err
		}
	}

	r := &Report{
		Experiment: "loss",
		Setup: fmt.Sprintf("3 nodes, 4 shards x 3 replicas; %d writes of new keys per drop rate and seed by %d concurrent requests, %d attempts each, %d seeds",
			requests, workers, attempts, seeds),
	}
	t := Table{Name: "loss", Title: "success, duplicates, attempts and latency by drop rate (each direction)",
		Header: []string{"drop", "success", "±95%", "theory", "duplicates", "attempts", "theory", "p50", "p99"}}
	measured := Series{Name: "measured"}
	theory := Series{Name: "1-(1-(1-p)^2)^3"}
	att := Series{Name: "measured"}
	attTheory := Series{Name: "theory"}
	for i, p := range drops {
		ok, total := 0, 0
		var att1 []float64
		var lats []time.Duration
		var dups uint64
		clear := true
		for _, pt := range points[i] {
			ok += pt.ok
			total += pt.ok + pt.failed
			att1 = append(att1, pt.attempts)
			lats = append(lats, pt.lat...)
			dups += pt.duplicates
			clear = clear && pt.clearErrors
		}
		est := Proportion(ok, total)
		want := lossTheory(p, attempts)
		sigma := math.Sqrt(want * (1 - want) / float64(total))
		// Three standard errors, and a point for the rare reply that is
		// slow rather than lost.
		r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("success at drop %.2f", p), est, want,
			want-3*sigma-0.01, want+3*sigma+0.01, "1-(1-(1-p)^2)^3, binomial"))
		r.Checks = append(r.Checks, NewCheck(fmt.Sprintf("duplicate applications at drop %.2f", p),
			Estimate{Mean: float64(dups)}, 0, 0, 0, "at most once: must be 0"))
		if !clear {
			r.Checks = append(r.Checks, Check{Name: fmt.Sprintf("failures at drop %.2f are ErrUnavailable", p),
				Source: "a failed write must return a clear error"})
		}
		ae, pct := Mean(att1), Percentiles(lats, 50, 99)
		t.Rows = append(t.Rows, []string{
			fmt.Sprintf("%.2f", p), fmt.Sprintf("%.4f", est.Mean), fmt.Sprintf("%.4f", est.HalfWidth), fmt.Sprintf("%.4f", want),
			fmt.Sprint(dups), fmt.Sprintf("%.3f", ae.Mean), fmt.Sprintf("%.3f", attemptsTheory(p, attempts)),
			pct[0].Round(10 * time.Microsecond).String(), pct[1].Round(10 * time.Microsecond).String(),
		})
		measured.X, measured.Y, measured.Err = append(measured.X, p), append(measured.Y, est.Mean), append(measured.Err, est.HalfWidth)
		theory.X, theory.Y = append(theory.X, p), append(theory.Y, want)
		att.X, att.Y, att.Err = append(att.X, p), append(att.Y, ae.Mean), append(att.Err, ae.HalfWidth)
		attTheory.X, attTheory.Y = append(attTheory.X, p), append(attTheory.Y, attemptsTheory(p, attempts))
	}
	r.Tables = append(r.Tables, t)
	r.Figures = append(r.Figures,
		Figure{Name: "loss-success", Title: "Writes that succeed within 3 attempts", XLabel: "drop probability, each direction",
			YLabel: "success rate", Series: []Series{measured, theory}},
		Figure{Name: "loss-attempts", Title: "Attempts per write", XLabel: "drop probability, each direction",
			YLabel: "attempts", Series: []Series{att, attTheory}})
	return r, nil
}

// runLossPoint writes requests new keys through cl, workers at a time.
func runLossPoint(ctx context.Context, cl *client.Client, prefix string, requests, workers int) lossPoint {
	before := cl.Counters()
	var next atomic.Int64
	var mu sync.Mutex
	pt := lossPoint{clearErrors: true}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(requests) || ctx.Err() != nil {
					return
				}
				start := time.Now()
				_, err := cl.Set(ctx, fmt.Sprintf("%s-%d", prefix, i), []byte("v"))
				d := time.Since(start)
				mu.Lock()
				pt.lat = append(pt.lat, d)
				if err == nil {
					pt.ok++
				} else {
					pt.failed++
					if !errors.Is(err, client.ErrUnavailable) {
						pt.clearErrors = false
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	after := cl.Counters()
	pt.attempts = float64(after.Attempts-before.Attempts) / float64(after.Requests-before.Requests)
	return pt
}
