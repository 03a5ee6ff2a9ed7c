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
type ReadOption func(*wire.Args)

// Stale makes Get answer from the chosen replica's local state without
// asking the leader whether it is current: faster, and available while the
// shard has no leader, but it may miss recent writes (a lagging follower's
// state) or, after a node restart, return an older value than a read before
// it did.
func Stale() ReadOption { return func(a *wire.Args) { a.Stale = true } }

func checkKey(key string) error {
	if key == "" || len(key) > shard.MaxKeySize {
		return fmt.Errorf("%w: %d bytes (1 to %d allowed)", ErrInvalidKey, len(key), shard.MaxKeySize)
	}
	return nil
}

func checkValue(size int) error {
	if size > shard.MaxValueSize {
		return fmt.Errorf("%w: %d bytes (at most %d)", ErrValueTooLarge, size, shard.MaxValueSize)
	}
	return nil
}

// Get reads key. By default the read is linearizable: it reflects every
// write acknowledged before Get was called, whichever replica serves it.
// A missing key gives ErrNotFound.
func (c *Client) Get(ctx context.Context, key string, opts ...ReadOption) (Item, error) {
	if err := checkKey(key); err != nil {
		return Item{}, err
	}
	args := wire.Args{Key: key}
	for _, o := range opts {
		o(&args)
	}
	r, err := c.request(ctx, wire.OpGet, args, c.routeKey(key), 0)
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
	if err := checkKey(args.Key); err != nil {
		return 0, err
	}
	if err := checkValue(len(args.Value)); err != nil {
		return 0, err
	}
	r, err := c.request(ctx, op, args, c.routeKey(args.Key), 0)
	if err != nil {
		return 0, err
	}
	return r.Result.Version, nil
}

// NodeStatus asks the node with the given id for its view of its shards. It
// makes at most DefaultAttempts attempts, so a node that is down is
// reported promptly.
func (c *Client) NodeStatus(ctx context.Context, id string) (*wire.NodeStatus, error) {
	route, err := c.routeNode(id)
	if err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	r, err := c.do(ctx, wire.OpStatus, wire.Args{}, route, min(c.cfg.Attempts, DefaultAttempts), 0)
	if err != nil {
		return nil, err
	}
	if r.Result.Status == nil {
		return nil, fmt.Errorf("client: node %s sent no status", id)
	}
	return r.Result.Status, nil
}
