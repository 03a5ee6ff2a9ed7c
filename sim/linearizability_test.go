package sim

import (
	"context"
	"os"
	"testing"
)

// The linearizability experiment, reduced: every round of every disruption
// must produce histories porcupine accepts. SHOAL_LONG=1 runs the full
// experiment, 1,000 histories.
func TestLinearizabilityExperiment(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real clusters")
	}
	cfg := Config{Quick: os.Getenv("SHOAL_LONG") == "", Seed: 1}
	if !cfg.Quick {
		cfg.Progress = &testLogWriter{t}
	}
	if set := linearizabilitySetup(cfg); !cfg.Quick && set.seeds*set.rounds*set.histories < 1000 {
		t.Fatalf("the long run checks only %d histories", set.seeds*set.rounds*set.histories)
	}
	r, err := linearizability(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r) // a violation's note names its visualization
}
