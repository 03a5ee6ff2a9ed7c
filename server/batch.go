package server

import (
	"context"
	"fmt"
	"sync"
)

// batcher gathers items submitted concurrently into batches for commit,
// with at most parallel commits running at once: items submitted while that
// many run wait, and go together in the next batch. Alone, an item is
// committed at once; under load a batch holds what arrived during one
// commit, so the cost of a commit (a raft entry and its fsyncs, a round trip
// to the leader) is shared by every item in it.
//
// A batch starts after each of its items was submitted, which is what lets
// read-index requests share one: the index answers for every read submitted
// before it was taken.
type batcher[T, R any] struct {
	// commit handles one batch, returning one result per item or an error
	// for all of them.
	commit func(items []T) ([]R, error)
	// parallel bounds the commits running at once.
	parallel int
	// maxItems and, when size is set, maxBytes bound a batch; size gives
	// an item's bytes. A batch always takes at least one item.
	maxItems, maxBytes int
	size               func(T) int
	// spawn runs a committer in a goroutine, or reports false when the
	// owner is closing; closed is the error items get then.
	spawn  func(func()) bool
	closed error

	mu      sync.Mutex
	queue   []queued[T, R]
	running int
}

type queued[T, R any] struct {
	item T
	pos  int
	done chan<- outcome[R]
	ctx  context.Context // the submitter's: an item it gave up on is dropped, not committed
}

type outcome[R any] struct {
	pos int
	res R
	err error
}

// submit commits items, perhaps in several batches together with others'
// items, and returns their results in order. It gives up with ctx's error
// when ctx ends first: items still queued then are dropped, but those
// already in a batch may commit.
func (b *batcher[T, R]) submit(ctx context.Context, items ...T) ([]R, error) {
	done := make(chan outcome[R], len(items))
	b.mu.Lock()
	for i, it := range items {
		b.queue = append(b.queue, queued[T, R]{item: it, pos: i, done: done, ctx: ctx})
	}
	start := b.running < b.parallel
	if start {
		b.running++
	}
	b.mu.Unlock()
	if start && !b.spawn(b.run) {
		b.mu.Lock()
		b.running--
		var orphans []queued[T, R]
		if b.running == 0 {
			orphans, b.queue = b.queue, nil
		}
		b.mu.Unlock()
		for _, q := range orphans {
			q.done <- outcome[R]{pos: q.pos, err: b.closed}
		}
	}
	results := make([]R, len(items))
	var err error
	for range items {
		select {
		case o := <-done:
			results[o.pos] = o.res
			if o.err != nil && err == nil {
				err = o.err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return results, err
}

// run commits batches until the queue is empty.
func (b *batcher[T, R]) run() {
	for {
		batch := b.take()
		if batch == nil {
			return
		}
		items := make([]T, len(batch))
		for i, q := range batch {
			items[i] = q.item
		}
		results, err := b.commit(items)
		if err == nil && len(results) != len(items) {
			err = fmt.Errorf("server: a batch of %d items got %d results", len(items), len(results))
		}
		for i, q := range batch {
			o := outcome[R]{pos: q.pos, err: err}
			if err == nil {
				o.res = results[i]
			}
			q.done <- o
		}
	}
}

// take removes the next batch from the queue, or, when the queue is empty,
// retires the calling committer and returns nil. Items whose submitter gave
// up are answered with its context's error and left out: nothing of them
// was committed, and a stalled commit must not leave work piling up for
// callers long gone.
func (b *batcher[T, R]) take() []queued[T, R] {
	b.mu.Lock()
	defer b.mu.Unlock()
	live := b.queue[:0]
	for _, q := range b.queue {
		if err := q.ctx.Err(); err != nil {
			q.done <- outcome[R]{pos: q.pos, err: err}
			continue
		}
		live = append(live, q)
	}
	clear(b.queue[len(live):])
	b.queue = live
	if len(b.queue) == 0 {
		b.running--
		return nil
	}
	n, bytes := 0, 0
	for n < len(b.queue) && n < b.maxItems {
		if b.size != nil {
			s := b.size(b.queue[n].item)
			if n > 0 && bytes+s > b.maxBytes {
				break
			}
			bytes += s
		}
		n++
	}
	batch := make([]queued[T, R], n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}
