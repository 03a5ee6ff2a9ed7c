package client

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
)

// Picker chooses the node for a request among the eligible ones: the live
// replicas of the key's shard. load holds each candidate's load in
// requests in progress: what the node last reported plus, unless
// Config.IgnoreInFlight, the client's own requests in flight there. Pick
// returns an index into it. It is called with at least one candidate and
// must be safe for concurrent use.
type Picker interface {
	Pick(load []float64) int
}

// Weigher is implemented by pickers that choose at random by weight:
// Weights returns the probability of each candidate, summing to 1.
type Weigher interface {
	Weights(load []float64) []float64
}

// lockedRand is a generator shared by concurrent callers.
type lockedRand struct {
	mu  sync.Mutex
	rng *rand.Rand
}

// newLockedRand uses rng, or a randomly seeded generator if rng is nil.
func newLockedRand(rng *rand.Rand) *lockedRand {
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &lockedRand{rng: rng}
}

func (r *lockedRand) float64() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rng.Float64()
}

func (r *lockedRand) intN(n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rng.IntN(n)
}

// weighted picks an index with probability proportional to w.
func weighted(r *lockedRand, w []float64) int {
	var sum float64
	for _, x := range w {
		sum += x
	}
	u := r.float64() * sum
	for i, x := range w {
		if u < x {
			return i
		}
		u -= x
	}
	// Rounding left u at or just above the last positive weight.
	for i := len(w) - 1; i >= 0; i-- {
		if w[i] > 0 {
			return i
		}
	}
	return len(w) - 1
}

// softmax returns exp(x_i)/sum exp(x_j), computed stably.
func softmax(x []float64) []float64 {
	maxX := math.Inf(-1)
	for _, v := range x {
		maxX = math.Max(maxX, v)
	}
	out := make([]float64, len(x))
	var sum float64
	for i, v := range x {
		out[i] = math.Exp(v - maxX)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}

// ReverseSoftmax is the original balancer's rule: candidate i is chosen
// with probability (1 - softmax(activity)_i) / (n - 1). It has no
// temperature, so with activities that differ by more than a few requests
// the busiest node gets nearly nothing and the others share evenly; no node
// ever gets more than 1/(n-1). With one candidate it picks it.
type ReverseSoftmax struct{ rng *lockedRand }

// NewReverseSoftmax returns the picker; rng may be nil for a randomly
// seeded one.
func NewReverseSoftmax(rng *rand.Rand) *ReverseSoftmax {
	return &ReverseSoftmax{rng: newLockedRand(rng)}
}

// Weights returns (1 - softmax(activity)_i) / (n - 1), or [1] for n = 1.
func (p *ReverseSoftmax) Weights(activity []float64) []float64 {
	n := len(activity)
	if n == 1 {
		return []float64{1}
	}
	w := softmax(activity)
	for i := range w {
		w[i] = (1 - w[i]) / float64(n-1)
	}
	return w
}

// Pick draws a candidate by Weights.
func (p *ReverseSoftmax) Pick(activity []float64) int {
	if len(activity) == 1 {
		return 0
	}
	return weighted(p.rng, p.Weights(activity))
}

// Softmin chooses candidate i with probability exp(-a_i/T) / sum_j
// exp(-a_j/T). A small temperature T approaches least-loaded; a large one
// approaches uniform.
type Softmin struct {
	temperature float64
	rng         *lockedRand
}

// NewSoftmin returns the picker at temperature t, which must be positive
// and finite; rng may be nil for a randomly seeded one.
func NewSoftmin(t float64, rng *rand.Rand) (*Softmin, error) {
	if !(t > 0) || math.IsInf(t, 1) {
		return nil, fmt.Errorf("client: softmin temperature %v is not positive and finite", t)
	}
	return &Softmin{temperature: t, rng: newLockedRand(rng)}, nil
}

// Weights returns softmax(-activity/T).
func (p *Softmin) Weights(activity []float64) []float64 {
	x := make([]float64, len(activity))
	for i, a := range activity {
		x[i] = -a / p.temperature
	}
	return softmax(x)
}

// Pick draws a candidate by Weights.
func (p *Softmin) Pick(activity []float64) int {
	if len(activity) == 1 {
		return 0
	}
	return weighted(p.rng, p.Weights(activity))
}

// Uniform chooses uniformly at random, ignoring activity.
type Uniform struct{ rng *lockedRand }

// NewUniform returns the picker; rng may be nil for a randomly seeded one.
func NewUniform(rng *rand.Rand) *Uniform { return &Uniform{rng: newLockedRand(rng)} }

// Weights returns 1/n for each candidate.
func (p *Uniform) Weights(activity []float64) []float64 {
	w := make([]float64, len(activity))
	for i := range w {
		w[i] = 1 / float64(len(w))
	}
	return w
}

// Pick draws a candidate uniformly.
func (p *Uniform) Pick(activity []float64) int { return p.rng.intN(len(activity)) }

// LeastLoaded chooses a candidate with the least activity, uniformly at
// random among the ties. On stale reports it herds: every request until
// the next report goes to the nodes that were least loaded.
type LeastLoaded struct{ rng *lockedRand }

// NewLeastLoaded returns the picker; rng may be nil for a randomly seeded
// one.
func NewLeastLoaded(rng *rand.Rand) *LeastLoaded { return &LeastLoaded{rng: newLockedRand(rng)} }

// Weights returns 1/k for each of the k candidates with the least activity
// and 0 for the others.
func (p *LeastLoaded) Weights(activity []float64) []float64 {
	least := slices.Min(activity)
	w := make([]float64, len(activity))
	k := 0
	for i, a := range activity {
		if a == least {
			w[i] = 1
			k++
		}
	}
	for i := range w {
		w[i] /= float64(k)
	}
	return w
}

// Pick draws one of the least active candidates uniformly.
func (p *LeastLoaded) Pick(activity []float64) int {
	first, k := 0, 1
	for i := 1; i < len(activity); i++ {
		switch a := activity[i]; {
		case a < activity[first]:
			first, k = i, 1
		case a == activity[first]:
			k++
		}
	}
	if k == 1 {
		return first
	}
	r := p.rng.intN(k)
	for i := first; ; i++ {
		if activity[i] == activity[first] {
			if r == 0 {
				return i
			}
			r--
		}
	}
}

// PowerOfTwo draws two distinct candidates uniformly at random and chooses
// the less active, either one on a tie ("the power of two choices"). A pick
// costs O(1) whatever the number of candidates. With one candidate it picks
// it.
type PowerOfTwo struct{ rng *lockedRand }

// NewPowerOfTwo returns the picker; rng may be nil for a randomly seeded
// one.
func NewPowerOfTwo(rng *rand.Rand) *PowerOfTwo { return &PowerOfTwo{rng: newLockedRand(rng)} }

// Weights returns the probability that Pick chooses each candidate: of the
// n(n-1)/2 pairs, those where it is less active than the other, plus half
// of those where they tie. It costs O(n log n).
func (p *PowerOfTwo) Weights(activity []float64) []float64 {
	n := len(activity)
	if n == 1 {
		return []float64{1}
	}
	sorted := slices.Clone(activity)
	slices.Sort(sorted)
	pairs := float64(n) * float64(n-1) / 2
	w := make([]float64, n)
	for i, a := range activity {
		lo := sort.SearchFloat64s(sorted, a)
		hi := sort.Search(n, func(k int) bool { return sorted[k] > a })
		w[i] = (float64(n-hi) + float64(hi-lo-1)/2) / pairs
	}
	return w
}

// Pick draws the pair and returns its less active candidate.
func (p *PowerOfTwo) Pick(activity []float64) int {
	n := len(activity)
	if n == 1 {
		return 0
	}
	p.rng.mu.Lock()
	defer p.rng.mu.Unlock()
	i := p.rng.rng.IntN(n)
	j := p.rng.rng.IntN(n - 1)
	if j >= i {
		j++
	}
	switch {
	case activity[i] < activity[j]:
		return i
	case activity[j] < activity[i]:
		return j
	case p.rng.rng.IntN(2) == 0:
		return i
	default:
		return j
	}
}
