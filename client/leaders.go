package client

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// A write goes to its shard's leader in the end: a follower that gets one
// forwards it there, which costs a node-to-node round trip and the
// follower's work. So the client sends a write first to the replica it
// believes leads the shard, and only its retries to the others by the
// picker: the nodes' leadership balancing, not the picker, spreads writes.
// Reads and acquires stay with the picker. The belief comes from the
// nodes' heartbeats, which list the shards each leads, and from the
// replies of followers that forwarded a write, which name the leader
// (wire.Message.Leader). It may be stale right after a failover, and then
// forwarding covers it.

// leaderTable holds, per shard, the node the client last heard lead it:
// from that node's heartbeat, or from a follower's reply naming it. It
// belongs to one view and holds only shards of its map, each naming one of
// the shard's replicas.
type leaderTable struct {
	mu sync.Mutex
	by map[shard.ID]string
}

// get returns the node believed to lead shard id, "" if none.
func (t *leaderTable) get(id shard.ID) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.by[id]
}

// heard records what node's heartbeat said: it leads exactly the shards in
// leads. A shard it no longer lists stops naming it.
func (t *leaderTable) heard(v *view, node string, leads []shard.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, n := range t.by {
		if n == node && !slices.Contains(leads, id) {
			delete(t.by, id)
		}
	}
	for _, id := range leads {
		if isReplica(v, id, node) {
			t.set(id, node)
		}
	}
}

// named records a follower's reply naming the leader of a shard.
func (t *leaderTable) named(v *view, h *wire.LeaderHint) {
	if h == nil || !isReplica(v, h.Shard, h.Node) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.set(h.Shard, h.Node)
}

func (t *leaderTable) set(id shard.ID, node string) {
	if t.by == nil {
		t.by = make(map[shard.ID]string)
	}
	t.by[id] = node
}

// isReplica reports whether node holds a replica of shard id in v's map.
func isReplica(v *view, id shard.ID, node string) bool {
	s := v.smap.Shard(id)
	return s != nil && slices.Contains(s.Replicas, node)
}

// routeWrite routes the attempts of a write about slot: each to the live
// replica believed to lead the slot's shard, unless an earlier attempt
// went there; otherwise, as routeSlot, to a replica the picker chooses.
func (c *Client) routeWrite(slot int) router {
	return func(tried []netip.AddrPort) (target, error) {
		v := c.view.Load()
		id := v.smap.SlotShard(slot)
		if n := v.nodes[v.leaders.get(id)]; n != nil && n.alive(time.Now(), c.cfg.NodeTimeout) && !contains(tried, n.addr) {
			return target{addr: n.addr, node: n}, nil
		}
		return c.pickReplica(v, id, tried)
	}
}
