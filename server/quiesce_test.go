package server

import (
	"testing"
	"time"
)

// A group whose idle appends come too seldom to keep the leader's lease
// never quiesces: its heartbeats are what keeps the lease.
func TestQuietTimeout(t *testing.T) {
	for _, tc := range []struct {
		timing RaftTiming
		want   time.Duration
	}{
		{RaftTiming{}, quietFactor * DefaultHeartbeatTimeout},
		{RaftTiming{HeartbeatTimeout: Duration(2 * time.Second)}, quietFactor * 2 * time.Second},
		{RaftTiming{CommitTimeout: Duration(time.Minute)}, 0},
		{RaftTiming{LeaderLeaseTimeout: Duration(500 * time.Millisecond), CommitTimeout: Duration(300 * time.Millisecond)}, 0},
	} {
		if got := quietTimeout(tc.timing.withDefaults()); got != tc.want {
			t.Errorf("%+v: quiet timeout %v, want %v", tc.timing, got, tc.want)
		}
	}
}
