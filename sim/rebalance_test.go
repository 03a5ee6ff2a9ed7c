package sim

import (
	"context"
	"os"
	"testing"
)

// The rebalance experiment, reduced (shorter steady phases, the same
// changes): the whole history, through a join, a rebalance, a split,
// replica moves with their source, target or leader killed halfway, and a
// node lost and replaced, must be linearizable, and no phase may time out.
// SHOAL_LONG=1 runs the full experiment.
func TestRebalanceExperiment(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real clusters")
	}
	cfg := Config{Quick: os.Getenv("SHOAL_LONG") == "", Seed: 1, Progress: &testLogWriter{t}}
	r, err := rebalance(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Tables) != 1 {
		t.Fatalf("the report has %d tables, want the phase table", len(r.Tables))
	}
	if rows := len(r.Tables[0].Rows); rows != len(rebPhases()) {
		t.Errorf("the report's phase table has %d rows, want one per phase, %d", rows, len(rebPhases()))
	}
	checkReport(t, r) // a violation's note names its visualization
}
