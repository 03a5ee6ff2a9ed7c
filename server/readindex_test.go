package server

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
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
	settle := func() { t.Helper(); awaitTermCalls(ctx, t, rep) }
	settle()

	type answer struct {
		term  uint64
		err   error
		block bool          // until the call's time runs out
		after time.Duration // before answering
	}
	unreachable := answer{err: errors.New("unreachable")}
	var answers atomic.Pointer[map[string]answer]
	var blocked, mostBlocked atomic.Int32
	a, b := rep.verifier.others[0], rep.verifier.others[1]
	calls := map[string]*atomic.Int32{a: {}, b: {}}
	rep.verifier.termOf = func(ctx context.Context, node string) (uint64, error) {
		calls[node].Add(1)
		a := (*answers.Load())[node]
		time.Sleep(a.after)
		if a.block {
			now := blocked.Add(1)
			defer blocked.Add(-1)
			if now > mostBlocked.Load() {
				mostBlocked.Store(now)
			}
			<-ctx.Done()
			return 0, ctx.Err()
		}
		return a.term, a.err
	}
	for _, tc := range []struct {
		name    string
		answers map[string]answer
		want    error // nil: an index
	}{
		{"one follower in the term", map[string]answer{a: {term: term}, b: unreachable}, nil},
		{"the other follower in the term", map[string]answer{a: unreachable, b: {term: term}}, nil},
		{"one follower in an older term", map[string]answer{a: {term: term - 1}, b: unreachable}, nil},
		{"one follower in a newer term", map[string]answer{a: {term: term + 1}, b: unreachable}, errNotLeader},
		{"no follower answers", map[string]answer{a: unreachable, b: unreachable}, errRetry},
	} {
		answers.Store(&tc.answers)
		settle()
		_, err := rep.readIndex(ctx)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: read index: %v, want %v", tc.name, err, tc.want)
		}
	}

	// A round calls one follower, the one that answered first before.
	answers.Store(&map[string]answer{a: {term: term}, b: {term: term}})
	settle()
	if _, err := rep.readIndex(ctx); err != nil {
		t.Fatal(err)
	}
	settle()
	calls[a].Store(0)
	calls[b].Store(0)
	const reads = 40
	for i := 0; i < reads; i++ {
		if _, err := rep.readIndex(ctx); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	settle()
	if fewer := min(calls[a].Load(), calls[b].Load()); fewer > reads/2 {
		t.Errorf("%d reads called the followers %d and %d times, want mostly one", reads, calls[a].Load(), calls[b].Load())
	}

	// Rounds go on while a follower does not answer, and it is never
	// called more than once at a time; the other, slower than hedgeDelay,
	// is called at first alongside it and then alone.
	answers.Store(&map[string]answer{a: {term: term, after: 2 * hedgeDelay}, b: {block: true}})
	settle()
	for i := 0; i < 20; i++ {
		if _, err := rep.readIndex(ctx); err != nil {
			t.Fatalf("read %d with one follower silent: %v", i, err)
		}
	}
	if mostBlocked.Load() != 1 {
		t.Errorf("a silent follower had up to %d calls at once, want 1", mostBlocked.Load())
	}

	if _, err := leader.peers.termOf(ctx, a, shard.ID(7)); err == nil {
		t.Error("term of a shard the node does not hold: no error")
	}
}

// awaitTermCalls waits until rep's read rounds have no call running. A
// round ends at a quorum; its other calls run on, and the next round does
// not call those replicas until they end.
func awaitTermCalls(ctx context.Context, t *testing.T, rep *replica) {
	t.Helper()
	for i := range rep.verifier.asking {
		for rep.verifier.asking[i].Load() {
			if ctx.Err() != nil {
				t.Fatal("a term call did not end")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// Each follower counts at most once in a round, whatever order the
// answers come in and whichever follower the round starts with. A spec
// allows 3 replicas at most, where a round ends at its first answer in the
// term; with 6 followers (scripted) it needs 3 of them: 2 are too few.
func TestReadRoundCountsEachFollowerOnce(t *testing.T) {
	c := newTestCluster(t, 3, 1, 3)
	rep := c.leader(0).replicas[0]
	term := rep.raft.CurrentTerm()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rep.verifier.others = []string{"p0", "p1", "p2", "p3", "p4", "p5"}
	rep.verifier.asking = make([]atomic.Bool, len(rep.verifier.others))
	var inTerm atomic.Pointer[map[string]bool]
	rep.verifier.termOf = func(ctx context.Context, node string) (uint64, error) {
		if (*inTerm.Load())[node] {
			return term, nil
		}
		return 0, errors.New("unreachable")
	}
	others := rep.verifier.others
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 60; i++ {
		k := 2 + i%2
		set := map[string]bool{}
		for _, j := range rng.Perm(len(others))[:k] {
			set[others[j]] = true
		}
		inTerm.Store(&set)
		awaitTermCalls(ctx, t, rep)
		_, err := rep.readIndex(ctx)
		if k == 2 && !errors.Is(err, errRetry) || k == 3 && err != nil {
			t.Fatalf("round %d, %d of %d followers in the term: %v", i, k, len(others), err)
		}
	}
}

// A term call that runs out of time resets the connection, so that calls
// to a peer that stopped reading do not pile up on it.
func TestTermCallTimeoutResetsTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // and never answer
		}
	}()
	p := newPeers(map[string]string{"silent": ln.Addr().String()}, time.Second)
	defer p.close()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := p.termOf(ctx, "silent", 0)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d to a silent peer: %v, want a deadline error", i, err)
		}
		var c net.Conn
		select {
		case c = <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d did not dial a connection of its own", i)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("call %d: the connection did not end cleanly: %v", i, err)
		}
		c.Close()
	}
}
