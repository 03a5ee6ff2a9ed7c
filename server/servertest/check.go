package servertest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
)

// Errors of Check, testable with errors.Is.
var (
	// ErrDiverged: replicas of a shard that applied the same log index
	// hold different states.
	ErrDiverged = errors.New("servertest: replicas diverged")
	// ErrNotConverged: the running replicas of a shard did not reach one
	// applied index in time.
	ErrNotConverged = errors.New("servertest: replicas did not converge")
)

// Check waits until the running replicas of each shard have applied the
// same log index, and compares their states' digests there. A follower
// learns of a commit with its leader's next message, so Check has each
// leader append a barrier (server.Node.Barrier). It reports every shard
// whose replicas differ (ErrDiverged), or did not reach one index before
// ctx ended (ErrNotConverged).
func (c *Cluster) Check(ctx context.Context) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, s := range c.Map().Shards {
		wg.Go(func() {
			if err := c.checkShard(ctx, s.ID); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}

// barrierEvery is how many polls of checkShard pass between barriers.
const barrierEvery = 10

// checkShard checks the running replicas of shard id.
func (c *Cluster) checkShard(ctx context.Context, id shard.ID) error {
	for i := 0; ; i++ {
		holders := c.holders(id)
		if len(holders) < 2 {
			return nil
		}
		// Followers learn of commits only with the leader's next entry: a
		// barrier is one that no state machine sees.
		if l := c.Leader(id); l != nil && i%barrierEvery == 0 {
			_ = l.Barrier(ctx, id) // a failed one is tried again
		}
		// Compare only at one index: the cheap counters first, then the
		// digests, each of which says the index it was taken at.
		if applied, same := sameApplied(holders, func(n *server.Node) uint64 { return n.ShardStats(id).Applied }); same {
			digests := map[string]server.StateDigest{}
			for nid, n := range holders {
				d, err := n.StateDigest(id)
				if err != nil {
					return fmt.Errorf("servertest: shard %d on %s: %w", id, nid, err)
				}
				digests[nid] = d
			}
			if _, same := sameApplied(holders, func(n *server.Node) uint64 { return digests[n.ID()].Applied }); same {
				return compareDigests(id, applied, digests)
			}
		}
		if err := pause(ctx); err != nil {
			at := map[string]uint64{}
			for nid, n := range holders {
				at[nid] = n.ShardStats(id).Applied
			}
			return fmt.Errorf("%w: shard %d, applied indexes %v: %w", ErrNotConverged, id, at, err)
		}
	}
}

// sameApplied reports whether applied gives every node the same index, and
// which.
func sameApplied(nodes map[string]*server.Node, applied func(*server.Node) uint64) (uint64, bool) {
	first, at := true, uint64(0)
	for _, n := range nodes {
		a := applied(n)
		if !first && a != at {
			return 0, false
		}
		first, at = false, a
	}
	return at, true
}

// compareDigests reports the replicas whose digest differs from the
// others'.
func compareDigests(id shard.ID, applied uint64, digests map[string]server.StateDigest) error {
	groups := map[[32]byte][]string{}
	for nid, d := range digests {
		groups[d.Sum] = append(groups[d.Sum], nid)
	}
	if len(groups) == 1 {
		return nil
	}
	var parts []string
	for sum, nodes := range groups {
		sort.Strings(nodes)
		parts = append(parts, fmt.Sprintf("%s %x", strings.Join(nodes, ","), sum[:6]))
	}
	sort.Strings(parts)
	return fmt.Errorf("%w: shard %d at index %d: %s", ErrDiverged, id, applied, strings.Join(parts, "; "))
}
