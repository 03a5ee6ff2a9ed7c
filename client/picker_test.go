package client

import (
	"math"
	"math/rand/v2"
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
		w := p.Weights(tc.activity)
		for i := range w {
			if math.Abs(w[i]-tc.want[i]) > 1e-9 {
				t.Errorf("Weights(%v) = %v, want %v", tc.activity, w, tc.want)
				break
			}
		}
		if math.Abs(sum(w)-1) > 1e-9 {
			t.Errorf("Weights(%v) sums to %v", tc.activity, sum(w))
		}
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

// Each random picker's choices follow its weights.
func TestPickFollowsWeights(t *testing.T) {
	const draws = 60000
	activity := []float64{0, 1, 3}
	soft, _ := NewSoftmin(1, seeded())
	for name, p := range map[string]interface {
		Picker
		Weigher
	}{
		"reverse softmax": NewReverseSoftmax(seeded()),
		"softmin":         soft,
		"uniform":         NewUniform(seeded()),
	} {
		counts := make([]int, len(activity))
		for i := 0; i < draws; i++ {
			counts[p.Pick(activity)]++
		}
		for i, w := range p.Weights(activity) {
			got := float64(counts[i]) / draws
			// 5 standard deviations of a binomial proportion.
			if tol := 5 * math.Sqrt(w*(1-w)/draws); math.Abs(got-w) > tol+1e-9 {
				t.Errorf("%s: candidate %d picked %.4f of the time, weight %.4f", name, i, got, w)
			}
		}
	}
}

func TestRoundRobin(t *testing.T) {
	p := NewRoundRobin()
	for i := 0; i < 7; i++ {
		if got := p.Pick(make([]float64, 3)); got != i%3 {
			t.Fatalf("pick %d = %d, want %d", i, got, i%3)
		}
	}
	if got := p.Pick([]float64{1}); got != 0 {
		t.Errorf("one candidate: %d", got)
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
