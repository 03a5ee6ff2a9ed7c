package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/shard/fsm"
)

// heldSubmits is a submit for proposing that records each call and holds
// it until the test releases it with an error (nil: each op's result is
// its Seq as a Version).
type heldSubmits struct {
	mu    sync.Mutex
	calls [][]fsm.Op
	held  []chan error
	added chan struct{}
}

func newHeldSubmits() *heldSubmits { return &heldSubmits{added: make(chan struct{}, 100)} }

func (h *heldSubmits) submit(ctx context.Context, ops ...fsm.Op) ([]fsm.Result, error) {
	release := make(chan error, 1)
	h.mu.Lock()
	h.calls = append(h.calls, ops)
	h.held = append(h.held, release)
	h.mu.Unlock()
	h.added <- struct{}{}
	select {
	case err := <-release:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := make([]fsm.Result, len(ops))
	for i, op := range ops {
		res[i] = fsm.Result{Status: fsm.StatusOK, Version: op.Seq}
	}
	return res, nil
}

func (h *heldSubmits) waitCalls(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.added:
		case <-time.After(5 * time.Second):
			t.Fatalf("submit was not called %d times", n)
		}
	}
}

func (h *heldSubmits) release(i int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[i] <- err
}

type proposed struct {
	res []fsm.Result
	err error
}

func proposeAsync(ctx context.Context, p *proposing, ops ...fsm.Op) <-chan proposed {
	out := make(chan proposed, 1)
	go func() {
		res, err := p.propose(ctx, ops...)
		out <- proposed{res, err}
	}()
	return out
}

// waitJoined waits until n ops have joined an earlier attempt.
func waitJoined(t *testing.T, p *proposing, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); p.joined.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d ops joined, want %d", p.joined.Load(), n)
		}
	}
}

func TestProposingJoinsRetries(t *testing.T) {
	h := newHeldSubmits()
	p := &proposing{submit: h.submit}
	ctx := context.Background()
	set := func(seq uint64) fsm.Op { return fsm.Op{Kind: fsm.KindSet, Client: "c1", Seq: seq, Key: "k"} }

	first := proposeAsync(ctx, p, set(7))
	h.waitCalls(t, 1)
	// A retry of seq 7 joins; seq 8 and a tick are proposed, together.
	retry := proposeAsync(ctx, p, set(7))
	other := proposeAsync(ctx, p, set(8), fsm.Op{Kind: fsm.KindTick})
	h.waitCalls(t, 1)
	waitJoined(t, p, 1)
	h.mu.Lock()
	if len(h.calls) != 2 || len(h.calls[1]) != 2 || h.calls[1][0].Seq != 8 {
		t.Fatalf("submitted %+v, want [seq 7] then [seq 8, tick]", h.calls)
	}
	h.mu.Unlock()

	h.release(0, nil)
	for name, ch := range map[string]<-chan proposed{"first": first, "retry": retry} {
		if r := <-ch; r.err != nil || len(r.res) != 1 || r.res[0].Version != 7 {
			t.Errorf("%s attempt of seq 7: %+v", name, r)
		}
	}
	h.release(1, nil)
	if r := <-other; r.err != nil || len(r.res) != 2 || r.res[0].Version != 8 {
		t.Errorf("seq 8 and a tick: %+v", r)
	}

	// Once the first attempt is done, a later retry is proposed again.
	again := proposeAsync(ctx, p, set(7))
	h.waitCalls(t, 1)
	h.release(2, nil)
	if r := <-again; r.err != nil || r.res[0].Version != 7 {
		t.Errorf("a retry after the first attempt ended: %+v", r)
	}
}

func TestProposingJoinedRetryOutlivesItsFirstAttempt(t *testing.T) {
	h := newHeldSubmits()
	p := &proposing{submit: h.submit}
	op := fsm.Op{Kind: fsm.KindSet, Client: "c1", Seq: 3, Key: "k"}

	gaveUp, giveUp := context.WithCancel(context.Background())
	first := proposeAsync(gaveUp, p, op)
	h.waitCalls(t, 1)
	retry := proposeAsync(context.Background(), p, op)
	waitJoined(t, p, 1)
	giveUp()
	if r := <-first; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("the abandoned attempt: %+v", r)
	}
	// The retry proposes the op itself.
	h.waitCalls(t, 1)
	h.release(1, nil)
	if r := <-retry; r.err != nil || r.res[0].Version != 3 {
		t.Errorf("the retry: %+v", r)
	}

	// So does one whose first attempt failed otherwise.
	failed := errors.New("leadership lost")
	first = proposeAsync(context.Background(), p, op)
	h.waitCalls(t, 1)
	retry = proposeAsync(context.Background(), p, op)
	waitJoined(t, p, 2)
	h.release(2, failed)
	if r := <-first; !errors.Is(r.err, failed) {
		t.Errorf("the failed attempt: %+v, want %v", r, failed)
	}
	h.waitCalls(t, 1)
	h.release(3, nil)
	if r := <-retry; r.err != nil || r.res[0].Version != 3 {
		t.Errorf("the retry of a failed attempt: %+v", r)
	}
}
