package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// gatedBatcher commits batches of ints, doubling each, but holds every
// commit until the test releases it, and records the batches.
type gatedBatcher struct {
	b       *batcher[int, int]
	group   group
	release chan struct{}
	started chan []int
}

func newGatedBatcher(parallel, maxItems, maxBytes int) *gatedBatcher {
	g := &gatedBatcher{release: make(chan struct{}), started: make(chan []int, 100)}
	g.b = &batcher[int, int]{
		commit: func(items []int) ([]int, error) {
			g.started <- items
			<-g.release
			out := make([]int, len(items))
			for i, v := range items {
				if v < 0 {
					return nil, errors.New("negative")
				}
				out[i] = 2 * v
			}
			return out, nil
		},
		parallel: parallel,
		maxItems: maxItems, maxBytes: maxBytes, size: func(v int) int { return v },
		spawn: g.group.Go, closed: errors.New("closed"),
	}
	return g
}

func (g *gatedBatcher) submitAsync(ctx context.Context, items ...int) <-chan []int {
	out := make(chan []int, 1)
	go func() {
		res, err := g.b.submit(ctx, items...)
		if err != nil {
			res = nil
		}
		out <- res
	}()
	return out
}

// waitQueued waits until n items wait in the batcher's queue.
func (g *gatedBatcher) waitQueued(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.b.mu.Lock()
		q := len(g.b.queue)
		g.b.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d items queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBatcherGathersWhileCommitting(t *testing.T) {
	g := newGatedBatcher(1, 100, 1000)
	ctx := context.Background()
	first := g.submitAsync(ctx, 1)
	if got := <-g.started; len(got) != 1 || got[0] != 1 {
		t.Fatalf("first batch %v, want [1]", got)
	}
	// While the first commit runs, three callers submit; they must go
	// together, each getting its own results in order.
	a := g.submitAsync(ctx, 2, 3)
	g.waitQueued(t, 2)
	b := g.submitAsync(ctx, 4)
	c := g.submitAsync(ctx, 5)
	g.waitQueued(t, 4)
	g.release <- struct{}{}
	if got := <-first; len(got) != 1 || got[0] != 2 {
		t.Fatalf("first results %v", got)
	}
	got := <-g.started
	if len(got) != 4 {
		t.Fatalf("second batch %v, want the 4 items submitted during the first commit", got)
	}
	g.release <- struct{}{}
	if r := <-a; len(r) != 2 || r[0] != 4 || r[1] != 6 {
		t.Fatalf("results %v, want [4 6]", r)
	}
	if r := <-b; len(r) != 1 || r[0] != 8 {
		t.Fatalf("results %v, want [8]", r)
	}
	if r := <-c; len(r) != 1 || r[0] != 10 {
		t.Fatalf("results %v, want [10]", r)
	}
	g.group.Wait()
	if g.b.running != 0 {
		t.Fatalf("%d committers still counted after the queue emptied", g.b.running)
	}
}

func TestBatcherRespectsLimits(t *testing.T) {
	g := newGatedBatcher(1, 3, 10)
	ctx := context.Background()
	hold := g.submitAsync(ctx, 1)
	<-g.started
	done := g.submitAsync(ctx, 1, 1, 1, 1, 6, 6, 20)
	g.waitQueued(t, 7)
	close(g.release)
	<-hold
	var batches [][]int
	for range 4 {
		batches = append(batches, <-g.started)
	}
	// At most 3 items and 10 bytes a batch, but an item larger than the
	// budget still goes, alone.
	want := [][]int{{1, 1, 1}, {1, 6}, {6}, {20}}
	for i := range want {
		if len(batches[i]) != len(want[i]) {
			t.Fatalf("batches %v, want %v", batches, want)
		}
	}
	if r := <-done; len(r) != 7 || r[6] != 40 {
		t.Fatalf("results %v", r)
	}
}

func TestBatcherParallelCommits(t *testing.T) {
	g := newGatedBatcher(2, 100, 1000)
	ctx := context.Background()
	a := g.submitAsync(ctx, 1)
	<-g.started
	b := g.submitAsync(ctx, 2)
	if got := <-g.started; len(got) != 1 || got[0] != 2 {
		t.Fatalf("second commit %v: it should start while the first runs", got)
	}
	c := g.submitAsync(ctx, 3)
	g.waitQueued(t, 1) // a third waits: two already run
	close(g.release)
	for _, ch := range []<-chan []int{a, b, c} {
		if r := <-ch; len(r) != 1 {
			t.Fatalf("results %v", r)
		}
	}
}

func TestBatcherErrorsAndClosing(t *testing.T) {
	g := newGatedBatcher(1, 100, 1000)
	close(g.release)
	ctx := context.Background()
	if _, err := g.b.submit(ctx, 1, -1); err == nil {
		t.Fatal("a failed commit must fail every item in it")
	}
	if r, err := g.b.submit(ctx, 1); err != nil || r[0] != 2 {
		t.Fatalf("after a failed batch: %v, %v", r, err)
	}
	g.group.Wait()
	if _, err := g.b.submit(ctx, 1); err == nil || err.Error() != "closed" {
		t.Fatalf("submit after closing: %v, want the batcher's closed error", err)
	}

	// A caller whose context ends stops waiting.
	h := newGatedBatcher(1, 100, 1000)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); <-h.started }()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := h.b.submit(cctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("submit with an ending context: %v", err)
	}
	wg.Wait()
	close(h.release)
	h.group.Wait()
}

// Items whose submitter gave up while they waited are not committed.
func TestBatcherDropsAbandonedItems(t *testing.T) {
	g := newGatedBatcher(1, 100, 1000)
	ctx := context.Background()
	hold := g.submitAsync(ctx, 1)
	<-g.started
	cctx, cancel := context.WithCancel(ctx)
	abandoned := make(chan error, 1)
	go func() {
		_, err := g.b.submit(cctx, 2, 3)
		abandoned <- err
	}()
	g.waitQueued(t, 2)
	kept := g.submitAsync(ctx, 4)
	g.waitQueued(t, 3)
	cancel()
	if err := <-abandoned; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned submit: %v", err)
	}
	close(g.release)
	<-hold
	if got := <-g.started; len(got) != 1 || got[0] != 4 {
		t.Fatalf("next batch %v, want only the item still waited for, [4]", got)
	}
	if r := <-kept; len(r) != 1 || r[0] != 8 {
		t.Fatalf("results %v", r)
	}
	g.group.Wait()
}
