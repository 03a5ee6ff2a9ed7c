package server

import (
	"slices"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

func TestLeaderShare(t *testing.T) {
	for _, tc := range []struct {
		nodes, shards, replicas int
		want                    int
	}{
		{3, 6, 3, 2},
		{3, 1, 3, 1},
		{3, 4, 3, 2}, // 4/3 rounded up
		{5, 10, 3, 2},
		{4, 8, 2, 2},
		{3, 3, 1, 1},
	} {
		ids := make([]string, tc.nodes)
		for i := range ids {
			ids[i] = string(rune('a' + i))
		}
		m, err := shard.NewEvenMap(ids, tc.shards, tc.replicas)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if got := leaderShare(m, id); got != tc.want {
				t.Errorf("%d nodes, %d shards × %d: share of %s is %d, want %d", tc.nodes, tc.shards, tc.replicas, id, got, tc.want)
			}
		}
	}
}

func TestLeadershipOffers(t *testing.T) {
	m := &shard.Map{Version: 1, Shards: []shard.Shard{
		{ID: 0, Replicas: []string{"a", "b", "c"}},
		{ID: 1, Replicas: []string{"a", "c", "d"}},
		{ID: 2, Replicas: []string{"a", "b", "d"}},
	}}
	got := leadershipOffers(m, "a", []shard.ID{2, 1})
	want := []offer{{shard: 2, to: "b"}, {shard: 1, to: "c"}, {shard: 1, to: "d"}}
	if !slices.Equal(got, want) {
		t.Errorf("offers %v, want %v", got, want)
	}
	if got := leadershipOffers(m, "a", nil); len(got) != 0 {
		t.Errorf("offers of no led shard: %v", got)
	}
}

// A failed transfer's cooldown doubles from transferCooldown up to
// maxTransferCooldown and stays there, however many failures follow.
func TestTransferCooldown(t *testing.T) {
	now := time.Unix(0, 0)
	var c cooldown
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute}
	for i := range 100 {
		c = c.after(now)
		w := want[min(i, len(want)-1)]
		if got := c.until.Sub(now); got != w {
			t.Fatalf("after failure %d: cooldown %v, want %v", i+1, got, w)
		}
	}
}
