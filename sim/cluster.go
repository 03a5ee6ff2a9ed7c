package sim

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// cluster is a system experiment's cluster: real nodes in this process,
// each a raft group per shard replica on disk (raft between nodes over TCP
// on loopback), serving clients over a SimNet, where the experiment's
// faults apply.
type cluster struct {
	net   *wire.SimNet
	spec  *server.Spec
	smap  *shard.Map
	dir   string
	log   *slog.Logger
	nodes map[string]*server.Node
	ids   []string
	// wrap, if set, stands between each node and its endpoint.
	wrap func(id string, t wire.Transport) wire.Transport
	// clients are the clients connected; close closes them.
	clients []*client.Client
}

// startCluster starts nodes nodes with shards shards of replicas replicas
// on a SimNet seeded with seed, and waits for every shard to have a leader.
func startCluster(ctx context.Context, seed int64, nodes, shards, replicas int, log *slog.Logger) (*cluster, error) {
	return startWrapped(ctx, seed, nodes, shards, replicas, log, nil)
}

// startWrapped is startCluster with wrap, if not nil, between each node and
// its endpoint on the SimNet.
func startWrapped(ctx context.Context, seed int64, nodes, shards, replicas int, log *slog.Logger,
	wrap func(id string, t wire.Transport) wire.Transport) (*cluster, error) {
	spec, err := server.LocalSpec(nodes, shards, replicas)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "shoal-sim-")
	if err != nil {
		return nil, err
	}
	c := &cluster{net: wire.NewSimNet(seed), spec: spec, dir: dir, log: log, nodes: map[string]*server.Node{}, wrap: wrap}
	for i := range spec.Nodes {
		// The clients reach the nodes on the simulated network.
		spec.Nodes[i].Client = fmt.Sprintf("10.1.0.%d:7000", i+1)
		c.ids = append(c.ids, spec.Nodes[i].ID)
	}
	if c.smap, err = spec.Map(); err != nil {
		return nil, err
	}
	for _, id := range c.ids {
		if err := c.start(ctx, id); err != nil {
			c.close()
			return nil, err
		}
	}
	if err := c.waitLeaders(ctx); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// start starts node id (again) on its data directory.
func (c *cluster) start(ctx context.Context, id string) error {
	addr, err := netip.ParseAddrPort(c.spec.Node(id).Client)
	if err != nil {
		return err
	}
	ep, err := c.net.Listen(addr)
	if err != nil {
		return err
	}
	var t wire.Transport = ep
	if c.wrap != nil {
		t = c.wrap(id, ep)
	}
	n, err := server.Start(ctx, server.Config{
		ID: id, DataDir: filepath.Join(c.dir, id), Spec: c.spec, Logger: c.log, Transport: t,
	})
	if err != nil {
		return err
	}
	c.nodes[id] = n
	return nil
}

// kill stops node id at once: to its peers, a crash.
func (c *cluster) kill(id string) {
	if n := c.nodes[id]; n != nil {
		n.Close()
		delete(c.nodes, id)
	}
}

// leader returns the id of the running node that leads shard id, or "".
//
// A leader deposed by a newer election can still think it leads for a
// moment, so a node counts only when a majority of the shard's replicas,
// itself included, name it as their leader.
func (c *cluster) leader(id shard.ID) string {
	named := map[string]int{}
	var leaders []string
	for nid, n := range c.nodes {
		for _, s := range n.Status().Shards {
			if s.ID != id {
				continue
			}
			if s.State == "Leader" {
				leaders = append(leaders, nid)
				named[nid]++
			} else if s.Leader != "" {
				named[s.Leader]++
			}
		}
	}
	replicas := len(c.smap.Shard(id).Replicas)
	for _, nid := range leaders {
		if 2*named[nid] > replicas {
			return nid
		}
	}
	return ""
}

// waitLeaders waits until every shard has a leader among the running nodes.
func (c *cluster) waitLeaders(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, s := range c.smap.Shards {
		for c.leader(s.ID) == "" {
			select {
			case <-ctx.Done():
				return fmt.Errorf("sim: shard %d has no leader: %w", s.ID, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
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
	for _, n := range c.spec.Nodes {
		cfg.Seeds = append(cfg.Seeds, n.Client)
	}
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
	for _, s := range c.smap.Shards {
		n := c.nodes[c.leader(s.ID)]
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

// close closes the clients, stops every node and removes the data.
func (c *cluster) close() {
	for _, cl := range c.clients {
		cl.Close(context.Background())
	}
	for id := range c.nodes {
		c.kill(id)
	}
	os.RemoveAll(c.dir)
}
