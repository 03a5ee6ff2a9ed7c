package sim

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
)

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }

func TestDeparturesHeap(t *testing.T) {
	rng := newRand(1)
	var h departures
	var want []float64
	for i := 0; i < 1000; i++ {
		d := departure{at: rng.Float64(), server: int32(i)}
		h.push(d)
		want = append(want, d.at)
		if i%3 == 0 { // interleave pops with pushes
			slices.Sort(want)
			if got := h.pop().at; got != want[0] {
				t.Fatalf("popped %v, want %v", got, want[0])
			}
			want = want[1:]
		}
	}
	slices.Sort(want)
	for _, w := range want {
		if got := h.pop().at; got != w {
			t.Fatalf("popped %v, want %v", got, w)
		}
	}
	if len(h) != 0 {
		t.Errorf("%d left", len(h))
	}
}

func TestSupermarket(t *testing.T) {
	for _, tc := range []struct{ lambda, want float64 }{{0.9, 2.61}, {0.99, 5.43}, {0.001, 1}} {
		if got := supermarket(tc.lambda, 2); math.Abs(got-tc.want) > 0.005 {
			t.Errorf("supermarket(%v, 2) = %v, want %v", tc.lambda, got, tc.want)
		}
	}
	// d = 3: 1 + λ³ + λ¹² + …
	if got, want := supermarket(0.5, 3), 1+math.Pow(0.5, 3)+math.Pow(0.5, 12)+math.Pow(0.5, 39); math.Abs(got-want) > 1e-9 {
		t.Errorf("supermarket(0.5, 3) = %v, want %v", got, want)
	}
}

// within fails the test unless got is within rel of want.
func within(t *testing.T, name string, got, want, rel float64) {
	t.Helper()
	if math.Abs(got-want) > rel*want {
		t.Errorf("%s: mean time in system %.4f, want %.4f ± %.0f%%", name, got, want, rel*100)
	}
}

// Random dispatch splits the Poisson arrivals into one Poisson stream per
// server: each is an M/M/1 queue, with mean time in system 1/(1−λ), and
// stale reports change nothing.
func TestDispatchRandomIsMM1(t *testing.T) {
	for _, period := range []float64{0, 3} {
		d := dispatch{servers: 100, lambda: 0.8, period: period, warmup: 100_000, measured: 2_000_000}
		within(t, "random, λ=0.8", d.run(client.NewUniform(newRand(2)), newRand(1)), 5, 0.03)
	}
	// One server is an M/M/1 queue whatever the picker.
	d := dispatch{servers: 1, lambda: 0.5, warmup: 10_000, measured: 1_000_000}
	within(t, "one server, λ=0.5", d.run(client.NewLeastLoaded(newRand(2)), newRand(1)), 2, 0.02)
}

// With current loads, least loaded (join the shortest queue) nearly never
// queues at 100 servers, power of two matches the supermarket model at
// 1000, and both beat random.
func TestDispatchCurrentLoads(t *testing.T) {
	d := dispatch{servers: 100, lambda: 0.9, warmup: 100_000, measured: 500_000}
	jsq := d.run(client.NewLeastLoaded(newRand(2)), newRand(1))
	two := d.run(client.NewPowerOfTwo(newRand(2)), newRand(1))
	random := d.run(client.NewUniform(newRand(2)), newRand(1))
	if !(jsq >= 1 && jsq < 1.15 && jsq < two && two < random/2) {
		t.Errorf("λ=0.9: least loaded %.3f, power of two %.3f, random %.3f: want 1 ≤ least < 1.15, "+
			"least < power of two < random/2", jsq, two, random)
	}
	d = dispatch{servers: 1000, lambda: 0.9, warmup: 500_000, measured: 2_000_000}
	within(t, "power of two, n=1000", d.run(client.NewPowerOfTwo(newRand(2)), newRand(1)), supermarket(0.9, 2), 0.02)
}

// On reports 5 service times old, least loaded sends every arrival to the
// servers that looked idle, and does worse than random.
func TestDispatchStaleReportsHerd(t *testing.T) {
	d := dispatch{servers: 100, lambda: 0.9, period: 5, warmup: 100_000, measured: 300_000}
	herded := d.run(client.NewLeastLoaded(newRand(2)), newRand(1))
	random := d.run(client.NewUniform(newRand(2)), newRand(1))
	if herded < random {
		t.Errorf("least loaded on reports every 5: %.3f, below random's %.3f", herded, random)
	}
}

// spy checks what a picker is shown: at T = 0, the current loads (the
// chosen server's load rises by at most one by the next arrival, the
// others' never rise); with T > 0, loads that change only at a report.
type spy struct {
	t       *testing.T
	prev    []float64
	chose   int
	calls   int
	changes int
	current bool
}

func (s *spy) Pick(activity []float64) int {
	if s.prev != nil {
		changed := false
		for i, a := range activity {
			limit := s.prev[i]
			if i == s.chose {
				limit++
			}
			if s.current && (a > limit || a < 0) {
				s.t.Fatalf("server %d: load %v after %v", i, a, s.prev[i])
			}
			changed = changed || a != s.prev[i]
		}
		if changed {
			s.changes++
		}
	}
	s.calls++
	s.prev = slices.Clone(activity)
	s.chose = s.calls % len(activity)
	return s.chose
}

func TestDispatchReports(t *testing.T) {
	current := &spy{t: t, current: true}
	dispatch{servers: 10, lambda: 0.9, warmup: 0, measured: 10_000}.run(current, newRand(1))
	if current.changes < current.calls/2 {
		t.Errorf("current loads changed between %d of %d arrivals", current.changes, current.calls)
	}
	// 10 servers at λ=0.9 and T=2: 18 arrivals a report.
	stale := &spy{t: t}
	dispatch{servers: 10, lambda: 0.9, period: 2, warmup: 0, measured: 18_000}.run(stale, newRand(1))
	if stale.changes > 1100 || stale.changes < 800 {
		t.Errorf("reports every 2 changed %d times in about 1000 reports", stale.changes)
	}
}

func TestDispatchRepeats(t *testing.T) {
	d := dispatch{servers: 50, lambda: 0.9, period: 1, warmup: 1000, measured: 10_000}
	a := d.run(client.NewPowerOfTwo(newRand(2)), newRand(1))
	b := d.run(client.NewPowerOfTwo(newRand(2)), newRand(1))
	c := d.run(client.NewPowerOfTwo(newRand(2)), newRand(3))
	if a != b || a == c {
		t.Errorf("seed 1 gave %v then %v, seed 3 %v", a, b, c)
	}
}

func TestHerdQuick(t *testing.T) {
	e, ok := Lookup("herd")
	if !ok {
		t.Fatal("herd is not registered")
	}
	r, err := e.Run(context.Background(), Config{Quick: true, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Pass() {
		for _, c := range r.Checks {
			if !c.Pass {
				t.Errorf("check %s: %v ± %v, band %v to %v", c.Name, c.Measured, c.CI, c.BandLow, c.BandHigh)
			}
		}
	}
	if len(r.Checks) != 5 {
		t.Errorf("%d checks, want 5", len(r.Checks))
	}
	strategies := len(herdStrategies([]float64{0.25, 1, 4}))
	var names []string
	for _, f := range r.Figures {
		names = append(names, f.Name)
		if len(f.Series) != strategies || len(f.Series[0].X) != 3 || !f.LogY {
			t.Errorf("figure %s: %d series of %d points, log y %v", f.Name, len(f.Series), len(f.Series[0].X), f.LogY)
		}
	}
	if want := []string{"herd-lambda-0.5", "herd-lambda-0.9", "herd-lambda-0.99"}; !slices.Equal(names, want) {
		t.Errorf("figures %v, want %v", names, want)
	}
	if len(r.Tables) != 1 || r.Tables[0].Name != "herd" || len(r.Tables[0].Rows) != 3*3*strategies {
		t.Errorf("tables: want one, herd, of %d rows", 3*3*strategies)
	}
	if len(r.Notes) < 3 {
		t.Errorf("notes: %q", r.Notes)
	}
}

func TestHerdCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, err := herd(ctx, Config{Quick: true, Seed: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled run returned %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancelled run took %v", d)
	}
}
