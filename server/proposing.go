package server

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/shoal-kv/shoal/shard/fsm"
)

// proposing joins each retry of a write that reaches a leader while an
// earlier attempt of the same request (the same client and sequence
// number) waits there to commit, to that attempt, instead of proposing it
// again. The client retries a write that is only slow, as well as one that
// was lost, and in a disk stall every waiting write is retried, often more
// than once: the state machine would answer the copies from the client's
// session, but each would take room in a raft entry and a pass through
// the state machine after the stall, when the shard has the most to catch
// up on.
type proposing struct {
	// submit proposes ops and waits for their results.
	submit func(ctx context.Context, ops ...fsm.Op) ([]fsm.Result, error)

	mu      sync.Mutex
	pending map[sessionSeq]*proposal
	joined  atomic.Uint64 // ops that joined an earlier attempt
}

// sessionSeq names a request: its client and sequence number.
type sessionSeq struct {
	client string
	seq    uint64
}

// proposal is an op waiting to commit; done closes when res or err is set.
type proposal struct {
	done chan struct{}
	res  fsm.Result
	err  error
}

// propose proposes ops and returns their results, as submit does, except
// that an op whose request already waits to commit here waits for that
// attempt and takes its result; if the attempt fails, the op is proposed
// then.
func (p *proposing) propose(ctx context.Context, ops ...fsm.Op) ([]fsm.Result, error) {
	var (
		fresh   []fsm.Op
		freshAt []int
		mine    []*proposal // one per fresh op; nil for an op of no request
		joined  = map[int]*proposal{}
	)
	p.mu.Lock()
	for i, op := range ops {
		var own *proposal
		if op.Client != "" && op.Seq != 0 {
			k := sessionSeq{op.Client, op.Seq}
			if earlier := p.pending[k]; earlier != nil {
				joined[i] = earlier
				p.joined.Add(1)
				continue
			}
			own = &proposal{done: make(chan struct{})}
			if p.pending == nil {
				p.pending = make(map[sessionSeq]*proposal)
			}
			p.pending[k] = own
		}
		fresh, freshAt, mine = append(fresh, op), append(freshAt, i), append(mine, own)
	}
	p.mu.Unlock()

	results := make([]fsm.Result, len(ops))
	if len(fresh) > 0 {
		res, err := p.submit(ctx, fresh...)
		p.mu.Lock()
		for j, own := range mine {
			if own == nil {
				continue
			}
			delete(p.pending, sessionSeq{fresh[j].Client, fresh[j].Seq})
			if own.err = err; err == nil {
				own.res = res[j]
			}
			close(own.done)
		}
		p.mu.Unlock()
		if err != nil {
			return nil, err
		}
		for j, i := range freshAt {
			results[i] = res[j]
		}
	}
	for i, earlier := range joined {
		select {
		case <-earlier.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if earlier.err == nil {
			results[i] = earlier.res
			continue
		}
		// The earlier attempt failed, or its requester gave up, perhaps
		// before its op was proposed: this one is proposed as if it had
		// come after, and fails or succeeds on its own.
		res, err := p.propose(ctx, ops[i])
		if err != nil {
			return nil, err
		}
		results[i] = res[0]
	}
	return results, nil
}
