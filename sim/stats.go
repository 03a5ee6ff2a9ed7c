package sim

import (
	"math"
	"slices"
	"time"
)

// Estimate is a mean with the half-width of its 95% confidence interval.
type Estimate struct {
	Mean, HalfWidth float64
	N               int
}

// tQuantile975 is the 97.5% point of Student's t distribution with n-1
// degrees of freedom, for small n; the normal 1.96 beyond.
func tQuantile975(n int) float64 {
	table := []float64{0, 0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262,
		2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086}
	if n < len(table) {
		return table[n]
	}
	return 1.96
}

// Mean estimates the mean of samples (one per seed) with a t interval.
func Mean(samples []float64) Estimate {
	n := len(samples)
	if n == 0 {
		return Estimate{Mean: math.NaN()}
	}
	var sum float64
	for _, x := range samples {
		sum += x
	}
	mean := sum / float64(n)
	if n == 1 {
		return Estimate{Mean: mean, N: 1}
	}
	var ss float64
	for _, x := range samples {
		ss += (x - mean) * (x - mean)
	}
	sd := math.Sqrt(ss / float64(n-1))
	return Estimate{Mean: mean, HalfWidth: tQuantile975(n) * sd / math.Sqrt(float64(n)), N: n}
}

// Proportion estimates a success rate with the Wilson 95% interval.
func Proportion(successes, trials int) Estimate {
	if trials == 0 {
		return Estimate{Mean: math.NaN()}
	}
	const z = 1.96
	n := float64(trials)
	p := float64(successes) / n
	denom := 1 + z*z/n
	center := (p + z*z/(2*n)) / denom
	half := z * math.Sqrt(p*(1-p)/n+z*z/(4*n*n)) / denom
	// Report the observed rate with the (asymmetric) interval's larger half.
	return Estimate{Mean: p, HalfWidth: math.Max(center+half-p, p-(center-half)), N: trials}
}

// Percentiles returns the ps-th percentiles (0 to 100) of durations,
// sorting a copy of them once: the smallest value with at least p% of them
// at or below it; 0 for none.
func Percentiles(d []time.Duration, ps ...float64) []time.Duration {
	out := make([]time.Duration, len(ps))
	if len(d) == 0 {
		return out
	}
	s := slices.Clone(d)
	slices.Sort(s)
	for k, p := range ps {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		out[k] = s[max(0, min(i, len(s)-1))]
	}
	return out
}
