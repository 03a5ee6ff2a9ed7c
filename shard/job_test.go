package shard

import "testing"

func TestJobIDs(t *testing.T) {
	for _, slot := range []int{0, 1, 4095} {
		if got := JobSlot(NewJobID(slot, "abc")); got != slot {
			t.Errorf("JobSlot(NewJobID(%d)) = %d", slot, got)
		}
	}
	if got := JobSlot("not-a-job-id"); got != KeySlot("not-a-job-id") {
		t.Errorf("a foreign id routes to %d", got)
	}
	if got := JobSlot("jzzz.x"); got != KeySlot("jzzz.x") {
		t.Errorf("an id without a hex slot routes to %d", got)
	}
}
