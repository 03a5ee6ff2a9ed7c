package client

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// view is the client's picture of the cluster: the shard map and the nodes.
// It is replaced whole when the topology changes; the per-node state in it
// changes in place.
type view struct {
	smap  *shard.Map
	nodes map[string]*node
	order []*node // by id
	// leaders names the node believed to lead each shard (leaders.go).
	leaders leaderTable
}

// node is what the client knows of one node.
type node struct {
	id   string
	addr netip.AddrPort
	// activity is the node's load as it last reported it, in thousandths
	// of a request in progress.
	activity atomic.Int64
	// inFlight counts this client's requests (of ops that load a node)
	// with an attempt sent to the node, until the request ends.
	inFlight atomic.Int64
	// heard and sent are Unix nanoseconds of the last datagram from and
	// to the node.
	heard, sent atomic.Int64
	// attempts counts the attempts sent to the node; heartbeats the
	// heartbeats it sent.
	attempts, heartbeats atomic.Uint64
	// leads lists the shards the node last said it leads; ready, the
	// topics with ready jobs on them.
	leads atomic.Pointer[[]shard.ID]
	ready atomic.Pointer[readyReport]
}

func (n *node) alive(now time.Time, timeout time.Duration) bool {
	return now.UnixNano()-n.heard.Load() < int64(timeout)
}

// NodeInfo describes a node as the client sees it.
type NodeInfo struct {
	ID   string
	Addr netip.AddrPort
	// Alive: heard from within the node timeout.
	Alive bool
	// Activity is the node's last reported load: the client requests in
	// progress at it, averaged over its recent past.
	Activity float64
	// InFlight counts this client's requests with an attempt at the node.
	InFlight int64
	// Attempts counts the attempts the client sent it; Heartbeats the
	// heartbeats the client took from it.
	Attempts, Heartbeats uint64
	// Weight is the probability the picker would give the node among
	// all live nodes now; NaN if the picker does not choose by weight.
	Weight float64
	// Leads lists the shards the node last reported leading.
	Leads []shard.ID
}

// Nodes returns the client's view of every node, sorted by id.
func (c *Client) Nodes() []NodeInfo {
	v := c.view.Load()
	now := time.Now()
	out := make([]NodeInfo, len(v.order))
	var live []int
	var act []float64
	for i, n := range v.order {
		out[i] = NodeInfo{
			ID: n.id, Addr: n.addr, Alive: n.alive(now, c.cfg.NodeTimeout),
			Activity: float64(n.activity.Load()) / 1000, InFlight: n.inFlight.Load(),
			Attempts: n.attempts.Load(), Heartbeats: n.heartbeats.Load(), Weight: math.NaN(),
		}
		if l := n.leads.Load(); l != nil {
			out[i].Leads = append([]shard.ID(nil), *l...)
		}
		if out[i].Alive {
			live = append(live, i)
			act = append(act, c.load(n))
		}
	}
	if w, ok := c.picker.(Weigher); ok && len(live) > 0 {
		for j, p := range w.Weights(act) {
			out[live[j]].Weight = p
		}
	}
	return out
}

// Map returns a copy of the shard map the client routes by.
func (c *Client) Map() *shard.Map { return c.view.Load().smap.Clone() }

// setTopology installs a topology, keeping the state of nodes already known
// at the same address.
func (c *Client) setTopology(t *wire.Topology) error {
	if t == nil || t.Map == nil || len(t.Nodes) == 0 {
		return fmt.Errorf("%w: the node sent an empty topology", ErrUnavailable)
	}
	old := c.view.Load()
	if old != nil && t.Map.Version < old.smap.Version {
		return nil
	}
	v := &view{smap: t.Map, nodes: make(map[string]*node, len(t.Nodes))}
	now := time.Now().UnixNano()
	for _, na := range t.Nodes {
		addr, err := wire.ParseAddr(na.Addr)
		if err != nil {
			return fmt.Errorf("client: node %s: %w", na.ID, err)
		}
		n := &node{id: na.ID, addr: addr}
		if old != nil {
			if o := old.nodes[na.ID]; o != nil && o.addr == addr {
				n = o
			}
		}
		if n.heard.Load() == 0 {
			// Assume a new node alive until it has had time to heartbeat.
			n.heard.Store(now)
		}
		v.nodes[na.ID] = n
		v.order = append(v.order, n)
	}
	sort.Slice(v.order, func(i, j int) bool { return v.order[i].id < v.order[j].id })
	c.view.Store(v)
	return nil
}

// fetchTopology asks the seeds for the topology, one attempt each in turn
// from a random one, until one answers or the attempts run out (with
// ctx's deadline, when it comes).
func (c *Client) fetchTopology(ctx context.Context, seeds []netip.AddrPort) (*wire.Topology, error) {
	next := rand.IntN(len(seeds))
	route := func([]netip.AddrPort) (target, error) {
		a := seeds[next%len(seeds)]
		next++
		return target{addr: a}, nil
	}
	r, err := c.do(ctx, wire.OpTopology, wire.Args{}, route, untilDeadline(c.cfg.Attempts), 0)
	if err != nil {
		return nil, fmt.Errorf("client: no seed answered: %w", err)
	}
	if r.Result.Topology == nil {
		return nil, fmt.Errorf("%w: node %s sent no topology", ErrUnavailable, r.Node)
	}
	return r.Result.Topology, nil
}

// fixed routes every attempt to one address.
func fixed(addr netip.AddrPort, n *node) router {
	return func([]netip.AddrPort) (target, error) { return target{addr: addr, node: n}, nil }
}

// call makes a request of an op about one slot (wire.Op.Slot): it checks
// the arguments by the node's rules, then routes the attempts to the
// replicas of the slot's shard.
func (c *Client) call(ctx context.Context, op wire.Op, args wire.Args) (wire.Message, error) {
	if err := checkArgs(op, &args); err != nil {
		return wire.Message{}, err
	}
	return c.request(ctx, op, args, c.routeOp(op, &args), 0)
}

// routeOp routes the attempts of a request of an op about one slot: a
// write's to the shard's leader first (routeWrite), a read's by load.
func (c *Client) routeOp(op wire.Op, args *wire.Args) router {
	slot, _ := op.Slot(args)
	if op.Mutating() {
		return c.routeWrite(slot)
	}
	return c.routeSlot(slot)
}

// routeSlot routes attempts to the replicas of the shard owning slot: among
// the live ones not tried yet by this request (or, failing that, the live
// ones, or failing that, all), the picker chooses by load.
func (c *Client) routeSlot(slot int) router {
	return func(tried []netip.AddrPort) (target, error) {
		v := c.view.Load()
		return c.pickReplica(v, v.smap.SlotShard(slot), tried)
	}
}

// routeShard routes attempts to the replicas of shard id.
func (c *Client) routeShard(id shard.ID) router {
	return func(tried []netip.AddrPort) (target, error) {
		return c.pickReplica(c.view.Load(), id, tried)
	}
}

// pickReplica chooses a replica of shard id for the next attempt.
func (c *Client) pickReplica(v *view, id shard.ID, tried []netip.AddrPort) (target, error) {
	s := v.smap.Shard(id)
	if s == nil {
		return target{}, fmt.Errorf("%w: the shard map has no shard %d", ErrUnavailable, id)
	}
	var all []*node
	for _, nid := range s.Replicas {
		if n := v.nodes[nid]; n != nil {
			all = append(all, n)
		}
	}
	tg, ok := c.pickAmong(all, tried)
	if !ok {
		return target{}, fmt.Errorf("%w: shard %d has no known replicas", ErrUnavailable, s.ID)
	}
	return tg, nil
}

// pickAmong picks, with the picker, one of nodes that is live and not
// tried yet by this request; failing that, one that is live; failing that,
// any. It reports false if nodes is empty.
func (c *Client) pickAmong(nodes []*node, tried []netip.AddrPort) (target, bool) {
	now := time.Now()
	var live, fresh []*node
	for _, n := range nodes {
		if !n.alive(now, c.cfg.NodeTimeout) {
			continue
		}
		live = append(live, n)
		if !contains(tried, n.addr) {
			fresh = append(fresh, n)
		}
	}
	cands := fresh
	if len(cands) == 0 {
		cands = live
	}
	if len(cands) == 0 {
		cands = nodes
	}
	if len(cands) == 0 {
		return target{}, false
	}
	n := cands[c.pick(cands)]
	return target{addr: n.addr, node: n}, true
}

// pick asks the picker to choose among nodes by their load.
func (c *Client) pick(nodes []*node) int {
	if len(nodes) == 1 {
		return 0
	}
	act := make([]float64, len(nodes))
	for i, n := range nodes {
		act[i] = c.load(n)
	}
	return c.picker.Pick(act)
}

// load is what the picker weighs for node n: the requests in progress the
// node last reported plus, unless Config.IgnoreInFlight, this client's own
// requests with an attempt at the node, until each request ends. The
// report, up to a heartbeat old, already averages this client's requests
// too, so they count about twice: the current count is the one that reacts
// at once, and a node that stops answering gathers the requests waiting on
// it and stops being picked before the node timeout marks it dead.
func (c *Client) load(n *node) float64 {
	l := float64(n.activity.Load()) / 1000
	if !c.cfg.IgnoreInFlight {
		l += float64(n.inFlight.Load())
	}
	return l
}

func contains(l []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range l {
		if x == a {
			return true
		}
	}
	return false
}

// routeNode routes every attempt to the node with the given id.
func (c *Client) routeNode(id string) (router, error) {
	n := c.view.Load().nodes[id]
	if n == nil {
		return nil, fmt.Errorf("client: unknown node %q", id)
	}
	return fixed(n.addr, n), nil
}

// requestRefresh asks the maintenance loop to fetch the topology again.
func (c *Client) requestRefresh() {
	select {
	case c.refresh <- struct{}{}:
	default:
	}
}

// pingAll pings every node sent nothing within idle. Pings are not
// awaited: the reply, like any datagram from a node, refreshes what the
// client knows of it, and the ping keeps the node heartbeating.
func (c *Client) pingAll(now time.Time, idle time.Duration) {
	m := wire.Message{Type: wire.TypeQuery, Op: wire.OpPing, Client: c.id, Proof: c.proof}
	for _, n := range c.view.Load().order {
		if now.UnixNano()-n.sent.Load() < int64(idle) {
			continue
		}
		m.TxID = newTxID()
		b, err := wire.Encode(&m)
		if err != nil {
			continue
		}
		n.sent.Store(now.UnixNano())
		_ = c.t.Send(b, n.addr) // a lost ping is retried next round
	}
}

// maintain keeps the view fresh: pings idle nodes, and fetches the
// topology when a heartbeat or an error reply says the map moved on.
func (c *Client) maintain() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.KeepaliveInterval / 4)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			c.pingAll(now, c.cfg.KeepaliveInterval)
		case <-c.refresh:
			c.refreshTopology()
		}
	}
}

func (c *Client) refreshTopology() {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.MaxAttemptTimeout*time.Duration(c.cfg.Attempts))
	defer cancel()
	now := time.Now()
	var seeds []netip.AddrPort
	for _, n := range c.view.Load().order {
		if n.alive(now, c.cfg.NodeTimeout) {
			seeds = append(seeds, n.addr)
		}
	}
	if len(seeds) == 0 {
		return
	}
	topo, err := c.fetchTopology(ctx, seeds)
	if err == nil {
		err = c.setTopology(topo)
	}
	if err != nil {
		c.log.Warn("refreshing the topology failed", "err", err)
	}
}
