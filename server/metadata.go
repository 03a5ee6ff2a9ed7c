package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// A node follows the cluster metadata (shard.Cluster) its control group
// replicates: it opens the replicas the metadata assigns it, deletes those
// it no longer does, dials its peers at the addresses it gives, and serves
// clients the topology it describes. It keeps the last metadata it saw in
// DataDir/metadataFile, and starts from it (or from the spec, whichever
// is newer), so that a node restarted while the control group is out of
// reach still serves what it held.

// metadataFile is where a node keeps the cluster metadata it last saw.
const metadataFile = "metadata.json"

// ErrRemoved is returned (wrapped) by Start for a node the cluster removed,
// and by Node.Err once a running node has learned of its removal: its id
// may not return. Its replicas' data was deleted when it learned of its
// removal, or is left for the operator if it was down then.
var ErrRemoved = errors.New("server: the node was removed from the cluster")

// view is what a node serves by: the metadata it follows, the topology
// clients get from it, and the replicas it holds. It is replaced whole
// when any of them changes, never modified.
type view struct {
	cluster  *shard.Cluster
	topology wire.Topology
	// replicas holds the node's shard replicas, control the control
	// group's if the node holds one.
	replicas map[shard.ID]*replica
	control  *controlReplica
}

// current returns the node's view.
func (n *Node) current() *view { return n.view.Load() }

// replica returns the node's replica of shard id, or nil.
func (n *Node) replica(id shard.ID) *replica { return n.current().replicas[id] }

// shardMap returns the shard map the node follows.
func (n *Node) shardMap() *shard.Map { return n.current().cluster.Map }

// topologyOf returns what clients route by in c.
func topologyOf(c *shard.Cluster) wire.Topology {
	t := wire.Topology{Map: c.Map}
	for _, nd := range c.Nodes {
		t.Nodes = append(t.Nodes, wire.NodeAddr{ID: nd.ID, Addr: nd.Client})
	}
	return t
}

// directory answers, from the metadata the node follows, who is where: the
// transport, the dialer and the node listener ask it, and it changes as
// nodes join and leave.
type directory struct {
	cluster atomic.Pointer[shard.Cluster]
}

func (d *directory) set(c *shard.Cluster) { d.cluster.Store(c) }

// raftAddr returns the raft address of node id.
func (d *directory) raftAddr(id string) (string, bool) {
	if nd := d.cluster.Load().Node(id); nd != nil {
		return nd.Raft, true
	}
	return "", false
}

// nodeAt returns the id of the member whose raft address is addr.
func (d *directory) nodeAt(addr string) (string, bool) {
	for _, nd := range d.cluster.Load().Nodes {
		if nd.Raft == addr {
			return nd.ID, true
		}
	}
	return "", false
}

// mayConnect reports whether node id may open connections to this node:
// members may, and removed nodes too, so that they learn of their removal
// (they may call nothing else, see nodeService).
func (d *directory) mayConnect(id string) bool {
	c := d.cluster.Load()
	return c.Node(id) != nil || slices.Contains(c.Removed, id)
}

// removed reports whether node id was removed from the cluster.
func (d *directory) removed(id string) bool {
	return slices.Contains(d.cluster.Load().Removed, id)
}

// mayCarry reports whether node peer may open raft streams of group id:
// whether it holds one of the group's replicas, or is being given one.
func (d *directory) mayCarry(id shard.ID, peer string) bool {
	return slices.Contains(d.cluster.Load().Peers(id), peer)
}

// clusterFromSpec returns the metadata a spec describes: its nodes, its
// map, and the control group's voters on its first three nodes by id.
func clusterFromSpec(s *Spec) (*shard.Cluster, error) {
	m, err := s.Map()
	if err != nil {
		return nil, err
	}
	c := &shard.Cluster{Version: m.Version, Map: m}
	for _, nd := range s.Nodes {
		c.Nodes = append(c.Nodes, shard.Node{ID: nd.ID, Raft: nd.Raft, Client: nd.Client})
	}
	sort.Slice(c.Nodes, func(i, j int) bool { return c.Nodes[i].ID < c.Nodes[j].ID })
	for _, nd := range c.Nodes[:min(3, len(c.Nodes))] {
		c.Control = append(c.Control, nd.ID)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	return c, nil
}

// loadMetadata reads the metadata a node kept in dataDir; nil if it kept
// none.
func loadMetadata(dataDir string) (*shard.Cluster, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, metadataFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var c shard.Cluster
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDataDir, metadataFile, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDataDir, metadataFile, err)
	}
	return &c, nil
}

// saveMetadata keeps c in dataDir, durably: a node acts on metadata only
// once it is kept, so that what it holds on disk is always explained by
// the metadata it starts from.
func saveMetadata(dataDir string, c *shard.Cluster) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	path := filepath.Join(dataDir, metadataFile)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dataDir)
	}
	if err != nil {
		return fmt.Errorf("server: keeping the cluster metadata: %w", err)
	}
	return nil
}

// startingMetadata returns the metadata a node starts from: the newer of
// what it kept and what the spec describes, and whether it was what it
// kept.
func startingMetadata(cfg Config) (c *shard.Cluster, wasKept bool, err error) {
	fromSpec, err := clusterFromSpec(cfg.Spec)
	if err != nil {
		return nil, false, err
	}
	kept, err := loadMetadata(cfg.DataDir)
	if err != nil {
		return nil, false, err
	}
	c = fromSpec
	if kept != nil && kept.Version >= fromSpec.Version {
		c, wasKept = kept, true
	}
	switch {
	case slices.Contains(c.Removed, cfg.ID):
		return nil, false, fmt.Errorf("%w: node %s was removed (cluster metadata version %d); start a node with a new id and data directory instead",
			ErrRemoved, cfg.ID, c.Version)
	case c.Node(cfg.ID) == nil:
		return nil, false, fmt.Errorf("%w: node %q is not a member of the cluster", ErrInvalidSpec, cfg.ID)
	}
	return c, wasKept, nil
}

// mayBootstrap returns the configuration with which this node's replica of
// group id, if it has no state, starts the group: that of the group's
// founders, of whom this node is one, if c lists them (a shard a split
// created), else its voters, if it was never reconfigured. Nil if it may
// not start it: a voter that is not a founder, or a move's target, waits
// for the group's leader to add it. Every founder starts with the same
// configuration, so their first entries are alike.
func mayBootstrap(c *shard.Cluster, id shard.ID, node string) map[string]string {
	voters := c.Voters(id)
	if !slices.Contains(voters, node) {
		return nil
	}
	if m := c.MoveOf(id); m != nil && m.To == node {
		return nil
	}
	first := c.FoundersOf(id)
	switch {
	case first != nil && !slices.Contains(first, node):
		return nil
	case first == nil && slices.Contains(c.Reconfigured, id):
		return nil
	case first == nil:
		first = voters
	}
	addrs := make(map[string]string, len(first))
	for _, v := range first {
		nd := c.Node(v)
		if nd == nil {
			return nil // a founder left: the group has long been running
		}
		addrs[v] = nd.Raft
	}
	return addrs
}

// heldOnDisk returns the groups that have a directory in dataDir.
func heldOnDisk(dataDir string) ([]shard.ID, error) {
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var ids []shard.ID
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if e.Name() == replicaDir(shard.ControlGroup) {
			ids = append(ids, shard.ControlGroup)
			continue
		}
		var id shard.ID
		if rest, ok := strings.CutPrefix(e.Name(), "shard-"); ok {
			if _, err := fmt.Sscanf(rest, "%d", &id); err == nil && replicaDir(id) == e.Name() {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}
