package client

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

func seeded() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

func sum(w []float64) float64 {
	var s float64
	for _, x := range w {
		s += x
	}
	return s
}

func TestReverseSoftmaxWeights(t *testing.T) {
	p := NewReverseSoftmax(seeded())
	for _, tc := range []struct {
		activity, want []float64
	}{
		{[]float64{7}, []float64{1}},
		{[]float64{0, 0}, []float64{0.5, 0.5}},
		{[]float64{5, 5, 5}, []float64{1. / 3, 1. / 3, 1. / 3}},
		// softmax(0, ln 3) = (1/4, 3/4) → ((1-1/4), (1-3/4)) / 1
		{[]float64{0, math.Log(3)}, []float64{0.75, 0.25}},
		// Far apart: the busiest gets nothing, the rest share 1/(n-1).
		{[]float64{0, 0, 1000}, []float64{0.5, 0.5, 0}},
		// Huge activities do not overflow.
		{[]float64{1e6, 1e6 + 1000, 1e6}, []float64{0.5, 0, 0.5}},
	} {
		checkWeights(t, p, tc.activity, tc.want)
	}
}

func TestSoftminWeights(t *testing.T) {
	if _, err := NewSoftmin(0, nil); err == nil {
		t.Error("temperature 0 accepted")
	}
	if _, err := NewSoftmin(math.Inf(1), nil); err == nil {
		t.Error("infinite temperature accepted")
	}
	p, err := NewSoftmin(10, seeded())
	if err != nil {
		t.Fatal(err)
	}
	w := p.Weights([]float64{0, 10 * math.Log(2)})
	// exp(0) : exp(-ln 2) = 2 : 1
	if math.Abs(w[0]-2./3) > 1e-9 || math.Abs(w[1]-1./3) > 1e-9 {
		t.Errorf("Weights = %v, want [2/3 1/3]", w)
	}
	if w := p.Weights([]float64{3}); w[0] != 1 {
		t.Errorf("one candidate: %v", w)
	}
}

// Each random picker's choices follow its weights, with and without ties.
func TestPickFollowsWeights(t *testing.T) {
	const draws = 60000
	soft, _ := NewSoftmin(1, seeded())
	for name, p := range map[string]interface {
		Picker
		Weigher
	}{
		"reverse softmax": NewReverseSoftmax(seeded()),
		"softmin":         soft,
		"uniform":         NewUniform(seeded()),
		"least loaded":    NewLeastLoaded(seeded()),
		"power of two":    NewPowerOfTwo(seeded()),
	} {
		for _, activity := range [][]float64{{0, 1, 3}, {2, 0, 2, 0, 5}, {4, 1}} {
			counts := make([]int, len(activity))
			for i := 0; i < draws; i++ {
				counts[p.Pick(activity)]++
			}
			for i, w := range p.Weights(activity) {
				got := float64(counts[i]) / draws
				// 5 standard deviations of a binomial proportion.
				if tol := 5 * math.Sqrt(w*(1-w)/draws); math.Abs(got-w) > tol+1e-9 {
					t.Errorf("%s on %v: candidate %d picked %.4f of the time, weight %.4f", name, activity, i, got, w)
				}
			}
		}
	}
}

func TestLeastLoadedWeights(t *testing.T) {
	p := NewLeastLoaded(seeded())
	for _, tc := range []struct {
		activity, want []float64
	}{
		{[]float64{7}, []float64{1}},
		{[]float64{3, 1, 2}, []float64{0, 1, 0}},
		{[]float64{2, 0, 2, 0, 5}, []float64{0, 0.5, 0, 0.5, 0}},
		{[]float64{1, 1, 1, 1}, []float64{0.25, 0.25, 0.25, 0.25}},
	} {
		checkWeights(t, p, tc.activity, tc.want)
	}
}

func TestPowerOfTwoWeights(t *testing.T) {
	p := NewPowerOfTwo(seeded())
	for _, tc := range []struct {
		activity, want []float64
	}{
		{[]float64{7}, []float64{1}},
		// Two distinct candidates: the less active always wins.
		{[]float64{4, 1}, []float64{0, 1}},
		{[]float64{3, 3}, []float64{0.5, 0.5}},
		// Of the pairs of indices (0,1), (0,2), (1,2), 0 wins two, 1 one.
		{[]float64{0, 1, 3}, []float64{2. / 3, 1. / 3, 0}},
		// 10 pairs; a 0 wins against the three others and half its tie.
		{[]float64{2, 0, 2, 0, 5}, []float64{0.15, 0.35, 0.15, 0.35, 0}},
	} {
		checkWeights(t, p, tc.activity, tc.want)
	}
}

// PowerOfTwo's weights match brute force over every pair on larger inputs.
func TestPowerOfTwoWeightsBruteForce(t *testing.T) {
	rng := seeded()
	p := NewPowerOfTwo(seeded())
	for trial := 0; trial < 20; trial++ {
		activity := make([]float64, 2+rng.IntN(30))
		for i := range activity {
			activity[i] = float64(rng.IntN(5))
		}
		n := len(activity)
		want := make([]float64, n)
		for i := 0; i < n; i++ {
			for j := i + 1; j < n; j++ {
				switch share := 1 / float64(n*(n-1)/2); {
				case activity[i] < activity[j]:
					want[i] += share
				case activity[j] < activity[i]:
					want[j] += share
				default:
					want[i] += share / 2
					want[j] += share / 2
				}
			}
		}
		w := p.Weights(activity)
		for i := range w {
			if math.Abs(w[i]-want[i]) > 1e-12 {
				t.Fatalf("Weights(%v) = %v, want %v", activity, w, want)
			}
		}
	}
}

// The pickers are safe for concurrent use.
func TestPickersConcurrent(t *testing.T) {
	soft, _ := NewSoftmin(1, seeded())
	activity := []float64{3, 0, 2, 0}
	for _, p := range []Picker{NewReverseSoftmax(seeded()), soft, NewUniform(seeded()),
		NewLeastLoaded(seeded()), NewPowerOfTwo(seeded())} {
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Go(func() {
				for i := 0; i < 1000; i++ {
					if k := p.Pick(activity); k < 0 || k >= len(activity) {
						t.Errorf("%T picked %d", p, k)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestWeightedSkipsZeroWeights(t *testing.T) {
	r := newLockedRand(seeded())
	for i := 0; i < 1000; i++ {
		if got := weighted(r, []float64{0, 1, 0}); got != 1 {
			t.Fatalf("picked %d with weight 0", got)
		}
	}
}

// checkWeights fails the test unless p's weights for activity are want
// and sum to 1.
func checkWeights(t *testing.T, p Weigher, activity, want []float64) {
	t.Helper()
	w := p.Weights(activity)
	for i := range w {
		if math.Abs(w[i]-want[i]) > 1e-9 {
			t.Errorf("Weights(%v) = %v, want %v", activity, w, want)
			break
		}
	}
	if math.Abs(sum(w)-1) > 1e-9 {
		t.Errorf("Weights(%v) sums to %v", activity, sum(w))
	}
}

// BenchmarkPick is one choice among a shard's three replicas by each
// picker, the default first.
func BenchmarkPick(b *testing.B) {
	softmin, err := NewSoftmin(DefaultTemperature, seeded())
	if err != nil {
		b.Fatal(err)
	}
	load := []float64{0.7, 1.3, 2.1}
	for _, bc := range []struct {
		name string
		p    Picker
	}{
		{"softmin", softmin},
		{"power of two", NewPowerOfTwo(seeded())},
		{"least loaded", NewLeastLoaded(seeded())},
		{"reverse softmax", NewReverseSoftmax(seeded())},
		{"uniform", NewUniform(seeded())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				bc.p.Pick(load)
			}
		})
	}
}

// BenchmarkPowerOfTwoCandidates shows that PowerOfTwo costs O(1) a pick: as
// much among a million candidates as among two (but for the cache misses of
// a large slice), where a scan would be a million times slower.
func BenchmarkPowerOfTwoCandidates(b *testing.B) {
	p := NewPowerOfTwo(seeded())
	for _, n := range []int{2, 1_000_000} {
		load := make([]float64, n)
		for i := range load {
			load[i] = float64(i % 7)
		}
		b.Run(fmt.Sprint("n=", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				p.Pick(load)
			}
		})
	}
}
