package sim

import (
	"context"
	"math"
	"testing"
)

func TestLossTheory(t *testing.T) {
	for _, tc := range []struct{ p, want float64 }{{0, 1}, {1, 0}, {0.2, 1 - math.Pow(0.36, 3)}} {
		if got := lossTheory(tc.p, 3); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("lossTheory(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := attemptsTheory(0.2, 3); math.Abs(got-(1+0.36+0.36*0.36)) > 1e-12 {
		t.Errorf("attemptsTheory(0.2) = %v", got)
	}
}

// The loss experiment, reduced: every check must pass on the real code.
func TestLossExperiment(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real clusters")
	}
	r, err := loss(context.Background(), Config{Quick: true, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r)
	if len(r.Figures) != 2 || len(r.Tables) != 1 {
		t.Errorf("%d figures and %d tables", len(r.Figures), len(r.Tables))
	}
}
