// Package servertest runs a shoal cluster inside one process, as
// net/http/httptest runs an HTTP server: real nodes, each with a raft group
// per replica on disk and real node-to-node TCP, serving clients over UDP
// or over a transport the caller gives (a simulated network). The tests of
// every package and the sim experiments start their clusters with it.
//
// A Cluster starts every node of its spec and waits until it is ready
// (every shard has a leader that serves), kills and restarts nodes, and
// checks that the running replicas of each shard converged to one state
// (Check). New does all of that for a test: it fails the test if the
// cluster does not start, and on cleanup checks and closes it, so that a
// test whose replicas diverged fails, as bbolt checks its file in every
// test's cleanup.
package servertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Options describe a cluster. The zero value is 3 nodes holding 1 shard of
// 3 replicas.
type Options struct {
	// Nodes, Shards and Replicas size a cluster on 127.0.0.1 with free
	// ports (server.LocalSpec). Zero values take 3, 1 and 3.
	Nodes, Shards, Replicas int
	// Raft is the raft timing of that cluster; zero fields take the
	// defaults.
	Raft server.RaftTiming
	// Spec, if set, is the cluster instead, and the fields above are
	// ignored.
	Spec *server.Spec
	// Dir holds the nodes' data, a directory per node. If empty, a
	// temporary directory that Close removes.
	Dir string
	// Logger receives the nodes' logs. If nil, they are dropped (New sends
	// them to the test's log).
	Logger *slog.Logger
	// Transport, if set, gives a node its client transport at each start,
	// in place of a UDP socket at its client address in the spec.
	Transport func(node server.NodeSpec) (wire.Transport, error)
	// Configure, if set, changes a node's configuration before each start.
	Configure func(*server.Config)
	// Insecure runs the nodes without authentication (server.Config's
	// Insecure). Otherwise Start makes a secret (Cluster.Secret), which
	// clients of the cluster must be given, and a cluster CA and a
	// certificate for each node, in memory, and the nodes talk over
	// mutual TLS.
	Insecure bool
}

// Cluster is a running in-process cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	// spec grows as nodes join (AddNode); under mu.
	spec   *server.Spec
	dir    string
	ownDir bool
	log    *slog.Logger
	opts   Options
	secret *wire.Keyring              // nil when insecure
	ca     *certs.CA                  // nil when insecure
	creds  map[string]*server.PeerTLS // nil when insecure
	mu     sync.Mutex
	nodes  map[string]*server.Node // the running ones
}

// ReadyTimeout bounds Start's wait for the cluster to be ready.
const ReadyTimeout = 30 * time.Second

// Start starts every node of the cluster opts describe and waits until it
// is ready (see WaitReady), at most ReadyTimeout. On failure it closes
// what it started.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	spec := opts.Spec
	if spec == nil {
		nodes, shards, replicas := or(opts.Nodes, 3), or(opts.Shards, 1), or(opts.Replicas, 3)
		var err error
		if spec, err = server.LocalSpec(nodes, shards, replicas); err != nil {
			return nil, err
		}
		spec.Raft = opts.Raft
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	var err error
	c := &Cluster{spec: spec, dir: opts.Dir, log: opts.Logger, opts: opts, nodes: map[string]*server.Node{}}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if !opts.Insecure {
		if c.ca, err = certs.NewCA("shoal servertest CA"); err != nil {
			return nil, err
		}
		if c.creds, err = Credentials(c.ca, spec); err != nil {
			return nil, err
		}
	}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "shoal-servertest-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	if !opts.Insecure {
		if err := c.makeSecret(); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, ns := range spec.Nodes {
		if _, err := c.Restart(ctx, ns.ID); err != nil {
			c.Close()
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	if err := c.WaitReady(wctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func or(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// Spec returns the cluster's spec. The caller must not change it.
func (c *Cluster) Spec() *server.Spec {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spec
}

// Map returns the cluster's shard map. The caller must not change it.
func (c *Cluster) Map() *shard.Map { return c.Metadata().Map }

// Metadata returns the newest cluster metadata a running node follows, or
// that of the spec if none runs.
func (c *Cluster) Metadata() *shard.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	var newest *shard.Cluster
	for _, n := range c.nodes {
		if m := n.Cluster(); newest == nil || m.Version > newest.Version {
			newest = m
		}
	}
	if newest == nil {
		m, _ := c.spec.Map()
		newest = &shard.Cluster{Version: m.Version, Map: m}
	}
	return newest
}

// Dir returns the directory that holds the nodes' data.
func (c *Cluster) Dir() string { return c.dir }

// SecretFile is the name of the cluster's secret file in its Dir.
const SecretFile = "secret"

// makeSecret makes the cluster's secret and writes it to SecretFile.
func (c *Cluster) makeSecret() error {
	text := wire.NewSecret()
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("servertest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, SecretFile), text, 0o600); err != nil {
		return fmt.Errorf("servertest: %w", err)
	}
	var err error
	c.secret, err = wire.ParseKeyring(text)
	return err
}

// Secret returns the cluster's secret, for client.Config.Secret; nil if
// the cluster is insecure. It is also in the file SecretFile in Dir.
func (c *Cluster) Secret() *wire.Keyring { return c.secret }

// Seeds returns the client address of every node in the spec, running or
// not, for client.Config.Seeds.
func (c *Cluster) Seeds() []string {
	spec := c.Spec()
	seeds := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		seeds[i] = n.Client
	}
	return seeds
}

// PeerTLS returns node id's credentials for node-to-node traffic, nil if
// the cluster runs insecure: a test dials the nodes with them as that node
// would.
func (c *Cluster) PeerTLS(id string) *server.PeerTLS { return c.creds[id] }

// CA returns the cluster's CA, nil if it runs insecure.
func (c *Cluster) CA() *certs.CA { return c.ca }

// Credentials makes with ca, in memory, the credentials of every node of
// spec.
func Credentials(ca *certs.CA, spec *server.Spec) (map[string]*server.PeerTLS, error) {
	creds := make(map[string]*server.PeerTLS, len(spec.Nodes))
	for _, n := range spec.Nodes {
		cert, err := ca.Issue(n.ID)
		if err != nil {
			return nil, err
		}
		creds[n.ID] = &server.PeerTLS{Roots: ca.Pool(), Cert: cert}
	}
	return creds, nil
}

// Node returns the running node with the given id, or nil if it is down.
func (c *Cluster) Node(id string) *server.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// Running returns the ids of the running nodes, sorted.
func (c *Cluster) Running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.nodes))
	for id := range c.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Restart starts node id on its data directory: the first time, or again
// after Kill or Shutdown. It does not wait for the node's shards to be
// ready; WaitReady does.
func (c *Cluster) Restart(ctx context.Context, id string) (*server.Node, error) {
	spec := c.Spec()
	if spec.Node(id) == nil {
		return nil, fmt.Errorf("servertest: no node %q in the spec", id)
	}
	if c.Node(id) != nil {
		return nil, fmt.Errorf("servertest: node %s is running", id)
	}
	c.mu.Lock()
	creds := c.creds[id]
	c.mu.Unlock()
	cfg := server.Config{ID: id, DataDir: filepath.Join(c.dir, id), Spec: spec, Logger: c.log,
		Secret: c.secret, PeerTLS: creds, Insecure: c.opts.Insecure}
	if c.opts.Transport != nil {
		t, err := c.opts.Transport(*spec.Node(id))
		if err != nil {
			return nil, fmt.Errorf("servertest: transport of %s: %w", id, err)
		}
		cfg.Transport = t
	}
	if c.opts.Configure != nil {
		c.opts.Configure(&cfg)
	}
	n, err := server.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("servertest: starting %s: %w", id, err)
	}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n, nil
}

// Kill stops node id at once: to its peers, a crash. Its data stays.
func (c *Cluster) Kill(id string) error {
	n := c.take(id)
	if n == nil {
		return fmt.Errorf("servertest: node %s is not running", id)
	}
	return n.Close()
}

// Shutdown stops node id gracefully: it hands the leadership of its shards
// over first (server.Node.Shutdown), within ctx.
func (c *Cluster) Shutdown(ctx context.Context, id string) error {
	n := c.take(id)
	if n == nil {
		return fmt.Errorf("servertest: node %s is not running", id)
	}
	return n.Shutdown(ctx)
}

// take removes node id from the running ones and returns it.
func (c *Cluster) take(id string) *server.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	delete(c.nodes, id)
	return n
}

// Close kills every running node and removes the data directory if Start
// made it.
func (c *Cluster) Close() error {
	var errs []error
	for _, id := range c.Running() {
		errs = append(errs, c.Kill(id))
	}
	if c.ownDir {
		errs = append(errs, os.RemoveAll(c.dir))
	}
	return errors.Join(errs...)
}

// holders returns the running nodes that hold a replica of shard id, a
// move's target included.
func (c *Cluster) holders(id shard.ID) map[string]*server.Node {
	out := map[string]*server.Node{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for nid, n := range c.nodes {
		if n.Holds(id) {
			out[nid] = n
		}
	}
	return out
}

// Leader returns the running node that leads shard id and serves, or nil:
// the Elected one, once it is ready in its term (server.Node.Leading).
func (c *Cluster) Leader(id shard.ID) *server.Node {
	if n := c.Elected(id); n != nil && n.Leading(id) {
		return n
	}
	return nil
}

// Elected returns the running node that raft elected to lead shard id, or
// nil. A leader deposed by a newer election can think it leads for a
// moment, so a node counts only when a majority of the shard's replicas,
// itself included, name it their leader. An elected leader serves once it
// has applied what its term inherited (see Leader).
func (c *Cluster) Elected(id shard.ID) *server.Node {
	holders := c.holders(id)
	named := map[string]int{}
	var claims []*server.Node // the nodes that say they lead
	for _, n := range holders {
		for _, s := range n.Status().Shards {
			switch {
			case s.ID != id:
			case s.State == "Leader":
				named[n.ID()]++
				claims = append(claims, n)
			case s.Leader != "":
				named[s.Leader]++
			}
		}
	}
	replicas := len(c.Metadata().Voters(id))
	for _, n := range claims {
		if 2*named[n.ID()] > replicas {
			return n
		}
	}
	return nil
}

// WaitReady waits until every shard of which a majority of replicas run
// has a Leader, and reports ctx's error with the shards still without one
// if ctx ends first.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		var waiting []string
		for _, s := range c.Map().Shards {
			if 2*len(c.holders(s.ID)) > len(s.Replicas) && c.Leader(s.ID) == nil {
				waiting = append(waiting, fmt.Sprint(s.ID))
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if err := pause(ctx); err != nil {
			return fmt.Errorf("servertest: shards %s have no leader: %w", strings.Join(waiting, ", "), err)
		}
	}
}

// pollInterval is how often the waits look at the nodes again.
const pollInterval = 10 * time.Millisecond

// pause waits pollInterval, or until ctx ends.
func pause(ctx context.Context) error {
	t := time.NewTimer(pollInterval)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AddNode adds a node with id, on free ports of 127.0.0.1, to the cluster
// through a running node, and starts it with the metadata that returned
// (server.Node.AddNode): it holds nothing until replicas move to it.
func (c *Cluster) AddNode(ctx context.Context, id string) (*server.Node, error) {
	via := c.Running()
	if len(via) == 0 {
		return nil, errors.New("servertest: no node runs to add one through")
	}
	ports, err := server.LocalSpec(1, 1, 1)
	if err != nil {
		return nil, err
	}
	nd := shard.Node{ID: id, Raft: ports.Nodes[0].Raft, Client: ports.Nodes[0].Client}
	if c.ca != nil {
		cert, err := c.ca.Issue(id)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.creds[id] = &server.PeerTLS{Roots: c.ca.Pool(), Cert: cert}
		c.mu.Unlock()
	}
	meta, err := c.Node(via[0]).AddNode(ctx, nd)
	if err != nil {
		return nil, fmt.Errorf("servertest: adding %s: %w", id, err)
	}
	if err := server.KeepMetadata(filepath.Join(c.dir, id), meta); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.spec = server.SpecOf(meta, c.spec)
	c.mu.Unlock()
	return c.Restart(ctx, id)
}
