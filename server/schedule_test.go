package server

import (
	"slices"
	"testing"

	"github.com/shoal-kv/shoal/shard/fsm"
)

// Every op that grants or extends a lease, or makes a schedule, tells
// runSchedules, so that the tick at the end of the lease or at the
// schedule's due time is not late; no other op does.
func TestTimedKinds(t *testing.T) {
	timed := map[fsm.Kind]bool{
		fsm.KindAcquire: true, fsm.KindCompleteAcquire: true, fsm.KindExtend: true, fsm.KindEvery: true,
	}
	for k := fsm.KindSet; k <= fsm.KindEnqueueBatch; k++ {
		if got := slices.Contains(timedKinds, k); got != timed[k] {
			t.Errorf("kind %d in timedKinds: %v, want %v", k, got, timed[k])
		}
	}
}
