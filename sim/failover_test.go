package sim

import (
	"math/rand/v2"
	"testing"
	"time"
)

// With one follower, the model reduces to the renewal process's mean
// residual life: hb + E[X²]/2E[X] = hb(1 + 7/9) for X uniform in [hb, 2hb).
// Two followers, taking the later, must take longer.
func TestElectionTheory(t *testing.T) {
	hb := 500 * time.Millisecond
	mean, sd := electionTheory(hb, 200000, rand.New(rand.NewPCG(1, 1)))
	one := time.Duration(float64(hb) * (1 + 7.0/9))
	if mean <= one || mean > 3*hb {
		t.Errorf("later of two followers: %v, want in (%v, %v]", mean, one, 3*hb)
	}
	if sd <= 0 || sd > hb {
		t.Errorf("sd %v", sd)
	}
}

// The failover experiment, reduced: every check must pass on the real code.
func TestFailoverExperiment(t *testing.T) {
	runQuick(t, failover)
}
