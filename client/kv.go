package client

import (
	"context"
	"fmt"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Item is a key's value and version.
type Item struct {
	Key   string
	Value []byte
	// Version is the revision of the shard at the key's last write: it
	// grows with every write to the key, also across delete and
	// re-create. CompareAndSet takes it.
	Version uint64
}

// ReadOption changes how Get reads.
type ReadOption func(*readOptions)

// readOptions are what the ReadOptions of a Get set.
type readOptions struct {
	stale bool
}

// Stale makes Get answer from the chosen replica's local state without
// asking the leader whether it is current: faster, and available while the
// shard has no leader, but it may miss recent writes (a lagging follower's
// state) or, after a node restart, return an older value than a read before
// it did. Right after a key's slot moved to another shard, a replica of that
// shard that has not applied the move yet answers ErrNotFound for it.
func Stale() ReadOption { return func(o *readOptions) { o.stale = true } }

// Get reads key. By default the read is linearizable: it reflects every
// write acknowledged before Get was called, whichever replica serves it.
// A missing key gives ErrNotFound.
func (c *Client) Get(ctx context.Context, key string, opts ...ReadOption) (Item, error) {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	r, err := c.call(ctx, wire.OpGet, wire.Args{Key: key, Stale: o.stale})
	if err != nil {
		return Item{}, err
	}
	return Item{Key: key, Value: []byte(r.Result.Value), Version: r.Result.Version}, nil
}

// Set stores value under key and returns its new version.
func (c *Client) Set(ctx context.Context, key string, value []byte) (uint64, error) {
	return c.write(ctx, wire.OpSet, wire.Args{Key: key, Value: string(value)})
}

// Delete removes key; ErrNotFound if it did not exist.
func (c *Client) Delete(ctx context.Context, key string) error {
	_, err := c.write(ctx, wire.OpDelete, wire.Args{Key: key})
	return err
}

// CompareAndSet stores value under key only if the key is at version
// (0: only if the key does not exist), and returns the new version.
// Otherwise it fails with an error matching ErrVersionConflict, an *Error
// whose Version is the key's current one (0 if absent).
func (c *Client) CompareAndSet(ctx context.Context, key string, version uint64, value []byte) (uint64, error) {
	return c.write(ctx, wire.OpCompareAndSet, wire.Args{Key: key, Value: string(value), Version: version})
}

func (c *Client) write(ctx context.Context, op wire.Op, args wire.Args) (uint64, error) {
	r, err := c.call(ctx, op, args)
	if err != nil {
		return 0, err
	}
	return r.Result.Version, nil
}

// NodeStatus is a node's report of itself and of its replicas.
type NodeStatus struct {
	ID string
	// Activity is the node's load: the client requests in progress at
	// it, averaged over its recent past.
	Activity float64
	// Shards lists the node's replicas, by shard id.
	Shards []ShardStatus
}

// ShardStatus is one replica's view of its raft group.
type ShardStatus struct {
	ID shard.ID
	// State is the raft state: Leader, Follower, Candidate or Shutdown.
	State string
	// Leader is the id of the node this replica knows as leader, if any.
	Leader string
	// Applied is the raft index the replica's state has applied; Keys
	// counts the keys in it.
	Applied uint64
	Keys    int
}

// NodeStatus asks the node with the given id for its view of its shards. It
// makes at most DefaultAttempts attempts, whatever ctx's deadline, so a
// node that is down is reported promptly.
func (c *Client) NodeStatus(ctx context.Context, id string) (NodeStatus, error) {
	route, err := c.routeNode(id)
	if err != nil {
		return NodeStatus{}, err
	}
	if err := c.enter(); err != nil {
		return NodeStatus{}, err
	}
	defer c.calls.Done()
	r, err := c.do(ctx, wire.OpStatus, wire.Args{}, route, atMost(min(c.cfg.Attempts, DefaultAttempts)), 0)
	if err != nil {
		return NodeStatus{}, err
	}
	st := r.Result.Status
	if st == nil {
		return NodeStatus{}, fmt.Errorf("client: node %s sent no status", id)
	}
	out := NodeStatus{ID: st.ID, Activity: float64(st.Activity) / 1000}
	for _, s := range st.Shards {
		out.Shards = append(out.Shards, ShardStatus{ID: s.ID, State: s.State, Leader: s.Leader, Applied: s.Applied, Keys: s.Keys})
	}
	return out, nil
}
