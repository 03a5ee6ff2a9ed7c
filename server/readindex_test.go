package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// A leader hands out a read index only when a quorum, itself included,
// answers the round's calls with a term no newer than its own.
func TestReadIndexNeedsAQuorumInTheTerm(t *testing.T) {
	c := newTestCluster(t, 3, 1, 3)
	leader := c.leader(0)
	rep := leader.replicas[0]
	term := rep.raft.CurrentTerm()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, node := range rep.verifier.others {
		got, err := leader.peers.termOf(ctx, node, 0)
		if err != nil || got != term {
			t.Fatalf("term of shard 0 on %s: %d, %v; want %d", node, got, err, term)
		}
	}
	if _, err := rep.readIndex(ctx); err != nil {
		t.Fatalf("read index with every replica in the term: %v", err)
	}

	type answer struct {
		term uint64
		err  error
	}
	unreachable := answer{err: errors.New("unreachable")}
	var answers atomic.Pointer[map[string]answer]
	rep.verifier.termOf = func(ctx context.Context, node string) (uint64, error) {
		a := (*answers.Load())[node]
		return a.term, a.err
	}
	a, b := rep.verifier.others[0], rep.verifier.others[1]
	for _, tc := range []struct {
		name    string
		answers map[string]answer
		want    error // nil: an index
	}{
		{"one follower in the term", map[string]answer{a: {term: term}, b: unreachable}, nil},
		{"one follower in an older term", map[string]answer{a: {term: term - 1}, b: unreachable}, nil},
		{"one follower in a newer term", map[string]answer{a: {term: term + 1}, b: unreachable}, errNotLeader},
		{"no follower answers", map[string]answer{a: unreachable, b: unreachable}, errRetry},
	} {
		answers.Store(&tc.answers)
		_, err := rep.readIndex(ctx)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: read index: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := leader.peers.termOf(ctx, a, shard.ID(7)); err == nil {
		t.Error("term of a shard the node does not hold: no error")
	}
}
