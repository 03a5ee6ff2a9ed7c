package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/shoal-kv/shoal/wire"
)

// adminWait is how long a node may hold an attempt of an Admin call: a
// cluster command is carried to the control group's leader and committed
// there before the node answers, which takes longer than a round trip.
// The replies are not round trips the estimator should learn from.
const adminWait = 2 * time.Second

// Admin sends cluster command command (the server package lists them, as
// server.AdminInfo, server.AdminAddNode and so on) with args, encoded as
// JSON (no arguments if nil), to a live node of the cluster, which
// carries it to the control group, and decodes the node's JSON answer
// into reply (unless nil). The commands are idempotent, so the call is
// retried on another node when one is unavailable, like any request. A
// command the node refuses (unknown, malformed, or one the cluster
// rejects, such as adding a removed node) fails with an error matching
// ErrInvalidArgument that carries the node's message.
func (c *Client) Admin(ctx context.Context, command string, args, reply any) error {
	a := wire.Args{Key: command}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("%w: cluster command %q: %w", ErrInvalidArgument, command, err)
		}
		a.Value = string(b)
	}
	if err := checkArgs(wire.OpCluster, &a); err != nil {
		return err
	}
	r, err := c.request(ctx, wire.OpCluster, a, c.routeAny, adminWait)
	if err != nil {
		return err
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal([]byte(r.Result.Value), reply); err != nil {
		return fmt.Errorf("client: node %s answered cluster command %q with %w", r.Node, command, err)
	}
	return nil
}

// routeAny routes attempts to any node: a live one not tried yet by this
// request, chosen by the picker, or failing that a live one, or failing
// that any.
func (c *Client) routeAny(tried []netip.AddrPort) (target, error) {
	tg, ok := c.pickAmong(c.view.Load().order, tried)
	if !ok {
		return target{}, fmt.Errorf("%w: no known nodes", ErrUnavailable)
	}
	return tg, nil
}
