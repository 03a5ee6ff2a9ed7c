package sim

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// cluster is a system experiment's cluster: real nodes in this process
// (servertest), each a raft group per shard replica on disk (raft between
// nodes over TCP on loopback), serving clients over a SimNet, where the
// experiment's faults apply.
type cluster struct {
	*servertest.Cluster
	net *wire.SimNet
	log *slog.Logger
	ids []string // the nodes, in spec order
	// clients are the clients connected; close closes them.
	clients []*client.Client
}

// startCluster starts nodes nodes with shards shards of replicas replicas
// on a SimNet seeded with seed, and waits for every shard to have a leader.
func startCluster(ctx context.Context, seed int64, nodes, shards, replicas int, log *slog.Logger) (*cluster, error) {
	return startWrapped(ctx, seed, nodes, shards, replicas, log, nil)
}

// startWrapped is startCluster with wrap, if not nil, between each node and
// its endpoint on the SimNet, at each start. A cluster with wrap runs
// insecure, datagrams unsealed, so that wrap and the wraps of its clients
// can read them; the experiments that wrap measure balancing, not sealing.
func startWrapped(ctx context.Context, seed int64, nodes, shards, replicas int, log *slog.Logger,
	wrap func(id string, t wire.Transport) wire.Transport) (*cluster, error) {
	spec, err := server.LocalSpec(nodes, shards, replicas)
	if err != nil {
		return nil, err
	}
	return startSpec(ctx, seed, spec, log, wrap)
}

// startSpec is startWrapped with the cluster spec describes, whose client
// addresses it replaces with addresses on the SimNet.
func startSpec(ctx context.Context, seed int64, spec *server.Spec, log *slog.Logger,
	wrap func(id string, t wire.Transport) wire.Transport) (*cluster, error) {
	var err error
	c := &cluster{net: wire.NewSimNet(seed), log: log}
	for i := range spec.Nodes {
		// The clients reach the nodes on the simulated network.
		spec.Nodes[i].Client = fmt.Sprintf("10.1.0.%d:7000", i+1)
		c.ids = append(c.ids, spec.Nodes[i].ID)
	}
	c.Cluster, err = servertest.Start(ctx, servertest.Options{Spec: spec, Logger: log, Insecure: wrap != nil,
		Transport: func(n server.NodeSpec) (wire.Transport, error) {
			addr, err := netip.ParseAddrPort(n.Client)
			if err != nil {
				return nil, err
			}
			ep, err := c.net.Listen(addr)
			if err != nil || wrap == nil {
				return ep, err
			}
			return wrap(n.ID, ep), nil
		}})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// leaderID returns the id of the running node that leads shard id, or "".
func (c *cluster) leaderID(id shard.ID) string {
	if n := c.Leader(id); n != nil {
		return n.ID()
	}
	return ""
}

// client connects a client over the simulated network.
func (c *cluster) client(ctx context.Context, cfg client.Config) (*client.Client, error) {
	return c.clientVia(ctx, cfg, nil)
}

// clientVia connects a client over the simulated network through wrap, if
// not nil. The cluster's close closes it, if its owner has not.
func (c *cluster) clientVia(ctx context.Context, cfg client.Config, wrap func(wire.Transport) wire.Transport) (*client.Client, error) {
	ep, err := c.net.Listen(netip.AddrPort{})
	if err != nil {
		return nil, err
	}
	cfg.Transport = ep
	if wrap != nil {
		cfg.Transport = wrap(ep)
	}
	cfg.Logger = c.log
	cfg.Seeds = c.Seeds()
	cfg.Secret, cfg.Insecure = c.Secret(), c.Secret() == nil
	cl, err := client.New(ctx, cfg) // closes the endpoint if it fails
	if err != nil {
		return nil, err
	}
	c.clients = append(c.clients, cl)
	return cl, nil
}

// stats sums the state machine counters of each shard's leader.
func (c *cluster) stats() server.ShardStats {
	var total server.ShardStats
	for _, s := range c.Map().Shards {
		n := c.Leader(s.ID)
		if n == nil {
			continue
		}
		st := n.ShardStats(s.ID)
		total.Keys += st.Keys
		total.Executed += st.Executed
		total.Duplicates += st.Duplicates
	}
	return total
}

// close closes the clients, checks that the running replicas of every
// shard converged to one state (servertest.Cluster.Check), stops every
// node and removes the data.
func (c *cluster) close() error {
	for _, cl := range c.clients {
		cl.Close(context.Background())
	}
	ctx, cancel := context.WithTimeout(context.Background(), servertest.CheckTimeout)
	defer cancel()
	err := c.Check(ctx)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// logCounters returns each node's counters, in the order of c.ids.
func (c *cluster) logCounters() []server.Counters {
	out := make([]server.Counters, len(c.ids))
	for i, id := range c.ids {
		if n := c.Node(id); n != nil {
			out[i] = n.Counters()
		}
	}
	return out
}
